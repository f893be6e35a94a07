//! `POST /v1/webhooks/stripe`: a refund made in Stripe's dashboard or API
//! becomes a refund in Fulfillment (`RefundOrder`), whose workers revoke the
//! learner's access.
//!
//! The route answers 404 until `gateway.webhooks.stripe.signing_secrets` (or
//! `signing_secrets_file`, one secret a line) names a secret. A request is
//! checked in this order, and a refused one changes nothing:
//! 1. the `Stripe-Signature` header ([`super::signature`]): missing or
//!    malformed or stale → 400, no matching signature → 401;
//! 2. the event: not JSON, or a `charge.refunded` without
//!    `metadata.order_number` → 400; any other event type → 200, ignored;
//! 3. the lines ([`RefundLines`]): a refund of the whole charge is the whole
//!    order; a partial one refunds the lines named in `metadata.line_item_ids`
//!    (the refund's own metadata first, then the charge's), one named line by
//!    the refund's amount. The charge's `amount_refunded` is cumulative, so
//!    what this event adds is the latest refund (`refunds.data[0]`) or, when
//!    the event lists none, the growth since `previous_attributes`;
//! 4. `RefundOrder`, with source `stripe` and the event id in the reason:
//!    the same event delivered again is the same refund, answered as a repeat
//!    that changes nothing. A refund that can never be applied (a line
//!    refunded already on other terms, no line named for a partial refund, an
//!    unknown order or line, an amount above the price) is answered 200 with
//!    `applied: false` and logged, so Stripe does not deliver it again for
//!    days; a failure that may pass (Fulfillment unavailable or slow) is
//!    passed on for Stripe to retry.

use std::path::PathBuf;
use std::time::Duration;

use kit::client::TracedChannel;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::r#type::v1::Money;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tonic::Code;

use kit::auth::Secret;

/// The `source` of refunds that come from Stripe.
pub const SOURCE: &str = "stripe";

/// Stripe's webhook settings (`gateway.webhooks.stripe`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StripeConfig {
    /// The endpoint's signing secrets (`whsec_...`); a request signed with any
    /// of them is accepted, so a secret is rotated by adding the new one, then
    /// removing the old. Never logged. Empty: the route answers 404.
    pub signing_secrets: Vec<Secret>,
    /// A file with more signing secrets, one a line (a mounted Kubernetes secret).
    pub signing_secrets_file: Option<PathBuf>,
    /// How far a signature's timestamp may be from now.
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
    /// Which lines a refund covers.
    pub refund_lines: RefundLines,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            signing_secrets: Vec::new(),
            signing_secrets_file: None,
            tolerance: Duration::from_secs(300),
            refund_lines: RefundLines::Amount,
        }
    }
}

/// Which lines of the order a `charge.refunded` refunds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundLines {
    /// The refunded amount decides: all of the charge is the whole order;
    /// part of it, the lines named in `metadata.line_item_ids` (one named line
    /// is refunded by the amount, several each by its price).
    #[default]
    Amount,
    /// Always the whole order, each line by its price.
    WholeOrder,
    /// Always the lines named in `metadata.line_item_ids`, each by its price.
    Metadata,
}

/// Why the Stripe webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum StripeSetupError {
    /// The secrets file cannot be read.
    #[error("webhooks.stripe.signing_secrets_file {}: {source}", path.display())]
    SecretsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl StripeConfig {
    /// Every configured secret, the file's included.
    pub fn secrets(&self) -> Result<Vec<Secret>, StripeSetupError> {
        let mut secrets: Vec<Secret> =
            self.signing_secrets.iter().filter(|secret| !secret.expose().is_empty()).cloned().collect();
        if let Some(path) = self.signing_secrets_file.as_ref().filter(|path| !path.as_os_str().is_empty()) {
            let text = std::fs::read_to_string(path)
                .map_err(|source| StripeSetupError::SecretsFile { path: path.clone(), source })?;
            secrets.extend(
                text.lines().map(str::trim).filter(|line| !line.is_empty()).map(|line| Secret::new(line.into())),
            );
        }
        Ok(secrets)
    }
}

/// A Stripe event, as far as the webhook reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StripeEvent {
    /// `charge.refunded`.
    ChargeRefunded(ChargeRefunded),
    /// Any other type: acknowledged and ignored.
    Other {
        /// The event's id.
        id: String,
        /// Its type.
        kind: String,
    },
}

/// A charge refunded in whole or in part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRefunded {
    /// The event's id (`evt_...`).
    pub event_id: String,
    /// `metadata.order_number`: the order paid by the charge.
    pub order_number: String,
    /// `metadata.line_item_ids`, comma-separated, of the latest refund or else
    /// the charge: the lines a partial refund is for.
    pub line_item_ids: Vec<String>,
    /// The charge's currency, upper-cased (`USD`).
    pub currency: String,
    /// The charge, in the currency's smallest unit.
    pub amount: i64,
    /// What this event refunds, in the same unit: the latest refund's amount,
    /// or, when the event lists no refund, the charge's `amount_refunded`.
    pub refunded: i64,
    /// The latest refund's reason, when Stripe says (`requested_by_customer`...).
    pub reason: String,
}

/// Why an event cannot be turned into a refund; each names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EventError {
    /// The event's field, as a JSON path (`data.object.metadata.order_number`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn missing(field: &str, reason: &str) -> EventError {
    EventError { field: field.into(), reason: reason.into() }
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// Reads an event's body (already verified).
pub fn parse_event(body: &[u8]) -> Result<StripeEvent, EventError> {
    let raw: RawEvent = serde_json::from_slice(body)
        .map_err(|e| EventError { field: "body".into(), reason: format!("not a Stripe event: {e}") })?;
    if raw.kind != "charge.refunded" {
        return Ok(StripeEvent::Other { id: raw.id, kind: raw.kind });
    }
    let charge = &raw.data["object"];
    let metadata = &charge["metadata"];
    let order_number = metadata["order_number"]
        .as_str()
        .filter(|number| !number.is_empty())
        .ok_or_else(|| missing("data.object.metadata.order_number", "is required: the order the charge paid"))?;
    let latest = charge["refunds"]["data"].as_array().and_then(|refunds| refunds.first());
    let ids_in = |metadata: &serde_json::Value| -> Vec<String> {
        metadata["line_item_ids"]
            .as_str()
            .map(|ids| ids.split(',').map(str::trim).filter(|id| !id.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    };
    let mut line_item_ids = latest.map(|refund| ids_in(&refund["metadata"])).unwrap_or_default();
    if line_item_ids.is_empty() {
        line_item_ids = ids_in(metadata);
    }
    let amount = charge["amount"].as_i64().ok_or_else(|| missing("data.object.amount", "is required (an integer)"))?;
    // What this event adds: the latest refund's amount when the event lists
    // refunds (older API versions, or expanded), else the growth of the
    // cumulative `amount_refunded` since `previous_attributes`, else all of it.
    let refunded = match latest.and_then(|refund| refund["amount"].as_i64()) {
        Some(refunded) => refunded,
        None => {
            let total = charge["amount_refunded"]
                .as_i64()
                .ok_or_else(|| missing("data.object.amount_refunded", "is required (an integer)"))?;
            let before = raw.data["previous_attributes"]["amount_refunded"].as_i64().unwrap_or(0);
            total.saturating_sub(before)
        }
    };
    let currency = charge["currency"]
        .as_str()
        .filter(|code| code.len() == 3)
        .ok_or_else(|| missing("data.object.currency", "is required (a three-letter code)"))?
        .to_ascii_uppercase();
    let reason = latest.and_then(|refund| refund["reason"].as_str()).unwrap_or("refunded").to_string();
    Ok(StripeEvent::ChargeRefunded(ChargeRefunded {
        event_id: raw.id,
        order_number: order_number.to_string(),
        line_item_ids,
        currency,
        amount,
        refunded,
        reason,
    }))
}

/// The lines to refund: every line of the order (each by its price), or the named ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lines {
    /// Every line of the order.
    WholeOrder,
    /// These lines; an amount for each, or None for its price.
    Named(Vec<pb::RefundedLine>),
}

/// Which lines `charge` refunds under `mode`.
pub fn lines_to_refund(charge: &ChargeRefunded, mode: RefundLines) -> Result<Lines, EventError> {
    let whole = charge.refunded >= charge.amount;
    let named = |amount: Option<Money>| -> Result<Lines, EventError> {
        if charge.line_item_ids.is_empty() {
            return Err(missing(
                "data.object.metadata.line_item_ids",
                "is required for a partial refund: the lines refunded, comma-separated",
            ));
        }
        let one = charge.line_item_ids.len() == 1;
        Ok(Lines::Named(
            charge
                .line_item_ids
                .iter()
                .map(|id| pb::RefundedLine {
                    line_item_id: id.clone(),
                    refunded_amount: if one { amount.clone() } else { None },
                })
                .collect(),
        ))
    };
    match mode {
        RefundLines::WholeOrder => Ok(Lines::WholeOrder),
        RefundLines::Metadata => named(None),
        RefundLines::Amount if whole => Ok(Lines::WholeOrder),
        RefundLines::Amount => named(Some(Money {
            currency_code: charge.currency.clone(),
            amount: major_units(charge.refunded, &charge.currency),
        })),
    }
}

/// An amount in a currency's smallest unit as a decimal (`1999` USD is
/// `19.99`), with the decimals Stripe uses for the currency.
pub fn major_units(minor: i64, currency: &str) -> String {
    // Stripe's zero- and three-decimal currencies; every other has two.
    const ZERO: [&str; 16] = [
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
    ];
    const THREE: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];
    let scale = if ZERO.contains(&currency) {
        0
    } else if THREE.contains(&currency) {
        3
    } else {
        2
    };
    Decimal::new(minor, scale).to_string()
}

/// The webhook, ready to answer: its secrets and the Fulfillment client.
#[derive(Clone, Debug)]
pub struct StripeWebhook {
    secrets: Vec<Secret>,
    tolerance: Duration,
    lines: RefundLines,
    fulfillment: FulfillmentServiceClient<TracedChannel>,
}

/// How the webhook answered, before rendering: 200 with a body, or a status.
pub type Answer = Result<serde_json::Value, tonic::Status>;

impl StripeWebhook {
    /// The webhook over `fulfillment`; None when no secret is configured (the route answers 404).
    pub fn new(config: &StripeConfig, fulfillment: TracedChannel) -> Result<Option<Self>, StripeSetupError> {
        let secrets = config.secrets()?;
        if secrets.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            secrets,
            tolerance: config.tolerance,
            lines: config.refund_lines,
            fulfillment: FulfillmentServiceClient::new(fulfillment),
        }))
    }

    /// Verifies, reads and applies one delivery. `deadline` bounds the calls to
    /// Fulfillment, which receive `request_id` as the gateway's other calls do.
    pub async fn answer(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
        deadline: Duration,
        request_id: Option<&str>,
    ) -> Answer {
        let secrets: Vec<&str> = self.secrets.iter().map(Secret::expose).collect();
        if let Err(error) = super::signature::verify(signature, body, &secrets, now, self.tolerance.as_secs()) {
            let code = match error {
                super::signature::SignatureError::Mismatch => Code::Unauthenticated,
                _ => Code::InvalidArgument,
            };
            return Err(kit::error::with_reason(
                code,
                error.to_string(),
                "BAD_SIGNATURE",
                [("header", "Stripe-Signature".to_string())],
            ));
        }
        let bad = |error: EventError| {
            // A signed event this webhook cannot read at all.
            let mut violations = kit::error::BadRequest::new();
            violations.violation(error.field, kit::error::ViolationReason::InvalidFormat, error.reason);
            violations.into_status()
        };
        let charge = match parse_event(body).map_err(bad)? {
            StripeEvent::ChargeRefunded(charge) => charge,
            StripeEvent::Other { id, kind } => {
                return Ok(serde_json::json!({"received": true, "event_id": id, "ignored": kind}));
            }
        };
        let lines = match lines_to_refund(&charge, self.lines) {
            Ok(Lines::Named(lines)) => lines,
            Ok(Lines::WholeOrder) => self.order_lines(&charge.order_number, deadline, request_id).await?,
            Err(error) => return Ok(not_applied(&charge, &error.to_string())),
        };
        if lines.is_empty() {
            return Ok(not_applied(&charge, "every line of the order is refunded already"));
        }
        let mut request = tonic::Request::new(pb::RefundOrderRequest {
            order_number: charge.order_number.clone(),
            lines,
            // The event id makes a redelivery the same refund (a repeat) and a different event a different one.
            reason: format!("{} (Stripe event {})", charge.reason, charge.event_id),
            source: SOURCE.into(),
        });
        prepare(&mut request, deadline, request_id);
        let refunded = match self.fulfillment.clone().refund_order(request).await {
            Ok(answer) => answer.into_inner(),
            // A failure that may pass: Stripe delivers again later.
            Err(status) if may_pass(status.code()) => return Err(status),
            // Refused for good: Stripe retrying for days would change nothing.
            Err(status) => return Ok(not_applied(&charge, status.message())),
        };
        let fulfillments: Vec<serde_json::Value> = refunded
            .fulfillments
            .iter()
            .map(|f| {
                let state = pb::FulfillmentState::try_from(f.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN");
                serde_json::json!({"fulfillment_id": f.fulfillment_id, "line_item_id": f.line_item_id, "state": state})
            })
            .collect();
        Ok(serde_json::json!({
            "received": true,
            "event_id": charge.event_id,
            "applied": true,
            "created": refunded.created,
            "fulfillments": fulfillments,
        }))
    }

    /// Every line of the order not refunded yet, each to be refunded by its price.
    async fn order_lines(
        &self,
        order_number: &str,
        deadline: Duration,
        request_id: Option<&str>,
    ) -> Result<Vec<pb::RefundedLine>, tonic::Status> {
        let mut request = tonic::Request::new(pb::ListOrderFulfillmentsRequest {
            order_number: order_number.into(),
            page_size: 500,
            page_token: String::new(),
        });
        prepare(&mut request, deadline, request_id);
        let listed = self.fulfillment.clone().list_order_fulfillments(request).await?.into_inner();
        if listed.fulfillments.is_empty() {
            return Err(tonic::Status::not_found(format!(
                "data.object.metadata.order_number: no order {order_number} was fulfilled here"
            )));
        }
        Ok(listed
            .fulfillments
            .into_iter()
            .filter(|f| f.refund.is_none())
            .map(|f| pb::RefundedLine { line_item_id: f.line_item_id, refunded_amount: None })
            .collect())
    }
}

/// Whether a failure from Fulfillment may pass if Stripe delivers again (the
/// service unavailable, slow, or failing): the webhook answers an error then.
fn may_pass(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
            // Fulfillment refusing the gateway's own identity: a deployment
            // fault an operator fixes, after which Stripe's retry applies.
            | Code::Unauthenticated
            | Code::PermissionDenied
    )
}

/// The answer to a signed refund the webhook cannot apply, ever: 200, so Stripe
/// does not deliver it again for days, with the reason, logged for an operator.
fn not_applied(charge: &ChargeRefunded, reason: &str) -> serde_json::Value {
    tracing::warn!(
        event_id = %charge.event_id,
        order_number = %charge.order_number,
        reason,
        "a Stripe refund was not applied; an operator should look"
    );
    serde_json::json!({"received": true, "event_id": charge.event_id, "applied": false, "reason": reason})
}

/// A call's deadline, the webhook as its caller, and the request id.
fn prepare<T>(request: &mut tonic::Request<T>, deadline: Duration, request_id: Option<&str>) {
    request.set_timeout(deadline);
    let metadata = request.metadata_mut();
    metadata.insert(crate::server::SUBJECT_METADATA, tonic::metadata::MetadataValue::from_static("webhook:stripe"));
    if let Some(id) = request_id.and_then(|id| tonic::metadata::MetadataValue::try_from(id).ok()) {
        metadata.insert(crate::server::REQUEST_ID_HEADER, id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(amount_refunded: i64, line_item_ids: Option<&str>) -> Vec<u8> {
        let mut metadata = serde_json::json!({"order_number": "EDX-1"});
        if let Some(ids) = line_item_ids {
            metadata["line_item_ids"] = ids.into();
        }
        serde_json::to_vec(&serde_json::json!({
            "id": "evt_1",
            "type": "charge.refunded",
            "data": {"object": {
                "amount": 29800, "amount_refunded": amount_refunded, "currency": "usd", "metadata": metadata,
                "refunds": {"data": [{"reason": "requested_by_customer", "amount": amount_refunded}]}
            }}
        }))
        .unwrap()
    }

    fn charge(body: &[u8]) -> ChargeRefunded {
        match parse_event(body).unwrap() {
            StripeEvent::ChargeRefunded(charge) => charge,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_refunded_amount_decides_the_lines() {
        assert_eq!(lines_to_refund(&charge(&event(29800, None)), RefundLines::Amount), Ok(Lines::WholeOrder));
        let one = lines_to_refund(&charge(&event(14900, Some("l2"))), RefundLines::Amount).unwrap();
        let Lines::Named(lines) = one else { panic!("{one:?}") };
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].refunded_amount.as_ref().unwrap().amount, "149.00");
        let two = lines_to_refund(&charge(&event(20000, Some("l1, l2"))), RefundLines::Amount).unwrap();
        let Lines::Named(lines) = two else { panic!("{two:?}") };
        assert!(lines.iter().all(|line| line.refunded_amount.is_none()), "several lines: each by its price");
        let unnamed = lines_to_refund(&charge(&event(100, None)), RefundLines::Amount).unwrap_err();
        assert_eq!(unnamed.field, "data.object.metadata.line_item_ids");
        assert_eq!(lines_to_refund(&charge(&event(100, None)), RefundLines::WholeOrder), Ok(Lines::WholeOrder));
        assert!(lines_to_refund(&charge(&event(29800, None)), RefundLines::Metadata).is_err());
    }

    #[test]
    fn a_second_partial_refund_is_the_latest_refund_not_the_running_total() {
        let second = serde_json::to_vec(&serde_json::json!({
            "id": "evt_2", "type": "charge.refunded",
            "data": {"object": {
                "amount": 29800, "amount_refunded": 29800, "currency": "usd",
                "metadata": {"order_number": "EDX-1", "line_item_ids": "l1"},
                "refunds": {"data": [
                    {"amount": 14900, "reason": "requested_by_customer", "metadata": {"line_item_ids": "l2"}},
                    {"amount": 14900, "metadata": {"line_item_ids": "l1"}}
                ]}
            }}
        }))
        .unwrap();
        let charge = charge(&second);
        assert_eq!((charge.refunded, charge.line_item_ids.as_slice()), (14900, &["l2".to_string()][..]));
        let Lines::Named(lines) = lines_to_refund(&charge, RefundLines::Amount).unwrap() else { panic!() };
        assert_eq!(
            (lines[0].line_item_id.as_str(), lines[0].refunded_amount.as_ref().unwrap().amount.as_str()),
            ("l2", "149.00")
        );
    }

    #[test]
    fn without_the_refund_list_the_growth_since_the_previous_attributes_is_refunded() {
        let second = serde_json::to_vec(&serde_json::json!({
            "id": "evt_3", "type": "charge.refunded",
            "data": {
                "object": {"amount": 29800, "amount_refunded": 29800, "currency": "usd",
                           "metadata": {"order_number": "EDX-1", "line_item_ids": "l2"}},
                "previous_attributes": {"amount_refunded": 14900, "refunded": false}
            }
        }))
        .unwrap();
        assert_eq!(charge(&second).refunded, 14900, "not the running total, which would be the whole order");
    }

    #[test]
    fn other_events_are_ignored_and_bad_ones_name_the_field() {
        let other = br#"{"id": "evt_2", "type": "charge.succeeded", "data": {"object": {}}}"#;
        assert_eq!(parse_event(other), Ok(StripeEvent::Other { id: "evt_2".into(), kind: "charge.succeeded".into() }));
        let no_order = br#"{"id": "evt_3", "type": "charge.refunded", "data": {"object": {"metadata": {}}}}"#;
        assert_eq!(parse_event(no_order).unwrap_err().field, "data.object.metadata.order_number");
        assert_eq!(parse_event(b"not json").unwrap_err().field, "body");
        let reason = charge(&event(29800, None)).reason;
        assert_eq!(reason, "requested_by_customer");
    }

    #[test]
    fn minor_units_follow_the_currency() {
        assert_eq!(major_units(1999, "USD"), "19.99");
        assert_eq!(major_units(500, "JPY"), "500");
        assert_eq!(major_units(1234, "KWD"), "1.234");
        assert_eq!(major_units(5, "EUR"), "0.05");
    }
}
