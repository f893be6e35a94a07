//! The development LMS against Fulfillment's real LMS client over real HTTP:
//! token, enrollment, entitlements, refusals. Inside the whole mesh:
//! `tests/tests/dev_lms.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use commerce_mesh::dev_lms::{CLIENT_ID, CLIENT_SECRET, Credentials, DevLms};
use fulfillment::lms::{Enrollment, Entitlement, LmsClient, LmsConfig, LmsError, RefundNote};
use kit::shutdown::Shutdown;
use serde_json::{Value, json};

const ENROLLMENT: &str = "/api/enrollment/v1/enrollment";
const ENTITLEMENTS: &str = "/api/entitlements/v1/entitlements/";

async fn dev_lms(shutdown: &Shutdown) -> DevLms {
    DevLms::bind_and_start("127.0.0.1:0".parse().unwrap(), Credentials::development(), shutdown.clone())
        .await
        .expect("dev LMS starts")
}

fn client_of(lms: &DevLms, client_secret: &str) -> LmsClient {
    LmsClient::new(&LmsConfig {
        url: lms.url(),
        client_id: CLIENT_ID.into(),
        client_secret: client_secret.into(),
        ..LmsConfig::default()
    })
    .expect("client")
}

fn enrollment<'a>(username: &'a str, mode: &'a str) -> Enrollment<'a> {
    Enrollment {
        username,
        mode,
        course_run_key: "course-v1:edX+DemoX+Demo_Course",
        email_opt_in: false,
        order_number: "EDX-100042",
        order_id: "42",
        line_item_id: "4201",
        date_placed: chrono::DateTime::from_timestamp(1_763_000_000, 0).unwrap(),
        source_system: "ecommerce",
        credit_provider_id: None,
    }
}

fn entitlement(order_number: &str) -> Entitlement<'_> {
    Entitlement {
        username: "ada",
        mode: "verified",
        course_uuid: "6b8a0e2c-2d9b-4d5e-9d43-7d3a2f1c0b11",
        order_number,
        email_opt_in: false,
    }
}

/// A token from the dev LMS, asked for as the LMS client asks.
async fn token(http: &reqwest::Client, lms: &DevLms) -> String {
    let form =
        format!("grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}&token_type=jwt");
    let answer = http
        .post(format!("{}/oauth2/access_token", lms.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["token_type"], "JWT");
    assert_eq!(body["expires_in"], 3600);
    body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_lms_client_gets_a_token_enrolls_grants_and_finds_its_entitlement() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let client = client_of(&lms, CLIENT_SECRET);

    let enrolled = client.enroll(&enrollment("ada", "verified")).await.expect("enrolled");
    assert_eq!(enrolled.status, 200);
    let granted = client.grant_entitlement(&entitlement("EDX-7")).await.expect("granted");
    assert_eq!(granted.status, 201);
    assert_eq!(uuid::Uuid::parse_str(&granted.value).unwrap().get_version_num(), 4);

    let found = client.find_entitlement(&entitlement("EDX-7")).await.expect("listed");
    assert_eq!(found.value.as_deref(), Some(granted.value.as_str()));
    let other_order = client.find_entitlement(&entitlement("EDX-8")).await.expect("listed");
    assert_eq!(other_order.value, None, "only the same order's entitlement is found");
    let other_course = Entitlement { course_uuid: "another-course", ..entitlement("EDX-7") };
    assert_eq!(client.find_entitlement(&other_course).await.expect("listed").value, None);

    let enrollments = lms.enrollments();
    assert_eq!(enrollments.len(), 1);
    assert_eq!(
        (enrollments[0].user.as_str(), enrollments[0].mode.as_str(), enrollments[0].course_details.course_id.as_str()),
        ("ada", "verified", "course-v1:edX+DemoX+Demo_Course")
    );
    assert!(enrollments[0].is_active);
    assert!(
        enrollments[0].enrollment_attributes.iter().any(|a| a["name"] == "order_number" && a["value"] == "EDX-100042"),
        "{enrollments:?}"
    );
    let entitlements = lms.entitlements();
    assert_eq!(entitlements.len(), 1);
    assert_eq!(
        (entitlements[0].uuid.as_str(), entitlements[0].order_number.as_str()),
        (granted.value.as_str(), "EDX-7")
    );
    assert_eq!(lms.tokens_issued(), 1, "one token, reused for every call");

    shutdown.cancel();
    lms.wait().await.expect("clean stop");
}

#[tokio::test]
async fn the_lms_client_revokes_what_it_granted_after_a_refund() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let client = client_of(&lms, CLIENT_SECRET);
    client.enroll(&enrollment("ada", "verified")).await.expect("enrolled");
    let refund = RefundNote {
        amount: "49.00",
        currency: "USD",
        reason: "requested_by_customer",
        source: "support",
        refunded_at: chrono::DateTime::from_timestamp(1_763_100_000, 0).unwrap(),
    };
    client.unenroll(&enrollment("ada", "verified"), &refund).await.expect("unenrolled");
    let enrollments = lms.enrollments();
    assert_eq!(enrollments.len(), 1, "the same enrollment, deactivated");
    assert!(!enrollments[0].is_active);
    assert!(enrollments[0].enrollment_attributes.iter().any(|a| a["namespace"] == "refund" && a["value"] == "49.00"));

    let granted = client.grant_entitlement(&entitlement("EDX-7")).await.expect("granted");
    assert_eq!(client.revoke_entitlement(&granted.value).await.expect("expired").status, 204);
    assert!(lms.entitlements()[0].expired);
    let again = client.revoke_entitlement(&granted.value).await.expect("already gone counts as done");
    assert_eq!(again.status, 204, "expiring twice is expiring once");
    let unknown = client.revoke_entitlement("no-such-uuid").await.expect("an unknown one is gone too");
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn a_repeat_enrollment_updates_the_mode_instead_of_adding_one() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let client = client_of(&lms, CLIENT_SECRET);
    client.enroll(&enrollment("ada", "audit")).await.expect("enrolled");
    client.enroll(&enrollment("ada", "verified")).await.expect("enrolled again");
    client.enroll(&enrollment("grace", "audit")).await.expect("another learner");
    let modes: Vec<(String, String)> = lms.enrollments().into_iter().map(|e| (e.user, e.mode)).collect();
    assert_eq!(modes, vec![("ada".into(), "verified".into()), ("grace".into(), "audit".into())]);
}

#[tokio::test]
async fn a_wrong_client_secret_is_an_authentication_error() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let error = client_of(&lms, "not-the-secret").enroll(&enrollment("ada", "verified")).await.unwrap_err();
    let LmsError::Authentication(message) = &error else { panic!("{error:?}") };
    assert!(message.contains("401") && message.contains("invalid_client"), "{message}");
    assert!(lms.enrollments().is_empty());
    assert_eq!(lms.tokens_issued(), 0);
}

#[tokio::test]
async fn a_token_it_no_longer_knows_is_refused_and_the_client_fetches_another() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let client = client_of(&lms, CLIENT_SECRET);
    client.enroll(&enrollment("ada", "verified")).await.expect("enrolled");
    lms.revoke_tokens();
    client.enroll(&enrollment("grace", "verified")).await.expect("enrolled after one 401");
    assert_eq!(lms.tokens_issued(), 2, "the 401 made the client fetch a second token");
    assert_eq!(lms.enrollments().len(), 2);
}

#[tokio::test]
async fn calls_without_a_token_it_issued_are_401() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let http = reqwest::Client::new();
    let issued = token(&http, &lms).await;
    let body = json!({"user": "ada", "mode": "verified", "course_details": {"course_id": "course-v1:a+b+c"}});
    for authorization in [None, Some("JWT not-a-token".to_string()), Some(format!("Bearer {issued}"))] {
        let mut enroll = http.post(format!("{}{ENROLLMENT}", lms.url())).json(&body);
        let mut list = http.get(format!("{}{ENTITLEMENTS}?user=ada", lms.url()));
        if let Some(value) = &authorization {
            enroll = enroll.header("authorization", value);
            list = list.header("authorization", value);
        }
        for request in [enroll, list] {
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 401, "{authorization:?}");
            assert_eq!(answer.headers()["www-authenticate"], "JWT realm=\"api\"");
            let detail: Value = answer.json().await.unwrap();
            assert!(detail["detail"].is_string(), "{detail}");
        }
    }
    assert!(lms.enrollments().is_empty());
    let accepted = http
        .post(format!("{}{ENROLLMENT}", lms.url()))
        .header("authorization", format!("JWT {issued}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let enrolled: Value = accepted.json().await.unwrap();
    assert_eq!(enrolled["user"], "ada");
    assert_eq!(enrolled["is_active"], true);
    assert_eq!(enrolled["course_details"]["course_id"], "course-v1:a+b+c");
}

#[tokio::test]
async fn bad_bodies_are_400_naming_what_is_wrong() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let http = reqwest::Client::new();
    let authorization = format!("JWT {}", token(&http, &lms).await);
    let cases: [(&str, &str, &str); 8] = [
        (ENROLLMENT, "not json", "not JSON"),
        (ENROLLMENT, "[]", "JSON object"),
        (ENROLLMENT, r#"{"mode": "verified", "course_details": {"course_id": "c"}}"#, "user"),
        (ENROLLMENT, r#"{"user": "ada", "course_details": {"course_id": "c"}}"#, "mode"),
        (ENROLLMENT, r#"{"user": "ada", "mode": "verified"}"#, "course_details.course_id"),
        (
            ENROLLMENT,
            r#"{"user": "ada", "mode": "verified", "course_details": {"course_id": 7}}"#,
            "course_details.course_id",
        ),
        (ENTITLEMENTS, r#"{"user": "ada", "mode": "verified"}"#, "course_uuid"),
        (ENTITLEMENTS, r#"{"user": "ada", "mode": "verified", "course_uuid": "c", "order_number": 5}"#, "order_number"),
    ];
    for (path, body, named) in cases {
        let answer = http
            .post(format!("{}{path}", lms.url()))
            .header("authorization", &authorization)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{path} {body}");
        let message: Value = answer.json().await.unwrap();
        assert!(message["message"].as_str().unwrap().contains(named), "{body}: {message}");
    }
    // Through the real client: an empty username is refused, not recorded.
    let error = client_of(&lms, CLIENT_SECRET).enroll(&enrollment("", "verified")).await.unwrap_err();
    assert_eq!(error.status(), Some(400), "{error:?}");
    assert!(lms.enrollments().is_empty() && lms.entitlements().is_empty());
}

#[tokio::test]
async fn the_token_endpoint_refuses_other_grants_and_token_types() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let http = reqwest::Client::new();
    for (form, error) in [
        (format!("grant_type=password&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"), "unsupported_grant_type"),
        (
            format!("grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}&token_type=mac"),
            "invalid_request",
        ),
        ("grant_type=client_credentials&client_id=someone&client_secret=x".to_string(), "invalid_client"),
    ] {
        let answer = http
            .post(format!("{}/oauth2/access_token", lms.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), if error == "invalid_client" { 401 } else { 400 }, "{form}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], error, "{form}");
    }
    assert_eq!(lms.tokens_issued(), 0);
}

#[tokio::test]
async fn the_root_and_dev_listings_say_what_this_is_and_what_it_recorded() {
    let shutdown = Shutdown::new();
    let lms = dev_lms(&shutdown).await;
    let client = client_of(&lms, CLIENT_SECRET);
    client.enroll(&enrollment("ada", "verified")).await.expect("enrolled");
    let granted = client.grant_entitlement(&entitlement("EDX-7")).await.expect("granted").value;

    let http = reqwest::Client::new();
    let root = http.get(lms.url()).send().await.unwrap().text().await.unwrap();
    assert!(root.contains("DEVELOPMENT LMS") && root.contains("not Open edX"), "{root}");
    let enrollments: Value =
        http.get(format!("{}/dev/enrollments", lms.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(enrollments.as_array().unwrap().len(), 1);
    assert_eq!(enrollments[0]["user"], "ada");
    assert_eq!(enrollments[0]["course_details"]["course_id"], "course-v1:edX+DemoX+Demo_Course");
    let entitlements: Value =
        http.get(format!("{}/dev/entitlements", lms.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        entitlements,
        json!([{
            "uuid": granted, "user": "ada", "course_uuid": "6b8a0e2c-2d9b-4d5e-9d43-7d3a2f1c0b11",
            "mode": "verified", "order_number": "EDX-7"
        }])
    );
}

#[test]
fn it_is_off_unless_asked_and_ephemeral_ports_move_it() {
    let mut config = commerce_mesh::MeshConfig::default();
    assert!(!config.dev_lms.enabled);
    assert_eq!(config.dev_lms.listen, "127.0.0.1:18000".parse().unwrap());
    config.use_ephemeral_ports();
    assert_eq!(config.dev_lms.listen.port(), 0);
}
