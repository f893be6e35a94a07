//! Who may call each RPC, checked by the component itself on every gRPC call
//! ([`AccessLayer`], put in front of every service by
//! [`crate::serve::GrpcServer::access`]).
//!
//! The rules are the ones the gateway enforces: each RPC's access option
//! (`commerce.auth.v1.access`) names the scopes a caller's token must carry.
//! A caller is either
//!
//! - someone with a token from the mesh's issuer (the gateway forwards the
//!   token it verified; an internal service sends its own), verified with
//!   the same [`Authenticator`] as the gateway's, whose scopes are in the
//!   token; or
//! - one of the mesh's own components ([`Peers`]), whose token says which
//!   component it is (`system:serviceaccount:<namespace>:<component>`) and
//!   whose scopes are what the configuration lets that component call.
//!
//! No token: UNAUTHENTICATED. Scopes missing, an RPC without a rule, or a
//! peer that is no component: PERMISSION_DENIED. Health and reflection are
//! open (probes and operators). The answer is a trailers-only status, so
//! trace and metrics record it like any other.
//!
//! ```
//! use std::collections::BTreeMap;
//! use kit::access::AccessRules;
//!
//! let rules = AccessRules::new(BTreeMap::from([(
//!     "/commerce.identity.v1.CustomerIdentityService/GetCustomer".to_string(),
//!     vec!["identity:read".to_string()],
//! )]));
//! assert_eq!(rules.scopes("/commerce.identity.v1.CustomerIdentityService/GetCustomer"), Some(&["identity:read".to_string()][..]));
//! assert_eq!(rules.scopes("/commerce.identity.v1.CustomerIdentityService/Nope"), None);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{Request, Response};
use tonic::body::Body;

use crate::auth::{Authenticator, Caller, Unauthenticated};
use crate::protect::UNPROTECTED_SERVICES;

/// The metadata key that names the verified caller to a service's handlers:
/// set from the token by [`AccessLayer`], whatever the call carried.
pub const SUBJECT_METADATA: &str = "x-authenticated-subject";

/// Who is calling, for a handler's records: the subject [`AccessLayer`] verified
/// (the token's, in [`SUBJECT_METADATA`]); none when nothing verified one.
pub fn subject<T>(request: &tonic::Request<T>) -> Option<String> {
    if let Some(caller) = request.extensions().get::<Caller>() {
        return Some(caller.subject.clone());
    }
    request
        .metadata()
        .get(SUBJECT_METADATA)
        .and_then(|value| value.to_str().ok())
        .filter(|subject| !subject.is_empty())
        .map(str::to_owned)
}

/// The subject prefix of a Kubernetes service-account token.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The subject a component's peer token carries: its service account in `namespace`.
pub fn peer_subject(namespace: &str, component: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{component}")
}

/// The scopes each RPC requires, by its path (`/package.Service/Method`).
#[derive(Clone, Debug, Default)]
pub struct AccessRules(BTreeMap<String, Vec<String>>);

impl AccessRules {
    /// Rules from `/package.Service/Method` → the scopes it requires.
    pub fn new(rules: BTreeMap<String, Vec<String>>) -> Self {
        Self(rules)
    }

    /// The scopes `path` requires; None when it has no rule (nobody may call it).
    pub fn scopes(&self, path: &str) -> Option<&[String]> {
        self.0.get(path).map(Vec::as_slice)
    }
}

/// The mesh's own components as callers: how their tokens are verified and
/// what each may call.
#[derive(Clone, Debug)]
pub struct Peers {
    verifier: Authenticator,
    namespace: Option<String>,
    grants: BTreeMap<String, BTreeSet<String>>,
}

impl Peers {
    /// Peer tokens verified by `verifier`, from service accounts in
    /// `namespace` (None: any), each component holding the scopes `grants`
    /// gives it (a component not there holds none).
    pub fn new(verifier: Authenticator, namespace: Option<String>, grants: BTreeMap<String, BTreeSet<String>>) -> Self {
        Self { verifier, namespace, grants }
    }

    /// The peer a verified token speaks for, with the scopes it is granted.
    fn caller(&self, authorization: Option<&http::HeaderValue>) -> Result<Caller, Unauthenticated> {
        let token = self.verifier.verify(authorization)?;
        let component = token
            .subject
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(namespace, _)| self.namespace.as_deref().is_none_or(|expected| expected == *namespace))
            .map(|(_, component)| component)
            .ok_or_else(|| Unauthenticated::invalid_token("the peer token names no service account of the mesh"))?;
        let scopes = self.grants.get(component).cloned().unwrap_or_default();
        Ok(Caller { subject: token.subject, scopes })
    }
}

/// Everything a component needs to check its callers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Access(Arc<AccessInner>);

#[derive(Debug)]
struct AccessInner {
    rules: AccessRules,
    callers: Authenticator,
    peers: Option<Peers>,
}

impl Access {
    /// Calls checked against `rules`, callers' tokens verified by `callers`,
    /// and the mesh's components recognised by `peers`.
    pub fn new(rules: AccessRules, callers: Authenticator, peers: Option<Peers>) -> Self {
        Self(Arc::new(AccessInner { rules, callers, peers }))
    }

    /// Who calls `path` with this `authorization`, if they may; else the status to answer.
    pub fn check(&self, path: &str, authorization: Option<&http::HeaderValue>) -> Result<Caller, tonic::Status> {
        let Some(scopes) = self.0.rules.scopes(path) else {
            return Err(tonic::Status::permission_denied(format!("{path} has no access rule: nobody may call it")));
        };
        let caller = match self.0.callers.verify(authorization) {
            Ok(caller) => caller,
            Err(refused) if !refused.token_presented() => return Err(tonic::Status::unauthenticated(refused.reason)),
            // Not a caller's token: perhaps one of the mesh's components.
            Err(refused) => match &self.0.peers {
                Some(peers) => {
                    peers.caller(authorization).map_err(|_| tonic::Status::unauthenticated(refused.reason))?
                }
                None => return Err(tonic::Status::unauthenticated(refused.reason)),
            },
        };
        caller.require(scopes).map_err(|forbidden| {
            tonic::Status::permission_denied(format!("{} may not call {path}: {forbidden}", caller.subject))
        })?;
        Ok(caller)
    }
}

/// The tower layer that checks every call against an [`Access`]; the
/// verified [`Caller`] goes into the request's extensions.
#[derive(Clone, Debug)]
pub struct AccessLayer(Option<Access>);

impl AccessLayer {
    /// Checks calls against `access`; None lets every call through (a
    /// component that has no callers to check, such as a test's).
    pub fn new(access: Option<Access>) -> Self {
        Self(access)
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Checked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked { inner, access: self.0.clone() }
    }
}

/// A service behind [`AccessLayer`].
#[derive(Clone, Debug)]
pub struct Checked<S> {
    inner: S,
    access: Option<Access>,
}

impl<S, B> tower::Service<Request<B>> for Checked<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(access) = &self.access else { return Either::Right(self.inner.call(request)) };
        let path = request.uri().path();
        if UNPROTECTED_SERVICES.contains(&crate::protect::service_of(path)) {
            return Either::Right(self.inner.call(request));
        }
        match access.check(path, request.headers().get(http::header::AUTHORIZATION)) {
            Ok(caller) => {
                // Whatever the call claimed, handlers see the subject the token proved.
                match http::HeaderValue::try_from(caller.subject.as_str()) {
                    Ok(subject) => request.headers_mut().insert(SUBJECT_METADATA, subject),
                    Err(_) => request.headers_mut().remove(SUBJECT_METADATA),
                };
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(status) => {
                tracing::debug!(path, status = %status.message(), "call refused");
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{AuthConfig, DevelopmentClaims, Secret, mint_development_token};

    const SECRET: &str = "a development secret of 32+ bytes, for access tests";
    const GET: &str = "/shop.v1.Shop/Get";
    const RETIRE: &str = "/shop.v1.Shop/Retire";

    fn config() -> AuthConfig {
        AuthConfig { development_secret: Some(Secret::new(SECRET.into())), ..AuthConfig::default() }
    }

    async fn access() -> Access {
        let config = config();
        let rules = AccessRules::new(BTreeMap::from([
            (GET.to_string(), vec!["shop:read".to_string()]),
            (RETIRE.to_string(), vec!["shop:retire".to_string()]),
        ]));
        let callers = Authenticator::new(&config).await.unwrap();
        let verifier = Authenticator::new(&config.peer_verification().unwrap()).await.unwrap();
        let grants = BTreeMap::from([("fulfillment".to_string(), BTreeSet::from(["shop:read".to_string()]))]);
        Access::new(rules, callers, Some(Peers::new(verifier, Some("mesh".into()), grants)))
    }

    fn bearer(issuer: &str, audience: &str, subject: &str, scopes: &[&str]) -> http::HeaderValue {
        let claims = DevelopmentClaims {
            issuer: issuer.into(),
            audience: audience.into(),
            subject: subject.into(),
            scopes: scopes.iter().map(ToString::to_string).collect(),
            ttl: Duration::from_secs(60),
        };
        let token = mint_development_token(&Secret::new(SECRET.into()), &claims).unwrap();
        http::HeaderValue::try_from(format!("Bearer {token}")).unwrap()
    }

    fn user(scopes: &[&str]) -> http::HeaderValue {
        bearer("commerce-mesh", "commerce-mesh", "someone", scopes)
    }

    fn peer(subject: &str) -> http::HeaderValue {
        let peers = config().peers;
        bearer(&peers.issuer, &peers.audience, subject, &[])
    }

    #[tokio::test]
    async fn callers_need_a_token_with_every_scope_of_the_rule() {
        let access = access().await;
        assert_eq!(access.check(GET, None).unwrap_err().code(), tonic::Code::Unauthenticated);
        let garbage = http::HeaderValue::from_static("Bearer not.a.token");
        assert_eq!(access.check(GET, Some(&garbage)).unwrap_err().code(), tonic::Code::Unauthenticated);
        let denied = access.check(GET, Some(&user(&["shop:write"]))).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("shop:read"), "{denied:?}");
        assert_eq!(access.check(GET, Some(&user(&["shop:read"]))).unwrap().subject, "someone");
        let unruled = access.check("/shop.v1.Shop/Unlisted", Some(&user(&["shop:read"]))).unwrap_err();
        assert_eq!(unruled.code(), tonic::Code::PermissionDenied, "no rule: nobody");
    }

    #[tokio::test]
    async fn peers_hold_only_what_they_are_granted_and_only_from_their_namespace() {
        let access = access().await;
        let fulfillment = peer(&peer_subject("mesh", "fulfillment"));
        assert_eq!(access.check(GET, Some(&fulfillment)).unwrap().subject, "system:serviceaccount:mesh:fulfillment");
        assert_eq!(access.check(RETIRE, Some(&fulfillment)).unwrap_err().code(), tonic::Code::PermissionDenied);
        let stranger = peer(&peer_subject("mesh", "gateway"));
        assert_eq!(access.check(GET, Some(&stranger)).unwrap_err().code(), tonic::Code::PermissionDenied);
        let elsewhere = peer(&peer_subject("other", "fulfillment"));
        assert_eq!(access.check(GET, Some(&elsewhere)).unwrap_err().code(), tonic::Code::Unauthenticated);
        let not_an_account = peer("fulfillment");
        assert_eq!(access.check(GET, Some(&not_an_account)).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn the_layer_names_the_proven_subject_and_answers_refusals_itself() {
        use tower::{Layer as _, ServiceExt as _};
        // Echoes the subject its handler would see.
        let handler = tower::service_fn(|request: Request<Body>| async move {
            let seen = request.headers().get(SUBJECT_METADATA).cloned();
            let mut response = Response::new(Body::empty());
            if let Some(seen) = seen {
                response.headers_mut().insert("seen-subject", seen);
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let service = AccessLayer::new(Some(access().await)).layer(handler);
        let call = |authorization: Option<http::HeaderValue>| {
            let mut request = Request::post(GET).body(Body::empty()).unwrap();
            request.headers_mut().insert(SUBJECT_METADATA, http::HeaderValue::from_static("admin"));
            if let Some(authorization) = authorization {
                request.headers_mut().insert(http::header::AUTHORIZATION, authorization);
            }
            service.clone().oneshot(request)
        };
        let admitted = call(Some(user(&["shop:read"]))).await.unwrap();
        assert_eq!(admitted.headers()["seen-subject"], "someone", "the token's subject, not the claimed one");
        let refused = call(None).await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "16", "UNAUTHENTICATED, trailers-only");
        assert!(refused.headers().get("seen-subject").is_none(), "the handler never ran");
        let health = Request::post("/grpc.health.v1.Health/Check").body(Body::empty()).unwrap();
        assert!(
            service.clone().oneshot(health).await.unwrap().headers().get("grpc-status").is_none(),
            "health is open"
        );
    }

    #[tokio::test]
    async fn a_jwks_and_a_development_secret_need_an_explicit_allowance() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, include_str!("../tests/keys/jwks-key1.json")).unwrap();
        let both = AuthConfig { jwks_file: Some(jwks), ..config() };
        let refused = Authenticator::new(&both).await.unwrap_err();
        assert!(refused.to_string().contains("allow_development_tokens"), "{refused}");
        assert!(!both.accepts_development_tokens());
        let allowed = AuthConfig { allow_development_tokens: true, ..both };
        assert!(Authenticator::new(&allowed).await.is_ok());
        assert!(allowed.accepts_development_tokens());
    }
}
