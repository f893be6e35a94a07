//! The memory of tokens that verified: a caller sends the same token with
//! every request, and checking its signature (an RSA verification for RS256)
//! and decoding its claims each time was the largest piece of the gateway's
//! own work per request.

use std::time::{Duration, Instant};

use super::Caller;

/// Verified tokens remembered at most; past it, the least likely to be
/// used again are forgotten (and verified again when they come back).
pub(super) const VERIFIED_CAPACITY: u64 = 8192;
/// The longest a verified token is trusted without checking its signature
/// again: a key taken out of the JWKS stops admitting its tokens within this.
pub(super) const VERIFIED_FOR: Duration = Duration::from_secs(60);

/// Tokens that verified, by their exact text: what they said, and until when
/// it may be believed without verifying again. At most [`VERIFIED_CAPACITY`]
/// are held (moka evicts those least likely to be used again), and each
/// leaves when its time is over.
pub(super) struct VerifiedTokens {
    entries: moka::sync::Cache<Box<str>, Verified>,
}

#[derive(Clone)]
struct Verified {
    caller: Caller,
    until: Instant,
}

/// Each remembered token is dropped when it may no longer be believed.
struct UntilItsTime;

impl moka::Expiry<Box<str>, Verified> for UntilItsTime {
    fn expire_after_create(&self, _token: &Box<str>, verified: &Verified, created_at: Instant) -> Option<Duration> {
        Some(verified.until.saturating_duration_since(created_at))
    }
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        let entries = moka::sync::Cache::builder().max_capacity(VERIFIED_CAPACITY).expire_after(UntilItsTime).build();
        Self { entries }
    }
}

impl VerifiedTokens {
    /// The caller `token` verified as, if that is remembered and still holds at `now`.
    pub(super) fn get(&self, token: &str, now: Instant) -> Option<Caller> {
        self.entries.get(token).filter(|verified| now < verified.until).map(|verified| verified.caller)
    }

    /// Remembers `token` as `caller` until `until`.
    pub(super) fn insert(&self, token: &str, caller: &Caller, until: Instant) {
        self.entries.insert(token.into(), Verified { caller: caller.clone(), until });
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::auth::test_support::{
        DEVELOPMENT_SECRET, bearer, development_authenticator, development_token, valid_claims,
    };
    use crate::auth::{AuthConfig, Authenticator, Secret};

    fn scoped_claims() -> serde_json::Value {
        let mut claims = valid_claims();
        claims["scopes"] = serde_json::json!(["identity:read"]);
        claims
    }

    #[test]
    fn a_verified_token_is_remembered_for_at_most_verified_for() {
        let (runtime, authenticator) = development_authenticator();
        let token = development_token(DEVELOPMENT_SECRET, &scoped_claims());
        let first = runtime.block_on(authenticator.authenticate(Some(&bearer(&token)))).unwrap();
        assert_eq!(authenticator.inner.verified.len(), 1);
        let again = runtime.block_on(authenticator.authenticate(Some(&bearer(&token)))).unwrap();
        assert_eq!(first, again);
        assert_eq!(again.scopes, BTreeSet::from(["identity:read".to_string()]));
        let verified = &authenticator.inner.verified;
        assert!(verified.get(&token, Instant::now()).is_some());
        // The token is valid for 10 minutes, yet trusted unverified for VERIFIED_FOR only.
        assert!(verified.get(&token, Instant::now() + VERIFIED_FOR).is_none());
    }

    #[test]
    fn a_token_is_remembered_no_longer_than_it_is_valid() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = AuthConfig {
            development_secret: Some(Secret::new(DEVELOPMENT_SECRET.into())),
            leeway: Duration::from_secs(2),
            ..AuthConfig::default()
        };
        let authenticator = runtime.block_on(Authenticator::new(&config)).unwrap();
        let mut claims = valid_claims();
        claims["exp"] = (jsonwebtoken::get_current_timestamp() + 3).into();
        let token = development_token(DEVELOPMENT_SECRET, &claims);
        runtime.block_on(authenticator.authenticate(Some(&bearer(&token)))).unwrap();
        // exp + leeway is at most 5 s away: not one second more.
        assert!(authenticator.inner.verified.get(&token, Instant::now() + Duration::from_secs(6)).is_none());
    }

    #[test]
    fn refused_tokens_are_not_remembered() {
        let (runtime, authenticator) = development_authenticator();
        let now = jsonwebtoken::get_current_timestamp();
        let refused = [
            development_token("another secret, also 32 bytes or more", &valid_claims()),
            development_token(DEVELOPMENT_SECRET, &{
                let mut claims = valid_claims();
                claims["exp"] = (now - 3600).into();
                claims
            }),
            development_token(DEVELOPMENT_SECRET, &{
                let mut claims = valid_claims();
                claims["sub"] = "".into();
                claims
            }),
        ];
        for token in &refused {
            for _ in 0..2 {
                assert!(runtime.block_on(authenticator.authenticate(Some(&bearer(token)))).is_err());
            }
        }
        assert_eq!(authenticator.inner.verified.len(), 0);
    }

    #[test]
    fn a_remembered_token_past_its_time_is_verified_again() {
        let (runtime, authenticator) = development_authenticator();
        let mut claims = valid_claims();
        claims["exp"] = (jsonwebtoken::get_current_timestamp() - 3600).into();
        let token = development_token(DEVELOPMENT_SECRET, &claims);
        // As if remembered earlier, its time now over.
        let caller = Caller { subject: "learner-1".into(), scopes: BTreeSet::new() };
        authenticator.inner.verified.insert(&token, &caller, Instant::now());
        let refused = runtime.block_on(authenticator.authenticate(Some(&bearer(&token)))).unwrap_err();
        assert_eq!(refused.reason, "the token has expired");
    }

    #[test]
    fn a_tampered_copy_of_a_remembered_token_is_refused() {
        let (runtime, authenticator) = development_authenticator();
        let token = development_token(DEVELOPMENT_SECRET, &valid_claims());
        runtime.block_on(authenticator.authenticate(Some(&bearer(&token)))).unwrap();
        let (unsigned, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{unsigned}.{flipped}{}", &signature[1..]);
        let refused = runtime.block_on(authenticator.authenticate(Some(&bearer(&tampered)))).unwrap_err();
        assert_eq!(refused.reason, "the token's signature does not verify");
    }

    #[test]
    fn the_memory_stays_bounded_and_a_new_token_still_verifies() {
        let (runtime, authenticator) = development_authenticator();
        let verified = &authenticator.inner.verified;
        let caller = Caller { subject: "someone".into(), scopes: BTreeSet::new() };
        let later = Instant::now() + VERIFIED_FOR;
        for n in 0..VERIFIED_CAPACITY + 1000 {
            verified.insert(&format!("token-{n}"), &caller, later);
        }
        assert!(verified.len() <= VERIFIED_CAPACITY, "holds {} tokens", verified.len());
        let token = development_token(DEVELOPMENT_SECRET, &valid_claims());
        let answer = runtime.block_on(authenticator.authenticate(Some(&bearer(&token)))).unwrap();
        assert_eq!(answer.subject, "learner-1");
        assert!(verified.len() <= VERIFIED_CAPACITY, "holds {} tokens", verified.len());
    }
}
