//! Which jobs an operator means (`ListFulfillments`, `RetryFulfillments`):
//! the filter as domain values, the window of update times, the page cursor
//! and the bounds. Pure: parsed once at the edge (`api.rs`), read by the store.

use chrono::{DateTime, Utc};
use vocab::{CourseRunKey, SourceSystem};

use crate::domain::{ErrorKind, JobState};

/// The page of `ListFulfillments` when the caller asks for none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest page of `ListFulfillments`.
pub const MAX_PAGE_SIZE: u32 = 500;
/// The most `RetryFulfillments` may re-drive in one call (one transaction).
pub const MAX_RETRY_JOBS: u32 = 1000;

/// The jobs a filter matches: every field set narrows the match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Any of these states; empty for any state. Each at most once.
    pub states: Vec<JobState>,
    /// Only enrollments in this run.
    pub course_run_key: Option<CourseRunKey>,
    /// Only jobs whose last error is of this kind.
    pub error_kind: Option<ErrorKind>,
    /// Only orders from this system.
    pub source_system: Option<SourceSystem>,
    /// Only jobs last changed in this window.
    pub updated: UpdateWindow,
}

/// Why a filter cannot be used to retry: the state at this index of
/// `states` is not a failure a retry re-drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{state} cannot be retried; only FAILED and REVOKE_FAILED fulfillments can")]
pub struct NotRetryable {
    /// Its index in `states`.
    pub index: usize,
    /// The state.
    pub state: JobState,
}

impl JobFilter {
    /// The filter of a retry: the failures a retry re-drives (both when no
    /// state is named), refusing a state that is not one.
    pub fn retryable(mut self) -> Result<Self, NotRetryable> {
        if let Some((index, state)) = self.states.iter().enumerate().find(|(_, s)| s.redriven().is_none()) {
            return Err(NotRetryable { index, state: *state });
        }
        if self.states.is_empty() {
            self.states = vec![JobState::Failed, JobState::RevokeFailed];
        }
        Ok(self)
    }
}

/// When matching jobs last changed: at or after `after`, before `before`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateWindow {
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
}

/// Why a window is empty by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be earlier than updated_before ({before}), got {after}")]
pub struct EmptyWindow {
    /// The start given.
    pub after: DateTime<Utc>,
    /// The end given.
    pub before: DateTime<Utc>,
}

impl UpdateWindow {
    /// The window from `after` (inclusive) to `before` (exclusive); either may be open.
    pub fn new(after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>) -> Result<Self, EmptyWindow> {
        match (after, before) {
            (Some(after), Some(before)) if after >= before => Err(EmptyWindow { after, before }),
            _ => Ok(Self { after, before }),
        }
    }

    /// The earliest change matched.
    pub fn after(&self) -> Option<DateTime<Utc>> {
        self.after
    }

    /// The first change no longer matched.
    pub fn before(&self) -> Option<DateTime<Utc>> {
        self.before
    }
}

/// Where a page of `ListFulfillments` continues: after this job, in the
/// order (update time, id) descending. Keyset paging: a page costs the same
/// however deep, and a job that changes meanwhile moves to the front rather
/// than shifting every later page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// The last listed job's update time.
    pub updated_at: DateTime<Utc>,
    /// The last listed job's id.
    pub id: String,
}

/// A page token this service did not give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("is not a next_page_token this service gave")]
pub struct UnknownToken;

/// The version prefix of a page token, so its form can change later.
const TOKEN_PREFIX: &str = "f1.";

impl PageCursor {
    /// The token a caller passes back: opaque (hex), versioned.
    pub fn token(&self) -> String {
        format!("{TOKEN_PREFIX}{}", hex::encode(format!("{}:{}", self.updated_at.timestamp_micros(), self.id)))
    }

    /// The cursor a token stands for.
    pub fn from_token(token: &str) -> Result<Self, UnknownToken> {
        let hexed = token.strip_prefix(TOKEN_PREFIX).ok_or(UnknownToken)?;
        let text = String::from_utf8(hex::decode(hexed).map_err(|_| UnknownToken)?).map_err(|_| UnknownToken)?;
        let (micros, id) = text.split_once(':').ok_or(UnknownToken)?;
        let updated_at = micros.parse().ok().and_then(DateTime::from_timestamp_micros).ok_or(UnknownToken)?;
        if id.is_empty() || id.len() > 100 {
            return Err(UnknownToken);
        }
        Ok(Self { updated_at, id: id.to_string() })
    }
}

/// Why a page size or retry bound is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    /// Required and not given (0).
    #[error("is required: at most how many fulfillments to retry, 1 to {max}")]
    Missing {
        /// The largest allowed.
        max: u32,
    },
    /// Outside 1..=max.
    #[error("must be between 1 and {max}, got {given}")]
    OutOfRange {
        /// What was given.
        given: i32,
        /// The largest allowed.
        max: u32,
    },
}

/// A page size as asked: 0 for the default, else 1 to [`MAX_PAGE_SIZE`].
pub fn page_size(asked: i32) -> Result<u32, BoundError> {
    match asked {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => u32::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_PAGE_SIZE)
            .ok_or(BoundError::OutOfRange { given: asked, max: MAX_PAGE_SIZE }),
    }
}

/// A retry bound as asked: required, 1 to [`MAX_RETRY_JOBS`].
pub fn retry_bound(asked: i32) -> Result<u32, BoundError> {
    match asked {
        0 => Err(BoundError::Missing { max: MAX_RETRY_JOBS }),
        n => u32::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_RETRY_JOBS)
            .ok_or(BoundError::OutOfRange { given: asked, max: MAX_RETRY_JOBS }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    #[test]
    fn a_window_must_not_be_empty_and_either_end_may_be_open() {
        assert!(UpdateWindow::new(Some(at(10)), Some(at(20))).is_ok());
        assert!(UpdateWindow::new(Some(at(10)), None).is_ok());
        assert!(UpdateWindow::new(None, Some(at(10))).is_ok());
        assert_eq!(UpdateWindow::new(Some(at(20)), Some(at(10))), Err(EmptyWindow { after: at(20), before: at(10) }));
        assert!(UpdateWindow::new(Some(at(10)), Some(at(10))).is_err(), "[t, t) matches nothing");
    }

    #[test]
    fn a_retry_means_the_failures_and_refuses_other_states_by_index() {
        let any = JobFilter::default().retryable().unwrap();
        assert_eq!(any.states, [JobState::Failed, JobState::RevokeFailed]);
        let failed = JobFilter { states: vec![JobState::Failed], ..Default::default() }.retryable().unwrap();
        assert_eq!(failed.states, [JobState::Failed]);
        let mixed = JobFilter { states: vec![JobState::RevokeFailed, JobState::Pending], ..Default::default() };
        assert_eq!(mixed.retryable(), Err(NotRetryable { index: 1, state: JobState::Pending }));
    }

    #[test]
    fn a_cursor_survives_its_token_and_foreign_tokens_are_refused() {
        let cursor = PageCursor {
            updated_at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap_or_default(),
            id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        };
        assert_eq!(PageCursor::from_token(&cursor.token()), Ok(cursor));
        for bad in ["", "position:3", "f1.zz", "f1.", "f1.3132", &format!("f1.{}", hex::encode("x:abc"))] {
            assert_eq!(PageCursor::from_token(bad), Err(UnknownToken), "{bad}");
        }
    }

    #[test]
    fn page_sizes_default_and_bounds_are_required_and_capped() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(500), Ok(500));
        assert!(matches!(page_size(501), Err(BoundError::OutOfRange { given: 501, .. })));
        assert!(matches!(page_size(-1), Err(BoundError::OutOfRange { given: -1, .. })));
        assert_eq!(retry_bound(0), Err(BoundError::Missing { max: MAX_RETRY_JOBS }));
        assert_eq!(retry_bound(1000), Ok(1000));
        assert!(retry_bound(1001).is_err() && retry_bound(-5).is_err());
    }
}
