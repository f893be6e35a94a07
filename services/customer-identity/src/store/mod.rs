//! Where customer links are kept: the [`Store`] trait and its backends,
//! [`postgres::PostgresStore`] and [`sqlite::SqliteStore`]. One contract suite
//! (`tests/store_contract.rs`) runs against both.

pub mod first_load;
pub mod postgres;
pub mod sqlite;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kit::db::Database;
use kit::outbox::OutboxEvent;
use kit::trace::TextContext;

use crate::domain::{Customer, CustomerKey, CustomerLink, LmsUsername, RetirementKey};

/// A key an upsert wanted that another customer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakenKey {
    /// The LMS user id.
    LmsUserId,
    /// The LMS username (case-insensitively).
    LmsUsername,
}

impl TakenKey {
    /// The request field it corresponds to.
    pub fn field(self) -> &'static str {
        match self {
            Self::LmsUserId => "lms_user_id",
            Self::LmsUsername => "lms_username",
        }
    }
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `expected_version` did not match.
    #[error("expected version {expected}, stored version {}", stored.map_or("none (no such customer)".to_string(), |v| v.to_string()))]
    VersionMismatch {
        /// What the caller expected.
        expected: i64,
        /// What is stored; None when the customer does not exist.
        stored: Option<i64>,
    },
    /// Another customer holds the LMS user id or username.
    #[error("{} {value} belongs to customer {owner}", key.field())]
    Taken {
        /// Which key.
        key: TakenKey,
        /// The value asked for.
        value: String,
        /// The customer who holds it.
        owner: String,
    },
    /// The customer was retired and cannot be changed.
    #[error("customer {0} is retired")]
    Retired(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The result of an upsert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upserted {
    /// The customer as stored now.
    pub customer: Customer,
    /// The customer before, if it existed.
    pub previous: Option<Customer>,
}

/// One row of an import that was not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowRejection {
    /// Its index in the batch given.
    pub index: usize,
    /// The field at fault; empty for the row as a whole.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// The result of importing one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Rows that created a customer.
    pub inserted: u64,
    /// Rows that changed an existing customer.
    pub updated: u64,
    /// Rows that matched a customer exactly: nothing written, the version stays.
    pub unchanged: u64,
    /// Rows not stored.
    pub rejected: Vec<RowRejection>,
    /// Customers as they were before the rows that changed them, for cache invalidation.
    pub previous: Vec<Customer>,
}

impl ImportOutcome {
    /// Counts one row's upsert; a taken key or a retired customer rejects the
    /// row, any other error stops the batch.
    fn record(&mut self, index: usize, result: Result<Upserted, StoreError>) -> Result<(), StoreError> {
        match result {
            Ok(Upserted { previous: None, .. }) => self.inserted += 1,
            Ok(Upserted { previous: Some(previous), customer }) if previous.version == customer.version => {
                self.unchanged += 1;
            }
            Ok(Upserted { previous: Some(previous), .. }) => {
                self.updated += 1;
                self.previous.push(previous);
            }
            Err(StoreError::Taken { key, owner, .. }) => self.rejected.push(RowRejection {
                index,
                field: key.field(),
                reason: format!("belongs to customer {owner}"),
            }),
            Err(StoreError::Retired(_)) => {
                self.rejected.push(RowRejection { index, field: "", reason: "the customer is retired".into() })
            }
            Err(other) => return Err(other),
        }
        Ok(())
    }
}

/// Where customer links are kept.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The customer found by `key`.
    async fn get(&self, key: &CustomerKey) -> Result<Option<Customer>, StoreError>;

    /// The customers found by each of `keys`, in order.
    async fn get_many(&self, keys: &[CustomerKey]) -> Result<Vec<Option<Customer>>, StoreError>;

    /// Creates or updates the link, checking `expected_version` (0: must not
    /// exist) and that no other customer holds the LMS user id or username.
    /// Storing what is already stored changes nothing (the version stays).
    async fn upsert(&self, link: &CustomerLink, expected_version: Option<i64>) -> Result<Upserted, StoreError>;

    /// Replaces the username with its retired placeholder (salted hash, see
    /// [`LmsUsername::retired`]), clears the email, keeps the LMS user id, and writes its `CustomerRetired` event to the outbox in
    /// the same transaction ([`crate::events::customer_retired`]). Retiring a retired customer changes nothing. None when no
    /// customer matches.
    async fn retire(
        &self,
        key: &CustomerKey,
        retirement: &RetirementKey,
        trace: &TextContext,
    ) -> Result<Option<Upserted>, StoreError>;

    /// Upserts a batch of valid rows, each without version checks; a row that
    /// repeats an earlier row's customer id, whose LMS user id or username
    /// belongs to another customer, or whose customer is retired, is rejected
    /// and the others are stored.
    async fn import(&self, rows: &[CustomerLink]) -> Result<ImportOutcome, StoreError> {
        let repeats = repeats_in_batch(rows);
        let skip: HashSet<usize> = repeats.iter().map(|r| r.index).collect();
        let mut outcome = self.import_distinct(rows, &skip).await?;
        outcome.rejected.extend(repeats);
        outcome.rejected.sort_by_key(|r| r.index);
        Ok(outcome)
    }

    /// A first load ([`first_load`]) when the table is empty; None otherwise
    /// (the import merges batch by batch).
    async fn begin_first_load(&self) -> Result<Option<Box<dyn first_load::FirstLoad>>, StoreError>;

    /// The backend's part of [`Store::import`]: the rows not in `skip`, whose
    /// customer ids are distinct.
    async fn import_distinct(&self, rows: &[CustomerLink], skip: &HashSet<usize>) -> Result<ImportOutcome, StoreError>;
}

/// The store for a database.
pub fn for_database(db: &Database) -> Arc<dyn Store> {
    match db {
        Database::Postgres(pool) => Arc::new(postgres::PostgresStore::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(sqlite::SqliteStore::new(pool.clone())),
    }
}

/// A row of `customers`, as both backends read it.
#[derive(sqlx::FromRow)]
struct CustomerRow {
    customer_id: String,
    lms_user_id: i64,
    lms_username: String,
    email: String,
    version: i64,
    retired: bool,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<CustomerRow> for Customer {
    fn from(row: CustomerRow) -> Self {
        Self {
            customer_id: row.customer_id,
            lms_user_id: row.lms_user_id,
            lms_username: row.lms_username,
            email: row.email,
            version: row.version,
            retired: row.retired,
            create_time: row.create_time,
            update_time: row.update_time,
        }
    }
}

/// `SELECT <every column> FROM customers`, as a literal for `concat!`: queries
/// are static text, every value is bound.
macro_rules! select_customers {
    () => {
        "SELECT customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time FROM customers"
    };
}
pub(crate) use select_customers;

/// `RETURNING <every column>`, likewise.
macro_rules! returning_customer {
    () => {
        " RETURNING customer_id, lms_user_id, lms_username, email, version, retired, create_time, update_time"
    };
}
pub(crate) use returning_customer;

/// The statements finding one customer by each kind of [`CustomerKey`].
struct FindStatements {
    by_customer_id: &'static str,
    by_lms_user_id: &'static str,
    by_lms_username: &'static str,
}

/// [`FindStatements`] with `$suffix` (a lock clause, or nothing) after each.
macro_rules! find_statements {
    ($suffix:literal) => {
        FindStatements {
            by_customer_id: concat!(select_customers!(), " WHERE customer_id = $1", $suffix),
            by_lms_user_id: concat!(select_customers!(), " WHERE lms_user_id = $1", $suffix),
            by_lms_username: concat!(select_customers!(), " WHERE lower(lms_username) = $1", $suffix),
        }
    };
}

/// Finds one customer by key, on either backend.
const FIND: FindStatements = find_statements!("");
/// Finds one customer by key and locks its row until the transaction ends (Postgres).
const FIND_FOR_UPDATE: FindStatements = find_statements!(" FOR UPDATE");

/// The customer `key` finds, with `statements`, on either backend.
async fn find_in<'c, DB, E>(
    executor: E,
    statements: &FindStatements,
    key: &CustomerKey,
) -> Result<Option<Customer>, StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    CustomerRow: for<'r> sqlx::FromRow<'r, DB::Row> + Send + Unpin,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let query = match key {
        CustomerKey::CustomerId(id) => {
            sqlx::query_as::<DB, CustomerRow>(statements.by_customer_id).bind(id.as_str().to_string())
        }
        CustomerKey::LmsUserId(id) => sqlx::query_as(statements.by_lms_user_id).bind(id.get()),
        CustomerKey::LmsUsername(name) => sqlx::query_as(statements.by_lms_username).bind(name.folded()),
    };
    Ok(query.fetch_optional(executor).await?.map(Customer::from))
}

/// Retires `previous`, found in the caller's transaction: the username
/// becomes its placeholder, the email goes, the version goes up. Answers the
/// change and the `CustomerRetired` event the caller writes with it; a
/// customer retired already is answered as it is, with no event.
async fn retire_in<'c, DB, E>(
    executor: E,
    previous: Customer,
    retirement: &RetirementKey,
    now: DateTime<Utc>,
    trace: &TextContext,
) -> Result<(Upserted, Option<OutboxEvent>), StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    CustomerRow: for<'r> sqlx::FromRow<'r, DB::Row> + Send + Unpin,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DateTime<Utc>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    if previous.retired {
        return Ok((Upserted { customer: previous.clone(), previous: Some(previous) }, None));
    }
    let row: CustomerRow = sqlx::query_as(concat!(
        "UPDATE customers SET lms_username = $2, email = '', retired = TRUE, version = version + 1, update_time = $3
          WHERE customer_id = $1",
        returning_customer!()
    ))
    .bind(previous.customer_id.clone())
    .bind(LmsUsername::retired_placeholder(&previous.lms_username, retirement).as_str().to_string())
    .bind(now)
    .fetch_one(executor)
    .await?;
    let customer = Customer::from(row);
    let event = crate::events::customer_retired(&customer, now, trace);
    Ok((Upserted { customer, previous: Some(previous) }, Some(event)))
}

/// A refusal decided by the domain, as a store error.
fn refused(refusal: crate::domain::UpsertRefused, link: &CustomerLink) -> StoreError {
    match refusal {
        crate::domain::UpsertRefused::VersionMismatch { expected, stored } => {
            StoreError::VersionMismatch { expected, stored }
        }
        crate::domain::UpsertRefused::Retired => StoreError::Retired(link.customer_id().as_str().to_string()),
    }
}

/// Which unique rule a database error broke, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Violation {
    /// Two creations of one customer raced.
    CustomerId,
    /// Another customer holds the key.
    Taken(TakenKey),
}

/// Reads the constraint (Postgres) or the message (SQLite) of a unique violation.
fn violation(error: &sqlx::Error) -> Option<Violation> {
    let sqlx::Error::Database(db) = error else { return None };
    if !db.is_unique_violation() {
        return None;
    }
    let name = db.constraint().map(str::to_string).unwrap_or_else(|| db.message().to_string());
    if name.contains("lms_user_id") {
        Some(Violation::Taken(TakenKey::LmsUserId))
    } else if name.contains("lms_username") {
        Some(Violation::Taken(TakenKey::LmsUsername))
    } else if name.contains("pkey") || name.contains("customer_id") {
        Some(Violation::CustomerId)
    } else {
        None
    }
}

/// What a batch's probes found in the store, before anything is written.
#[derive(Debug, Default)]
struct Probe {
    /// The stored customers the batch's rows name, by customer id.
    existing: HashMap<String, Customer>,
    /// Keys of rows that other stored customers hold: (row index, key, owner).
    /// A row may appear twice (both keys); its LMS user id is reported first.
    taken: Vec<(usize, TakenKey, String)>,
}

impl Probe {
    /// The probe's findings from its two queries: the stored customers the
    /// staged rows name, and `taken_keys!`'s rows (staged row, key, owner).
    fn new(existing: Vec<CustomerRow>, taken: Vec<(i64, String, String)>) -> Self {
        Self {
            existing: existing.into_iter().map(|row| (row.customer_id.clone(), Customer::from(row))).collect(),
            taken: taken
                .into_iter()
                .filter_map(|(ord, field, owner)| {
                    let key = if field == "lms_user_id" { TakenKey::LmsUserId } else { TakenKey::LmsUsername };
                    Some((usize::try_from(ord).ok()?, key, owner))
                })
                .collect(),
        }
    }
}

/// The probe of the keys other stored customers hold, over the staging table
/// `$staged` (`pg_temp.customer_import`, `temp.customer_import`): (row, key, owner).
macro_rules! taken_keys {
    ($staged:literal) => {
        concat!(
            "SELECT r.ord, 'lms_user_id', c.customer_id FROM ",
            $staged,
            " r JOIN customers c ON c.lms_user_id = r.lms_user_id WHERE c.customer_id <> r.customer_id
             UNION ALL
             SELECT r.ord, 'lms_username', c.customer_id FROM ",
            $staged,
            " r JOIN customers c ON lower(c.lms_username) = lower(r.lms_username) WHERE c.customer_id <> r.customer_id"
        )
    };
}
pub(crate) use taken_keys;

/// Decides which rows of a batch are written, after the probes: a row is
/// rejected when another stored customer holds one of its keys, when its
/// customer is retired, or when an earlier row of the batch that is written
/// claims the same LMS user id or username (so the bulk write never meets a
/// unique violation of its own making). Answers the indices to write and the
/// outcome so far (rejections and previous customers; the counts are the
/// caller's, who knows what the write did).
fn plan_import(rows: &[CustomerLink], skip: &HashSet<usize>, probe: &Probe) -> (Vec<usize>, ImportOutcome) {
    let mut outcome = ImportOutcome::default();
    let mut taken: HashMap<usize, (TakenKey, &str)> = HashMap::new();
    for (index, key, owner) in &probe.taken {
        let slot = taken.entry(*index).or_insert((*key, owner.as_str()));
        if *key == TakenKey::LmsUserId {
            *slot = (*key, owner.as_str());
        }
    }
    // Keys claimed by rows written earlier in this batch, with their customer.
    let mut claimed_ids: HashMap<i64, &str> = HashMap::new();
    let mut claimed_names: HashMap<String, &str> = HashMap::new();
    let mut keep = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
        let customer = row.customer_id().as_str();
        let folded = row.lms_username().folded();
        let refusal = if let Some((key, owner)) = taken.get(&index) {
            Some((key.field(), format!("belongs to customer {owner}")))
        } else if probe.existing.get(customer).is_some_and(|c| c.retired) {
            Some(("", "the customer is retired".to_string()))
        } else if let Some(owner) = claimed_ids.get(&row.lms_user_id().get()) {
            Some((TakenKey::LmsUserId.field(), format!("belongs to customer {owner}")))
        } else {
            claimed_names
                .get(&folded)
                .map(|owner| (TakenKey::LmsUsername.field(), format!("belongs to customer {owner}")))
        };
        match refusal {
            Some((field, reason)) => outcome.rejected.push(RowRejection { index, field, reason }),
            None => {
                claimed_ids.insert(row.lms_user_id().get(), customer);
                claimed_names.insert(folded, customer);
                if let Some(previous) = probe.existing.get(customer) {
                    outcome.previous.push(previous.clone());
                }
                keep.push(index);
            }
        }
    }
    (keep, outcome)
}

/// Whether writing `row` over `stored` would change nothing (what the merge's
/// and the upsert's `WHERE ... IS DISTINCT FROM` leave alone).
fn holds(stored: &Customer, row: &CustomerLink) -> bool {
    stored.lms_user_id == row.lms_user_id().get()
        && stored.lms_username == row.lms_username().as_str()
        && stored.email == row.email().as_str()
}

/// The counts of a bulk import's `kept` rows, when the store was the only
/// writer between the probe and the merge: new customers are inserted,
/// identical ones unchanged, the rest updated.
fn count_kept(outcome: &mut ImportOutcome, rows: &[CustomerLink], kept: &[usize], probe: &Probe) {
    for &index in kept {
        match probe.existing.get(rows[index].customer_id().as_str()) {
            None => outcome.inserted += 1,
            Some(stored) if holds(stored, &rows[index]) => outcome.unchanged += 1,
            Some(_) => outcome.updated += 1,
        }
    }
}

/// Rows of a batch that repeat an earlier row's customer id: the first stands.
/// (Repeated LMS user ids or usernames are left to the database's unique
/// checks, so a row that would be refused anyway does not block a later one.)
fn repeats_in_batch(rows: &[CustomerLink]) -> Vec<RowRejection> {
    let mut first_row = HashMap::new();
    let mut rejected = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        match first_row.get(row.customer_id().as_str()) {
            Some(first) => rejected.push(RowRejection {
                index,
                field: "customer_id",
                reason: format!("repeats the customer_id of an earlier row of this batch (index {first})"),
            }),
            None => {
                first_row.insert(row.customer_id().as_str(), index);
            }
        }
    }
    rejected
}
