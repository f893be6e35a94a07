-- Same table as the Postgres migration of the same number; times are INTEGER
-- microseconds since the Unix epoch.
CREATE TABLE purchase_refunds (
    refunded_purchase_id TEXT    NOT NULL PRIMARY KEY,
    refund_currency_code TEXT    NOT NULL,
    refunded_amount      TEXT    NOT NULL,
    refund_reason        TEXT    NOT NULL DEFAULT '',
    refund_source        TEXT    NOT NULL,
    refunded_at          INTEGER NOT NULL,
    refund_recorded_at   INTEGER NOT NULL
);
