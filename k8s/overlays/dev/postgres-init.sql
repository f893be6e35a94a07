-- Run once, when the development PostgreSQL initialises its data directory,
-- as commerce (the superuser the image creates, POSTGRES_USER): commerce is
-- the migrations Job's role (migrate-database-url) and owns every schema and
-- table; the services connect as commerce_app (database-url), which may read
-- and write rows but change no schema. As docs/OPERATIONS.md, "Database
-- roles", sets them up in production.
CREATE ROLE commerce_app LOGIN PASSWORD 'commerce-app-dev';
GRANT CONNECT, TEMPORARY ON DATABASE commerce TO commerce_app;
ALTER DEFAULT PRIVILEGES FOR ROLE commerce GRANT USAGE ON SCHEMAS TO commerce_app;
ALTER DEFAULT PRIVILEGES FOR ROLE commerce GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO commerce_app;
ALTER DEFAULT PRIVILEGES FOR ROLE commerce GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO commerce_app;
