-- One row per line item of an accepted order: the fulfillment job. This table
-- is the queue: workers claim due rows with FOR UPDATE SKIP LOCKED and hold a
-- lease (lease_token, lease_expires_at) while they call the LMS.
CREATE TABLE fulfillments (
    fulfillment_id     TEXT        NOT NULL,
    order_number       TEXT        NOT NULL,
    line_item_id       TEXT        NOT NULL,
    position           INTEGER     NOT NULL,
    -- The line as accepted (domain::JobSpec as JSON) and its fingerprint, which
    -- decides whether a repeat of the order is the same order.
    spec               JSONB       NOT NULL,
    fingerprint        TEXT        NOT NULL,
    state              TEXT        NOT NULL,
    attempts           INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at    TIMESTAMPTZ,
    lease_token        TEXT,
    lease_expires_at   TIMESTAMPTZ,
    last_error_kind    TEXT,
    last_error_status  INTEGER,
    last_error_message TEXT,
    entitlement_uuid   TEXT,
    -- W3C traceparent of the FulfillOrder call, so the worker's LMS call joins its trace.
    traceparent        TEXT        NOT NULL DEFAULT '',
    create_time        TIMESTAMPTZ NOT NULL,
    update_time        TIMESTAMPTZ NOT NULL,
    CONSTRAINT fulfillments_pkey PRIMARY KEY (fulfillment_id),
    CONSTRAINT fulfillments_line_key UNIQUE (order_number, line_item_id),
    CONSTRAINT fulfillments_state_check CHECK (state IN ('PENDING', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED'))
);

-- What workers scan (due pending jobs, leases that ran out) and what operators
-- and metrics count (failed jobs); none of them grows with SUCCEEDED rows.
CREATE INDEX fulfillments_due ON fulfillments (next_attempt_at) WHERE state = 'PENDING';
CREATE INDEX fulfillments_leased ON fulfillments (lease_expires_at) WHERE state = 'IN_PROGRESS';
CREATE INDEX fulfillments_failed ON fulfillments (update_time) WHERE state = 'FAILED';
CREATE INDEX fulfillments_order ON fulfillments (order_number, position);

-- Every state change, for audit and for proving a job succeeded once.
CREATE TABLE fulfillment_transitions (
    seq            BIGSERIAL   PRIMARY KEY,
    fulfillment_id TEXT        NOT NULL REFERENCES fulfillments (fulfillment_id),
    from_state     TEXT,
    to_state       TEXT        NOT NULL,
    attempt        INTEGER     NOT NULL,
    lease_token    TEXT,
    at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX fulfillment_transitions_job ON fulfillment_transitions (fulfillment_id, seq);

-- Events written in the same transaction as the state change that caused
-- them; the relay publishes them to the event bus and stamps published_at.
CREATE TABLE outbox (
    seq          BIGSERIAL   PRIMARY KEY,
    event_id     TEXT        NOT NULL UNIQUE,
    stream       TEXT        NOT NULL,
    payload      BYTEA       NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
