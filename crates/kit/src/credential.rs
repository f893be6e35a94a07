//! What a client presents as `authorization` on its gRPC calls
//! ([`crate::client::channel_from`], [`crate::client::channel_as`]).
//!
//! A component calling another presents its own identity
//! ([`Credential::of_component`]): on Kubernetes the projected
//! service-account token the kubelet keeps fresh in a file, read again every
//! [`REREAD_EVERY`]; elsewhere a token of the same shape minted with the
//! development secret and minted again before it expires.
//!
//! ```
//! use kit::credential::Credential;
//!
//! let credential = Credential::bearer("a.b.c").expect("a header value");
//! assert_eq!(credential.header().expect("a token").to_str().unwrap(), "Bearer a.b.c");
//! assert!(Credential::none().header().is_none());
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::auth::{AuthConfig, DevelopmentClaims, MintError, mint_development_token};
use crate::secret::Secret;

/// How often a token file is read again (the kubelet rotates projected
/// tokens at 80 % of their lifetime, an hour at least).
pub const REREAD_EVERY: Duration = Duration::from_secs(60);
/// How long a minted development identity lives; it is minted again at half.
const MINTED_FOR: Duration = Duration::from_secs(60 * 60);
/// The namespace of development identities (no cluster to take it from).
pub const DEVELOPMENT_NAMESPACE: &str = "development";

/// A token to present, or none. Cheap to clone.
#[derive(Clone, Default)]
pub struct Credential(Option<Arc<Source>>);

enum Source {
    Fixed(HeaderValue),
    File { path: PathBuf, current: Mutex<Option<(Instant, HeaderValue)>> },
    Minted { secret: Secret, claims: DevelopmentClaims, current: Mutex<Option<(Instant, HeaderValue)>> },
}

/// The token is not fit for a header (control characters, say).
#[derive(Debug, thiserror::Error)]
#[error("the token cannot be sent as an authorization header")]
pub struct InvalidToken;

impl Credential {
    /// Presents nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// Presents `token` as `Bearer <token>`.
    pub fn bearer(token: &str) -> Result<Self, InvalidToken> {
        Ok(Self(Some(Arc::new(Source::Fixed(bearer(token.trim())?)))))
    }

    /// Presents the token in `path`, read again every [`REREAD_EVERY`].
    pub fn file(path: PathBuf) -> Self {
        Self(Some(Arc::new(Source::File { path, current: Mutex::new(None) })))
    }

    /// Presents tokens minted with the development secret, minted again at half their life.
    pub fn development(secret: Secret, claims: DevelopmentClaims) -> Result<Self, MintError> {
        mint_development_token(&secret, &claims)?;
        Ok(Self(Some(Arc::new(Source::Minted { secret, claims, current: Mutex::new(None) }))))
    }

    /// The identity of the mesh's `component` when it calls another: the
    /// token file of `auth.peers.token_file`, else a development identity
    /// when development tokens are accepted, else none (its peers will
    /// refuse it, which it logs).
    pub fn of_component(config: &AuthConfig, component: &str) -> Self {
        let peers = &config.peers;
        if let Some(path) = peers.token_file.clone().filter(|path| !path.as_os_str().is_empty()) {
            return Self::file(path);
        }
        let Some(secret) = config.peer_development_secret() else {
            tracing::warn!(component, "no identity to present to peers: set auth.peers.token_file");
            return Self::none();
        };
        let namespace = peers.namespace.as_deref().unwrap_or(DEVELOPMENT_NAMESPACE);
        let claims = DevelopmentClaims {
            issuer: peers.issuer.clone(),
            audience: peers.audience.clone(),
            subject: crate::access::peer_subject(namespace, component),
            scopes: Vec::new(),
            ttl: MINTED_FOR,
        };
        Self::development(secret, claims).unwrap_or_else(|error| {
            tracing::warn!(component, %error, "cannot mint a development identity for peers");
            Self::none()
        })
    }

    /// The `authorization` value to send now, if any.
    pub fn header(&self) -> Option<HeaderValue> {
        let source = self.0.as_deref()?;
        match source {
            Source::Fixed(value) => Some(value.clone()),
            Source::File { path, current } => {
                let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((read_at, value)) = current.as_ref()
                    && read_at.elapsed() < REREAD_EVERY
                {
                    return Some(value.clone());
                }
                let read = std::fs::read_to_string(path).map(|text| bearer(text.trim()));
                let value = match read {
                    Ok(Ok(value)) => Some(value),
                    // Keep the last token (it may well still be valid), and
                    // try the file again only after REREAD_EVERY.
                    Ok(Err(InvalidToken)) => {
                        tracing::warn!(path = %path.display(), "the token file holds no token");
                        current.as_ref().map(|(_, value)| value.clone())
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot read the token file");
                        current.as_ref().map(|(_, value)| value.clone())
                    }
                };
                if let Some(value) = &value {
                    *current = Some((Instant::now(), value.clone()));
                }
                value
            }
            Source::Minted { secret, claims, current } => {
                let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((renew_at, value)) = current.as_ref()
                    && Instant::now() < *renew_at
                {
                    return Some(value.clone());
                }
                let minted = mint_development_token(secret, claims).ok().and_then(|token| bearer(&token).ok())?;
                *current = Some((Instant::now() + claims.ttl / 2, minted.clone()));
                Some(minted)
            }
        }
    }
}

fn bearer(token: &str) -> Result<HeaderValue, InvalidToken> {
    if token.is_empty() {
        return Err(InvalidToken);
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// Two credentials are equal when they are the same one (or both none).
impl Eq for Credential {}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0.as_deref() {
            None => "none",
            Some(Source::Fixed(_)) => "bearer",
            Some(Source::File { .. }) => "file",
            Some(Source::Minted { .. }) => "development",
        };
        f.debug_tuple("Credential").field(&kind).finish()
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use super::*;
    use crate::auth::{Authenticator, PeerConfig};

    const SECRET: &str = "a development secret of 32+ bytes, for credentials";

    #[test]
    fn a_token_file_is_read_and_a_missing_one_presents_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert!(Credential::file(path.clone()).header().is_none(), "no file yet");
        std::fs::write(&path, "header.claims.signature\n").unwrap();
        let credential = Credential::file(path);
        assert_eq!(credential.header().unwrap(), "Bearer header.claims.signature");
        assert!(format!("{credential:?}").contains("file"));
    }

    #[tokio::test]
    async fn a_development_identity_verifies_as_its_component() {
        let config = AuthConfig {
            development_secret: Some(Secret::new(SECRET.into())),
            peers: PeerConfig { namespace: Some("mesh".into()), ..PeerConfig::default() },
            ..AuthConfig::default()
        };
        let header = Credential::of_component(&config, "fulfillment").header().unwrap();
        let verifier = Authenticator::new(&config.peer_verification().unwrap()).await.unwrap();
        assert_eq!(verifier.verify(Some(&header)).unwrap().subject, "system:serviceaccount:mesh:fulfillment");
        let callers = Authenticator::new(&config).await.unwrap();
        assert!(callers.verify(Some(&header)).is_err(), "a peer token is no caller's token");
        assert!(Credential::of_component(&AuthConfig::default(), "fulfillment").header().is_none());
    }
}
