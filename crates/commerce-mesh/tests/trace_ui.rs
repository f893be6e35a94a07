//! `commerce-mesh up --with-trace-ui` as a user runs it: built with the
//! `trace-ui` feature (as every workspace build is: mesh-tests turns it on),
//! it prints where the Jaeger UI is and serves it with its query API over its
//! own spans; built without, it refuses at once, saying how to build it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{HANG_GUARD, mesh_command};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Every listener of `up` on a free port, so the test runs beside anything.
const EPHEMERAL: [&str; 7] = [
    "MESH_GATEWAY__LISTEN",
    "MESH_FULFILLMENT__LISTEN",
    "MESH_CUSTOMER_IDENTITY__LISTEN",
    "MESH_CATALOG_INGEST__LISTEN",
    "MESH_PURCHASE_HISTORY__LISTEN",
    "MESH_ADMIN_LISTEN",
    "MESH_TRACE_UI__LISTEN",
];

#[tokio::test]
async fn up_with_trace_ui_serves_the_jaeger_ui_over_its_own_spans_or_says_how_to_build_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = mesh_command(dir.path());
    command.args(["up", "--with-trace-ui"]);
    for name in EPHEMERAL {
        command.env(name, "127.0.0.1:0");
    }
    let mut child = command.spawn().expect("spawn");

    if !cfg!(feature = "trace-ui") {
        let output = tokio::time::timeout(HANG_GUARD, child.wait_with_output()).await.expect("exits").expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "refused: {stderr}");
        assert!(stderr.contains("--features trace-ui"), "says how to build it: {stderr}");
        assert!(stderr.contains("scripts/protoc"), "and where its protoc comes from: {stderr}");
        return;
    }

    // The banner: `name  scheme://address ...`, the trace UI's line last.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut urls = BTreeMap::new();
    while !urls.contains_key("trace-ui") {
        let line = tokio::time::timeout(HANG_GUARD, lines.next_line())
            .await
            .expect("the process keeps writing")
            .expect("stdout readable")
            .expect("the process is still running");
        let mut words = line.split_whitespace();
        if let (Some(name), Some(url)) = (words.next(), words.next())
            && url.starts_with("http://")
        {
            urls.insert(name.to_string(), url.trim_end_matches("/metrics").to_string());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let ui = &urls["trace-ui"];
    assert!(!ui.ends_with(":16686"), "MESH_TRACE_UI__LISTEN is honoured: {ui}");

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let (status, page) = {
        let response = client.get(format!("{ui}/")).send().await.expect("the UI answers");
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<title>Jaeger UI</title>"), "{page}");

    // A request to the gateway (refused: no token) is a trace of the gateway's, in the store.
    let refused = client.get(format!("{}/v1/customers/c-1", urls["gateway"])).send().await.expect("gateway answers");
    assert_eq!(refused.status().as_u16(), 401);
    let services = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let answer: serde_json::Value =
                client.get(format!("{ui}/api/services")).send().await.unwrap().json().await.unwrap();
            if answer["data"].as_array().is_some_and(|s| s.contains(&"gateway".into())) {
                return answer;
            }
            // The store takes spans every half second; nothing signals it from outside the process.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the gateway's trace reaches the trace UI");
    assert_eq!(services["total"], services["data"].as_array().map(Vec::len).unwrap_or_default());
    let traces: serde_json::Value =
        client.get(format!("{ui}/api/traces?service=gateway&limit=5")).send().await.unwrap().json().await.unwrap();
    let trace = &traces["data"][0];
    assert_eq!(trace["spans"][0]["operationName"], "GET /v1/customers/{customer_id}", "{traces}");

    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill runs");
    assert!(kill.success());
    let status = tokio::time::timeout(HANG_GUARD, child.wait()).await.expect("exits after SIGTERM").expect("wait");
    assert_eq!(status.code(), Some(0), "SIGTERM ends the mesh and its trace UI with exit 0");
}

/// The README's quickstart starts `up` with the trace UI as this binary and its
/// manifest have it, with the protoc the build needs from the project's own
/// script, and opens the trace where the UI listens by default.
#[test]
fn the_readme_quickstart_runs_the_trace_ui_as_built_here() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let start = readme
        .lines()
        .find(|line| line.contains("cargo run") && line.contains("--with-trace-ui"))
        .expect("the quickstart starts up with the trace UI");
    let (cargo, args) = start.split_once(" -- ").expect("cargo run ... -- <arguments>");
    assert!(cargo.ends_with("cargo run --release -p commerce-mesh --features trace-ui"), "{start}");
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("\ntrace-ui = ["), "the feature the README names exists");

    // The binary takes the README's arguments (`--help` after them parses them first).
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_commerce-mesh"))
        .args(args.split_whitespace())
        .arg("--help")
        .output()
        .expect("run commerce-mesh");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{args}: {}", String::from_utf8_lossy(&help.stderr));
    assert!(text.contains("--with-trace-ui"), "{text}");

    assert!(readme.contains("export PROTOC=\"$(scripts/protoc)\"\n"), "the README gets its protoc from the script");
    let script = std::fs::metadata(format!("{root}/scripts/protoc")).expect("scripts/protoc");
    assert!(std::os::unix::fs::PermissionsExt::mode(&script.permissions()) & 0o111 != 0, "scripts/protoc runs");

    let listen = commerce_mesh::trace_ui::TraceUiConfig::default().listen;
    assert!(readme.contains(&format!("http://{listen}/trace/<trace id>")), "the README opens the UI at {listen}");
    assert!(readme.contains("](docs/trace-ui.png)"), "the README shows the screenshot");
    assert!(std::fs::metadata(format!("{root}/docs/trace-ui.png")).is_ok_and(|m| m.len() > 0), "docs/trace-ui.png");
}
