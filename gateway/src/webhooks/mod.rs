//! Webhooks: routes for systems that call the gateway signed rather than with
//! a bearer token. Each checks its signature before reading anything else,
//! then calls a service over gRPC like any route. Only Stripe's is built
//! ([`stripe`]); another provider (PayPal, an app store) is another module
//! beside it with its own signature check and event mapping.

pub mod signature;
pub mod stripe;

use serde::{Deserialize, Serialize};

/// Every webhook's settings (`gateway.webhooks`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WebhooksConfig {
    /// `POST /v1/webhooks/stripe`: Stripe's `charge.refunded` events.
    pub stripe: stripe::StripeConfig,
}
