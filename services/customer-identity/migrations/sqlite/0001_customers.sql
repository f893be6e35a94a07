-- Same table as the Postgres migration of the same number.
CREATE TABLE customers (
    customer_id   TEXT    NOT NULL PRIMARY KEY,
    lms_user_id   INTEGER NOT NULL,
    lms_username  TEXT    NOT NULL,
    email         TEXT    NOT NULL DEFAULT '',
    version       INTEGER NOT NULL,
    retired       INTEGER NOT NULL DEFAULT 0,
    create_time   TEXT    NOT NULL,
    update_time   TEXT    NOT NULL
);

CREATE UNIQUE INDEX customers_lms_user_id_key ON customers (lms_user_id);
CREATE UNIQUE INDEX customers_lms_username_key ON customers (lower(lms_username));
