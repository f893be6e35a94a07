//! The optional downstream: after an event is committed, the same changes go
//! to a course-discovery REST API in dependency order (course, course runs,
//! seats), each call recorded as a DISCOVERY step; the first failure names its
//! call and skips the rest.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::CanonicalEvent;
use crate::store::{Step, StepResult, StepStatus};

/// Where the discovery API is; unset `url`: no downstream calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiscoveryConfig {
    /// Base URL, such as `https://discovery.example.com`.
    pub url: Option<String>,
    /// Longest wait for one call.
    #[serde(with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
}

/// A client for the discovery API.
#[derive(Clone, Debug)]
pub struct Discovery {
    http: reqwest::Client,
    base: String,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("catalog_ingest.discovery: {0}")]
pub struct DiscoveryError(String);

impl Discovery {
    /// The client for `config`, or None when no URL is configured.
    pub fn new(config: &DiscoveryConfig) -> Result<Option<Self>, DiscoveryError> {
        let Some(url) = config.url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(DiscoveryError(format!("url {url:?} is not http(s)")));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout.unwrap_or(Duration::from_secs(10)))
            .build()
            .map_err(|e| DiscoveryError(e.to_string()))?;
        Ok(Some(Self { http, base: url.trim_end_matches('/').to_string() }))
    }

    /// The calls an applied event makes, in order, as (method and path, JSON body).
    pub fn calls(event: &CanonicalEvent) -> Vec<(String, serde_json::Value)> {
        let mut calls = Vec::new();
        let mut course = |course: &crate::domain::Course| {
            calls.push((format!("PUT /api/v1/courses/{}/", course.product_key), serde_json::json!(course)));
        };
        let runs: &[crate::domain::CourseRun] = match event {
            CanonicalEvent::ProductUpserted { course: c, runs, .. } => {
                course(c);
                runs
            }
            CanonicalEvent::CourseUpserted { course: c } => {
                course(c);
                &[]
            }
            CanonicalEvent::CourseRunUpserted { run, .. } => std::slice::from_ref(run),
            CanonicalEvent::InstructorUpserted { .. } | CanonicalEvent::ProductRetired { .. } => &[],
        };
        for run in runs {
            let mut fields = serde_json::json!(run);
            if let Some(object) = fields.as_object_mut() {
                object.remove("seats");
            }
            calls.push((format!("PUT /api/v1/course_runs/{}/", run.course_run_key), fields));
        }
        for run in runs {
            calls
                .push((format!("PUT /api/v1/course_runs/{}/seats/", run.course_run_key), serde_json::json!(run.seats)));
        }
        calls
    }

    /// Makes the event's calls in order; one step result per call.
    pub async fn push(&self, event: &CanonicalEvent) -> Vec<StepResult> {
        let mut results = Vec::new();
        let mut failed = false;
        for (call, body) in Self::calls(event) {
            let step = |status, reason: String| StepResult {
                step: Step::Discovery,
                status,
                field_path: String::new(),
                reason,
                call: call.clone(),
            };
            if failed {
                results.push(step(StepStatus::Skipped, "an earlier discovery call failed".into()));
                continue;
            }
            let path = call.trim_start_matches("PUT ");
            let mut headers = http::HeaderMap::new();
            kit::trace::inject_current_context(&mut headers);
            let sent = self.http.put(format!("{}{path}", self.base)).headers(headers).json(&body).send().await;
            match sent {
                Ok(response) if response.status().is_success() => results.push(step(StepStatus::Ok, String::new())),
                Ok(response) => {
                    failed = true;
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    let text: String = text.chars().take(300).collect();
                    results.push(step(StepStatus::Failed, format!("discovery answered {status}: {text}")));
                }
                Err(error) => {
                    failed = true;
                    results.push(step(StepStatus::Failed, format!("discovery unreachable: {error}")));
                }
            }
        }
        results
    }
}
