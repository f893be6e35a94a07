//! A test upstream for the gateway: a gRPC server that serves any RPC the
//! test descriptors describe, echoing requests back and recording each call.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // shared by several test files

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use gateway::codec::DynamicCodec;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, ReflectMessage, Value};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The test service's full name.
pub const ECHO_SERVICE: &str = "commerce.gatewaytest.v1.EchoService";

/// The mesh's protos plus the test service, compiled now.
pub fn test_pool() -> DescriptorPool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compiler = protox::Compiler::new([root.join("tests/protos"), root.join("../proto")]).expect("includes");
    // Through the encoded set: prost_types would drop the custom options.
    compiler.include_imports(true);
    for file in ["commerce/gatewaytest/v1/echo.proto", "google/rpc/error_details.proto", "google/rpc/status.proto"] {
        compiler.open_file(file).expect("the test protos compile");
    }
    DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("the test descriptors load")
}

/// One call the upstream received.
#[derive(Clone, Debug)]
pub struct Call {
    /// The RPC's name.
    pub method: String,
    /// Its metadata, ASCII values only.
    pub metadata: HashMap<String, String>,
    /// The request as proto3 JSON (proto names, defaults emitted).
    pub request: serde_json::Value,
}

/// What the upstream saw.
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    /// How many calls arrived.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Every call, oldest first.
    pub fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// The last call.
    pub fn last(&self) -> Call {
        self.0.lock().unwrap().last().cloned().expect("the upstream was called")
    }
}

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Calls of the `Slow` RPC: each waits, counted as held, until the test releases it.
#[derive(Clone, Debug)]
pub struct SlowCalls {
    held: Arc<watch::Sender<usize>>,
    releases: Arc<Semaphore>,
}

impl Default for SlowCalls {
    fn default() -> Self {
        Self { held: Arc::new(watch::channel(0).0), releases: Arc::new(Semaphore::new(0)) }
    }
}

impl SlowCalls {
    /// Waits (at most [`PATIENCE`]) until `count` Slow calls are held at once.
    pub async fn wait_held(&self, count: usize) {
        let mut held = self.held.subscribe();
        tokio::time::timeout(PATIENCE, held.wait_for(|held| *held >= count))
            .await
            .unwrap_or_else(|_| panic!("{count} Slow call(s) never arrived"))
            .unwrap();
    }

    /// Lets `count` held (or future) Slow calls answer.
    pub fn release(&self, count: usize) {
        self.releases.add_permits(count);
    }

    /// Lets every Slow call, now and later, answer at once.
    pub fn let_all_through(&self) {
        // A closed semaphore answers every acquire at once.
        self.releases.close();
    }

    /// Holds one call until released; counted while it waits, even when the caller gives up.
    async fn hold(&self) {
        self.held.send_modify(|held| *held += 1);
        let _counted = Uncount(self.held.clone());
        if let Ok(permit) = self.releases.acquire().await {
            permit.forget();
        }
    }
}

/// Takes one held call off the count when dropped.
struct Uncount(Arc<watch::Sender<usize>>);

impl Drop for Uncount {
    fn drop(&mut self) {
        self.0.send_modify(|held| *held -= 1);
    }
}

/// The running echo upstream.
pub struct Upstream {
    /// Where it listens.
    pub address: SocketAddr,
    /// What it saw.
    pub calls: Calls,
    /// Its held Slow calls.
    pub slow: SlowCalls,
    /// Its `grpc.health.v1` statuses; the echo service starts SERVING.
    pub health: HealthReporter,
}

/// Starts the echo upstream on a free port, with a health service.
pub async fn echo_upstream(pool: &DescriptorPool) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let calls = Calls::default();
    let slow = SlowCalls::default();
    let service = EchoUpstream {
        service: pool.get_service_by_name(ECHO_SERVICE).expect("the echo service is described"),
        calls: calls.clone(),
        slow: slow.clone(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status(ECHO_SERVICE, ServingStatus::Serving).await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Upstream { address, calls, slow, health }
}

/// Sends `request` as written to the gateway at `base` over HTTP/1.1 and
/// answers everything it sends back; `request` should ask for `connection: close`.
/// For what an HTTP client would not send, such as a chunked body without a length.
pub async fn raw_http(base: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(PATIENCE, exchange).await.expect("the gateway answers and closes")
}

/// A local address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[derive(Clone)]
struct EchoUpstream {
    service: prost_reflect::ServiceDescriptor,
    calls: Calls,
    slow: SlowCalls,
}

impl NamedService for EchoUpstream {
    const NAME: &'static str = ECHO_SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoUpstream {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let name = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let method = self.service.methods().find(|m| m.name() == name);
        let calls = self.calls.clone();
        let slow = self.slow.clone();
        Box::pin(async move {
            let Some(method) = method else {
                return Ok(tonic::Status::unimplemented(name).into_http());
            };
            let mut grpc = tonic::server::Grpc::new(DynamicCodec::new(method.input()));
            let answer = Answer { method: method.clone(), calls, slow };
            if method.is_client_streaming() {
                Ok(grpc.client_streaming(answer, request).await)
            } else {
                Ok(grpc.unary(answer, request).await)
            }
        })
    }
}

struct Answer {
    method: MethodDescriptor,
    calls: Calls,
    slow: SlowCalls,
}

/// The ASCII metadata of a request.
fn ascii_metadata(metadata: &tonic::metadata::MetadataMap) -> HashMap<String, String> {
    metadata
        .iter()
        .filter_map(|entry| match entry {
            tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
                Some((key.as_str().to_string(), value.to_str().ok()?.to_string()))
            }
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect()
}

/// A message as proto3 JSON with proto names and defaults.
fn recorded(message: &DynamicMessage) -> serde_json::Value {
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
    message.serialize_with_options(serde_json::value::Serializer, &options).unwrap()
}

impl tonic::server::UnaryService<DynamicMessage> for Answer {
    type Response = DynamicMessage;
    type Future = BoxFuture<Result<tonic::Response<DynamicMessage>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        let method = self.method.clone();
        let calls = self.calls.clone();
        let slow = self.slow.clone();
        Box::pin(async move {
            let metadata = ascii_metadata(request.metadata());
            let message = request.into_inner();
            let json = recorded(&message);
            calls.0.lock().unwrap().push(Call { method: method.name().to_string(), metadata, request: json });
            if method.name() == "Slow" {
                slow.hold().await;
            }
            answer(&method, message).map(tonic::Response::new)
        })
    }
}

impl tonic::server::ClientStreamingService<DynamicMessage> for Answer {
    type Response = DynamicMessage;
    type Future = BoxFuture<Result<tonic::Response<DynamicMessage>, tonic::Status>>;

    /// Records the messages as a JSON array; answers their ids and shelf names.
    fn call(&mut self, request: tonic::Request<tonic::Streaming<DynamicMessage>>) -> Self::Future {
        let method = self.method.clone();
        let calls = self.calls.clone();
        Box::pin(async move {
            let metadata = ascii_metadata(request.metadata());
            let mut stream = request.into_inner();
            let mut messages = Vec::new();
            while let Some(message) = stream.message().await? {
                messages.push(message);
            }
            let json = messages.iter().map(recorded).collect();
            calls.0.lock().unwrap().push(Call { method: method.name().to_string(), metadata, request: json });
            let text = |message: &DynamicMessage, path: &[&str]| {
                let mut value = recorded(message);
                for step in path {
                    value = value[step].take();
                }
                Value::String(value.as_str().unwrap_or_default().to_string())
            };
            let mut response = DynamicMessage::new(method.output());
            response.set_field_by_name("ids", Value::List(messages.iter().map(|m| text(m, &["id"])).collect()));
            let shelves = messages.iter().map(|m| text(m, &["shelf", "name"])).collect();
            response.set_field_by_name("shelves", Value::List(shelves));
            Ok(tonic::Response::new(response))
        })
    }
}

/// Echo when the types agree; a listing for ListItems; the asked-for status for Fail; nothing for Slow.
fn answer(method: &MethodDescriptor, request: DynamicMessage) -> Result<DynamicMessage, tonic::Status> {
    let output = method.output();
    match method.name() {
        // Code 0 is OK: an empty answer, as a status cannot be OK and an error at once.
        "Fail" if request.get_field_by_name("code").and_then(|v| v.as_i32()) == Some(0) => {
            Ok(DynamicMessage::new(output))
        }
        "Fail" => Err(failure(&request)),
        "ListItems" => {
            let mut response = DynamicMessage::new(output.clone());
            let item = output.get_field_by_name("items").unwrap().kind();
            let item = item.as_message().unwrap();
            let items = ["a", "b"]
                .iter()
                .map(|id| {
                    let mut message = DynamicMessage::new(item.clone());
                    message.set_field_by_name("id", Value::String(id.to_string()));
                    Value::Message(message)
                })
                .collect();
            response.set_field_by_name("items", Value::List(items));
            let token = request.get_field_by_name("page_token").map(|v| v.as_str().unwrap_or("").to_string());
            response.set_field_by_name("next_page_token", Value::String(format!("{}next", token.unwrap_or_default())));
            Ok(response)
        }
        "Slow" => Ok(DynamicMessage::new(output)),
        _ if output == request.descriptor() => Ok(request),
        _ => Ok(DynamicMessage::new(output)),
    }
}

fn failure(request: &DynamicMessage) -> tonic::Status {
    let int = |name: &str| request.get_field_by_name(name).and_then(|v| v.as_i32()).unwrap_or(0);
    let text =
        |name: &str| request.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let code = tonic::Code::from_i32(int("code"));
    let mut details = tonic_types::ErrorDetails::new();
    if !text("field").is_empty() {
        details.add_bad_request_violation(text("field"), "is wrong");
    }
    if int("retry_after_seconds") > 0 {
        details.set_retry_info(Some(Duration::from_secs(int("retry_after_seconds") as u64)));
    }
    <tonic::Status as tonic_types::StatusExt>::with_error_details(code, text("message"), details)
}

/// The development secret test gateways verify HS256 tokens with.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// A gateway in front of the echo upstream, and what the upstream saw.
pub struct Running {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// The admin port's `http://127.0.0.1:port` (`/metrics`, `/healthz`).
    pub admin: String,
    /// Calls that reached the upstream.
    pub calls: Calls,
    /// The upstream's held Slow calls.
    pub slow: SlowCalls,
    /// The upstream's health statuses.
    pub health: HealthReporter,
    /// A client that ignores proxies.
    pub client: reqwest::Client,
}

impl Running {
    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with a token holding every scope.
    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.client.request(method, self.url(path)).bearer_auth(token(&ALL_SCOPES))
    }

    /// Sends `method path` with every scope and `body` as JSON (none when `None`).
    pub async fn send(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
        let request = self.request(method, path);
        let request = match body {
            Some(body) => request.header("content-type", "application/json").body(body.to_string()),
            None => request,
        };
        Reply::of(request.send().await.unwrap()).await
    }
}

/// A gateway's answer, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub text: String,
    /// The body as JSON; `Null` when it is not JSON.
    pub json: serde_json::Value,
}

impl Reply {
    /// Sends `request` and reads the answer whole.
    pub async fn send(request: reqwest::RequestBuilder) -> Self {
        Self::of(request.send().await.unwrap()).await
    }

    /// Reads `response` whole.
    pub async fn of(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Self { status, headers, text, json }
    }

    /// A header's value as text; panics when it is missing.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header in {self:?}")).to_str().unwrap()
    }

    /// The field the first BadRequest violation names.
    pub fn violated_field(&self) -> &str {
        let detail = &self.json["details"][0];
        assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.BadRequest", "{self:?}");
        detail["field_violations"][0]["field"].as_str().unwrap_or_else(|| panic!("no field violation in {self:?}"))
    }
}

/// Settings for a test gateway in front of `upstream`, with the development secret.
pub fn config(upstream: SocketAddr) -> gateway::Config {
    let mut config = gateway::Config {
        upstreams: [(ECHO_SERVICE.to_string(), format!("http://{upstream}"))].into(),
        ..Default::default()
    };
    config.auth.development_secret = Some(kit::auth::Secret::new(SECRET.into()));
    config
}

/// Starts the echo upstream and a gateway in front of it; `adjust` changes the settings first.
pub async fn start_with(adjust: impl FnOnce(&mut gateway::Config)) -> Running {
    let pool = test_pool();
    let Upstream { address, calls, slow, health } = echo_upstream(&pool).await;
    let mut config = config(address);
    adjust(&mut config);
    let metrics = kit::metrics::Metrics::new();
    let gateway = gateway::Gateway::new(&pool, config, &metrics).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // The gateway's own server (timeouts included), as `serve gateway` runs it.
    tokio::spawn(async move { gateway::serve(listener, gateway, kit::shutdown::Shutdown::new()).await.unwrap() });
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("http://{}", admin_listener.local_addr().unwrap());
    tokio::spawn(kit::metrics::serve_admin(admin_listener, metrics, std::future::pending()));
    Running { base, admin, calls, slow, health, client: reqwest::Client::builder().no_proxy().build().unwrap() }
}

/// Starts the echo upstream and a gateway with the default settings.
pub async fn start() -> Running {
    start_with(|_| {}).await
}

/// A development token for subject `tester` with `scopes`.
pub fn token(scopes: &[&str]) -> String {
    token_for("tester", scopes)
}

/// A development token for `subject` with `scopes`.
pub fn token_for(subject: &str, scopes: &[&str]) -> String {
    let claims = kit::auth::DevelopmentClaims {
        issuer: "commerce-mesh".into(),
        audience: "commerce-mesh".into(),
        subject: subject.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl: Duration::from_secs(600),
    };
    kit::auth::mint_development_token(&kit::auth::Secret::new(SECRET.into()), &claims).unwrap()
}

/// Every scope the test service uses.
pub const ALL_SCOPES: [&str; 4] = ["items:read", "items:write", "items:archive", "other:unused"];
