-- Same index as the Postgres migration of the same number.
CREATE INDEX fulfillments_updated ON fulfillments (update_time DESC, fulfillment_id DESC);
