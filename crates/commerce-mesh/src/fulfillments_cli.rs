//! `commerce-mesh fulfillments list|retry`: support staff and SREs find the
//! fulfillments that are stuck, across orders, and re-drive the failed ones
//! in bulk, through Fulfillment's `ListFulfillments` and `RetryFulfillments`.
//!
//! Talks gRPC to Fulfillment (`--fulfillment`, default: where this
//! configuration has it listen) with `--token` / `COMMERCE_MESH_TOKEN`, or a
//! development token minted with the development secret, as `refund` does.
//! Prints a table with aligned columns, or JSON with `--json`.

use std::time::{Duration, SystemTime};

use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use serde_json::json;

use crate::cli_output::{channel_to, pretty, table, time};
use crate::{Component, MeshConfig};

/// Which fulfillments, where, and as whom.
#[derive(Clone, Debug, clap::Args)]
pub struct Selection {
    /// Only fulfillments in this state (repeatable): PENDING, IN_PROGRESS,
    /// SUCCEEDED, FAILED, REVOKING, REVOKED, REVOKE_FAILED, CANCELLED.
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// Only those that changed within this long, such as `2h` or `30m`.
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only enrollments in this course run, `course-v1:ORG+NUMBER+RUN`.
    #[arg(long)]
    pub course_run: Option<String>,
    /// Only those whose last error is of this kind: REJECTED, UNAVAILABLE,
    /// TIMEOUT, CONNECTION, AUTHENTICATION, ATTEMPTS_EXHAUSTED.
    #[arg(long)]
    pub error_kind: Option<String>,
    /// Only orders from this commerce system, such as `commercetools`.
    #[arg(long)]
    pub source_system: Option<String>,
    /// Fulfillment's gRPC address; default: where this configuration has it listen.
    #[arg(long)]
    pub fulfillment: Option<String>,
    /// A bearer token with `fulfillment:read` (`fulfillment:write` to retry);
    /// default: a development token minted with the development secret, when there is one.
    #[arg(long, env = "COMMERCE_MESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What to do with the fulfillments selected.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum FulfillmentsCommand {
    /// List fulfillments across orders, the most recently changed first, with how many match.
    List {
        /// Which fulfillments, where, as whom.
        #[command(flatten)]
        selection: Selection,
        /// Show at most this many (1 to 10000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Re-drive the FAILED (and REVOKE_FAILED) fulfillments selected: none
    /// when more match than `--max`. The transitions record the token's subject.
    Retry {
        /// Which fulfillments, where, as whom.
        #[command(flatten)]
        selection: Selection,
        /// The most to retry (1 to 1000); when more match, none is retried.
        #[arg(long)]
        max: i32,
        /// Only say what would be retried; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The most `list --limit` shows: beyond it, narrow the filter.
const MAX_LIMIT: u32 = 10_000;
/// The largest page Fulfillment serves.
const MAX_PAGE: u32 = 500;

/// Why a fulfillments command failed.
#[derive(Debug, thiserror::Error)]
pub enum FulfillmentsError {
    /// An argument is not one this command knows.
    #[error("{0}")]
    Argument(String),
    /// No token could be had.
    #[error(transparent)]
    Token(#[from] crate::dev_tokens::DevTokenError),
    /// The address is invalid.
    #[error(transparent)]
    Client(#[from] kit::client::ClientError),
    /// Fulfillment refused or failed; its message names the field.
    #[error("Fulfillment answered {}", crate::cli_output::answered(.0))]
    Service(tonic::Status),
}

/// Runs `command` against the Fulfillment `config` places; answers what to print.
pub async fn run(config: &MeshConfig, command: FulfillmentsCommand) -> Result<String, FulfillmentsError> {
    let (selection, scopes): (&Selection, &[&str]) = match &command {
        FulfillmentsCommand::List { selection, .. } => (selection, &["fulfillment:read"]),
        FulfillmentsCommand::Retry { selection, .. } => (selection, &["fulfillment:read", "fulfillment:write"]),
    };
    let filter = filter(selection, SystemTime::now())?;
    let address = selection.fulfillment.as_deref();
    let channel =
        channel_to::<FulfillmentsError>(config, Component::Fulfillment, address, selection.token.clone(), scopes)?;
    let mut client = FulfillmentServiceClient::new(channel);
    let json = selection.json;
    match command {
        FulfillmentsCommand::List { limit, .. } => {
            if limit == 0 || limit > MAX_LIMIT {
                return Err(FulfillmentsError::Argument(format!("--limit must be between 1 and {MAX_LIMIT}")));
            }
            let (jobs, total) = list(&mut client, filter, limit).await?;
            Ok(if json { pretty(&listing_json(&jobs, total)) } else { listing_table(&jobs, total) })
        }
        FulfillmentsCommand::Retry { max, dry_run, .. } => {
            let request = pb::RetryFulfillmentsRequest { filter: Some(filter), max_jobs: max, dry_run };
            let answer = client.retry_fulfillments(request).await.map_err(FulfillmentsError::Service)?.into_inner();
            Ok(if json { pretty(&retry_json(&answer)) } else { retry_summary(&answer) })
        }
    }
}

/// Up to `limit` fulfillments, page after page, and how many match in all.
async fn list(
    client: &mut FulfillmentServiceClient<kit::client::TracedChannel>,
    filter: pb::FulfillmentFilter,
    limit: u32,
) -> Result<(Vec<pb::Fulfillment>, i64), FulfillmentsError> {
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let wanted = (limit as usize).saturating_sub(jobs.len()).min(MAX_PAGE as usize);
        let request = pb::ListFulfillmentsRequest {
            filter: Some(filter.clone()),
            page_size: i32::try_from(wanted).unwrap_or(MAX_PAGE as i32),
            page_token,
        };
        let page = client.list_fulfillments(request).await.map_err(FulfillmentsError::Service)?.into_inner();
        jobs.extend(page.fulfillments);
        if page.next_page_token.is_empty() || jobs.len() >= limit as usize {
            return Ok((jobs, page.total_size));
        }
        page_token = page.next_page_token;
    }
}

/// The filter the flags name, `--since` counted back from `now`.
pub fn filter(selection: &Selection, now: SystemTime) -> Result<pb::FulfillmentFilter, FulfillmentsError> {
    let mut states = Vec::with_capacity(selection.states.len());
    for name in &selection.states {
        let state = named(name, "FULFILLMENT_STATE_", pb::FulfillmentState::from_str_name)
            .filter(|state| *state != pb::FulfillmentState::Unspecified)
            .ok_or_else(|| {
                FulfillmentsError::Argument(format!(
                    "--state {name}: not a fulfillment state; one of PENDING, IN_PROGRESS, SUCCEEDED, FAILED, \
                     REVOKING, REVOKED, REVOKE_FAILED, CANCELLED"
                ))
            })?;
        states.push(state as i32);
    }
    let error_kind = match &selection.error_kind {
        None => pb::FulfillmentErrorKind::Unspecified,
        Some(name) => named(name, "FULFILLMENT_ERROR_KIND_", pb::FulfillmentErrorKind::from_str_name)
            .filter(|kind| *kind != pb::FulfillmentErrorKind::Unspecified)
            .ok_or_else(|| {
                FulfillmentsError::Argument(format!(
                    "--error-kind {name}: not an error kind; one of REJECTED, UNAVAILABLE, TIMEOUT, CONNECTION, \
                     AUTHENTICATION, ATTEMPTS_EXHAUSTED"
                ))
            })?,
    };
    let updated_after = match selection.since {
        None => None,
        Some(since) => Some(
            now.checked_sub(since)
                .map(prost_types::Timestamp::from)
                .ok_or_else(|| FulfillmentsError::Argument(format!("--since {since:?} reaches before 1970")))?,
        ),
    };
    Ok(pb::FulfillmentFilter {
        states,
        course_run_key: selection.course_run.clone().unwrap_or_default(),
        error_kind: error_kind as i32,
        source_system: selection.source_system.clone().unwrap_or_default(),
        updated_after,
        updated_before: None,
    })
}

/// An enum value by its short name (`failed`, `FAILED`) or its full one.
fn named<T>(name: &str, prefix: &str, from_name: fn(&str) -> Option<T>) -> Option<T> {
    let upper = name.trim().to_ascii_uppercase().replace('-', "_");
    from_name(&upper).or_else(|| from_name(&format!("{prefix}{upper}")))
}

fn short<'a>(full: &'a str, prefix: &str) -> &'a str {
    full.strip_prefix(prefix).unwrap_or(full)
}

fn state_name(state: i32) -> String {
    pb::FulfillmentState::try_from(state)
        .map(|s| short(s.as_str_name(), "FULFILLMENT_STATE_").to_string())
        .unwrap_or_else(|_| state.to_string())
}

fn error_kind_name(job: &pb::Fulfillment) -> String {
    job.last_error
        .as_ref()
        .and_then(|error| pb::FulfillmentErrorKind::try_from(error.kind).ok())
        .filter(|kind| *kind != pb::FulfillmentErrorKind::Unspecified)
        .map(|kind| short(kind.as_str_name(), "FULFILLMENT_ERROR_KIND_").to_string())
        .unwrap_or_default()
}

/// The course run a line enrols in; empty for an entitlement.
fn course_run_key(job: &pb::Fulfillment) -> &str {
    match job.line_item.as_ref().and_then(|line| line.product.as_ref()) {
        Some(pb::line_item::Product::CourseRun(run)) => &run.course_run_key,
        _ => "",
    }
}

/// The course an entitlement is for; empty for a course run.
fn course_uuid(job: &pb::Fulfillment) -> &str {
    match job.line_item.as_ref().and_then(|line| line.product.as_ref()) {
        Some(pb::line_item::Product::Entitlement(entitlement)) => &entitlement.course_uuid,
        _ => "",
    }
}

/// The course run, or the course of an entitlement, for the table.
fn product(job: &pb::Fulfillment) -> String {
    match job.line_item.as_ref().and_then(|line| line.product.as_ref()) {
        Some(pb::line_item::Product::CourseRun(run)) => run.course_run_key.clone(),
        Some(pb::line_item::Product::Entitlement(entitlement)) => format!("course {}", entitlement.course_uuid),
        None => String::new(),
    }
}

/// The listing as a table, and how many of how many it shows.
pub fn listing_table(jobs: &[pb::Fulfillment], total: i64) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            vec![
                job.fulfillment_id.clone(),
                job.order_number.clone(),
                job.line_item_id.clone(),
                product(job),
                state_name(job.state),
                error_kind_name(job),
                time(job.update_time.as_ref()),
            ]
        })
        .collect();
    let mut out = table(&["ID", "ORDER", "LINE", "COURSE RUN", "STATE", "ERROR KIND", "UPDATED"], &rows);
    out.push_str(&format!("{} of {total} matching fulfillments shown\n", jobs.len()));
    out
}

fn listing_json(jobs: &[pb::Fulfillment], total: i64) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = jobs
        .iter()
        .map(|job| {
            let error = job.last_error.as_ref();
            json!({
                "fulfillment_id": job.fulfillment_id,
                "order_number": job.order_number,
                "order_id": job.order_id,
                "line_item_id": job.line_item_id,
                "course_run_key": course_run_key(job),
                "course_uuid": course_uuid(job),
                "state": state_name(job.state),
                "attempts": job.attempts,
                "error_kind": error_kind_name(job),
                "lms_status": error.map(|e| e.lms_status).unwrap_or_default(),
                "error_message": error.map(|e| e.message.as_str()).unwrap_or_default(),
                "create_time": time(job.create_time.as_ref()),
                "update_time": time(job.update_time.as_ref()),
            })
        })
        .collect();
    json!({ "total_size": total, "fulfillments": jobs })
}

/// What a retry did (or would do), and the ids.
pub fn retry_summary(answer: &pb::RetryFulfillmentsResponse) -> String {
    let mut out = if answer.dry_run {
        format!("dry run: would retry {} fulfillments; nothing was changed\n", answer.retried_count)
    } else {
        format!("retried {} fulfillments: due now, the workers take them up\n", answer.retried_count)
    };
    for id in &answer.fulfillment_ids {
        out.push_str(id);
        out.push('\n');
    }
    out
}

fn retry_json(answer: &pb::RetryFulfillmentsResponse) -> serde_json::Value {
    json!({
        "dry_run": answer.dry_run,
        "retried_count": answer.retried_count,
        "fulfillment_ids": answer.fulfillment_ids,
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn selection() -> Selection {
        Selection {
            states: vec![],
            since: None,
            course_run: None,
            error_kind: None,
            source_system: None,
            fulfillment: None,
            token: None,
            json: false,
        }
    }

    #[test]
    fn flags_become_the_filter_and_unknown_names_are_refused() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let asked = Selection {
            states: vec!["failed".into(), "REVOKE-FAILED".into(), "FULFILLMENT_STATE_PENDING".into()],
            since: Some(Duration::from_secs(7200)),
            course_run: Some("course-v1:edX+DemoX+T1".into()),
            error_kind: Some("rejected".into()),
            ..selection()
        };
        let filter = filter(&asked, now).unwrap();
        let expected =
            [pb::FulfillmentState::Failed, pb::FulfillmentState::RevokeFailed, pb::FulfillmentState::Pending];
        assert_eq!(filter.states, expected.map(|s| s as i32));
        assert_eq!(filter.updated_after, Some(prost_types::Timestamp { seconds: 1_800_000_000 - 7200, nanos: 0 }));
        assert_eq!(filter.error_kind, pb::FulfillmentErrorKind::Rejected as i32);
        assert_eq!(filter.course_run_key, "course-v1:edX+DemoX+T1");
        let bad = filter_error(Selection { states: vec!["stuck".into()], ..selection() });
        assert!(bad.contains("--state stuck") && bad.contains("REVOKE_FAILED"), "{bad}");
        let bad = filter_error(Selection { states: vec!["unspecified".into()], ..selection() });
        assert!(bad.contains("--state unspecified"), "{bad}");
        let bad = filter_error(Selection { error_kind: Some("oops".into()), ..selection() });
        assert!(bad.contains("--error-kind oops"), "{bad}");
    }

    fn filter_error(selection: Selection) -> String {
        filter(&selection, SystemTime::now()).unwrap_err().to_string()
    }

    #[test]
    fn the_listing_is_a_table_with_aligned_columns() {
        let job = |id: &str, order: &str| pb::Fulfillment {
            fulfillment_id: id.into(),
            order_number: order.into(),
            line_item_id: "l1".into(),
            state: pb::FulfillmentState::Failed as i32,
            last_error: Some(pb::FulfillmentError {
                kind: pb::FulfillmentErrorKind::Rejected as i32,
                lms_status: 400,
                message: "no".into(),
            }),
            line_item: Some(pb::LineItem {
                product: Some(pb::line_item::Product::CourseRun(pb::CourseRunEnrollment {
                    course_run_key: "course-v1:edX+DemoX+T1".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            update_time: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
            ..Default::default()
        };
        let text = listing_table(&[job("f-1", "EDX-1"), job("f-22", "EDX-100042")], 7);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(column(lines[0], "STATE"), column(lines[1], "FAILED"), "{text}");
        assert_eq!(column(lines[1], "FAILED"), column(lines[2], "FAILED"), "{text}");
        assert_eq!(column(lines[0], "UPDATED"), column(lines[2], "2027-01-15T08:00:00Z"), "{text}");
        assert!(lines[1].contains("REJECTED") && lines[1].contains("course-v1:edX+DemoX+T1"), "{text}");
        assert_eq!(lines[3], "2 of 7 matching fulfillments shown");
        let answer =
            pb::RetryFulfillmentsResponse { retried_count: 1, fulfillment_ids: vec!["f-1".into()], dry_run: true };
        assert!(retry_summary(&answer).starts_with("dry run: would retry 1 fulfillments; nothing was changed\nf-1"));
    }
}
