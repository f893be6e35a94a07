-- Same tables as the Postgres migration of the same number. Times are INTEGER
-- microseconds since the Unix epoch, so due times and leases compare as numbers.
CREATE TABLE fulfillments (
    fulfillment_id     TEXT    NOT NULL PRIMARY KEY,
    order_number       TEXT    NOT NULL,
    line_item_id       TEXT    NOT NULL,
    position           INTEGER NOT NULL,
    spec               TEXT    NOT NULL,
    fingerprint        TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('PENDING', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED')),
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
    UNIQUE (order_number, line_item_id)
);

CREATE INDEX fulfillments_due ON fulfillments (next_attempt_at) WHERE state = 'PENDING';
CREATE INDEX fulfillments_leased ON fulfillments (lease_expires_at) WHERE state = 'IN_PROGRESS';
CREATE INDEX fulfillments_failed ON fulfillments (update_time) WHERE state = 'FAILED';
CREATE INDEX fulfillments_order ON fulfillments (order_number, position);

CREATE TABLE fulfillment_transitions (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    fulfillment_id TEXT    NOT NULL REFERENCES fulfillments (fulfillment_id),
    from_state     TEXT,
    to_state       TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    lease_token    TEXT,
    at             INTEGER NOT NULL
);
CREATE INDEX fulfillment_transitions_job ON fulfillment_transitions (fulfillment_id, seq);

CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    stream       TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    create_time  INTEGER NOT NULL,
    published_at INTEGER
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
