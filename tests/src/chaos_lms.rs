//! A chaotic LMS: Open edX's OAuth2, enrollment and entitlement endpoints over
//! real HTTP, as Fulfillment's LMS client calls them (the same paths and bodies
//! as `commerce_mesh::dev_lms`), answering a seeded share of requests with
//! faults.
//!
//! Each enrollment or entitlement request gets one of: 503; a slow 200 (the
//! LMS acts at once but answers only after [`ChaosConfig::slow_answer_after`],
//! later than the client waits); 429 with `Retry-After`; a permanent 400 for
//! the courses in [`ChaosConfig::rejected_courses`]; else 200/201. The fault is
//! drawn from an RNG seeded with the seed, the learner, the course and how many
//! requests came for them before: a job's sequence of answers is the same on
//! every run, however the requests of different jobs interleave.
//!
//! The token endpoint is never chaotic, so the faults are about the calls that
//! do the work. Everything is kept in a ledger ([`ChaosLms::ledger`]): each
//! request with its arrival and answer times, who and what it was for, and what
//! was answered; and what exists, like the real LMS: enrollments (idempotent
//! per learner and course run) and entitlements (not idempotent: each grant is
//! a new one).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use kit::shutdown::Shutdown;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The OAuth2 client id the chaotic LMS accepts.
pub const CLIENT_ID: &str = "chaos-client";
/// The OAuth2 client secret the chaotic LMS accepts.
pub const CLIENT_SECRET: &str = "chaos-secret";
/// How long an issued token lasts, in seconds: longer than any test.
const TOKEN_LIFETIME_SECONDS: u64 = 3600;

/// How the chaotic LMS misbehaves. The three fractions add up to at most 1;
/// the rest of the requests succeed.
#[derive(Clone, Debug, PartialEq)]
pub struct ChaosConfig {
    /// Seeds every fault decision.
    pub seed: u64,
    /// Share of requests answered 503.
    pub unavailable: f64,
    /// Share of requests acted on but answered only after `slow_answer_after`.
    pub slow: f64,
    /// Share of requests answered 429 with `Retry-After: retry_after_seconds`.
    pub throttled: f64,
    /// The `Retry-After` of a 429, in seconds.
    pub retry_after_seconds: u64,
    /// How long a slow answer takes: more than the client's request timeout.
    pub slow_answer_after: Duration,
    /// Course run keys and course UUIDs every request for which is answered 400, without chaos.
    pub rejected_courses: BTreeSet<String>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            unavailable: 0.5,
            slow: 0.1,
            throttled: 0.1,
            retry_after_seconds: 1,
            slow_answer_after: Duration::from_secs(1),
            rejected_courses: BTreeSet::new(),
        }
    }
}

/// What the chaotic LMS answered one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    /// 200 (201 for a grant), at once.
    Ok,
    /// 503, at once.
    Unavailable,
    /// Acted on at once, answered 200/201 after [`ChaosConfig::slow_answer_after`].
    Slow,
    /// 429 with `Retry-After`.
    Throttled,
    /// 400: the course is one of [`ChaosConfig::rejected_courses`].
    Rejected,
    /// 400: the request was not what the endpoint takes (a client bug, not chaos).
    Malformed,
    /// 401: no valid credentials or token.
    Unauthorized,
}

impl Answer {
    /// A short name for figures: the status, or `slow`.
    pub fn label(self) -> &'static str {
        match self {
            Answer::Ok => "200",
            Answer::Unavailable => "503",
            Answer::Slow => "slow",
            Answer::Throttled => "429",
            Answer::Rejected => "400",
            Answer::Malformed => "malformed",
            Answer::Unauthorized => "401",
        }
    }

    /// Whether the client hears a success: an answer it waits for that is 2xx.
    pub fn heard_success(self) -> bool {
        self == Answer::Ok
    }
}

/// Which endpoint a request went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `POST /oauth2/access_token`
    Token,
    /// `POST /api/enrollment/v1/enrollment`
    Enroll,
    /// `GET /api/entitlements/v1/entitlements/?user=&course_uuid=`
    FindEntitlement,
    /// `POST /api/entitlements/v1/entitlements/`
    GrantEntitlement,
}

/// Who and what a request was for: the learner's username and the course run key (enrollments) or course UUID
/// (entitlements).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    /// The learner's LMS username.
    pub user: String,
    /// The course run key or course UUID.
    pub course: String,
}

/// One request as the chaotic LMS saw it.
#[derive(Clone, Debug)]
pub struct LmsRequest {
    /// Where it went.
    pub endpoint: Endpoint,
    /// Whom and what it was for; `None` for token requests and malformed ones.
    pub subject: Option<Subject>,
    /// The order number in the body, when it had one.
    pub order_number: Option<String>,
    /// The line item id in the enrollment attributes, when it had one.
    pub line_item_id: Option<String>,
    /// 1 for the subject's first enrollment or entitlement request, 2 for the next...
    pub nth: u32,
    /// What it was answered.
    pub answer: Answer,
    /// When it arrived.
    pub arrived: Instant,
    /// When the answer was handed back; `None` if the client hung up first.
    pub answered: Option<Instant>,
    /// For an enrollment: the learner was already enrolled in the run, so it changed nothing.
    pub repeat: bool,
}

/// One enrollment the LMS holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrollment {
    /// The learner's username.
    pub user: String,
    /// The course run key.
    pub course_run: String,
    /// The mode.
    pub mode: String,
    /// The order number among the enrollment attributes of the request that created it.
    pub order_number: Option<String>,
}

/// One entitlement the LMS granted: the development LMS's record of one.
pub type Entitlement = commerce_mesh::dev_lms::DevEntitlement;

#[derive(Default)]
struct Records {
    ledger: Vec<LmsRequest>,
    requests_per_subject: HashMap<Subject, u32>,
    tokens: HashSet<String>,
    enrollments: BTreeMap<(String, String), Enrollment>,
    entitlements: Vec<Entitlement>,
}

struct Shared {
    config: ChaosConfig,
    records: Mutex<Records>,
}

impl Shared {
    fn records(&self) -> MutexGuard<'_, Records> {
        // Every update leaves the records consistent, so a panicked holder poisons nothing.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request's arrival and decides its answer; answers its ledger index.
    fn arrive(&self, endpoint: Endpoint, subject: Option<Subject>, body: &BodyFacts) -> (usize, Answer) {
        let arrived = Instant::now();
        let mut records = self.records();
        let (nth, answer) = match &subject {
            Some(subject) => {
                let count = records.requests_per_subject.entry(subject.clone()).or_default();
                *count += 1;
                let nth = *count;
                (nth, self.decide(subject, nth))
            }
            None => (0, if endpoint == Endpoint::Token { Answer::Ok } else { Answer::Malformed }),
        };
        records.ledger.push(LmsRequest {
            endpoint,
            subject,
            order_number: body.order_number.clone(),
            line_item_id: body.line_item_id.clone(),
            nth,
            answer,
            arrived,
            answered: None,
            repeat: false,
        });
        (records.ledger.len() - 1, answer)
    }

    /// Records a request refused before any decision (bad credentials, bad body).
    fn refused(&self, endpoint: Endpoint, answer: Answer) -> usize {
        let now = Instant::now();
        let mut records = self.records();
        records.ledger.push(LmsRequest {
            endpoint,
            subject: None,
            order_number: None,
            line_item_id: None,
            nth: 0,
            answer,
            arrived: now,
            answered: Some(now),
            repeat: false,
        });
        records.ledger.len() - 1
    }

    fn answered(&self, index: usize) {
        if let Some(request) = self.records().ledger.get_mut(index) {
            request.answered = Some(Instant::now());
        }
    }

    /// The fault for the subject's `nth` request: a pure function of the seed, the subject and `nth`.
    fn decide(&self, subject: &Subject, nth: u32) -> Answer {
        let config = &self.config;
        if config.rejected_courses.contains(&subject.course) {
            return Answer::Rejected;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(config.seed, subject, nth));
        let draw: f64 = rng.random();
        if draw < config.unavailable {
            Answer::Unavailable
        } else if draw < config.unavailable + config.slow {
            Answer::Slow
        } else if draw < config.unavailable + config.slow + config.throttled {
            Answer::Throttled
        } else {
            Answer::Ok
        }
    }
}

/// FNV-1a over the seed, the subject and `nth`: stable across runs and platforms (unlike `DefaultHasher`).
fn mix(seed: u64, subject: &Subject, nth: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let parts: [&[u8]; 6] =
        [&seed.to_le_bytes(), subject.user.as_bytes(), &[0xff], subject.course.as_bytes(), &[0xff], &nth.to_le_bytes()];
    for byte in parts.iter().flat_map(|part| part.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What a request body says about the order, for the ledger.
#[derive(Default)]
struct BodyFacts {
    order_number: Option<String>,
    line_item_id: Option<String>,
}

/// A running chaotic LMS; [`ChaosLms::stop`] stops it.
pub struct ChaosLms {
    address: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    server: JoinHandle<std::io::Result<()>>,
}

impl fmt::Debug for ChaosLms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLms").field("address", &self.address).finish_non_exhaustive()
    }
}

impl ChaosLms {
    /// Listens on 127.0.0.1 (a free port) and serves until [`ChaosLms::stop`].
    pub async fn start(config: ChaosConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared { config, records: Mutex::new(Records::default()) });
        let app = Router::new()
            .route("/oauth2/access_token", post(issue_token))
            .route("/api/enrollment/v1/enrollment", post(enroll))
            .route("/api/entitlements/v1/entitlements/", post(grant_entitlement).get(find_entitlements))
            .with_state(Arc::clone(&shared));
        let shutdown = Shutdown::new();
        let stopped = shutdown.clone();
        let server =
            tokio::spawn(
                async move { axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned()).await },
            );
        Ok(Self { address, shared, shutdown, server })
    }

    /// `http://127.0.0.1:port`: Fulfillment's `lms.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// How it misbehaves.
    pub fn config(&self) -> &ChaosConfig {
        &self.shared.config
    }

    /// Every request so far, in arrival order.
    pub fn ledger(&self) -> Vec<LmsRequest> {
        self.shared.records().ledger.clone()
    }

    /// Every enrollment it holds, by learner then course run.
    pub fn enrollments(&self) -> Vec<Enrollment> {
        self.shared.records().enrollments.values().cloned().collect()
    }

    /// Every entitlement granted, oldest first.
    pub fn entitlements(&self) -> Vec<Entitlement> {
        self.shared.records().entitlements.clone()
    }

    /// Stops serving, letting answers in flight (slow ones included) finish.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.server.await.map_err(std::io::Error::other)?
    }
}

fn detail(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({"detail": text}))).into_response()
}

fn throttled(retry_after_seconds: u64) -> Response {
    let mut response =
        detail(StatusCode::TOO_MANY_REQUESTS, &format!("Request was throttled. Expected in {retry_after_seconds} s."));
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds));
    response
}

/// The answer for a fault, or `None` when the request is to be carried out (`Ok` or `Slow`).
fn fault_response(shared: &Shared, answer: Answer, course: &str) -> Option<Response> {
    match answer {
        Answer::Ok | Answer::Slow => None,
        Answer::Unavailable => Some(detail(StatusCode::SERVICE_UNAVAILABLE, "Service temporarily unavailable.")),
        Answer::Throttled => Some(throttled(shared.config.retry_after_seconds)),
        Answer::Rejected => Some(
            (StatusCode::BAD_REQUEST, Json(json!({"message": format!("Course {course} is not open for enrollment.")})))
                .into_response(),
        ),
        Answer::Malformed | Answer::Unauthorized => Some(refusal(answer)),
    }
}

/// The answer to a request refused before any chaos: bad credentials or a bad body.
fn refusal(answer: Answer) -> Response {
    match answer {
        Answer::Unauthorized => detail(StatusCode::UNAUTHORIZED, "Authentication credentials were not provided."),
        _ => detail(StatusCode::BAD_REQUEST, "Malformed request."),
    }
}

async fn issue_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded(&body);
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("client_credentials")
        || field("client_id") != Some(CLIENT_ID)
        || field("client_secret") != Some(CLIENT_SECRET)
    {
        shared.refused(Endpoint::Token, Answer::Unauthorized);
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    }
    let (index, _) = shared.arrive(Endpoint::Token, None, &BodyFacts::default());
    let token = format!("chaos-{}", uuid::Uuid::new_v4().simple());
    shared.records().tokens.insert(token.clone());
    shared.answered(index);
    Json(json!({"access_token": token, "token_type": "JWT", "expires_in": TOKEN_LIFETIME_SECONDS})).into_response()
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte).
fn form_urlencoded(body: &[u8]) -> HashMap<String, String> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => match text.get(i + 1..i + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                },
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (decode(name), decode(value)))
        .collect()
}

/// Whether the request carries `Authorization: JWT <a token this LMS issued>`.
fn authenticated(shared: &Shared, headers: &HeaderMap) -> bool {
    let token = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("JWT "));
    token.is_some_and(|token| shared.records().tokens.contains(token))
}

fn string_at<'a>(object: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(object, |value, key| value.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The value of the `order` attribute `name` among an enrollment's attributes.
fn order_attribute(body: &Value, name: &str) -> Option<String> {
    body.get("enrollment_attributes")?
        .as_array()?
        .iter()
        .find(|a| string_at(a, &["namespace"]) == Some("order") && string_at(a, &["name"]) == Some(name))
        .and_then(|a| string_at(a, &["value"]))
        .map(str::to_owned)
}

async fn enroll(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authenticated(&shared, &headers) {
        shared.refused(Endpoint::Enroll, Answer::Unauthorized);
        return refusal(Answer::Unauthorized);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let facts = BodyFacts {
        order_number: order_attribute(&body, "order_number"),
        line_item_id: order_attribute(&body, "line_item_id"),
    };
    let (user, course, mode) =
        (string_at(&body, &["user"]), string_at(&body, &["course_details", "course_id"]), string_at(&body, &["mode"]));
    let (Some(user), Some(course), Some(mode), Some(true)) =
        (user, course, mode, body.get("is_active").and_then(Value::as_bool))
    else {
        shared.refused(Endpoint::Enroll, Answer::Malformed);
        return refusal(Answer::Malformed);
    };
    let subject = Subject { user: user.to_owned(), course: course.to_owned() };
    let (index, answer) = shared.arrive(Endpoint::Enroll, Some(subject.clone()), &facts);
    if let Some(response) = fault_response(&shared, answer, course) {
        shared.answered(index);
        return response;
    }
    // The LMS acts at once; a slow answer only comes late.
    {
        let mut records = shared.records();
        let key = (subject.user.clone(), subject.course.clone());
        let repeat = records.enrollments.contains_key(&key);
        if !repeat {
            let enrollment = Enrollment {
                user: subject.user.clone(),
                course_run: subject.course.clone(),
                mode: mode.to_owned(),
                order_number: facts.order_number.clone(),
            };
            records.enrollments.insert(key, enrollment);
        }
        if let Some(request) = records.ledger.get_mut(index) {
            request.repeat = repeat;
        }
    }
    if answer == Answer::Slow {
        tokio::time::sleep(shared.config.slow_answer_after).await;
    }
    shared.answered(index);
    Json(json!({
        "user": user,
        "mode": mode,
        "is_active": true,
        "course_details": {"course_id": course},
    }))
    .into_response()
}

async fn grant_entitlement(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authenticated(&shared, &headers) {
        shared.refused(Endpoint::GrantEntitlement, Answer::Unauthorized);
        return refusal(Answer::Unauthorized);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (user, course, mode, order_number) = (
        string_at(&body, &["user"]),
        string_at(&body, &["course_uuid"]),
        string_at(&body, &["mode"]),
        string_at(&body, &["order_number"]),
    );
    let (Some(user), Some(course), Some(mode), Some(order_number)) = (user, course, mode, order_number) else {
        shared.refused(Endpoint::GrantEntitlement, Answer::Malformed);
        return refusal(Answer::Malformed);
    };
    let facts = BodyFacts { order_number: Some(order_number.to_owned()), line_item_id: None };
    let subject = Subject { user: user.to_owned(), course: course.to_owned() };
    let (index, answer) = shared.arrive(Endpoint::GrantEntitlement, Some(subject), &facts);
    if let Some(response) = fault_response(&shared, answer, course) {
        shared.answered(index);
        return response;
    }
    let entitlement = Entitlement {
        uuid: uuid::Uuid::new_v4().to_string(),
        user: user.to_owned(),
        course_uuid: course.to_owned(),
        mode: mode.to_owned(),
        order_number: order_number.to_owned(),
        expired: false,
    };
    shared.records().entitlements.push(entitlement.clone());
    if answer == Answer::Slow {
        tokio::time::sleep(shared.config.slow_answer_after).await;
    }
    shared.answered(index);
    (StatusCode::CREATED, Json(entitlement_json(&entitlement))).into_response()
}

fn entitlement_json(e: &Entitlement) -> Value {
    json!({
        "uuid": e.uuid,
        "user": e.user,
        "course_uuid": e.course_uuid,
        "mode": e.mode,
        "order_number": e.order_number,
    })
}

async fn find_entitlements(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(filter): Query<HashMap<String, String>>,
) -> Response {
    if !authenticated(&shared, &headers) {
        shared.refused(Endpoint::FindEntitlement, Answer::Unauthorized);
        return refusal(Answer::Unauthorized);
    }
    let (Some(user), Some(course)) = (filter.get("user"), filter.get("course_uuid")) else {
        shared.refused(Endpoint::FindEntitlement, Answer::Malformed);
        return refusal(Answer::Malformed);
    };
    let subject = Subject { user: user.clone(), course: course.clone() };
    let (index, answer) = shared.arrive(Endpoint::FindEntitlement, Some(subject), &BodyFacts::default());
    if let Some(response) = fault_response(&shared, answer, course) {
        shared.answered(index);
        return response;
    }
    if answer == Answer::Slow {
        tokio::time::sleep(shared.config.slow_answer_after).await;
    }
    let results: Vec<Value> = shared
        .records()
        .entitlements
        .iter()
        .filter(|e| e.user == *user && e.course_uuid == *course)
        .map(entitlement_json)
        .collect();
    shared.answered(index);
    Json(json!({"count": results.len(), "next": null, "previous": null, "results": results})).into_response()
}
