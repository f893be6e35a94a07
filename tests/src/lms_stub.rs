//! A stub LMS over real HTTP (wiremock) for mesh tests that only need
//! enrollments to succeed: it issues a token and answers every enrollment
//! call, activating or deactivating, 200. Its received requests show what the
//! mesh sent.

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A stub LMS that issues a token to anyone and answers nothing else yet:
/// each test mounts the enrollment answers it needs.
pub async fn issuing_tokens() -> MockServer {
    let lms = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/access_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"access_token": "t", "expires_in": 3600})))
        .mount(&lms)
        .await;
    lms
}

/// A stub LMS that enrolls (and unenrolls) everyone.
pub async fn enrolling() -> MockServer {
    let lms = issuing_tokens().await;
    Mock::given(method("POST"))
        .and(path("/api/enrollment/v1/enrollment"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&lms)
        .await;
    lms
}
