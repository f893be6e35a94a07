//! The SQLite store, for embedded mode: one writer at a time (`BEGIN
//! IMMEDIATE`), so reads inside a write see what the write will change.

use std::borrow::Cow;
use std::collections::HashSet;

use chrono::Utc;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Sqlite, SqlitePool};

use super::first_load::{FirstLoad, FirstLoaded, StagedBatches, StagedRow, shares_a_key};
use super::{
    CustomerRow, FIND, ImportOutcome, Probe, Store, StoreError, TakenKey, Upserted, Violation, count_kept, find_in,
    plan_import, refused, retire_in, returning_customer, taken_keys, violation,
};
use kit::trace::TextContext;

use crate::domain::{Customer, CustomerKey, CustomerLink, RetirementKey, UpsertPlan, plan_upsert};

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
    find_in(conn, &FIND, key).await
}

/// Who holds `key` of `link`, as an error.
async fn taken(conn: &mut SqliteConnection, key: TakenKey, link: &CustomerLink) -> Result<StoreError, StoreError> {
    let (holder, value) = match key {
        TakenKey::LmsUserId => (CustomerKey::LmsUserId(link.lms_user_id()), link.lms_user_id().to_string()),
        TakenKey::LmsUsername => {
            (CustomerKey::LmsUsername(link.lms_username().clone()), link.lms_username().as_str().to_string())
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
    let previous = find(conn, &CustomerKey::CustomerId(link.customer_id().clone())).await?;
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
        .bind(link.customer_id().as_str())
        .bind(link.lms_user_id().get())
        .bind(link.lms_username().as_str())
        .bind(link.email().as_str())
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
        let (retired, event) = retire_in(&mut *tx, previous, retirement, now, trace).await?;
        kit::outbox::sqlite::insert(&mut tx, event.as_slice(), now).await?;
        tx.commit().await?;
        Ok(Some(retired))
    }

    async fn begin_first_load(&self) -> Result<Option<Box<dyn FirstLoad>>, StoreError> {
        Ok(SqliteFirstLoad::begin(&self.pool).await?.map(|load| Box::new(load) as Box<dyn FirstLoad>))
    }

    async fn import_distinct(&self, rows: &[CustomerLink], skip: &HashSet<usize>) -> Result<ImportOutcome, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let restore = bulk_settings(&mut conn).await?;
        let imported = match import_bulk(&mut conn, rows, skip).await {
            // Cannot happen with one writer and the plan's checks; kept as the safe path.
            Err(StoreError::Database(error)) if violation(&error).is_some() => {
                import_row_by_row(&mut conn, rows, skip).await
            }
            other => other,
        };
        if let Err(error) = restore.apply(&mut conn).await {
            // The connection keeps the bulk settings: do not hand it to the next caller.
            tracing::warn!(%error, "could not restore a connection's settings after an import; closing it");
            conn.close_on_drop();
        }
        imported
    }
}

/// Rows per multi-row INSERT into a staging table: at most 6 parameters
/// each, well under SQLite's 32,766 per statement.
const STAGE_CHUNK: usize = 500;

/// The head of the ordinary import's staging INSERT (one leading column: the row's index).
const IMPORT_STAGE_HEAD: &str =
    "INSERT INTO temp.customer_import (ord, customer_id, lms_user_id, lms_username, email) VALUES ";

/// [`IMPORT_STAGE_HEAD`] for a whole [`STAGE_CHUNK`].
static IMPORT_STAGE_CHUNK: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| staged_insert::<1>(IMPORT_STAGE_HEAD, STAGE_CHUNK));

/// `head` followed by `rows` tuples of `N` leading integers and a link's four columns.
fn staged_insert<const N: usize>(head: &str, rows: usize) -> String {
    let tuple = format!("({})", vec!["?"; N + 4].join(", "));
    format!("{head}{}", vec![tuple; rows].join(", "))
}

/// Inserts `rows` (each `N` leading integers, then a link's columns) into a
/// staging table, [`STAGE_CHUNK`] rows a statement: `whole_chunk` is the
/// statement for a full chunk, one text that each connection prepares once
/// and reuses; the rest goes in one statement not kept in the connection's cache.
async fn insert_staged<const N: usize>(
    conn: &mut SqliteConnection,
    head: &str,
    whole_chunk: &'static str,
    rows: &[([i64; N], &CustomerLink)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(STAGE_CHUNK) {
        let whole = chunk.len() == STAGE_CHUNK;
        let sql: Cow<'static, str> =
            if whole { Cow::Borrowed(whole_chunk) } else { Cow::Owned(staged_insert::<N>(head, chunk.len())) };
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(whole);
        for (leading, row) in chunk {
            for value in leading {
                insert = insert.bind(*value);
            }
            insert = insert
                .bind(row.customer_id().as_str())
                .bind(row.lms_user_id().get())
                .bind(row.lms_username().as_str())
                .bind(row.email().as_str());
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A connection's settings before an import changed them.
struct Restore {
    cache_size: i64,
    wal_autocheckpoint: i64,
}

impl Restore {
    async fn apply(&self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        // PRAGMA takes no parameters; both values are integers SQLite answered.
        let sql =
            format!("PRAGMA cache_size = {}; PRAGMA wal_autocheckpoint = {}", self.cache_size, self.wal_autocheckpoint);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await.map(drop)
    }
}

/// Settings for a bulk write on this connection: a page cache that holds a
/// batch's index pages (so a large transaction does not spill to the WAL as
/// it goes), and WAL checkpoints every 40 MB rather than every 4 MB. The
/// durability settings (WAL, synchronous NORMAL) stay as they are.
async fn bulk_settings(conn: &mut SqliteConnection) -> Result<Restore, StoreError> {
    let cache_size: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(&mut *conn).await?;
    let wal_autocheckpoint: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&mut *conn).await?;
    sqlx::raw_sql("PRAGMA cache_size = -131072; PRAGMA wal_autocheckpoint = 10000").execute(&mut *conn).await?;
    Ok(Restore { cache_size, wal_autocheckpoint })
}

/// One batch, set-based, in one write transaction: the rows go to a
/// temporary staging table in chunks of [`STAGE_CHUNK`], two joins find the
/// stored customers and the keys other customers hold, rejected rows leave
/// the staging table, and one `INSERT ... SELECT ... ON CONFLICT` merges the rest.
async fn import_bulk(
    conn: &mut SqliteConnection,
    rows: &[CustomerLink],
    skip: &HashSet<usize>,
) -> Result<ImportOutcome, StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE IF NOT EXISTS customer_import (
             ord          INTEGER NOT NULL,
             customer_id  TEXT    NOT NULL,
             lms_user_id  INTEGER NOT NULL,
             lms_username TEXT    NOT NULL,
             email        TEXT    NOT NULL
         )",
    )
    .execute(&mut *tx)
    .await?;
    let candidates: Vec<([i64; 1], &CustomerLink)> =
        rows.iter().enumerate().filter(|(i, _)| !skip.contains(i)).map(|(i, row)| ([i as i64], row)).collect();
    insert_staged(&mut tx, IMPORT_STAGE_HEAD, IMPORT_STAGE_CHUNK.as_str(), &candidates).await?;

    let existing: Vec<CustomerRow> = sqlx::query_as(
        "SELECT c.customer_id, c.lms_user_id, c.lms_username, c.email, c.version, c.retired, c.create_time, c.update_time
           FROM temp.customer_import r JOIN customers c ON c.customer_id = r.customer_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    // Keys another customer holds: (row index, field, owner).
    let taken: Vec<(i64, String, String)> =
        sqlx::query_as(taken_keys!("temp.customer_import")).fetch_all(&mut *tx).await?;
    let probe = Probe::new(existing, taken);
    let (keep, mut outcome) = plan_import(rows, skip, &probe);
    for rejection in &outcome.rejected {
        sqlx::query("DELETE FROM temp.customer_import WHERE ord = ?")
            .bind(rejection.index as i64)
            .execute(&mut *tx)
            .await?;
    }
    // `WHERE true` tells SQLite's parser that ON CONFLICT is the upsert's, not a join's.
    sqlx::query(
        "INSERT INTO customers (customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time)
         SELECT customer_id, lms_user_id, lms_username, email, 1, FALSE, $1, $1
           FROM temp.customer_import WHERE true ORDER BY customer_id
         ON CONFLICT (customer_id) DO UPDATE
            SET lms_user_id = excluded.lms_user_id, lms_username = excluded.lms_username, email = excluded.email,
                version = customers.version + 1, update_time = excluded.update_time
          WHERE customers.lms_user_id <> excluded.lms_user_id OR customers.lms_username <> excluded.lms_username
             OR customers.email <> excluded.email",
    )
    .bind(Utc::now())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM temp.customer_import").execute(&mut *tx).await?;
    tx.commit().await?;

    // One writer: what the probe found is what the merge met.
    count_kept(&mut outcome, rows, &keep, &probe);
    Ok(outcome)
}

/// The row-by-row path, each row with the upsert's own checks, in one transaction.
async fn import_row_by_row(
    conn: &mut SqliteConnection,
    rows: &[CustomerLink],
    skip: &HashSet<usize>,
) -> Result<ImportOutcome, StoreError> {
    let mut outcome = ImportOutcome::default();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    for (index, row) in rows.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
        outcome.record(index, upsert_in(&mut tx, row, None).await)?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// The head of the first load's staging INSERT (two leading columns: the batch and the row's number).
const FIRST_LOAD_STAGE_HEAD: &str =
    "INSERT INTO temp.customer_first_load (batch, ord, customer_id, lms_user_id, lms_username, email) VALUES ";

/// [`FIRST_LOAD_STAGE_HEAD`] for a whole [`STAGE_CHUNK`].
static FIRST_LOAD_STAGE_CHUNK: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| staged_insert::<2>(FIRST_LOAD_STAGE_HEAD, STAGE_CHUNK));

/// A first load into SQLite ([`super::first_load`]): the batches staged in a
/// temporary table of one pooled connection (no lock on the database file),
/// then one write transaction.
pub struct SqliteFirstLoad {
    conn: StagingConnection,
    batches: i64,
}

/// The pooled connection that holds a first load's staging table: closed
/// when dropped before the table was, so a load abandoned half way (the
/// caller gone, a failed step) leaves no table behind in the pool.
struct StagingConnection {
    conn: PoolConnection<Sqlite>,
    cleaned: bool,
}

impl StagingConnection {
    async fn drop_table(&mut self) -> Result<(), StoreError> {
        sqlx::query("DROP TABLE temp.customer_first_load").execute(&mut *self.conn).await?;
        self.cleaned = true;
        Ok(())
    }
}

impl std::ops::Deref for StagingConnection {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for StagingConnection {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for StagingConnection {
    fn drop(&mut self) {
        if !self.cleaned {
            self.conn.close_on_drop();
        }
    }
}

impl SqliteFirstLoad {
    /// A first load when `customers` is empty; None otherwise.
    async fn begin(pool: &SqlitePool) -> Result<Option<Self>, StoreError> {
        let mut conn = pool.acquire().await?;
        let empty: bool =
            sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM customers)").fetch_one(&mut *conn).await?;
        if !empty {
            return Ok(None);
        }
        // A connection's temporary tables outlive a load that was dropped half way.
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS temp.customer_first_load;
             CREATE TEMPORARY TABLE customer_first_load (
                 batch        INTEGER NOT NULL,
                 ord          INTEGER NOT NULL,
                 customer_id  TEXT    NOT NULL,
                 lms_user_id  INTEGER NOT NULL,
                 lms_username TEXT    NOT NULL,
                 email        TEXT    NOT NULL
             )",
        )
        .execute(&mut *conn)
        .await?;
        Ok(Some(Self { conn: StagingConnection { conn, cleaned: false }, batches: 0 }))
    }

    /// In one write transaction: the indexes dropped, the rows inserted in
    /// key order, the indexes built. Answers the rows inserted; None (and
    /// nothing written) when the table is no longer empty or rows share a key.
    async fn load(&mut self) -> Result<Option<u64>, StoreError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let empty: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM customers)").fetch_one(&mut *tx).await?;
        if !empty {
            return Ok(None);
        }
        // The explicit indexes as the schema holds them (the primary key's stays: it is the table's own).
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'customers' AND sql IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (name, _) in &indexes {
            let drop = format!("DROP INDEX \"{}\"", name.replace('"', "\"\""));
            sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&mut *tx).await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO customers (customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time)
             SELECT customer_id, lms_user_id, lms_username, email, 1, FALSE, $1, $1
               FROM temp.customer_first_load ORDER BY customer_id",
        )
        .bind(Utc::now())
        .execute(&mut *tx)
        .await;
        let built = match inserted {
            Ok(done) => build_indexes(&mut tx, &indexes).await.map(|()| done.rows_affected()),
            Err(error) => Err(error.into()),
        };
        match built {
            Ok(inserted) => {
                tx.commit().await?;
                Ok(Some(inserted))
            }
            // Dropping the transaction rolls it back: the indexes come back, the table stays empty.
            Err(error) if shares_a_key(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

async fn build_indexes(conn: &mut SqliteConnection, indexes: &[(String, String)]) -> Result<(), StoreError> {
    for (_, build) in indexes {
        sqlx::raw_sql(sqlx::AssertSqlSafe(build.as_str())).execute(&mut *conn).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl FirstLoad for SqliteFirstLoad {
    async fn stage(&mut self, rows: &[(i64, CustomerLink)]) -> Result<(), StoreError> {
        let batch = self.batches;
        self.batches += 1;
        let staged: Vec<([i64; 2], &CustomerLink)> = rows.iter().map(|(ord, row)| ([batch, *ord], row)).collect();
        let mut tx = self.conn.begin().await?;
        insert_staged(&mut tx, FIRST_LOAD_STAGE_HEAD, FIRST_LOAD_STAGE_CHUNK.as_str(), &staged).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<FirstLoaded, StoreError> {
        if self.batches == 0 {
            self.conn.drop_table().await?;
            return Ok(FirstLoaded::Inserted(0));
        }
        let restore = bulk_settings(&mut self.conn).await?;
        let loaded = self.load().await;
        if let Err(error) = restore.apply(&mut self.conn).await {
            tracing::warn!(%error, "could not restore a connection's settings after a first load; closing it");
            self.conn.conn.close_on_drop();
        }
        if let Some(inserted) = loaded? {
            self.conn.drop_table().await?;
            return Ok(FirstLoaded::Inserted(inserted));
        }
        sqlx::query("CREATE INDEX temp.customer_first_load_batch ON customer_first_load (batch)")
            .execute(&mut *self.conn)
            .await?;
        Ok(FirstLoaded::Conflicted(Box::new(SqliteStaged { conn: self.conn, next: 0, batches: self.batches })))
    }
}

/// The staged batches of a first load that could not take the fast path.
struct SqliteStaged {
    conn: StagingConnection,
    next: i64,
    batches: i64,
}

#[async_trait::async_trait]
impl StagedBatches for SqliteStaged {
    async fn next_batch(&mut self) -> Result<Option<Vec<(i64, CustomerLink)>>, StoreError> {
        if self.next > self.batches {
            return Ok(None);
        }
        if self.next == self.batches {
            self.next += 1;
            self.conn.drop_table().await?;
            return Ok(None);
        }
        let rows: Vec<StagedRow> = sqlx::query_as(
            "SELECT ord, customer_id, lms_user_id, lms_username, email
               FROM temp.customer_first_load WHERE batch = ? ORDER BY ord",
        )
        .bind(self.next)
        .fetch_all(&mut *self.conn)
        .await?;
        self.next += 1;
        rows.into_iter().map(StagedRow::into_link).collect::<Result<Vec<_>, _>>().map(Some)
    }
}
