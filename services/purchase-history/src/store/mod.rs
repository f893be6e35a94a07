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
        &self.purchase_id
    }
}

/// A username as both backends compare it: `lower()` on the stored column folds
/// ASCII only (Postgres through `COLLATE "C"`), so the key is folded the same way.
fn folded(username: &str) -> String {
    username.to_ascii_lowercase()
}

/// The columns every list query selects, in [`ListedRow`]'s order: the
/// purchase's, then its refund's (NULL when not refunded).
macro_rules! purchase_columns {
    () => {
        "purchase_id, lms_user_id, username, order_number, product_key, title, currency_code, amount, \
         purchased_at, source, refund_currency_code, refunded_amount, refund_reason, refund_source, refunded_at"
    };
}
pub(crate) use purchase_columns;

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

impl<T> ListedRow<T> {
    fn into_listed(self, time: impl Fn(T) -> Option<DateTime<Utc>>) -> Result<Listed, StoreError> {
        let purchase = self.purchase.into_purchase(&time)?;
        let refund = match (self.refund_currency_code, self.refunded_amount, self.refund_source, self.refunded_at) {
            (Some(currency), Some(amount), Some(source), Some(at)) => {
                let corrupt = |field: &str, reason: String| StoreError::Corrupt {
                    purchase_id: purchase.purchase_id.to_string(),
                    reason: format!("refund {field} {reason}"),
                };
                Some(PurchaseRefund {
                    purchase_id: purchase.purchase_id.clone(),
                    lms_user_id: purchase.lms_user_id,
                    amount: Price::parse(&currency, &amount).map_err(|e| corrupt("amount", e.to_string()))?,
                    reason: RefundReason::parse(self.refund_reason.as_deref().unwrap_or_default())
                        .map_err(|e| corrupt("reason", e.to_string()))?,
                    source: SourceSystem::parse(&source).map_err(|e| corrupt("source", e.to_string()))?,
                    refunded_at: time(at)
                        .ok_or_else(|| corrupt("refunded_at", "is not a representable time".into()))?,
                })
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

impl<T> PurchaseRow<T> {
    fn into_purchase(self, time: impl Fn(T) -> Option<DateTime<Utc>>) -> Result<Purchase, StoreError> {
        let purchased_at = time(self.purchased_at).ok_or_else(|| StoreError::Corrupt {
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
