//! How a gRPC component protects itself: a deadline on every call and a limit
//! on the calls it runs at once, as one tower layer ([`ProtectLayer`]) that
//! [`crate::serve::GrpcServer`] puts in front of every service.
//!
//! - **Load shedding.** At most `max_concurrent_rpcs` calls run at once; one
//!   more is refused at once with UNAVAILABLE and `RetryInfo` (the gateway's
//!   503 with `Retry-After`), so a flood costs the component a refusal per
//!   call instead of queueing until memory or the database pool runs out.
//! - **Deadline.** A unary call that has not answered within `rpc_timeout`
//!   (or the caller's `grpc-timeout`, when shorter) ends DEADLINE_EXCEEDED
//!   and its handler is dropped. Streaming calls (an import of millions of
//!   rows is one call) run as long as their caller's deadline allows. tonic's
//!   transport enforces the caller's deadline too, outside this layer, and
//!   answers CANCELLED if its timer fires first; the caller's own client
//!   gives up at that moment anyway.
//!
//! Health checks and reflection are neither shed nor timed out: load
//! balancers and operators must still see a busy component.
//!
//! Both answer with a gRPC status in the response headers (trailers-only), so
//! the trace and metrics layers record them like any other status; tonic would
//! turn a layer's error into UNKNOWN instead.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::body::Body;

/// How long a shed caller is asked to wait before trying again.
pub const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Services that are never shed or timed out: a load balancer's health checks
/// and an operator's reflection must get through a busy component.
pub const UNPROTECTED_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// What a [`ProtectLayer`] enforces.
#[derive(Clone, Debug)]
pub struct Protection {
    /// Calls run at once; more are refused. At least one.
    pub max_concurrent_rpcs: usize,
    /// The longest a unary call may run; zero: only the caller's deadline.
    pub rpc_timeout: Duration,
    /// Full method paths (`/package.Service/Method`) without the server's
    /// deadline: the streaming ones.
    pub streaming_methods: HashSet<String>,
}

/// The protections, shared by every connection's copy of the service.
#[derive(Debug)]
struct Shared {
    permits: Arc<Semaphore>,
    limit: usize,
    rpc_timeout: Option<Duration>,
    streaming_methods: HashSet<String>,
}

/// Load shedding and a per-call deadline, in that order (see the module docs).
#[derive(Clone, Debug)]
pub struct ProtectLayer(Arc<Shared>);

impl ProtectLayer {
    /// A layer enforcing `protection`; its permits are shared by every service it wraps.
    pub fn new(protection: Protection) -> Self {
        let limit = protection.max_concurrent_rpcs.max(1);
        Self(Arc::new(Shared {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            rpc_timeout: Some(protection.rpc_timeout).filter(|timeout| !timeout.is_zero()),
            streaming_methods: protection.streaming_methods,
        }))
    }

    /// Calls running now under the limit (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.0.limit - self.0.permits.available_permits()
    }
}

impl<S> tower::Layer<S> for ProtectLayer {
    type Service = Protect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Protect { inner, shared: Arc::clone(&self.0) }
    }
}

/// The service [`ProtectLayer`] makes.
#[derive(Clone, Debug)]
pub struct Protect<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// `/package.Service/Method` → `package.Service`.
pub(crate) fn service_of(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.rsplit_once('/').map_or(path, |(service, _)| service)
}

impl<S, B> tower::Service<Request<B>> for Protect<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Protected<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if UNPROTECTED_SERVICES.contains(&service_of(path)) {
            return Protected::running(self.inner.call(request), None, None);
        }
        let deadline = if self.shared.streaming_methods.contains(path) {
            None
        } else {
            earlier(
                self.shared.rpc_timeout.map(Deadline::Server),
                caller_timeout(request.headers()).map(Deadline::Caller),
            )
        };
        let Ok(permit) = Arc::clone(&self.shared.permits).try_acquire_owned() else {
            let status = crate::error::with_retry_info(
                tonic::Code::Unavailable,
                format!("the server is at its limit of {} calls at once; retry shortly", self.shared.limit),
                SHED_RETRY_AFTER,
            );
            return Protected::answered(status.into_http());
        };
        Protected::running(self.inner.call(request), Some(permit), deadline)
    }
}

/// Whose deadline a call runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    /// The server's `rpc_timeout`.
    Server(Duration),
    /// The caller's `grpc-timeout`, shorter than the server's.
    Caller(Duration),
}

impl Deadline {
    fn duration(self) -> Duration {
        match self {
            Self::Server(duration) | Self::Caller(duration) => duration,
        }
    }

    fn status(self) -> tonic::Status {
        tonic::Status::deadline_exceeded(match self {
            Self::Server(limit) => format!("the call did not finish within the server's limit of {limit:?}"),
            Self::Caller(limit) => format!("the call did not finish within the caller's deadline of {limit:?}"),
        })
    }
}

/// The shorter of two deadlines; the server's on a tie.
fn earlier(server: Option<Deadline>, caller: Option<Deadline>) -> Option<Deadline> {
    match (server, caller) {
        (Some(server), Some(caller)) if caller.duration() < server.duration() => Some(caller),
        (Some(server), _) => Some(server),
        (None, caller) => caller,
    }
}

/// The caller's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit).
fn caller_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

pin_project_lite::pin_project! {
    /// A protected call: answered already (shed), or running under its permit
    /// and deadline. No allocation besides the permit's body wrapper.
    pub struct Protected<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProjection]
    enum State<F> {
        // Refused before it ran; the refusal until it is handed out.
        Answered { response: Option<Response<Body>> },
        Running {
            #[pin]
            call: F,
            // Fires at the deadline, if the call has one.
            #[pin]
            timer: Option<Sleep>,
            deadline: Option<Deadline>,
            // Held while the call runs and its answer streams out.
            permit: Option<OwnedSemaphorePermit>,
        },
    }
}

impl<F> Protected<F> {
    fn running(call: F, permit: Option<OwnedSemaphorePermit>, deadline: Option<Deadline>) -> Self {
        let timer = deadline.map(|deadline| tokio::time::sleep(deadline.duration()));
        Self { state: State::Running { call, timer, deadline, permit } }
    }

    fn answered(response: Response<Body>) -> Self {
        Self { state: State::Answered { response: Some(response) } }
    }
}

impl<F, E> Future for Protected<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Answered { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| tonic::Status::internal("polled twice").into_http())))
            }
            StateProjection::Running { call, timer, deadline, permit } => {
                if let Poll::Ready(answer) = call.poll(cx) {
                    // The permit stays taken while the answer streams out.
                    return Poll::Ready(answer.map(|response| match permit.take() {
                        Some(permit) => response.map(|body| Body::new(Holding { body, permit: Some(permit) })),
                        None => response,
                    }));
                }
                if let (Some(timer), Some(deadline)) = (timer.as_pin_mut(), *deadline) {
                    std::task::ready!(timer.poll(cx));
                    // Dropping this future (the server does once it has the
                    // answer) drops the handler and frees the permit.
                    return Poll::Ready(Ok(deadline.status().into_http()));
                }
                Poll::Pending
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call's permit until it ends or is dropped.
    struct Holding {
        #[pin]
        body: Body,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    fn request(path: &str, grpc_timeout: Option<&str>) -> Request<Body> {
        let mut request = Request::builder().uri(format!("http://localhost{path}"));
        if let Some(timeout) = grpc_timeout {
            request = request.header("grpc-timeout", timeout);
        }
        request.body(Body::empty()).unwrap()
    }

    fn status_of(response: &Response<Body>) -> tonic::Status {
        tonic::Status::from_header_map(response.headers()).expect("a trailers-only status")
    }

    /// A handler that never answers.
    fn hanging() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
        tower::service_fn(|_: Request<Body>| std::future::pending::<Result<Response<Body>, Infallible>>())
    }

    fn protection(max_concurrent_rpcs: usize, rpc_timeout: Duration) -> Protection {
        Protection { max_concurrent_rpcs, rpc_timeout, streaming_methods: HashSet::new() }
    }

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        let parse = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            caller_timeout(&headers)
        };
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S", "S1"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_shorter_deadline_wins() {
        let server = Some(Deadline::Server(Duration::from_secs(30)));
        let shorter = Some(Deadline::Caller(Duration::from_secs(1)));
        let longer = Some(Deadline::Caller(Duration::from_secs(60)));
        assert_eq!(earlier(server, shorter), shorter);
        assert_eq!(earlier(server, longer), server);
        assert_eq!(earlier(server, None), server);
        assert_eq!(earlier(None, longer), longer);
        assert_eq!(earlier(None, None), None);
    }

    #[tokio::test]
    async fn a_call_past_the_servers_limit_ends_deadline_exceeded() {
        let mut service = ProtectLayer::new(protection(4, Duration::from_millis(100))).layer(hanging());
        let response = service.ready().await.unwrap().call(request("/a.B/C", None)).await.unwrap();
        let status = status_of(&response);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("server's limit of 100ms"), "{}", status.message());
    }

    #[tokio::test]
    async fn a_callers_shorter_grpc_timeout_wins_and_is_named() {
        let mut service = ProtectLayer::new(protection(4, Duration::from_secs(3600))).layer(hanging());
        let response = service.ready().await.unwrap().call(request("/a.B/C", Some("100m"))).await.unwrap();
        let status = status_of(&response);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("caller's deadline of 100ms"), "{}", status.message());
    }

    #[tokio::test]
    async fn streaming_methods_and_health_run_without_the_servers_deadline() {
        let layer = ProtectLayer::new(Protection {
            streaming_methods: ["/a.B/Stream".to_string()].into(),
            ..protection(4, Duration::from_millis(20))
        });
        let mut service = layer.layer(hanging());
        for path in ["/a.B/Stream", "/grpc.health.v1.Health/Watch"] {
            let call = service.ready().await.unwrap().call(request(path, None));
            // Ten times the server's limit: a call under it would have been answered.
            let outcome = tokio::time::timeout(Duration::from_millis(200), call).await;
            assert!(outcome.is_err(), "{path} was cut off");
        }
    }

    #[tokio::test]
    async fn over_the_limit_a_call_is_refused_at_once_with_retry_info_and_health_is_not() {
        let layer = ProtectLayer::new(protection(1, Duration::ZERO));
        let mut service = layer.layer(hanging());
        let held = service.ready().await.unwrap().call(request("/a.B/C", None));
        assert_eq!(layer.in_flight(), 1);

        let response = service.ready().await.unwrap().call(request("/a.B/C", None)).await.unwrap();
        let status = status_of(&response);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(crate::error::retry_after(&status), Some(SHED_RETRY_AFTER));

        let health = service.ready().await.unwrap().call(request("/grpc.health.v1.Health/Check", None));
        assert_eq!(layer.in_flight(), 1, "health takes no permit");
        drop(health);
        drop(held);
        assert_eq!(layer.in_flight(), 0, "a dropped call frees its permit");
    }

    #[tokio::test]
    async fn the_permit_is_held_until_the_answer_has_streamed_out() {
        let layer = ProtectLayer::new(protection(1, Duration::ZERO));
        let answering = tower::service_fn(|_: Request<Body>| async {
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"answer"));
            Ok::<_, Infallible>(Response::new(Body::new(body)))
        });
        let mut service = layer.layer(answering);
        let response = service.ready().await.unwrap().call(request("/a.B/C", None)).await.unwrap();
        assert_eq!(layer.in_flight(), 1, "the body has not been sent yet");
        let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
        assert_eq!(body.to_bytes(), "answer");
        assert_eq!(layer.in_flight(), 0);
    }
}
