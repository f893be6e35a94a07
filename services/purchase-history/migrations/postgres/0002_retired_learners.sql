-- Learners retired (CustomerRetired events): their purchases' usernames were
-- replaced with the placeholder, and a purchase of theirs stored later (an
-- event published before the retirement, delivered after it) takes the
-- placeholder too, whatever order the two streams deliver in.
CREATE TABLE retired_learners (
    lms_user_id      BIGINT      NOT NULL PRIMARY KEY,
    retired_username TEXT        NOT NULL,
    retired_at       TIMESTAMPTZ NOT NULL
);
