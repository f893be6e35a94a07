//! The REST/JSON gateway in front of the mesh's gRPC services.
//!
//! It reads the mesh's FileDescriptorSet at start-up and derives every route
//! from the `google.api.http` rules and every access check from the
//! `commerce.auth.v1.access` options ([`binding`]): there are no hand-written
//! routes. [`router`] matches a request to its RPC by [`template`],
//! [`transcode`] turns the JSON into the request message and the answer back,
//! and [`server`] runs the whole pipeline; every refusal is a
//! `google.rpc.Status` body ([`status`]).

pub mod access_log;
pub mod binding;
pub mod callers;
pub mod codec;
pub mod metrics;
pub mod openapi;
mod problems;
pub mod router;
pub mod server;
pub mod status;
pub mod template;
pub mod transcode;
pub mod webhooks;

pub use server::{Config, CorsConfig, Gateway, GatewayError, run, serve};
