//! The one binary's library: which components exist, how they are configured,
//! and how they start, alone ([`serve`]) or all in one process ([`start`], what
//! `commerce-mesh up` runs), and how their databases are migrated ([`migrate`]).
//!
//! Tests start the whole mesh in-process with [`start`], on ports of their
//! choosing (port 0 picks a free one):
//!
//! ```no_run
//! # async fn run() -> Result<(), commerce_mesh::MeshError> {
//! use commerce_mesh::{Component, MeshConfig};
//!
//! let mut config = MeshConfig::default();
//! config.use_ephemeral_ports();
//! let mesh = commerce_mesh::start(config, kit::shutdown::Shutdown::new()).await?;
//! let identity = mesh.grpc_url(Component::CustomerIdentity);
//! mesh.stop().await?;
//! # Ok(()) }
//! ```

mod cli_output;
mod component;
mod config;
pub mod dead_letters_cli;
pub mod dev_lms;
pub mod dev_tokens;
pub mod fulfillments_cli;
pub mod import;
mod mesh;
pub mod refund;
pub mod trace_ui;

pub use component::{Component, MigrateTarget};
pub use config::{GatewayConfig, MeshConfig, NoSettings, ServiceConfig};
pub use mesh::{MeshError, RunningMesh, migrate, serve, start, start_with_trace_store, wait_for_migrations};
