//! Where a mesh test keeps its data, so one test runs against both: embedded
//! (SQLite files and the embedded log in the data directory) or Postgres +
//! Redis.

use commerce_mesh::MeshConfig;
use kit::testing::TestDatabase;

/// The storage a mesh runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// SQLite and the embedded log, under the data directory.
    Embedded,
    /// A fresh Postgres database, and Redis (`MESH_TEST_REDIS_URL`, else the
    /// local server), logical database 9: Fulfillment publishes to fixed
    /// stream names, kept apart from other tests' Redis keys.
    PostgresAndRedis,
}

impl Storage {
    /// Points `config` at this storage. The Postgres database is dropped with
    /// the value returned: hold it as long as the mesh runs.
    pub async fn configure(self, config: &mut MeshConfig) -> Option<TestDatabase> {
        match self {
            Storage::Embedded => None,
            Storage::PostgresAndRedis => {
                let database = TestDatabase::postgres("unused").await;
                config.database_url = Some(database.config().url.clone());
                let redis = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
                config.redis_url = Some(format!("{}/9", redis.trim_end_matches('/')));
                Some(database)
            }
        }
    }
}
