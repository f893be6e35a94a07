//! What an outcome webhook sends: the JSON body ([`OutcomeNotice`]) and its
//! signature ([`signature`]), `t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" under the source system's secret>` in [`SIGNATURE_HEADER`] —
//! Stripe's scheme, so receivers know the recipe (docs/OPERATIONS.md has one).
//! Pure: unit-tested with a known vector.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::ErrorKind;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-commerce-mesh-signature";
/// The header repeating the body's `event_id`, for receivers that dedupe before parsing.
pub const EVENT_ID_HEADER: &str = "x-commerce-mesh-event-id";

/// One line's outcome, as its source system's webhook receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeNotice {
    /// Unique per outcome: the same id on a redelivery, so the receiver applies it once.
    pub event_id: String,
    /// The fulfillment (one line of one order).
    pub fulfillment_id: String,
    /// The order number.
    pub order_number: String,
    /// The commerce platform's id of the order, when the order carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The line item.
    pub line_item_id: String,
    /// The system that placed the order (whose webhook this is).
    pub source_system: String,
    /// SUCCEEDED, FAILED, REVOKED or REVOKE_FAILED.
    pub state: String,
    /// Why, for FAILED and REVOKE_FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NoticeError>,
    /// When the line reached `state` (RFC 3339).
    pub occurred_at: DateTime<Utc>,
}

/// Why a line failed, in a notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeError {
    /// REJECTED, ATTEMPTS_EXHAUSTED, ... (`ErrorKind`'s names).
    pub kind: String,
    /// The LMS's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lms_status: Option<u16>,
    /// What happened (the learner's username replaced by `<learner>`).
    pub message: String,
}

impl OutcomeNotice {
    /// The body as sent and signed.
    pub fn to_json(&self) -> String {
        // Plain strings, numbers and a timestamp: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The signature header's value for `body` signed with `secret` at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut payload = format!("{timestamp}.").into_bytes();
    payload.extend_from_slice(body);
    // HMAC takes a key of any length, so this never falls back to the empty tag.
    let tag = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .map(|mut mac| {
            mac.update(&payload);
            hex::encode(mac.finalize().into_bytes())
        })
        .unwrap_or_default();
    format!("t={timestamp},v1={tag}")
}

/// The retry class of a receiver's HTTP status: None for a success (2xx),
/// else the LMS's classes (`ErrorKind::of_status`: 408, 429 and 5xx are
/// retried, any other answer is permanent — redirects are not followed).
pub fn class_of_status(status: u16) -> Option<ErrorKind> {
    match status {
        200..=299 => None,
        _ => Some(ErrorKind::of_status(status)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() {
        // Checked independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            signature("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn the_signature_changes_with_secret_time_and_body() {
        let base = signature("s1", 1, b"{}");
        assert_ne!(base, signature("s2", 1, b"{}"));
        assert_ne!(base, signature("s1", 2, b"{}"));
        assert_ne!(base, signature("s1", 1, b"{ }"));
    }

    #[test]
    fn receivers_answers_are_classed_as_lms_answers() {
        for ok in [200, 201, 202, 204] {
            assert_eq!(class_of_status(ok), None, "{ok}");
        }
        for transient in [408, 429, 500, 502, 503, 504] {
            let kind = class_of_status(transient).unwrap();
            assert!(kind.is_transient(), "{transient} is retried");
        }
        for permanent in [301, 302, 400, 401, 403, 404, 410, 422] {
            assert_eq!(class_of_status(permanent), Some(ErrorKind::Rejected), "{permanent} is given up");
        }
    }

    #[test]
    fn the_body_leaves_out_what_is_absent_and_names_every_field_otherwise() {
        let notice = OutcomeNotice {
            event_id: "fulfillment-completed:f-1".into(),
            fulfillment_id: "f-1".into(),
            order_number: "EDX-1".into(),
            order_id: None,
            line_item_id: "l-1".into(),
            source_system: "commercetools".into(),
            state: "SUCCEEDED".into(),
            error: None,
            occurred_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        let json: serde_json::Value = serde_json::from_str(&notice.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event_id": "fulfillment-completed:f-1",
                "fulfillment_id": "f-1",
                "order_number": "EDX-1",
                "line_item_id": "l-1",
                "source_system": "commercetools",
                "state": "SUCCEEDED",
                "occurred_at": "2023-11-14T22:13:20Z",
            })
        );
        let failed = OutcomeNotice {
            state: "FAILED".into(),
            error: Some(NoticeError { kind: "REJECTED".into(), lms_status: Some(400), message: "no".into() }),
            ..notice
        };
        let json: serde_json::Value = serde_json::from_str(&failed.to_json()).unwrap();
        assert_eq!(json["error"], serde_json::json!({"kind": "REJECTED", "lms_status": 400, "message": "no"}));
        assert_eq!(serde_json::from_str::<OutcomeNotice>(&failed.to_json()).unwrap(), failed);
    }
}
