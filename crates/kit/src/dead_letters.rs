//! Operators' dead letters: list them with the payload decoded, replay them
//! into their stream, discard them with a reason kept for the audit — over
//! the bus's [`EventBus::list_dead_letters`], [`EventBus::replay_dead_letters`]
//! and [`EventBus::discard_dead_letters`].
//!
//! Written once here; each component that consumes a stream serves it as a
//! gRPC service of its own (the gateway routes by service name), a thin
//! wrapper that hands every call to [`DeadLetterOps`] with the streams it
//! consumes and its consumer group on each. The messages are
//! `commerce.ops.v1`'s (`proto/commerce/ops/v1/dead_letters.proto`).
//!
//! A stream may be read by several groups (the customers stream by Fulfillment
//! and PurchaseHistory), which share its dead-letter stream: a component lists,
//! replays and discards only the dead letters its own group gave up on (and
//! those dead-lettered before the bus recorded the group). A replay appends a
//! new entry that every group of the stream reads: consumers are idempotent.
//! Replays and discards are logged with the caller's subject; a discard is
//! also kept by the bus with it, the reason and the time.

#![allow(clippy::result_large_err)] // tonic's Status is what a handler answers

use std::sync::Arc;
use std::time::Duration;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use proto::commerce::ops::v1 as pb;
use tonic::{Code, Request, Response, Status};

use crate::bus::{DeadLetter, DeadLetterQuery, Discard, DiscardedDeadLetter, EntryId, EventBus};
use crate::error::{BadRequest, ViolationReason};

/// A page when the caller asks for none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest page.
pub const MAX_PAGE_SIZE: usize = 500;
/// Ids one replay or discard names at most, and dead letters one replay of all
/// matching a reason touches at most.
pub const MAX_IDS: usize = 1000;
/// Dead letters one replay of all matching a reason touches when no limit is given.
pub const DEFAULT_REPLAY_LIMIT: usize = 100;
/// The longest reason (a filter or a discard's).
pub const MAX_REASON_CHARS: usize = 500;
/// The longest dead-letter id or page token (Redis ids are at most 41 characters).
const MAX_ID_CHARS: usize = 64;
/// The message every stream event is wrapped in.
const ENVELOPE: &str = "commerce.events.v1.EventEnvelope";

/// A stream a component consumes, and its consumer group there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedStream {
    /// The stream.
    pub stream: String,
    /// The component's consumer group on it.
    pub group: String,
}

impl ConsumedStream {
    /// `group` on `stream`.
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        Self { stream: stream.into(), group: group.into() }
    }
}

/// A payload as an operator reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodedPayload {
    /// The event's type, when known.
    pub event_type: String,
    /// The payload as proto3 JSON, when it decodes.
    pub json: Option<serde_json::Value>,
    /// Why it does not decode; empty when it does.
    pub error: String,
}

/// How a component's payloads are decoded for operators.
pub type PayloadDecoder = Arc<dyn Fn(&[u8]) -> DecodedPayload + Send + Sync>;

/// The decoder of `commerce.events.v1.EventEnvelope` payloads (every stream of
/// the mesh), by reflection over the mesh's descriptors: proto3 JSON with proto
/// field names, the event inside by its type.
pub fn envelope_decoder() -> PayloadDecoder {
    let envelope = proto::descriptor_pool().ok().and_then(|pool: DescriptorPool| pool.get_message_by_name(ENVELOPE));
    Arc::new(move |payload: &[u8]| {
        let Some(descriptor) = envelope.clone() else {
            return DecodedPayload { error: format!("{ENVELOPE} is not described"), ..DecodedPayload::default() };
        };
        let message = match DynamicMessage::decode(descriptor, payload) {
            Ok(message) => message,
            Err(error) => {
                return DecodedPayload { error: format!("not a {ENVELOPE}: {error}"), ..DecodedPayload::default() };
            }
        };
        let event_type = message
            .get_field_by_name("event_type")
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default();
        let options = SerializeOptions::new().use_proto_field_name(true);
        match message.serialize_with_options(serde_json::value::Serializer, &options) {
            Ok(json) => DecodedPayload { event_type, json: Some(json), error: String::new() },
            Err(error) => DecodedPayload { event_type, json: None, error: format!("as JSON: {error}") },
        }
    })
}

/// The dead letters of the streams one component consumes, for its dead-letter service.
#[derive(Clone)]
pub struct DeadLetterOps {
    bus: Arc<dyn EventBus>,
    streams: Vec<ConsumedStream>,
    decoder: PayloadDecoder,
}

impl std::fmt::Debug for DeadLetterOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterOps").field("streams", &self.streams).finish_non_exhaustive()
    }
}

/// A parsed `ListDeadLetters`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRequest {
    /// The stream and the component's group on it.
    pub stream: ConsumedStream,
    /// The bus query.
    pub query: DeadLetterQuery,
    /// List the discarded ones instead.
    pub discarded: bool,
}

/// What a parsed `ReplayDeadLetters` replays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplaySelection {
    /// These dead letters.
    Ids(Vec<EntryId>),
    /// Those of the group whose reason contains this (None: all), at most `limit`.
    Matching {
        /// The reason filter.
        reason: Option<String>,
        /// At most this many.
        limit: usize,
    },
}

impl DeadLetterOps {
    /// The dead letters of `streams` on `bus`, payloads decoded as event envelopes.
    pub fn new(bus: Arc<dyn EventBus>, streams: Vec<ConsumedStream>) -> Self {
        Self { bus, streams, decoder: envelope_decoder() }
    }

    /// The same with payloads decoded by `decoder`.
    pub fn with_decoder(mut self, decoder: PayloadDecoder) -> Self {
        self.decoder = decoder;
        self
    }

    /// The streams served.
    pub fn streams(&self) -> &[ConsumedStream] {
        &self.streams
    }

    /// `ListDeadLetters`.
    pub async fn list(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let list = self.parse_list(request.get_ref())?;
        let stream = &list.stream.stream;
        if list.discarded {
            let page = self.bus.discarded_dead_letters(stream, &list.query).await.map_err(bus_status)?;
            return Ok(Response::new(pb::ListDeadLettersResponse {
                dead_letters: page.records.into_iter().map(|record| self.discarded_message(stream, record)).collect(),
                next_page_token: page.next.map(|next| next.0).unwrap_or_default(),
            }));
        }
        let page = self.bus.list_dead_letters(stream, &list.query).await.map_err(bus_status)?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: page.letters.into_iter().map(|letter| self.message(stream, letter)).collect(),
            next_page_token: page.next.map(|next| next.0).unwrap_or_default(),
        }))
    }

    /// `ReplayDeadLetters`.
    pub async fn replay(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let subject = subject(&request);
        let (consumed, selection) = self.parse_replay(request.get_ref())?;
        let stream = &consumed.stream;
        let (ids, ours) = match selection {
            // Only this group's dead letters: another component's are not ours to replay.
            ReplaySelection::Ids(ids) => {
                let ours = self.owned(&consumed, &ids).await?;
                (ids, ours)
            }
            ReplaySelection::Matching { reason, limit } => {
                let ids = self.matching(&consumed, reason, limit).await?;
                let ours = vec![true; ids.len()];
                (ids, ours)
            }
        };
        let targets: Vec<EntryId> =
            ids.iter().zip(&ours).filter(|(_, ours)| **ours).map(|(id, _)| id.clone()).collect();
        let mut replayed = self.bus.replay_dead_letters(stream, &targets).await.map_err(bus_status)?.into_iter();
        let outcomes: Vec<pb::DeadLetterOutcome> = ids
            .into_iter()
            .zip(ours)
            .map(|(id, ours)| {
                let new = if ours { replayed.next().flatten() } else { None };
                pb::DeadLetterOutcome {
                    id: id.0,
                    found: new.is_some(),
                    new_entry_id: new.map(|new| new.0).unwrap_or_default(),
                }
            })
            .collect();
        let done: Vec<&str> = outcomes.iter().filter(|o| o.found).map(|o| o.id.as_str()).collect();
        tracing::info!(%stream, %subject, replayed = ?done, "dead letters replayed into their stream");
        Ok(Response::new(pb::ReplayDeadLettersResponse { outcomes }))
    }

    /// `DiscardDeadLetters`.
    pub async fn discard(
        &self,
        request: Request<pb::DiscardDeadLettersRequest>,
    ) -> Result<Response<pb::DiscardDeadLettersResponse>, Status> {
        let by = subject(&request);
        let (consumed, ids, reason) = self.parse_discard(request.get_ref())?;
        let stream = &consumed.stream;
        // Only this group's dead letters: another component's are not ours to drop.
        let ours = self.owned(&consumed, &ids).await?;
        let targets: Vec<EntryId> =
            ids.iter().zip(&ours).filter(|(_, ours)| **ours).map(|(id, _)| id.clone()).collect();
        let discard = Discard { by: by.clone(), reason };
        let mut discarded =
            self.bus.discard_dead_letters(stream, &targets, &discard).await.map_err(bus_status)?.into_iter();
        let outcomes: Vec<pb::DeadLetterOutcome> = ids
            .into_iter()
            .zip(ours)
            .map(|(id, ours)| pb::DeadLetterOutcome {
                id: id.0,
                found: ours && discarded.next().unwrap_or(false),
                new_entry_id: String::new(),
            })
            .collect();
        let done: Vec<&str> = outcomes.iter().filter(|o| o.found).map(|o| o.id.as_str()).collect();
        tracing::info!(%stream, subject = %by, reason = %discard.reason, discarded = ?done, "dead letters discarded");
        Ok(Response::new(pb::DiscardDeadLettersResponse { outcomes }))
    }

    /// Which of `ids` are dead letters of `consumed`'s group (or of no known group), each read directly.
    async fn owned(&self, consumed: &ConsumedStream, ids: &[EntryId]) -> Result<Vec<bool>, Status> {
        let found = self.bus.dead_letters_by_id(&consumed.stream, ids).await.map_err(bus_status)?;
        let of_group = |letter: &DeadLetter| letter.group.as_ref().is_none_or(|group| *group == consumed.group);
        Ok(found.iter().map(|letter| letter.as_ref().is_some_and(of_group)).collect())
    }

    /// The ids of the group's dead letters whose reason contains `reason`, at most `limit`.
    async fn matching(
        &self,
        consumed: &ConsumedStream,
        reason: Option<String>,
        limit: usize,
    ) -> Result<Vec<EntryId>, Status> {
        let mut ids = Vec::new();
        let mut query = DeadLetterQuery { reason, group: Some(consumed.group.clone()), max: limit, after: None };
        for _ in 0..1000 {
            query.max = limit - ids.len();
            let page = self.bus.list_dead_letters(&consumed.stream, &query).await.map_err(bus_status)?;
            ids.extend(page.letters.into_iter().map(|letter| letter.id));
            match page.next {
                Some(next) if ids.len() < limit => query.after = Some(next),
                _ => break,
            }
        }
        Ok(ids)
    }

    fn message(&self, stream: &str, letter: DeadLetter) -> pb::DeadLetter {
        let mut decoded = (self.decoder)(&letter.payload);
        if let Some(unreadable) = letter.unreadable {
            // What the bus could not read of the entry comes first: the payload may be partial.
            decoded.error =
                if decoded.error.is_empty() { unreadable } else { format!("{unreadable}; {}", decoded.error) };
        }
        pb::DeadLetter {
            id: letter.id.0,
            stream: stream.to_string(),
            original_id: letter.original_id.0,
            event_id: letter.event_id,
            reason: letter.reason,
            group: letter.group.unwrap_or_default(),
            delivery_count: letter.delivery_count,
            first_seen: letter.first_seen.map(crate::time::to_timestamp),
            dead_lettered_at: letter.dead_lettered_at.map(crate::time::to_timestamp),
            event_type: decoded.event_type,
            payload: decoded.json.and_then(to_struct),
            payload_error: decoded.error,
            raw_payload: letter.payload,
            discard: None,
        }
    }

    fn discarded_message(&self, stream: &str, record: DiscardedDeadLetter) -> pb::DeadLetter {
        pb::DeadLetter {
            discard: Some(pb::DiscardRecord {
                discarded_by: record.discard.by,
                reason: record.discard.reason,
                discarded_at: Some(crate::time::to_timestamp(record.discarded_at)),
            }),
            ..self.message(stream, record.letter)
        }
    }

    /// The stream named, if this component consumes it; else the field's violation.
    fn stream(&self, bad: &mut BadRequest, stream: &str) -> Option<ConsumedStream> {
        if stream.is_empty() {
            bad.violation("stream", ViolationReason::Required, format!("name a stream: {}", self.stream_names()));
            return None;
        }
        let found = self.streams.iter().find(|consumed| consumed.stream == stream).cloned();
        if found.is_none() {
            bad.violation(
                "stream",
                ViolationReason::UnknownValue,
                format!("this component consumes no stream {stream:?}; it consumes {}", self.stream_names()),
            );
        }
        found
    }

    fn stream_names(&self) -> String {
        self.streams.iter().map(|consumed| consumed.stream.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Parses a `ListDeadLetters`: every bad field named.
    pub fn parse_list(&self, request: &pb::ListDeadLettersRequest) -> Result<ListRequest, Status> {
        let mut bad = BadRequest::new();
        let stream = self.stream(&mut bad, &request.stream);
        let reason = reason_filter(&mut bad, "reason", &request.reason);
        let max = bounded(&mut bad, "page_size", request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
        let after = match request.page_token.as_str() {
            "" => None,
            token => dead_letter_id(&mut bad, "page_token", token),
        };
        bad.into_result()?;
        let stream = stream.ok_or_else(|| Status::internal("stream checked"))?;
        let query = DeadLetterQuery { after, reason, group: Some(stream.group.clone()), max };
        Ok(ListRequest { stream, query, discarded: request.discarded })
    }

    /// Parses a `ReplayDeadLetters`: ids, or all matching a reason, not both.
    pub fn parse_replay(
        &self,
        request: &pb::ReplayDeadLettersRequest,
    ) -> Result<(ConsumedStream, ReplaySelection), Status> {
        let mut bad = BadRequest::new();
        let stream = self.stream(&mut bad, &request.stream);
        let selection = if request.all_matching_reason {
            if !request.ids.is_empty() {
                bad.violation("ids", ViolationReason::Conflict, "name ids or ask for all matching a reason, not both");
            }
            let reason = reason_filter(&mut bad, "reason", &request.reason);
            let limit = bounded(&mut bad, "limit", request.limit, DEFAULT_REPLAY_LIMIT, MAX_IDS);
            ReplaySelection::Matching { reason, limit }
        } else {
            if !request.reason.is_empty() {
                bad.violation("reason", ViolationReason::Conflict, "a reason selects with all_matching_reason only");
            }
            ReplaySelection::Ids(ids(&mut bad, &request.ids))
        };
        bad.into_result()?;
        Ok((stream.ok_or_else(|| Status::internal("stream checked"))?, selection))
    }

    /// Parses a `DiscardDeadLetters`: ids and a reason, both required.
    pub fn parse_discard(
        &self,
        request: &pb::DiscardDeadLettersRequest,
    ) -> Result<(ConsumedStream, Vec<EntryId>, String), Status> {
        let mut bad = BadRequest::new();
        let stream = self.stream(&mut bad, &request.stream);
        let ids = ids(&mut bad, &request.ids);
        let reason = request.reason.trim();
        if reason.is_empty() {
            bad.violation("reason", ViolationReason::Required, "say why: the reason is kept with the discard");
        } else {
            check_text(&mut bad, "reason", reason);
        }
        bad.into_result()?;
        Ok((stream.ok_or_else(|| Status::internal("stream checked"))?, ids, reason.to_string()))
    }
}

/// 1 to `max` from a request's count; 0 is `default`.
fn bounded(bad: &mut BadRequest, field: &str, value: i32, default: usize, max: usize) -> usize {
    match usize::try_from(value) {
        Ok(0) => default,
        Ok(value) if value <= max => value,
        _ => {
            bad.violation(field, ViolationReason::OutOfRange, format!("must be between 1 and {max} (0: {default})"));
            default
        }
    }
}

/// A reason filter: empty is none.
fn reason_filter(bad: &mut BadRequest, field: &str, reason: &str) -> Option<String> {
    if reason.is_empty() {
        return None;
    }
    check_text(bad, field, reason).then(|| reason.to_string())
}

/// Free text: not too long, no control characters.
fn check_text(bad: &mut BadRequest, field: &str, text: &str) -> bool {
    if text.chars().count() > MAX_REASON_CHARS {
        bad.violation(field, ViolationReason::TooLong, format!("at most {MAX_REASON_CHARS} characters"));
        return false;
    }
    if text.chars().any(char::is_control) {
        bad.violation(field, ViolationReason::InvalidFormat, "no control characters");
        return false;
    }
    true
}

/// A dead-letter id as the bus makes them: digits, with one `-` on Redis.
fn dead_letter_id(bad: &mut BadRequest, field: &str, id: &str) -> Option<EntryId> {
    let well_formed = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id.split('-').count() <= 2
        && id.split('-').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if well_formed {
        Some(EntryId(id.to_string()))
    } else {
        bad.violation(field, ViolationReason::InvalidFormat, format!("{id:?} is not a dead-letter id (as listed)"));
        None
    }
}

/// 1 to [`MAX_IDS`] dead-letter ids, none twice.
fn ids(bad: &mut BadRequest, ids: &[String]) -> Vec<EntryId> {
    if ids.is_empty() {
        bad.violation("ids", ViolationReason::Required, "name at least one dead letter by its id");
        return Vec::new();
    }
    if ids.len() > MAX_IDS {
        bad.violation("ids", ViolationReason::OutOfRange, format!("at most {MAX_IDS} ids at once"));
        return Vec::new();
    }
    let mut parsed: Vec<EntryId> = Vec::with_capacity(ids.len());
    for (index, id) in ids.iter().enumerate() {
        let field = format!("ids[{index}]");
        if let Some(id) = dead_letter_id(bad, &field, id) {
            if parsed.contains(&id) {
                bad.violation(field, ViolationReason::Duplicate, format!("{id} is named twice"));
            } else {
                parsed.push(id);
            }
        }
    }
    parsed
}

/// Who is calling, for the log and the audit record.
fn subject<T>(request: &Request<T>) -> String {
    crate::access::subject(request).unwrap_or_else(|| "unknown".to_string())
}

/// The bus failed: UNAVAILABLE, try again shortly (its text only in the log).
fn bus_status(error: crate::bus::BusError) -> Status {
    tracing::warn!(%error, "dead letters: the event bus failed");
    crate::error::with_retry_info(Code::Unavailable, "the event bus is unavailable", Duration::from_secs(1))
}

/// A JSON object as a `google.protobuf.Struct` (anything else is not one).
fn to_struct(json: serde_json::Value) -> Option<prost_types::Struct> {
    match json {
        serde_json::Value::Object(fields) => Some(prost_types::Struct {
            fields: fields.into_iter().map(|(name, value)| (name, to_value(value))).collect(),
        }),
        _ => None,
    }
}

/// A `google.protobuf.Struct` as JSON (for tools printing a [`pb::DeadLetter`]'s payload).
pub fn struct_to_json(fields: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(fields.fields.iter().map(|(name, value)| (name.clone(), value_to_json(value))).collect())
}

fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(value)) => serde_json::Value::Bool(*value),
        Some(Kind::NumberValue(number)) => {
            serde_json::Number::from_f64(*number).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
        }
        Some(Kind::StringValue(text)) => serde_json::Value::String(text.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(list.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(fields)) => struct_to_json(fields),
    }
}

fn to_value(json: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(value) => Kind::BoolValue(value),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        serde_json::Value::String(text) => Kind::StringValue(text),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(to_value).collect() })
        }
        object @ serde_json::Value::Object(_) => match to_struct(object) {
            Some(fields) => Kind::StructValue(fields),
            None => Kind::NullValue(0),
        },
    };
    prost_types::Value { kind: Some(kind) }
}

/// Serves a component's generated dead-letter service (`$service`, a trait of
/// its own proto package) with `$wrapper`, a tuple struct over
/// [`DeadLetterOps`]: every call is handed to the ops. The generated traits
/// differ per component, so one impl cannot serve them all; this writes it once.
/// The calling crate depends on `tonic` and `proto`, as a gRPC service does.
#[macro_export]
macro_rules! serve_dead_letters {
    ($service:path, $wrapper:ty) => {
        #[::tonic::async_trait]
        impl $service for $wrapper {
            async fn list_dead_letters(
                &self,
                request: ::tonic::Request<::proto::commerce::ops::v1::ListDeadLettersRequest>,
            ) -> ::std::result::Result<
                ::tonic::Response<::proto::commerce::ops::v1::ListDeadLettersResponse>,
                ::tonic::Status,
            > {
                self.0.list(request).await
            }

            async fn replay_dead_letters(
                &self,
                request: ::tonic::Request<::proto::commerce::ops::v1::ReplayDeadLettersRequest>,
            ) -> ::std::result::Result<
                ::tonic::Response<::proto::commerce::ops::v1::ReplayDeadLettersResponse>,
                ::tonic::Status,
            > {
                self.0.replay(request).await
            }

            async fn discard_dead_letters(
                &self,
                request: ::tonic::Request<::proto::commerce::ops::v1::DiscardDeadLettersRequest>,
            ) -> ::std::result::Result<
                ::tonic::Response<::proto::commerce::ops::v1::DiscardDeadLettersResponse>,
                ::tonic::Status,
            > {
                self.0.discard(request).await
            }
        }
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
