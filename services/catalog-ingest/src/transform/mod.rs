//! Per-source transformers, declared in files rather than code.
//!
//! Each line of business has one TOML file, `config/catalog/sources/<source>.toml`,
//! saying for every event it sends which of its JSON paths become which field of
//! the canonical model ([`crate::domain`]), with defaults, value maps, coercions
//! and required paths; the file also carries the source's throttle [`Quota`].
//! The format is documented in `config/catalog/sources/README.md`.
//!
//! A [`SourceTransformer`] runs two steps of an ingestion:
//!
//! - VALIDATE ([`SourceTransformer::check`]): the payload has what the file
//!   requires for the event: required paths present and not blank, and every
//!   mapped value of a usable JSON type. Violations name source paths
//!   (`variants[1].ends_on`).
//! - TRANSFORM ([`SourceTransformer::transform`]): the payload is mapped and
//!   coerced to a [`CanonicalEvent`](crate::domain::CanonicalEvent), then
//!   checked with [`domain::validate`](crate::domain::validate).
//!   Violations name the source path where a coercion or value map failed, or
//!   the canonical path a domain rule names (`course_runs[1].end`).
//!
//! Either step reports every violation it finds, not only the first (up to
//! [`MAX_VIOLATIONS`]). Nothing here panics on any payload: paths are walked
//! one segment at a time (no recursion over the payload), payloads nested deeper
//! than [`MAX_DEPTH`] are refused up front, and money is parsed from the JSON
//! number's text, never through a float.
//!
//! One concept a file: `file` (the source file's format, and why one cannot be
//! used), `compile` (a file checked into what evaluation walks), `path` (JSON
//! paths and key templates), `eval` (one pass over a payload), `coerce` (raw
//! text to canonical values), `transformer` ([`SourceTransformer`], [`Sources`]).

mod coerce;
mod compile;
mod eval;
mod file;
mod path;
mod transformer;

pub use file::SourceConfigError;
pub use transformer::{SourceTransformer, Sources};

/// Payloads nested deeper than this (objects and arrays) fail VALIDATE before any path is read.
pub const MAX_DEPTH: usize = 64;

/// The most violations a step reports; past it, one last violation says how many more there were.
pub const MAX_VIOLATIONS: usize = 100;

/// A source's throttle quota: the `[quota]` table of its file.
pub use kit::throttle::Quota;
