//! Dashboards and alerts as code (`k8s/monitoring`): the kustomization renders
//! (Debian's kubectl, kustomize 2.0.3) a ConfigMap Grafana's sidecar loads and
//! the PrometheusRule; promtool accepts the rule groups; docs/OPERATIONS.md
//! lists exactly the rules' alerts, with their severity, expression and
//! runbook; and every metric a rule or a dashboard panel names is one the mesh
//! exports, read off the admin ports of every component started with `serve`
//! on Postgres and Redis, as in a cluster (names declared by `# TYPE` lines
//! count, so a metric counts before its first sample). A metric renamed in
//! the code and not in the dashboard or the rules fails that last test;
//! `the_name_check_flags_a_renamed_metric` shows the check catches it.
//!
//! `scripts/test` provides the tools: `MESH_PROMTOOL` (Debian's promtool, from
//! `scripts/prometheus-tools`) and `MESH_KUBECTL` (from `scripts/k8s-tools`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use commerce_mesh::Component;
use serde_json::Value;

/// The metrics of kube-state-metrics the `commerce-mesh.kubernetes` group
/// reads: the only names a rule may use that the mesh does not export.
const KUBE_STATE_METRICS: [&str; 2] = ["kube_deployment_status_replicas_available", "kube_job_status_failed"];
/// The rule group whose expressions read kube-state-metrics.
const KUBERNETES_GROUP: &str = "commerce-mesh.kubernetes";
/// Redis's logical database for this test's streams, apart from other tests'
/// (`tests/src/storage.rs` takes 9, retirement 11, the load harnesses 14 and 15).
const REDIS_DB: u32 = 12;
const DEVELOPMENT_SECRET: &str = "monitoring-test-development-secret-32b";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository")
}

fn monitoring_dir() -> PathBuf {
    repository().join("k8s/monitoring")
}

fn tool(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| default.into())
}

/// The PrometheusRule, as written.
fn prometheus_rule() -> Value {
    let text = std::fs::read_to_string(monitoring_dir().join("prometheus-rules.yaml")).expect("the rules file");
    serde_saphyr::from_str(&text).expect("the rules file is YAML")
}

/// The dashboard, as written.
fn dashboard() -> Value {
    let text = std::fs::read_to_string(monitoring_dir().join("commerce-mesh-dashboard.json")).expect("the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every rule of the PrometheusRule: (group, rule).
fn rules(rule: &Value) -> Vec<(String, Value)> {
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    groups
        .iter()
        .flat_map(|group| {
            let name = group["name"].as_str().expect("a group's name").to_string();
            group["rules"].as_array().expect("a group's rules").iter().map(move |rule| (name.clone(), rule.clone()))
        })
        .collect()
}

#[test]
fn the_monitoring_kustomization_renders_a_labelled_dashboard_and_the_rules() {
    let kubectl = tool("MESH_KUBECTL", "kubectl");
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(monitoring_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {kubectl:?} (scripts/test sets MESH_KUBECTL): {e}"));
    assert!(output.status.success(), "k8s/monitoring does not render: {}", String::from_utf8_lossy(&output.stderr));
    let objects: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(output.stdout).expect("UTF-8")).expect("rendered YAML");
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|object| object["kind"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["ConfigMap", "PrometheusRule"]), "{objects:?}");

    let config_map = objects.iter().find(|object| object["kind"] == "ConfigMap").expect("the ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1", "Grafana's sidecar finds it by this label");
    assert_eq!(config_map["metadata"]["name"], "commerce-mesh-dashboard", "a fixed name: no stale copies beside it");
    let embedded: Value =
        serde_json::from_str(config_map["data"]["commerce-mesh-dashboard.json"].as_str().expect("the dashboard file"))
            .expect("the embedded dashboard is JSON");
    assert_eq!(embedded, dashboard());
    assert_eq!(embedded["uid"], "commerce-mesh", "a stable uid: links to it survive a reload");

    let rule = objects.iter().find(|object| object["kind"] == "PrometheusRule").expect("the PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["spec"], prometheus_rule()["spec"]);
}

#[test]
fn promtool_accepts_the_alert_rules() {
    // promtool reads a rules file: the PrometheusRule's spec is one (JSON is YAML).
    let file = tempfile::Builder::new().suffix(".json").tempfile().expect("tempfile");
    std::fs::write(file.path(), serde_json::to_vec_pretty(&prometheus_rule()["spec"]).unwrap()).expect("write");
    let promtool = tool("MESH_PROMTOOL", "promtool");
    let output = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| panic!("run {promtool:?} (scripts/test sets MESH_PROMTOOL): {e}"));
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool check rules: {said}");
    let count = rules(&prometheus_rule()).len();
    assert!(said.contains(&format!("SUCCESS: {count} rules found")), "{said}");
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_runbook_in_operations_md() {
    let operations = std::fs::read_to_string(repository().join("docs/OPERATIONS.md")).expect("OPERATIONS.md");
    let anchors = docs::anchors(&operations);
    let mut names = BTreeSet::new();
    for (group, rule) in rules(&prometheus_rule()) {
        let name = rule["alert"].as_str().unwrap_or_else(|| panic!("{group}: only alerting rules: {rule:?}"));
        assert!(names.insert(name.to_string()), "{name} twice");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning"].contains(&severity), "{name}: severity {severity:?}");
        for annotation in ["summary", "description"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name}: a {annotation}");
        }
        let runbook = rule["annotations"]["runbook_url"].as_str().unwrap_or_default();
        let anchor = runbook
            .strip_prefix("docs/OPERATIONS.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {runbook:?} points into docs/OPERATIONS.md"));
        assert!(anchors.contains(anchor), "{name}: no section #{anchor} in OPERATIONS.md: {anchors:?}");
    }
}

/// The table "Alerts worth setting" and the PrometheusRule say the same:
/// each alert once, with its severity, its expression and its runbook.
#[test]
fn operations_md_lists_exactly_the_alerts_of_the_rules() {
    let operations = std::fs::read_to_string(repository().join("docs/OPERATIONS.md")).expect("OPERATIONS.md");
    let listed = docs::alert_table(&operations);
    let rules: BTreeMap<String, Value> = rules(&prometheus_rule())
        .into_iter()
        .map(|(_, rule)| (rule["alert"].as_str().expect("alert").to_string(), rule))
        .collect();
    let listed_names: BTreeSet<&String> = listed.keys().collect();
    let rule_names: BTreeSet<&String> = rules.keys().collect();
    assert_eq!(listed_names, rule_names, "OPERATIONS.md's alerts and k8s/monitoring/prometheus-rules.yaml's");
    for (name, row) in &listed {
        let rule = &rules[name];
        assert_eq!(row.severity, rule["labels"]["severity"].as_str().unwrap(), "{name}'s severity");
        assert_eq!(
            docs::squeeze(&row.expression),
            docs::squeeze(rule["expr"].as_str().unwrap()),
            "{name}'s expression"
        );
        let runbook = rule["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = runbook.trim_start_matches("docs/OPERATIONS.md");
        assert!(row.why.contains(&format!("]({anchor})")), "{name}: the table links its runbook {anchor}: {}", row.why);
    }
}

/// Every PromQL expression the dashboard holds: its panels' queries and its
/// variables' (`label_values(<selector>, <label>)`: only the selector names metrics).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, queries: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("untitled").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push((format!("panel {title:?}"), target["expr"].as_str().expect("a target's expr").into()));
            }
            panels(&panel["panels"], queries);
        }
    }
    let mut queries = Vec::new();
    panels(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"].as_str().or_else(|| variable["query"]["query"].as_str()).expect("its query");
        let name = variable["name"].as_str().unwrap_or_default();
        queries.push((format!("variable {name:?}"), promql::variable_selector(query).to_string()));
    }
    queries
}

#[test]
fn the_dashboard_has_a_panel_for_each_thing_an_operator_watches() {
    let queries = dashboard_queries(&dashboard());
    let named: BTreeSet<String> = queries
        .iter()
        .filter(|(place, _)| place.starts_with("panel"))
        .flat_map(|(_, query)| promql::metric_names(query).expect("parses"))
        .collect();
    for metric in [
        "rpc_server_requests_total",
        "rpc_server_duration_seconds_bucket",
        "gateway_http_requests_total",
        "gateway_http_request_duration_seconds_bucket",
        "fulfillment_jobs",
        "fulfillment_oldest_pending_age_seconds",
        "fulfillment_webhook_deliveries_total",
        "purchase_history_consumer_pending",
        "bus_stream_entries",
        "bus_dead_letter_stream_entries",
        "customer_identity_cache_hits_total",
        "customer_identity_cache_misses_total",
        "catalog_ingest_source_throttled_total",
        "gateway_caller_throttled_total",
    ] {
        assert!(named.contains(metric), "a panel reads {metric}: {named:?}");
    }
    let ids: Vec<u64> = dashboard()["panels"].as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), ids.iter().collect::<BTreeSet<_>>().len(), "panel ids are unique: {ids:?}");
}

/// Where each metric name a rule or panel uses is not one `exported` has:
/// `(place, name)`. Rules of the kubernetes group may read kube-state-metrics.
fn unknown_names(
    rule: &Value,
    dashboard: &Value,
    exported: &BTreeSet<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut queries: Vec<(String, String, bool)> = rules(rule)
        .into_iter()
        .map(|(group, rule)| {
            let place = format!("alert {}", rule["alert"].as_str().unwrap_or("?"));
            (place, rule["expr"].as_str().unwrap_or_default().to_string(), group == KUBERNETES_GROUP)
        })
        .collect();
    queries.extend(dashboard_queries(dashboard).into_iter().map(|(place, query)| (place, query, false)));
    let mut unknown = Vec::new();
    for (place, query, kubernetes) in queries {
        let names = promql::metric_names(&query).map_err(|e| format!("{place}: {query}: {e}"))?;
        if names.is_empty() {
            return Err(format!("{place} names no metric: {query}"));
        }
        for name in names {
            let known = match kubernetes {
                true => KUBE_STATE_METRICS.contains(&name.as_str()),
                false => exported.contains(&name),
            };
            if !known {
                unknown.push((place.clone(), name));
            }
        }
    }
    Ok(unknown)
}

#[test]
fn the_name_check_flags_a_renamed_metric() {
    // The names a scrape of Fulfillment's admin port declares, before any sample.
    let exposition = "# HELP fulfillment_oldest_pending_age_seconds Seconds waited.\n\
                      # TYPE fulfillment_oldest_pending_age_seconds gauge\n\
                      # HELP fulfillment_attempts LMS attempts.\n\
                      # TYPE fulfillment_attempts counter\n\
                      # HELP fulfillment_lms_duration_seconds LMS latency.\n\
                      # TYPE fulfillment_lms_duration_seconds histogram\n\
                      # EOF\n";
    let exported = exposition::names(exposition);
    let rule: Value = serde_json::json!({"spec": {"groups": [{"name": "g", "rules": [
        {"alert": "Waiting", "expr": "max(fulfillment_oldest_pending_age_seconds) > 900"},
        {"alert": "Slow", "expr": "histogram_quantile(0.99, sum by (le) (rate(fulfillment_lms_duration_seconds_bucket[5m]))) > 1"},
    ]}]}});
    let panel = |expr: &str| serde_json::json!({"panels": [{"title": "t", "targets": [{"expr": expr}]}]});
    let attempts = panel("sum by (outcome) (rate(fulfillment_attempts_total[$__rate_interval]))");
    assert_eq!(unknown_names(&rule, &attempts, &exported), Ok(vec![]), "the names as exported pass");

    // The gauge renamed in the code: the rule still names the old name.
    let renamed = exposition::names(&exposition.replace("oldest_pending_age_seconds", "oldest_due_age_seconds"));
    assert_eq!(
        unknown_names(&rule, &attempts, &renamed),
        Ok(vec![("alert Waiting".into(), "fulfillment_oldest_pending_age_seconds".into())])
    );
    // A made-up name in a panel, and a counter without the `_total` its samples have.
    for (expr, wrong) in [
        ("sum(rate(fulfillment_attempts_made_up_total[5m]))", "fulfillment_attempts_made_up_total"),
        ("sum(rate(fulfillment_attempts[5m]))", "fulfillment_attempts"),
    ] {
        assert_eq!(unknown_names(&rule, &panel(expr), &exported), Ok(vec![("panel \"t\"".into(), wrong.into())]));
    }
    // Only the kubernetes group may read kube-state-metrics.
    let kube = serde_json::json!({"spec": {"groups": [{"name": KUBERNETES_GROUP, "rules": [
        {"alert": "PodsNotReady", "expr": "kube_deployment_status_replicas_available < 1"},
        {"alert": "Made", "expr": "kube_made_up_metric > 0"},
    ]}]}});
    assert_eq!(
        unknown_names(&kube, &attempts, &exported),
        Ok(vec![("alert Made".into(), "kube_made_up_metric".into())])
    );
    let elsewhere = panel("kube_deployment_status_replicas_available");
    assert_eq!(unknown_names(&rule, &elsewhere, &exported).unwrap().len(), 1, "a panel cannot");
}

/// Every component with `serve`, on a fresh Postgres database and Redis, as
/// in a cluster; their admin ports' `/metrics` together.
async fn exported_by_a_running_mesh() -> BTreeSet<String> {
    let database = kit::testing::TestDatabase::postgres("unused").await;
    let dir = tempfile::Builder::new().prefix("monitoring").tempdir().expect("tempdir");
    support::migrate(dir.path(), &database.config().url, "all").await;
    let redis = std::env::var("MESH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let loopback = [std::net::Ipv4Addr::LOCALHOST];
    let ports: BTreeMap<Component, (u16, u16)> = Component::ALL
        .into_iter()
        .map(|c| (c, (support::port_free_on_every(&loopback), support::port_free_on_every(&loopback))))
        .collect();
    let grpc = |c: Component| format!("http://127.0.0.1:{}", ports[&c].0);
    let mut env: Vec<(String, String)> = [
        ("MESH_DATABASE_URL", database.config().url.clone()),
        ("MESH_REDIS_URL", format!("{}/{REDIS_DB}", redis.trim_end_matches('/'))),
        ("MESH_DATA_DIR", dir.path().join("data").display().to_string()),
        ("MESH_AUTH__DEVELOPMENT_SECRET", DEVELOPMENT_SECRET.into()),
        ("MESH_CUSTOMER_IDENTITY__RETIREMENT_SALT", "monitoring-test-retirement-salt".into()),
        ("MESH_CATALOG_INGEST__SOURCES_DIR", repository().join("config/catalog/sources").display().to_string()),
        ("MESH_GATEWAY__FULFILLMENT_URL", grpc(Component::Fulfillment)),
        ("MESH_GATEWAY__CUSTOMER_IDENTITY_URL", grpc(Component::CustomerIdentity)),
        ("MESH_GATEWAY__CATALOG_INGEST_URL", grpc(Component::CatalogIngest)),
        ("MESH_GATEWAY__PURCHASE_HISTORY_URL", grpc(Component::PurchaseHistory)),
        ("MESH_FULFILLMENT__CUSTOMER_IDENTITY_URL", grpc(Component::CustomerIdentity)),
        ("MESH_FULFILLMENT__CATALOG_URL", grpc(Component::CatalogIngest)),
        ("MESH_PURCHASE_HISTORY__CUSTOMER_IDENTITY_URL", grpc(Component::CustomerIdentity)),
        // An order system with an outcome webhook: Fulfillment registers the webhook metrics with the sender.
        ("MESH_FULFILLMENT__WEBHOOKS__COMMERCETOOLS__URL", "http://127.0.0.1:9/outcomes".into()),
        ("MESH_FULFILLMENT__WEBHOOKS__COMMERCETOOLS__SECRET", "monitoring-test-webhook-secret".into()),
        ("MESH_TELEMETRY__LOG_FILTER", "info".into()),
    ]
    .map(|(key, value)| (key.to_string(), value))
    .into();
    for (component, (port, admin)) in &ports {
        let module = component.module().to_uppercase();
        env.push((format!("MESH_{module}__LISTEN"), format!("127.0.0.1:{port}")));
        env.push((format!("MESH_{module}__ADMIN_LISTEN"), format!("127.0.0.1:{admin}")));
    }
    let mut children = Vec::new();
    for component in Component::ALL {
        let log = dir.path().join(format!("{}.log", component.name()));
        children.push(support::serve(component.name(), dir.path(), &env, &log));
    }
    let mut exported = BTreeSet::new();
    for (component, (port, admin)) in &ports {
        match component {
            Component::Gateway => {
                let url = format!("http://127.0.0.1:{port}/healthz");
                support::wait_until("the gateway answers /healthz", || {
                    let url = url.clone();
                    async move { reqwest::get(&url).await.ok().filter(|r| r.status().is_success()) }
                })
                .await;
            }
            _ => support::wait_serving(&format!("http://127.0.0.1:{port}")).await,
        }
        let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the admin port answers /metrics")
            .text()
            .await
            .expect("the exposition");
        let names = exposition::names(&text);
        let own = format!("{}_", component.module());
        assert!(names.iter().any(|name| name.starts_with(&own)), "{component} exports its own metrics: {text}");
        exported.extend(names);
    }
    for mut child in children {
        child.start_kill().expect("kill");
        child.wait().await.expect("exits");
    }
    exported
}

#[tokio::test]
async fn every_metric_a_rule_or_panel_names_is_one_the_mesh_exports() {
    let exported = exported_by_a_running_mesh().await;
    let unknown = unknown_names(&prometheus_rule(), &dashboard(), &exported).expect("every query parses");
    assert!(
        unknown.is_empty(),
        "names the mesh does not export (renamed in the code? fix k8s/monitoring and OPERATIONS.md): {unknown:#?}\n\
         exported: {exported:#?}"
    );
}

/// The names an OpenMetrics exposition offers to queries: every sample's, and
/// for every family a `# TYPE` line declares, the names its samples will have.
mod exposition {
    use std::collections::BTreeSet;

    pub fn names(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let mut words = declared.split_whitespace();
                let (Some(family), Some(kind)) = (words.next(), words.next()) else { continue };
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    "info" => &["_info"],
                    _ => &[""],
                };
                names.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                names.insert(line[..end].to_string());
            }
        }
        names
    }

    #[test]
    fn samples_and_declared_families_give_the_names_queries_use() {
        let text = "# TYPE rpc_server_requests counter\n\
                    rpc_server_requests_total{component=\"a\"} 1\n\
                    # TYPE rpc_server_duration_seconds histogram\n\
                    # UNIT rpc_server_duration_seconds seconds\n\
                    # TYPE fulfillment_jobs gauge\n\
                    # EOF\n";
        let expected = [
            "rpc_server_requests_total",
            "rpc_server_duration_seconds_bucket",
            "rpc_server_duration_seconds_sum",
            "rpc_server_duration_seconds_count",
            "fulfillment_jobs",
        ];
        assert_eq!(names(text), expected.into_iter().map(String::from).collect());
    }
}

/// The metric names a PromQL expression selects. A small reader, not a
/// parser: it skips strings, durations (`[5m]`), label matchers (reading only
/// `__name__`), grouping label lists (`by (…)`, `on (…)`, …), functions,
/// keywords, numbers and Grafana's `$variables`; every other identifier is a
/// metric name.
mod promql {
    use std::collections::BTreeSet;

    /// Followed by a label list in parentheses, not by arguments.
    const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    /// Operators and modifiers spelled as words.
    const KEYWORDS: [&str; 8] = ["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"];
    /// Aggregations: reserved words, followed by `(` or by `by (…)`/`without (…)`.
    const AGGREGATIONS: [&str; 14] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];

    /// The selector of a Grafana variable's `label_values(<selector>, <label>)`
    /// (empty for `label_values(<label>)`); any other query as it is.
    pub fn variable_selector(query: &str) -> &str {
        let Some(arguments) = query.trim().strip_prefix("label_values(").and_then(|rest| rest.strip_suffix(')')) else {
            return query;
        };
        arguments.rsplit_once(',').map_or("", |(selector, _label)| selector)
    }

    pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
        let chars: Vec<char> = expr.chars().collect();
        let mut names = BTreeSet::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '"' || c == '\'' || c == '`' {
                i = skip_string(&chars, i)?;
            } else if c == '#' {
                i = chars[i..].iter().position(|&c| c == '\n').map_or(chars.len(), |n| i + n);
            } else if c == '[' {
                i = closing(&chars, i, '[', ']')?;
            } else if c == '{' {
                i = matchers(&chars, i, &mut names)?;
            } else if c == '$' {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = closing(&chars, i, '{', '}')?;
                } else {
                    i = identifier_end(&chars, i);
                }
            } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
                let end = identifier_end(&chars, i);
                let word: String = chars[i..end].iter().collect();
                let next = chars[end..].iter().position(|c| !c.is_whitespace()).map(|n| end + n);
                let opens = next.is_some_and(|n| chars[n] == '(');
                i = end;
                if GROUPING.contains(&word.as_str()) {
                    if let (true, Some(open)) = (opens, next) {
                        i = closing(&chars, open, '(', ')')?;
                    }
                } else if word == "offset" {
                    // The duration after it.
                    i = next.map_or(end, |n| identifier_end(&chars, n));
                } else if !opens
                    && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                    && !AGGREGATIONS.contains(&word.as_str())
                {
                    names.insert(word);
                }
            } else {
                i += 1;
            }
        }
        Ok(names)
    }

    fn identifier_end(chars: &[char], mut i: usize) -> usize {
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
            i += 1;
        }
        i
    }

    /// The index after the string starting at `start`.
    fn skip_string(chars: &[char], start: usize) -> Result<usize, String> {
        let quote = chars[start];
        let mut i = start + 1;
        while i < chars.len() {
            match chars[i] {
                '\\' if quote != '`' => i += 2,
                c if c == quote => return Ok(i + 1),
                _ => i += 1,
            }
        }
        Err(format!("a string never closed at {start}"))
    }

    /// The index after the `close` matching the `open` at `start` (skipping strings).
    fn closing(chars: &[char], start: usize, open: char, close: char) -> Result<usize, String> {
        let mut depth = 0;
        let mut i = start;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    i = skip_string(chars, i)?;
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i + 1);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        Err(format!("{open} at {start} never closed"))
    }

    /// Reads the label matchers starting at the `{` at `start`; a `__name__`
    /// matcher names metrics too: `=` one, `=~` an alternation of whole names.
    fn matchers(chars: &[char], start: usize, names: &mut BTreeSet<String>) -> Result<usize, String> {
        let end = closing(chars, start, '{', '}')?;
        let mut i = start + 1;
        while i < end - 1 {
            while i < end - 1 && (chars[i].is_whitespace() || chars[i] == ',') {
                i += 1;
            }
            if i >= end - 1 {
                break;
            }
            let label_end = identifier_end(chars, i);
            let label: String = chars[i..label_end].iter().collect();
            i = label_end;
            while chars[i].is_whitespace() {
                i += 1;
            }
            let op_end = chars[i..].iter().position(|c| !"=!~".contains(*c)).map_or(end, |n| i + n);
            let op: String = chars[i..op_end].iter().collect();
            i = op_end;
            while chars[i].is_whitespace() {
                i += 1;
            }
            if !matches!(chars[i], '"' | '\'' | '`') || label.is_empty() {
                return Err(format!("a label matcher at {i} is not `label op \"value\"`"));
            }
            let value_end = skip_string(chars, i)?;
            let value: String = chars[i + 1..value_end - 1].iter().collect();
            i = value_end;
            if label == "__name__" {
                let alternatives: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    "=~" => value.split('|').collect(),
                    _ => return Err(format!("__name__{op}: negated name matchers cannot be checked")),
                };
                for name in alternatives {
                    let whole = !name.is_empty() && identifier_end(&name.chars().collect::<Vec<_>>(), 0) == name.len();
                    if !whole {
                        return Err(format!("__name__=~{value:?}: write the names out, a|b, so they can be checked"));
                    }
                    names.insert(name.to_string());
                }
            }
        }
        Ok(end)
    }

    #[test]
    fn reads_the_names_and_nothing_else() {
        let cases: [(&str, &[&str]); 9] = [
            ("max(fulfillment_oldest_pending_age_seconds) > 900", &["fulfillment_oldest_pending_age_seconds"]),
            (
                r#"sum by (component, rpc_method, le) (rate(rpc_server_duration_seconds_bucket{component=~"$component", grpc_status!="0"}[$__rate_interval]))"#,
                &["rpc_server_duration_seconds_bucket"],
            ),
            (
                "max by (stream) ((bus_stream_oldest_entry_age_seconds > 3600) and (bus_stream_entries > 200))",
                &["bus_stream_oldest_entry_age_seconds", "bus_stream_entries"],
            ),
            ("sum(max by (stream) (bus_stream_dedupe_markers)) * 160 > 2e9", &["bus_stream_dedupe_markers"]),
            (
                "a_total / on (job) group_left (version) b_info > bool 0.5 offset 5m or c unless d",
                &["a_total", "b_info", "c", "d"],
            ),
            (r#"label_replace(up{job="x"}, "dst", "$1", "src", "(.*)") + Inf"#, &["up"]),
            (
                r#"{__name__=~"a_refused_total|b_refused_total", component="x"}"#,
                &["a_refused_total", "b_refused_total"],
            ),
            ("sum(rate(x[5m:1m])) without (le) # a comment naming not_a_metric", &["x"]),
            (
                "topk(10, sum by (caller, scope) (rate(gateway_caller_throttled_total[${interval}])))",
                &["gateway_caller_throttled_total"],
            ),
        ];
        for (expr, expected) in cases {
            let expected: BTreeSet<String> = expected.iter().map(|name| name.to_string()).collect();
            assert_eq!(metric_names(expr), Ok(expected), "{expr}");
        }
        assert!(metric_names(r#"{__name__=~".+_refused_total"}"#).is_err(), "a pattern cannot be checked");
        assert!(metric_names(r#"x{a="b}"#).is_err(), "an unclosed string");
        assert_eq!(
            variable_selector("label_values(rpc_server_requests_total{a=\"b\"}, component)"),
            "rpc_server_requests_total{a=\"b\"}"
        );
        assert_eq!(variable_selector("label_values(component)"), "");
    }
}

/// What docs/OPERATIONS.md says about alerts.
mod docs {
    use std::collections::{BTreeMap, BTreeSet};

    /// One row of the table under "Alerts worth setting".
    #[derive(Debug)]
    pub struct Row {
        pub severity: String,
        pub expression: String,
        pub why: String,
    }

    /// GitHub's anchor of each heading.
    pub fn anchors(markdown: &str) -> BTreeSet<String> {
        markdown
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .map(|heading| {
                heading
                    .trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect()
            })
            .collect()
    }

    /// Whitespace collapsed, for comparing an expression across files.
    pub fn squeeze(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The rows of the alert table, by alert name (the first column's code span).
    pub fn alert_table(markdown: &str) -> BTreeMap<String, Row> {
        let section = markdown.split("\n## Alerts worth setting\n").nth(1).expect("a section Alerts worth setting");
        let section = section.split("\n## ").next().unwrap_or(section);
        let mut rows = BTreeMap::new();
        for line in section.lines().filter(|line| line.starts_with("| `")) {
            // Cells split on `|` not escaped as `\|` (which code spans in a table need).
            let cells: Vec<String> =
                line.replace("\\|", "\u{0}").split('|').map(|cell| cell.trim().replace('\u{0}', "|")).collect();
            assert!(cells.len() >= 6, "| alert | severity | expression | why |: {line}");
            let code = |cell: &str| cell.split('`').nth(1).unwrap_or_default().to_string();
            let row = Row { severity: cells[2].clone(), expression: code(&cells[3]), why: cells[4].clone() };
            assert!(rows.insert(code(&cells[1]), row).is_none(), "an alert twice: {line}");
        }
        rows
    }

    #[test]
    fn reads_the_table_and_the_anchors() {
        let markdown = "# Operations\n\n## Alerts worth setting\n\n| alert | severity | expression | why |\n\
                        |---|---|---|---|\n\
                        | `A` | warning | `x{s=~\"a\\|b\"} > 0` (tune it) | see [there](#alerts-worth-setting) |\n\
                        \n## Retention: what is kept, how long\n| `B` | critical | `y` | no |\n";
        let rows = alert_table(markdown);
        assert_eq!(rows.keys().collect::<Vec<_>>(), ["A"], "only the section's rows");
        assert_eq!(rows["A"].expression, "x{s=~\"a|b\"} > 0");
        assert_eq!(rows["A"].severity, "warning");
        let anchors = anchors(markdown);
        assert!(anchors.contains("alerts-worth-setting") && anchors.contains("retention-what-is-kept-how-long"));
    }
}
