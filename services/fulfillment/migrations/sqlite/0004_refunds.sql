-- Same change as the Postgres migration of the same number. SQLite cannot
-- alter a CHECK constraint, so the jobs table (and its transitions, which
-- reference it) is rebuilt: the copies are made first, the transitions copy
-- referencing the jobs copy, so that dropping the old tables breaks no
-- foreign key; renaming the jobs copy rewrites the reference to the new name.
CREATE TABLE fulfillments_v4 (
    fulfillment_id     TEXT    NOT NULL PRIMARY KEY,
    order_number       TEXT    NOT NULL,
    line_item_id       TEXT    NOT NULL,
    position           INTEGER NOT NULL,
    spec               TEXT    NOT NULL,
    fingerprint        TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('PENDING', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED',
                                                         'REVOKING', 'REVOKED', 'REVOKE_FAILED', 'CANCELLED')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    INTEGER,
    lease_token        TEXT,
    lease_expires_at   INTEGER,
    last_error_kind    TEXT,
    last_error_status  INTEGER,
    last_error_message TEXT,
    entitlement_uuid   TEXT,
    traceparent        TEXT    NOT NULL DEFAULT '',
    create_time        INTEGER NOT NULL,
    update_time        INTEGER NOT NULL,
    refund             TEXT,
    UNIQUE (order_number, line_item_id)
);
INSERT INTO fulfillments_v4 (fulfillment_id, order_number, line_item_id, position, spec, fingerprint, state,
                             attempts, next_attempt_at, lease_token, lease_expires_at, last_error_kind,
                             last_error_status, last_error_message, entitlement_uuid, traceparent, create_time,
                             update_time)
SELECT fulfillment_id, order_number, line_item_id, position, spec, fingerprint, state, attempts, next_attempt_at,
       lease_token, lease_expires_at, last_error_kind, last_error_status, last_error_message, entitlement_uuid,
       traceparent, create_time, update_time
FROM fulfillments;

CREATE TABLE fulfillment_transitions_v4 (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    fulfillment_id TEXT    NOT NULL REFERENCES fulfillments_v4 (fulfillment_id),
    from_state     TEXT,
    to_state       TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    lease_token    TEXT,
    at             INTEGER NOT NULL
);
INSERT INTO fulfillment_transitions_v4 (seq, fulfillment_id, from_state, to_state, attempt, lease_token, at)
SELECT seq, fulfillment_id, from_state, to_state, attempt, lease_token, at FROM fulfillment_transitions;

DROP TABLE fulfillment_transitions;
DROP TABLE fulfillments;
ALTER TABLE fulfillments_v4 RENAME TO fulfillments;
ALTER TABLE fulfillment_transitions_v4 RENAME TO fulfillment_transitions;

CREATE INDEX fulfillments_due ON fulfillments (next_attempt_at) WHERE state IN ('PENDING', 'REVOKING');
CREATE INDEX fulfillments_leased ON fulfillments (lease_expires_at) WHERE state IN ('IN_PROGRESS', 'REVOKING');
CREATE INDEX fulfillments_failed ON fulfillments (update_time) WHERE state IN ('FAILED', 'REVOKE_FAILED');
CREATE INDEX fulfillments_order ON fulfillments (order_number, position);
CREATE INDEX fulfillments_lms_user ON fulfillments (json_extract(spec, '$.learner.lms_user_id'));
CREATE INDEX fulfillment_transitions_job ON fulfillment_transitions (fulfillment_id, seq);

CREATE TABLE refund_requests (
    refund_request_id TEXT    NOT NULL PRIMARY KEY,
    fulfillment_id    TEXT    NOT NULL UNIQUE REFERENCES fulfillments (fulfillment_id),
    reason            TEXT    NOT NULL DEFAULT '',
    requested_at      INTEGER NOT NULL
);
CREATE INDEX fulfillments_lms_username ON fulfillments (json_extract(spec, '$.learner.lms_username'));
