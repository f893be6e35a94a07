//! The mesh's protobuf contracts, generated from `proto/` at build time.
//!
//! Modules follow the proto packages: [`commerce::fulfillment::v1`],
//! [`commerce::identity::v1`], [`commerce::catalog::v1`],
//! [`commerce::purchases::v1`], [`commerce::events::v1`], [`commerce::auth::v1`],
//! [`commerce::type::v1`], and the minimal [`google::api`].
//!
//! [`FILE_DESCRIPTOR_SET`] holds every file with its imports and custom
//! options, for server reflection and for the gateway, which reads each RPC's
//! `google.api.http` rule and `commerce.auth.v1.access` option from it:
//!
//! ```
//! let pool = proto::descriptor_pool().unwrap();
//! let service = pool
//!     .get_service_by_name("commerce.fulfillment.v1.FulfillmentService")
//!     .unwrap();
//! assert!(service.methods().any(|m| m.name() == "FulfillOrder"));
//! ```

#![allow(missing_docs, clippy::doc_lazy_continuation, clippy::large_enum_variant)]

include!(concat!(env!("OUT_DIR"), "/mesh.rs"));

/// Every proto file of the mesh, imports included, encoded as a
/// `google.protobuf.FileDescriptorSet` with custom options kept.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh_descriptor.bin"));

/// Fully qualified names of the four commerce services.
pub const COMMERCE_SERVICES: [&str; 4] = [
    "commerce.fulfillment.v1.FulfillmentService",
    "commerce.identity.v1.CustomerIdentityService",
    "commerce.catalog.v1.CatalogIngestService",
    "commerce.purchases.v1.PurchaseHistoryService",
];

/// Fully qualified names of the operators' dead-letter services, one per
/// component that consumes a stream (`proto/commerce/ops/v1/dead_letters.proto`
/// has their messages), in the order of the services in [`COMMERCE_SERVICES`]
/// that serve them.
pub const DEAD_LETTER_SERVICES: [&str; 2] =
    ["commerce.fulfillment.v1.FulfillmentDeadLetterService", "commerce.purchases.v1.PurchaseHistoryDeadLetterService"];

/// Decodes [`FILE_DESCRIPTOR_SET`] into a pool for run-time reflection.
pub fn descriptor_pool() -> Result<prost_reflect::DescriptorPool, prost_reflect::DescriptorError> {
    prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
}

/// The access option every RPC carries (`commerce.auth.v1.access`).
pub const ACCESS_OPTION: &str = "commerce.auth.v1.access";

/// Every RPC of the four commerce services and the dead-letter services by its path
/// (`/package.Service/Method`), with the scopes its access option requires.
/// An RPC without the option is left out: nobody may call it.
pub fn access_rules() -> Result<std::collections::BTreeMap<String, Vec<String>>, prost_reflect::DescriptorError> {
    let pool = descriptor_pool()?;
    let mut rules = std::collections::BTreeMap::new();
    let Some(access) = pool.get_extension_by_name(ACCESS_OPTION) else { return Ok(rules) };
    let services = COMMERCE_SERVICES.iter().chain(&DEAD_LETTER_SERVICES);
    for service in services.filter_map(|name| pool.get_service_by_name(name)) {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&access) {
                continue;
            }
            let rule = options.get_extension(&access);
            let Some(rule) =
                rule.as_message().and_then(|rule| rule.transcode_to::<commerce::auth::v1::AccessRule>().ok())
            else {
                continue;
            };
            rules.insert(format!("/{}/{}", service.full_name(), method.name()), rule.scopes);
        }
    }
    Ok(rules)
}

/// Event-bus stream names: the contract between the services that publish to
/// a stream and those that consume it.
pub mod streams {
    /// `PurchaseRecorded` events: published by Fulfillment (and PurchaseHistory's
    /// `RecordPurchase`), consumed by PurchaseHistory.
    pub const PURCHASES: &str = "commerce.purchases.v1";
    /// `FulfillmentCompleted` events: published by Fulfillment.
    pub const FULFILLMENTS: &str = "commerce.fulfillments.v1";
    /// `CustomerRetired` events: published by CustomerIdentity, consumed by
    /// Fulfillment and PurchaseHistory (each replaces the retired learner's username).
    pub const CUSTOMERS: &str = "commerce.customers.v1";
}
