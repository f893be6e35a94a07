-- One row per purchase, stored once: a purchase_id seen again (a redelivered or
-- republished event) is skipped by INSERT ... ON CONFLICT (purchase_id) DO
-- NOTHING, so the first content stored for an id is the one kept.
CREATE TABLE purchases (
    -- COLLATE "C": byte order, as SQLite compares, so equal purchase times are
    -- paged in the same order on both backends.
    purchase_id   TEXT COLLATE "C" NOT NULL,
    lms_user_id   BIGINT           NOT NULL,
    -- COLLATE "C" so lower() folds ASCII only, whatever the database's locale
    -- (usernames are ASCII), exactly as SQLite's lower() does.
    username      TEXT COLLATE "C" NOT NULL,
    -- Empty when the message did not say.
    order_number  TEXT             NOT NULL DEFAULT '',
    product_key   TEXT             NOT NULL DEFAULT '',
    title         TEXT             NOT NULL DEFAULT '',
    currency_code TEXT             NOT NULL,
    -- The exact decimal as sent ("149.00" stays "149.00"), never a float.
    amount        TEXT             NOT NULL,
    purchased_at  TIMESTAMPTZ      NOT NULL,
    source        TEXT             NOT NULL DEFAULT '',
    -- When this service stored it; with purchased_at, how far the consumer lags.
    recorded_at   TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CONSTRAINT purchases_pkey PRIMARY KEY (purchase_id)
);

-- ListPurchases reads one learner's newest purchases, and pages by keyset
-- ((purchased_at, purchase_id) below the last one seen): each is one index
-- range scan in index order, however many rows the table holds.
CREATE INDEX purchases_by_user ON purchases (lms_user_id, purchased_at DESC, purchase_id DESC);
CREATE INDEX purchases_by_username ON purchases (lower(username), purchased_at DESC, purchase_id DESC);
