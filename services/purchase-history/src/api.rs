//! The gRPC face of the service: request validation, then the domain, then
//! the store. No SQL here.

use proto::commerce::purchases::v1::purchase_history_service_server::PurchaseHistoryService;

/// Answers `commerce.purchases.v1.PurchaseHistoryService`.
#[derive(Clone, Debug, Default)]
pub struct PurchaseHistoryApi;

// Every RPC keeps the generated default (UNIMPLEMENTED) until the service is built.
#[tonic::async_trait]
impl PurchaseHistoryService for PurchaseHistoryApi {}
