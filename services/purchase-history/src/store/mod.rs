//! Where purchases are kept: the [`Store`] trait and its backends,
//! [`postgres::PostgresStore`] and [`sqlite::SqliteStore`]. One contract suite
//! (`tests/store_contract.rs`) runs against both.
//!
//! Purchases arrive at least once (the stream redelivers, producers republish),
//! so a purchase_id already stored is skipped, not updated: the first content
//! stored for an id is the one kept, and a later message with the same id but
//! other content changes nothing. Lists are newest first by
//! (purchased_at, purchase_id), paged by keyset, so a page never shifts when
//! newer purchases arrive.

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kit::db::Database;

use vocab::{
    LmsUserId, LmsUsername, OrderNumber, Price, ProductKey, PurchaseId, RefundReason, Retirement, SourceSystem, Title,
};

use crate::domain::{LearnerKey, PageCursor, Purchase};
use crate::refund::PurchaseRefund;

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row could not be read back.
    #[error("corrupt row for purchase {purchase_id}: {reason}")]
    Corrupt {
        /// The purchase.
        purchase_id: String,
        /// What was wrong.
        reason: String,
    },
}

/// Purchases, stored once each and listed per learner.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores the purchases not stored yet (by purchase_id) in one
    /// transaction/statement; answers how many were new. A purchase_id already
    /// stored, or repeated within the batch, keeps its first content. A
    /// retired learner's purchase is stored with their placeholder username.
    async fn insert_batch(&self, purchases: &[Purchase]) -> Result<u64, StoreError>;

    /// Applies retirements: each learner's purchases get the placeholder
    /// username, and the learner is remembered so a purchase of theirs stored
    /// later gets it too ([`Store::insert_batch`]). Idempotent; answers how
    /// many purchases changed.
    async fn retire_learners(&self, retirements: &[Retirement]) -> Result<u64, StoreError>;

    /// The placeholder of a retired learner, or None.
    async fn retired_username(&self, lms_user_id: LmsUserId) -> Result<Option<LmsUsername>, StoreError>;

    /// Stores the refunds not stored yet (by purchase_id), whether their
    /// purchase is stored yet or not; answers how many were new. A purchase
    /// refunded again keeps its first refund.
    async fn insert_refunds(&self, refunds: &[PurchaseRefund]) -> Result<u64, StoreError>;

    /// Newest first ((purchased_at, purchase_id) descending), strictly after
    /// `after` when given, at most `limit`, each with its refund;
    /// `hide_refunded` leaves refunded purchases out. A username matches
    /// case-insensitively.
    async fn list_page(
        &self,
        learner: &LearnerKey,
        after: Option<&PageCursor>,
        limit: i64,
        hide_refunded: bool,
    ) -> Result<Vec<Listed>, StoreError>;

    /// [`Store::list_page`] of every purchase, without the refunds.
    async fn list(
        &self,
        learner: &LearnerKey,
        after: Option<&PageCursor>,
        limit: i64,
    ) -> Result<Vec<Purchase>, StoreError> {
        Ok(self.list_page(learner, after, limit, false).await?.into_iter().map(|listed| listed.purchase).collect())
    }
}

/// A purchase as listed: with its refund, if it was refunded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The purchase.
    pub purchase: Purchase,
    /// Its refund.
    pub refund: Option<PurchaseRefund>,
}

/// The store for the service's database.
pub fn for_database(db: &Database) -> Arc<dyn Store> {
    match db {
        Database::Postgres(pool) => Arc::new(postgres::PostgresStore::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(sqlite::SqliteStore::new(pool.clone())),
    }
}

/// A batch as it is written: one entry (purchase or refund) per purchase id, the first of the batch for
/// each, in purchase_id order. The order makes concurrent writers of
/// overlapping batches take the unique index's entries in the same order, so
/// they wait for each other instead of deadlocking.
fn unique_in_id_order<T: KeyedByPurchase>(batch: &[T]) -> Vec<&T> {
    let mut unique: Vec<&T> = batch.iter().collect();
    // Stable: among equal ids the batch's first stays first, and dedup keeps it.
    unique.sort_by(|a, b| a.purchase_id().cmp(b.purchase_id()));
    unique.dedup_by(|later, first| later.purchase_id() == first.purchase_id());
    unique
}

/// [`unique_in_id_order`], or None for an empty batch: nothing to write, so no transaction to open.
fn batch_to_write<T: KeyedByPurchase>(batch: &[T]) -> Option<Vec<&T>> {
    Some(unique_in_id_order(batch)).filter(|unique| !unique.is_empty())
}

/// What a batch is written once per: a purchase, or a purchase's refund.
trait KeyedByPurchase {
    fn purchase_id(&self) -> &PurchaseId;
}

impl KeyedByPurchase for Purchase {
    fn purchase_id(&self) -> &PurchaseId {
        &self.purchase_id
    }
}

impl KeyedByPurchase for PurchaseRefund {
    fn purchase_id(&self) -> &PurchaseId {
        PurchaseRefund::purchase_id(self)
    }
}

/// A username as both backends compare it: `lower()` on the stored column folds
/// ASCII only (Postgres through `COLLATE "C"`), so the key is folded the same way.
fn folded(username: &str) -> String {
    username.to_ascii_lowercase()
}

/// Statements listing a learner's purchases, one per learner key and
/// first-or-later page. Their parameters, in order: the learner, the cursor's
/// time and id (later pages only), the limit, `hide_refunded`.
struct ListStatements {
    by_id: &'static str,
    by_id_after: &'static str,
    by_username: &'static str,
    by_username_after: &'static str,
}

impl ListStatements {
    /// The statement listing `learner`'s purchases, after a cursor or from the first.
    fn pick(&self, learner: &LearnerKey, after_cursor: bool) -> &'static str {
        match (learner, after_cursor) {
            (LearnerKey::LmsUserId(_), false) => self.by_id,
            (LearnerKey::LmsUserId(_), true) => self.by_id_after,
            (LearnerKey::Username(_), false) => self.by_username,
            (LearnerKey::Username(_), true) => self.by_username_after,
        }
    }
}

/// A list statement's first parameter: the learner as the column compares it.
enum LearnerParam {
    /// `lms_user_id`.
    LmsUserId(i64),
    /// `lower(username)`.
    FoldedUsername(String),
}

impl LearnerParam {
    fn of(learner: &LearnerKey) -> Self {
        match learner {
            LearnerKey::LmsUserId(id) => Self::LmsUserId(id.get()),
            LearnerKey::Username(name) => Self::FoldedUsername(folded(name.as_str())),
        }
    }
}

/// The columns every list query selects, in [`ListedRow`]'s order: the
/// purchase's, then its refund's (NULL when not refunded).
macro_rules! purchase_columns {
    () => {
        "purchase_id, lms_user_id, username, order_number, product_key, title, currency_code, amount, \
         purchased_at, source, refund_currency_code, refunded_amount, refund_reason, refund_source, refunded_at"
    };
}

/// A list statement for [`ListStatements`], from its learner condition, its
/// cursor condition (empty on a first page) and its parameters for
/// `hide_refunded` and the limit.
macro_rules! list_query {
    ($learner:literal, $after:literal, $hide:literal, $limit:literal) => {
        concat!(
            "SELECT ",
            purchase_columns!(),
            " FROM purchases LEFT JOIN purchase_refunds ON refunded_purchase_id = purchase_id WHERE ",
            $learner,
            $after,
            " AND (NOT ",
            $hide,
            " OR refunded_purchase_id IS NULL)",
            " ORDER BY purchased_at DESC, purchase_id DESC LIMIT ",
            $limit
        )
    };
}

/// The list statements of both backends: each static, so its plan is one index range scan (a single statement with
/// `$n IS NULL OR ...` would get a generic plan that filters rows instead).
/// Both backends read `$n` by its number (sqlx numbers a bare `?` with a
/// counter of its own, so SQLite's statements never use one).
const LIST: ListStatements = ListStatements {
    by_id: list_query!("lms_user_id = $1", "", "$3", "$2"),
    by_id_after: list_query!("lms_user_id = $1", " AND (purchased_at, purchase_id) < ($2, $3)", "$5", "$4"),
    by_username: list_query!("lower(username) = $1", "", "$3", "$2"),
    by_username_after: list_query!("lower(username) = $1", " AND (purchased_at, purchase_id) < ($2, $3)", "$5", "$4"),
};

/// How a backend keeps a time: Postgres as `timestamptz`, SQLite as
/// microseconds since the epoch.
trait StoredTime: Sized {
    /// `time` as the backend keeps it.
    fn stored(time: DateTime<Utc>) -> Self;
    /// The kept value as a time; None when it is not one.
    fn read(self) -> Option<DateTime<Utc>>;
}

impl StoredTime for DateTime<Utc> {
    fn stored(time: DateTime<Utc>) -> Self {
        time
    }

    fn read(self) -> Option<DateTime<Utc>> {
        Some(self)
    }
}

impl StoredTime for i64 {
    fn stored(time: DateTime<Utc>) -> Self {
        time.timestamp_micros()
    }

    fn read(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self)
    }
}

/// [`Store::list_page`] on either backend, times kept as `T`.
async fn list_page_in<'c, DB, T, E>(
    executor: E,
    learner: &LearnerKey,
    after: Option<&PageCursor>,
    limit: i64,
    hide_refunded: bool,
) -> Result<Vec<Listed>, StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    T: StoredTime + for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB> + Send,
    ListedRow<T>: for<'r> sqlx::FromRow<'r, DB::Row> + Send + Unpin,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let query = sqlx::query_as::<DB, ListedRow<T>>(LIST.pick(learner, after.is_some()));
    // Bound in parameter order: the learner, the cursor (later pages), the limit, the filter.
    let query = match LearnerParam::of(learner) {
        LearnerParam::LmsUserId(id) => query.bind(id),
        LearnerParam::FoldedUsername(name) => query.bind(name),
    };
    let query = match after {
        Some(after) => query.bind(T::stored(after.purchased_at())).bind(after.purchase_id().to_string()),
        None => query,
    };
    let rows = query.bind(limit.max(0)).bind(hide_refunded).fetch_all(executor).await?;
    rows.into_iter().map(|row| row.into_listed()).collect()
}

/// [`Store::retired_username`] on either backend (one statement for both).
async fn retired_username_in<'c, DB, E>(executor: E, lms_user_id: LmsUserId) -> Result<Option<LmsUsername>, StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let name: Option<String> =
        sqlx::query_scalar::<DB, String>("SELECT retired_username FROM retired_learners WHERE lms_user_id = $1")
            .bind(lms_user_id.get())
            .fetch_optional(executor)
            .await?;
    stored_placeholder(lms_user_id, name)
}

/// A listed row: a purchase and, when refunded, its refund.
#[derive(sqlx::FromRow)]
struct ListedRow<T> {
    #[sqlx(flatten)]
    purchase: PurchaseRow<T>,
    refund_currency_code: Option<String>,
    refunded_amount: Option<String>,
    refund_reason: Option<String>,
    refund_source: Option<String>,
    refunded_at: Option<T>,
}

impl<T: StoredTime> ListedRow<T> {
    fn into_listed(self) -> Result<Listed, StoreError> {
        let purchase = self.purchase.into_purchase()?;
        let refund = match (self.refund_currency_code, self.refunded_amount, self.refund_source, self.refunded_at) {
            (Some(currency), Some(amount), Some(source), Some(at)) => {
                let corrupt = |field: &str, reason: String| StoreError::Corrupt {
                    purchase_id: purchase.purchase_id.to_string(),
                    reason: format!("refund {field} {reason}"),
                };
                Some(PurchaseRefund::new(
                    purchase.purchase_id.clone(),
                    purchase.lms_user_id,
                    Price::parse(&currency, &amount).map_err(|e| corrupt("amount", e.to_string()))?,
                    RefundReason::parse(self.refund_reason.as_deref().unwrap_or_default())
                        .map_err(|e| corrupt("reason", e.to_string()))?,
                    SourceSystem::parse(&source).map_err(|e| corrupt("source", e.to_string()))?,
                    at.read().ok_or_else(|| corrupt("refunded_at", "is not a representable time".into()))?,
                ))
            }
            _ => None,
        };
        Ok(Listed { purchase, refund })
    }
}

/// A row of `purchases`, generic over how the backend stores times.
#[derive(sqlx::FromRow)]
struct PurchaseRow<T> {
    purchase_id: String,
    lms_user_id: i64,
    username: String,
    order_number: String,
    product_key: String,
    title: String,
    currency_code: String,
    amount: String,
    purchased_at: T,
    source: String,
}

/// A stored placeholder, parsed.
fn stored_placeholder(lms_user_id: LmsUserId, name: Option<String>) -> Result<Option<LmsUsername>, StoreError> {
    name.map(|name| {
        LmsUsername::parse(&name).map_err(|e| StoreError::Corrupt {
            purchase_id: format!("(retired learner {lms_user_id})"),
            reason: format!("retired_username {e}"),
        })
    })
    .transpose()
}

/// An optional column: empty when the purchase did not say.
fn optional(raw: &str) -> Option<&str> {
    (!raw.is_empty()).then_some(raw)
}

impl<T: StoredTime> PurchaseRow<T> {
    fn into_purchase(self) -> Result<Purchase, StoreError> {
        let purchased_at = self.purchased_at.read().ok_or_else(|| StoreError::Corrupt {
            purchase_id: self.purchase_id.clone(),
            reason: "purchased_at is not a representable time".into(),
        })?;
        // Stored only after Purchase parsing: a row that no longer parses was changed behind our back.
        let corrupt = |field: &str, reason: String| StoreError::Corrupt {
            purchase_id: self.purchase_id.clone(),
            reason: format!("{field} {reason}"),
        };
        Ok(Purchase {
            purchase_id: PurchaseId::parse(&self.purchase_id).map_err(|e| corrupt("purchase_id", e.to_string()))?,
            lms_user_id: LmsUserId::new(self.lms_user_id).map_err(|e| corrupt("lms_user_id", e.to_string()))?,
            username: LmsUsername::parse(&self.username).map_err(|e| corrupt("username", e.to_string()))?,
            order_number: optional(&self.order_number)
                .map(OrderNumber::parse)
                .transpose()
                .map_err(|e| corrupt("order_number", e.to_string()))?,
            product_key: optional(&self.product_key)
                .map(ProductKey::parse)
                .transpose()
                .map_err(|e| corrupt("product_key", e.to_string()))?,
            title: Title::parse(&self.title).map_err(|e| corrupt("title", e.to_string()))?,
            price: Price::parse(&self.currency_code, &self.amount).map_err(|e| corrupt("price", e.to_string()))?,
            purchased_at,
            source: optional(&self.source)
                .map(SourceSystem::parse)
                .transpose()
                .map_err(|e| corrupt("source", e.to_string()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn purchase(id: &str, title: &str) -> Purchase {
        Purchase {
            purchase_id: PurchaseId::parse(id).unwrap(),
            lms_user_id: LmsUserId::new(1).unwrap(),
            username: LmsUsername::parse("ada").unwrap(),
            order_number: None,
            product_key: None,
            title: Title::parse(title).unwrap(),
            price: Price::parse("USD", "1").unwrap(),
            purchased_at: DateTime::from_timestamp(0, 0).unwrap(),
            source: None,
        }
    }

    #[test]
    fn a_batch_is_written_once_per_id_first_wins_in_id_order() {
        let batch = [purchase("b", "first b"), purchase("a", "a"), purchase("b", "second b"), purchase("c", "c")];
        let written: Vec<(&str, &str)> =
            unique_in_id_order(&batch).iter().map(|p| (p.purchase_id.as_str(), p.title.as_str())).collect();
        assert_eq!(written, [("a", "a"), ("b", "first b"), ("c", "c")]);
    }

    #[test]
    fn usernames_fold_ascii_only() {
        assert_eq!(folded("Ada_L-9"), "ada_l-9");
        assert_eq!(folded("\u{212A}"), "\u{212A}", "the Kelvin sign is not a k");
    }
}
