//! Bearer-token authentication: JWTs checked against a JWKS (RS256) or a
//! development secret (HS256), and each RPC's scopes.
//!
//! A token's `alg` header only picks which configured verifier to try, and
//! each verifier accepts exactly one algorithm with keys of its own kind: a
//! token can never choose how it is checked (no `alg: none`, no HS256 token
//! "signed" with an RSA public key).
//!
//! A token naming a key id the JWKS does not hold is refused at once; the
//! set is fetched again in the background (one fetch at a time, at most once
//! per `jwks_refetch_cooldown`), so a rotated-in key works on the caller's
//! retry and no request ever waits on the identity provider.
//!
//! A token that verified is remembered, by its exact text, until it expires
//! (`exp` plus the leeway) but never longer than a minute (`VERIFIED_FOR`): a caller
//! sends the same token with every request, and checking its signature (an
//! RSA verification for RS256) and decoding its claims each time was the
//! largest piece of the gateway's own work per request. Refused tokens are
//! never remembered, so garbage cannot fill the memory.
//!
//! One concept per file: the token checks in `jwt.rs`, the key sets in
//! `jwks.rs`, the memory of verified tokens in `verified.rs`, development
//! tokens (minted by `commerce-mesh token` and
//! [`Credential::development`](crate::credential::Credential::development))
//! in `development.rs`, and the 401/403 answers in `challenge.rs`.

mod challenge;
mod development;
mod jwks;
mod jwt;
#[cfg(test)]
mod test_support;
mod verified;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use self::challenge::{Forbidden, Unauthenticated};
use self::development::MIN_SECRET_BYTES;
pub use self::development::{DevelopmentClaims, MintError, mint_development_token};
pub use self::jwks::JwksError;
use self::jwks::{Jwks, read_jwks_file, start_remote_jwks};
use self::jwt::{TokenHeader, bearer_token, caller_from, validation, verified_claims};
use self::verified::{VERIFIED_FOR, VerifiedTokens};
/// The secret type of the auth settings, kept at its old path: it is [`crate::secret::Secret`].
pub use crate::secret::Secret;

/// More clock skew than this is a misconfiguration, not skew.
const MAX_LEEWAY: Duration = Duration::from_secs(60 * 60);
/// Keeps the refresh timer's arithmetic far from overflow.
const MAX_JWKS_REFRESH: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Who is calling, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub subject: String,
    /// The token's scopes.
    pub scopes: BTreeSet<String>,
}

impl Caller {
    /// Succeeds when the caller holds every one of `scopes`; else names the missing ones.
    pub fn require(&self, scopes: &[String]) -> Result<(), Forbidden> {
        let mut missing: Vec<String> = Vec::new();
        for scope in scopes {
            if !self.scopes.contains(scope) && !missing.contains(scope) {
                missing.push(scope.clone());
            }
        }
        if missing.is_empty() { Ok(()) } else { Err(Forbidden { missing }) }
    }
}

/// Where token keys come from and how tokens are checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The audience every token's `aud` must contain.
    pub audience: String,
    /// A JWKS JSON file with the RS256 keys that sign tokens; read once at start.
    pub jwks_file: Option<PathBuf>,
    /// A URL serving the JWKS; fetched at start, then every `jwks_refresh`.
    pub jwks_url: Option<String>,
    /// How often the JWKS URL is fetched again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Least time between two extra fetches of the JWKS URL caused by tokens naming an unknown key id.
    #[serde(with = "humantime_serde")]
    pub jwks_refetch_cooldown: Duration,
    /// HS256 secret (at least 32 bytes) that development tokens are signed with; unset in production.
    pub development_secret: Option<Secret>,
    /// Accept development tokens beside a JWKS. Off: a JWKS and a
    /// development secret together are refused at start, since anyone who
    /// reads the secret could mint tokens production would accept.
    pub allow_development_tokens: bool,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The mesh's own components calling each other ([`PeerConfig`]).
    pub peers: PeerConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "commerce-mesh".into(),
            audience: "commerce-mesh".into(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(5 * 60),
            jwks_refetch_cooldown: Duration::from_secs(30),
            development_secret: None,
            allow_development_tokens: false,
            leeway: Duration::from_secs(30),
            peers: PeerConfig::default(),
        }
    }
}

/// How components prove who they are to each other: on Kubernetes, a
/// projected service-account token (subject
/// `system:serviceaccount:<namespace>:<component>`) verified against the
/// cluster's JWKS; elsewhere, a token of the same shape signed with the
/// development secret, when development tokens are accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerConfig {
    /// The `iss` of peer tokens: the cluster's service-account issuer.
    pub issuer: String,
    /// The audience peer tokens are minted for (the projected volume's `audience`).
    pub audience: String,
    /// The cluster's service-account JWKS, as a file.
    pub jwks_file: Option<PathBuf>,
    /// The cluster's service-account JWKS, as a URL (its public OIDC issuer's `jwks_uri`).
    pub jwks_url: Option<String>,
    /// The namespace peers run in; unset: any (development).
    pub namespace: Option<String>,
    /// This component's own token (the projected volume's file), read again
    /// as the kubelet rotates it; unset: minted with the development secret.
    pub token_file: Option<PathBuf>,
    /// A secret for the components' development identities only, when
    /// callers' development tokens are not accepted (`up` beside a JWKS).
    /// Set by the process, never configured.
    #[serde(skip)]
    pub development_secret: Option<Secret>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            audience: "commerce-mesh".into(),
            jwks_file: None,
            jwks_url: None,
            namespace: None,
            token_file: None,
            development_secret: None,
        }
    }
}

impl AuthConfig {
    /// Whether tokens signed with the development secret are accepted: a
    /// secret is set, and there is no JWKS or they are explicitly allowed.
    pub fn accepts_development_tokens(&self) -> bool {
        self.development_secret.is_some() && (!self.has_jwks() || self.allow_development_tokens)
    }

    /// The secret peers' development identities are minted and verified
    /// with: the peers' own, else the callers' when those are accepted.
    pub fn peer_development_secret(&self) -> Option<Secret> {
        self.peers
            .development_secret
            .clone()
            .or_else(|| self.development_secret.clone().filter(|_| self.accepts_development_tokens()))
    }

    /// True when some key source is set: a JWKS file or URL (empty counts as
    /// unset), or a development secret.
    pub fn has_key_source(&self) -> bool {
        self.development_secret.is_some() || self.has_jwks()
    }

    fn has_jwks(&self) -> bool {
        self.jwks_file.as_ref().is_some_and(|path| !path.as_os_str().is_empty())
            || self.jwks_url.as_ref().is_some_and(|url| !url.is_empty())
    }

    /// What verifies peer tokens: the peers' issuer, audience and JWKS, and
    /// the development secret when development tokens are accepted. None
    /// when neither is there (no peer is then accepted).
    pub fn peer_verification(&self) -> Option<AuthConfig> {
        let peers = &self.peers;
        let config = AuthConfig {
            issuer: peers.issuer.clone(),
            audience: peers.audience.clone(),
            jwks_file: peers.jwks_file.clone(),
            jwks_url: peers.jwks_url.clone(),
            development_secret: self.peer_development_secret(),
            allow_development_tokens: true,
            peers: PeerConfig::default(),
            ..self.clone()
        };
        config.has_key_source().then_some(config)
    }
}

/// Why the authenticator could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// Neither a JWKS nor a development secret is configured.
    #[error("auth: no token key is configured; set jwks_file, jwks_url or development_secret")]
    NoKeySource,
    /// Both JWKS sources are configured.
    #[error("auth: set jwks_file or jwks_url, not both")]
    TwoJwksSources,
    /// A setting is out of range.
    #[error("auth.{setting}: {problem}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The development secret is too short to be safe.
    #[error("auth.development_secret: must be at least {MIN_SECRET_BYTES} bytes, is {length}")]
    SecretTooShort {
        /// The secret's length in bytes.
        length: usize,
    },
    /// The JWKS file cannot be read.
    #[error("auth.jwks_file {}: {source}", path.display())]
    ReadJwksFile {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JWKS (from the file or the URL) is unusable.
    #[error("auth: JWKS from {origin}: {source}")]
    Jwks {
        /// The file path or URL.
        origin: String,
        /// What is wrong.
        source: JwksError,
    },
    /// A JWKS and a development secret, without `allow_development_tokens`.
    #[error(
        "auth: a JWKS and a development secret are both set; unset development_secret \
         (production), or set allow_development_tokens = true to accept both"
    )]
    DevelopmentBesideJwks,
    /// A JWKS URL needs a tokio runtime to refresh its keys in.
    #[error("auth.jwks_url: the authenticator must be created inside a tokio runtime")]
    NoRuntime,
}

/// Checks bearer tokens. Cheap to clone; the clones share keys and the JWKS
/// refresher, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    jwks: Option<Jwks>,
    development_key: Option<DecodingKey>,
    rs256: Validation,
    hs256: Validation,
    /// Tokens that verified, by their text, with what they said.
    verified: VerifiedTokens,
    /// Clock skew tolerated on `exp`, in seconds (as the validations have it).
    leeway: u64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwks", &self.inner.jwks)
            .field("development_secret", &self.inner.development_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Fails when no key source is configured, the JWKS file/URL cannot be read at start,
    /// or the secret is shorter than 32 bytes.
    pub async fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        check_settings(config)?;
        if config.development_secret.is_some() && config.has_jwks() {
            if !config.allow_development_tokens {
                return Err(AuthSetupError::DevelopmentBesideJwks);
            }
            tracing::warn!(
                issuer = %config.issuer,
                "development tokens are accepted beside the JWKS (allow_development_tokens): \
                 anyone with the development secret can mint tokens"
            );
        }
        let development_key = match &config.development_secret {
            Some(secret) if secret.expose().len() < MIN_SECRET_BYTES => {
                return Err(AuthSetupError::SecretTooShort { length: secret.expose().len() });
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.expose().as_bytes())),
            None => None,
        };
        let jwks_file = config.jwks_file.as_deref().filter(|path| !path.as_os_str().is_empty());
        let jwks_url = config.jwks_url.as_deref().filter(|url| !url.is_empty());
        let jwks = match (jwks_file, jwks_url) {
            (Some(_), Some(_)) => return Err(AuthSetupError::TwoJwksSources),
            (Some(path), None) => {
                Some(Jwks::File { path: path.to_owned(), keys: Arc::new(read_jwks_file(path).await?) })
            }
            (None, Some(url)) => Some(start_remote_jwks(url, config).await?),
            (None, None) => None,
        };
        if jwks.is_none() && development_key.is_none() {
            return Err(AuthSetupError::NoKeySource);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                jwks,
                development_key,
                rs256: validation(Algorithm::RS256, config),
                hs256: validation(Algorithm::HS256, config),
                verified: VerifiedTokens::default(),
                leeway: config.leeway.as_secs(),
            }),
        })
    }

    /// Verifies the `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Caller, Unauthenticated> {
        self.verify(authorization)
    }

    /// [`Authenticator::authenticate`], which never waits: keys are at hand
    /// (a JWKS URL is fetched in the background), so a tower layer can call it.
    pub fn verify(&self, authorization: Option<&HeaderValue>) -> Result<Caller, Unauthenticated> {
        let token = bearer_token(authorization)?;
        if let Some(caller) = self.inner.verified.get(token, Instant::now()) {
            return Ok(caller);
        }
        let header = TokenHeader::of(token)?;
        if header.crit.is_some() {
            return Err(Unauthenticated::invalid_token(
                "the token's header has critical extensions (crit); none are supported",
            ));
        }
        let claims = match header.alg.as_str() {
            "RS256" => self.verify_rs256(token, header.kid.as_deref())?,
            "HS256" => self.verify_hs256(token)?,
            "none" => return Err(Unauthenticated::invalid_token("unsigned tokens (alg none) are not accepted")),
            _ => return Err(Unauthenticated::invalid_token("the token's signing algorithm is not accepted")),
        };
        let caller = caller_from(&claims)?;
        // Remembered until the moment the validation would refuse it as
        // expired (now ≥ exp + leeway), at most VERIFIED_FOR.
        if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
            let left = exp.saturating_add(self.inner.leeway).saturating_sub(jsonwebtoken::get_current_timestamp());
            let trusted_for = Duration::from_secs(left).min(VERIFIED_FOR);
            if !trusted_for.is_zero() {
                self.inner.verified.insert(token, &caller, Instant::now() + trusted_for);
            }
        }
        Ok(caller)
    }

    fn verify_rs256(&self, token: &str, kid: Option<&str>) -> Result<Map<String, Value>, Unauthenticated> {
        let Some(jwks) = &self.inner.jwks else {
            return Err(Unauthenticated::invalid_token("RS256 tokens are not accepted: no JWKS is configured"));
        };
        let keys = jwks.keys_for(kid);
        let key = keys.find(kid).ok_or_else(|| {
            Unauthenticated::invalid_token(match kid {
                Some(_) => "the token's key id (kid) names no known signing key",
                None => "the token names no key id (kid) and there is more than one signing key",
            })
        })?;
        verified_claims(token, key, &self.inner.rs256)
    }

    fn verify_hs256(&self, token: &str) -> Result<Map<String, Value>, Unauthenticated> {
        // Only the development secret ever verifies HS256: JWKS keys are RSA
        // keys and never become HMAC secrets.
        let key = self.inner.development_key.as_ref().ok_or_else(|| {
            Unauthenticated::invalid_token("HS256 tokens are not accepted: no development secret is configured")
        })?;
        verified_claims(token, key, &self.inner.hs256)
    }
}

/// Refuses settings out of range before anything is read or fetched.
fn check_settings(config: &AuthConfig) -> Result<(), AuthSetupError> {
    let setting = |setting, problem: &str| Err(AuthSetupError::Setting { setting, problem: problem.into() });
    if config.issuer.is_empty() {
        return setting("issuer", "must not be empty");
    }
    if config.audience.is_empty() {
        return setting("audience", "must not be empty");
    }
    if config.leeway > MAX_LEEWAY {
        return setting("leeway", "must be at most 1h");
    }
    if config.jwks_refresh.is_zero() || config.jwks_refresh > MAX_JWKS_REFRESH {
        return setting("jwks_refresh", "must be more than zero and at most 7days");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use super::*;

    #[test]
    fn require_demands_every_scope_and_names_each_missing_one_once() {
        let caller = Caller { subject: "s".into(), scopes: ["a".to_string(), "b".to_string()].into() };
        assert_eq!(caller.require(&[]), Ok(()));
        assert_eq!(caller.require(&["a".into(), "b".into()]), Ok(()));
        let missing = caller.require(&["a".into(), "c".into(), "d".into(), "c".into()]).unwrap_err().missing;
        assert_eq!(missing, ["c", "d"]);
    }

    #[test]
    fn secrets_never_print_but_serialize_as_the_plain_string() {
        let secret = Secret::new("hunter2-hunter2".into());
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(secret.to_string(), "[redacted]");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"hunter2-hunter2\"");
        let config = AuthConfig { development_secret: Some(secret), ..AuthConfig::default() };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn config_reads_human_durations_and_defaults_the_rest() {
        let config: AuthConfig = serde_json::from_value(serde_json::json!({
            "jwks_url": "http://idp/jwks", "jwks_refresh": "1m", "leeway": "10s",
            "development_secret": "from the environment, 32 bytes long",
        }))
        .unwrap();
        assert_eq!(config.jwks_refresh, Duration::from_secs(60));
        assert_eq!(config.leeway, Duration::from_secs(10));
        assert_eq!(config.jwks_refetch_cooldown, Duration::from_secs(30));
        assert_eq!(config.issuer, "commerce-mesh");
        assert_eq!(config.development_secret.unwrap().expose(), "from the environment, 32 bytes long");
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let config = AuthConfig { development_secret: Some(Secret::new("x".repeat(31))), ..AuthConfig::default() };
        let error = runtime.block_on(Authenticator::new(&config)).unwrap_err();
        assert!(matches!(error, AuthSetupError::SecretTooShort { length: 31 }), "{error}");
        assert!(!error.to_string().contains("xxx"));
    }
}
