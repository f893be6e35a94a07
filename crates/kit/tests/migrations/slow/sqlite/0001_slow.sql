-- In step with the Postgres migration; SQLite has no statement timeout.
CREATE TABLE slow_notes (id INTEGER PRIMARY KEY);
