//! The SQLite store, for embedded mode: one writer at a time (`BEGIN
//! IMMEDIATE`), so reads inside a write see what the write will change.

use std::collections::HashSet;

use chrono::Utc;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;

use super::{
    CustomerRow, ImportOutcome, Store, StoreError, TakenKey, Upserted, Violation, refused, returning_customer,
    select_customers, violation,
};
use kit::trace::TextContext;

use crate::domain::{Customer, CustomerKey, CustomerLink, LmsUsername, RetirementKey, UpsertPlan, plan_upsert};

/// Customer links in SQLite.
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

async fn find(conn: &mut SqliteConnection, key: &CustomerKey) -> Result<Option<Customer>, StoreError> {
    let query = match key {
        CustomerKey::CustomerId(id) => {
            sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE customer_id = $1")).bind(id.as_str())
        }
        CustomerKey::LmsUserId(id) => {
            sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE lms_user_id = $1")).bind(id.get())
        }
        CustomerKey::LmsUsername(name) => {
            sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE lower(lms_username) = $1"))
                .bind(name.folded())
        }
    };
    Ok(query.fetch_optional(conn).await?.map(Customer::from))
}

/// Who holds `key` of `link`, as an error.
async fn taken(conn: &mut SqliteConnection, key: TakenKey, link: &CustomerLink) -> Result<StoreError, StoreError> {
    let (holder, value) = match key {
        TakenKey::LmsUserId => (CustomerKey::LmsUserId(link.lms_user_id), link.lms_user_id.to_string()),
        TakenKey::LmsUsername => {
            (CustomerKey::LmsUsername(link.lms_username.clone()), link.lms_username.as_str().to_string())
        }
    };
    let owner = find(conn, &holder).await?.map(|c| c.customer_id).unwrap_or_default();
    Ok(StoreError::Taken { key, value, owner })
}

/// The upsert's checks and write, inside the caller's write transaction.
async fn upsert_in(
    conn: &mut SqliteConnection,
    link: &CustomerLink,
    expected_version: Option<i64>,
) -> Result<Upserted, StoreError> {
    let previous = find(conn, &CustomerKey::CustomerId(link.customer_id.clone())).await?;
    let plan = plan_upsert(previous.as_ref(), link, expected_version).map_err(|r| refused(r, link))?;
    if let (UpsertPlan::Unchanged, Some(current)) = (plan, &previous) {
        return Ok(Upserted { customer: current.clone(), previous });
    }
    let query = if plan == UpsertPlan::Update {
        concat!(
            "UPDATE customers SET lms_user_id = $2, lms_username = $3, email = $4, version = version + 1, update_time = $5
              WHERE customer_id = $1",
            returning_customer!()
        )
    } else {
        concat!(
            "INSERT INTO customers (customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time)
             VALUES ($1, $2, $3, $4, 1, FALSE, $5, $5)",
            returning_customer!()
        )
    };
    let written = sqlx::query_as::<_, CustomerRow>(query)
        .bind(link.customer_id.as_str())
        .bind(link.lms_user_id.get())
        .bind(link.lms_username.as_str())
        .bind(link.email.as_str())
        .bind(Utc::now())
        .fetch_one(&mut *conn)
        .await;
    match written {
        Ok(row) => Ok(Upserted { customer: row.into(), previous }),
        Err(error) => match violation(&error) {
            Some(Violation::Taken(key)) => Err(taken(conn, key, link).await?),
            _ => Err(StoreError::Database(error)),
        },
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<Customer>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        find(&mut conn, key).await
    }

    async fn get_many(&self, keys: &[CustomerKey]) -> Result<Vec<Option<Customer>>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(find(&mut conn, key).await?);
        }
        Ok(found)
    }

    async fn upsert(&self, link: &CustomerLink, expected_version: Option<i64>) -> Result<Upserted, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let upserted = upsert_in(&mut tx, link, expected_version).await?;
        tx.commit().await?;
        Ok(upserted)
    }

    async fn retire(
        &self,
        key: &CustomerKey,
        retirement: &RetirementKey,
        trace: &TextContext,
    ) -> Result<Option<Upserted>, StoreError> {
        let now = Utc::now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(previous) = find(&mut tx, key).await? else {
            return Ok(None);
        };
        if previous.retired {
            return Ok(Some(Upserted { customer: previous.clone(), previous: Some(previous) }));
        }
        let row: CustomerRow = sqlx::query_as(concat!(
            "UPDATE customers SET lms_username = $2, email = '', retired = TRUE, version = version + 1, update_time = $3
              WHERE customer_id = $1",
            returning_customer!()
        ))
        .bind(&previous.customer_id)
        .bind(LmsUsername::retired_placeholder(&previous.lms_username, retirement).as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let customer = Customer::from(row);
        let event = crate::events::customer_retired(&customer, now, trace);
        kit::outbox::sqlite::insert(&mut tx, &[event], now).await?;
        tx.commit().await?;
        Ok(Some(Upserted { customer, previous: Some(previous) }))
    }

    async fn import_distinct(&self, rows: &[CustomerLink], skip: &HashSet<usize>) -> Result<ImportOutcome, StoreError> {
        let mut outcome = ImportOutcome::default();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for (index, row) in rows.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
            outcome.record(index, upsert_in(&mut tx, row, None).await)?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}
