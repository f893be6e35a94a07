//! The development LMS: a stand-in for Open edX's OAuth2, enrollment and
//! entitlement endpoints, so the quickstart works without an Open edX install
//! (`commerce-mesh dev-lms`, or `up --with-dev-lms`).
//!
//! It answers the requests Fulfillment's [`fulfillment::lms::LmsClient`] makes
//! and keeps what it is told in memory, listed at `GET /dev/enrollments` and
//! `GET /dev/entitlements`. Nothing goes anywhere: it is a development aid,
//! never on unless asked (`dev_lms.enabled`).
//!
//! | endpoint | answers |
//! |---|---|
//! | `POST /oauth2/access_token` | form `grant_type=client_credentials`, `client_id`, `client_secret`, `token_type=jwt`: a token for `Authorization: JWT <token>` (401 for other credentials) |
//! | `POST /api/enrollment/v1/enrollment` | enrolls (a repeat for the same user and course updates the mode; `"is_active": false` deactivates) |
//! | `POST /api/entitlements/v1/entitlements/` | grants an entitlement with a fresh uuid (201) |
//! | `DELETE /api/entitlements/v1/entitlements/{uuid}/` | expires it (204; 404 when there is none) |
//! | `GET /api/entitlements/v1/entitlements/?user=&course_uuid=` | `{"results": [...]}` |
//! | `GET /dev/enrollments`, `GET /dev/entitlements` | everything recorded |

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, MatchedPath, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use kit::secret::Secret;
use kit::shutdown::Shutdown;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;
use tracing::field::Empty;

/// The development OAuth2 client id (`up --with-dev-lms` gives it to Fulfillment).
pub const CLIENT_ID: &str = "commerce-mesh-dev-client";
/// The development OAuth2 client secret: public on purpose, this LMS guards nothing.
pub const CLIENT_SECRET: &str = "commerce-mesh-dev-secret";
/// How long an issued access token is accepted, in seconds (Open edX's default).
pub const TOKEN_LIFETIME_SECONDS: u64 = 3600;
/// The scope every issued token carries.
const TOKEN_SCOPE: &str = "read write enrollments:write entitlements:write";

/// The development LMS's settings (`dev_lms.*`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DevLmsConfig {
    /// `up` starts it in-process and points Fulfillment at it; never on unless asked.
    pub enabled: bool,
    /// Where it listens.
    pub listen: SocketAddr,
    /// How long each enrollment or entitlement waits before it is answered:
    /// a real LMS's latency, for benchmarks (`orders_load`). 0 by default.
    #[serde(with = "humantime_serde")]
    pub answer_delay: Duration,
}

impl Default for DevLmsConfig {
    fn default() -> Self {
        Self { enabled: false, listen: SocketAddr::from(([127, 0, 0, 1], 18000)), answer_delay: Duration::ZERO }
    }
}

/// The OAuth2 client the development LMS accepts; `Debug` never shows the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
}

impl Credentials {
    /// [`CLIENT_ID`] and [`CLIENT_SECRET`].
    pub fn development() -> Self {
        Self { client_id: CLIENT_ID.into(), client_secret: Secret::new(CLIENT_SECRET.into()) }
    }
}

/// Why the development LMS could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DevLmsError {
    /// The listen address is taken or invalid.
    #[error("development LMS: cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("development LMS: {0}")]
    Serve(#[source] std::io::Error),
    /// The server's task panicked.
    #[error("development LMS crashed: {0}")]
    Crashed(#[from] tokio::task::JoinError),
}

/// One recorded course-run enrollment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DevEnrollment {
    /// The learner's username.
    pub user: String,
    /// The course mode, such as `verified`.
    pub mode: String,
    /// Whether the enrollment is active.
    pub is_active: bool,
    /// The course run.
    pub course_details: CourseDetails,
    /// The `enrollment_attributes` sent (order number, source system...), as sent.
    #[serde(default)]
    pub enrollment_attributes: Vec<Value>,
}

/// The course run an enrollment is for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CourseDetails {
    /// The course run key, such as `course-v1:edX+DemoX+Demo_Course`.
    pub course_id: String,
}

/// One recorded course entitlement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevEntitlement {
    /// The entitlement's id, a fresh v4 uuid.
    pub uuid: String,
    /// The learner's username.
    pub user: String,
    /// The course (not a run).
    pub course_uuid: String,
    /// The course mode, such as `verified`.
    pub mode: String,
    /// The order that bought it; empty when none was sent.
    pub order_number: String,
    /// Whether it was expired (`DELETE`, after a refund); listed only once true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

/// What the development LMS has been told, in memory.
#[derive(Default)]
struct Records {
    /// Issued access tokens and when each stops being accepted.
    tokens: HashMap<String, Instant>,
    tokens_issued: u64,
    /// By (user, course run): a repeat updates the one enrollment.
    enrollments: BTreeMap<(String, String), DevEnrollment>,
    /// In the order granted.
    entitlements: Vec<DevEntitlement>,
}

struct Shared {
    credentials: Credentials,
    records: Mutex<Records>,
    /// [`DevLmsConfig::answer_delay`], in microseconds.
    answer_delay_micros: AtomicU64,
}

impl Shared {
    fn records(&self) -> MutexGuard<'_, Records> {
        // Every update leaves the records consistent, so a panicked holder poisons nothing.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running development LMS; its server stops when the `shutdown` it was started with is cancelled.
pub struct DevLms {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<Result<(), DevLmsError>>,
}

impl std::fmt::Debug for DevLms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevLms").field("address", &self.address).finish_non_exhaustive()
    }
}

/// Binds `address` for [`DevLms::start`].
pub async fn bind(address: SocketAddr) -> Result<TcpListener, DevLmsError> {
    TcpListener::bind(address).await.map_err(|source| DevLmsError::Bind { address, source })
}

impl DevLms {
    /// Serves on `listener`, accepting `credentials`, until `shutdown` is cancelled.
    /// Must be called within a Tokio runtime.
    pub fn start(listener: TcpListener, credentials: Credentials, shutdown: Shutdown) -> Result<Self, DevLmsError> {
        let address = listener.local_addr().map_err(DevLmsError::Serve)?;
        let shared = Arc::new(Shared {
            credentials,
            records: Mutex::new(Records::default()),
            answer_delay_micros: AtomicU64::new(0),
        });
        let app = router(shared.clone());
        tracing::warn!(
            url = %format!("http://{address}"),
            "development LMS on http://{address}: enrollments are kept in memory and go nowhere; not for production"
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .map_err(DevLmsError::Serve)
        });
        Ok(Self { address, shared, server })
    }

    /// Binds `address` and [`DevLms::start`]s there.
    pub async fn bind_and_start(
        address: SocketAddr,
        credentials: Credentials,
        shutdown: Shutdown,
    ) -> Result<Self, DevLmsError> {
        Self::start(bind(address).await?, credentials, shutdown)
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://host:port`: the `fulfillment.lms.url` that reaches it.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every enrollment recorded, by user then course run.
    pub fn enrollments(&self) -> Vec<DevEnrollment> {
        self.shared.records().enrollments.values().cloned().collect()
    }

    /// Every entitlement granted, oldest first.
    pub fn entitlements(&self) -> Vec<DevEntitlement> {
        self.shared.records().entitlements.clone()
    }

    /// How many access tokens it has issued.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.records().tokens_issued
    }

    /// Makes every enrollment and entitlement wait `delay` before it is answered.
    pub fn delay_answers(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.answer_delay_micros.store(micros, Ordering::Relaxed);
    }

    /// Forgets every issued token, as a restarted LMS would: the next call with one is a 401.
    pub fn revoke_tokens(&self) {
        self.shared.records().tokens.clear();
    }

    /// Waits until the server has stopped (after `shutdown` is cancelled).
    pub async fn wait(self) -> Result<(), DevLmsError> {
        self.server.await?
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(about))
        .route("/oauth2/access_token", post(issue_token))
        .route("/api/enrollment/v1/enrollment", post(enroll))
        .route("/api/entitlements/v1/entitlements/", post(grant_entitlement).get(list_entitlements))
        .route("/api/entitlements/v1/entitlements/{uuid}/", delete(expire_entitlement))
        .route("/dev/enrollments", get(recorded_enrollments))
        .route("/dev/entitlements", get(recorded_entitlements))
        // A route layer: the matched route is known, and names the span.
        .route_layer(middleware::from_fn(traced))
        .with_state(shared)
}

/// Runs a request in a SERVER span (OpenTelemetry HTTP server conventions) continuing the caller's trace.
async fn traced(route: MatchedPath, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let span = tracing::info_span!(
        "dev_lms",
        otel.name = %format_args!("{method} {}", route.as_str()),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route.as_str(),
        url.path = request.uri().path(),
        http.response.status_code = Empty,
        mesh.component = "dev-lms",
    );
    if !span.is_disabled() {
        let header =
            |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        kit::trace::TextContext { traceparent: header("traceparent"), tracestate: header("tracestate") }
            .set_parent_of(&span);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

async fn about() -> &'static str {
    "This is the commerce-mesh DEVELOPMENT LMS, not Open edX: enrollments are kept in memory and go nowhere.\n"
}

/// The token request's form; every field optional so a missing one is named in the answer.
#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token_type: Option<String>,
}

/// An OAuth2 error answer (RFC 6749 section 5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

async fn issue_token(State(shared): State<Arc<Shared>>, form: Result<Form<TokenForm>, FormRejection>) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected an application/x-www-form-urlencoded body",
        );
    };
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant_type must be client_credentials");
    }
    // Absent means JWT too; anything else is a client bug worth seeing here rather than at a real LMS.
    if form.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("jwt")) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token_type must be jwt");
    }
    let credentials = &shared.credentials;
    if form.client_id.as_deref() != Some(credentials.client_id.as_str())
        || form.client_secret.as_deref() != Some(credentials.client_secret.expose())
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client_id or wrong client_secret");
    }
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let now = Instant::now();
    {
        let mut records = shared.records();
        records.tokens.retain(|_, expires| *expires > now);
        records.tokens.insert(token.clone(), now + Duration::from_secs(TOKEN_LIFETIME_SECONDS));
        records.tokens_issued += 1;
    }
    Json(json!({
        "access_token": token,
        "token_type": "JWT",
        "expires_in": TOKEN_LIFETIME_SECONDS,
        "scope": TOKEN_SCOPE,
    }))
    .into_response()
}

/// Why an API call is refused: a 401 or a 400, with Open edX's bodies.
enum Refusal {
    /// No usable `Authorization: JWT <token>`: `{"detail": ...}`.
    Unauthorized(&'static str),
    /// The body is not what the endpoint takes: `{"message": ...}` naming the field.
    BadRequest(String),
    /// No such thing: `{"detail": "Not found."}`, as Django REST framework answers.
    NotFound,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(detail) => {
                let mut response = (StatusCode::UNAUTHORIZED, Json(json!({"detail": detail}))).into_response();
                response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("JWT realm=\"api\""));
                response
            }
            Refusal::BadRequest(message) => {
                (StatusCode::BAD_REQUEST, Json(json!({"message": message}))).into_response()
            }
            Refusal::NotFound => (StatusCode::NOT_FOUND, Json(json!({"detail": "Not found."}))).into_response(),
        }
    }
}

/// Accepts only `Authorization: JWT <a token issued and not expired>`.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(Refusal::Unauthorized("Authentication credentials were not provided."));
    };
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("JWT ")).map(str::trim);
    let Some(token) = token else {
        return Err(Refusal::Unauthorized("Authorization must be `JWT <access token>`."));
    };
    match shared.records().tokens.get(token) {
        Some(expires) if *expires > Instant::now() => Ok(()),
        _ => Err(Refusal::Unauthorized("Unknown or expired access token.")),
    }
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Refusal::BadRequest("the body must be a JSON object".into())),
        Err(e) => Err(Refusal::BadRequest(format!("the body is not JSON: {e}"))),
    }
}

/// The non-empty string at `field`, or the 400 that names it.
fn required_string(object: &serde_json::Map<String, Value>, field: &str, path: &str) -> Result<String, Refusal> {
    match object.get(field) {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.clone()),
        _ => Err(Refusal::BadRequest(format!("{path} is required (a non-empty string)"))),
    }
}

/// Waits the configured answer delay, as a real LMS takes its time.
async fn answer_delay(shared: &Shared) {
    let micros = shared.answer_delay_micros.load(Ordering::Relaxed);
    if micros > 0 {
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }
}

async fn enroll(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<DevEnrollment>, Refusal> {
    answer_delay(&shared).await;
    authenticate(&shared, &headers)?;
    let object = parse_object(&body)?;
    let user = required_string(&object, "user", "user")?;
    let mode = required_string(&object, "mode", "mode")?;
    let course_id = match object.get("course_details") {
        Some(Value::Object(details)) => required_string(details, "course_id", "course_details.course_id")?,
        _ => return Err(Refusal::BadRequest("course_details.course_id is required (a non-empty string)".into())),
    };
    let is_active = match object.get("is_active") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(active)) => *active,
        Some(_) => return Err(Refusal::BadRequest("is_active must be true or false".into())),
    };
    let enrollment_attributes = match object.get("enrollment_attributes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(attributes)) => attributes.clone(),
        Some(_) => return Err(Refusal::BadRequest("enrollment_attributes must be a list".into())),
    };
    let enrollment = DevEnrollment {
        user: user.clone(),
        mode,
        is_active,
        course_details: CourseDetails { course_id: course_id.clone() },
        enrollment_attributes,
    };
    let what = if is_active { "development LMS: enrolled" } else { "development LMS: enrollment deactivated" };
    tracing::info!(user = %enrollment.user, course_id = %course_id, mode = %enrollment.mode, "{what}");
    shared.records().enrollments.insert((user, course_id), enrollment.clone());
    Ok(Json(enrollment))
}

async fn grant_entitlement(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<DevEntitlement>), Refusal> {
    answer_delay(&shared).await;
    authenticate(&shared, &headers)?;
    let object = parse_object(&body)?;
    let order_number = match object.get("order_number") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(number)) => number.clone(),
        Some(_) => return Err(Refusal::BadRequest("order_number must be a string".into())),
    };
    let entitlement = DevEntitlement {
        uuid: uuid::Uuid::new_v4().to_string(),
        user: required_string(&object, "user", "user")?,
        course_uuid: required_string(&object, "course_uuid", "course_uuid")?,
        mode: required_string(&object, "mode", "mode")?,
        order_number,
        expired: false,
    };
    tracing::info!(user = %entitlement.user, course_uuid = %entitlement.course_uuid, "development LMS: entitlement granted");
    shared.records().entitlements.push(entitlement.clone());
    Ok((StatusCode::CREATED, Json(entitlement)))
}

/// Expires an entitlement, as Open edX does for a refund.
async fn expire_entitlement(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Result<StatusCode, Refusal> {
    answer_delay(&shared).await;
    authenticate(&shared, &headers)?;
    let mut records = shared.records();
    let entitlement = records.entitlements.iter_mut().find(|e| e.uuid == uuid).ok_or(Refusal::NotFound)?;
    entitlement.expired = true;
    tracing::info!(%uuid, "development LMS: entitlement expired");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/entitlements/v1/entitlements/`'s filters.
#[derive(Deserialize)]
struct EntitlementFilter {
    user: Option<String>,
    course_uuid: Option<String>,
}

async fn list_entitlements(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(filter): Query<EntitlementFilter>,
) -> Result<Json<Value>, Refusal> {
    authenticate(&shared, &headers)?;
    let passes = |value: &str, wanted: &Option<String>| wanted.as_deref().is_none_or(|wanted| wanted == value);
    let results: Vec<DevEntitlement> = shared
        .records()
        .entitlements
        .iter()
        .filter(|e| passes(&e.user, &filter.user) && passes(&e.course_uuid, &filter.course_uuid))
        .cloned()
        .collect();
    // Paginated as Open edX answers, on one page.
    Ok(Json(json!({"count": results.len(), "next": null, "previous": null, "results": results})))
}

async fn recorded_enrollments(State(shared): State<Arc<Shared>>) -> Json<Vec<DevEnrollment>> {
    Json(shared.records().enrollments.values().cloned().collect())
}

async fn recorded_entitlements(State(shared): State<Arc<Shared>>) -> Json<Vec<DevEntitlement>> {
    Json(shared.records().entitlements.clone())
}
