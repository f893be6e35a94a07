//! The gRPC face of the service: request validation, then the domain, then
//! the store. No SQL here.

use proto::commerce::fulfillment::v1::fulfillment_service_server::FulfillmentService;

/// Answers `commerce.fulfillment.v1.FulfillmentService`.
#[derive(Clone, Debug, Default)]
pub struct FulfillmentApi;

// Every RPC keeps the generated default (UNIMPLEMENTED) until the service is built.
#[tonic::async_trait]
impl FulfillmentService for FulfillmentApi {}
