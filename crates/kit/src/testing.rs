//! Test support (feature `testing`): a fresh database for each test.
//!
//! Postgres tests use the server at `MESH_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`): each
//! [`TestDatabase`] creates a database of its own and drops it when dropped.
//! SQLite tests get a file in a temporary directory.

#![allow(clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::db::{Backend, DatabaseConfig};

/// The Postgres server tests use unless `MESH_TEST_POSTGRES_URL` names another.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL of the test Postgres server.
pub fn postgres_admin_url() -> String {
    std::env::var("MESH_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string())
}

/// A database that exists for one test.
pub struct TestDatabase {
    config: DatabaseConfig,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A new, empty Postgres database, dropped with this value.
    pub async fn postgres(schema: &str) -> Self {
        let admin_url = postgres_admin_url();
        let name = format!("mesh_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnectOptions::from_str(&admin_url)
            .expect("MESH_TEST_POSTGRES_URL parses")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("test Postgres at {admin_url} is reachable (run scripts/test): {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = PgConnectOptions::from_str(&admin_url)
            .expect("admin URL parses")
            .database(&name)
            .to_url_lossy()
            .to_string();
        Self { config: DatabaseConfig::postgres(url, schema), postgres_name: Some(name), _dir: None }
    }

    /// A new SQLite file in a temporary directory removed with this value.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = DatabaseConfig::sqlite_file(dir.path().join("test.db"));
        Self { config, postgres_name: None, _dir: Some(dir) }
    }

    /// A fresh database of the given backend.
    pub async fn new(backend: Backend, schema: &str) -> Self {
        match backend {
            Backend::Postgres => Self::postgres(schema).await,
            Backend::Sqlite => Self::sqlite(),
        }
    }

    /// How to connect to it.
    pub fn config(&self) -> &DatabaseConfig {
        &self.config
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else { return };
        // Drop runs outside any async context we can rely on: use a thread with
        // its own small runtime. FORCE ends connections a test left open.
        let admin_url = postgres_admin_url();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = PgConnectOptions::from_str(&admin_url).ok()?.connect().await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("note: a test database was left behind; scripts/test removes leftovers");
        }
    }
}
