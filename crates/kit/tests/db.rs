//! `kit::db` against real Postgres and SQLite: the same checks on both; on
//! Postgres, every pooled connection's `statement_timeout`, which migrations
//! run without.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use kit::db::{Backend, Database, DatabaseConfig, DbError, Migrations, migrate, pending_migrations};
use kit::testing::TestDatabase;

static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("tests/migrations/postgres"),
    sqlite: sqlx::migrate!("tests/migrations/sqlite"),
};

async fn notes_after_migrating_twice(backend: Backend) -> i64 {
    let test_db = TestDatabase::new(backend, "example").await;
    let db = Database::open(test_db.config()).expect("open");
    migrate(test_db.config(), &MIGRATIONS).await.expect("first migration");
    migrate(test_db.config(), &MIGRATIONS).await.expect("a second run applies nothing and succeeds");
    db.ping().await.expect("ping");
    match &db {
        Database::Postgres(pool) => {
            sqlx::query("INSERT INTO notes (body) VALUES ($1)").bind("hello").execute(pool).await.expect("insert");
            sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(pool).await.expect("count")
        }
        Database::Sqlite(pool) => {
            sqlx::query("INSERT INTO notes (body) VALUES ($1)").bind("hello").execute(pool).await.expect("insert");
            sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(pool).await.expect("count")
        }
    }
}

#[tokio::test]
async fn postgres_migrates_idempotently() {
    assert_eq!(notes_after_migrating_twice(Backend::Postgres).await, 1);
}

#[tokio::test]
async fn sqlite_migrates_idempotently() {
    assert_eq!(notes_after_migrating_twice(Backend::Sqlite).await, 1);
}

#[tokio::test]
async fn postgres_tables_live_in_the_service_schema() {
    let test_db = TestDatabase::postgres("example").await;
    migrate(test_db.config(), &MIGRATIONS).await.expect("migrate");
    let Database::Postgres(pool) = Database::open(test_db.config()).expect("open") else {
        panic!("a postgres URL opens a postgres pool");
    };
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'notes'")
            .fetch_all(&pool)
            .await
            .expect("catalog");
    assert_eq!(schemas, vec!["example".to_string()]);
}

#[tokio::test]
async fn concurrent_migrations_of_one_database_both_succeed() {
    let test_db = TestDatabase::postgres("example").await;
    let (a, b) = tokio::join!(migrate(test_db.config(), &MIGRATIONS), migrate(test_db.config(), &MIGRATIONS));
    a.expect("first migrator");
    b.expect("second migrator");
}

#[tokio::test]
async fn an_unreachable_database_is_an_error_naming_it_without_its_password() {
    let config = kit::db::DatabaseConfig {
        url: "postgres://app:s3cret@127.0.0.1:1/nowhere".into(),
        schema: Some("example".into()),
        acquire_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let error = migrate(&config, &MIGRATIONS).await.expect_err("nothing listens on port 1");
    assert!(matches!(error, DbError::Connect { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

async fn pending_before_and_after_migrating(backend: Backend) -> (Vec<i64>, Vec<i64>) {
    let test_db = TestDatabase::new(backend, "example").await;
    let before = pending_migrations(test_db.config(), &MIGRATIONS).await.expect("pending before");
    migrate(test_db.config(), &MIGRATIONS).await.expect("migrate");
    let after = pending_migrations(test_db.config(), &MIGRATIONS).await.expect("pending after");
    (before, after)
}

#[tokio::test]
async fn postgres_pending_migrations_are_all_before_and_none_after() {
    assert_eq!(pending_before_and_after_migrating(Backend::Postgres).await, (vec![1], vec![]));
}

#[tokio::test]
async fn sqlite_pending_migrations_are_all_before_and_none_after() {
    assert_eq!(pending_before_and_after_migrating(Backend::Sqlite).await, (vec![1], vec![]));
}

/// Migrations with a statement longer than the statement timeout the test below sets.
static SLOW_MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("tests/migrations/slow/postgres"),
    sqlite: sqlx::migrate!("tests/migrations/slow/sqlite"),
};

#[tokio::test]
async fn postgres_connections_have_the_default_statement_timeout() {
    let test_db = TestDatabase::postgres("example").await;
    assert_eq!(test_db.config().statement_timeout, Duration::from_secs(10));
    let Database::Postgres(pool) = Database::open(test_db.config()).expect("open") else {
        panic!("a postgres URL opens a postgres pool");
    };
    let shown: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&pool).await.expect("show");
    assert_eq!(shown, "10s");
}

#[tokio::test]
async fn statement_timeout_is_set_on_every_pooled_connection_and_cancels_a_long_statement() {
    let test_db = TestDatabase::postgres("example").await;
    let config = DatabaseConfig { statement_timeout: Duration::from_millis(250), ..test_db.config().clone() };
    migrate(&config, &SLOW_MIGRATIONS).await.expect("migrations run without the statement timeout");
    let Database::Postgres(pool) = Database::open(&config).expect("open") else {
        panic!("a postgres URL opens a postgres pool");
    };
    // Several connections at once, so each is a pooled connection of its own.
    let mut connections = Vec::new();
    for _ in 0..3 {
        connections.push(pool.acquire().await.expect("a connection"));
    }
    for connection in &mut connections {
        let shown: String =
            sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut **connection).await.expect("show");
        assert_eq!(shown, "250ms");
    }
    drop(connections);

    let error = sqlx::query("SELECT pg_sleep(5)").execute(&pool).await.expect_err("cancelled by the server");
    let code = match &error {
        sqlx::Error::Database(database) => database.code().map(|code| code.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled: {error}");
    // The connection is usable after the cancel, and the schema is where migrations put it.
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM slow_notes").fetch_one(&pool).await.expect("count");
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn zero_turns_the_statement_timeout_off() {
    let test_db = TestDatabase::postgres("example").await;
    let config = DatabaseConfig { statement_timeout: Duration::ZERO, ..test_db.config().clone() };
    let Database::Postgres(pool) = Database::open(&config).expect("open") else {
        panic!("a postgres URL opens a postgres pool");
    };
    let shown: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&pool).await.expect("show");
    assert_eq!(shown, "0");
}

/// A one-connection pool with `ping_after_idle`, its connection's backend
/// pid, and that backend terminated by another session (waited for until it
/// is gone, so the pool's next statement meets a dead connection).
async fn pool_whose_connection_was_terminated(
    test_db: &TestDatabase,
    ping_after_idle: Duration,
) -> (sqlx::PgPool, i32) {
    let config = DatabaseConfig { max_connections: 1, ping_after_idle, ..test_db.config().clone() };
    let Database::Postgres(pool) = Database::open(&config).expect("open") else {
        panic!("a postgres URL opens a postgres pool");
    };
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.expect("pid");
    // Back in the pool (sqlx returns it, after a ping, in a task of its own)
    // before it is killed, so the kill is found by the next checkout.
    while pool.num_idle() < 1 {
        tokio::task::yield_now().await;
    }
    let Database::Postgres(admin) = Database::open(test_db.config()).expect("open") else {
        panic!("a postgres URL opens a postgres pool");
    };
    let terminated: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&admin).await.expect("terminate");
    assert!(terminated, "the pool's backend {pid} was signalled");
    loop {
        let alive: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(pid)
            .fetch_one(&admin)
            .await
            .expect("pg_stat_activity");
        if !alive {
            break;
        }
        tokio::task::yield_now().await;
    }
    admin.close().await;
    (pool, pid)
}

#[tokio::test]
async fn a_connection_idle_past_ping_after_idle_is_pinged_and_a_dead_one_replaced_unseen() {
    let test_db = TestDatabase::postgres("example").await;
    let (pool, dead) = pool_whose_connection_was_terminated(&test_db, Duration::ZERO).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("the ping found the dead connection and the pool opened another");
    assert_ne!(pid, dead);
}

#[tokio::test]
async fn a_connection_in_steady_use_is_handed_out_without_a_ping() {
    // Without the ping, the statement itself is the first to meet the dead
    // connection: that failure is the proof no round trip came before it.
    let test_db = TestDatabase::postgres("example").await;
    let (pool, dead) = pool_whose_connection_was_terminated(&test_db, Duration::from_secs(3600)).await;
    let error = sqlx::query("SELECT 1").execute(&pool).await.expect_err("no ping came first to find it dead");
    assert!(!matches!(error, sqlx::Error::PoolTimedOut), "the statement met the dead connection: {error}");
    assert_eq!(kit::db::classify(&error), kit::db::StoreFailure::Unavailable, "a caller is told to retry: {error}");
    // sqlx pings a connection as it comes back and discards it if dead.
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.expect("a new connection");
    assert_ne!(pid, dead);
}
