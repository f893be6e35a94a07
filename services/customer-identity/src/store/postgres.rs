//! The Postgres store: row locks for upserts, set-based bulk imports.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use super::{
    CustomerRow, ImportOutcome, RowRejection, Store, StoreError, TakenKey, Upserted, Violation, refused,
    returning_customer, select_customers, violation,
};
use kit::trace::TextContext;

use crate::domain::{Customer, CustomerKey, CustomerLink, LmsUsername, RetirementKey, UpsertPlan, plan_upsert};

/// Customer links in Postgres.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// A store over `pool` (whose search_path is the service's schema).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn owner(&self, key: TakenKey, link: &CustomerLink) -> Result<StoreError, StoreError> {
        let (owner, value): (Option<String>, String) = match key {
            TakenKey::LmsUserId => (
                sqlx::query_scalar("SELECT customer_id FROM customers WHERE lms_user_id = $1")
                    .bind(link.lms_user_id.get())
                    .fetch_optional(&self.pool)
                    .await?,
                link.lms_user_id.to_string(),
            ),
            TakenKey::LmsUsername => (
                sqlx::query_scalar("SELECT customer_id FROM customers WHERE lower(lms_username) = $1")
                    .bind(link.lms_username.folded())
                    .fetch_optional(&self.pool)
                    .await?,
                link.lms_username.as_str().to_string(),
            ),
        };
        Ok(StoreError::Taken { key, value, owner: owner.unwrap_or_default() })
    }

    async fn try_upsert(&self, link: &CustomerLink, expected_version: Option<i64>) -> Result<Upserted, StoreError> {
        let mut tx = self.pool.begin().await?;
        let previous: Option<Customer> =
            sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE customer_id = $1 FOR UPDATE"))
                .bind(link.customer_id.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .map(Customer::from);
        let plan = plan_upsert(previous.as_ref(), link, expected_version).map_err(|r| refused(r, link))?;
        if let (UpsertPlan::Unchanged, Some(current)) = (plan, &previous) {
            return Ok(Upserted { customer: current.clone(), previous });
        }
        let customer = write(&mut tx, link, plan == UpsertPlan::Update).await?;
        tx.commit().await?;
        Ok(Upserted { customer, previous })
    }

    async fn import_bulk(&self, rows: &[CustomerLink], skip: &HashSet<usize>) -> Result<ImportOutcome, StoreError> {
        let mut outcome = ImportOutcome::default();
        let candidates: Vec<usize> = (0..rows.len()).filter(|i| !skip.contains(i)).collect();
        let ids: Vec<&str> = candidates.iter().map(|&i| rows[i].customer_id.as_str()).collect();
        let lms_user_ids: Vec<i64> = candidates.iter().map(|&i| rows[i].lms_user_id.get()).collect();
        let usernames: Vec<&str> = candidates.iter().map(|&i| rows[i].lms_username.as_str()).collect();
        let emails: Vec<&str> = candidates.iter().map(|&i| rows[i].email.as_str()).collect();

        let mut tx = self.pool.begin().await?;
        let existing: HashMap<String, Customer> =
            sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE customer_id = ANY($1) FOR UPDATE"))
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|row| (row.customer_id.clone(), Customer::from(row)))
                .collect();
        // Keys another customer holds: (position among candidates, from 1; field; owner).
        let taken: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT r.ord, 'lms_user_id', c.customer_id
               FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS r(customer_id, lms_user_id, ord)
               JOIN customers c ON c.lms_user_id = r.lms_user_id
              WHERE c.customer_id <> r.customer_id
             UNION ALL
             SELECT r.ord, 'lms_username', c.customer_id
               FROM unnest($1::text[], $3::text[]) WITH ORDINALITY AS r(customer_id, lms_username, ord)
               JOIN customers c ON lower(c.lms_username) = lower(r.lms_username)
              WHERE c.customer_id <> r.customer_id",
        )
        .bind(&ids)
        .bind(&lms_user_ids)
        .bind(&usernames)
        .fetch_all(&mut *tx)
        .await?;

        let mut refused = HashSet::new();
        for (ord, field, owner) in taken {
            let index = candidates[(ord - 1) as usize];
            if refused.insert(index) {
                let field = if field == "lms_user_id" { "lms_user_id" } else { "lms_username" };
                outcome.rejected.push(RowRejection { index, field, reason: format!("belongs to customer {owner}") });
            }
        }
        for (position, &index) in candidates.iter().enumerate() {
            if existing.get(ids[position]).is_some_and(|c| c.retired) && refused.insert(index) {
                outcome.rejected.push(RowRejection { index, field: "", reason: "the customer is retired".into() });
            }
        }
        let keep: Vec<usize> = (0..candidates.len()).filter(|&p| !refused.contains(&candidates[p])).collect();
        fn pick<'a>(keep: &[usize], values: &[&'a str]) -> Vec<&'a str> {
            keep.iter().map(|&p| values[p]).collect()
        }
        let inserted: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO customers (customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time)
             SELECT r.customer_id, r.lms_user_id, r.lms_username, r.email, 1, FALSE, now(), now()
               FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS r(customer_id, lms_user_id, lms_username, email)
             ON CONFLICT (customer_id) DO UPDATE
                SET lms_user_id = EXCLUDED.lms_user_id, lms_username = EXCLUDED.lms_username, email = EXCLUDED.email,
                    version = customers.version + 1, update_time = now()
              WHERE (customers.lms_user_id, customers.lms_username, customers.email)
                    IS DISTINCT FROM (EXCLUDED.lms_user_id, EXCLUDED.lms_username, EXCLUDED.email)
             RETURNING (xmax = 0)",
        )
        .bind(pick(&keep, &ids))
        .bind(keep.iter().map(|&p| lms_user_ids[p]).collect::<Vec<i64>>())
        .bind(pick(&keep, &usernames))
        .bind(pick(&keep, &emails))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        outcome.inserted = inserted.iter().filter(|&&new| new).count() as u64;
        outcome.updated = keep.len() as u64 - outcome.inserted;
        outcome.previous = keep.iter().filter_map(|&p| existing.get(ids[p]).cloned()).collect();
        Ok(outcome)
    }

    /// The slow path, after a concurrent writer raced the bulk statement: row
    /// by row, each with the upsert's own checks.
    async fn import_row_by_row(
        &self,
        rows: &[CustomerLink],
        skip: &HashSet<usize>,
    ) -> Result<ImportOutcome, StoreError> {
        let mut outcome = ImportOutcome::default();
        for (index, row) in rows.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
            outcome.record(index, self.upsert(row, None).await)?;
        }
        Ok(outcome)
    }
}

/// Inserts or updates the row under the caller's lock; answers it as stored.
async fn write(conn: &mut PgConnection, link: &CustomerLink, exists: bool) -> Result<Customer, StoreError> {
    let query = if exists {
        concat!(
            "UPDATE customers SET lms_user_id = $2, lms_username = $3, email = $4, version = version + 1, update_time = now()
              WHERE customer_id = $1",
            returning_customer!()
        )
    } else {
        concat!(
            "INSERT INTO customers (customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time)
             VALUES ($1, $2, $3, $4, 1, FALSE, now(), now())",
            returning_customer!()
        )
    };
    let row: CustomerRow = sqlx::query_as(query)
        .bind(link.customer_id.as_str())
        .bind(link.lms_user_id.get())
        .bind(link.lms_username.as_str())
        .bind(link.email.as_str())
        .fetch_one(conn)
        .await?;
    Ok(row.into())
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<Customer>, StoreError> {
        let query = match key {
            CustomerKey::CustomerId(id) => {
                sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE customer_id = $1"))
                    .bind(id.as_str())
            }
            CustomerKey::LmsUserId(id) => {
                sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE lms_user_id = $1")).bind(id.get())
            }
            CustomerKey::LmsUsername(name) => {
                sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE lower(lms_username) = $1"))
                    .bind(name.folded())
            }
        };
        Ok(query.fetch_optional(&self.pool).await?.map(Customer::from))
    }

    async fn get_many(&self, keys: &[CustomerKey]) -> Result<Vec<Option<Customer>>, StoreError> {
        let mut ids = Vec::new();
        let mut lms_user_ids = Vec::new();
        let mut usernames = Vec::new();
        for key in keys {
            match key {
                CustomerKey::CustomerId(id) => ids.push(id.as_str()),
                CustomerKey::LmsUserId(id) => lms_user_ids.push(id.get()),
                CustomerKey::LmsUsername(name) => usernames.push(name.folded()),
            }
        }
        let found: Vec<Customer> = sqlx::query_as::<_, CustomerRow>(concat!(
            select_customers!(),
            " WHERE customer_id = ANY($1) OR lms_user_id = ANY($2) OR lower(lms_username) = ANY($3)"
        ))
        .bind(&ids)
        .bind(&lms_user_ids)
        .bind(&usernames)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Customer::from)
        .collect();
        // Each row indexed once by each of its keys, so answering is linear.
        let by_id: HashMap<&str, &Customer> = found.iter().map(|c| (c.customer_id.as_str(), c)).collect();
        let by_lms_user_id: HashMap<i64, &Customer> = found.iter().map(|c| (c.lms_user_id, c)).collect();
        let by_username: HashMap<String, &Customer> =
            found.iter().map(|c| (c.lms_username.to_lowercase(), c)).collect();
        Ok(keys
            .iter()
            .map(|key| {
                let customer = match key {
                    CustomerKey::CustomerId(id) => by_id.get(id.as_str()),
                    CustomerKey::LmsUserId(id) => by_lms_user_id.get(&id.get()),
                    CustomerKey::LmsUsername(name) => by_username.get(&name.folded()),
                };
                customer.map(|c| (*c).clone())
            })
            .collect())
    }

    async fn upsert(&self, link: &CustomerLink, expected_version: Option<i64>) -> Result<Upserted, StoreError> {
        let mut raced = false;
        loop {
            let error = match self.try_upsert(link, expected_version).await {
                Err(StoreError::Database(error)) => error,
                other => return other,
            };
            match violation(&error) {
                // Two creations of one customer raced: the second becomes an update.
                Some(Violation::CustomerId) if !raced => raced = true,
                Some(Violation::Taken(key)) => return Err(self.owner(key, link).await?),
                _ => return Err(StoreError::Database(error)),
            }
        }
    }

    async fn retire(
        &self,
        key: &CustomerKey,
        retirement: &RetirementKey,
        trace: &TextContext,
    ) -> Result<Option<Upserted>, StoreError> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        let query = match key {
            CustomerKey::CustomerId(id) => {
                sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE customer_id = $1 FOR UPDATE"))
                    .bind(id.as_str())
            }
            CustomerKey::LmsUserId(id) => {
                sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE lms_user_id = $1 FOR UPDATE"))
                    .bind(id.get())
            }
            CustomerKey::LmsUsername(name) => sqlx::query_as::<_, CustomerRow>(concat!(
                select_customers!(),
                " WHERE lower(lms_username) = $1 FOR UPDATE"
            ))
            .bind(name.folded()),
        };
        let Some(previous) = query.fetch_optional(&mut *tx).await?.map(Customer::from) else {
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
        kit::outbox::postgres::insert(&mut tx, &[event], now).await?;
        tx.commit().await?;
        Ok(Some(Upserted { customer, previous: Some(previous) }))
    }

    async fn import_distinct(&self, rows: &[CustomerLink], skip: &HashSet<usize>) -> Result<ImportOutcome, StoreError> {
        match self.import_bulk(rows, skip).await {
            Err(StoreError::Database(error)) if violation(&error).is_some() => self.import_row_by_row(rows, skip).await,
            other => other,
        }
    }
}
