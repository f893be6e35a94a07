//! The Python client (`clients/python`), as an Open edX service would use it.
//!
//! Each test installs the package the way pip installs it (its build backend
//! generating the stubs from `proto/commerce` at that moment, so a proto
//! changed by anyone is what is tested) into a directory of its own, then runs
//! Python on it: the helpers' unit tests against an in-process server; mypy
//! `--strict` over the package, the mesh script and the README's example; and,
//! against a running mesh on embedded storage and on Postgres + Redis, a script
//! that is refused without a token and with too few scopes, places an order,
//! reads it back until the development LMS enrolled it, and reads the field
//! violations of a bad order; and the README's example as written.
//!
//! Python: `MESH_PYTHON`, the venv `scripts/python-tools` makes (it holds the
//! client's build and runtime dependencies, pinned), else `python3`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use commerce_mesh::{Component, MeshConfig, RunningMesh};
use kit::shutdown::Shutdown;
use kit::testing::TestDatabase;
use mesh_tests::storage::Storage;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use tokio::process::Command;

/// Guards against a hang, not a timing assertion: generous on purpose.
const GUARD: Duration = Duration::from_secs(60);
const REPOSITORY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn client_dir() -> PathBuf {
    Path::new(REPOSITORY).join("clients/python")
}

fn python() -> PathBuf {
    std::env::var_os("MESH_PYTHON").filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(|| "python3".into())
}

fn show(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The package installed in a directory of its own, and Python run on it.
struct Installed {
    dir: tempfile::TempDir,
}

impl Installed {
    /// `pip install` of `clients/python`, offline: the build backend and the
    /// generator come from the venv (`--no-build-isolation`), the runtime
    /// dependencies are the venv's (`--no-deps`; `against_mesh.py` checks
    /// they satisfy what the package declares).
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(python())
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir"])
            .args(["--no-deps", "--no-build-isolation", "--no-index", "--target"])
            .arg(dir.path().join("site"))
            .arg(client_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {:?}: {e}", python()));
        assert!(
            output.status.success(),
            "pip install clients/python failed (run `export MESH_PYTHON=\"$(scripts/python-tools)\"`: its venv \
             has the client's build dependencies):\n{}",
            show(&output)
        );
        Self { dir }
    }

    fn site(&self) -> PathBuf {
        self.dir.path().join("site")
    }

    /// Runs Python with the installed package importable (and not the source tree).
    async fn python(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(python());
        command
            .args(args)
            .envs(env.iter().copied())
            .env("PYTHONPATH", self.site())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // gRPC C-core's INFO lines (a GOAWAY as a test server stops) would land
            // mid-line in unittest's verbose output, which the tests read.
            .env("GRPC_VERBOSITY", "ERROR")
            .current_dir(self.dir.path())
            .kill_on_drop(true);
        tokio::time::timeout(GUARD * 2, command.output()).await.expect("python ends").unwrap()
    }
}

/// The first ```python block after the README's "Calling the mesh from Python" heading.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(Path::new(REPOSITORY).join("README.md")).unwrap();
    let section = readme.split_once("## Calling the mesh from Python").expect("the README has the section").1;
    let block = section.split_once("```python\n").expect("a python block in the section").1;
    block.split_once("```").expect("the block ends").0.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_has_a_typed_stub_for_every_proto_of_ours_and_its_helpers_pass_their_tests() {
    let installed = Installed::new().await;
    let package = installed.site().join("commerce_mesh");
    let protos = Path::new(REPOSITORY).join("proto/commerce");
    let mut compiled = 0;
    let mut pending = vec![protos.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "proto") {
                continue;
            }
            let relative = path.parent().unwrap().strip_prefix(&protos).unwrap();
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let mut expected = vec![format!("{stem}_pb2.py"), format!("{stem}_pb2.pyi")];
            if std::fs::read_to_string(&path).unwrap().lines().any(|l| l.starts_with("service ")) {
                expected.extend([format!("{stem}_pb2_grpc.py"), format!("{stem}_pb2_grpc.pyi")]);
            }
            for file in expected {
                let generated = package.join(relative).join(&file);
                assert!(generated.is_file(), "{} has no {}", path.display(), generated.display());
            }
            compiled += 1;
        }
    }
    assert!(compiled >= 7, "only {compiled} protos found under {}", protos.display());
    // Google's protos are googleapis-common-protos', never compiled from proto/google.
    assert!(!installed.site().join("google").exists() && !package.join("google").exists());

    let tests = client_dir().join("tests");
    let output = installed
        .python(
            &["-m", "unittest", "discover", "-v", "-s", tests.to_str().unwrap(), "-t", tests.to_str().unwrap()],
            &[],
        )
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim_end().ends_with("OK"), "{}", show(&output));
    let retried = stderr.lines().find(|l| l.starts_with("test_unavailable_reads_are_retried_until_they_succeed "));
    assert!(retried.is_some_and(|l| l.ends_with("... ok")), "{}", show(&output));

    // The build requirements the pyproject pins are the ones scripts/python-tools installs.
    let pyproject = std::fs::read_to_string(client_dir().join("pyproject.toml")).unwrap();
    let tools = std::fs::read_to_string(Path::new(REPOSITORY).join("scripts/python-tools")).unwrap();
    let requires = pyproject.split_once("requires = [").unwrap().1.split_once(']').unwrap().0;
    let pins: Vec<&str> = requires.split(',').map(|p| p.trim().trim_matches('"')).filter(|p| !p.is_empty()).collect();
    assert!(pins.len() >= 4, "{pins:?}");
    for pin in pins {
        assert!(tools.contains(pin), "scripts/python-tools does not install {pin}, which clients/python builds with");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_the_mesh_script_and_the_readme_example_type_check_strictly() {
    let installed = Installed::new().await;
    let example = installed.dir.path().join("readme_example.py");
    std::fs::write(&example, readme_example()).unwrap();
    let config = client_dir().join("pyproject.toml");
    let script = client_dir().join("tests/against_mesh.py");
    let cache = installed.dir.path().join("mypy-cache");
    // The installed package as a directory: with MYPYPATH at the site, mypy checks it as `commerce_mesh`.
    let package = installed.site().join("commerce_mesh");
    let output = installed
        .python(
            &[
                "-m",
                "mypy",
                "--config-file",
                config.to_str().unwrap(),
                "--cache-dir",
                cache.to_str().unwrap(),
                package.to_str().unwrap(),
                script.to_str().unwrap(),
                example.to_str().unwrap(),
            ],
            &[("MYPYPATH", installed.site().to_str().unwrap())],
        )
        .await;
    assert!(output.status.success(), "{}", show(&output));
    assert!(stdout(&output).starts_with("Success: no issues found"), "{}", show(&output));
}

/// The mesh with the development LMS, on `storage`.
struct Mesh {
    mesh: RunningMesh,
    config: MeshConfig,
    _data: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

impl Mesh {
    async fn start(storage: Storage) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
        config.use_ephemeral_ports();
        config.dev_lms.enabled = true;
        let database = storage.configure(&mut config).await;
        let mesh = commerce_mesh::start(config.clone(), Shutdown::new()).await.expect("mesh starts");
        mesh_tests::health::wait_serving(&mesh.grpc_url(Component::Fulfillment), GUARD).await.expect("ready");
        Self { mesh, config, _data: data, _database: database }
    }

    /// A development token for `scopes`, as `commerce-mesh token --scopes` mints it.
    fn token(&self, scopes: &[&str]) -> String {
        let scopes = scopes.iter().map(ToString::to_string).collect();
        commerce_mesh::dev_tokens::mint(&self.config, "edx-platform", scopes, Duration::from_secs(600)).unwrap()
    }

    fn fulfillment_target(&self) -> String {
        self.mesh.address(Component::Fulfillment).to_string()
    }

    /// The order's fulfillments, read by the Rust client.
    async fn fulfillments(&self, order_number: &str) -> Vec<pb::Fulfillment> {
        let mut client = FulfillmentServiceClient::new(self.mesh.grpc_channel(Component::Fulfillment));
        let request = pb::ListOrderFulfillmentsRequest { order_number: order_number.into(), ..Default::default() };
        client.list_order_fulfillments(request).await.unwrap().into_inner().fulfillments
    }
}

async fn python_places_and_reads_an_order(storage: Storage) {
    let installed = Installed::new().await;
    let mesh = Mesh::start(storage).await;
    let token = mesh.token(&["fulfillment:read", "fulfillment:write"]);
    let read_token = mesh.token(&["fulfillment:read"]);
    let target = mesh.fulfillment_target();
    let script = client_dir().join("tests/against_mesh.py");
    let output = installed
        .python(
            &[script.to_str().unwrap()],
            &[
                ("COMMERCE_MESH_FULFILLMENT", &target),
                ("COMMERCE_MESH_TOKEN", &token),
                ("COMMERCE_MESH_READ_TOKEN", &read_token),
                ("ORDER_NUMBER", "EDX-PY-1"),
            ],
        )
        .await;
    assert!(output.status.success(), "{}", show(&output));
    let printed = stdout(&output);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("imported commerce_mesh from {}", installed.site().join("commerce_mesh").display()).as_str()),
        "the installed package, not the source tree: {printed}"
    );
    assert!(lines.contains(&"without a token: UNAUTHENTICATED"), "{printed}");
    assert!(lines.contains(&"with a read-only token: PERMISSION_DENIED"), "{printed}");
    assert!(lines.contains(&"invalid order: INVALID_ARGUMENT naming ['order_number']"), "{printed}");
    assert_eq!(lines.last().copied(), Some("OK"), "{printed}");

    // What Python said it placed and saw is what Fulfillment holds.
    let stored = mesh.fulfillments("EDX-PY-1").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let id = &stored[0].fulfillment_id;
    assert!(lines.contains(&format!("placed EDX-PY-1: fulfillment {id}").as_str()), "{printed}");
    assert!(lines.contains(&format!("read back {id}: FULFILLMENT_STATE_SUCCEEDED for ada").as_str()), "{printed}");
    assert_eq!(stored[0].state(), pb::FulfillmentState::Succeeded);
    mesh.mesh.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_places_and_reads_an_order_on_embedded_storage() {
    python_places_and_reads_an_order(Storage::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_places_and_reads_an_order_on_postgres_and_redis() {
    python_places_and_reads_an_order(Storage::PostgresAndRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_example_places_its_order() {
    let installed = Installed::new().await;
    let mesh = Mesh::start(Storage::Embedded).await;
    let token = mesh.token(&["fulfillment:read", "fulfillment:write"]);
    let target = mesh.fulfillment_target();
    let example = installed.dir.path().join("readme_example.py");
    std::fs::write(&example, readme_example()).unwrap();
    let output = installed
        .python(
            &[example.to_str().unwrap()],
            &[("COMMERCE_MESH_FULFILLMENT", &target), ("COMMERCE_MESH_TOKEN", &token)],
        )
        .await;
    assert!(output.status.success(), "{}", show(&output));
    let number = readme_example()
        .split("order_number=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the example names its order")
        .to_string();
    let stored = mesh.fulfillments(&number).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let printed = stdout(&output);
    assert!(printed.contains(&stored[0].fulfillment_id), "the example prints what it placed: {printed}");
    mesh.mesh.stop().await.expect("clean stop");
}
