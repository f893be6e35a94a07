//! A first load: an import into an empty `customers` table, written with the
//! table's indexes built after the rows instead of maintained row by row.
//!
//! Keeping three unique B-trees on random keys in order as rows arrive is
//! four fifths of an import's cost (docs/BENCHMARKS.md, "The import's cost
//! is index maintenance"). When an import stream starts on an empty table,
//! its batches are staged in a temporary table as they come; when the stream
//! ends, one transaction takes the table, drops its unique indexes (as the
//! database describes them, so a later migration's index is kept too),
//! inserts every staged row, and builds the indexes again. The outcome is the
//! ordinary import's for such a stream — every row inserted — so the fast
//! path is taken only when it cannot differ: if the table is no longer empty,
//! or an index cannot be built because two staged rows share a key, that
//! transaction is rolled back and the staged batches are merged one by one
//! exactly as the ordinary import would have (repeats, taken keys and all).
//!
//! ```text
//! begin_first_load ──► stage(batch) … stage(batch) ──► finish
//!   (None: not empty)                                   ├─► Inserted(n)
//!                                                       └─► Conflicted(batches) ─► next_batch …
//! ```

use crate::domain::{CustomerId, CustomerLink, Email, LmsUserId, LmsUsername};

use super::StoreError;

/// A first load under way: batches staged, nothing in `customers` yet.
#[async_trait::async_trait]
pub trait FirstLoad: Send {
    /// Stages one batch: each row with its number in the stream.
    async fn stage(&mut self, rows: &[(i64, CustomerLink)]) -> Result<(), StoreError>;

    /// Writes every staged row, the indexes built after, when the table is
    /// still empty and no two rows share a key; otherwise writes nothing and
    /// hands the staged batches back for the ordinary import.
    async fn finish(self: Box<Self>) -> Result<FirstLoaded, StoreError>;
}

/// How a first load ended.
pub enum FirstLoaded {
    /// Every staged row was inserted: how many.
    Inserted(u64),
    /// Nothing was written (the table filled meanwhile, or rows share a key):
    /// the staged batches, to be imported one by one in order.
    Conflicted(Box<dyn StagedBatches>),
}

/// The batches of a first load that could not take the fast path.
#[async_trait::async_trait]
pub trait StagedBatches: Send {
    /// The next batch in stream order, each row with its number; None after the last.
    async fn next_batch(&mut self) -> Result<Option<Vec<(i64, CustomerLink)>>, StoreError>;
}

/// A staged row as the backends read it back.
#[derive(sqlx::FromRow)]
pub(super) struct StagedRow {
    ord: i64,
    customer_id: String,
    lms_user_id: i64,
    lms_username: String,
    email: String,
}

impl StagedRow {
    /// The row's number and its link, parsed again (it was valid when staged).
    pub(super) fn into_link(self) -> Result<(i64, CustomerLink), StoreError> {
        let link = CustomerId::parse(&self.customer_id).and_then(|customer_id| {
            Ok(CustomerLink::new(
                customer_id,
                LmsUserId::new(self.lms_user_id)?,
                LmsUsername::parse(&self.lms_username)?,
                Email::parse(&self.email)?,
            ))
        });
        link.map(|link| (self.ord, link)).map_err(|invalid| {
            StoreError::Database(sqlx::Error::Decode(format!("a staged row no longer parses: {invalid}").into()))
        })
    }
}

/// Whether `error` is a unique index that could not be built (or a row that
/// broke one): two staged rows share a key.
pub(super) fn shares_a_key(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}
