-- Same table as the Postgres migration of the same number. Times are INTEGER
-- microseconds since the Unix epoch; text compares by bytes (SQLite's BINARY
-- collation), as the Postgres columns declared COLLATE "C" do.
CREATE TABLE purchases (
    purchase_id   TEXT    NOT NULL PRIMARY KEY,
    lms_user_id   INTEGER NOT NULL,
    username      TEXT    NOT NULL,
    order_number  TEXT    NOT NULL DEFAULT '',
    product_key   TEXT    NOT NULL DEFAULT '',
    title         TEXT    NOT NULL DEFAULT '',
    currency_code TEXT    NOT NULL,
    -- TEXT affinity keeps the exact decimal as sent; NUMERIC would make it a float.
    amount        TEXT    NOT NULL,
    purchased_at  INTEGER NOT NULL,
    source        TEXT    NOT NULL DEFAULT '',
    recorded_at   INTEGER NOT NULL
);

CREATE INDEX purchases_by_user ON purchases (lms_user_id, purchased_at DESC, purchase_id DESC);
CREATE INDEX purchases_by_username ON purchases (lower(username), purchased_at DESC, purchase_id DESC);
