//! The log's tables, created on first use, and the upgrades of a file an older release wrote.

use sqlx::sqlite::SqlitePool;

/// The log's own schema, created on first use; the log is not a service database, so no migrations
/// (`PRAGMA user_version` says which of [`UPGRADES`] a file has had).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    published_at INTEGER NOT NULL,
    UNIQUE (stream, event_id)
);
CREATE INDEX IF NOT EXISTS entries_by_stream ON entries (stream, seq);
CREATE TABLE IF NOT EXISTS consumer_groups (
    stream             TEXT    NOT NULL,
    grp                TEXT    NOT NULL,
    last_delivered_seq INTEGER NOT NULL,
    PRIMARY KEY (stream, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    stream         TEXT    NOT NULL,
    grp            TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    consumer       TEXT    NOT NULL,
    delivered_at   INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    PRIMARY KEY (stream, grp, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT    NOT NULL,
    original_id TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    reason      TEXT    NOT NULL,
    dead_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_stream ON dead_letters (stream, seq);
CREATE INDEX IF NOT EXISTS dead_letters_by_age ON dead_letters (stream, dead_at);
CREATE TABLE IF NOT EXISTS published (
    stream       TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (stream, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS published_by_age ON published (stream, published_at);
";

/// What a log file written by an older release needs, in order; the n-th runs once, when
/// `user_version` is below n. 1: ids published before `published` existed were kept by
/// `entries` alone, which trimming now empties. 2: dead letters say which group gave up,
/// after how many deliveries, and when the entry was published (older ones: NULL, unknown);
/// discarded dead letters are kept for the audit.
const UPGRADES: &[&str] = &[
    "INSERT OR IGNORE INTO published (stream, event_id, published_at) SELECT stream, event_id, published_at FROM entries",
    "ALTER TABLE dead_letters ADD COLUMN grp TEXT;
     ALTER TABLE dead_letters ADD COLUMN delivery_count INTEGER;
     ALTER TABLE dead_letters ADD COLUMN first_seen INTEGER;
     CREATE TABLE IF NOT EXISTS discarded_dead_letters (
         seq             INTEGER PRIMARY KEY AUTOINCREMENT,
         stream          TEXT    NOT NULL,
         dead_letter_seq INTEGER NOT NULL,
         original_id     TEXT    NOT NULL,
         event_id        TEXT    NOT NULL,
         payload         BLOB    NOT NULL,
         reason          TEXT    NOT NULL,
         grp             TEXT,
         delivery_count  INTEGER,
         first_seen      INTEGER,
         dead_at         INTEGER NOT NULL,
         discarded_by    TEXT    NOT NULL,
         discard_reason  TEXT    NOT NULL,
         discarded_at    INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS discarded_dead_letters_by_stream ON discarded_dead_letters (stream, seq);",
];

/// Creates the tables, then upgrades a file an older release wrote. Another
/// process may do the same at once: the upgrade checks the version under the write lock.
pub(super) async fn create(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx).await?;
    let done = usize::try_from(version).unwrap_or(0);
    if done < UPGRADES.len() {
        for upgrade in &UPGRADES[done..] {
            sqlx::raw_sql(*upgrade).execute(&mut *tx).await?;
        }
        // PRAGMA takes no bind parameters; the number is ours.
        let set = format!("PRAGMA user_version = {}", UPGRADES.len());
        sqlx::raw_sql(sqlx::AssertSqlSafe(set)).execute(&mut *tx).await?;
    }
    tx.commit().await
}
