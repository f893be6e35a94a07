//! The checks on one JWT: its bearer header, its JOSE header (read before
//! verification, to pick the verifier), the signature and claims
//! (jsonwebtoken), and the [`Caller`] its claims make.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{AuthConfig, Caller, Unauthenticated};

/// Far above any real token; bounds the work an unauthenticated caller can cause.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The claims every token must carry; `nbf` is checked when present.
const REQUIRED_CLAIMS: [&str; 4] = ["exp", "iss", "aud", "sub"];

/// One validation per algorithm, each accepting exactly that algorithm.
pub(super) fn validation(algorithm: Algorithm, config: &AuthConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&REQUIRED_CLAIMS);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.leeway = config.leeway.as_secs();
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation
}

/// The token of a `Bearer <token>` header value, shaped like a compact JWS.
pub(super) fn bearer_token(authorization: Option<&HeaderValue>) -> Result<&str, Unauthenticated> {
    let Some(value) = authorization else {
        return Err(Unauthenticated::no_token("no bearer token: send the header `Authorization: Bearer <token>`"));
    };
    let value = value.as_bytes().trim_ascii();
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(space) => value.split_at(space),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Unauthenticated::no_token("the Authorization header must use the Bearer scheme"));
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(Unauthenticated::invalid_token("the Authorization header has no token after Bearer"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Unauthenticated::invalid_token(format!("the token is longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let jws_shaped = token.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && token.iter().filter(|b| **b == b'.').count() == 2;
    let not_a_jwt = || Unauthenticated::invalid_token("the token is not a JWT (three base64url parts joined by dots)");
    if !jws_shaped {
        return Err(not_a_jwt());
    }
    std::str::from_utf8(token).map_err(|_| not_a_jwt())
}

/// The part of the JOSE header that decides how a token is checked.
#[derive(Deserialize)]
pub(super) struct TokenHeader {
    /// The signing algorithm the token claims.
    pub(super) alg: String,
    /// The id of the key that signed it.
    #[serde(default)]
    pub(super) kid: Option<String>,
    /// Critical extensions; none are supported.
    #[serde(default)]
    pub(super) crit: Option<Value>,
}

impl TokenHeader {
    /// Read before verification (it picks the verifier), so nothing in it is trusted.
    pub(super) fn of(token: &str) -> Result<Self, Unauthenticated> {
        let malformed =
            || Unauthenticated::invalid_token("the token's header is not base64url-encoded JSON with an alg");
        let encoded = token.split('.').next().unwrap_or_default();
        let json = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
        serde_json::from_slice(&json).map_err(|_| malformed())
    }
}

/// The claims of `token` when its signature verifies with `key` and they pass `validation`.
pub(super) fn verified_claims(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, Unauthenticated> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|error| Unauthenticated::invalid_token(rejection_reason(error.kind())))
}

/// What the caller is told; the library's own texts are not for callers.
fn rejection_reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "the token is not meant for this audience (aud)".into(),
        // Also a claim of the wrong type (`"exp": "tomorrow"`): the library cannot tell them apart.
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no valid {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim} claim is malformed"),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            "the token's signing algorithm is not accepted".into()
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            "the token is malformed".into()
        }
        other => {
            // A key that cannot verify anything: ours to fix, not the caller's.
            tracing::warn!(error = ?other, "a token could not be verified");
            "the token could not be verified".into()
        }
    }
}

/// Who the verified `claims` say is calling.
pub(super) fn caller_from(claims: &Map<String, Value>) -> Result<Caller, Unauthenticated> {
    let subject = match claims.get("sub") {
        Some(Value::String(subject)) if !subject.is_empty() => subject.clone(),
        _ => return Err(Unauthenticated::invalid_token("the token has no subject (sub)")),
    };
    let scopes = scopes_of(claims).map_err(Unauthenticated::invalid_token)?;
    Ok(Caller { subject, scopes })
}

/// The mesh's `scopes` claim (an array of strings or one space-separated
/// string), else OAuth's `scope` (space-separated, RFC 8693 §4.2).
fn scopes_of(claims: &Map<String, Value>) -> Result<BTreeSet<String>, &'static str> {
    let spaced = |text: &str| text.split_whitespace().map(str::to_owned).collect();
    match claims.get("scopes").filter(|value| !value.is_null()) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(scope) if scope.is_empty() => None,
                Value::String(scope) => Some(Ok(scope.clone())),
                _ => Some(Err("the token's scopes claim must hold strings")),
            })
            .collect(),
        Some(Value::String(text)) => Ok(spaced(text)),
        Some(_) => Err("the token's scopes claim must be an array of strings or a space-separated string"),
        None => match claims.get("scope").filter(|value| !value.is_null()) {
            Some(Value::String(text)) => Ok(spaced(text)),
            Some(_) => Err("the token's scope claim must be a space-separated string"),
            None => Ok(BTreeSet::new()),
        },
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::auth::test_support::development_authenticator;

    proptest! {
        #[test]
        fn no_header_value_panics_or_passes(bytes in proptest::collection::vec(any::<u8>(), 0..200), prefix in "(Bearer |bearer |Basic |)") {
            let mut value = prefix.into_bytes();
            value.extend(bytes);
            let Ok(header) = HeaderValue::from_bytes(&value) else { return Ok(()) };
            let (runtime, authenticator) = development_authenticator();
            let result = runtime.block_on(authenticator.authenticate(Some(&header)));
            prop_assert!(result.is_err());
        }

        #[test]
        fn no_jwt_shaped_garbage_passes(token in "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,80}") {
            let (runtime, authenticator) = development_authenticator();
            let header = HeaderValue::try_from(format!("Bearer {token}")).unwrap();
            let rejection = runtime.block_on(authenticator.authenticate(Some(&header))).unwrap_err();
            prop_assert!(rejection.token_presented());
            prop_assert!(token.len() < 8 || !rejection.reason.contains(&token));
        }
    }
}
