-- Same as the Postgres migration of the same number.
ALTER TABLE fulfillment_transitions ADD COLUMN requested_by TEXT;
