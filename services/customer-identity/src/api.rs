//! The gRPC face of the service: request validation, then the domain, then
//! the store. No SQL here.

use proto::commerce::identity::v1::customer_identity_service_server::CustomerIdentityService;

/// Answers `commerce.identity.v1.CustomerIdentityService`.
#[derive(Clone, Debug, Default)]
pub struct CustomerIdentityApi;

// Every RPC keeps the generated default (UNIMPLEMENTED) until the service is built.
#[tonic::async_trait]
impl CustomerIdentityService for CustomerIdentityApi {}
