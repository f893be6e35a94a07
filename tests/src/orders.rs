//! Orders the mesh tests place, and the learner who places them.

use kit::client::TracedChannel;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::identity::v1::UpsertCustomerRequest;

/// The course run [`course_run_order`] enrolls in.
pub const COURSE_RUN: &str = "course-v1:edX+DemoX+2025_T1";

/// A free one-line order for [`COURSE_RUN`] in verified mode, naming the
/// learner only by their commerce `customer_id` (CustomerIdentity resolves it).
pub fn course_run_order(number: &str, customer_id: &str) -> pb::FulfillOrderRequest {
    pb::FulfillOrderRequest {
        order_number: number.into(),
        date_placed: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 0 }),
        learner: Some(pb::Learner { customer_id: customer_id.into(), ..Default::default() }),
        line_items: vec![pb::LineItem {
            line_item_id: "1".into(),
            product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                course_run_key: COURSE_RUN.into(),
                mode: "verified".into(),
                credit_provider_id: String::new(),
            })),
            price: Some(proto::commerce::r#type::v1::Money { currency_code: "USD".into(), amount: "0".into() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Links the commerce customer `customer_id` to the LMS user `ada` (id 4242).
pub fn link_ada(customer_id: &str) -> UpsertCustomerRequest {
    UpsertCustomerRequest {
        customer_id: customer_id.into(),
        lms_user_id: "4242".into(),
        lms_username: "ada".into(),
        email: "ada@example.org".into(),
        expected_version: None,
    }
}

/// The fulfillment `id` as Fulfillment answers now (`GetFulfillment`).
pub async fn fulfillment(
    client: &mut FulfillmentServiceClient<TracedChannel>,
    id: &str,
) -> Result<pb::Fulfillment, tonic::Status> {
    let answer = client.get_fulfillment(pb::GetFulfillmentRequest { fulfillment_id: id.into() }).await?;
    answer.into_inner().fulfillment.ok_or_else(|| tonic::Status::internal("GetFulfillment answered no fulfillment"))
}
