//! PurchaseHistory's settings (`MESH_PURCHASE_HISTORY__...`).

use kit::bus::consumer::ConsumerConfig;
use serde::{Deserialize, Serialize};

/// PurchaseHistory's own settings (`MESH_PURCHASE_HISTORY__...`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// The purchases stream (tests give each run its own).
    pub stream: String,
    /// The stream of `CustomerRetired` events, from CustomerIdentity.
    pub customers_stream: String,
    /// How the purchases stream is read.
    pub consumer: ConsumerConfig,
    /// Where CustomerIdentity answers, to resolve usernames.
    pub customer_identity_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stream: proto::streams::PURCHASES.into(),
            customers_stream: proto::streams::CUSTOMERS.into(),
            consumer: ConsumerConfig::default(),
            customer_identity_url: "http://127.0.0.1:50052".into(),
        }
    }
}
