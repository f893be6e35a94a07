-- Who asked for a state change that an operator, not a worker, made
-- (RetryFulfillment, RetryFulfillments): the caller's token subject. NULL for
-- the workers' own transitions and for those recorded before this column.
-- Adding a nullable column rewrites nothing.
ALTER TABLE fulfillment_transitions ADD COLUMN requested_by TEXT;
