-- Same table as the Postgres migration of the same number; times are INTEGER
-- microseconds since the Unix epoch.
CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    source_system   TEXT    NOT NULL,
    fulfillment_id  TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    traceparent     TEXT    NOT NULL DEFAULT '',
    state           TEXT    NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'DELIVERED', 'GAVE_UP')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error_kind TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    create_time     INTEGER NOT NULL,
    update_time     INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'PENDING';
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (update_time) WHERE state <> 'PENDING';
CREATE INDEX webhook_deliveries_fulfillment ON webhook_deliveries (fulfillment_id, seq);
