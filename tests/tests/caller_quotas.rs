//! Per-caller quotas at the gateway in front of the real services, inside
//! `commerce_mesh::start`: a caller over its quota gets 429 with `Retry-After`
//! and `google.rpc.RetryInfo` while another caller is served; on embedded
//! storage the quota is the process's, on Postgres + Redis it is kept in
//! Redis (the mesh's `redis_url`), where every gateway replica shares it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::{Component, MeshConfig};
use kit::shutdown::Shutdown;
use kit::throttle::Quota;
use mesh_tests::storage::Storage;
use serde_json::Value;

const GUARD: Duration = Duration::from_secs(30);

/// The most requests sent before a refusal is expected.
const MAX_TRIES: usize = 100;

async fn a_flooding_caller_is_refused_while_another_is_served(storage: Storage) {
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let _database = storage.configure(&mut config).await;
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let quotas = &mut config.gateway.http.caller_quotas;
    quotas.cluster.key_prefix = prefix.clone();
    quotas.by_scope.insert("identity:read".into(), Quota { rate_per_second: 1, burst: 3 });
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    mesh_tests::health::wait_serving(&mesh.grpc_url(Component::CustomerIdentity), GUARD).await.expect("ready");
    let token = |subject: &str| {
        commerce_mesh::dev_tokens::mint(&config, subject, commerce_mesh::dev_tokens::every_scope(), GUARD)
            .expect("a development token")
    };
    let (flooder, neighbour) = (token("flooder"), token("neighbour"));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/v1/customers/nobody", mesh.url(Component::Gateway));
    let get = |token: String| {
        let request = client.get(&url).bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (status, retry_after, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let mut refused = None;
    for sent in 0..MAX_TRIES {
        let (status, retry_after, body) = get(flooder.clone()).await;
        if status == 429 {
            refused = Some((sent, retry_after, body));
            break;
        }
        assert_eq!(status, 404, "admitted: the service answers (no such customer): {body}");
    }
    let (admitted, retry_after, body) = refused.expect("the flooder is refused");
    assert!(admitted >= 3, "the burst passes first: {admitted}");
    assert!(retry_after.is_some_and(|seconds| seconds.parse::<u64>().unwrap() >= 1), "{body}");
    assert_eq!(body["code"], 8, "{body}");
    assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo", "{body}");

    let (status, _, body) = get(neighbour).await;
    assert_eq!(status, 404, "another caller reaches the service: {body}");

    if let Some(redis_url) = &config.redis_url {
        // Kept in Redis, where every gateway replica would find it.
        let mut redis =
            redis::Client::open(redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let key = format!("{prefix}caller:identity:read/flooder");
        let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut redis).await.unwrap();
        assert!(exists, "{key} holds the flooder's quota");
    }
}

#[tokio::test]
async fn a_flooding_caller_is_refused_on_embedded_storage() {
    a_flooding_caller_is_refused_while_another_is_served(Storage::Embedded).await;
}

#[tokio::test]
async fn a_flooding_caller_is_refused_on_postgres_and_redis() {
    a_flooding_caller_is_refused_while_another_is_served(Storage::PostgresAndRedis).await;
}
