//! A read-through cache in front of a system of record: one contract, two
//! backends — Redis in production ([`RedisCache`]), in-process moka embedded
//! ([`MemoryCache`]).
//!
//! [`ReadThrough`] guarantees, for every backend:
//! - a read after an acknowledged write never returns the old value: writers
//!   call [`ReadThrough::invalidate`] after their commit and before they
//!   answer; a load that began before the write cannot store its (old) result,
//!   because a reader that misses takes a short *lease* on the key and fills
//!   only if it still holds it, and invalidation removes the lease with the
//!   value (leases as in "Scaling Memcache at Facebook"). Invalidation stores
//!   nothing, so bulk writes leave no trace in the cache;
//! - misses are cached too, briefly (`negative_ttl`);
//! - concurrent misses on one key in one process make one load;
//! - the cache is never the system of record: when the backend fails, reads go
//!   to the loader, and invalidation failures are reported to the writer.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use kit::cache::{CacheConfig, ReadThrough};
//!
//! let cache = ReadThrough::memory(&CacheConfig::default());
//! let loaded = cache
//!     .get("user:42", || async { Ok::<_, std::io::Error>(Some(b"ada".to_vec())) })
//!     .await
//!     .unwrap();
//! assert_eq!(loaded.as_deref(), Some(&b"ada"[..]));
//! // Served from the cache now: the loader is not called.
//! let again = cache.get("user:42", || async { unreachable!() as Result<_, std::io::Error> }).await.unwrap();
//! assert_eq!(again, loaded);
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// Cache settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct CacheConfig {
    /// How long a found value stays cached.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a miss (no such record) stays cached.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// In-process backend only: most entries kept.
    pub capacity: u64,
    /// Prefix of every key, so several caches can share one Redis.
    pub namespace: String,
    /// How long a reader's lease on a missing key lasts: longer than a load takes.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
            capacity: 1_000_000,
            namespace: "mesh".into(),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// A cached answer: a value, or the knowledge that there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The record, encoded.
    Present(Vec<u8>),
    /// The system of record has no such record.
    Absent,
}

impl Entry {
    fn into_option(self) -> Option<Vec<u8>> {
        match self {
            Self::Present(bytes) => Some(bytes),
            Self::Absent => None,
        }
    }
}

/// What the backend answered for one key of a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Cached.
    Found(Entry),
    /// Not cached; this reader now holds the key's lease and may fill it.
    Leased,
    /// Not cached; another reader holds the lease: load, but do not fill.
    Busy,
}

/// Why the cache backend failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The in-process cache's lock was poisoned by a panic.
    #[error("in-process cache lock poisoned")]
    Poisoned,
}

/// Where cached entries live. Every backend passes the same contract suite.
#[async_trait::async_trait]
pub trait CacheBackend: Send + Sync + 'static {
    /// For each of `keys`, in order: its entry, or (when missing) a lease
    /// taken under `token` if no other reader holds one.
    async fn lookup(&self, keys: &[String], token: u64) -> Result<Vec<Lookup>, CacheError>;
    /// Stores `entry` for `ttl` only if `token` still holds the key's lease
    /// (no write invalidated it since); answers whether it stored.
    async fn fill(&self, key: &str, token: u64, entry: &Entry, ttl: Duration) -> Result<bool, CacheError>;
    /// Removes the entries and their leases, so no load that began before can fill.
    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError>;
    /// As [`CacheBackend::invalidate`] for every key that starts with `prefix`.
    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError>;
}

/// Hits and misses since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers from the cache (negative entries included).
    pub hits: u64,
    /// Answers that needed the loader.
    pub misses: u64,
    /// Loads actually run (less than misses when concurrent misses shared one).
    pub loads: u64,
    /// Backend errors tolerated by reading around the cache.
    pub errors: u64,
}

type Flight = Arc<OnceCell<Option<Vec<u8>>>>;

/// The read-through cache: [`ReadThrough::get`] for reads,
/// [`ReadThrough::invalidate`] after writes.
pub struct ReadThrough {
    backend: Arc<dyn CacheBackend>,
    namespace: String,
    ttl: Duration,
    negative_ttl: Duration,
    flights: Mutex<HashMap<String, Flight>>,
    // Prometheus counters rather than bare atomics, so `register_metrics` exports the same counts `stats` reads.
    hits: Counter,
    misses: Counter,
    loads: Counter,
    errors: Counter,
}

impl ReadThrough {
    /// A cache over `backend`.
    pub fn new(backend: Arc<dyn CacheBackend>, config: &CacheConfig) -> Self {
        Self {
            backend,
            namespace: config.namespace.clone(),
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            flights: Mutex::new(HashMap::new()),
            hits: Counter::default(),
            misses: Counter::default(),
            loads: Counter::default(),
            errors: Counter::default(),
        }
    }

    /// An in-process cache (moka).
    pub fn memory(config: &CacheConfig) -> Self {
        Self::new(Arc::new(MemoryCache::new(config)), config)
    }

    /// A cache in Redis at `url`; connects lazily and reconnects on its own,
    /// so a component starts (and reads around the cache) while Redis is down.
    /// Fails only on a malformed URL.
    pub fn redis(url: &str, config: &CacheConfig) -> Result<Self, CacheError> {
        Ok(Self::new(Arc::new(RedisCache::connect(url, config)?), config))
    }

    /// Counters since start.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            loads: self.loads.get(),
            errors: self.errors.get(),
        }
    }

    /// Registers the counters [`ReadThrough::stats`] reads as `<prefix>_hits_total`,
    /// `<prefix>_misses_total`, `<prefix>_loads_total` and `<prefix>_errors_total`
    /// (for example `customer_identity_cache`): the hit ratio is hits / (hits + misses).
    pub fn register_metrics(&self, prefix: &str, metrics: &crate::metrics::Metrics) {
        metrics.register(
            format!("{prefix}_hits"),
            "Reads answered from the cache (cached misses included)",
            self.hits.clone(),
        );
        metrics.register(format!("{prefix}_misses"), "Reads that needed the system of record", self.misses.clone());
        metrics.register(
            format!("{prefix}_loads"),
            "Loads from the system of record actually run (concurrent misses share one)",
            self.loads.clone(),
        );
        metrics.register(
            format!("{prefix}_errors"),
            "Cache backend errors read around (the system of record answered instead)",
            self.errors.clone(),
        );
    }

    fn namespaced(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    /// The value for `key`: from the cache, or from `load` (then cached).
    /// `load` answers `None` when the system of record has no such record.
    pub async fn get<F, Fut, E>(&self, key: &str, load: F) -> Result<Option<Vec<u8>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Vec<u8>>, E>>,
    {
        let key = self.namespaced(key);
        let token = new_token();
        let leased = match self.backend.lookup(std::slice::from_ref(&key), token).await {
            Ok(mut found) => match found.pop() {
                Some(Lookup::Found(entry)) => {
                    self.hits.inc();
                    return Ok(entry.into_option());
                }
                Some(Lookup::Leased) => true,
                Some(Lookup::Busy) | None => false,
            },
            Err(error) => {
                self.errors.inc();
                tracing::warn!(%error, "cache unavailable; reading the system of record");
                false
            }
        };
        self.misses.inc();
        self.load_once(key, leased.then_some(token), load).await
    }

    /// Several keys at once: cached entries from one backend round trip, the
    /// rest from `load_missing` (given the missing keys, answering a value or
    /// `None` for each, in order), then cached.
    pub async fn get_many<F, Fut, E>(&self, keys: &[String], load_missing: F) -> Result<Vec<Option<Vec<u8>>>, E>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<Vec<Option<Vec<u8>>>, E>>,
    {
        let namespaced: Vec<String> = keys.iter().map(|k| self.namespaced(k)).collect();
        let token = new_token();
        let found = match self.backend.lookup(&namespaced, token).await {
            Ok(found) => found,
            Err(error) => {
                self.errors.inc();
                tracing::warn!(%error, "cache unavailable; reading the system of record");
                Vec::new()
            }
        };
        let mut answers: Vec<Option<Option<Vec<u8>>>> = vec![None; keys.len()];
        let mut missing = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            match found.get(index) {
                Some(Lookup::Found(entry)) => {
                    self.hits.inc();
                    answers[index] = Some(entry.clone().into_option());
                }
                _ => missing.push((index, key.clone())),
            }
        }
        if !missing.is_empty() {
            self.misses.inc_by(missing.len() as u64);
            self.loads.inc();
            let loaded = load_missing(missing.iter().map(|(_, key)| key.clone()).collect()).await?;
            for ((index, _), value) in missing.into_iter().zip(loaded) {
                if found.get(index) == Some(&Lookup::Leased) {
                    self.fill(&namespaced[index], token, &value).await;
                }
                answers[index] = Some(value);
            }
        }
        Ok(answers.into_iter().map(Option::flatten).collect())
    }

    /// Removes `keys` (and stops loads in flight from caching them). Call it
    /// after the write commits and before answering the writer.
    pub async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        let namespaced: Vec<String> = keys.iter().map(|k| self.namespaced(k)).collect();
        self.backend.invalidate(&namespaced).await
    }

    /// Removes every entry of this cache's namespace (and its leases): after
    /// a write too large to name its keys, such as a first load.
    pub async fn invalidate_all(&self) -> Result<(), CacheError> {
        self.backend.invalidate_prefix(&self.namespaced("")).await
    }

    async fn load_once<F, Fut, E>(&self, key: String, lease: Option<u64>, load: F) -> Result<Option<Vec<u8>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Vec<u8>>, E>>,
    {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            flights.entry(key.clone()).or_default().clone()
        };
        let result = flight
            .get_or_try_init(|| async {
                self.loads.inc();
                let value = load().await?;
                if let Some(token) = lease {
                    self.fill(&key, token, &value).await;
                }
                Ok(value)
            })
            .await
            .cloned();
        let mut flights = self.flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if flights.get(&key).is_some_and(|current| Arc::ptr_eq(current, &flight)) {
            flights.remove(&key);
        }
        result
    }

    async fn fill(&self, key: &str, token: u64, value: &Option<Vec<u8>>) {
        let (entry, ttl) = match value {
            Some(bytes) => (Entry::Present(bytes.clone()), self.ttl),
            None => (Entry::Absent, self.negative_ttl),
        };
        if let Err(error) = self.backend.fill(key, token, &entry, ttl).await {
            self.errors.inc();
            tracing::warn!(%error, "cache fill failed");
        }
    }
}

/// A lease token no other reader, in this process or another, holds.
fn new_token() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// Lookups, fills and invalidations of one key serialise on one of these.
const SHARDS: usize = 64;

/// The in-process backend (moka), for embedded mode.
pub struct MemoryCache {
    entries: moka::sync::Cache<String, (Entry, Duration)>,
    leases: moka::sync::Cache<String, u64>,
    shards: Vec<Mutex<()>>,
}

struct PerEntryTtl;

impl moka::Expiry<String, (Entry, Duration)> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &(Entry, Duration),
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

impl MemoryCache {
    /// An empty cache holding at most `config.capacity` entries.
    pub fn new(config: &CacheConfig) -> Self {
        Self {
            entries: moka::sync::Cache::builder().max_capacity(config.capacity).expire_after(PerEntryTtl).build(),
            leases: moka::sync::Cache::builder().time_to_live(config.lease_ttl).build(),
            shards: (0..SHARDS).map(|_| Mutex::new(())).collect(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<()> {
        use std::hash::{BuildHasher, RandomState};
        static HASHER: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
        let hash = HASHER.get_or_init(RandomState::new).hash_one(key);
        &self.shards[(hash as usize) % SHARDS]
    }
}

#[async_trait::async_trait]
impl CacheBackend for MemoryCache {
    async fn lookup(&self, keys: &[String], token: u64) -> Result<Vec<Lookup>, CacheError> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some((entry, _)) = self.entries.get(key) {
                found.push(Lookup::Found(entry));
                continue;
            }
            let _guard = self.shard(key).lock().map_err(|_| CacheError::Poisoned)?;
            found.push(match self.entries.get(key) {
                Some((entry, _)) => Lookup::Found(entry),
                None if self.leases.contains_key(key) => Lookup::Busy,
                None => {
                    self.leases.insert(key.clone(), token);
                    Lookup::Leased
                }
            });
        }
        Ok(found)
    }

    async fn fill(&self, key: &str, token: u64, entry: &Entry, ttl: Duration) -> Result<bool, CacheError> {
        let _guard = self.shard(key).lock().map_err(|_| CacheError::Poisoned)?;
        if self.leases.get(key) != Some(token) {
            return Ok(false);
        }
        self.entries.insert(key.to_string(), (entry.clone(), ttl));
        self.leases.invalidate(key);
        Ok(true)
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        for key in keys {
            let _guard = self.shard(key).lock().map_err(|_| CacheError::Poisoned)?;
            self.entries.invalidate(key);
            self.leases.invalidate(key);
        }
        Ok(())
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        // Leases first: a reader whose lease was taken before the change and
        // who fills between the two walks is caught by the second.
        let mut keys: Vec<String> = self.leases.iter().map(|(key, _)| key.as_ref().clone()).collect();
        keys.extend(self.entries.iter().map(|(key, _)| key.as_ref().clone()));
        keys.retain(|key| key.starts_with(prefix));
        self.invalidate(&keys).await
    }
}

/// For each value/lease key pair: the value, or a lease taken with NX.
/// KEYS: value, lease, value, lease, ... ARGV: token, lease ttl in ms.
const LOOKUP_SCRIPT: &str = r"
local found = {}
for i = 1, #KEYS, 2 do
  local value = redis.call('GET', KEYS[i])
  if value then
    found[#found + 1] = value
  elseif redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    found[#found + 1] = 'L'
  else
    found[#found + 1] = 'B'
  end
end
return found
";

/// Fills only while the token holds the lease. KEYS: value, lease.
/// ARGV: token, encoded entry, ttl in ms.
const FILL_SCRIPT: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
";

/// The Redis backend, for production. Keys: `<key>:v` (entry) and `<key>:l`
/// (a reader's lease while it loads).
pub struct RedisCache {
    connection: redis::aio::ConnectionManager,
    lease_ttl: Duration,
    lookup: redis::Script,
    fill: redis::Script,
}

impl RedisCache {
    /// A lazily connecting client of `url` (`redis://host:6379/0`). Calls fail
    /// fast (1 s) while Redis is unreachable, so reads fall back quickly.
    pub fn connect(url: &str, config: &CacheConfig) -> Result<Self, CacheError> {
        let client = crate::redis_tcp::client(url)?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self {
            connection,
            lease_ttl: config.lease_ttl,
            lookup: redis::Script::new(LOOKUP_SCRIPT),
            fill: redis::Script::new(FILL_SCRIPT),
        })
    }
}

/// `text` matched literally by a Redis glob pattern.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn encode(entry: &Entry) -> Vec<u8> {
    match entry {
        Entry::Present(bytes) => {
            let mut encoded = Vec::with_capacity(bytes.len() + 1);
            encoded.push(b'+');
            encoded.extend_from_slice(bytes);
            encoded
        }
        Entry::Absent => vec![b'-'],
    }
}

fn decode(raw: &[u8]) -> Lookup {
    match raw.split_first() {
        Some((b'+', rest)) => Lookup::Found(Entry::Present(rest.to_vec())),
        Some((b'-', _)) => Lookup::Found(Entry::Absent),
        Some((b'L', _)) => Lookup::Leased,
        // Another reader's lease, or something not ours: load without filling.
        _ => Lookup::Busy,
    }
}

#[async_trait::async_trait]
impl CacheBackend for RedisCache {
    async fn lookup(&self, keys: &[String], token: u64) -> Result<Vec<Lookup>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.lookup.prepare_invoke();
        for key in keys {
            invocation.key(format!("{key}:v")).key(format!("{key}:l"));
        }
        invocation.arg(token.to_string()).arg(self.lease_ttl.as_millis().max(1) as u64);
        let mut connection = self.connection.clone();
        let raw: Vec<Vec<u8>> = invocation.invoke_async(&mut connection).await?;
        Ok(raw.iter().map(|value| decode(value)).collect())
    }

    async fn fill(&self, key: &str, token: u64, entry: &Entry, ttl: Duration) -> Result<bool, CacheError> {
        let mut connection = self.connection.clone();
        let stored: i64 = self
            .fill
            .key(format!("{key}:v"))
            .key(format!("{key}:l"))
            .arg(token.to_string())
            .arg(encode(entry))
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut connection)
            .await?;
        Ok(stored == 1)
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = keys.iter().flat_map(|k| [format!("{k}:v"), format!("{k}:l")]).collect();
        let mut connection = self.connection.clone();
        let _: i64 = redis::cmd("DEL").arg(&names).query_async(&mut connection).await?;
        Ok(())
    }

    async fn invalidate_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        // SCAN walks the keyspace in steps without blocking Redis, but finds
        // for certain only the keys that exist for the whole walk. So two
        // walks: the first deletes every lease a reader took before the
        // change (a reader that already filled wrote its value during the
        // walk), the second every value, those included; after the first, no
        // reader that read before the change holds a lease to fill with.
        let pattern = format!("{}*", glob_escaped(prefix));
        let mut connection = self.connection.clone();
        for _walk in 0..2 {
            let mut cursor: u64 = 0;
            loop {
                let (next, names): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut connection)
                    .await?;
                if !names.is_empty() {
                    let _: i64 = redis::cmd("DEL").arg(&names).query_async(&mut connection).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }
}
