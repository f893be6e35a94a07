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
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;

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

    /// The last call.
    pub fn last(&self) -> Call {
        self.0.lock().unwrap().last().cloned().expect("the upstream was called")
    }
}

/// Starts the echo upstream on a free port.
pub async fn echo_upstream(pool: &DescriptorPool) -> (SocketAddr, Calls) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let calls = Calls::default();
    let service = EchoUpstream {
        service: pool.get_service_by_name(ECHO_SERVICE).expect("the echo service is described"),
        calls: calls.clone(),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (address, calls)
}

#[derive(Clone)]
struct EchoUpstream {
    service: prost_reflect::ServiceDescriptor,
    calls: Calls,
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
        Box::pin(async move {
            let Some(method) = method else {
                return Ok(tonic::Status::unimplemented(name).into_http());
            };
            let mut grpc = tonic::server::Grpc::new(DynamicCodec::new(method.input()));
            Ok(grpc.unary(Answer { method, calls }, request).await)
        })
    }
}

struct Answer {
    method: MethodDescriptor,
    calls: Calls,
}

impl tonic::server::UnaryService<DynamicMessage> for Answer {
    type Response = DynamicMessage;
    type Future = BoxFuture<Result<tonic::Response<DynamicMessage>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        let method = self.method.clone();
        let calls = self.calls.clone();
        Box::pin(async move {
            let metadata = request
                .metadata()
                .iter()
                .filter_map(|entry| match entry {
                    tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
                        Some((key.as_str().to_string(), value.to_str().ok()?.to_string()))
                    }
                    tonic::metadata::KeyAndValueRef::Binary(..) => None,
                })
                .collect();
            let message = request.into_inner();
            let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
            let json = message.serialize_with_options(serde_json::value::Serializer, &options).unwrap();
            calls.0.lock().unwrap().push(Call { method: method.name().to_string(), metadata, request: json });
            answer(&method, message).map(tonic::Response::new)
        })
    }
}

/// Echo when the types agree; a listing for ListItems; the asked-for status for Fail.
fn answer(method: &MethodDescriptor, request: DynamicMessage) -> Result<DynamicMessage, tonic::Status> {
    let output = method.output();
    match method.name() {
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
    /// Calls that reached the upstream.
    pub calls: Calls,
    /// A client that ignores proxies.
    pub client: reqwest::Client,
}

impl Running {
    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Settings for a test gateway in front of `upstream`, with the development secret.
pub fn config(upstream: SocketAddr) -> gateway::Config {
    let mut config = gateway::Config {
        upstreams: [(ECHO_SERVICE.to_string(), format!("http://{upstream}"))].into(),
        ..Default::default()
    };
    config.auth.development_secret = Some(gateway::auth::Secret::new(SECRET.into()));
    config
}

/// Starts the echo upstream and a gateway in front of it; `adjust` changes the settings first.
pub async fn start_with(adjust: impl FnOnce(&mut gateway::Config)) -> Running {
    let pool = test_pool();
    let (upstream, calls) = echo_upstream(&pool).await;
    let mut config = config(upstream);
    adjust(&mut config);
    let gateway = gateway::Gateway::new(&pool, config, &kit::metrics::Metrics::new()).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = gateway.router().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Running { base, calls, client: reqwest::Client::builder().no_proxy().build().unwrap() }
}

/// Starts the echo upstream and a gateway with the default settings.
pub async fn start() -> Running {
    start_with(|_| {}).await
}

/// A development token for subject `tester` with `scopes`.
pub fn token(scopes: &[&str]) -> String {
    let claims = gateway::auth::DevelopmentClaims {
        issuer: "commerce-mesh".into(),
        audience: "commerce-mesh".into(),
        subject: "tester".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl: Duration::from_secs(600),
    };
    gateway::auth::mint_development_token(&gateway::auth::Secret::new(SECRET.into()), &claims).unwrap()
}

/// Every scope the test service uses.
pub const ALL_SCOPES: [&str; 4] = ["items:read", "items:write", "items:archive", "other:unused"];
