-- The catalog read model (products, instructors, runs, seats) and the record
-- of every ingested event. Products, instructors and runs are never deleted:
-- a product leaves the catalog by being retired.

-- One row per product. source_update_time is the occurred_at of the newest
-- event applied to it: an event older than that is recorded and skipped.
CREATE TABLE products (
    product_key        TEXT        NOT NULL,
    -- The line of business that owns the key; another source may not write it.
    source             TEXT        NOT NULL,
    product_type       TEXT        NOT NULL,
    title              TEXT        NOT NULL,
    org                TEXT        NOT NULL,
    number             TEXT        NOT NULL,
    short_description  TEXT        NOT NULL,
    long_description   TEXT        NOT NULL,
    level              TEXT        NOT NULL,
    -- JSON arrays of strings: always read and written whole, never queried into.
    subjects           JSONB       NOT NULL,
    languages          JSONB       NOT NULL,
    effort_min_hours   INTEGER,
    effort_max_hours   INTEGER,
    length_weeks       INTEGER,
    image_url          TEXT        NOT NULL,
    retired            BOOLEAN     NOT NULL DEFAULT FALSE,
    source_update_time TIMESTAMPTZ NOT NULL,
    create_time        TIMESTAMPTZ NOT NULL,
    update_time        TIMESTAMPTZ NOT NULL,
    CONSTRAINT products_pkey PRIMARY KEY (product_key),
    CONSTRAINT products_type_check
        CHECK (product_type IN ('COURSE', 'EXECUTIVE_EDUCATION', 'BOOTCAMP', 'DEGREE', 'PROGRAM')),
    CONSTRAINT products_effort_check CHECK ((effort_min_hours IS NULL) = (effort_max_hours IS NULL))
);
-- ListProducts filtered by source or by type, in key order.
CREATE INDEX products_source ON products (source, product_key);
CREATE INDEX products_type ON products (product_type, product_key);

-- Instructors are keyed per source: two lines of business may use the same key
-- for different people. source_update_time: as for products, per instructor.
CREATE TABLE instructors (
    source             TEXT        NOT NULL,
    instructor_key     TEXT        NOT NULL,
    given_name         TEXT        NOT NULL,
    family_name        TEXT        NOT NULL,
    title              TEXT        NOT NULL,
    organization       TEXT        NOT NULL,
    bio                TEXT        NOT NULL,
    image_url          TEXT        NOT NULL,
    source_update_time TIMESTAMPTZ NOT NULL,
    create_time        TIMESTAMPTZ NOT NULL,
    update_time        TIMESTAMPTZ NOT NULL,
    CONSTRAINT instructors_pkey PRIMARY KEY (source, instructor_key)
);

-- A product's instructors in display order (position from 0).
CREATE TABLE product_instructors (
    product_key       TEXT    NOT NULL REFERENCES products (product_key),
    position          INTEGER NOT NULL,
    instructor_source TEXT    NOT NULL,
    instructor_key    TEXT    NOT NULL,
    CONSTRAINT product_instructors_pkey PRIMARY KEY (product_key, position),
    CONSTRAINT product_instructors_instructor_fkey
        FOREIGN KEY (instructor_source, instructor_key) REFERENCES instructors (source, instructor_key)
);

CREATE TABLE course_runs (
    course_run_key      TEXT        NOT NULL,
    product_key         TEXT        NOT NULL REFERENCES products (product_key),
    start_time          TIMESTAMPTZ NOT NULL,
    end_time            TIMESTAMPTZ NOT NULL,
    enrollment_end_time TIMESTAMPTZ,
    pacing              TEXT        NOT NULL,
    run_type            TEXT        NOT NULL,
    create_time         TIMESTAMPTZ NOT NULL,
    update_time         TIMESTAMPTZ NOT NULL,
    CONSTRAINT course_runs_pkey PRIMARY KEY (course_run_key),
    CONSTRAINT course_runs_pacing_check CHECK (pacing IN ('INSTRUCTOR_PACED', 'SELF_PACED'))
);
-- A product's runs, in the order they are read (by start).
CREATE INDEX course_runs_product ON course_runs (product_key, start_time, course_run_key);

-- What can be bought for a run. The price is an exact decimal kept as text,
-- never a float; a free seat has none. position keeps the event's order.
CREATE TABLE seats (
    course_run_key   TEXT        NOT NULL REFERENCES course_runs (course_run_key),
    mode             TEXT        NOT NULL,
    position         INTEGER     NOT NULL,
    price_currency   TEXT,
    price_amount     TEXT,
    sku              TEXT        NOT NULL,
    upgrade_deadline TIMESTAMPTZ,
    CONSTRAINT seats_pkey PRIMARY KEY (course_run_key, mode),
    CONSTRAINT seats_price_check CHECK ((price_currency IS NULL) = (price_amount IS NULL))
);

-- Every event received, once per (source, event_id), whatever became of it:
-- replays are answered from here. steps: the StepResults as a JSON array.
CREATE TABLE ingestions (
    ingestion_id TEXT        NOT NULL,
    source       TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    event_name   TEXT        NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    payload_hash TEXT        NOT NULL,
    product_key  TEXT,
    state        TEXT        NOT NULL,
    steps        JSONB       NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL,
    CONSTRAINT ingestions_pkey PRIMARY KEY (ingestion_id),
    CONSTRAINT ingestions_event_key UNIQUE (source, event_id),
    CONSTRAINT ingestions_state_check CHECK (state IN ('APPLIED', 'FAILED', 'SKIPPED_STALE'))
);
