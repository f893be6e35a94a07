//! JWKS fetching: the RS256 keys of a JSON Web Key Set, read once from a
//! file or fetched from a URL and refreshed in the background, and fetched
//! again (one fetch at a time, at most once per cooldown) when a token names
//! a key id the set does not hold.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::MissedTickBehavior;

use super::{AuthConfig, AuthSetupError};

/// Far above any real key set; bounds what a misbehaving JWKS endpoint can make us hold.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const JWKS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT: &str = concat!("commerce-mesh/", env!("CARGO_PKG_VERSION"));

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

/// Where the authenticator's RS256 keys come from.
pub(super) enum Jwks {
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

impl Jwks {
    /// The keys to verify a token naming `kid` with, as they are now. A kid
    /// a URL's set does not hold is refused now; the set is fetched again in
    /// the background so a rotated-in key is there for the caller's retry.
    pub(super) fn keys_for(&self, kid: Option<&str>) -> Arc<KeySet> {
        match self {
            Self::File { keys, .. } => Arc::clone(keys),
            Self::Url { remote, .. } => {
                let keys = remote.current();
                if let Some(kid) = kid
                    && !keys.by_kid.contains_key(kid)
                {
                    RemoteJwks::refetch_in_background(remote);
                }
                keys
            }
        }
    }
}

/// Aborts the JWKS refresher when the last [`Authenticator`](super::Authenticator) clone goes.
pub(super) struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The RS256 keys of a JWKS.
#[derive(Default)]
pub(super) struct KeySet {
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

    /// The key that signed a token naming `kid` (or none: the sole key).
    pub(super) fn find(&self, kid: Option<&str>) -> Option<&DecodingKey> {
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

pub(super) async fn read_jwks_file(path: &Path) -> Result<KeySet, AuthSetupError> {
    let json =
        tokio::fs::read(path).await.map_err(|source| AuthSetupError::ReadJwksFile { path: path.to_owned(), source })?;
    KeySet::parse(&json).map_err(|source| AuthSetupError::Jwks { origin: path.display().to_string(), source })
}

/// A JWKS served over HTTP, cached, and refreshed.
pub(super) struct RemoteJwks {
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

pub(super) async fn start_remote_jwks(url: &str, config: &AuthConfig) -> Result<Jwks, AuthSetupError> {
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

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use std::sync::atomic::AtomicUsize;

    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    use super::*;
    use crate::auth::Authenticator;
    use crate::auth::test_support::valid_claims;

    const JWKS_KEY1: &str = include_str!("../../tests/keys/jwks-key1.json");
    const JWKS_BOTH: &str = include_str!("../../tests/keys/jwks-both.json");
    const KEY1: &[u8] = include_bytes!("../../tests/keys/key1.pem");

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

    fn key1_token(claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-key-1".into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(KEY1).unwrap()).unwrap()
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
}
