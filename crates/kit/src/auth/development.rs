//! Development tokens: HS256 tokens signed with the development secret, for
//! a mesh without an identity provider. `commerce-mesh token` mints them for
//! people (crates/commerce-mesh/src/dev_tokens.rs), and
//! [`Credential::development`](crate::credential::Credential::development)
//! for the components calling each other; the [`Authenticator`](super::Authenticator)
//! verifies them when `auth.development_secret` is set.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::Secret;

/// HS256 keys shorter than the hash output are brute-forceable (RFC 7518 §3.2).
pub(super) const MIN_SECRET_BYTES: usize = 32;

/// Claims for a development token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevelopmentClaims {
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `aud`.
    pub audience: String,
    /// The token's `sub`: who the token speaks for.
    pub subject: String,
    /// The scopes the token grants.
    pub scopes: Vec<String>,
    /// How long the token is valid from now.
    pub ttl: Duration,
}

/// Why a development token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The development secret is too short to be safe.
    #[error("the development secret must be at least {MIN_SECRET_BYTES} bytes, is {length}")]
    SecretTooShort {
        /// The secret's length in bytes.
        length: usize,
    },
    /// The subject is empty; the gateway would refuse the token.
    #[error("a development token needs a subject")]
    EmptySubject,
    /// The lifetime is under a second, or ends past what a timestamp holds.
    #[error("the token's ttl must be at least 1s and end within the timestamp range")]
    Lifetime,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// Mints an HS256 token with the development secret.
pub fn mint_development_token(secret: &Secret, claims: &DevelopmentClaims) -> Result<String, MintError> {
    let length = secret.expose().len();
    if length < MIN_SECRET_BYTES {
        return Err(MintError::SecretTooShort { length });
    }
    if claims.subject.is_empty() {
        return Err(MintError::EmptySubject);
    }
    if claims.ttl.as_secs() == 0 {
        return Err(MintError::Lifetime);
    }
    let now = jsonwebtoken::get_current_timestamp();
    let expires = now.checked_add(claims.ttl.as_secs()).ok_or(MintError::Lifetime)?;
    let body = serde_json::json!({
        "iss": claims.issuer,
        "aud": claims.audience,
        "sub": claims.subject,
        "iat": now,
        "exp": expires,
        "scopes": claims.scopes,
    });
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &body, &EncodingKey::from_secret(secret.expose().as_bytes()))
        .map_err(MintError::Sign)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use super::*;
    use crate::auth::test_support::{DEVELOPMENT_SECRET, bearer, development_authenticator};

    fn claims(subject: &str, ttl: Duration) -> DevelopmentClaims {
        DevelopmentClaims {
            issuer: "commerce-mesh".into(),
            audience: "commerce-mesh".into(),
            subject: subject.into(),
            scopes: vec!["identity:read".into()],
            ttl,
        }
    }

    #[test]
    fn a_minted_token_verifies_as_its_subject_with_its_scopes() {
        let secret = Secret::new(DEVELOPMENT_SECRET.into());
        let token = mint_development_token(&secret, &claims("learner-1", Duration::from_secs(60))).unwrap();
        let (runtime, authenticator) = development_authenticator();
        let caller = runtime.block_on(authenticator.authenticate(Some(&bearer(&token)))).unwrap();
        assert_eq!(caller.subject, "learner-1");
        assert!(caller.scopes.contains("identity:read"));
    }

    #[test]
    fn minting_refuses_a_short_secret_an_empty_subject_and_no_lifetime() {
        let short = Secret::new("x".repeat(MIN_SECRET_BYTES - 1));
        let secret = Secret::new(DEVELOPMENT_SECRET.into());
        let minute = Duration::from_secs(60);
        assert!(matches!(mint_development_token(&short, &claims("s", minute)), Err(MintError::SecretTooShort { .. })));
        assert!(matches!(mint_development_token(&secret, &claims("", minute)), Err(MintError::EmptySubject)));
        assert!(matches!(mint_development_token(&secret, &claims("s", Duration::ZERO)), Err(MintError::Lifetime)));
    }
}
