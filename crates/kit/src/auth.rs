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
//! (`exp` plus the leeway) but never longer than [`VERIFIED_FOR`]: a caller
//! sends the same token with every request, and checking its signature (an
//! RSA verification for RS256) and decoding its claims each time was the
//! largest piece of the gateway's own work per request. Refused tokens are
//! never remembered, so garbage cannot fill the memory.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::MissedTickBehavior;

/// The challenge for a request without a bearer token (RFC 6750 §3).
const BARE_CHALLENGE: &str = "Bearer realm=\"commerce-mesh\"";
/// HS256 keys shorter than the hash output are brute-forceable (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;
/// Far above any real token; bounds the work an unauthenticated caller can cause.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Far above any real key set; bounds what a misbehaving JWKS endpoint can make us hold.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// More clock skew than this is a misconfiguration, not skew.
const MAX_LEEWAY: Duration = Duration::from_secs(60 * 60);
/// Keeps the refresh timer's arithmetic far from overflow.
const MAX_JWKS_REFRESH: Duration = Duration::from_secs(7 * 24 * 60 * 60);
const JWKS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT: &str = concat!("commerce-mesh/", env!("CARGO_PKG_VERSION"));
/// The claims every token must carry; `nbf` is checked when present.
const REQUIRED_CLAIMS: [&str; 4] = ["exp", "iss", "aud", "sub"];
/// Verified tokens remembered at most; past it, the least likely to be
/// used again are forgotten (and verified again when they come back).
const VERIFIED_CAPACITY: u64 = 8192;
/// The longest a verified token is trusted without checking its signature
/// again: a key taken out of the JWKS stops admitting its tokens within this.
const VERIFIED_FOR: Duration = Duration::from_secs(60);

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

/// A secret string that never prints: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `secret`.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
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

/// Why a JWKS could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The HTTP request failed.
    #[error("request failed: {0}")]
    Request(#[source] reqwest::Error),
    /// The server answered with something other than success.
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    /// The document is larger than any real key set.
    #[error("larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The document is not a JWKS.
    #[error("not a JWKS: {0}")]
    Json(#[source] serde_json::Error),
    /// The JWKS holds no RSA key usable for RS256 signatures.
    #[error("holds no RS256 signing key")]
    NoUsableKey,
}

/// Why a request is not authenticated; `reason` is safe to show the caller
/// (it never contains the token or a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unauthenticated {
    /// What is wrong, for the caller.
    pub reason: String,
    /// Whether the request carried a bearer token at all (RFC 6750 §3.1 then wants an error code).
    token_presented: bool,
}

impl Unauthenticated {
    /// The request carried no bearer token (no `Authorization` header, or another scheme).
    pub fn no_token(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), token_presented: false }
    }

    /// The request carried a bearer token that is not acceptable.
    pub fn invalid_token(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), token_presented: true }
    }

    /// Whether the request carried a bearer token.
    pub fn token_presented(&self) -> bool {
        self.token_presented
    }

    /// The `WWW-Authenticate` challenge for the 401 response.
    pub fn www_authenticate(&self) -> HeaderValue {
        if !self.token_presented {
            return HeaderValue::from_static(BARE_CHALLENGE);
        }
        challenge(format!(
            "{BARE_CHALLENGE}, error=\"invalid_token\", error_description=\"{}\"",
            auth_param_text(&self.reason)
        ))
    }
}

/// The caller lacks scopes the RPC requires.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the token lacks the scopes: {}", .missing.join(" "))]
pub struct Forbidden {
    /// The required scopes the token does not grant.
    pub missing: Vec<String>,
}

impl Forbidden {
    /// The `WWW-Authenticate` challenge for the 403 response.
    pub fn www_authenticate(&self) -> HeaderValue {
        challenge(format!(
            "{BARE_CHALLENGE}, error=\"insufficient_scope\", scope=\"{}\"",
            auth_param_text(&self.missing.join(" "))
        ))
    }
}

/// `text` fit for the inside of a quoted auth-param: RFC 6750 §3 allows neither
/// `"` nor `\` there, and a header value only printable ASCII.
fn auth_param_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

fn challenge(text: String) -> HeaderValue {
    // auth_param_text leaves only printable ASCII, so this cannot fail; the
    // fallback keeps the 401/403 well-formed regardless.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(BARE_CHALLENGE))
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

enum Jwks {
    File { path: PathBuf, keys: Arc<KeySet> },
    Url { remote: Arc<RemoteJwks>, _refresher: AbortOnDrop },
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, .. } => f.debug_tuple("File").field(path).finish(),
            Self::Url { remote, .. } => f.debug_tuple("Url").field(&remote.url).finish(),
        }
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwks", &self.inner.jwks)
            .field("development_secret", &self.inner.development_key.is_some())
            .finish_non_exhaustive()
    }
}

/// Aborts the JWKS refresher when the last [`Authenticator`] clone goes.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AuthConfig {
    /// True when some key source is set: a JWKS file or URL (empty counts as
    /// unset), or a development secret.
    pub fn has_key_source(&self) -> bool {
        self.development_secret.is_some() || self.has_jwks()
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
        let keys = match &self.inner.jwks {
            None => return Err(Unauthenticated::invalid_token("RS256 tokens are not accepted: no JWKS is configured")),
            Some(Jwks::File { keys, .. }) => Arc::clone(keys),
            Some(Jwks::Url { remote, .. }) => {
                let keys = remote.current();
                if let Some(kid) = kid
                    && !keys.by_kid.contains_key(kid)
                {
                    // Refused now; a rotated-in key is there for the caller's retry.
                    RemoteJwks::refetch_in_background(remote);
                }
                keys
            }
        };
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

/// Tokens that verified, by their exact text: what they said, and until when
/// it may be believed without verifying again. At most [`VERIFIED_CAPACITY`]
/// are held (moka evicts those least likely to be used again), and each
/// leaves when its time is over.
struct VerifiedTokens {
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
    fn get(&self, token: &str, now: Instant) -> Option<Caller> {
        self.entries.get(token).filter(|verified| now < verified.until).map(|verified| verified.caller)
    }

    /// Remembers `token` as `caller` until `until`.
    fn insert(&self, token: &str, caller: &Caller, until: Instant) {
        self.entries.insert(token.into(), Verified { caller: caller.clone(), until });
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

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

/// One validation per algorithm, each accepting exactly that algorithm.
fn validation(algorithm: Algorithm, config: &AuthConfig) -> Validation {
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
fn bearer_token(authorization: Option<&HeaderValue>) -> Result<&str, Unauthenticated> {
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
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl TokenHeader {
    /// Read before verification (it picks the verifier), so nothing in it is trusted.
    fn of(token: &str) -> Result<Self, Unauthenticated> {
        let malformed =
            || Unauthenticated::invalid_token("the token's header is not base64url-encoded JSON with an alg");
        let encoded = token.split('.').next().unwrap_or_default();
        let json = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
        serde_json::from_slice(&json).map_err(|_| malformed())
    }
}

fn verified_claims(
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

fn caller_from(claims: &Map<String, Value>) -> Result<Caller, Unauthenticated> {
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

/// The RS256 keys of a JWKS.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    /// The key for tokens without a kid: only when the set has exactly one.
    sole: Option<DecodingKey>,
}

impl KeySet {
    fn parse(json: &[u8]) -> Result<Self, JwksError> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let raw: RawSet = serde_json::from_slice(json).map_err(JwksError::Json)?;
        // A set may also hold keys for other uses or algorithms (encryption,
        // EC): those are skipped, not an error.
        let usable: Vec<(Option<String>, DecodingKey)> = raw
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| rs256_key(&jwk).map(|key| (jwk.common.key_id, key)))
            .collect();
        let sole = match usable.as_slice() {
            [] => return Err(JwksError::NoUsableKey),
            [(_, key)] => Some(key.clone()),
            _ => None,
        };
        let by_kid = usable.into_iter().filter_map(|(kid, key)| Some((kid?, key))).collect();
        Ok(Self { by_kid, sole })
    }

    fn find(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => self.sole.as_ref(),
        }
    }
}

fn rs256_key(jwk: &Jwk) -> Option<DecodingKey> {
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        return None;
    };
    let signs = matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature));
    let rs256 = matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256));
    if !(signs && rs256) {
        return None;
    }
    DecodingKey::from_rsa_components(&rsa.n, &rsa.e).ok()
}

async fn read_jwks_file(path: &Path) -> Result<KeySet, AuthSetupError> {
    let json =
        tokio::fs::read(path).await.map_err(|source| AuthSetupError::ReadJwksFile { path: path.to_owned(), source })?;
    KeySet::parse(&json).map_err(|source| AuthSetupError::Jwks { origin: path.display().to_string(), source })
}

/// A JWKS served over HTTP, cached, and refreshed.
struct RemoteJwks {
    http: reqwest::Client,
    url: String,
    keys: RwLock<Arc<KeySet>>,
    /// When a token naming an unknown key id last caused a fetch; the lock is
    /// held only to read and set it, never across a fetch.
    last_refetch: Mutex<Option<Instant>>,
    /// A fetch caused by an unknown key id is running.
    refetching: AtomicBool,
    refetch_cooldown: Duration,
}

impl RemoteJwks {
    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the keys with freshly fetched ones; on failure the old keys
    /// stay. No lock is held while fetching.
    async fn refresh(&self) -> Result<(), JwksError> {
        let keys = fetch_jwks(&self.http, &self.url).await?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    /// A key rotation shows as a token naming a kid we do not know yet: fetch
    /// the set again in the background, one fetch at a time and at most once
    /// per cooldown, so bogus kids can neither flood the JWKS server nor make
    /// any request wait for it.
    fn refetch_in_background(remote: &Arc<Self>) {
        if remote.refetching.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut last_refetch = remote.last_refetch.lock().unwrap_or_else(PoisonError::into_inner);
            if last_refetch.is_some_and(|at| at.elapsed() < remote.refetch_cooldown) {
                remote.refetching.store(false, Ordering::Release);
                return;
            }
            *last_refetch = Some(Instant::now());
        }
        let refetch = Refetching(Arc::clone(remote));
        tokio::spawn(async move {
            let remote = &refetch.0;
            if let Err(error) = remote.refresh().await {
                tracing::warn!(url = %remote.url, %error, "JWKS refetch for an unknown key id failed; keeping the old keys");
            }
        });
    }
}

/// Marks a background refetch as running until dropped, however its task ends.
struct Refetching(Arc<RemoteJwks>);

impl Drop for Refetching {
    fn drop(&mut self) {
        self.0.refetching.store(false, Ordering::Release);
    }
}

async fn start_remote_jwks(url: &str, config: &AuthConfig) -> Result<Jwks, AuthSetupError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| AuthSetupError::NoRuntime)?;
    let http = reqwest::Client::builder()
        // The identity provider is reached directly: an ambient HTTP(S)_PROXY must not reroute key fetches.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(JWKS_CONNECT_TIMEOUT)
        .timeout(JWKS_REQUEST_TIMEOUT)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|error| AuthSetupError::Setting { setting: "jwks_url", problem: error.to_string() })?;
    let keys =
        fetch_jwks(&http, url).await.map_err(|source| AuthSetupError::Jwks { origin: url.to_owned(), source })?;
    let remote = Arc::new(RemoteJwks {
        http,
        url: url.to_owned(),
        keys: RwLock::new(Arc::new(keys)),
        last_refetch: Mutex::new(None),
        refetching: AtomicBool::new(false),
        refetch_cooldown: config.jwks_refetch_cooldown,
    });
    let refresher = runtime.spawn(refresh_periodically(Arc::clone(&remote), config.jwks_refresh));
    Ok(Jwks::Url { remote, _refresher: AbortOnDrop(refresher.abort_handle()) })
}

async fn refresh_periodically(remote: Arc<RemoteJwks>, period: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = remote.refresh().await {
            tracing::warn!(url = %remote.url, %error, "JWKS refresh failed; keeping the old keys");
        }
    }
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<KeySet, JwksError> {
    let mut response = http.get(url).send().await.map_err(JwksError::Request)?;
    let status = response.status();
    if !status.is_success() {
        return Err(JwksError::Status(status));
    }
    if response.content_length().is_some_and(|length| length > MAX_JWKS_BYTES as u64) {
        return Err(JwksError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(JwksError::Request)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::parse(&body)
}

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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    use super::*;

    const JWKS_KEY1: &str = include_str!("../tests/keys/jwks-key1.json");
    const JWKS_BOTH: &str = include_str!("../tests/keys/jwks-both.json");
    const KEY1: &[u8] = include_bytes!("../tests/keys/key1.pem");
    const DEVELOPMENT_SECRET: &str = "a development secret of 32+ bytes";

    fn jwks_response(json: &str) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_raw(json.as_bytes().to_vec(), "application/json")
    }

    fn remote_of(authenticator: &Authenticator) -> Arc<RemoteJwks> {
        match &authenticator.inner.jwks {
            Some(Jwks::Url { remote, .. }) => Arc::clone(remote),
            other => panic!("expected a JWKS URL, got {other:?}"),
        }
    }

    fn url_config(server: &MockServer) -> AuthConfig {
        AuthConfig { jwks_url: Some(format!("{}/jwks", server.uri())), ..AuthConfig::default() }
    }

    fn development_authenticator() -> (tokio::runtime::Runtime, Authenticator) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config =
            AuthConfig { development_secret: Some(Secret::new(DEVELOPMENT_SECRET.into())), ..AuthConfig::default() };
        let authenticator = runtime.block_on(Authenticator::new(&config)).unwrap();
        (runtime, authenticator)
    }

    fn key1_token(claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-key-1".into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(KEY1).unwrap()).unwrap()
    }

    fn valid_claims() -> Value {
        serde_json::json!({
            "iss": "commerce-mesh", "aud": "commerce-mesh", "sub": "learner-1",
            "exp": jsonwebtoken::get_current_timestamp() + 600,
        })
    }

    #[test]
    fn a_missing_token_is_challenged_without_an_error_code() {
        let missing = Unauthenticated::no_token("no bearer token");
        assert!(!missing.token_presented());
        assert_eq!(missing.www_authenticate(), "Bearer realm=\"commerce-mesh\"");
    }

    #[test]
    fn an_invalid_token_is_challenged_with_invalid_token_and_the_reason() {
        let invalid = Unauthenticated::invalid_token("the token has expired");
        assert!(invalid.token_presented());
        assert_eq!(
            invalid.www_authenticate(),
            "Bearer realm=\"commerce-mesh\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
    }

    #[test]
    fn the_reason_is_made_quote_safe_in_the_challenge() {
        let invalid = Unauthenticated::invalid_token("say \"hi\" \\ to\r\nmé");
        assert_eq!(
            invalid.www_authenticate(),
            "Bearer realm=\"commerce-mesh\", error=\"invalid_token\", error_description=\"say 'hi' / to??m?\""
        );
    }

    #[test]
    fn missing_scopes_are_challenged_with_insufficient_scope() {
        let forbidden = Forbidden { missing: vec!["orders.read".into(), "orders.write".into()] };
        assert_eq!(
            forbidden.www_authenticate(),
            "Bearer realm=\"commerce-mesh\", error=\"insufficient_scope\", scope=\"orders.read orders.write\""
        );
        assert_eq!(forbidden.to_string(), "the token lacks the scopes: orders.read orders.write");
    }

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
    fn a_key_set_keeps_only_rs256_signing_keys() {
        let rsa: Value = serde_json::from_str::<Value>(JWKS_KEY1).unwrap()["keys"][0].clone();
        let with = |field: &str, value: Value| {
            let mut key = rsa.clone();
            key[field] = value;
            key
        };
        let set = serde_json::json!({ "keys": [
            with("use", "enc".into()),
            with("alg", "RS512".into()),
            { "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "ec" },
            { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" },
            "not even an object",
            with("kid", "signing".into()),
        ]});
        let keys = KeySet::parse(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.by_kid.keys().collect::<Vec<_>>(), ["signing"]);
        assert!(keys.find(None).is_some(), "the only usable key also serves tokens without a kid");

        let no_usable = serde_json::json!({ "keys": [with("use", "enc".into())] });
        assert!(matches!(KeySet::parse(no_usable.to_string().as_bytes()), Err(JwksError::NoUsableKey)));
        assert!(matches!(KeySet::parse(b"[]"), Err(JwksError::Json(_))));
        assert!(KeySet::parse(JWKS_BOTH.as_bytes()).unwrap().find(None).is_none());
    }

    #[tokio::test]
    async fn the_background_refresh_picks_up_new_keys() {
        let server = MockServer::start().await;
        let (fetched, mut fetches) = tokio::sync::mpsc::unbounded_channel();
        let count = AtomicUsize::new(0);
        let responder = move |_: &Request| {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = fetched.send(n);
            jwks_response(if n == 1 { JWKS_KEY1 } else { JWKS_BOTH })
        };
        Mock::given(method("GET")).and(path("/jwks")).respond_with(responder).mount(&server).await;
        let config = AuthConfig {
            jwks_refresh: Duration::from_millis(10),
            jwks_refetch_cooldown: Duration::from_secs(3600),
            ..url_config(&server)
        };
        let authenticator = Authenticator::new(&config).await.unwrap();
        let remote = remote_of(&authenticator);
        assert!(!remote.current().by_kid.contains_key("test-key-2"));

        // The refresher fetches one at a time: when the third request arrives,
        // the second answer (both keys) has been stored.
        while fetches.recv().await.unwrap() < 3 {}
        assert!(remote.current().by_kid.contains_key("test-key-2"));
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_old_keys() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(jwks_response(JWKS_KEY1))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET")).and(path("/jwks")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
        let authenticator = Authenticator::new(&url_config(&server)).await.unwrap();

        let error = remote_of(&authenticator).refresh().await.unwrap_err();
        assert!(matches!(error, JwksError::Status(StatusCode::SERVICE_UNAVAILABLE)), "{error}");
        let token = key1_token(&valid_claims());
        let caller = authenticator.authenticate(Some(&format!("Bearer {token}").parse().unwrap())).await.unwrap();
        assert_eq!(caller.subject, "learner-1");
    }

    #[tokio::test]
    async fn the_refresher_stops_when_the_last_clone_is_dropped() {
        let server = MockServer::start().await;
        Mock::given(method("GET")).and(path("/jwks")).respond_with(jwks_response(JWKS_KEY1)).mount(&server).await;
        let authenticator = Authenticator::new(&url_config(&server)).await.unwrap();
        let clone = authenticator.clone();
        let remote = Arc::downgrade(&remote_of(&authenticator));
        let settle = || async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        };

        drop(authenticator);
        settle().await;
        // Held by the surviving clone and by the refresher task, which still runs.
        assert_eq!(remote.strong_count(), 2);

        drop(clone);
        settle().await;
        assert_eq!(remote.strong_count(), 0, "the refresher task was aborted and released the key cache");
    }

    fn development_token(secret: &str, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
            .unwrap()
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::try_from(format!("Bearer {token}")).unwrap()
    }

    fn scoped_claims() -> Value {
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

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let config = AuthConfig { development_secret: Some(Secret::new("x".repeat(31))), ..AuthConfig::default() };
        let error = runtime.block_on(Authenticator::new(&config)).unwrap_err();
        assert!(matches!(error, AuthSetupError::SecretTooShort { length: 31 }), "{error}");
        assert!(!error.to_string().contains("xxx"));
    }

    proptest! {
        #[test]
        fn every_challenge_is_a_valid_header_with_three_quoted_params(reason in ".*", scopes in proptest::collection::vec(".*", 0..4)) {
            let challenges = [
                Unauthenticated::invalid_token(reason).www_authenticate(),
                Forbidden { missing: scopes }.www_authenticate(),
            ];
            for challenge in challenges {
                let text = challenge.to_str().expect("visible ASCII");
                prop_assert!(text.starts_with("Bearer realm=\"commerce-mesh\", error=\""));
                prop_assert!(text.ends_with('"'));
                prop_assert_eq!(text.matches('"').count(), 6);
                prop_assert!(!text.contains('\\'));
            }
        }

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
