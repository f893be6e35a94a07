//! The Postgres store: a batch is one `INSERT ... SELECT FROM unnest(...)
//! ON CONFLICT (purchase_id) DO NOTHING` (one round trip and one statement per
//! batch, however large, which is what lets the consumer keep up with the
//! stream), and a page is one index range scan.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{Listed, Store, StoreError, batch_to_write, list_page_in, retired_username_in};
use vocab::{LmsUserId, LmsUsername, Retirement};

use crate::domain::{LearnerKey, PageCursor, Purchase};
use crate::refund::PurchaseRefund;

/// Purchases in Postgres.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// A store over `pool` (whose search_path is the service's schema).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn insert_batch(&self, purchases: &[Purchase]) -> Result<u64, StoreError> {
        let Some(unique) = batch_to_write(purchases) else { return Ok(0) };
        let n = unique.len();
        let (mut ids, mut users, mut usernames, mut orders) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut products, mut titles, mut currencies, mut amounts) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut times, mut sources) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for p in unique {
            ids.push(p.purchase_id.as_str());
            users.push(p.lms_user_id.get());
            usernames.push(p.username.as_str());
            orders.push(p.order_number.as_deref().unwrap_or_default());
            products.push(p.product_key.as_deref().unwrap_or_default());
            titles.push(p.title.as_str());
            currencies.push(p.price.currency_code());
            amounts.push(p.price.amount_text());
            times.push(p.purchased_at);
            sources.push(p.source.as_deref().unwrap_or_default());
        }
        // ORDER BY keeps the id order the batch was sorted in, so concurrent
        // overlapping batches lock index entries in one order (no deadlock).
        let stored = sqlx::query(
            "INSERT INTO purchases (purchase_id, lms_user_id, username, order_number, product_key, title,
                                    currency_code, amount, purchased_at, source)
             SELECT b.purchase_id, b.lms_user_id, COALESCE(r.retired_username, b.username), b.order_number,
                    b.product_key, b.title, b.currency_code, b.amount, b.purchased_at, b.source
               FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::timestamptz[], $10::text[])
                    AS b(purchase_id, lms_user_id, username, order_number, product_key, title,
                         currency_code, amount, purchased_at, source)
               LEFT JOIN retired_learners r ON r.lms_user_id = b.lms_user_id
             ORDER BY b.purchase_id COLLATE \"C\"
             ON CONFLICT (purchase_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&usernames)
        .bind(&orders)
        .bind(&products)
        .bind(&titles)
        .bind(&currencies)
        .bind(&amounts)
        .bind(&times)
        .bind(&sources)
        .execute(&self.pool)
        .await?;
        Ok(stored.rows_affected())
    }

    async fn retire_learners(&self, retirements: &[Retirement]) -> Result<u64, StoreError> {
        if retirements.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = retirements.iter().map(|r| r.lms_user_id.get()).collect();
        let mut tx = self.pool.begin().await?;
        // Every insert reads retired_learners in its statement, and remembering
        // locks it: inserts in flight finish first (their rows are then
        // rewritten below), new ones see the retirement.
        kit::retirement::postgres::remember(&mut tx, retirements, Utc::now()).await?;
        let changed = sqlx::query(
            "UPDATE purchases p SET username = r.retired_username
               FROM retired_learners r
              WHERE r.lms_user_id = ANY($1) AND p.lms_user_id = r.lms_user_id AND p.username <> r.retired_username",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(changed)
    }

    async fn insert_refunds(&self, refunds: &[PurchaseRefund]) -> Result<u64, StoreError> {
        let Some(unique) = batch_to_write(refunds) else { return Ok(0) };
        let ids: Vec<&str> = unique.iter().map(|r| r.purchase_id().as_str()).collect();
        let currencies: Vec<&str> = unique.iter().map(|r| r.amount().currency_code()).collect();
        let amounts: Vec<String> = unique.iter().map(|r| r.amount().amount_text()).collect();
        let reasons: Vec<&str> = unique.iter().map(|r| r.reason().as_str()).collect();
        let sources: Vec<&str> = unique.iter().map(|r| r.source().as_str()).collect();
        let times: Vec<DateTime<Utc>> = unique.iter().map(|r| r.refunded_at()).collect();
        let stored = sqlx::query(
            "INSERT INTO purchase_refunds (refunded_purchase_id, refund_currency_code, refunded_amount, refund_reason,
                                           refund_source, refunded_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
             ON CONFLICT (refunded_purchase_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&currencies)
        .bind(&amounts)
        .bind(&reasons)
        .bind(&sources)
        .bind(&times)
        .execute(&self.pool)
        .await?;
        Ok(stored.rows_affected())
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
        list_page_in::<_, DateTime<Utc>, _>(&self.pool, learner, after, limit, hide_refunded).await
    }
}
