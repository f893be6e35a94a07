-- ListFulfillments without a state or course run (all jobs, a time window, a source system), newest change first.
-- A plain build: writes to the table wait for it (seconds at a million jobs).
-- Not CONCURRENTLY: that waits for every older transaction in the database,
-- including other services' migrators queued on the migration lock this one
-- holds, which deadlocks when the services migrate together (`up`). To build
-- it on a much larger table without holding writes, build it by hand first
-- (CREATE INDEX CONCURRENTLY fulfillments_updated ..., the same definition); this
-- migration then finds it and does nothing.
CREATE INDEX IF NOT EXISTS fulfillments_updated ON fulfillments (update_time DESC, fulfillment_id DESC);
