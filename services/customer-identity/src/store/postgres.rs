//! The Postgres store: row locks for upserts, set-based bulk imports (binary
//! COPY into a temporary staging table, then one merge per batch).

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Postgres, Transaction};

use super::first_load::{FirstLoad, FirstLoaded, StagedBatches, StagedRow, shares_a_key};
use super::{
    CustomerRow, FIND, FIND_FOR_UPDATE, ImportOutcome, Probe, Store, StoreError, TakenKey, Upserted, Violation,
    find_in, plan_import, refused, retire_in, returning_customer, select_customers, taken_keys, violation,
};
use kit::trace::TextContext;

use crate::domain::{Customer, CustomerKey, CustomerLink, RetirementKey, UpsertPlan, plan_upsert};

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
                    .bind(link.lms_user_id().get())
                    .fetch_optional(&self.pool)
                    .await?,
                link.lms_user_id().to_string(),
            ),
            TakenKey::LmsUsername => (
                sqlx::query_scalar("SELECT customer_id FROM customers WHERE lower(lms_username) = $1")
                    .bind(link.lms_username().folded())
                    .fetch_optional(&self.pool)
                    .await?,
                link.lms_username().as_str().to_string(),
            ),
        };
        Ok(StoreError::Taken { key, value, owner: owner.unwrap_or_default() })
    }

    async fn try_upsert(&self, link: &CustomerLink, expected_version: Option<i64>) -> Result<Upserted, StoreError> {
        let mut tx = self.pool.begin().await?;
        let previous: Option<Customer> =
            sqlx::query_as::<_, CustomerRow>(concat!(select_customers!(), " WHERE customer_id = $1 FOR UPDATE"))
                .bind(link.customer_id().as_str())
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

    /// One batch, set-based: the rows go to a temporary staging table by
    /// binary COPY, two joins against it find the stored customers (locked)
    /// and the keys other customers hold, the rows to reject leave the
    /// staging table, and one `INSERT ... SELECT ... ON CONFLICT` merges the
    /// rest. A unique violation here means a concurrent writer raced us.
    async fn import_bulk(&self, rows: &[CustomerLink], skip: &HashSet<usize>) -> Result<ImportOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The probes join a few thousand staged rows to a table of tens of
        // millions: always by index (nested loop), never by scanning the table,
        // whatever the staging table's missing statistics make the planner guess.
        let staged: bool = sqlx::query_scalar(
            "SELECT to_regclass('pg_temp.customer_import') IS NOT NULL
               FROM (SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)) AS s",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !staged {
            // Once per pooled connection; a temporary table writes no WAL, and
            // ON COMMIT DELETE ROWS empties it in place at every commit.
            sqlx::query(
                "CREATE TEMPORARY TABLE customer_import (
                     ord          BIGINT NOT NULL,
                     customer_id  TEXT   NOT NULL,
                     lms_user_id  BIGINT NOT NULL,
                     lms_username TEXT   NOT NULL,
                     email        TEXT   NOT NULL
                 ) ON COMMIT DELETE ROWS",
            )
            .execute(&mut *tx)
            .await?;
        }
        let data =
            copy_binary(rows.iter().enumerate().filter(|(i, _)| !skip.contains(i)).map(|(i, row)| ([i as i64], row)));
        let mut copy = tx
            .copy_in_raw(
                "COPY pg_temp.customer_import (ord, customer_id, lms_user_id, lms_username, email) FROM STDIN (FORMAT binary)",
            )
            .await?;
        match copy.send(data).await {
            Ok(_) => {
                copy.finish().await?;
            }
            Err(error) => {
                // The connection may still be usable: tell the server, then report the first error.
                copy.abort("the import could not send its rows").await.ok();
                return Err(error.into());
            }
        }

        let existing: Vec<CustomerRow> = sqlx::query_as(
            "SELECT c.customer_id, c.lms_user_id, c.lms_username, c.email, c.version, c.retired, c.create_time, c.update_time
               FROM pg_temp.customer_import r JOIN customers c ON c.customer_id = r.customer_id
              ORDER BY c.customer_id
                FOR UPDATE OF c",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Keys another customer holds: (row index, field, owner).
        let taken: Vec<(i64, String, String)> =
            sqlx::query_as(taken_keys!("pg_temp.customer_import")).fetch_all(&mut *tx).await?;
        let probe = Probe::new(existing, taken);
        let (keep, mut outcome) = plan_import(rows, skip, &probe);
        if !outcome.rejected.is_empty() {
            let refused: Vec<i64> = outcome.rejected.iter().map(|r| r.index as i64).collect();
            sqlx::query("DELETE FROM pg_temp.customer_import WHERE ord = ANY($1)")
                .bind(&refused)
                .execute(&mut *tx)
                .await?;
        }
        // In key order: updates lock rows in the order the probe did (no
        // deadlock between two imports), inserts walk the primary key's pages in order.
        // The merge returns the rows it wrote; an identical row it leaves alone is unchanged.
        let (inserted, updated): (i64, i64) = sqlx::query_as(
            "WITH merged AS (
                 INSERT INTO customers (customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time)
                 SELECT customer_id, lms_user_id, lms_username, email, 1, FALSE, now(), now()
                   FROM pg_temp.customer_import
                  ORDER BY customer_id
                 ON CONFLICT (customer_id) DO UPDATE
                    SET lms_user_id = EXCLUDED.lms_user_id, lms_username = EXCLUDED.lms_username, email = EXCLUDED.email,
                        version = customers.version + 1, update_time = now()
                  WHERE (customers.lms_user_id, customers.lms_username, customers.email)
                        IS DISTINCT FROM (EXCLUDED.lms_user_id, EXCLUDED.lms_username, EXCLUDED.email)
                 RETURNING (xmax = 0) AS created
             )
             SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM merged",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;

        outcome.inserted = inserted as u64;
        outcome.updated = updated as u64;
        outcome.unchanged = (keep.len() as u64).saturating_sub(outcome.inserted + outcome.updated);
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

/// Rows in `COPY ... (FORMAT binary)` form, each led by `N` integer columns
/// (its index or number): a header, one tuple per row (field count, then each
/// field as a length and its bytes, big-endian), the trailer.
fn copy_binary<'a, const N: usize>(rows: impl Iterator<Item = ([i64; N], &'a CustomerLink)>) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        // Fields are short: parsing bounded them (an email is at most 254 characters).
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(21 + rows.size_hint().0 * (100 + 12 * N));
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    out.extend_from_slice(&0i32.to_be_bytes()); // no header extension
    for (leading, row) in rows {
        out.extend_from_slice(&((N + 4) as i16).to_be_bytes());
        for value in leading {
            field(&mut out, &value.to_be_bytes());
        }
        field(&mut out, row.customer_id().as_str().as_bytes());
        field(&mut out, &row.lms_user_id().get().to_be_bytes());
        field(&mut out, row.lms_username().as_str().as_bytes());
        field(&mut out, row.email().as_str().as_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
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
        .bind(link.customer_id().as_str())
        .bind(link.lms_user_id().get())
        .bind(link.lms_username().as_str())
        .bind(link.email().as_str())
        .fetch_one(conn)
        .await?;
    Ok(row.into())
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn get(&self, key: &CustomerKey) -> Result<Option<Customer>, StoreError> {
        find_in(&self.pool, &FIND, key).await
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
        let Some(previous) = find_in(&mut *tx, &FIND_FOR_UPDATE, key).await? else {
            return Ok(None);
        };
        let (retired, event) = retire_in(&mut *tx, previous, retirement, now, trace).await?;
        kit::outbox::postgres::insert(&mut tx, event.as_slice(), now).await?;
        tx.commit().await?;
        Ok(Some(retired))
    }

    async fn begin_first_load(&self) -> Result<Option<Box<dyn FirstLoad>>, StoreError> {
        Ok(PostgresFirstLoad::begin(&self.pool).await?.map(|load| Box::new(load) as Box<dyn FirstLoad>))
    }

    async fn import_distinct(&self, rows: &[CustomerLink], skip: &HashSet<usize>) -> Result<ImportOutcome, StoreError> {
        match self.import_bulk(rows, skip).await {
            Err(StoreError::Database(error)) if violation(&error).is_some() => self.import_row_by_row(rows, skip).await,
            other => other,
        }
    }
}

/// A first load into Postgres ([`super::first_load`]): one transaction from
/// the first batch to the end, the batches staged in a temporary table
/// (no WAL) that goes with it.
pub struct PostgresFirstLoad {
    tx: Transaction<'static, Postgres>,
    batches: i64,
}

impl PostgresFirstLoad {
    /// A first load when `customers` is empty; None otherwise.
    async fn begin(pool: &PgPool) -> Result<Option<Self>, StoreError> {
        // Asked outside the load's transaction, which must hold no lock on
        // `customers` while it stages: another first load's end takes the table.
        let empty: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM customers)").fetch_one(pool).await?;
        if !empty {
            return Ok(None);
        }
        let mut tx = pool.begin().await?;
        sqlx::query(
            "CREATE TEMPORARY TABLE customer_first_load (
                 batch        BIGINT NOT NULL,
                 ord          BIGINT NOT NULL,
                 customer_id  TEXT   NOT NULL,
                 lms_user_id  BIGINT NOT NULL,
                 lms_username TEXT   NOT NULL,
                 email        TEXT   NOT NULL
             ) ON COMMIT DROP",
        )
        .execute(&mut *tx)
        .await?;
        Ok(Some(Self { tx, batches: 0 }))
    }

    /// Inside a savepoint, under the table's exclusive lock: the indexes
    /// dropped, the rows inserted, the indexes built. Answers the rows inserted.
    async fn load(&mut self) -> Result<Option<u64>, StoreError> {
        let tx = &mut *self.tx;
        // Readers wait for the swap rather than see a table without its
        // indexes. Not for long behind another transaction: then this load merges.
        sqlx::query("SET LOCAL lock_timeout = '5s'").execute(&mut *tx).await?;
        sqlx::query("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await?;
        let empty: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM customers)").fetch_one(&mut *tx).await?;
        if !empty {
            return Ok(None);
        }
        // The write is as long as the stream was (minutes at tens of millions
        // of rows): no statement timeout past the lock. Index builds sort in
        // memory when they can (the default, 64 MB, spills at a few million rows).
        sqlx::raw_sql("SET LOCAL statement_timeout = 0; SET LOCAL maintenance_work_mem = '256MB'")
            .execute(&mut *tx)
            .await?;
        // The unique constraints and indexes as the database describes them:
        // (statement that drops one, statement that builds it again).
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', conrelid::regclass, conname),
                    format('ALTER TABLE %s ADD CONSTRAINT %I %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
               FROM pg_constraint WHERE conrelid = 'customers'::regclass AND contype IN ('p', 'u')
             UNION ALL
             SELECT format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
               FROM pg_index i
              WHERE i.indrelid = 'customers'::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (drop, _) in &indexes {
            sqlx::raw_sql(sqlx::AssertSqlSafe(drop.as_str())).execute(&mut *tx).await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO customers (customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time)
             SELECT customer_id, lms_user_id, lms_username, email, 1, FALSE, statement_timestamp(), statement_timestamp()
               FROM pg_temp.customer_first_load",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();

        for (_, build) in &indexes {
            sqlx::raw_sql(sqlx::AssertSqlSafe(build.as_str())).execute(&mut *tx).await?;
        }
        Ok(Some(inserted))
    }
}

#[async_trait::async_trait]
impl FirstLoad for PostgresFirstLoad {
    async fn stage(&mut self, rows: &[(i64, CustomerLink)]) -> Result<(), StoreError> {
        let batch = self.batches;
        self.batches += 1;
        let data = copy_binary(rows.iter().map(|(ord, row)| ([batch, *ord], row)));
        let mut copy = self
            .tx
            .copy_in_raw(
                "COPY pg_temp.customer_first_load (batch, ord, customer_id, lms_user_id, lms_username, email)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        if let Err(error) = copy.send(data).await {
            copy.abort("the first load could not send its rows").await.ok();
            return Err(error.into());
        }
        copy.finish().await?;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<FirstLoaded, StoreError> {
        if self.batches == 0 {
            return Ok(FirstLoaded::Inserted(0));
        }
        sqlx::query("SAVEPOINT first_load").execute(&mut *self.tx).await?;
        let loaded = match self.load().await {
            Err(error) if shares_a_key(&error) || lock_refused(&error) => None,
            other => other?,
        };
        if let Some(inserted) = loaded {
            self.tx.commit().await?;
            return Ok(FirstLoaded::Inserted(inserted));
        }
        // The lock, the dropped indexes and the SET LOCALs go with the
        // savepoint; the staged rows stay. The batch index is as long to build as the load was.
        sqlx::query("ROLLBACK TO SAVEPOINT first_load").execute(&mut *self.tx).await?;
        sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *self.tx).await?;
        sqlx::query("CREATE INDEX ON pg_temp.customer_first_load (batch)").execute(&mut *self.tx).await?;
        Ok(FirstLoaded::Conflicted(Box::new(PostgresStaged { tx: Some(self.tx), next: 0, batches: self.batches })))
    }
}

/// Whether `error` is the table's lock not granted in time, or a deadlock over it.
fn lock_refused(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("55P03" | "40P01")))
}

/// The staged batches of a first load that could not take the fast path.
struct PostgresStaged {
    /// Open until the last batch was read (the staging table goes with it).
    tx: Option<Transaction<'static, Postgres>>,
    next: i64,
    batches: i64,
}

#[async_trait::async_trait]
impl StagedBatches for PostgresStaged {
    async fn next_batch(&mut self) -> Result<Option<Vec<(i64, CustomerLink)>>, StoreError> {
        let Some(tx) = self.tx.as_mut() else { return Ok(None) };
        if self.next == self.batches {
            if let Some(tx) = self.tx.take() {
                tx.commit().await?;
            }
            return Ok(None);
        }
        let rows: Vec<StagedRow> = sqlx::query_as(
            "SELECT ord, customer_id, lms_user_id, lms_username, email
               FROM pg_temp.customer_first_load WHERE batch = $1 ORDER BY ord",
        )
        .bind(self.next)
        .fetch_all(&mut **tx)
        .await?;
        self.next += 1;
        rows.into_iter().map(StagedRow::into_link).collect::<Result<Vec<_>, _>>().map(Some)
    }
}
