-- Outcome webhooks (src/webhook): one row per outcome owed to a source system's
-- webhook, written in the transaction that records the outcome, worked off by
-- the sender. No foreign key to fulfillments: the row outlives nothing, and a
-- table rebuild of fulfillments (SQLite) need not know of it.
CREATE TABLE webhook_deliveries (
    seq             BIGSERIAL   PRIMARY KEY,
    event_id        TEXT        NOT NULL UNIQUE,
    source_system   TEXT        NOT NULL,
    fulfillment_id  TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    traceparent     TEXT        NOT NULL DEFAULT '',
    state           TEXT        NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'DELIVERED', 'GAVE_UP')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_error_kind TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    create_time     TIMESTAMPTZ NOT NULL,
    update_time     TIMESTAMPTZ NOT NULL
);
-- The sender's claims and the backlog gauges read only the rows still owed.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'PENDING';
-- Finished rows are deleted after the retention window.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (update_time) WHERE state <> 'PENDING';
CREATE INDEX webhook_deliveries_fulfillment ON webhook_deliveries (fulfillment_id, seq);
