//! The README quickstart's data: the example catalog source it ingests
//! (`config/catalog/sources/examples/exec-ed-partner`) and the ids of one run
//! of it, unique per run since Redis keeps its streams between runs.

use std::path::Path;

use commerce_mesh::MeshConfig;
use serde_json::{Value, json};

/// The example source whose events are ingested.
pub const SOURCE: &str = "exec-ed-partner";
/// The run `course_run.upserted.json` describes (the README's run, open for
/// enrollment until 2099: the quickstart does not expire).
pub const COURSE_RUN: &str = "course-v1:NorthbridgeX+LSC-201+ON-DEMAND";
/// The mode the run's seat sells.
pub const MODE: &str = "paid-executive-education";
/// The source's events, in the order they must be applied.
pub const CATALOG_EVENTS: [&str; 3] = ["instructor.upserted", "course.upserted", "course_run.upserted"];

/// The mesh as the quickstart runs it (`up --with-dev-lms` with
/// `check_course_runs` and the example catalog sources), on free ports, its
/// files under `data_dir`.
pub fn mesh_config(data_dir: &Path) -> MeshConfig {
    let mut config = MeshConfig { data_dir: data_dir.to_path_buf(), ..Default::default() };
    config.use_ephemeral_ports();
    config.dev_lms.enabled = true;
    config.fulfillment.settings.check_course_runs = true;
    config.catalog_ingest.settings.sources_dir =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../config/catalog/sources").into();
    config
}

/// One run's ids: the customer, the LMS user linked to it.
#[derive(Clone, Debug)]
pub struct QuickstartRun {
    /// Eight hex digits, unique per run.
    pub run: String,
    /// The commerce customer, `cust-<run>`.
    pub customer_id: String,
    /// The LMS username, `ada-<run>`.
    pub username: String,
    /// The LMS user id, derived from the run.
    pub lms_user_id: String,
}

impl QuickstartRun {
    /// Fresh ids.
    pub fn new() -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let lms_user_id = (u64::from_str_radix(&run, 16).unwrap_or(0) % 1_000_000_000 + 1).to_string();
        Self { customer_id: format!("cust-{run}"), username: format!("ada-{run}"), lms_user_id, run }
    }

    /// The REST body that ingests `event` (one of [`CATALOG_EVENTS`], the
    /// `index`th): each occurs a second after the one before, an hour ago,
    /// since an older event would be skipped as stale.
    pub fn catalog_event(&self, index: usize, event: &str) -> Value {
        let occurred = chrono::Utc::now() - chrono::Duration::hours(1) + chrono::Duration::seconds(index as i64);
        json!({
            "event_id": format!("{event}-{}", self.run),
            "event_name": event,
            "occurred_at": occurred.to_rfc3339(),
            "payload": example(event),
        })
    }
}

impl Default for QuickstartRun {
    fn default() -> Self {
        Self::new()
    }
}

/// The example payload of `event`.
pub fn example(event: &str) -> Value {
    let text = match event {
        "instructor.upserted" => {
            include_str!("../../config/catalog/sources/examples/exec-ed-partner/instructor.upserted.json")
        }
        "course.upserted" => include_str!("../../config/catalog/sources/examples/exec-ed-partner/course.upserted.json"),
        "course_run.upserted" => {
            include_str!("../../config/catalog/sources/examples/exec-ed-partner/course_run.upserted.json")
        }
        other => panic!("no example for {other}"),
    };
    serde_json::from_str(text).unwrap_or_else(|error| panic!("the example of {event} is not JSON: {error}"))
}
