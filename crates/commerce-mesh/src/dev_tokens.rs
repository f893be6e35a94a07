//! Development tokens: the HS256 secret `up` verifies with when no token
//! verification is configured, and `commerce-mesh token`, which mints tokens
//! with it ([`kit::auth::mint_development_token`], the same minting the
//! components' own identities use).
//!
//! `up` on pure defaults must let a new user call the gateway, yet nothing
//! may be reachable without a token. So the first `up` writes a random
//! secret to `data_dir/gateway-development-secret` (mode 0600) and uses it;
//! `token` reads the same file. `serve gateway` never does this: a deployed
//! gateway must be given a JWKS (or a secret) explicitly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kit::auth::{DevelopmentClaims, MintError};
use kit::secret::Secret;

use crate::MeshConfig;

/// The file, under `data_dir`, holding the development secret `up` made.
pub const SECRET_FILE: &str = "gateway-development-secret";

/// Why no development token can be minted.
#[derive(Debug, thiserror::Error)]
pub enum DevTokenError {
    /// Neither a configured secret nor the one `up` writes.
    #[error(
        "no development secret: set MESH_AUTH__DEVELOPMENT_SECRET, or run `commerce-mesh up` once \
         (it writes {0})"
    )]
    NoSecret(PathBuf),
    /// The secret file cannot be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The claims cannot be signed.
    #[error("cannot mint the token: {0}")]
    Mint(#[from] MintError),
    /// No scope was asked for.
    #[error("name the scopes the token carries: --scopes a,b (or --all-scopes)")]
    NoScopes,
    /// A scope no RPC of the mesh requires: a typo, or a scope from elsewhere.
    #[error("no RPC requires {}; the scopes are: {}", unknown.join(", "), known.join(", "))]
    UnknownScopes {
        /// The scopes asked for that no RPC requires.
        unknown: Vec<String>,
        /// Every scope some RPC requires.
        known: Vec<String>,
    },
    /// A token given on the command line cannot be sent (control characters, empty).
    #[error("the token given (--token or COMMERCE_MESH_TOKEN) is empty or not printable")]
    InvalidToken,
}

/// The secret in `data_dir`, written first (random, 0600) when absent.
pub fn load_or_create_secret(data_dir: &Path) -> Result<Secret, DevTokenError> {
    let path = data_dir.join(SECRET_FILE);
    if let Some(secret) = read_secret(&path)? {
        return Ok(secret);
    }
    let file_error = |source| DevTokenError::File { path: path.clone(), source };
    std::fs::create_dir_all(data_dir).map_err(file_error)?;
    // Two v4 UUIDs: 244 random bits from the OS generator, as 64 hex digits.
    let secret = Secret::new(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => std::io::Write::write_all(&mut file, secret.expose().as_bytes()).map_err(file_error)?,
        // Another process wrote it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(file_error(error)),
    }
    read_secret(&path)?.ok_or(DevTokenError::NoSecret(path))
}

fn read_secret(path: &Path) -> Result<Option<Secret>, DevTokenError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(Secret::new(text.trim().to_string()))),
        Ok(_) => Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DevTokenError::File { path: path.to_path_buf(), source }),
    }
}

/// The secret `token` signs with: the configured one, else the one `up` wrote.
pub fn signing_secret(config: &MeshConfig) -> Result<Secret, DevTokenError> {
    if let Some(secret) = &config.auth.development_secret {
        return Ok(secret.clone());
    }
    let path = config.data_dir.join(SECRET_FILE);
    read_secret(&path)?.ok_or(DevTokenError::NoSecret(path))
}

/// Every scope some RPC of the mesh requires, sorted: read from the access
/// option (`commerce.auth.v1.access`) of every method of every service in the
/// descriptors, so a scope added to a proto is known here without a list to keep.
pub fn every_scope() -> Vec<String> {
    let Ok(pool) = proto::descriptor_pool() else { return Vec::new() };
    let Some(access) = pool.get_extension_by_name(proto::ACCESS_OPTION) else { return Vec::new() };
    let mut scopes: Vec<String> = pool
        .services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .filter(|method| method.options().has_extension(&access))
        .filter_map(|method| {
            let options = method.options();
            let rule = options.get_extension(&access);
            rule.as_message().and_then(|rule| rule.transcode_to::<proto::commerce::auth::v1::AccessRule>().ok())
        })
        .flat_map(|rule| rule.scopes)
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

/// `scopes` when some RPC requires each of them; else the unknown ones, with the known.
pub fn check_scopes(scopes: &[String]) -> Result<(), DevTokenError> {
    let known = every_scope();
    let unknown: Vec<String> = scopes.iter().filter(|scope| !known.contains(scope)).cloned().collect();
    if unknown.is_empty() { Ok(()) } else { Err(DevTokenError::UnknownScopes { unknown, known }) }
}

/// A development token for `subject` carrying `scopes`, valid for `ttl`, with
/// the issuer and audience the gateway is configured to expect.
pub fn mint(config: &MeshConfig, subject: &str, scopes: Vec<String>, ttl: Duration) -> Result<String, DevTokenError> {
    if scopes.is_empty() {
        return Err(DevTokenError::NoScopes);
    }
    check_scopes(&scopes)?;
    Ok(kit::auth::mint_development_token(&signing_secret(config)?, &claims(&config.auth, subject, scopes, ttl))?)
}

/// A caller's development claims for `subject`, as `auth` expects them (its issuer and audience).
pub fn claims(auth: &kit::auth::AuthConfig, subject: &str, scopes: Vec<String>, ttl: Duration) -> DevelopmentClaims {
    DevelopmentClaims {
        issuer: auth.issuer.clone(),
        audience: auth.audience.clone(),
        subject: subject.into(),
        scopes,
        ttl,
    }
}

/// What a command-line tool presents to a service: `token` when given, else
/// a development token carrying `scopes` when a development secret is at
/// hand (configured, or the one `up` wrote), else nothing (the service then
/// answers UNAUTHENTICATED, saying a token is needed).
pub fn tool_credential(
    config: &MeshConfig,
    token: Option<String>,
    scopes: &[&str],
) -> Result<kit::credential::Credential, DevTokenError> {
    if let Some(token) = token {
        return kit::credential::Credential::bearer(&token).map_err(|_| DevTokenError::InvalidToken);
    }
    let Ok(secret) = signing_secret(config) else { return Ok(kit::credential::Credential::none()) };
    let scopes = scopes.iter().map(ToString::to_string).collect();
    let claims = claims(&config.auth, "commerce-mesh-cli", scopes, Duration::from_secs(60 * 60));
    Ok(kit::credential::Credential::development(secret, claims)?)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(&dir.path().join("data")).unwrap();
        let again = load_or_create_secret(&dir.path().join("data")).unwrap();
        assert_eq!(first.expose(), again.expose());
        assert_eq!(first.expose().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("data").join(SECRET_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn minting_needs_a_secret_and_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let config = MeshConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let read = || vec!["identity:read".to_string()];
        assert!(matches!(mint(&config, "dev", read(), Duration::from_secs(60)), Err(DevTokenError::NoSecret(_))));
        load_or_create_secret(&config.data_dir).unwrap();
        assert!(matches!(mint(&config, "dev", vec![], Duration::from_secs(60)), Err(DevTokenError::NoScopes)));
        let token = mint(&config, "dev", read(), Duration::from_secs(60)).unwrap();
        assert_eq!(token.split('.').count(), 3);
    }

    #[test]
    fn a_scope_no_rpc_requires_is_refused_naming_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let config = MeshConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        load_or_create_secret(&config.data_dir).unwrap();
        let asked = vec!["identity:read".to_string(), "bogus:scope".to_string()];
        let error = mint(&config, "dev", asked, Duration::from_secs(60)).unwrap_err();
        let DevTokenError::UnknownScopes { unknown, known } = &error else { panic!("{error}") };
        assert_eq!(unknown, &["bogus:scope".to_string()]);
        assert_eq!(known, &every_scope());
        let text = error.to_string();
        assert!(text.starts_with("no RPC requires bogus:scope; the scopes are: "), "{text}");
        assert!(text.contains("fulfillment:write") && text.contains("identity:import"), "{text}");
    }

    #[test]
    fn every_scope_covers_every_access_rule() {
        // Streaming and internal RPCs too (`identity:import` has no REST route).
        let scopes = every_scope();
        for (method, required) in proto::access_rules().unwrap() {
            for scope in required {
                assert!(scopes.contains(&scope), "{method} requires {scope}, missing from {scopes:?}");
            }
        }
    }

    #[test]
    fn every_scope_lists_the_mesh_scopes() {
        let scopes = every_scope();
        assert!(scopes.contains(&"fulfillment:write".to_string()));
        assert!(scopes.contains(&"purchases:read".to_string()));
        assert!(scopes.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
