-- Refunds: a refunded line keeps its job, which records the refund and moves
-- SUCCEEDED -> REVOKING -> REVOKED (or REVOKE_FAILED), or PENDING -> CANCELLED.
-- A REVOKING job is queued like a PENDING one (next_attempt_at) and leased
-- like an IN_PROGRESS one (lease_token, lease_expires_at) while a worker calls
-- the LMS.
--
-- Expand only: a release that knows the first four states reads every row it
-- wrote, and its queries (state = 'PENDING', ...) still use the indexes below.

-- domain::Refund as JSON: amount, reason, source, when, and the refund call's traceparent.
ALTER TABLE fulfillments ADD COLUMN refund JSONB;

ALTER TABLE fulfillments DROP CONSTRAINT fulfillments_state_check;
ALTER TABLE fulfillments ADD CONSTRAINT fulfillments_state_check CHECK (
    state IN ('PENDING', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'REVOKING', 'REVOKED', 'REVOKE_FAILED', 'CANCELLED')
);

-- Workers scan both queues; operators count both kinds of failure.
DROP INDEX fulfillments_due;
CREATE INDEX fulfillments_due ON fulfillments (next_attempt_at) WHERE state IN ('PENDING', 'REVOKING');
DROP INDEX fulfillments_leased;
CREATE INDEX fulfillments_leased ON fulfillments (lease_expires_at) WHERE state IN ('IN_PROGRESS', 'REVOKING');
DROP INDEX fulfillments_failed;
CREATE INDEX fulfillments_failed ON fulfillments (update_time) WHERE state IN ('FAILED', 'REVOKE_FAILED');

-- Refunds the LMS asks for (RequestRefund): one per fulfillment, announced
-- with RefundRequested in the same transaction.
CREATE TABLE refund_requests (
    refund_request_id TEXT        NOT NULL PRIMARY KEY,
    fulfillment_id    TEXT        NOT NULL UNIQUE REFERENCES fulfillments (fulfillment_id),
    reason            TEXT        NOT NULL DEFAULT '',
    requested_at      TIMESTAMPTZ NOT NULL
);
-- RequestRefund finds a learner's jobs by username as well as by id.
CREATE INDEX fulfillments_lms_username ON fulfillments ((spec -> 'learner' ->> 'lms_username'));
