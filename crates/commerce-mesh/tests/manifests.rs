//! The Kubernetes manifests (`k8s/`) against the binary: every overlay renders
//! with kustomize and validates against the Kubernetes schemas, and in every
//! overlay each component of the binary has a Deployment whose arguments,
//! ports and probes match the configuration it is given (`mesh.toml` in the
//! ConfigMap commerce-mesh-config), with Services and NetworkPolicies that let
//! exactly the configured peers reach it.
//!
//! `scripts/test` provides the tools: `MESH_KUBECTL` (Debian's kubectl, from
//! `scripts/k8s-tools`) and `MESH_PYTHON` (a venv with kubernetes-validate).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use commerce_mesh::{Component, MeshConfig};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde_json::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.30.0";

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../k8s").canonicalize().expect("k8s/")
}

/// The base and every overlay.
fn kustomizations() -> Vec<PathBuf> {
    let mut dirs = vec![k8s_dir().join("base")];
    let overlays = std::fs::read_dir(k8s_dir().join("overlays")).expect("k8s/overlays");
    let mut overlays: Vec<PathBuf> = overlays.map(|entry| entry.expect("entry").path()).collect();
    overlays.sort();
    dirs.extend(overlays);
    assert!(dirs.iter().any(|dir| dir.ends_with("overlays/dev")), "the dev overlay exists: {dirs:?}");
    dirs
}

/// The overlays, the base excluded: what gets deployed.
fn overlays() -> Vec<PathBuf> {
    kustomizations().into_iter().filter(|dir| !dir.ends_with("base")).collect()
}

fn kubectl() -> PathBuf {
    std::env::var_os("MESH_KUBECTL").map(PathBuf::from).unwrap_or_else(|| "kubectl".into())
}

/// `kubectl kustomize <dir>`: the rendered YAML.
fn render(dir: &Path) -> String {
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {:?} (scripts/test sets MESH_KUBECTL): {e}", kubectl()));
    assert!(output.status.success(), "{} does not render: {}", dir.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).expect("rendered YAML parses")
}

/// kubernetes-validate, strict (unknown fields are errors), offline.
fn validate(yaml: &str) -> std::process::Output {
    let python = std::env::var_os("MESH_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into());
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().expect("tempfile");
    std::fs::write(file.path(), yaml).expect("write");
    Command::new(&python)
        .args(["-m", "kubernetes_validate"])
        .args(["--strict", "--quiet", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| panic!("run {python:?} (scripts/test sets MESH_PYTHON): {e}"))
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    for dir in kustomizations() {
        let yaml = render(&dir);
        assert!(objects(&yaml).len() > 10, "{} renders the mesh", dir.display());
        let output = validate(&yaml);
        assert!(
            output.status.success(),
            "{} does not validate:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_validator_refuses_a_misspelt_field() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  clusterIp: None\n  ports:\n  - port: 1\n";
    assert!(!validate(yaml).status.success(), "strict validation catches clusterIp for clusterIP");
}

/// One rendered overlay, its objects by kind and name.
struct Rendered {
    overlay: PathBuf,
    objects: BTreeMap<(String, String), Value>,
}

impl Rendered {
    fn of(overlay: &Path) -> Self {
        let objects = objects(&render(overlay))
            .into_iter()
            .map(|object| {
                let kind = object["kind"].as_str().expect("kind").to_string();
                let name = object["metadata"]["name"].as_str().expect("name").to_string();
                ((kind, name), object)
            })
            .collect();
        Self { overlay: overlay.to_path_buf(), objects }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.overlay.display()))
    }

    /// A generated object, whose name carries a hash suffix.
    fn generated(&self, kind: &str, prefix: &str) -> &Value {
        let mut found = self.objects.iter().filter(|((k, name), _)| {
            k == kind && name.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        });
        let (_, object) = found.next().unwrap_or_else(|| panic!("{}: no {kind} {prefix}", self.overlay.display()));
        assert!(found.next().is_none(), "one {kind} {prefix}");
        object
    }

    /// The configuration the components are given: defaults, then mesh.toml.
    fn config(&self) -> MeshConfig {
        let map = self.generated("ConfigMap", "commerce-mesh-config");
        let text = map["data"]["mesh.toml"].as_str().expect("mesh.toml in commerce-mesh-config");
        Figment::from(Serialized::defaults(MeshConfig::default()))
            .merge(Toml::string(text))
            .extract()
            .unwrap_or_else(|e| panic!("{}: mesh.toml: {e}", self.overlay.display()))
    }

    /// Every `MESH_*` variable a container gets besides mesh.toml: its own
    /// `env` values and every ConfigMap it takes with `envFrom`.
    fn mesh_environment(&self, container: &Value) -> BTreeMap<String, String> {
        let mut variables = BTreeMap::new();
        for source in container["envFrom"].as_array().into_iter().flatten() {
            let name = source["configMapRef"]["name"].as_str().expect("envFrom names a ConfigMap");
            let data = self.get("ConfigMap", name)["data"].as_object().expect("data");
            variables.extend(data.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())));
        }
        for variable in container["env"].as_array().into_iter().flatten() {
            let value = variable["value"].as_str().unwrap_or("<from a reference>");
            variables.insert(variable["name"].as_str().expect("name").to_string(), value.to_string());
        }
        variables.retain(|name, _| name.starts_with(kit::config::ENV_PREFIX));
        variables
    }
}

/// The pod template of a Deployment (or Job), and its container named `name`.
fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("a container named {name}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().map(|a| a.iter().map(|v| v.as_str().expect("a string")).collect()).unwrap_or_default()
}

fn port_named(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{} has no port named {name}", container["name"]))["containerPort"]
        .as_u64()
        .expect("containerPort")
}

/// The port a probe targets, by number or by the container port's name.
fn probe_port(container: &Value, probe: &Value) -> u64 {
    let port = if probe["grpc"].is_object() { &probe["grpc"]["port"] } else { &probe["httpGet"]["port"] };
    port.as_u64().unwrap_or_else(|| port_named(container, port.as_str().expect("a probe port")))
}

/// Which component calls which, and at which configured address.
fn peer_urls(config: &MeshConfig) -> Vec<(Component, &'static str, &str)> {
    vec![
        (Component::Gateway, "MESH_GATEWAY__FULFILLMENT_URL", &config.gateway.fulfillment_url),
        (Component::Gateway, "MESH_GATEWAY__CUSTOMER_IDENTITY_URL", &config.gateway.customer_identity_url),
        (Component::Gateway, "MESH_GATEWAY__CATALOG_INGEST_URL", &config.gateway.catalog_ingest_url),
        (Component::Gateway, "MESH_GATEWAY__PURCHASE_HISTORY_URL", &config.gateway.purchase_history_url),
        (
            Component::Fulfillment,
            "MESH_FULFILLMENT__CUSTOMER_IDENTITY_URL",
            &config.fulfillment.settings.customer_identity_url,
        ),
        (Component::Fulfillment, "MESH_FULFILLMENT__CATALOG_URL", &config.fulfillment.settings.catalog_url),
        (
            Component::PurchaseHistory,
            "MESH_PURCHASE_HISTORY__CUSTOMER_IDENTITY_URL",
            &config.purchase_history.settings.customer_identity_url,
        ),
    ]
}

/// `dns:///customer-identity:50052` → (the component, 50052).
fn peer(url: &str) -> (Component, u16) {
    let address = url.strip_prefix("dns:///").unwrap_or_else(|| panic!("{url}: peers are dns:/// (headless Services)"));
    let (host, port) = address.rsplit_once(':').unwrap_or_else(|| panic!("{url}: host:port"));
    let component = Component::ALL
        .into_iter()
        .find(|c| c.name() == host)
        .unwrap_or_else(|| panic!("{url}: names no component's Service"));
    (component, port.parse().expect("a port"))
}

fn env_name(component: Component, key: &str) -> String {
    format!("MESH_{}__{key}", component.module().to_uppercase())
}

#[test]
fn every_component_has_a_deployment_matching_the_configuration() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let config = rendered.config();
        let place = overlay.display();

        for component in Component::ALL {
            let name = component.name();
            let deployment = rendered.get("Deployment", name);
            let main = container(deployment, name);
            assert_eq!(strings(&main["args"]), ["serve", name], "{place}: {name} runs its component");

            let listen = config.listen(component);
            let admin = config.admin_listen_of(component);
            assert!(listen.ip().is_unspecified(), "{place}: {name} listens on every interface, not {listen}");
            assert!(admin.ip().is_unspecified(), "{place}: {name}'s admin port listens on every interface");
            let serving_port = if component == Component::Gateway { "http" } else { "grpc" };
            assert_eq!(
                port_named(main, serving_port),
                u64::from(listen.port()),
                "{place}: {name}'s {serving_port} port"
            );
            assert_eq!(port_named(main, "admin"), u64::from(admin.port()), "{place}: {name}'s admin port");

            // Only mesh.toml places components: an environment variable would override it unseen here.
            let environment = rendered.mesh_environment(main);
            for key in ["LISTEN", "ADMIN_LISTEN"] {
                let variable = env_name(component, key);
                assert!(!environment.contains_key(&variable), "{place}: {name} gets {variable}; set it in mesh.toml");
            }

            for probe in ["readinessProbe", "livenessProbe"] {
                let probe = &main[probe];
                assert!(probe.is_object(), "{place}: {name} has a {probe}");
                assert_eq!(probe_port(main, probe), u64::from(listen.port()), "{place}: {name}'s probe port");
                let native = if component == Component::Gateway { "httpGet" } else { "grpc" };
                assert!(probe[native].is_object(), "{place}: {name} is probed with {native}");
            }

            let service = rendered.get("Service", name);
            let service_port = service["spec"]["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .find(|p| p["targetPort"] == serving_port)
                .unwrap_or_else(|| panic!("{place}: Service {name} targets {serving_port}"));
            assert_eq!(service_port["port"], u64::from(listen.port()), "{place}: Service {name}'s port");
            if component != Component::Gateway {
                assert_eq!(service["spec"]["clusterIP"], "None", "{place}: Service {name} is headless");
                let init = &deployment["spec"]["template"]["spec"]["initContainers"][0];
                assert_eq!(
                    strings(&init["args"]),
                    ["wait-for-migrations", name],
                    "{place}: {name} waits for migrations"
                );
            }

            for kind in ["PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"] {
                rendered.get(kind, name);
            }
        }

        let job = rendered.get("Job", "migrate");
        assert_eq!(strings(&container(job, "migrate")["args"]), ["migrate", "all"], "{place}: the migrations Job");

        // Each configured peer address names a headless Service on the port its
        // component listens on, and that component's NetworkPolicy admits the caller.
        let mut callers: BTreeMap<Component, BTreeSet<Component>> = BTreeMap::new();
        for (caller, variable, url) in peer_urls(&config) {
            let (callee, port) = peer(url);
            assert_eq!(port, config.listen(callee).port(), "{place}: {variable} ({url}) is {callee}'s port");
            let environment =
                rendered.mesh_environment(container(rendered.get("Deployment", caller.name()), caller.name()));
            assert!(!environment.contains_key(variable), "{place}: {variable} is set outside mesh.toml");
            callers.entry(callee).or_default().insert(caller);
        }
        for component in Component::SERVICES {
            let policy = rendered.get("NetworkPolicy", component.name());
            let grpc_rule = policy["spec"]["ingress"]
                .as_array()
                .expect("ingress rules")
                .iter()
                .find(|rule| rule["ports"].as_array().is_some_and(|ports| ports.iter().any(|p| p["port"] == "grpc")))
                .unwrap_or_else(|| panic!("{place}: {component}'s NetworkPolicy has a rule for grpc"));
            let admitted: BTreeSet<&str> = grpc_rule["from"]
                .as_array()
                .expect("a gRPC rule names its callers")
                .iter()
                .map(|from| from["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str().expect("a component"))
                .collect();
            let configured: BTreeSet<&str> =
                callers.get(&component).into_iter().flatten().map(|caller| caller.name()).collect();
            assert_eq!(admitted, configured, "{place}: who may call {component}");
        }
    }
}

#[test]
fn every_pod_of_the_image_runs_non_root_read_only_without_capabilities_and_with_limits() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let place = overlay.display();
        for ((kind, name), object) in &rendered.objects {
            let Some(pod) = object["spec"]["template"]["spec"].as_object() else { continue };
            let containers = pod
                .get("containers")
                .into_iter()
                .chain(pod.get("initContainers"))
                .flat_map(|c| c.as_array().expect("containers").iter());
            let ours: Vec<&Value> = containers
                .filter(|c| c["image"].as_str().is_some_and(|image| image.contains("commerce-mesh")))
                .collect();
            if ours.is_empty() {
                continue;
            }
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{place}: {kind} {name} runs as non-root");
            assert_eq!(pod["automountServiceAccountToken"], false, "{place}: {kind} {name} mounts no API token");
            for c in ours {
                let what = format!("{place}: {kind} {name}, container {}", c["name"]);
                assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{what}: read-only root");
                assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{what}: no escalation");
                assert_eq!(strings(&c["securityContext"]["capabilities"]["drop"]), ["ALL"], "{what}: no capabilities");
                for limit in ["cpu", "memory"] {
                    assert!(c["resources"]["requests"][limit].is_string(), "{what}: requests {limit}");
                    assert!(c["resources"]["limits"][limit].is_string(), "{what}: limits {limit}");
                }
            }
        }
    }
}

#[test]
fn every_component_exports_spans_to_the_collector() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let environment = rendered.generated("ConfigMap", "commerce-mesh-environment");
        let endpoint = environment["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str().unwrap_or_default();
        assert!(endpoint.starts_with("http://") && endpoint.ends_with(":4317"), "{}: {endpoint}", overlay.display());
        for component in Component::ALL {
            let main = container(rendered.get("Deployment", component.name()), component.name());
            let from: Vec<&str> = main["envFrom"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["configMapRef"]["name"].as_str())
                .collect();
            let name = environment["metadata"]["name"].as_str().expect("name");
            assert!(from.contains(&name), "{}: {component} takes {name}", overlay.display());
        }
    }
}

/// The Tiltfile's resources are workloads of the dev overlay, and it forwards
/// the gateway and the Jaeger UI.
#[test]
fn the_tiltfile_names_workloads_of_the_dev_overlay() {
    let tiltfile = std::fs::read_to_string(k8s_dir().join("../Tiltfile")).expect("Tiltfile");
    let rendered = Rendered::of(&k8s_dir().join("overlays/dev"));
    let workloads: BTreeSet<&str> = rendered
        .objects
        .keys()
        .filter(|(kind, _)| ["Deployment", "StatefulSet", "Job"].contains(&kind.as_str()))
        .map(|(_, name)| name.as_str())
        .collect();
    let code = tiltfile.lines().filter(|line| !line.trim_start().starts_with('#'));
    let quoted: BTreeSet<&str> = code.flat_map(|line| line.split('\'').skip(1).step_by(2)).collect();
    for name in &workloads {
        assert!(quoted.contains(name), "the Tiltfile orders {name}");
    }
    for line in tiltfile.lines().filter(|l| l.trim_start().starts_with("k8s_resource('")) {
        let name = line.trim_start().trim_start_matches("k8s_resource('").split('\'').next().unwrap_or_default();
        assert!(workloads.contains(name), "the Tiltfile's {name} is a workload of the dev overlay");
    }
    assert!(tiltfile.contains("'8080:8080'") && tiltfile.contains("'16686:16686'"), "forwards gateway and Jaeger UI");
    assert!(tiltfile.contains("kustomize('k8s/overlays/dev')"), "applies the dev overlay");
}
