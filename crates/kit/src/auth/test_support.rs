//! What the auth tests share: a development authenticator and the tokens it accepts.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use super::{AuthConfig, Authenticator, Secret};

/// The development secret of [`development_authenticator`].
pub(super) const DEVELOPMENT_SECRET: &str = "a development secret of 32+ bytes";

/// An authenticator of development tokens signed with [`DEVELOPMENT_SECRET`], and a runtime to call it on.
pub(super) fn development_authenticator() -> (tokio::runtime::Runtime, Authenticator) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config =
        AuthConfig { development_secret: Some(Secret::new(DEVELOPMENT_SECRET.into())), ..AuthConfig::default() };
    let authenticator = runtime.block_on(Authenticator::new(&config)).unwrap();
    (runtime, authenticator)
}

/// Claims the default configuration accepts, valid for ten minutes.
pub(super) fn valid_claims() -> Value {
    serde_json::json!({
        "iss": "commerce-mesh", "aud": "commerce-mesh", "sub": "learner-1",
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    })
}

/// `claims` signed with HS256 and `secret`.
pub(super) fn development_token(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// `Bearer <token>`.
pub(super) fn bearer(token: &str) -> HeaderValue {
    HeaderValue::try_from(format!("Bearer {token}")).unwrap()
}
