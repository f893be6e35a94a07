-- ListFulfillments and RetryFulfillments of one course run, newest change first.
-- A plain build: writes to the table wait for it (seconds at a million jobs).
-- Not CONCURRENTLY: that waits for every older transaction in the database,
-- including other services' migrators queued on the migration lock this one
-- holds, which deadlocks when the services migrate together (`up`). To build
-- it on a much larger table without holding writes, build it by hand first
-- (CREATE INDEX CONCURRENTLY fulfillments_course_run ..., the same definition); this
-- migration then finds it and does nothing.
CREATE INDEX IF NOT EXISTS fulfillments_course_run
    ON fulfillments ((spec -> 'line' -> 'product' ->> 'course_run_key'), update_time DESC, fulfillment_id DESC);
