//! The Kubernetes manifests (`k8s/`) against the binary: every overlay renders
//! with kustomize and validates against the Kubernetes schemas, and in every
//! overlay each component of the binary has a Deployment whose arguments,
//! ports and probes match the configuration it is given (`mesh.toml` in the
//! ConfigMap commerce-mesh-config), with Services and NetworkPolicies that let
//! exactly the configured peers reach it and it reach exactly them. Then what
//! a release needs (issue 19): drains that outlast the callers' re-resolution,
//! a service account and a projected peer token per component, a default-deny
//! with explicit egress, spread, budgets and autoscalers that do not flap, one
//! migrations Job per release, and an image built reproducibly.
//!
//! `scripts/test` provides the tools: `MESH_KUBECTL` (Debian's kubectl, from
//! `scripts/k8s-tools`) and `MESH_PYTHON` (a venv with kubernetes-validate).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

    /// The objects of `kind`.
    fn all<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |((k, _), _)| k == kind).map(|(_, object)| object)
    }

    /// The migrations Job (`commerce-mesh migrate all`): exactly one.
    fn migrations_job(&self) -> &Value {
        let jobs: Vec<&Value> =
            self.all("Job").filter(|job| strings(&container(job, "migrate")["args"]) == ["migrate", "all"]).collect();
        assert_eq!(jobs.len(), 1, "{}: one migrations Job", self.overlay.display());
        jobs[0]
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

/// Whether a label selector (matchLabels only; empty: everything) selects a pod labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(selector.get("matchExpressions").is_none(), "the manifests' selectors use matchLabels only");
    selector["matchLabels"].as_object().is_none_or(|wanted| wanted.iter().all(|(key, value)| labels[key] == *value))
}

/// The NetworkPolicies of `policy_type` (Ingress, Egress) that select the pods of `template`.
fn policies_for<'a>(rendered: &'a Rendered, template: &Value, policy_type: &str) -> Vec<&'a Value> {
    rendered
        .all("NetworkPolicy")
        .filter(|policy| strings(&policy["spec"]["policyTypes"]).contains(&policy_type))
        .filter(|policy| selects(&policy["spec"]["podSelector"], &template["metadata"]["labels"]))
        .collect()
}

/// Every egress rule that applies to the pods of `template`: NetworkPolicies add up.
fn egress_rules<'a>(rendered: &'a Rendered, template: &Value) -> Vec<&'a Value> {
    policies_for(rendered, template, "Egress")
        .into_iter()
        .flat_map(|policy| policy["spec"]["egress"].as_array().into_iter().flatten())
        .collect()
}

/// Whether `rules` let a pod out to any address on `protocol`/`port`.
fn allows_anywhere(rules: &[&Value], protocol: &str, port: u64) -> bool {
    rules.iter().any(|rule| {
        rule["to"].as_array().is_none_or(Vec::is_empty)
            && rule["ports"].as_array().is_some_and(|ports| {
                ports.iter().any(|p| p["port"] == port && p["protocol"].as_str().unwrap_or("TCP") == protocol)
            })
    })
}

/// Whether `rules` let a pod out to the cluster's DNS (kube-dns) on UDP and TCP 53.
fn allows_dns(rules: &[&Value]) -> bool {
    rules.iter().any(|rule| {
        let to_dns = rule["to"].as_array().is_some_and(|to| {
            !to.is_empty() && to.iter().all(|peer| peer["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns")
        });
        let ports = rule["ports"].as_array().map(Vec::as_slice).unwrap_or_default();
        let on = |protocol: &str| ports.iter().any(|p| p["port"] == 53 && p["protocol"] == protocol);
        to_dns && on("UDP") && on("TCP")
    })
}

/// A container's variable `name`, as declared (`value` or `valueFrom`).
fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"].as_array().into_iter().flatten().find(|variable| variable["name"] == name)
}

/// The tag of an image reference (`registry:5000/team/name:tag` gives `tag`), if it has one.
fn image_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    name.rsplit('/').next().unwrap_or(name).split_once(':').map(|(_, tag)| tag)
}

/// Every container and init container of every pod template (Deployment, StatefulSet, Job).
fn pod_containers(rendered: &Rendered) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    for ((kind, name), object) in &rendered.objects {
        let pod = &object["spec"]["template"]["spec"];
        for list in ["containers", "initContainers"] {
            for c in pod[list].as_array().into_iter().flatten() {
                found.push((format!("{kind} {name}, container {}", c["name"]), c));
            }
        }
    }
    found
}

fn is_ours(container: &Value) -> bool {
    container["image"].as_str().is_some_and(|image| image.contains("commerce-mesh"))
}

fn seconds(value: &Value, what: &str) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("{what}: a number of seconds"))
}

// How long a caller may still send to a pod after it is asked to stop: these
// two, then the caller's next re-resolution (`kit::client::RESOLVE_EVERY`).
/// The endpoint change reaching CoreDNS (and kube-proxy), at worst.
const ENDPOINT_PROPAGATION: Duration = Duration::from_secs(5);
/// The TTL CoreDNS's kubernetes plugin answers with (its default).
const DNS_TTL: Duration = Duration::from_secs(5);

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
            }

            for kind in ["PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"] {
                rendered.get(kind, name);
            }
        }

        rendered.migrations_job();

        // Each configured peer address names a headless Service on the port its
        // component listens on, and that component's NetworkPolicy admits the caller.
        let mut callers: BTreeMap<Component, BTreeSet<Component>> = BTreeMap::new();
        let mut callees: BTreeMap<Component, BTreeSet<Component>> = BTreeMap::new();
        for (caller, variable, url) in peer_urls(&config) {
            let (callee, port) = peer(url);
            assert_eq!(port, config.listen(callee).port(), "{place}: {variable} ({url}) is {callee}'s port");
            let environment =
                rendered.mesh_environment(container(rendered.get("Deployment", caller.name()), caller.name()));
            assert!(!environment.contains_key(variable), "{place}: {variable} is set outside mesh.toml");
            callers.entry(callee).or_default().insert(caller);
            callees.entry(caller).or_default().insert(callee);
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
        // ...and the caller's own policy lets it out to exactly those, on their gRPC port.
        for component in Component::ALL {
            let pod = &rendered.get("Deployment", component.name())["spec"]["template"];
            let reached: BTreeSet<&str> = egress_rules(&rendered, pod)
                .into_iter()
                .filter(|rule| rule["ports"].as_array().is_some_and(|ports| ports.iter().any(|p| p["port"] == "grpc")))
                .flat_map(|rule| rule["to"].as_array().expect("a gRPC egress rule names its peers").iter())
                .map(|to| to["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str().expect("a component"))
                .collect();
            let configured: BTreeSet<&str> =
                callees.get(&component).into_iter().flatten().map(|callee| callee.name()).collect();
            assert_eq!(reached, configured, "{place}: whom {component} may call");
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

/// Liveness on the admin port (a pod draining or waiting for its migrations is
/// alive), readiness on the serving port (not ready from SIGTERM on, and, for a
/// service, until its migrations are applied), and a stop that outlasts the
/// callers: each component keeps serving for `serve.shutdown_grace`, longer
/// than a caller takes to drop it, then drains for `serve.drain_timeout`, and
/// Kubernetes waits for both before it kills the process.
#[test]
fn probes_and_drains_match_the_configuration() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let config = rendered.config();
        let place = overlay.display();
        let serve = &config.serve;

        let resolved_within = ENDPOINT_PROPAGATION + DNS_TTL + kit::client::RESOLVE_EVERY;
        assert!(
            serve.shutdown_grace > resolved_within,
            "{place}: serve.shutdown_grace {:?} outlasts endpoint propagation + DNS TTL + re-resolution ({resolved_within:?})",
            serve.shutdown_grace
        );
        // No unary call is cut short: a drain lasts as long as the longest call may.
        assert!(serve.drain_timeout >= serve.rpc_timeout, "{place}: serve.drain_timeout covers serve.rpc_timeout");
        assert!(
            serve.drain_timeout >= config.gateway.http.request_timeout,
            "{place}: serve.drain_timeout covers gateway.request_timeout"
        );
        let stop = serve.shutdown_grace + serve.drain_timeout;

        for component in Component::ALL {
            let name = component.name();
            let deployment = rendered.get("Deployment", name);
            let pod = &deployment["spec"]["template"]["spec"];
            let main = container(deployment, name);
            let environment = rendered.mesh_environment(main);
            assert!(
                !environment.keys().any(|variable| variable.starts_with("MESH_SERVE__")),
                "{place}: {name}'s serve settings come from mesh.toml alone"
            );

            let grace = seconds(&pod["terminationGracePeriodSeconds"], "terminationGracePeriodSeconds");
            assert!(
                Duration::from_secs(grace) > stop,
                "{place}: {name}'s terminationGracePeriodSeconds ({grace}) > shutdown_grace + drain_timeout ({stop:?})"
            );
            // The rollout stops an old pod only once callers can have found the new one.
            let min_ready = seconds(&deployment["spec"]["minReadySeconds"], "minReadySeconds");
            assert!(
                Duration::from_secs(min_ready) >= resolved_within,
                "{place}: {name}'s minReadySeconds ({min_ready}) lets callers resolve a new pod ({resolved_within:?})"
            );
            // The image has no shell: no preStop can sleep, the process's own grace does.
            assert!(main["lifecycle"]["preStop"]["exec"].is_null(), "{place}: {name} has no exec preStop");

            let admin = u64::from(config.admin_listen_of(component).port());
            let serving = u64::from(config.listen(component).port());
            let liveness = &main["livenessProbe"];
            assert_eq!(liveness["httpGet"]["path"], "/healthz", "{place}: {name}'s liveness is the admin /healthz");
            assert_eq!(probe_port(main, liveness), admin, "{place}: {name}'s liveness probes the admin port");
            if main["startupProbe"].is_object() {
                assert_eq!(probe_port(main, &main["startupProbe"]), admin, "{place}: {name}'s startup: admin port");
            }
            let readiness = &main["readinessProbe"];
            assert_eq!(probe_port(main, readiness), serving, "{place}: {name}'s readiness probes the serving port");
            if component == Component::Gateway {
                assert_eq!(readiness["httpGet"]["path"], "/healthz", "{place}: the gateway's readiness is /healthz");
            } else {
                assert!(readiness["grpc"].is_object(), "{place}: {name}'s readiness is gRPC health");
                assert!(
                    pod["initContainers"].is_null(),
                    "{place}: {name} waits for its migrations not ready, in serve"
                );
            }
        }
    }
}

/// Each component is a service account of its own, which its peers know it
/// by, and presents a token projected for the mesh's audience only; no
/// Kubernetes API token anywhere. Callers' tokens are checked with the
/// top-level `[auth]` keys.
#[test]
fn every_component_has_its_own_identity() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let place = overlay.display();
        let config = rendered.config();
        let audience = config.auth.peers.audience.as_str();
        let environment = &rendered.generated("ConfigMap", "commerce-mesh-environment")["data"];
        let set = |variable: &str| environment[variable].as_str().is_some_and(|value| !value.is_empty());
        assert!(environment["MESH_AUTH__PEERS__AUDIENCE"].is_null(), "{place}: the peer audience is mesh.toml's");
        assert!(!config.serve.reflection, "{place}: reflection stays off");
        assert_ne!(environment["MESH_SERVE__REFLECTION"], "true", "{place}: reflection stays off");
        if set("MESH_AUTH__JWKS_URL") || set("MESH_AUTH__JWKS_FILE") {
            assert_ne!(
                environment["MESH_AUTH__ALLOW_DEVELOPMENT_TOKENS"], "true",
                "{place}: with a JWKS, development tokens are refused"
            );
        }
        let development_secret = rendered.all("Secret").any(|secret| {
            secret["data"]["development-secret"].is_string() || secret["stringData"]["development-secret"].is_string()
        });

        for component in Component::ALL {
            let name = component.name();
            let deployment = rendered.get("Deployment", name);
            let pod = &deployment["spec"]["template"]["spec"];
            let main = container(deployment, name);
            assert_eq!(pod["serviceAccountName"], name, "{place}: {name} runs as the service account {name}");
            let account = rendered.get("ServiceAccount", name);
            assert_eq!(
                account["automountServiceAccountToken"], false,
                "{place}: ServiceAccount {name} mounts no API token"
            );
            assert_eq!(pod["automountServiceAccountToken"], false, "{place}: {name} mounts no API token");

            let projected: Vec<(&Value, &Value)> = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .flat_map(|volume| {
                    volume["projected"]["sources"].as_array().into_iter().flatten().map(move |source| (volume, source))
                })
                .filter(|(_, source)| source["serviceAccountToken"].is_object())
                .collect();
            assert_eq!(projected.len(), 1, "{place}: {name} projects one service-account token");
            let (volume, source) = projected[0];
            let token = &source["serviceAccountToken"];
            assert_eq!(token["audience"], audience, "{place}: {name}'s token is for the peers' audience only");
            let lifetime = seconds(&token["expirationSeconds"], "expirationSeconds");
            assert!(
                (600..=3600).contains(&lifetime),
                "{place}: {name}'s token lives {lifetime} s (kubelet rotates it)"
            );
            let mount = main["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .find(|mount| mount["name"] == volume["name"])
                .unwrap_or_else(|| panic!("{place}: {name} mounts its token"));
            assert_eq!(mount["readOnly"], true, "{place}: {name}'s token is mounted read-only");
            let path = format!(
                "{}/{}",
                mount["mountPath"].as_str().expect("mountPath"),
                token["path"].as_str().expect("path")
            );

            let token_file = env_var(main, "MESH_AUTH__PEERS__TOKEN_FILE")
                .unwrap_or_else(|| panic!("{place}: {name} gets MESH_AUTH__PEERS__TOKEN_FILE"));
            match token_file["value"].as_str() {
                Some(file) if file == path => assert!(
                    set("MESH_AUTH__PEERS__JWKS_URL") || set("MESH_AUTH__PEERS__JWKS_FILE"),
                    "{place}: projected tokens are verified against the cluster's JWKS"
                ),
                // Unset: a development identity, minted with the development secret.
                Some("") => assert!(
                    development_secret && !set("MESH_AUTH__JWKS_URL") && !set("MESH_AUTH__JWKS_FILE"),
                    "{place}: {name} presents a development identity only where development tokens are accepted"
                ),
                other => panic!("{place}: {name}'s MESH_AUTH__PEERS__TOKEN_FILE is {other:?}, not {path}"),
            }
            let namespace = env_var(main, "MESH_AUTH__PEERS__NAMESPACE")
                .unwrap_or_else(|| panic!("{place}: {name} gets MESH_AUTH__PEERS__NAMESPACE"));
            assert_eq!(
                namespace["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace",
                "{place}: {name}'s peers are of its own namespace"
            );
            let secret = env_var(main, "MESH_AUTH__DEVELOPMENT_SECRET")
                .unwrap_or_else(|| panic!("{place}: {name} checks development tokens as every component does"));
            assert_eq!(secret["valueFrom"]["secretKeyRef"]["key"], "development-secret", "{place}: {name}");
            assert_eq!(secret["valueFrom"]["secretKeyRef"]["optional"], true, "{place}: {name}: optional");
            for variable in rendered.mesh_environment(main).keys() {
                assert!(!variable.starts_with("MESH_GATEWAY__AUTH__"), "{place}: {variable} is MESH_AUTH__ now");
            }
        }
    }
}

/// Nothing reaches or leaves a pod of the mesh unless allowed: a default deny
/// selects every component and the migrations Job, and each is let out only
/// to what it uses (the peers are checked with the ingress, from mesh.toml).
#[test]
fn network_policies_deny_by_default_and_allow_each_component_its_egress() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let place = overlay.display();
        let deny_all: Vec<&Value> = rendered
            .all("NetworkPolicy")
            .filter(|policy| {
                let types = strings(&policy["spec"]["policyTypes"]);
                types.contains(&"Ingress")
                    && types.contains(&"Egress")
                    && policy["spec"]["ingress"].as_array().is_none_or(Vec::is_empty)
                    && policy["spec"]["egress"].as_array().is_none_or(Vec::is_empty)
            })
            .collect();
        assert!(!deny_all.is_empty(), "{place}: a default-deny NetworkPolicy");

        let job = rendered.migrations_job();
        let mut templates: Vec<(&str, &Value)> = Component::ALL
            .into_iter()
            .map(|c| (c.name(), &rendered.get("Deployment", c.name())["spec"]["template"]))
            .collect();
        templates.push(("the migrations Job", &job["spec"]["template"]));
        for (name, template) in &templates {
            let labels = &template["metadata"]["labels"];
            assert!(
                deny_all.iter().any(|policy| selects(&policy["spec"]["podSelector"], labels)),
                "{place}: the default deny selects {name}"
            );
            assert!(!policies_for(&rendered, template, "Ingress").is_empty(), "{place}: {name}'s ingress is denied");
            let rules = egress_rules(&rendered, template);
            assert!(allows_dns(&rules), "{place}: {name} may resolve names (kube-dns, UDP and TCP 53)");
            assert!(allows_anywhere(&rules, "TCP", 4317), "{place}: {name} may export spans (OTLP, 4317)");
        }

        let rules = egress_rules(&rendered, &job["spec"]["template"]);
        assert!(allows_anywhere(&rules, "TCP", 5432), "{place}: the migrations Job reaches PostgreSQL");
        for component in Component::ALL {
            let name = component.name();
            let rules = egress_rules(&rendered, &rendered.get("Deployment", name)["spec"]["template"]);
            assert!(allows_anywhere(&rules, "TCP", 443), "{place}: {name} may fetch the token issuers' JWKS (443)");
            let stores = component.storage_name().is_some();
            assert_eq!(
                allows_anywhere(&rules, "TCP", 5432),
                stores,
                "{place}: {name} reaches PostgreSQL iff it stores"
            );
            assert_eq!(allows_anywhere(&rules, "TCP", 6379), stores, "{place}: {name} reaches Redis iff it stores");
            let lms = component == Component::Fulfillment;
            assert_eq!(allows_anywhere(&rules, "TCP", 80), lms, "{place}: only fulfillment reaches the LMS over HTTP");
        }
    }
}

/// Every Deployment spreads over nodes and zones and loses one pod at a time
/// to a drain; autoscalers scale down slowly, and never Fulfillment on CPU
/// (its pods mostly wait on the LMS); every emptyDir is bounded.
#[test]
fn deployments_spread_keep_budgets_and_scale_without_flapping() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let place = overlay.display();
        for deployment in rendered.all("Deployment") {
            let name = deployment["metadata"]["name"].as_str().expect("name");
            if deployment["metadata"]["labels"]["app.kubernetes.io/part-of"] != "commerce-mesh" {
                continue; // the dev overlay's LMS
            }
            let template = &deployment["spec"]["template"];
            let labels = &template["metadata"]["labels"];
            let spread =
                template["spec"]["topologySpreadConstraints"].as_array().map(Vec::as_slice).unwrap_or_default();
            let over = |key: &str| {
                spread
                    .iter()
                    .find(|c| c["topologyKey"] == key && selects(&c["labelSelector"], labels))
                    .unwrap_or_else(|| panic!("{place}: {name} spreads over {key}"))
            };
            over("kubernetes.io/hostname");
            assert_eq!(over("topology.kubernetes.io/zone")["whenUnsatisfiable"], "ScheduleAnyway", "{place}: {name}");

            let budgets: Vec<&Value> =
                rendered.all("PodDisruptionBudget").filter(|pdb| selects(&pdb["spec"]["selector"], labels)).collect();
            assert_eq!(budgets.len(), 1, "{place}: one PodDisruptionBudget for {name}");
            assert_eq!(budgets[0]["spec"]["maxUnavailable"], 1, "{place}: {name} loses one pod at a time");
            assert!(budgets[0]["spec"]["minAvailable"].is_null(), "{place}: {name}'s budget is maxUnavailable only");
        }

        let mut scaled = BTreeSet::new();
        for hpa in rendered.all("HorizontalPodAutoscaler") {
            let target = hpa["spec"]["scaleTargetRef"]["name"].as_str().expect("a target");
            scaled.insert(target);
            let down = &hpa["spec"]["behavior"]["scaleDown"];
            let window = seconds(&down["stabilizationWindowSeconds"], "scaleDown.stabilizationWindowSeconds");
            assert!(window >= 300, "{place}: {target}'s HPA scales down on 5 minutes of recommendations at least");
            assert!(
                down["policies"].as_array().is_some_and(|policies| !policies.is_empty()),
                "{place}: {target}'s HPA limits how fast it scales down"
            );
            assert!(hpa["spec"]["behavior"]["scaleUp"].is_object(), "{place}: {target}'s HPA says how it scales up");
            if target == Component::Fulfillment.name() {
                let on_cpu =
                    hpa["spec"]["metrics"].as_array().into_iter().flatten().any(|metric| {
                        metric["resource"]["name"] == "cpu" || metric["containerResource"]["name"] == "cpu"
                    });
                assert!(!on_cpu, "{place}: fulfillment is not scaled on CPU");
            }
        }
        for component in Component::ALL {
            let name = component.name();
            let replicas = &rendered.get("Deployment", name)["spec"]["replicas"];
            assert!(
                scaled.contains(name) != replicas.is_u64(),
                "{place}: {name}'s count is the HPA's or fixed in the Deployment, one of the two"
            );
        }

        for ((kind, name), object) in &rendered.objects {
            for volume in object["spec"]["template"]["spec"]["volumes"].as_array().into_iter().flatten() {
                if let Some(empty_dir) = volume.get("emptyDir") {
                    assert!(
                        empty_dir["sizeLimit"].is_string(),
                        "{place}: {kind} {name}'s emptyDir {} is bounded",
                        volume["name"]
                    );
                }
            }
        }
    }
}

/// One migrations Job per release, named after the image tag the overlay
/// deploys (a Job's pod template cannot change), with a deadline, cleaned up
/// after; it alone connects with the role that may change schemas.
#[test]
fn each_release_has_its_own_migrations_job_and_only_it_changes_schemas() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let place = overlay.display();
        let job = rendered.migrations_job();
        let migrate = container(job, "migrate");
        let image = migrate["image"].as_str().expect("image");
        let tag = image_tag(image).unwrap_or_else(|| panic!("{place}: {image} has a tag"));
        assert_eq!(
            job["metadata"]["name"],
            format!("migrate-{}", tag.replace('.', "-")),
            "{place}: the Job names its release"
        );
        let deadline = seconds(&job["spec"]["activeDeadlineSeconds"], "activeDeadlineSeconds");
        seconds(&job["spec"]["ttlSecondsAfterFinished"], "ttlSecondsAfterFinished");
        let url = env_var(migrate, "MESH_DATABASE_URL").expect("the Job's MESH_DATABASE_URL");
        assert_eq!(
            url["valueFrom"]["secretKeyRef"]["key"], "migrate-database-url",
            "{place}: the Job's role may change schemas"
        );

        for component in Component::SERVICES {
            let name = component.name();
            let deployment = rendered.get("Deployment", name);
            let url = env_var(container(deployment, name), "MESH_DATABASE_URL").expect("MESH_DATABASE_URL");
            assert_eq!(
                url["valueFrom"]["secretKeyRef"]["key"], "database-url",
                "{place}: {name}'s role has no DDL rights"
            );
            // A new pod is not ready until the Job is done: the rollout waits that long before it reports failure.
            let progress = seconds(&deployment["spec"]["progressDeadlineSeconds"], "progressDeadlineSeconds");
            assert!(progress > deadline, "{place}: {name}'s progressDeadlineSeconds outlasts the Job's deadline");
        }
    }
}

/// Images have a tag (not latest) or a digest, so `kubectl apply -k` works
/// without Tilt, with the local image (IfNotPresent).
#[test]
fn images_are_pinned_and_pulled_if_not_present() {
    for overlay in overlays() {
        let rendered = Rendered::of(&overlay);
        let place = overlay.display();
        for (what, c) in pod_containers(&rendered) {
            let image = c["image"].as_str().expect("image");
            let pinned = image.contains("@sha256:") || image_tag(image).is_some_and(|tag| tag != "latest");
            assert!(pinned, "{place}: {what}: {image} names its version");
            if is_ours(c) {
                assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{place}: {what} pulls only when missing");
            }
        }
    }
}

/// The production overlay's namespace enforces the restricted Pod Security
/// profile (the mesh's pods meet it: see the test above), and holds the mesh.
#[test]
fn the_production_namespace_enforces_the_restricted_profile() {
    let rendered = Rendered::of(&k8s_dir().join("overlays/production"));
    let namespaces: Vec<&Value> = rendered.all("Namespace").collect();
    assert_eq!(namespaces.len(), 1, "production renders its namespace");
    let namespace = namespaces[0];
    for mode in ["enforce", "audit", "warn"] {
        let label = format!("pod-security.kubernetes.io/{mode}");
        assert_eq!(namespace["metadata"]["labels"][&label], "restricted", "{label}");
    }
    let name = &namespace["metadata"]["name"];
    for ((kind, object_name), object) in &rendered.objects {
        if kind != "Namespace" {
            assert_eq!(&object["metadata"]["namespace"], name, "{kind} {object_name} is in the namespace");
        }
    }
}

/// Redis holds the event streams: full, it must refuse writes rather than
/// evict a key, which could be a whole stream.
#[test]
fn the_dev_redis_has_a_memory_limit_and_never_evicts() {
    let rendered = Rendered::of(&k8s_dir().join("overlays/dev"));
    let redis = container(rendered.get("StatefulSet", "redis"), "redis");
    let args = strings(&redis["args"]);
    let after = |flag: &str| {
        let at = args.iter().position(|arg| *arg == flag).unwrap_or_else(|| panic!("redis runs with {flag}"));
        args.get(at + 1).copied().unwrap_or_default()
    };
    assert_eq!(after("--maxmemory-policy"), "noeviction");
    assert_eq!(after("--appendonly"), "yes");
    let maxmemory = after("--maxmemory");
    let megabytes: u64 = maxmemory.strip_suffix("mb").and_then(|n| n.parse().ok()).expect("--maxmemory <n>mb");
    let limit = redis["resources"]["limits"]["memory"].as_str().expect("a memory limit");
    let limit_mb: u64 = limit.strip_suffix("Mi").and_then(|n| n.parse().ok()).expect("a limit in Mi");
    // The append-only file's rewrite forks: copy-on-write pages need room beside maxmemory.
    assert!(megabytes * 3 / 2 <= limit_mb, "--maxmemory {maxmemory} leaves room under the limit {limit}");
}

/// The image builds from pinned inputs and says what it is.
#[test]
fn the_image_is_reproducible_and_labelled() {
    let root = k8s_dir().join("..");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let arg = |name: &str| {
        dockerfile
            .lines()
            .find_map(|line| line.trim().strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("ARG {name} has a default"))
    };
    let exact = |version: &str| version.split('.').count() == 3 && version.split('.').all(|n| n.parse::<u32>().is_ok());
    assert!(exact(arg("RUST_VERSION")), "the toolchain is an exact release, not {}", arg("RUST_VERSION"));
    let chef = dockerfile.lines().find(|line| line.contains("cargo install cargo-chef")).expect("cargo-chef");
    assert!(chef.contains("--locked"), "cargo-chef's own dependencies are locked");
    let chef_version = chef.split("--version").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or("");
    assert!(exact(chef_version), "cargo-chef is an exact version, not {chef_version:?}");
    assert_eq!(arg("VERSION"), env!("CARGO_PKG_VERSION"), "the image's version label is the crate's");
    for label in ["source", "revision", "version", "licenses"] {
        assert!(dockerfile.contains(&format!("org.opencontainers.image.{label}=")), "the OCI label {label}");
    }
    assert!(
        dockerfile.contains(&format!("org.opencontainers.image.licenses=\"{}\"", env!("CARGO_PKG_LICENSE"))),
        "the licenses label is the workspace's"
    );
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<&str> = ignored.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for path in ["target", ".git", "docs", "k8s", "data"] {
        assert!(ignored.contains(path), ".dockerignore keeps {path} out of the context");
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
