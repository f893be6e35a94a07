//! The SQLite store for the embedded mesh: a batch is one `BEGIN IMMEDIATE`
//! transaction of `INSERT ... ON CONFLICT (purchase_id) DO NOTHING` rows (one
//! prepared statement, reused), so it commits whole or not at all. Times are
//! microseconds since the epoch.

use chrono::Utc;
use sqlx::SqlitePool;

use super::{Listed, Store, StoreError, batch_to_write, list_page_in, retired_username_in};
use vocab::{LmsUserId, LmsUsername, Retirement};

use crate::domain::{LearnerKey, PageCursor, Purchase};
use crate::refund::PurchaseRefund;

/// Purchases in SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// A store over `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_batch(&self, purchases: &[Purchase]) -> Result<u64, StoreError> {
        let Some(unique) = batch_to_write(purchases) else { return Ok(0) };
        let recorded_at = Utc::now().timestamp_micros();
        // IMMEDIATE takes the write lock up front: concurrent batches queue on
        // the busy timeout instead of failing to upgrade a read transaction.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut stored = 0;
        for p in unique {
            stored += sqlx::query(
                "INSERT INTO purchases (purchase_id, lms_user_id, username, order_number, product_key, title,
                                        currency_code, amount, purchased_at, source, recorded_at)
                 VALUES (?1, ?2, COALESCE((SELECT retired_username FROM retired_learners WHERE lms_user_id = ?2), ?3),
                         ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (purchase_id) DO NOTHING",
            )
            .bind(p.purchase_id.as_str())
            .bind(p.lms_user_id.get())
            .bind(p.username.as_str())
            .bind(p.order_number.as_deref().unwrap_or_default())
            .bind(p.product_key.as_deref().unwrap_or_default())
            .bind(p.title.as_str())
            .bind(p.price.currency_code())
            .bind(p.price.amount_text())
            .bind(p.purchased_at.timestamp_micros())
            .bind(p.source.as_deref().unwrap_or_default())
            .bind(recorded_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn retire_learners(&self, retirements: &[Retirement]) -> Result<u64, StoreError> {
        if retirements.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        kit::retirement::sqlite::remember(&mut tx, retirements, Utc::now()).await?;
        let mut changed = 0;
        for retirement in retirements {
            changed += sqlx::query(
                "UPDATE purchases SET username = (SELECT retired_username FROM retired_learners WHERE lms_user_id = ?1)
                  WHERE lms_user_id = ?1
                    AND username <> (SELECT retired_username FROM retired_learners WHERE lms_user_id = ?1)",
            )
            .bind(retirement.lms_user_id.get())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn insert_refunds(&self, refunds: &[PurchaseRefund]) -> Result<u64, StoreError> {
        let Some(unique) = batch_to_write(refunds) else { return Ok(0) };
        let now = chrono::Utc::now().timestamp_micros();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut stored = 0;
        for refund in unique {
            stored += sqlx::query(
                "INSERT INTO purchase_refunds (refunded_purchase_id, refund_currency_code, refunded_amount,
                                               refund_reason, refund_source, refunded_at, refund_recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (refunded_purchase_id) DO NOTHING",
            )
            .bind(refund.purchase_id().as_str())
            .bind(refund.amount().currency_code())
            .bind(refund.amount().amount_text())
            .bind(refund.reason().as_str())
            .bind(refund.source().as_str())
            .bind(refund.refunded_at().timestamp_micros())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn retired_username(&self, lms_user_id: LmsUserId) -> Result<Option<LmsUsername>, StoreError> {
        retired_username_in(&self.pool, lms_user_id).await
    }

    async fn list_page(
        &self,
        learner: &LearnerKey,
        after: Option<&PageCursor>,
        limit: i64,
        hide_refunded: bool,
    ) -> Result<Vec<Listed>, StoreError> {
        list_page_in::<_, i64, _>(&self.pool, learner, after, limit, hide_refunded).await
    }
}
