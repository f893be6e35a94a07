//! The development LMS inside the whole mesh (`dev_lms.enabled`, as
//! `up --with-dev-lms`): an order placed over gRPC ends up in its enrollments.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use commerce_mesh::Component;
use kit::shutdown::Shutdown;
use mesh_tests::orders::{COURSE_RUN, course_run_order, link_ada};
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use serde_json::Value;

/// Guards against a hang, not a timing assertion: generous on purpose.
const GUARD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_with_the_dev_lms_fulfills_an_order_into_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = commerce_mesh::MeshConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.dev_lms.enabled = true;
    let mesh = commerce_mesh::start(config, Shutdown::new()).await.expect("mesh starts");
    let lms_url = mesh.dev_lms_url().expect("the dev LMS runs");
    let banner = mesh.banner();
    let line = banner.lines().find(|line| line.trim_start().starts_with("dev-lms")).expect("a dev-lms line");
    assert_eq!(
        line.split_whitespace().take(3).collect::<Vec<_>>(),
        ["dev-lms", lms_url.as_str(), "(development"],
        "{banner}"
    );
    for component in [Component::Fulfillment, Component::CustomerIdentity] {
        mesh_tests::health::wait_serving(&mesh.grpc_url(component), GUARD).await.expect("ready");
    }
    let mut identity = CustomerIdentityServiceClient::new(mesh.grpc_channel(Component::CustomerIdentity));
    identity.upsert_customer(link_ada("cust-7")).await.expect("customer linked");
    let mut fulfillment = FulfillmentServiceClient::new(mesh.grpc_channel(Component::Fulfillment));
    let accepted =
        fulfillment.fulfill_order(course_run_order("EDX-200", "cust-7")).await.expect("accepted").into_inner();
    let id = accepted.fulfillments[0].fulfillment_id.clone();

    // Bounded wait on the job's state: the worker calls the dev LMS in the background.
    let done = tokio::time::timeout(GUARD, async {
        loop {
            let job = mesh_tests::orders::fulfillment(&mut fulfillment, &id).await.expect("get");
            match job.state() {
                pb::FulfillmentState::Succeeded | pb::FulfillmentState::Failed => return job,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the fulfillment finishes");
    assert_eq!(done.state(), pb::FulfillmentState::Succeeded, "{:?}", done.last_error);

    let enrollments: Value = reqwest::get(format!("{lms_url}/dev/enrollments")).await.unwrap().json().await.unwrap();
    let listed = enrollments.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{enrollments}");
    assert_eq!(listed[0]["user"], "ada", "the learner CustomerIdentity resolved");
    assert_eq!(listed[0]["mode"], "verified");
    assert_eq!(listed[0]["course_details"]["course_id"], COURSE_RUN);
    mesh.stop().await.expect("clean stop");
}
