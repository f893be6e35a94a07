//! `commerce-mesh dead-letters list|replay|discard`: operators read the dead
//! letters of a stream a component consumes, replay them into the stream once
//! the cause is fixed, or discard them with a reason kept for the audit,
//! through the component's dead-letter service (`kit::dead_letters`).
//!
//! Talks gRPC to the component (`--url`, default: where this configuration has
//! it listen) with `--token` / `COMMERCE_MESH_TOKEN`, or a development token
//! minted with the development secret, as `refund` does. Prints a table with
//! aligned columns, or the answer as JSON with `--json`. A replay or discard
//! naming an id that is not a dead letter (any more) exits non-zero after
//! printing what became of each.

use kit::client::TracedChannel;
use proto::commerce::fulfillment::v1::fulfillment_dead_letter_service_client::FulfillmentDeadLetterServiceClient;
use proto::commerce::ops::v1 as pb;
use proto::commerce::purchases::v1::purchase_history_dead_letter_service_client::PurchaseHistoryDeadLetterServiceClient;
use serde_json::json;

use crate::cli_output::{channel_to, pretty, table, time_millis};
use crate::{Component, MeshConfig};

/// The components that consume a stream, and so have dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsumingComponent {
    /// Fulfillment (the customers stream).
    Fulfillment,
    /// PurchaseHistory (the purchases and customers streams).
    PurchaseHistory,
}

impl ConsumingComponent {
    fn component(self) -> Component {
        match self {
            Self::Fulfillment => Component::Fulfillment,
            Self::PurchaseHistory => Component::PurchaseHistory,
        }
    }

    /// The stream it reads when none is named: its only one, or its main one.
    fn default_stream(self, config: &MeshConfig) -> String {
        match self {
            Self::Fulfillment => config.fulfillment.settings.customers_stream.clone(),
            Self::PurchaseHistory => config.purchase_history.settings.stream.clone(),
        }
    }
}

/// Whose dead letters, where, and as whom.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// The component whose consumer dead-lettered the entries.
    #[arg(long, value_enum)]
    pub component: ConsumingComponent,
    /// The stream; default: Fulfillment's customers stream, PurchaseHistory's purchases stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// The component's gRPC address; default: where this configuration has it listen.
    #[arg(long)]
    pub url: Option<String>,
    /// A bearer token with `ops:read` (and `ops:write` to replay or discard);
    /// default: a development token minted with the development secret, when there is one.
    #[arg(long, env = "COMMERCE_MESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What to do with the dead letters.
#[derive(Clone, Debug, clap::Subcommand)]
#[allow(missing_docs)] // `target` fields: the flattened [`Target`], documented there (clap shows those docs)
pub enum DeadLettersCommand {
    /// List dead letters, oldest first: reason, delivery count, first seen,
    /// dead-lettered at, the event; `--json` adds the decoded payload.
    List {
        #[command(flatten)]
        target: Target,
        /// Only those whose reason contains this text.
        #[arg(long)]
        reason: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        /// Go on from a previous listing's next page token.
        #[arg(long)]
        page_token: Option<String>,
        /// List the discarded ones kept for the audit instead.
        #[arg(long)]
        discarded: bool,
    },
    /// Append dead letters back to their stream (`--id`, repeatable, or
    /// `--all-matching-reason` with `--reason`); the consumer handles them again.
    Replay {
        #[command(flatten)]
        target: Target,
        /// A dead letter's id, as listed (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// With `--all-matching-reason`: those whose reason contains this (default: all).
        #[arg(long)]
        reason: Option<String>,
        /// Replay every dead letter matching `--reason` instead of naming ids.
        #[arg(long)]
        all_matching_reason: bool,
        /// With `--all-matching-reason`, at most this many (1 to 1000; default 100).
        #[arg(long)]
        limit: Option<i32>,
    },
    /// Discard dead letters for good; the reason is kept with who discarded them and when.
    Discard {
        #[command(flatten)]
        target: Target,
        /// A dead letter's id, as listed (repeatable).
        #[arg(long = "id", required = true)]
        ids: Vec<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

/// Why a dead-letters command failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLettersError {
    /// No token could be had.
    #[error(transparent)]
    Token(#[from] crate::dev_tokens::DevTokenError),
    /// The address is invalid.
    #[error(transparent)]
    Client(#[from] kit::client::ClientError),
    /// The component refused or failed; its message names the field.
    #[error("{component} answered {}", crate::cli_output::answered(.status))]
    Service {
        /// Which component.
        component: &'static str,
        /// Its answer.
        status: tonic::Status,
    },
    /// Some ids named no dead letter (the rest were done; the table says which).
    #[error("{} of the ids named no dead letter (replayed or discarded already?): {}", .0.len(), .0.join(", "))]
    NotFound(Vec<String>),
}

/// One client for either component's dead-letter service.
enum Client {
    Fulfillment(FulfillmentDeadLetterServiceClient<TracedChannel>),
    PurchaseHistory(PurchaseHistoryDeadLetterServiceClient<TracedChannel>),
}

impl Client {
    async fn list(
        &mut self,
        request: pb::ListDeadLettersRequest,
    ) -> Result<pb::ListDeadLettersResponse, tonic::Status> {
        let answer = match self {
            Self::Fulfillment(client) => client.list_dead_letters(request).await,
            Self::PurchaseHistory(client) => client.list_dead_letters(request).await,
        };
        answer.map(tonic::Response::into_inner)
    }

    async fn replay(
        &mut self,
        request: pb::ReplayDeadLettersRequest,
    ) -> Result<pb::ReplayDeadLettersResponse, tonic::Status> {
        let answer = match self {
            Self::Fulfillment(client) => client.replay_dead_letters(request).await,
            Self::PurchaseHistory(client) => client.replay_dead_letters(request).await,
        };
        answer.map(tonic::Response::into_inner)
    }

    async fn discard(
        &mut self,
        request: pb::DiscardDeadLettersRequest,
    ) -> Result<pb::DiscardDeadLettersResponse, tonic::Status> {
        let answer = match self {
            Self::Fulfillment(client) => client.discard_dead_letters(request).await,
            Self::PurchaseHistory(client) => client.discard_dead_letters(request).await,
        };
        answer.map(tonic::Response::into_inner)
    }
}

/// Runs `command` against the component `config` places; answers what to print.
pub async fn run(config: &MeshConfig, command: DeadLettersCommand) -> Result<String, DeadLettersError> {
    let (target, scopes): (&Target, &[&str]) = match &command {
        DeadLettersCommand::List { target, .. } => (target, &["ops:read"]),
        DeadLettersCommand::Replay { target, .. } | DeadLettersCommand::Discard { target, .. } => {
            (target, &["ops:read", "ops:write"])
        }
    };
    let component = target.component.component();
    let stream = target.stream.clone().unwrap_or_else(|| target.component.default_stream(config));
    let channel =
        channel_to::<DeadLettersError>(config, component, target.url.as_deref(), target.token.clone(), scopes)?;
    let mut client = match target.component {
        ConsumingComponent::Fulfillment => Client::Fulfillment(FulfillmentDeadLetterServiceClient::new(channel)),
        ConsumingComponent::PurchaseHistory => {
            Client::PurchaseHistory(PurchaseHistoryDeadLetterServiceClient::new(channel))
        }
    };
    let failed = |status| DeadLettersError::Service { component: component.name(), status };
    let json = target.json;
    match command {
        DeadLettersCommand::List { reason, page_size, page_token, discarded, .. } => {
            let request = pb::ListDeadLettersRequest {
                stream,
                reason: reason.unwrap_or_default(),
                page_size,
                page_token: page_token.unwrap_or_default(),
                discarded,
            };
            let answer = client.list(request).await.map_err(failed)?;
            Ok(if json { pretty(&listing_json(&answer)) } else { listing_table(&answer) })
        }
        DeadLettersCommand::Replay { ids, reason, all_matching_reason, limit, .. } => {
            let request = pb::ReplayDeadLettersRequest {
                stream,
                ids,
                reason: reason.unwrap_or_default(),
                all_matching_reason,
                limit: limit.unwrap_or(0),
            };
            let answer = client.replay(request).await.map_err(failed)?;
            outcome(&answer.outcomes, "replayed", json)
        }
        DeadLettersCommand::Discard { ids, reason, .. } => {
            let answer = client.discard(pb::DiscardDeadLettersRequest { stream, ids, reason }).await.map_err(failed)?;
            outcome(&answer.outcomes, "discarded", json)
        }
    }
}

/// The outcomes as a table (or JSON), printed here when some ids were not
/// found, since the command then fails.
fn outcome(outcomes: &[pb::DeadLetterOutcome], done: &str, json: bool) -> Result<String, DeadLettersError> {
    let text = if json { pretty(&outcomes_json(outcomes)) } else { outcomes_table(outcomes, done) };
    let missing: Vec<String> = outcomes.iter().filter(|o| !o.found).map(|o| o.id.clone()).collect();
    if missing.is_empty() {
        Ok(text)
    } else {
        print!("{text}");
        Err(DeadLettersError::NotFound(missing))
    }
}

/// A listing as a table: one dead letter a line, columns aligned.
pub fn listing_table(answer: &pb::ListDeadLettersResponse) -> String {
    let discarded = answer.dead_letters.iter().any(|letter| letter.discard.is_some());
    let mut header =
        vec!["ID", "GROUP", "DELIVERIES", "FIRST SEEN", "DEAD-LETTERED", "EVENT TYPE", "EVENT ID", "REASON"];
    if discarded {
        header.extend(["DISCARDED BY", "DISCARDED", "WHY"]);
    }
    let rows: Vec<Vec<String>> = answer
        .dead_letters
        .iter()
        .map(|letter| {
            let mut row = vec![
                letter.id.clone(),
                if letter.group.is_empty() { "?".into() } else { letter.group.clone() },
                letter.delivery_count.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
                time_millis(letter.first_seen.as_ref()),
                time_millis(letter.dead_lettered_at.as_ref()),
                letter.event_type.trim_start_matches("commerce.events.v1.").to_string(),
                letter.event_id.clone(),
                letter.reason.clone(),
            ];
            if let Some(discard) = &letter.discard {
                row.extend([
                    discard.discarded_by.clone(),
                    time_millis(discard.discarded_at.as_ref()),
                    discard.reason.clone(),
                ]);
            }
            row
        })
        .collect();
    let mut text = table(&header, &rows);
    text.push_str(&format!("{} dead letter(s)", rows.len()));
    if !answer.next_page_token.is_empty() {
        text.push_str(&format!("; more with --page-token {}", answer.next_page_token));
    }
    text.push('\n');
    text
}

/// Outcomes as a table.
pub fn outcomes_table(outcomes: &[pb::DeadLetterOutcome], done: &str) -> String {
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let result = if o.found { done.to_string() } else { "not found".to_string() };
            vec![o.id.clone(), result, o.new_entry_id.clone()]
        })
        .collect();
    let count = outcomes.iter().filter(|o| o.found).count();
    let mut text = table(&["ID", "RESULT", "NEW ENTRY"], &rows);
    text.push_str(&format!("{count} of {} {done}\n", outcomes.len()));
    text
}

/// A listing as JSON: each dead letter with its payload decoded.
pub fn listing_json(answer: &pb::ListDeadLettersResponse) -> serde_json::Value {
    let letters: Vec<serde_json::Value> = answer
        .dead_letters
        .iter()
        .map(|letter| {
            json!({
                "id": letter.id,
                "stream": letter.stream,
                "original_id": letter.original_id,
                "event_id": letter.event_id,
                "reason": letter.reason,
                "group": letter.group,
                "delivery_count": letter.delivery_count,
                "first_seen": time_millis(letter.first_seen.as_ref()),
                "dead_lettered_at": time_millis(letter.dead_lettered_at.as_ref()),
                "event_type": letter.event_type,
                "payload": letter.payload.as_ref().map(kit::dead_letters::struct_to_json),
                "payload_error": letter.payload_error,
                "discard": letter.discard.as_ref().map(|discard| json!({
                    "discarded_by": discard.discarded_by,
                    "reason": discard.reason,
                    "discarded_at": time_millis(discard.discarded_at.as_ref()),
                })),
            })
        })
        .collect();
    json!({ "dead_letters": letters, "next_page_token": answer.next_page_token })
}

/// Outcomes as JSON.
pub fn outcomes_json(outcomes: &[pb::DeadLetterOutcome]) -> serde_json::Value {
    let outcomes: Vec<serde_json::Value> =
        outcomes.iter().map(|o| json!({ "id": o.id, "found": o.found, "new_entry_id": o.new_entry_id })).collect();
    json!({ "outcomes": outcomes })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn letter() -> pb::DeadLetter {
        pb::DeadLetter {
            id: "1700000000001-0".into(),
            stream: "commerce.purchases.v1".into(),
            original_id: "1700000000000-0".into(),
            event_id: "purchase-recorded:f-1".into(),
            reason: "invalid purchase: price: negative".into(),
            group: "purchase-history".into(),
            delivery_count: Some(1),
            first_seen: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            dead_lettered_at: Some(prost_types::Timestamp { seconds: 1_700_000_001, nanos: 0 }),
            event_type: "commerce.events.v1.PurchaseRecorded".into(),
            payload: None,
            ..Default::default()
        }
    }

    #[test]
    fn a_listing_is_a_table_of_aligned_columns() {
        let answer = pb::ListDeadLettersResponse {
            dead_letters: vec![letter(), pb::DeadLetter { id: "9".into(), group: String::new(), ..letter() }],
            next_page_token: "9".into(),
        };
        let text = listing_table(&answer);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID "), "{text}");
        let reason_at = lines[0].find("REASON").unwrap();
        assert_eq!(lines[1].find("invalid purchase"), Some(reason_at), "{text}");
        assert_eq!(lines[2].find("invalid purchase"), Some(reason_at), "{text}");
        assert!(lines[1].contains("2023-11-14T22:13:20.000Z") && lines[1].contains("PurchaseRecorded"), "{text}");
        assert!(lines[2].contains(" ? "), "an unknown group shows as ?: {text}");
        assert!(text.ends_with("2 dead letter(s); more with --page-token 9\n"), "{text}");
    }

    #[test]
    fn outcomes_say_what_was_not_found() {
        let outcomes = [
            pb::DeadLetterOutcome { id: "1".into(), found: true, new_entry_id: "5".into() },
            pb::DeadLetterOutcome { id: "2".into(), found: false, new_entry_id: String::new() },
        ];
        let text = outcomes_table(&outcomes, "replayed");
        assert!(text.contains("not found") && text.ends_with("1 of 2 replayed\n"), "{text}");
        match outcome(&outcomes, "replayed", true) {
            Err(DeadLettersError::NotFound(ids)) => assert_eq!(ids, ["2"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(outcomes_json(&outcomes)["outcomes"][0]["new_entry_id"], "5");
    }
}
