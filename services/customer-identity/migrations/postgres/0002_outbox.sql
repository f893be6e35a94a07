-- Events written in the same transaction as the change that caused them
-- (a retirement's CustomerRetired); kit::outbox::Relay publishes them to the
-- event bus, stamps published_at, and deletes published rows after the
-- retention window.
CREATE TABLE outbox (
    seq          BIGSERIAL   PRIMARY KEY,
    event_id     TEXT        NOT NULL UNIQUE,
    stream       TEXT        NOT NULL,
    payload      BYTEA       NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
