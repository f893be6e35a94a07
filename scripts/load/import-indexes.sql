\timing on
-- What the CustomerIdentity import costs the server, whatever the client does: one
-- million generated links merged into the customers table as shipped (three unique
-- indexes), with its primary key only, and with no index (indexes built after).
-- Usage: psql -U postgres -h 127.0.0.1 -f scripts/load/import-indexes.sql (docs/BENCHMARKS.md).
DROP DATABASE IF EXISTS bench_import_exp;
CREATE DATABASE bench_import_exp;
\c bench_import_exp
CREATE UNLOGGED TABLE staging AS
  SELECT 'cust-' || md5(g::text) AS customer_id, ((g::bigint * 7919) % 1000000007) AS lms_user_id,
         'u' || substr(md5((g*13)::text), 1, 20) || g AS lms_username, 'x@example.org' AS email
  FROM generate_series(1, 1000000) g;
-- A: the table as shipped, three unique indexes, rows merged in random key order
CREATE TABLE a (customer_id TEXT NOT NULL PRIMARY KEY, lms_user_id BIGINT NOT NULL UNIQUE, lms_username TEXT NOT NULL,
  email TEXT NOT NULL DEFAULT '', version BIGINT NOT NULL, retired BOOLEAN NOT NULL DEFAULT FALSE,
  create_time TIMESTAMPTZ NOT NULL, update_time TIMESTAMPTZ NOT NULL);
CREATE UNIQUE INDEX a_username ON a (lower(lms_username));
\echo A: merge into a table with its three unique indexes
INSERT INTO a SELECT customer_id, lms_user_id, lms_username, email, 1, false, now(), now() FROM staging
  ON CONFLICT (customer_id) DO NOTHING;
-- B: the same rows into the table with only its primary key, the two other indexes built after
CREATE TABLE b (customer_id TEXT NOT NULL PRIMARY KEY, lms_user_id BIGINT NOT NULL, lms_username TEXT NOT NULL,
  email TEXT NOT NULL DEFAULT '', version BIGINT NOT NULL, retired BOOLEAN NOT NULL DEFAULT FALSE,
  create_time TIMESTAMPTZ NOT NULL, update_time TIMESTAMPTZ NOT NULL);
\echo B: merge into a table with its primary key only
INSERT INTO b SELECT customer_id, lms_user_id, lms_username, email, 1, false, now(), now() FROM staging
  ON CONFLICT (customer_id) DO NOTHING;
\echo B: then build the two other unique indexes
ALTER TABLE b ADD CONSTRAINT b_lms_user_id_key UNIQUE (lms_user_id);
CREATE UNIQUE INDEX b_username ON b (lower(lms_username));
-- C: no index at all, every index built after
CREATE TABLE c (customer_id TEXT NOT NULL, lms_user_id BIGINT NOT NULL, lms_username TEXT NOT NULL,
  email TEXT NOT NULL DEFAULT '', version BIGINT NOT NULL, retired BOOLEAN NOT NULL DEFAULT FALSE,
  create_time TIMESTAMPTZ NOT NULL, update_time TIMESTAMPTZ NOT NULL);
\echo C: plain insert into a table with no index
INSERT INTO c SELECT customer_id, lms_user_id, lms_username, email, 1, false, now(), now() FROM staging;
\echo C: then build all three
ALTER TABLE c ADD CONSTRAINT c_pkey PRIMARY KEY (customer_id);
ALTER TABLE c ADD CONSTRAINT c_lms_user_id_key UNIQUE (lms_user_id);
CREATE UNIQUE INDEX c_username ON c (lower(lms_username));
\c postgres
DROP DATABASE bench_import_exp;
