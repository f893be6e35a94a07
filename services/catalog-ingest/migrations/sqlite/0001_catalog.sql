-- Same tables as the Postgres migration of the same number. Times are INTEGER
-- microseconds since the Unix epoch, so staleness compares as numbers (SQLite
-- has no time type, and text times would compare wrongly across formats);
-- JSON columns are TEXT; booleans are 0/1.
CREATE TABLE products (
    product_key        TEXT    NOT NULL PRIMARY KEY,
    source             TEXT    NOT NULL,
    product_type       TEXT    NOT NULL
        CHECK (product_type IN ('COURSE', 'EXECUTIVE_EDUCATION', 'BOOTCAMP', 'DEGREE', 'PROGRAM')),
    title              TEXT    NOT NULL,
    org                TEXT    NOT NULL,
    number             TEXT    NOT NULL,
    short_description  TEXT    NOT NULL,
    long_description   TEXT    NOT NULL,
    level              TEXT    NOT NULL,
    subjects           TEXT    NOT NULL,
    languages          TEXT    NOT NULL,
    effort_min_hours   INTEGER,
    effort_max_hours   INTEGER,
    length_weeks       INTEGER,
    image_url          TEXT    NOT NULL,
    retired            INTEGER NOT NULL DEFAULT 0,
    source_update_time INTEGER NOT NULL,
    create_time        INTEGER NOT NULL,
    update_time        INTEGER NOT NULL,
    CHECK ((effort_min_hours IS NULL) = (effort_max_hours IS NULL))
);
CREATE INDEX products_source ON products (source, product_key);
CREATE INDEX products_type ON products (product_type, product_key);

CREATE TABLE instructors (
    source             TEXT    NOT NULL,
    instructor_key     TEXT    NOT NULL,
    given_name         TEXT    NOT NULL,
    family_name        TEXT    NOT NULL,
    title              TEXT    NOT NULL,
    organization       TEXT    NOT NULL,
    bio                TEXT    NOT NULL,
    image_url          TEXT    NOT NULL,
    source_update_time INTEGER NOT NULL,
    create_time        INTEGER NOT NULL,
    update_time        INTEGER NOT NULL,
    PRIMARY KEY (source, instructor_key)
);

CREATE TABLE product_instructors (
    product_key       TEXT    NOT NULL REFERENCES products (product_key),
    position          INTEGER NOT NULL,
    instructor_source TEXT    NOT NULL,
    instructor_key    TEXT    NOT NULL,
    PRIMARY KEY (product_key, position),
    FOREIGN KEY (instructor_source, instructor_key) REFERENCES instructors (source, instructor_key)
);

CREATE TABLE course_runs (
    course_run_key      TEXT    NOT NULL PRIMARY KEY,
    product_key         TEXT    NOT NULL REFERENCES products (product_key),
    start_time          INTEGER NOT NULL,
    end_time            INTEGER NOT NULL,
    enrollment_end_time INTEGER,
    pacing              TEXT    NOT NULL CHECK (pacing IN ('INSTRUCTOR_PACED', 'SELF_PACED')),
    run_type            TEXT    NOT NULL,
    create_time         INTEGER NOT NULL,
    update_time         INTEGER NOT NULL
);
CREATE INDEX course_runs_product ON course_runs (product_key, start_time, course_run_key);

CREATE TABLE seats (
    course_run_key   TEXT    NOT NULL REFERENCES course_runs (course_run_key),
    mode             TEXT    NOT NULL,
    position         INTEGER NOT NULL,
    price_currency   TEXT,
    price_amount     TEXT,
    sku              TEXT    NOT NULL,
    upgrade_deadline INTEGER,
    PRIMARY KEY (course_run_key, mode),
    CHECK ((price_currency IS NULL) = (price_amount IS NULL))
);

CREATE TABLE ingestions (
    ingestion_id TEXT    NOT NULL PRIMARY KEY,
    source       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    event_name   TEXT    NOT NULL,
    occurred_at  INTEGER NOT NULL,
    payload_hash TEXT    NOT NULL,
    product_key  TEXT,
    state        TEXT    NOT NULL CHECK (state IN ('APPLIED', 'FAILED', 'SKIPPED_STALE')),
    steps        TEXT    NOT NULL,
    create_time  INTEGER NOT NULL,
    UNIQUE (source, event_id)
);
