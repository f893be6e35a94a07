//! Stripe's webhook signature: the `Stripe-Signature` header (`t=<unix
//! seconds>,v1=<hex HMAC-SHA256>,...`) signs `"{t}.{raw body}"` with the
//! endpoint's secret. Checked before anything in the body is read: every
//! `v1` against every configured secret (so a secret can be rotated with
//! both in place), in constant time, and the timestamp within a tolerance
//! (so a captured request cannot be replayed later).
//!
//! ```
//! use gateway::webhooks::signature::{sign, verify};
//!
//! let body = br#"{"id":"evt_1"}"#;
//! let header = sign("whsec_test", 1_700_000_000, body);
//! let secrets = ["whsec_old", "whsec_test"];
//! assert!(verify(Some(&header), body, &secrets, 1_700_000_100, 300).is_ok());
//! assert!(verify(Some(&header), b"{}", &secrets, 1_700_000_100, 300).is_err(), "tampered");
//! assert!(verify(Some(&header), body, &secrets, 1_700_000_400, 300).is_err(), "stale");
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header Stripe signs with.
pub const HEADER: &str = "stripe-signature";
/// The most `v1` signatures read from one header (Stripe sends one per
/// active secret): more cost a MAC comparison each and are refused.
pub const MAX_SIGNATURES: usize = 8;

/// Why a request's signature is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("the Stripe-Signature header is missing")]
    Missing,
    /// The header is not `t=...,v1=...`.
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    /// The timestamp is further from now than the tolerance.
    #[error("the Stripe-Signature timestamp is {age_seconds} s from now, more than the {tolerance_seconds} s allowed")]
    Stale {
        /// How far from now, in seconds.
        age_seconds: u64,
        /// The tolerance, in seconds.
        tolerance_seconds: u64,
    },
    /// No `v1` signature matches any configured secret.
    #[error("no Stripe-Signature v1 signature matches this endpoint's secrets")]
    Mismatch,
}

/// Checks `header` over `body` against every secret at `now` (Unix seconds).
pub fn verify<S: AsRef<str>>(
    header: Option<&str>,
    body: &[u8],
    secrets: &[S],
    now: i64,
    tolerance_seconds: u64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (key, value) = item.trim().split_once('=').ok_or(SignatureError::Malformed("an item without '='"))?;
        match key {
            "t" => timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed("t is not a number"))?),
            // A v1 that is not hex cannot match: skipped, like other schemes (v0, future ones).
            "v1" if signatures.len() >= MAX_SIGNATURES => {
                return Err(SignatureError::Malformed("more v1= signatures than an endpoint has secrets"));
            }
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t="))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1= signature"));
    }
    let age_seconds = now.abs_diff(timestamp);
    if age_seconds > tolerance_seconds {
        return Err(SignatureError::Stale { age_seconds, tolerance_seconds });
    }
    let signed_payload = signed(timestamp, body);
    for secret in secrets {
        // The body is hashed once per secret; each signature is checked
        // against a copy of that state, in constant time (verify_slice).
        let Some(mac) = mac(secret.as_ref(), &signed_payload) else { continue };
        if signatures.iter().any(|signature| mac.clone().verify_slice(signature).is_ok()) {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// The header Stripe would send for `body` signed with `secret` at `timestamp`: for tests and tools.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, &signed(timestamp, body)).map(|mac| hex::encode(mac.finalize().into_bytes()));
    format!("t={timestamp},v1={}", tag.unwrap_or_default())
}

fn signed(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut payload = format!("{timestamp}.").into_bytes();
    payload.extend_from_slice(body);
    payload
}

/// The MAC of `payload` under `secret`; None never happens (HMAC takes keys of any length).
fn mac(secret: &str, payload: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(payload);
    Some(mac)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn every_v1_is_tried_against_every_secret() {
        let body = b"{}";
        let old = sign("whsec_old", NOW, body);
        let new = sign("whsec_new", NOW, body);
        let both = format!("{old},v1={}", new.split("v1=").nth(1).unwrap());
        assert_eq!(verify(Some(&both), body, &["whsec_new"], NOW, 300), Ok(()));
        assert_eq!(verify(Some(&old), body, &["whsec_new", "whsec_old"], NOW, 300), Ok(()), "rotation");
        assert_eq!(verify(Some(&old), body, &["whsec_new"], NOW, 300), Err(SignatureError::Mismatch));
    }

    #[test]
    fn malformed_headers_are_named() {
        let body = b"{}";
        assert_eq!(verify(None, body, &["s"], NOW, 300), Err(SignatureError::Missing));
        assert!(matches!(verify(Some("garbage"), body, &["s"], NOW, 300), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify(Some("t=x,v1=00"), body, &["s"], NOW, 300), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify(Some("v1=00"), body, &["s"], NOW, 300), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify(Some("t=1"), body, &["s"], NOW, 300), Err(SignatureError::Malformed(_))));
        assert!(matches!(
            verify(Some(&format!("t={NOW},v1=zz")), body, &["s"], NOW, 300),
            Err(SignatureError::Malformed(_))
        ));
        let flood = format!("t={NOW}{}", ",v1=00".repeat(MAX_SIGNATURES + 1));
        assert!(matches!(verify(Some(&flood), body, &["s"], NOW, 300), Err(SignatureError::Malformed(_))), "capped");
    }

    #[test]
    fn a_timestamp_outside_the_tolerance_is_stale_either_way() {
        let body = b"{}";
        let header = sign("s", NOW, body);
        assert_eq!(verify(Some(&header), body, &["s"], NOW + 300, 300), Ok(()));
        assert_eq!(
            verify(Some(&header), body, &["s"], NOW + 301, 300),
            Err(SignatureError::Stale { age_seconds: 301, tolerance_seconds: 300 })
        );
        assert!(matches!(verify(Some(&header), body, &["s"], NOW - 301, 300), Err(SignatureError::Stale { .. })));
    }

    #[test]
    fn the_signature_matches_stripes_documented_scheme() {
        // HMAC-SHA256("whsec_test", "1700000000.{}"), computed independently (Python's hmac module).
        assert_eq!(
            sign("whsec_test", NOW, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }
}
