//! The REST/JSON gateway in front of the mesh's gRPC services.
//!
//! It reads the mesh's FileDescriptorSet at start-up and derives every route
//! from the `google.api.http` rules and every access check from the
//! `commerce.auth.v1.access` options ([`binding`]): there are no hand-written
//! routes. Transcoding arrives with the gateway issue; until then the gateway
//! validates the bindings at start-up, answers `/healthz`, and answers every
//! other path 501 with a `google.rpc.Status` body.

pub mod access_log;
pub mod binding;
pub mod callers;
pub mod codec;
pub mod metrics;
pub mod openapi;
pub mod router;
pub mod server;
pub mod status;
pub mod template;
pub mod transcode;
pub mod webhooks;

pub use server::{Config, CorsConfig, Gateway, GatewayError, run, serve};
