//! The caller's token and scopes, checked before anything else is read.

use axum::response::Response;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue};

use crate::status::ErrorRenderer;
use kit::auth::{Authenticator, Caller};

/// A caller refused before any service is called.
pub(super) enum Refusal {
    Unauthenticated {
        reason: String,
        challenge: HeaderValue,
    },
    /// Authenticated as `subject`, but lacking a scope.
    Forbidden {
        reason: String,
        challenge: HeaderValue,
        subject: String,
    },
}

impl Refusal {
    /// The verified subject of a caller refused for its scopes.
    pub(super) fn subject(&self) -> Option<String> {
        match self {
            Refusal::Unauthenticated { .. } => None,
            Refusal::Forbidden { subject, .. } => Some(subject.clone()),
        }
    }

    pub(super) fn response(self, errors: &ErrorRenderer) -> Response {
        let (status, challenge) = match self {
            Refusal::Unauthenticated { reason, challenge } => (tonic::Status::unauthenticated(reason), challenge),
            Refusal::Forbidden { reason, challenge, .. } => (tonic::Status::permission_denied(reason), challenge),
        };
        let mut response = errors.response(&status);
        response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        response
    }
}

pub(super) async fn authorize(auth: &Authenticator, headers: &HeaderMap, scopes: &[String]) -> Result<Caller, Refusal> {
    let caller = auth.authenticate(headers.get(AUTHORIZATION)).await.map_err(|refused| Refusal::Unauthenticated {
        challenge: refused.www_authenticate(),
        reason: refused.to_string(),
    })?;
    caller.require(scopes).map_err(|refused| Refusal::Forbidden {
        challenge: refused.www_authenticate(),
        reason: refused.to_string(),
        subject: caller.subject.clone(),
    })?;
    Ok(caller)
}
