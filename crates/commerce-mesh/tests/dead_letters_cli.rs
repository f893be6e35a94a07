//! `commerce-mesh dead-letters list|replay|discard` as an operator runs it,
//! against a mesh on embedded storage and on Postgres + Redis: a poison
//! purchase dead-lettered by PurchaseHistory is listed as a table and as JSON
//! (its payload decoded), replayed (refused again: a new dead letter), and
//! discarded with a reason shown in the listing of discarded ones; an unknown
//! id, a stream the component does not consume and a discard without a reason
//! fail naming what is wrong.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::time::Duration;

use commerce_mesh::{Component, MeshConfig};
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, PurchaseRecorded, event_envelope::Payload};
use proto::commerce::ops::v1 as ops;
use proto::commerce::purchases::v1::purchase_history_dead_letter_service_client::PurchaseHistoryDeadLetterServiceClient;

const GUARD: Duration = Duration::from_secs(30);

struct Cli {
    dir: tempfile::TempDir,
    url: String,
    stream: String,
    token: String,
}

impl Cli {
    async fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let output = support::mesh_command(self.dir.path())
            .arg("dead-letters")
            .args(args)
            .args(["--component", "purchase-history", "--url", &self.url])
            .env("COMMERCE_MESH_TOKEN", &self.token)
            .output()
            .await
            .expect("run commerce-mesh dead-letters");
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        (output.status.code(), text(output.stdout), text(output.stderr))
    }

    async fn on_stream(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut all = args.to_vec();
        all.extend(["--stream", &self.stream]);
        self.run(&all).await
    }
}

async fn dead_letters_from_the_command_line(postgres_and_redis: bool) {
    let data = tempfile::tempdir().unwrap();
    let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    let _database = if postgres_and_redis {
        let database = TestDatabase::postgres("unused").await;
        config.database_url = Some(database.config().url.clone());
        config.redis_url = Some("redis://127.0.0.1:6379".into());
        Some(database)
    } else {
        None
    };
    // A stream of this test's own: Redis is shared by every test.
    let stream = format!("test.purchases.{}", uuid::Uuid::new_v4().simple());
    config.purchase_history.settings.stream = stream.clone();
    let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
    let url = mesh.grpc_url(Component::PurchaseHistory);
    support::wait_serving(&url).await;

    let poison = EventEnvelope {
        event_id: "purchase:poison".into(),
        event_type: "commerce.events.v1.PurchaseRecorded".into(),
        payload: Some(Payload::PurchaseRecorded(PurchaseRecorded {
            purchase_id: "p-poison".into(),
            lms_user_id: "77".into(),
            username: "ada".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let bus = kit::bus::open(config.redis_url.as_deref(), &data.path().join("events.db")).unwrap();
    bus.publish(&stream, &poison.event_id, &poison.encode_to_vec()).await.unwrap();
    let mut grpc = PurchaseHistoryDeadLetterServiceClient::new(mesh.grpc_channel(Component::PurchaseHistory));
    let listed = |grpc: &mut PurchaseHistoryDeadLetterServiceClient<_>| {
        let request = ops::ListDeadLettersRequest { stream: stream.clone(), ..Default::default() };
        let mut grpc = grpc.clone();
        async move { grpc.list_dead_letters(request).await.unwrap().into_inner().dead_letters }
    };
    let deadline = std::time::Instant::now() + GUARD;
    let first = loop {
        let letters = listed(&mut grpc).await;
        if let Some(letter) = letters.into_iter().next() {
            break letter;
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let token = commerce_mesh::dev_tokens::mint(
        &config,
        "ops-carol",
        vec!["ops:read".into(), "ops:write".into()],
        Duration::from_secs(600),
    )
    .unwrap();
    let cli = Cli { dir: tempfile::tempdir().unwrap(), url, stream: stream.clone(), token };

    // A table, columns aligned.
    let (code, stdout, stderr) = cli.on_stream(&["list"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("DELIVERIES") && lines[0].contains("REASON"), "{stdout}");
    let row = lines.iter().find(|line| line.starts_with(&first.id)).expect("the dead letter's row");
    assert!(row.contains("purchase-history") && row.contains("purchase:poison") && row.contains("PurchaseRecorded"));
    assert_eq!(row.find(first.reason.as_str()), lines[0].find("REASON"), "aligned:\n{stdout}");
    assert!(stdout.contains("1 dead letter(s)"), "{stdout}");

    // JSON, the payload decoded.
    let (code, stdout, stderr) = cli.on_stream(&["list", "--json", "--reason", "price"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let letter = &json["dead_letters"][0];
    assert_eq!(letter["id"], first.id.as_str());
    assert_eq!(letter["delivery_count"], 1);
    assert_eq!(letter["payload"]["purchase_recorded"]["purchase_id"], "p-poison", "{json}");

    // Bad input names what is wrong; nothing changes.
    let (code, _, stderr) = cli.run(&["list", "--stream", "commerce.orders.v1"]).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("INVALID_ARGUMENT") || stderr.contains("invalid"), "{stderr}");
    assert!(stderr.contains("stream"), "{stderr}");
    let (code, _, stderr) = cli.on_stream(&["discard", "--id", &first.id]).await;
    assert_eq!(code, Some(2), "clap refuses a discard without --reason: {stderr}");
    let (code, stdout, stderr) = cli.on_stream(&["replay", "--id", "1-1"]).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("not found") && stderr.contains("named no dead letter"), "{stdout}{stderr}");
    assert_eq!(listed(&mut grpc).await.len(), 1);

    // Replayed: handled again, refused again.
    let (code, stdout, stderr) = cli.on_stream(&["replay", "--id", &first.id]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("1 of 1 replayed"), "{stdout}");
    let deadline = std::time::Instant::now() + GUARD;
    let again = loop {
        let letters = listed(&mut grpc).await;
        if let Some(letter) = letters.into_iter().find(|letter| letter.id != first.id) {
            break letter;
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Discarded with a reason, kept with who and why.
    let (code, stdout, stderr) = cli.on_stream(&["discard", "--id", &again.id, "--reason", "a test purchase"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("1 of 1 discarded"), "{stdout}");
    assert!(listed(&mut grpc).await.is_empty());
    let (code, stdout, stderr) = cli.on_stream(&["list", "--discarded"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("DISCARDED BY") && stdout.contains("ops-carol") && stdout.contains("a test purchase"));
    mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_from_the_command_line_on_embedded_storage() {
    dead_letters_from_the_command_line(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_from_the_command_line_on_postgres_and_redis() {
    dead_letters_from_the_command_line(true).await;
}
