-- Refunds of purchases (PurchaseRefunded events), one per purchase, kept
-- beside the purchase rather than in it: a refund may be delivered before
-- its purchase (two consumers of one stream), and either order ends with
-- the purchase listed as refunded. The first refund stored for a purchase is
-- the one kept, as for purchases. Not a foreign key, for the same reason.
CREATE TABLE purchase_refunds (
    refunded_purchase_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    refund_currency_code TEXT             NOT NULL,
    -- The exact decimal as sent, never a float.
    refunded_amount      TEXT             NOT NULL,
    refund_reason        TEXT             NOT NULL DEFAULT '',
    refund_source        TEXT             NOT NULL,
    refunded_at          TIMESTAMPTZ      NOT NULL,
    refund_recorded_at   TIMESTAMPTZ      NOT NULL DEFAULT now()
);
