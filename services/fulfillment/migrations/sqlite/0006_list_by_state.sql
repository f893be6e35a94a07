-- Same index as the Postgres migration of the same number.
CREATE INDEX fulfillments_state_updated ON fulfillments (state, update_time DESC, fulfillment_id DESC);
