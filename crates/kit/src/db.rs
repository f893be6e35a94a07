//! Connecting to and migrating a service's own database: Postgres in
//! production, SQLite embedded.
//!
//! Each service owns its data: on Postgres, a schema of its own (several
//! services may share one server and database); on SQLite, a file of its own.
//! Each keeps migrations for both backends and hands them over as
//! [`Migrations`]:
//!
//! ```no_run
//! # async fn run() -> Result<(), kit::db::DbError> {
//! use kit::db::{Database, DatabaseConfig, Migrations};
//!
//! static MIGRATIONS: Migrations = Migrations {
//!     postgres: sqlx::migrate!("../../services/fulfillment/migrations/postgres"),
//!     sqlite: sqlx::migrate!("../../services/fulfillment/migrations/sqlite"),
//! };
//!
//! let config = DatabaseConfig::sqlite_file("data/fulfillment.db");
//! let db = Database::open(&config)?; // lazy: no connection yet
//! kit::db::migrate(&config, &MIGRATIONS).await?;
//! db.ping().await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor};

/// Where a service's database is and how to reach it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `postgres://user@host:5432/db` or `sqlite://path/to/file.db`.
    pub url: String,
    /// Postgres only: the schema the service's tables live in, created if
    /// missing. Lower-case letters, digits and `_`.
    pub schema: Option<String>,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a connection before failing.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Postgres only: the longest one statement may run (lock waits
    /// included) before the server cancels it; set on every pooled
    /// connection. Zero: no limit. Migrations run without it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// A pooled connection idle at least this long is pinged (one round
    /// trip) before it is handed out; one in steady use is not: sqlx pinged
    /// it as it came back, less than this long ago. Zero: ping at every checkout.
    #[serde(with = "humantime_serde")]
    pub ping_after_idle: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            schema: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            ping_after_idle: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("DatabaseConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ping_after_idle", &self.ping_after_idle)
            .finish()
    }
}

impl DatabaseConfig {
    /// A SQLite file, created with its directory if missing.
    pub fn sqlite_file(path: impl AsRef<Path>) -> Self {
        Self { url: format!("sqlite://{}", path.as_ref().display()), ..Self::default() }
    }

    /// A schema on a Postgres server.
    pub fn postgres(url: impl Into<String>, schema: impl Into<String>) -> Self {
        Self { url: url.into(), schema: Some(schema.into()), ..Self::default() }
    }

    /// The backend the URL names.
    pub fn backend(&self) -> Result<Backend, DbError> {
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if self.url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(DbError::UnsupportedUrl(redact(&self.url)))
        }
    }
}

/// Which database engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: production.
    Postgres,
    /// SQLite: embedded.
    Sqlite,
}

/// A service's migrations for both backends, kept in step.
pub struct Migrations {
    /// Applied on Postgres, inside the service's schema.
    pub postgres: Migrator,
    /// Applied on SQLite.
    pub sqlite: Migrator,
}

/// A connection pool to a service's database.
#[derive(Clone, Debug)]
pub enum Database {
    /// PostgreSQL, with `search_path` set to the service's schema.
    Postgres(PgPool),
    /// SQLite, in WAL mode.
    Sqlite(SqlitePool),
}

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is neither `postgres://` nor `sqlite:`.
    #[error("unsupported database URL {0}: expected postgres:// or sqlite:")]
    UnsupportedUrl(String),
    /// The schema name is not a plain identifier.
    #[error("invalid schema name {0:?}: use lower-case letters, digits and _")]
    InvalidSchema(String),
    /// Could not connect.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    /// The SQLite file's directory could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Database {
    /// A pool that connects on first use, so a component can serve health
    /// (NOT_SERVING) while its database is still being prepared. Only the
    /// SQLite file's directory is created here.
    pub fn open(config: &DatabaseConfig) -> Result<Self, DbError> {
        match config.backend()? {
            Backend::Postgres => {
                let options = postgres_options(config)?;
                Ok(Self::Postgres(pool_options(config).connect_lazy_with(options)))
            }
            Backend::Sqlite => {
                let options = sqlite_options(config)?;
                Ok(Self::Sqlite(pool_options(config).connect_lazy_with(options)))
            }
        }
    }

    /// Answers once the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            Self::Postgres(pool) => pool.execute("SELECT 1").await.map(drop)?,
            Self::Sqlite(pool) => pool.execute("SELECT 1").await.map(drop)?,
        }
        Ok(())
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

/// Creates the Postgres schema if missing and applies the migrations not
/// applied yet, over a connection of its own. Safe to run from several
/// processes at once: Postgres serialises them with an advisory lock.
///
/// Migrations a newer release applied, which this binary does not know, are
/// tolerated: releases overlap during a rollout and a rollback (expand, then
/// contract), so an older binary must start on a newer schema.
pub async fn migrate(config: &DatabaseConfig, migrations: &Migrations) -> Result<(), DbError> {
    let connect_error = |source| DbError::Connect { url: redact(&config.url), source };
    // A one-connection pool rather than a bare connection: the migrator then
    // stays Send in generic async contexts.
    match config.backend()? {
        Backend::Postgres => {
            // No statement timeout: a migration may rewrite or index a large
            // table, and waits on the migrator's advisory lock while another
            // process migrates; cut short, it would roll back and fail every
            // deploy. Migrations run once, from the Job, not on a request's path.
            let options = postgres_options_with(config, Duration::ZERO)?;
            if let Some(schema) = &config.schema {
                let mut conn = options.connect().await.map_err(connect_error)?;
                // DDL takes no bind parameters; the name was checked to be a plain identifier.
                let ddl = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
                sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&mut conn).await.or_else(ignore_concurrent_create)?;
                conn.close().await?;
            }
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(config.acquire_timeout)
                .connect_with(options)
                .await
                .map_err(connect_error)?;
            let result = tolerant(&migrations.postgres).run(&pool).await;
            pool.close().await;
            result?;
        }
        Backend::Sqlite => {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(config.acquire_timeout)
                .connect_with(sqlite_options(config)?)
                .await
                .map_err(connect_error)?;
            let result = tolerant(&migrations.sqlite).run(&pool).await;
            pool.close().await;
            result?;
        }
    }
    Ok(())
}

/// `migrator`'s migrations, run so that applied ones it does not know (a newer release's) are ignored.
fn tolerant(migrator: &Migrator) -> Migrator {
    let mut tolerant = Migrator::with_migrations(migrator.iter().cloned().collect());
    tolerant.set_ignore_missing(true);
    tolerant
}

/// The versions of `migrations` not applied yet to the database `config`
/// names (all of them when it has never been migrated). Applies nothing:
/// for a process that waits for another (a migrations Job) to migrate.
pub async fn pending_migrations(config: &DatabaseConfig, migrations: &Migrations) -> Result<Vec<i64>, DbError> {
    let connect_error = |source| DbError::Connect { url: redact(&config.url), source };
    let (migrator, applied) = match config.backend()? {
        Backend::Postgres => {
            let mut conn = postgres_options(config)?.connect().await.map_err(connect_error)?;
            // to_regclass looks in search_path, that is the service's schema.
            let migrated: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut conn).await?;
            let applied: Vec<i64> = if migrated {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(&mut conn).await?
            } else {
                Vec::new()
            };
            conn.close().await?;
            (&migrations.postgres, applied)
        }
        Backend::Sqlite => {
            let mut conn = sqlite_options(config)?.connect().await.map_err(connect_error)?;
            let migrated: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
            )
            .fetch_one(&mut conn)
            .await?;
            let applied: Vec<i64> = if migrated {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(&mut conn).await?
            } else {
                Vec::new()
            };
            conn.close().await?;
            (&migrations.sqlite, applied)
        }
    };
    Ok(migrator
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .map(|migration| migration.version)
        .filter(|version| !applied.contains(version))
        .collect())
}

/// The pool's size and waits, and its check of idle connections: sqlx's own
/// check pings at every checkout, a round trip on the path of every request
/// (issue 17 counted 2 of CatalogIngest's 9–11 per event). sqlx also pings
/// each connection as it comes back (off the caller's path), so one taken
/// again soon after was seen alive then; one that died since fails the one
/// statement that finds it out, and is discarded as it comes back.
fn pool_options<DB: sqlx::Database>(config: &DatabaseConfig) -> sqlx::pool::PoolOptions<DB> {
    let ping_after_idle = config.ping_after_idle;
    sqlx::pool::PoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn: &mut DB::Connection, meta: sqlx::pool::PoolConnectionMetadata| {
            Box::pin(async move {
                if meta.idle_for >= ping_after_idle
                    && let Err(error) = conn.ping().await
                {
                    // Expected after a restart of the server: the pool opens another.
                    tracing::info!(%error, "an idle pooled connection did not answer its ping; closing it");
                    return Ok(false);
                }
                Ok(true)
            })
        })
}

fn postgres_options(config: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    postgres_options_with(config, config.statement_timeout)
}

/// The connect options with `statement_timeout` in the startup parameters,
/// so every connection has it from its first statement (no `SET` per checkout).
fn postgres_options_with(config: &DatabaseConfig, statement_timeout: Duration) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(&config.url)
        .map_err(|source| DbError::Connect { url: redact(&config.url), source })?;
    // Milliseconds: Postgres's unit for it; 0 turns it off.
    let statement_timeout = statement_timeout.as_millis().to_string();
    let mut parameters = vec![("statement_timeout", statement_timeout.as_str())];
    match &config.schema {
        Some(schema) if !is_identifier(schema) => return Err(DbError::InvalidSchema(schema.clone())),
        Some(schema) => parameters.push(("search_path", schema.as_str())),
        None => {}
    }
    Ok(options.options(parameters))
}

fn sqlite_options(config: &DatabaseConfig) -> Result<SqliteConnectOptions, DbError> {
    let options = SqliteConnectOptions::from_str(&config.url)
        .map_err(|source| DbError::Connect { url: redact(&config.url), source })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let parent = options.get_filename().parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        std::fs::create_dir_all(dir)
            .map_err(|source| DbError::CreateDir { path: dir.display().to_string(), source })?;
    }
    Ok(options)
}

/// Two services creating their schemas at once can race in Postgres's catalog;
/// the loser's error means the schema now exists.
fn ignore_concurrent_create(error: sqlx::Error) -> Result<sqlx::postgres::PgQueryResult, DbError> {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => Ok(Default::default()),
        _ => Err(DbError::Query(error)),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// What a store failure means for the caller: the one classification every
/// service's store errors go through ([`store_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// The database is down, unreachable, overloaded, timed out, or the
    /// transaction lost to a concurrent one: repeating the request may succeed.
    Unavailable,
    /// The data broke a rule the database enforces (a constraint, a value out
    /// of range) that the service did not expect: the same request fails the same way.
    Constraint,
    /// Anything else (a query, a decode, a type): a bug of ours.
    Bug,
}

/// Classifies a database error, on Postgres (by SQLSTATE class) and SQLite
/// (by result code).
pub fn classify(error: &sqlx::Error) -> StoreFailure {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreFailure::Unavailable,
        sqlx::Error::Database(database) => match database.code() {
            Some(code) => classify_code(&code),
            None => StoreFailure::Bug,
        },
        _ => StoreFailure::Bug,
    }
}

/// Postgres SQLSTATEs are five characters (some all digits); SQLite's
/// (extended) result codes are numbers of at most four digits.
fn classify_code(code: &str) -> StoreFailure {
    if code.len() < 5
        && let Ok(sqlite) = code.parse::<u32>()
    {
        // The primary result code is the low byte of an extended one.
        return match sqlite & 0xff {
            5 | 6 | 10 | 13 | 14 | 15 => StoreFailure::Unavailable, // BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
            18..=20 => StoreFailure::Constraint,                    // TOOBIG, CONSTRAINT, MISMATCH
            _ => StoreFailure::Bug,
        };
    }
    match code.get(..2).unwrap_or_default() {
        // connection exception, insufficient resources, operator intervention (a
        // cancelled statement: statement_timeout), system error, object not in
        // prerequisite state (a lock not available)
        "08" | "53" | "57" | "58" | "55" => StoreFailure::Unavailable,
        // serialization failure, deadlock: the transaction lost to a concurrent one
        "40" => StoreFailure::Unavailable,
        // data exception, integrity constraint violation, program limit exceeded
        "22" | "23" | "54" => StoreFailure::Constraint,
        _ => StoreFailure::Bug,
    }
}

/// The status a caller gets for a failure of `store` (`"the fulfillment
/// store"`): UNAVAILABLE with `RetryInfo` (503 with Retry-After through the
/// gateway) when it may pass, FAILED_PRECONDITION for data the database
/// refused, INTERNAL otherwise. The database's own message is logged here and
/// never answered: it names tables, columns, values.
///
/// ```
/// let status = kit::db::store_status("the purchase store", &sqlx::Error::PoolTimedOut);
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert!(kit::error::retry_after(&status).is_some());
/// ```
pub fn store_status(store: &str, error: &sqlx::Error) -> tonic::Status {
    let failure = classify(error);
    tracing::error!(store, %error, ?failure, "store failed");
    match failure {
        StoreFailure::Unavailable => crate::error::with_retry_info(
            tonic::Code::Unavailable,
            format!("{store} is unavailable; repeat the request"),
            crate::error::RETRY_AFTER,
        ),
        StoreFailure::Constraint => crate::error::with_reason(
            tonic::Code::FailedPrecondition,
            format!("{store} refused the data; nothing was changed"),
            "STORE_REFUSED",
            std::iter::empty::<(String, String)>(),
        ),
        StoreFailure::Bug => tonic::Status::internal(format!("{store} failed; this is logged")),
    }
}

/// The URL with any password replaced by `***`: the userinfo's, and a
/// `password` or `sslpassword` query parameter's (libpq and sqlx take both).
/// A URL without one is shown as written. Text that is not a URL is shown as
/// written too, unless it may hold a password (a `@` or the word `password`):
/// then it shows as `<unparseable url>`.
pub fn redact(url: &str) -> String {
    const HIDDEN: &str = "<unparseable url>";
    let is_secret = |key: &str| key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword");
    let Ok(mut parsed) = url::Url::parse(url) else {
        let may_hold_secret = url.contains('@') || url.to_ascii_lowercase().contains("password");
        return if may_hold_secret { HIDDEN.into() } else { url.into() };
    };
    let secret_in_query = parsed.query_pairs().any(|(key, _)| is_secret(&key));
    if parsed.password().is_none() && !secret_in_query {
        return url.into();
    }
    if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
        return HIDDEN.into();
    }
    if secret_in_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_secret(&key) { "***".into() } else { value.into_owned() };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_are_classified_by_code_on_both_backends() {
        for (code, failure) in [
            ("08006", StoreFailure::Unavailable),
            ("57014", StoreFailure::Unavailable),
            ("40001", StoreFailure::Unavailable),
            ("40P01", StoreFailure::Unavailable),
            ("53300", StoreFailure::Unavailable),
            ("23505", StoreFailure::Constraint),
            ("22001", StoreFailure::Constraint),
            ("42P01", StoreFailure::Bug),
            ("5", StoreFailure::Unavailable),
            ("517", StoreFailure::Unavailable),
            ("2067", StoreFailure::Constraint),
            ("1", StoreFailure::Bug),
        ] {
            assert_eq!(classify_code(code), failure, "{code}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), StoreFailure::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), StoreFailure::Bug);
    }

    #[tokio::test]
    async fn no_database_text_reaches_the_caller() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let error = sqlx::query("SELECT secret_column FROM secret_table").execute(&pool).await.unwrap_err();
        let status = store_status("the test store", &error);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("secret"), "{}", status.message());
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)").execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)").execute(&pool).await.unwrap();
        let error = sqlx::query("INSERT INTO t VALUES (1)").execute(&pool).await.unwrap_err();
        let status = store_status("the test store", &error);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(!status.message().contains("t.id"), "{}", status.message());
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/mesh"), "postgres://app:***@db:5432/mesh");
        assert_eq!(redact("postgres://postgres@127.0.0.1/mesh"), "postgres://postgres@127.0.0.1/mesh");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(
            redact("postgres://app@db/mesh?sslmode=require&password=s3cret&sslpassword=k3y"),
            "postgres://app@db/mesh?sslmode=require&password=***&sslpassword=***"
        );
        assert_eq!(redact("postgres://app:s3cret@db?Password=s3cret"), "postgres://app:***@db?Password=***");
        assert_eq!(redact("sqlite://data/x.db?mode=rwc"), "sqlite://data/x.db?mode=rwc");
        let config = DatabaseConfig::postgres("postgres://app:s3cret@db/mesh", "fulfillment");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn text_that_is_no_url_never_shows_a_password() {
        assert_eq!(redact("postgres://app:s3cret@db:not-a-port/mesh"), "<unparseable url>");
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(redact("data/x.db"), "data/x.db", "a path is shown as written");
        assert_eq!(redact("db password=s3cret"), "<unparseable url>");
    }

    #[test]
    fn backend_follows_the_url() {
        assert_eq!(DatabaseConfig::sqlite_file("a.db").backend().ok(), Some(Backend::Sqlite));
        assert_eq!(DatabaseConfig::postgres("postgresql://h/db", "s").backend().ok(), Some(Backend::Postgres));
        let mysql = DatabaseConfig { url: "mysql://h/db".into(), ..Default::default() };
        assert!(matches!(mysql.backend(), Err(DbError::UnsupportedUrl(_))));
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(is_identifier("customer_identity"));
        assert!(!is_identifier("Fulfillment"));
        assert!(!is_identifier("x\"; DROP SCHEMA public; --"));
        assert!(!is_identifier(""));
    }
}
