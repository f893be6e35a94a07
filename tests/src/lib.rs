//! Harness for end-to-end tests of the whole mesh.
//!
//! [`collector::Collector`] is an in-process OTLP/gRPC trace collector: point
//! the mesh's telemetry at it and assert on the spans it receives.
//! [`health::wait_serving`] waits until a component is ready; [`orders`] has
//! the orders tests place; [`storage::Storage`] runs one test on embedded
//! storage and on Postgres + Redis; [`lms_stub::enrolling`] is an LMS that
//! enrolls everyone; [`quickstart`] has the README quickstart's data.

pub mod chaos_lms;
pub mod collector;
pub mod health;
pub mod lms_stub;
pub mod orders;
pub mod quickstart;
pub mod storage;
