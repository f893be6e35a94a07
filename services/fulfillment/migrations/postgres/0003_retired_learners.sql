-- Learners retired (CustomerRetired events). Their jobs' usernames (in spec,
-- and in last_error_message where the LMS echoed it) and their unpublished
-- outbox events were given the placeholder; an order naming a retired
-- learner is refused.
CREATE TABLE retired_learners (
    lms_user_id      BIGINT      NOT NULL PRIMARY KEY,
    retired_username TEXT        NOT NULL,
    retired_at       TIMESTAMPTZ NOT NULL
);

-- A retirement finds the learner's jobs without reading every job.
CREATE INDEX fulfillments_lms_user ON fulfillments ((spec -> 'learner' ->> 'lms_user_id'));
