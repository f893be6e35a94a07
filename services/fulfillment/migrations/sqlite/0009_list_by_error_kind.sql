-- Same index as the Postgres migration of the same number.
CREATE INDEX fulfillments_error_kind
    ON fulfillments (last_error_kind, update_time DESC, fulfillment_id DESC) WHERE last_error_kind IS NOT NULL;
