//! Per-caller rate limits: one caller cannot crowd out the rest.
//!
//! Each authenticated request is counted against its caller (the verified
//! token's subject) and the scope its route requires (`fulfillment:write`),
//! one bucket per pair, so a caller flooding writes still reads, and every
//! other caller is untouched. The quota of a bucket is the caller's own
//! (`by_subject`), else the scope's (`by_scope`), else `default`; none of them:
//! no limit. Quotas are kit's ([`kit::throttle`]): in this process, or
//! cluster-wide in Redis when the mesh has `redis_url`, shared by every
//! gateway replica (falling back to a replica's share while Redis does not
//! answer), exactly as CatalogIngest's source quotas.
//!
//! Not counted: requests refused before a caller is known (401), `/healthz`,
//! `/readyz`, `/openapi.json`, and the Stripe webhook, which carries no
//! token: it is signed, its one sender retries what is refused, and the
//! concurrency gate still bounds it.
//!
//! ```toml
//! [gateway.caller_quotas]
//! default = { rate_per_second = 50, burst = 100 }
//! [gateway.caller_quotas.by_scope]
//! "fulfillment:write" = { rate_per_second = 20, burst = 40 }
//! [gateway.caller_quotas.by_subject]
//! "order-system" = { rate_per_second = 200, burst = 400 }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use kit::throttle::{Quota, QuotaMetrics, Quotas, SharedQuotaConfig, ThrottleError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

/// The configured quotas of callers (`gateway.caller_quotas`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CallerQuotasConfig {
    /// Every caller's quota per scope unless a more specific one applies; unset: no limit.
    pub default: Option<Quota>,
    /// A caller's quota on routes that require this scope, by scope.
    pub by_scope: BTreeMap<String, Quota>,
    /// This caller's quota (per scope), by token subject; beats `by_scope` and `default`.
    pub by_subject: BTreeMap<String, Quota>,
    /// With the mesh's `redis_url`: how the quotas are shared by the
    /// gateway's replicas (while Redis does not answer each admits its quota
    /// divided by `cluster.expected_replicas`). A bucket's Redis key is
    /// `<cluster.key_prefix>caller:<scope>/<subject>`.
    pub cluster: SharedQuotaConfig,
}

impl CallerQuotasConfig {
    /// Whether any caller has a quota at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_scope.is_empty() && self.by_subject.is_empty()
    }

    /// The quota of `subject` on a route requiring `scopes`: the subject's
    /// own, else the scope's (the smallest, should a route require several
    /// scopes that each have one), else the default; `None`: not limited.
    pub fn quota_for(&self, subject: &str, scopes: &[String]) -> Option<Quota> {
        if let Some(quota) = self.by_subject.get(subject) {
            return Some(*quota);
        }
        let by_scope = scopes
            .iter()
            .filter_map(|scope| self.by_scope.get(scope))
            .min_by_key(|quota| (quota.rate_per_second, quota.burst));
        by_scope.or(self.default.as_ref()).copied()
    }
}

/// The scope label and key part of a route: its scopes joined by `+`
/// (every mesh route requires exactly one); `none` for a route open to any
/// authenticated caller.
pub fn scope_label(scopes: &[String]) -> String {
    if scopes.is_empty() { "none".to_string() } else { scopes.join("+") }
}

/// The `caller` label of a throttled subject not named in `by_subject`: per-user tokens would
/// otherwise make a series per user.
pub const OTHER_CALLERS: &str = "other";

/// Labels of a throttled request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottledLabels {
    /// The caller's verified token subject when `by_subject` names it, else [`OTHER_CALLERS`].
    pub caller: String,
    /// The route's scope ([`scope_label`]).
    pub scope: String,
}

/// Callers' quotas, kept where the deployment keeps quotas.
pub struct CallerLimits {
    config: CallerQuotasConfig,
    quotas: Quotas,
    throttled: Family<ThrottledLabels, Counter>,
}

/// A request over its caller's quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    /// How long until the caller's next request on this scope would be admitted.
    pub retry_after: Duration,
    /// The route's scope ([`scope_label`]).
    pub scope: String,
}

impl CallerLimits {
    /// The limits of `config`, cluster-wide in Redis at `redis_url` when
    /// given (connected lazily), else in this process; registers
    /// `gateway_caller_throttled_total{caller,scope}` (`caller`: the subject when
    /// `by_subject` names it, else [`OTHER_CALLERS`]) (and, with Redis, the
    /// `gateway_callers_quota_*` fallback metrics) in `metrics`.
    pub fn new(
        config: CallerQuotasConfig,
        redis_url: Option<&str>,
        metrics: &kit::metrics::Metrics,
    ) -> Result<Self, ThrottleError> {
        let quotas = match redis_url {
            Some(url) => {
                let quota_metrics = QuotaMetrics::default();
                quota_metrics.register("gateway_callers", metrics);
                Quotas::cluster(url, std::iter::empty(), config.cluster.clone(), quota_metrics)?
            }
            None => Quotas::in_process(std::iter::empty()),
        };
        let throttled = Family::default();
        metrics.register(
            "gateway_caller_throttled",
            "REST requests refused 429 because their caller was over its quota, by caller (the token subject \
             when by_subject names it, else other) and scope",
            throttled.clone(),
        );
        Ok(Self { config, quotas, throttled })
    }

    /// Admits one request of `subject` on a route requiring `scopes`, or
    /// says how long it must wait (and counts the refusal).
    pub async fn admit(&self, subject: &str, scopes: &[String]) -> Result<(), OverQuota> {
        let Some(quota) = self.config.quota_for(subject, scopes) else { return Ok(()) };
        let scope = scope_label(scopes);
        // Scopes never hold a `/`, so the first one ends the scope: keys of
        // different (scope, subject) pairs never meet, nor those of other quotas.
        let key = format!("caller:{scope}/{subject}");
        match self.quotas.check_with(&key, quota).await {
            Ok(()) => Ok(()),
            Err(retry_after) => {
                // Only configured subjects get a series of their own: the label stays bounded.
                let caller = if self.config.by_subject.contains_key(subject) { subject } else { OTHER_CALLERS };
                self.throttled
                    .get_or_create(&ThrottledLabels { caller: caller.to_string(), scope: scope.clone() })
                    .inc();
                Err(OverQuota { retry_after, scope })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn quota(rate_per_second: u32, burst: u32) -> Quota {
        Quota { rate_per_second, burst }
    }

    fn scopes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn config() -> CallerQuotasConfig {
        CallerQuotasConfig {
            default: Some(quota(50, 100)),
            by_scope: [("fulfillment:write".to_string(), quota(20, 40)), ("catalog:ingest".to_string(), quota(5, 5))]
                .into(),
            by_subject: [("order-system".to_string(), quota(200, 400))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_subjects_quota_beats_its_scopes_which_beats_the_default() {
        let config = config();
        let write = scopes(&["fulfillment:write"]);
        assert_eq!(config.quota_for("order-system", &write), Some(quota(200, 400)), "the subject's own");
        assert_eq!(config.quota_for("order-system", &scopes(&["fulfillment:read"])), Some(quota(200, 400)));
        assert_eq!(config.quota_for("support-tool", &write), Some(quota(20, 40)), "the scope's");
        assert_eq!(config.quota_for("support-tool", &scopes(&["fulfillment:read"])), Some(quota(50, 100)), "default");
        assert_eq!(config.quota_for("support-tool", &[]), Some(quota(50, 100)), "a route open to any caller");
    }

    #[test]
    fn a_route_requiring_several_scopes_takes_the_smallest_of_theirs() {
        let both = scopes(&["fulfillment:write", "catalog:ingest"]);
        assert_eq!(config().quota_for("support-tool", &both), Some(quota(5, 5)));
        assert_eq!(scope_label(&both), "fulfillment:write+catalog:ingest");
        assert_eq!(scope_label(&[]), "none");
    }

    #[test]
    fn without_a_default_only_named_scopes_and_subjects_are_limited() {
        let config = CallerQuotasConfig { default: None, ..config() };
        assert_eq!(config.quota_for("support-tool", &scopes(&["fulfillment:read"])), None);
        assert_eq!(config.quota_for("support-tool", &scopes(&["fulfillment:write"])), Some(quota(20, 40)));
        assert!(CallerQuotasConfig::default().is_empty(), "no quotas unless configured");
    }

    #[test]
    fn the_config_reads_as_documented() {
        let text = r#"
            default = { rate_per_second = 50, burst = 100 }
            [by_scope]
            "fulfillment:write" = { rate_per_second = 20, burst = 40 }
            [by_subject]
            "order-system" = { rate_per_second = 200, burst = 400 }
            [cluster]
            expected_replicas = 3
        "#;
        let parsed: CallerQuotasConfig = toml::from_str(text).unwrap();
        assert_eq!(parsed.quota_for("order-system", &[]), Some(quota(200, 400)));
        assert_eq!(parsed.by_scope["fulfillment:write"], quota(20, 40));
        assert_eq!(parsed.cluster.expected_replicas, 3);
        assert_eq!(
            parsed.cluster,
            SharedQuotaConfig { expected_replicas: 3, ..Default::default() },
            "the rest default"
        );
        assert!(toml::from_str::<CallerQuotasConfig>("by_subjects = {}").is_err(), "a misspelt key is refused");
    }

    #[tokio::test]
    async fn a_caller_over_its_quota_waits_while_others_and_its_other_scopes_pass() {
        let config = CallerQuotasConfig { default: Some(quota(1, 2)), ..Default::default() };
        let metrics = kit::metrics::Metrics::new();
        let limits = CallerLimits::new(config, None, &metrics).unwrap();
        let read = scopes(&["items:read"]);
        assert!(limits.admit("a", &read).await.is_ok());
        assert!(limits.admit("a", &read).await.is_ok());
        let over = limits.admit("a", &read).await.unwrap_err();
        assert_eq!(over.scope, "items:read");
        assert!(over.retry_after > Duration::ZERO && over.retry_after <= Duration::from_secs(1), "{over:?}");
        assert!(limits.admit("b", &read).await.is_ok(), "another caller has its own");
        assert!(limits.admit("a", &scopes(&["items:write"])).await.is_ok(), "and a's other scope its own");
        let counted =
            limits.throttled.get_or_create(&ThrottledLabels { caller: "other".into(), scope: "items:read".into() });
        assert_eq!(counted.get(), 1, "a subject not named in by_subject is counted as other");
    }

    #[tokio::test]
    async fn only_callers_named_in_by_subject_are_throttled_under_their_own_name() {
        let config = CallerQuotasConfig {
            default: Some(quota(1, 1)),
            by_subject: [("order-system".to_string(), quota(1, 1))].into(),
            ..Default::default()
        };
        let metrics = kit::metrics::Metrics::new();
        let limits = CallerLimits::new(config, None, &metrics).unwrap();
        let read = scopes(&["items:read"]);
        for subject in ["order-system", "user-1", "user-2"] {
            assert!(limits.admit(subject, &read).await.is_ok());
            assert!(limits.admit(subject, &read).await.is_err(), "{subject} is over its burst");
        }
        let count = |caller: &str| {
            limits.throttled.get_or_create(&ThrottledLabels { caller: caller.into(), scope: "items:read".into() }).get()
        };
        assert_eq!(count("order-system"), 1, "a named subject has its own series");
        assert_eq!(count("other"), 2, "the rest share one");
        assert_eq!(count("user-1"), 0, "no series per user");
    }
}
