//! The LMS client: enrollments and entitlements on the Open edX platform,
//! granted for an order and taken back for a refund.
//!
//! One [`LmsClient`] per process, cloned freely: it holds one HTTP client
//! (connections are reused) and one cached access token. Every call:
//! - authenticates with an OAuth2 client-credentials JWT, fetched once and
//!   reused until `token_refresh_margin` before it expires; concurrent callers
//!   wait for the one fetch in flight instead of each fetching their own;
//! - on a 401 drops that token, fetches a new one and repeats the call once;
//! - runs in a client span (`lms`, OpenTelemetry HTTP attributes) whose trace
//!   context travels in the request's `traceparent`;
//! - fails with an [`LmsError`] that says what happened (status and
//!   `Retry-After`, timeout, connection, authentication...), so the caller can
//!   decide whether to retry.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use http::HeaderMap;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use kit::secret::Secret;
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::field::Empty;
use tracing::{Instrument, Span};

const ENROLLMENT_PATH: &str = "/api/enrollment/v1/enrollment";
const ENTITLEMENT_PATH: &str = "/api/entitlements/v1/entitlements/";
const TOKEN_PATH: &str = "/oauth2/access_token";
const USER_AGENT: &str = concat!("commerce-mesh-fulfillment/", env!("CARGO_PKG_VERSION"));
/// How much of an error answer's body [`LmsError::Status`] keeps.
const ERROR_BODY_CHARS: usize = 1000;
/// How much of the token endpoint's error answer goes into [`LmsError::Authentication`].
const TOKEN_ERROR_BODY_CHARS: usize = 200;

/// Where the LMS is and how to reach it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LmsConfig {
    /// Base URL of the LMS, such as `https://lms.example.com`.
    pub url: String,
    /// OAuth2 client id of this service on the LMS.
    pub client_id: String,
    /// OAuth2 client secret; never printed (see the `Debug` impl).
    pub client_secret: Secret,
    /// Longest wait for a TCP (and TLS) connection to the LMS.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for a whole request, from sending to the last byte of the answer.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Fetch a new access token this long before the cached one expires.
    #[serde(with = "humantime_serde")]
    pub token_refresh_margin: Duration,
}

impl Default for LmsConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:18000".into(),
            client_id: String::new(),
            client_secret: Secret::new(String::new()),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            token_refresh_margin: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for LmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Config gets logged at start-up: the secret must not go with it.
        f.debug_struct("LmsConfig")
            .field("url", &kit::db::redact(&self.url))
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("token_refresh_margin", &self.token_refresh_margin)
            .finish()
    }
}

/// One course-run enrollment to create, with the order it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enrollment<'a> {
    /// The learner's LMS username.
    pub username: &'a str,
    /// Course mode, such as `verified` or `credit`.
    pub mode: &'a str,
    /// The course run, such as `course-v1:edX+DemoX+Demo_Course`.
    pub course_run_key: &'a str,
    /// Whether the learner agreed to receive email from the organization.
    pub email_opt_in: bool,
    /// The order's number, as learners and support see it.
    pub order_number: &'a str,
    /// The order's id in the source system.
    pub order_id: &'a str,
    /// The line item's id in the source system.
    pub line_item_id: &'a str,
    /// When the order was placed.
    pub date_placed: DateTime<Utc>,
    /// The system the order comes from.
    pub source_system: &'a str,
    /// The credit provider; sent only in `credit` mode.
    pub credit_provider_id: Option<&'a str>,
}

/// A refund recorded with a deactivated enrollment (in `enrollment_attributes`, namespace `refund`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundNote<'a> {
    /// The amount refunded, such as `149.00`.
    pub amount: &'a str,
    /// Its currency, such as `USD`.
    pub currency: &'a str,
    /// Why, as the refunding system said.
    pub reason: &'a str,
    /// Which system refunded.
    pub source: &'a str,
    /// When the refund was recorded.
    pub refunded_at: DateTime<Utc>,
}

/// One course entitlement to grant, with the order it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entitlement<'a> {
    /// The learner's LMS username.
    pub username: &'a str,
    /// Course mode, such as `verified`.
    pub mode: &'a str,
    /// The course (not a run) in the catalog.
    pub course_uuid: &'a str,
    /// The order's number.
    pub order_number: &'a str,
    /// Whether the learner agreed to receive email from the organization.
    pub email_opt_in: bool,
}

/// A successful LMS answer: what it said and its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmsResponse<T> {
    /// What the call answers (the entitlement's uuid, or nothing).
    pub value: T,
    /// The 2xx status the LMS answered.
    pub status: u16,
}

/// Why an LMS call failed; each carries what is needed to classify and record it.
#[derive(Debug, thiserror::Error)]
pub enum LmsError {
    /// The LMS answered a non-2xx status (after the one 401 refresh).
    #[error("the LMS answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The first 1000 characters of the answer's body.
        body: String,
        /// How long the LMS asked us to wait (`Retry-After`, seconds or HTTP date).
        retry_after: Option<Duration>,
    },
    /// The request was sent but no complete answer came within `request_timeout`:
    /// the LMS may or may not have acted on it.
    #[error("no answer from the LMS in time: {0}")]
    Timeout(String),
    /// No connection to the LMS (refused, DNS, TLS, connect timeout), or it broke
    /// before an answer.
    #[error("cannot reach the LMS: {0}")]
    Connection(String),
    /// No access token could be obtained (token endpoint unreachable, non-2xx, or
    /// unparsable answer).
    #[error("no LMS access token: {0}")]
    Authentication(String),
    /// The LMS answered 2xx but the body was not what we expect.
    #[error("unexpected LMS answer ({status}): {message}")]
    InvalidResponse {
        /// The 2xx status answered.
        status: u16,
        /// What was wrong with the body.
        message: String,
    },
    /// The client could not be built from config (bad URL, zero timeout...).
    #[error("invalid LMS client config: {0}")]
    Config(String),
}

impl LmsError {
    /// The HTTP status the LMS answered, if it answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } | Self::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the LMS asked us to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Client of the LMS enrollment and entitlement APIs; cheap to clone (shared state).
#[derive(Clone)]
pub struct LmsClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    enrollment_url: Url,
    entitlement_url: Url,
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    refresh_margin: Duration,
    /// Held across a token fetch, so concurrent callers wait for that one fetch.
    token: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    value: String,
    reuse_until: Instant,
}

impl fmt::Debug for LmsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No secret, no token.
        f.debug_struct("LmsClient").field("enrollment_url", &self.inner.enrollment_url.as_str()).finish_non_exhaustive()
    }
}

impl LmsClient {
    /// A client for the LMS at `config.url`; fails on an unusable URL or timeout.
    pub fn new(config: &LmsConfig) -> Result<Self, LmsError> {
        if config.connect_timeout.is_zero() || config.request_timeout.is_zero() {
            return Err(LmsError::Config("connect_timeout and request_timeout must be more than zero".into()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            // The LMS is reached directly: an ambient HTTP(S)_PROXY must not reroute it.
            .no_proxy()
            // A redirect would turn the POST into a body-less GET that "succeeds": a 3xx is an answer.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .build()
            .map_err(|e| LmsError::Config(describe(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                enrollment_url: endpoint(&config.url, ENROLLMENT_PATH)?,
                entitlement_url: endpoint(&config.url, ENTITLEMENT_PATH)?,
                token_url: endpoint(&config.url, TOKEN_PATH)?,
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone(),
                refresh_margin: config.token_refresh_margin,
                token: Mutex::new(None),
            }),
        })
    }

    /// Enrolls a learner in a course run: POST {url}/api/enrollment/v1/enrollment.
    pub async fn enroll(&self, e: &Enrollment<'_>) -> Result<LmsResponse<()>, LmsError> {
        self.post_enrollment(e, None).await
    }

    /// Deactivates a learner's enrollment after a refund: the same POST as
    /// [`LmsClient::enroll`] with `"is_active": false` (how the Open edX
    /// enrollment API unenrolls), the refund in `enrollment_attributes`.
    /// Idempotent in the LMS, so a repeat after a lost answer is harmless.
    pub async fn unenroll(&self, e: &Enrollment<'_>, refund: &RefundNote<'_>) -> Result<LmsResponse<()>, LmsError> {
        self.post_enrollment(e, Some(refund)).await
    }

    async fn post_enrollment(
        &self,
        e: &Enrollment<'_>,
        refund: Option<&RefundNote<'_>>,
    ) -> Result<LmsResponse<()>, LmsError> {
        let mut attributes = vec![
            order("order_number", e.order_number),
            order("order_id", e.order_id),
            order("line_item_id", e.line_item_id),
            Attribute {
                namespace: "order",
                name: "date_placed",
                value: Some(Cow::Owned(e.date_placed.format("%Y-%m-%dT%H:%M:%SZ").to_string())),
            },
            order("source_system", e.source_system),
        ];
        // What the order does not have (an order id, a source system) is left out, not sent empty.
        attributes.retain(|attribute| attribute.value.as_deref() != Some(""));
        // As edX ecommerce does: in credit mode the provider always goes, null if unknown.
        if e.mode == "credit" {
            attributes.push(Attribute {
                namespace: "credit",
                name: "provider_id",
                value: e.credit_provider_id.map(Cow::Borrowed),
            });
        }
        if let Some(refund) = refund {
            for (name, value) in [
                ("amount", Cow::Borrowed(refund.amount)),
                ("currency", Cow::Borrowed(refund.currency)),
                ("reason", Cow::Borrowed(refund.reason)),
                ("source", Cow::Borrowed(refund.source)),
                ("date_refunded", Cow::Owned(refund.refunded_at.format("%Y-%m-%dT%H:%M:%SZ").to_string())),
            ] {
                // A refund without a reason says none rather than an empty one.
                if !value.is_empty() {
                    attributes.push(Attribute { namespace: "refund", name, value: Some(value) });
                }
            }
        }
        let body = EnrollmentBody {
            user: e.username,
            mode: e.mode,
            is_active: refund.is_none(),
            course_details: CourseDetails { course_id: e.course_run_key },
            email_opt_in: e.email_opt_in,
            enrollment_attributes: attributes,
        };
        let url = &self.inner.enrollment_url;
        let span = client_span("POST /api/enrollment/v1/enrollment", &Method::POST, url);
        let answer = self.inner.post_json(url, &body, &span).instrument(span.clone()).await?;
        Ok(LmsResponse { value: (), status: answer.status })
    }

    /// Expires an entitlement after a refund, which also unenrolls the learner
    /// from a run it was redeemed for: DELETE {url}/api/entitlements/v1/entitlements/{uuid}/.
    /// A 404 is an entitlement already gone (an earlier attempt expired it and
    /// its answer was lost), so it counts as done.
    pub async fn revoke_entitlement(&self, uuid: &str) -> Result<LmsResponse<()>, LmsError> {
        let mut url = self.inner.entitlement_url.clone();
        // The uuid came from the LMS: pushed as one path segment, so it is percent-encoded.
        url.path_segments_mut()
            .map_err(|()| LmsError::Config("the LMS url cannot have a path".into()))?
            .pop_if_empty()
            .push(uuid)
            .push("");
        let span = client_span("DELETE /api/entitlements/v1/entitlements/{uuid}/", &Method::DELETE, &url);
        match self.inner.call(Method::DELETE, &url, None, &span).instrument(span.clone()).await {
            Ok(answer) => Ok(LmsResponse { value: (), status: answer.status }),
            Err(LmsError::Status { status: 404, .. }) => {
                tracing::info!(entitlement = uuid, "the LMS has no such entitlement any more; counted as revoked");
                Ok(LmsResponse { value: (), status: 404 })
            }
            Err(error) => Err(error),
        }
    }

    /// Grants a course entitlement: POST {url}/api/entitlements/v1/entitlements/; answers its uuid.
    pub async fn grant_entitlement(&self, e: &Entitlement<'_>) -> Result<LmsResponse<String>, LmsError> {
        let body = EntitlementBody {
            user: e.username,
            mode: e.mode,
            course_uuid: e.course_uuid,
            order_number: e.order_number,
            email_opt_in: e.email_opt_in,
        };
        let url = &self.inner.entitlement_url;
        let span = client_span("POST /api/entitlements/v1/entitlements/", &Method::POST, url);
        let answer = self.inner.post_json(url, &body, &span).instrument(span.clone()).await?;
        let invalid = |message: String| LmsError::InvalidResponse { status: answer.status, message };
        let json: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| invalid(format!("entitlement answer is not JSON: {e}")))?;
        match json.get("uuid").and_then(serde_json::Value::as_str) {
            Some(uuid) if !uuid.is_empty() => Ok(LmsResponse { value: uuid.to_owned(), status: answer.status }),
            _ => Err(invalid("entitlement answer has no \"uuid\" string".into())),
        }
    }
}

impl LmsClient {
    /// The uuid of an entitlement the LMS already granted this learner for
    /// this course and order, if any: GET {url}/api/entitlements/v1/entitlements/?user=..&course_uuid=..
    /// Asked before repeating a grant, because a grant is not idempotent.
    pub async fn find_entitlement(&self, e: &Entitlement<'_>) -> Result<LmsResponse<Option<String>>, LmsError> {
        let mut url = self.inner.entitlement_url.clone();
        url.query_pairs_mut().append_pair("user", e.username).append_pair("course_uuid", e.course_uuid);
        let span = client_span("GET /api/entitlements/v1/entitlements/", &Method::GET, &url);
        let answer = self.inner.call(Method::GET, &url, None, &span).instrument(span.clone()).await?;
        let invalid = |message: String| LmsError::InvalidResponse { status: answer.status, message };
        let json: serde_json::Value =
            serde_json::from_slice(&answer.body).map_err(|e| invalid(format!("entitlement list is not JSON: {e}")))?;
        // Paginated ({"results": [...]}) or a bare list, depending on the LMS version.
        let listed = json
            .get("results")
            .unwrap_or(&json)
            .as_array()
            .ok_or_else(|| invalid("entitlement list is not a list".into()))?;
        let found = listed
            .iter()
            .filter(|entitlement| {
                entitlement.get("order_number").and_then(serde_json::Value::as_str) == Some(e.order_number)
            })
            .find_map(|entitlement| entitlement.get("uuid").and_then(serde_json::Value::as_str))
            .map(str::to_owned);
        Ok(LmsResponse { value: found, status: answer.status })
    }
}

/// A 2xx answer, read whole.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Inner {
    /// POSTs `body` as JSON with a token, repeating once with a new token on a 401.
    async fn post_json<B: Serialize>(&self, url: &Url, body: &B, span: &Span) -> Result<Answer, LmsError> {
        // Cannot fail for these all-string bodies; encoded once, sent up to twice.
        let body = serde_json::to_vec(body).map_err(|e| LmsError::Config(format!("cannot encode the request: {e}")))?;
        self.call(Method::POST, url, Some(body), span).await
    }

    /// Sends a request with a token, repeating once with a new token on a 401;
    /// marks the span as failed when it fails.
    async fn call(&self, method: Method, url: &Url, body: Option<Vec<u8>>, span: &Span) -> Result<Answer, LmsError> {
        let result = self.call_unrecorded(method, url, body, span).await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn call_unrecorded(
        &self,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
        span: &Span,
    ) -> Result<Answer, LmsError> {
        let mut token = self.token(None).await?;
        let mut repeated = false;
        loop {
            let mut headers = HeaderMap::new();
            kit::trace::inject_current_context(&mut headers);
            if body.is_some() {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            headers.insert(AUTHORIZATION, authorization(&token)?);
            let mut request = self.http.request(method.clone(), url.clone()).headers(headers);
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = request.send().await.map_err(|e| transport_error(&e))?;
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            if status == StatusCode::UNAUTHORIZED && !repeated {
                // Read the body so the connection goes back to the pool.
                let _ = response.bytes().await;
                tracing::info!("the LMS rejected the access token; fetching a new one and trying once more");
                token = self.token(Some(&token)).await?;
                repeated = true;
                span.record("http.request.resend_count", 1);
                continue;
            }
            let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
            if !status.is_success() {
                return Err(LmsError::Status {
                    status: status.as_u16(),
                    body: truncate(&String::from_utf8_lossy(&bytes), ERROR_BODY_CHARS),
                    retry_after: retry_after.and_then(|v| parse_retry_after(&v, Utc::now())),
                });
            }
            return Ok(Answer { status: status.as_u16(), body: bytes.to_vec() });
        }
    }

    /// A usable access token: the cached one unless it is near expiry or is
    /// `rejected` (by a 401), else a fresh one. A token another caller already
    /// replaced after the same 401 is not refetched.
    async fn token(&self, rejected: Option<&str>) -> Result<String, LmsError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.reuse_until
            && rejected != Some(token.value.as_str())
        {
            return Ok(token.value.clone());
        }
        *cached = None;
        let started = Instant::now();
        let fetched = self.fetch_token().await?;
        // Counted from before the request, so the token never outlives our estimate.
        let reuse_until = fetched
            .expires_in
            .and_then(|seconds| Duration::from_secs(seconds).checked_sub(self.refresh_margin))
            .and_then(|reusable| started.checked_add(reusable));
        if let Some(reuse_until) = reuse_until {
            *cached = Some(CachedToken { value: fetched.access_token.clone(), reuse_until });
        }
        Ok(fetched.access_token)
    }

    async fn fetch_token(&self) -> Result<TokenAnswer, LmsError> {
        let span = client_span("POST /oauth2/access_token", &Method::POST, &self.token_url);
        let result = self.fetch_token_in(&span).instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn fetch_token_in(&self, span: &Span) -> Result<TokenAnswer, LmsError> {
        let fail = |message: String| LmsError::Authentication(message);
        let form = form_encode(&[
            ("grant_type", "client_credentials"),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose()),
            // Open edX answers a JWT (sent back as `Authorization: JWT ...`) rather than an opaque bearer token.
            ("token_type", "jwt"),
        ]);
        let mut headers = HeaderMap::new();
        kit::trace::inject_current_context(&mut headers);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        let response = self
            .http
            .post(self.token_url.clone())
            .headers(headers)
            .body(form)
            .send()
            .await
            .map_err(|e| fail(format!("token endpoint: {}", transport_error(&e))))?;
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        let bytes = response.bytes().await.map_err(|e| fail(format!("token endpoint: {}", transport_error(&e))))?;
        if !status.is_success() {
            let body = truncate(&String::from_utf8_lossy(&bytes), TOKEN_ERROR_BODY_CHARS);
            return Err(fail(format!("token endpoint answered {status}: {body}")));
        }
        // serde_json's messages quote no input, so the token cannot leak through them.
        let answer: TokenAnswer =
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("token endpoint answer does not parse: {e}")))?;
        if answer.access_token.is_empty() {
            return Err(fail("token endpoint answered an empty access_token".into()));
        }
        Ok(answer)
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds; without it the token is used for one call only.
    expires_in: Option<u64>,
}

#[derive(Serialize)]
struct EnrollmentBody<'a> {
    user: &'a str,
    mode: &'a str,
    is_active: bool,
    course_details: CourseDetails<'a>,
    email_opt_in: bool,
    enrollment_attributes: Vec<Attribute<'a>>,
}

#[derive(Serialize)]
struct CourseDetails<'a> {
    course_id: &'a str,
}

#[derive(Serialize)]
struct Attribute<'a> {
    namespace: &'static str,
    name: &'static str,
    value: Option<Cow<'a, str>>,
}

fn order<'a>(name: &'static str, value: &'a str) -> Attribute<'a> {
    Attribute { namespace: "order", name, value: Some(Cow::Borrowed(value)) }
}

#[derive(Serialize)]
struct EntitlementBody<'a> {
    user: &'a str,
    mode: &'a str,
    course_uuid: &'a str,
    order_number: &'a str,
    email_opt_in: bool,
}

/// The span of one HTTP call to the LMS, by the OpenTelemetry HTTP client conventions.
fn client_span(name: &'static str, method: &Method, url: &Url) -> Span {
    tracing::info_span!(
        "lms",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        url.full = url.as_str(),
        server.address = url.host_str(),
        server.port = url.port_or_known_default(),
        http.response.status_code = Empty,
        http.request.resend_count = Empty,
    )
}

/// `{base}{path}`, checked to be an absolute http(s) URL without credentials.
fn endpoint(base: &str, path: &str) -> Result<Url, LmsError> {
    let invalid = |why: &str| LmsError::Config(format!("LMS url {:?} {why}", kit::db::redact(base)));
    let url = Url::parse(&format!("{}{path}", base.trim_end_matches('/'))).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid("is not an http(s) URL"));
    }
    // URLs go into spans and error messages; credentials belong in client_id/client_secret.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    Ok(url)
}

fn authorization(token: &str) -> Result<HeaderValue, LmsError> {
    let mut value = HeaderValue::from_str(&format!("JWT {token}"))
        .map_err(|_| LmsError::Authentication("the access token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Connect failures (a connect timeout included: nothing was sent) are
/// `Connection`; a request that went out and got no answer in time is `Timeout`.
fn transport_error(error: &reqwest::Error) -> LmsError {
    let message = describe(error);
    if error.is_connect() {
        LmsError::Connection(message)
    } else if error.is_timeout() {
        LmsError::Timeout(message)
    } else {
        LmsError::Connection(message)
    }
}

/// An error and its chain of causes, on one line.
fn describe(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// `application/x-www-form-urlencoded`, as browsers (and the WHATWG URL spec) encode it.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn encode(out: &mut String, text: &str) {
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(byte)),
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(&mut out, name);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

/// A `Retry-After` value, delay-seconds or HTTP date (IMF-fixdate, or the
/// obsolete RFC 850 and asctime forms recipients must accept); a date in the
/// past is no wait.
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(value, "%A, %d-%b-%y %H:%M:%S GMT").ok().map(|d| d.and_utc()))
        .or_else(|| NaiveDateTime::parse_from_str(value, "%a %b %e %H:%M:%S %Y").ok().map(|d| d.and_utc()))?;
    Some((date - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).single().unwrap_or_default()
    }

    #[test]
    fn retry_after_reads_seconds_and_every_http_date_form() {
        assert_eq!(parse_retry_after("7", now()), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now()), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now()), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now()), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:05 2015", now()), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Thu Oct  1 07:28:05 2015", now()), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_in_the_past_is_no_wait_and_nonsense_is_none() {
        assert_eq!(parse_retry_after("Tue, 20 Oct 2015 07:28:00 GMT", now()), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("-3", now()), None);
        assert_eq!(parse_retry_after("", now()), None);
    }

    #[test]
    fn forms_are_encoded_like_a_browser() {
        assert_eq!(
            form_encode(&[("grant_type", "client_credentials"), ("client_secret", "a b&c=d+é/~")]),
            "grant_type=client_credentials&client_secret=a+b%26c%3Dd%2B%C3%A9%2F%7E"
        );
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate("ééé", 2), "éé");
        assert_eq!(truncate("ab", 5), "ab");
    }

    #[test]
    fn endpoints_join_the_base_url_with_or_without_a_trailing_slash() {
        let with = endpoint("http://lms:18000/", TOKEN_PATH).map(String::from);
        let without = endpoint("http://lms:18000", TOKEN_PATH).map(String::from);
        assert_eq!(with.ok().as_deref(), Some("http://lms:18000/oauth2/access_token"));
        assert_eq!(without.ok().as_deref(), Some("http://lms:18000/oauth2/access_token"));
        assert!(matches!(endpoint("lms:18000", TOKEN_PATH), Err(LmsError::Config(_))));
        assert!(matches!(endpoint("ftp://lms", TOKEN_PATH), Err(LmsError::Config(_))));
        assert!(matches!(endpoint("http://u:p@lms", TOKEN_PATH), Err(LmsError::Config(_))));
    }
}
