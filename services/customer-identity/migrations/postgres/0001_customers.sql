-- One row per commerce customer linked to an LMS user. The database enforces
-- what the commerce platform cannot: one customer per customer_id, per
-- lms_user_id, and per username compared case-insensitively.
CREATE TABLE customers (
    customer_id   TEXT        NOT NULL,
    lms_user_id   BIGINT      NOT NULL,
    lms_username  TEXT        NOT NULL,
    email         TEXT        NOT NULL DEFAULT '',
    version       BIGINT      NOT NULL,
    retired       BOOLEAN     NOT NULL DEFAULT FALSE,
    create_time   TIMESTAMPTZ NOT NULL,
    update_time   TIMESTAMPTZ NOT NULL,
    CONSTRAINT customers_pkey PRIMARY KEY (customer_id),
    CONSTRAINT customers_lms_user_id_key UNIQUE (lms_user_id)
);

-- Usernames are ASCII (letters, digits, _ and -), so lower() folds them exactly.
CREATE UNIQUE INDEX customers_lms_username_key ON customers (lower(lms_username));
