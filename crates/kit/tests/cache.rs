//! The cache contract, run against every backend: in-process (moka) and Redis.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kit::cache::{CacheConfig, ReadThrough};

type Loaded = Result<Option<Vec<u8>>, std::convert::Infallible>;

fn config() -> CacheConfig {
    CacheConfig { namespace: format!("test-{}", uuid::Uuid::new_v4().simple()), ..CacheConfig::default() }
}

fn redis() -> ReadThrough {
    let url = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    ReadThrough::redis(&url, &config()).expect("a valid Redis URL")
}

fn memory() -> ReadThrough {
    ReadThrough::memory(&config())
}

async fn value(v: &str) -> Loaded {
    Ok(Some(v.as_bytes().to_vec()))
}

async fn a_hit_does_not_load(cache: ReadThrough) {
    let metrics = kit::metrics::Metrics::new();
    cache.register_metrics("test_cache", &metrics.for_component("test"));
    assert_eq!(cache.get("k", || value("one")).await.unwrap(), Some(b"one".to_vec()));
    let loads = AtomicUsize::new(0);
    let again = cache
        .get("k", || async {
            loads.fetch_add(1, Ordering::SeqCst);
            value("two").await
        })
        .await
        .unwrap();
    assert_eq!(again, Some(b"one".to_vec()));
    assert_eq!(loads.load(Ordering::SeqCst), 0);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.loads), (1, 1, 1));
    // The same counts on the admin port: what the dashboard's hit ratio reads.
    let text = metrics.encode();
    for line in ["test_cache_hits_total{component=\"test\"} 1\n", "test_cache_misses_total{component=\"test\"} 1\n"] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

async fn a_miss_is_cached_as_absent(cache: ReadThrough) {
    assert_eq!(cache.get("nobody", || async { Ok::<_, std::convert::Infallible>(None) }).await.unwrap(), None);
    assert_eq!(cache.get("nobody", || value("surprise")).await.unwrap(), None, "the miss is served from the cache");
    assert_eq!(cache.stats().hits, 1);
}

async fn invalidation_forces_a_load(cache: ReadThrough) {
    cache.get("k", || value("old")).await.unwrap();
    cache.invalidate(&["k".to_string()]).await.unwrap();
    assert_eq!(cache.get("k", || value("new")).await.unwrap(), Some(b"new".to_vec()));
    assert_eq!(cache.get("k", || value("newer")).await.unwrap(), Some(b"new".to_vec()));
}

/// What a reader of "k" gets when its load reads `read` and then, before
/// the load returns, a write commits and `invalidate` runs.
async fn read_overtaken_by<F, Fut>(
    cache: &Arc<ReadThrough>,
    read: Option<&'static str>,
    invalidate: F,
) -> Option<Vec<u8>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (read_done_tx, read_done_rx) = tokio::sync::oneshot::channel::<()>();
    let (write_done_tx, write_done_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get("k", || async move {
                    // The load has read the old row...
                    read_done_tx.send(()).unwrap();
                    // ...and the write commits and invalidates before the load returns.
                    write_done_rx.await.unwrap();
                    Ok::<_, std::convert::Infallible>(read.map(|text| text.as_bytes().to_vec()))
                })
                .await
                .unwrap()
        })
    };
    read_done_rx.await.unwrap();
    invalidate().await;
    write_done_tx.send(()).unwrap();
    reader.await.unwrap()
}

/// A load that read the old value before a write must not cache it after the
/// write's invalidation.
async fn a_load_overtaken_by_a_write_does_not_fill(cache: ReadThrough) {
    let cache = Arc::new(cache);
    let read = read_overtaken_by(&cache, Some("old"), || async { cache.invalidate(&["k".to_string()]).await.unwrap() });
    assert_eq!(read.await, Some(b"old".to_vec()), "the overtaken reader itself may see the old value");
    assert_eq!(
        cache.get("k", || value("new")).await.unwrap(),
        Some(b"new".to_vec()),
        "a read after the acknowledged write sees the new value"
    );
}

async fn concurrent_misses_share_one_load(cache: ReadThrough) {
    let cache = Arc::new(cache);
    let loads = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for _ in 0..16 {
        let (cache, loads, mut release) = (cache.clone(), loads.clone(), release_rx.clone());
        readers.push(tokio::spawn(async move {
            cache
                .get("hot", || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    release.wait_for(|go| *go).await.unwrap();
                    value("v").await
                })
                .await
                .unwrap()
        }));
    }
    // Every reader has missed once the first load started and the others wait on it.
    while cache.stats().misses < 16 {
        tokio::task::yield_now().await;
    }
    release_tx.send(true).unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(b"v".to_vec()));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for sixteen concurrent misses");
}

async fn get_many_mixes_hits_and_loads_in_order(cache: ReadThrough) {
    cache.get("a", || value("A")).await.unwrap();
    let keys = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let answers = cache
        .get_many(&keys, |missing| async move {
            assert_eq!(missing, vec!["b".to_string(), "c".to_string()]);
            Ok::<_, std::convert::Infallible>(vec![Some(b"B".to_vec()), None])
        })
        .await
        .unwrap();
    assert_eq!(answers, vec![Some(b"A".to_vec()), Some(b"B".to_vec()), None]);
    let cached = cache
        .get_many(&keys, |missing| async move {
            panic!("everything is cached now, asked for {missing:?}");
            #[allow(unreachable_code)]
            Ok::<_, std::convert::Infallible>(vec![])
        })
        .await
        .unwrap();
    assert_eq!(cached, answers);
}

/// Two caches over one backend, their namespaces `base` and `base-other`
/// (a prefix of each other's keys as text, so the boundary is checked).
fn sharing(backend: Arc<dyn kit::cache::CacheBackend>) -> (ReadThrough, ReadThrough) {
    let config = config();
    let other = CacheConfig { namespace: format!("{}-other", config.namespace), ..config.clone() };
    (ReadThrough::new(backend.clone(), &config), ReadThrough::new(backend, &other))
}

fn memory_pair() -> (ReadThrough, ReadThrough) {
    sharing(Arc::new(kit::cache::MemoryCache::new(&config())))
}

fn redis_pair() -> (ReadThrough, ReadThrough) {
    let url = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    sharing(Arc::new(kit::cache::RedisCache::connect(&url, &config()).expect("a valid Redis URL")))
}

async fn invalidating_all_empties_the_namespace_and_no_other((cache, other): (ReadThrough, ReadThrough)) {
    cache.get("found", || value("old")).await.unwrap();
    cache.get("missing", || async { Ok::<_, std::convert::Infallible>(None) }).await.unwrap();
    other.get("found", || value("kept")).await.unwrap();
    cache.invalidate_all().await.unwrap();
    assert_eq!(cache.get("found", || value("new")).await.unwrap(), Some(b"new".to_vec()));
    assert_eq!(cache.get("missing", || value("now here")).await.unwrap(), Some(b"now here".to_vec()));
    assert_eq!(other.get("found", || value("reloaded")).await.unwrap(), Some(b"kept".to_vec()), "another namespace");
}

/// A load that read before a first load and fills after the namespace was
/// emptied must not leave its (stale) miss behind.
async fn a_load_overtaken_by_invalidating_all_does_not_fill((cache, _): (ReadThrough, ReadThrough)) {
    let cache = Arc::new(cache);
    let read = read_overtaken_by(&cache, None, || async { cache.invalidate_all().await.unwrap() });
    assert_eq!(read.await, None, "the overtaken reader itself saw the table before the load");
    assert_eq!(cache.get("k", || value("loaded")).await.unwrap(), Some(b"loaded".to_vec()), "no stale miss cached");
}

macro_rules! contract {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn a_hit_does_not_load() {
                super::a_hit_does_not_load($make).await;
            }
            #[tokio::test]
            async fn a_miss_is_cached_as_absent() {
                super::a_miss_is_cached_as_absent($make).await;
            }
            #[tokio::test]
            async fn invalidation_forces_a_load() {
                super::invalidation_forces_a_load($make).await;
            }
            #[tokio::test]
            async fn a_load_overtaken_by_a_write_does_not_fill() {
                super::a_load_overtaken_by_a_write_does_not_fill($make).await;
            }
            #[tokio::test]
            async fn concurrent_misses_share_one_load() {
                super::concurrent_misses_share_one_load($make).await;
            }
            #[tokio::test]
            async fn get_many_mixes_hits_and_loads_in_order() {
                super::get_many_mixes_hits_and_loads_in_order($make).await;
            }
        }
    };
}

contract!(memory_backend, memory());
contract!(redis_backend, redis());

/// The checks that need two namespaces over one backend, for each backend.
macro_rules! sharing_contract {
    ($($check:ident),*) => {
        mod sharing {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(memory_pair()).await;
                    super::$check(redis_pair()).await;
                }
            )*
        }
    };
}

sharing_contract!(
    invalidating_all_empties_the_namespace_and_no_other,
    a_load_overtaken_by_invalidating_all_does_not_fill
);

#[tokio::test]
async fn reads_go_around_an_unreachable_redis() {
    // Nothing listens on port 1: every cache call errors, the loader answers.
    let cache = ReadThrough::redis("redis://127.0.0.1:1", &config()).expect("a valid URL");
    assert_eq!(cache.get("k", || value("db")).await.unwrap(), Some(b"db".to_vec()));
    assert_eq!(cache.get("k", || value("db again")).await.unwrap(), Some(b"db again".to_vec()), "nothing was cached");
    assert!(cache.stats().errors >= 2);
    assert!(cache.invalidate(&["k".to_string()]).await.is_err(), "a writer learns that invalidation failed");
}

#[tokio::test]
async fn invalidating_uncached_keys_leaves_nothing_in_redis() {
    let config = config();
    let cache = ReadThrough::redis("redis://127.0.0.1:6379", &config).expect("a valid URL");
    cache.get("read", || value("v")).await.unwrap();
    let keys: Vec<String> = (0..500).map(|i| format!("new-row-{i}")).chain(["read".to_string()]).collect();
    cache.invalidate(&keys).await.unwrap();
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let left: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:*", config.namespace)).query_async(&mut connection).await.unwrap();
    assert!(left.is_empty(), "a bulk write must not grow the cache: {left:?}");
}
