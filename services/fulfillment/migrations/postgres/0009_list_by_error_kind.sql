-- ListFulfillments by the last error's kind, newest change first; jobs that never failed are not in it.
-- A plain build: writes to the table wait for it (seconds at a million jobs).
-- Not CONCURRENTLY: that waits for every older transaction in the database,
-- including other services' migrators queued on the migration lock this one
-- holds, which deadlocks when the services migrate together (`up`). To build
-- it on a much larger table without holding writes, build it by hand first
-- (CREATE INDEX CONCURRENTLY fulfillments_error_kind ..., the same definition); this
-- migration then finds it and does nothing.
CREATE INDEX IF NOT EXISTS fulfillments_error_kind
    ON fulfillments (last_error_kind, update_time DESC, fulfillment_id DESC) WHERE last_error_kind IS NOT NULL;
