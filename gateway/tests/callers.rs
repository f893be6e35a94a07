//! Per-caller rate limits through HTTP: a caller over its quota gets 429 with
//! `Retry-After` and `google.rpc.RetryInfo` while others are served; in one
//! process without Redis, and shared by two gateways through the real Redis.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use gateway::callers::CallerQuotasConfig;
use kit::throttle::{Quota, SharedQuotaConfig};
use support::{Reply, Running, start_with, token_for};

/// The most requests a test sends before it expects a refusal.
const MAX_TRIES: usize = 200;

fn redis_url() -> String {
    std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Quotas of `default` for every caller, under Redis keys of this test's own.
fn quotas(default: Quota) -> CallerQuotasConfig {
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    CallerQuotasConfig {
        default: Some(default),
        cluster: SharedQuotaConfig {
            key_prefix: prefix,
            redis_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `GET /v1/items/a` as `subject` (scope `items:read`).
async fn read_as(gateway: &Running, subject: &str) -> Reply {
    let request = gateway.client.get(gateway.url("/v1/items/a")).bearer_auth(token_for(subject, &["items:read"]));
    Reply::send(request).await
}

/// Sends `subject`'s reads, alternating over `gateways`, until one is refused:
/// how many were admitted before, and the refusal.
async fn admitted_until_refused(gateways: &[&Running], subject: &str) -> (usize, Reply) {
    for sent in 0..MAX_TRIES {
        let reply = read_as(gateways[sent % gateways.len()], subject).await;
        if reply.status != 200 {
            return (sent, reply);
        }
    }
    panic!("{subject} was never refused in {MAX_TRIES} requests");
}

/// A 429 as the gateway renders a throttled caller.
fn assert_throttled(reply: &Reply) {
    assert_eq!(reply.status, 429, "{reply:?}");
    let retry_after: u64 = reply.header("retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "whole seconds, at least 1: {reply:?}");
    assert_eq!(reply.json["code"], 8, "RESOURCE_EXHAUSTED: {reply:?}");
    let detail = &reply.json["details"][0];
    assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.RetryInfo", "{reply:?}");
    assert!(detail["retry_delay"].as_str().unwrap().ends_with('s'), "{reply:?}");
    assert!(reply.json["message"].as_str().unwrap().contains("items:read"), "names the scope: {reply:?}");
}

#[tokio::test]
async fn a_caller_over_its_quota_gets_429_with_retry_info_while_another_is_served() {
    // 1 a second: the burst is what decides within the test.
    let burst = 5;
    let gateway = start_with(|config| config.caller_quotas = quotas(Quota { rate_per_second: 1, burst })).await;
    let (admitted, refused) = admitted_until_refused(&[&gateway], "caller-a").await;
    assert!(admitted >= burst as usize, "the burst passes first: {admitted}");
    assert_throttled(&refused);
    let reached = gateway.calls.count();
    assert_eq!(reached, admitted, "the refused request never reached the service");

    let other = read_as(&gateway, "caller-b").await;
    assert_eq!(other.status, 200, "another caller is served: {other:?}");
    assert_eq!(gateway.calls.last().metadata["x-authenticated-subject"], "caller-b");
    // The same caller on another scope has a bucket of its own.
    let write = gateway
        .client
        .delete(gateway.url("/v1/items/a"))
        .bearer_auth(token_for("caller-a", &["items:read", "items:write"]));
    assert_eq!(Reply::send(write).await.status, 200);

    let lines = throttled_lines(&gateway).await;
    // caller-a is not named in by_subject: counted as "other", so per-user tokens make no series each.
    assert_eq!(lines.len(), 1, "one series, b was never throttled: {lines:?}");
    assert!(lines[0].contains("caller=\"other\"") && lines[0].contains("scope=\"items:read\""), "{lines:?}");
    assert!(lines[0].ends_with(" 1"), "{lines:?}");
}

/// The `gateway_caller_throttled_total` samples on the gateway's metrics.
async fn throttled_lines(gateway: &Running) -> Vec<String> {
    let metrics = Reply::send(gateway.client.get(format!("{}/metrics", gateway.admin))).await;
    metrics.text.lines().filter(|line| line.starts_with("gateway_caller_throttled_total{")).map(String::from).collect()
}

#[tokio::test]
async fn a_subjects_own_quota_beats_the_default() {
    let mut config = quotas(Quota { rate_per_second: 1, burst: 2 });
    config.by_subject.insert("order-system".into(), Quota { rate_per_second: 1, burst: 20 });
    let gateway = start_with(|c| c.caller_quotas = config).await;
    let (small, _) = admitted_until_refused(&[&gateway], "support-tool").await;
    let (large, refused) = admitted_until_refused(&[&gateway], "order-system").await;
    assert!(small < 20 && large >= 20, "default {small}, own {large}");
    assert_throttled(&refused);
    let lines = throttled_lines(&gateway).await;
    assert!(lines.iter().any(|l| l.contains("caller=\"order-system\"") && l.ends_with(" 1")), "named: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("caller=\"other\"") && l.ends_with(" 1")), "the rest: {lines:?}");
    assert!(!lines.iter().any(|l| l.contains("support-tool")), "no series of an unnamed subject: {lines:?}");
}

#[tokio::test]
async fn without_quotas_no_caller_is_limited() {
    let gateway = start_with(|_| {}).await;
    for _ in 0..30 {
        assert_eq!(read_as(&gateway, "caller-a").await.status, 200);
    }
}

/// Two gateways, each with the same quota; a caller's requests alternate
/// between them. Sharing one quota, the first refusal comes after about one
/// burst; each with its own, after about two.
async fn admitted_across_two_gateways(redis: Option<String>) -> usize {
    let burst = 20;
    let quotas = quotas(Quota { rate_per_second: 1, burst });
    let adjust = |config: &mut gateway::Config| {
        config.caller_quotas = quotas.clone();
        config.redis_url = redis.clone();
    };
    let first = start_with(adjust).await;
    let second = start_with(adjust).await;
    let (admitted, refused) = admitted_until_refused(&[&first, &second], "caller-a").await;
    assert_throttled(&refused);
    assert!(admitted >= burst as usize, "at least the burst passes: {admitted}");
    assert_eq!(read_as(&first, "caller-b").await.status, 200, "another caller is served");
    assert_eq!(read_as(&second, "caller-b").await.status, 200, "on both");
    admitted
}

#[tokio::test]
async fn with_redis_two_gateways_share_one_quota_per_caller() {
    let admitted = admitted_across_two_gateways(Some(redis_url())).await;
    // Separate quotas would admit 40 before the first refusal.
    assert!(admitted < 30, "one shared quota of 20 (+1 a second): {admitted}");
}

#[tokio::test]
async fn without_redis_each_gateway_keeps_its_own_quota() {
    let admitted = admitted_across_two_gateways(None).await;
    assert!(admitted >= 40, "each process admits its own burst of 20: {admitted}");
}
