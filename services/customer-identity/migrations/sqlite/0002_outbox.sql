-- Events written in the same transaction as the change that caused them
-- (a retirement's CustomerRetired); kit::outbox::Relay publishes them.
-- Times are integer microseconds since the epoch.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    stream       TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    create_time  INTEGER NOT NULL,
    published_at INTEGER
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
