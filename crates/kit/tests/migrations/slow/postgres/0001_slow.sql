-- Longer than the statement timeout the test configures: migrations run without it.
SELECT pg_sleep(0.5);
CREATE TABLE slow_notes (id BIGSERIAL PRIMARY KEY);
