-- Same table as the Postgres migration of the same number; times are INTEGER
-- microseconds since the Unix epoch.
CREATE TABLE retired_learners (
    lms_user_id      INTEGER NOT NULL PRIMARY KEY,
    retired_username TEXT    NOT NULL,
    retired_at       INTEGER NOT NULL
);
