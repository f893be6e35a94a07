//! Each RPC's REST bindings and access rule, read from the descriptors at run
//! time.
//!
//! ```
//! let pool = proto::descriptor_pool().unwrap();
//! let bindings = gateway::binding::method_bindings(&pool).unwrap();
//! let fulfill = bindings.iter().find(|b| b.method.name() == "FulfillOrder").unwrap();
//! assert_eq!(fulfill.http[0].path, "/v1/orders/{order_number}:fulfill");
//! assert_eq!(fulfill.scopes, ["fulfillment:write"]);
//! ```

use std::fmt;

use prost_reflect::{DescriptorPool, ExtensionDescriptor, MethodDescriptor, Value};
use proto::commerce::auth::v1::AccessRule;
use proto::google::api::{HttpRule, http_rule::Pattern};

/// The option naming an RPC's HTTP binding.
pub const HTTP_OPTION: &str = "google.api.http";
/// The option naming the scopes an RPC requires.
pub const ACCESS_OPTION: &str = "commerce.auth.v1.access";
/// Services in packages under this prefix are the mesh's own, and are served.
pub const SERVED_PACKAGE_PREFIX: &str = "commerce.";

/// One RPC as the gateway serves it.
#[derive(Clone, Debug)]
pub struct MethodBinding {
    /// The RPC.
    pub method: MethodDescriptor,
    /// Its bindings: the rule itself first, then its `additional_bindings`.
    pub http: Vec<HttpBinding>,
    /// Scopes a caller's token must carry, every one.
    pub scopes: Vec<String>,
}

/// One HTTP method and path template bound to an RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpBinding {
    /// GET, POST, ... (or a custom verb such as HEAD).
    pub verb: String,
    /// The path template, such as `/v1/orders/{order_number}:fulfill`.
    pub path: String,
    /// `*`, one request field, or empty for no body.
    pub body: String,
    /// The response field sent as the body; empty for the whole response.
    pub response_body: String,
}

/// What is wrong with one RPC's options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The descriptors do not define the option at all.
    #[error("the descriptors do not define the {0} extension")]
    MissingExtension(&'static str),
    /// The RPC has no `google.api.http` rule: it would be unreachable over REST.
    #[error("{method} has no google.api.http rule")]
    MissingHttpRule {
        /// The RPC's full name.
        method: String,
    },
    /// The RPC has no access rule: nobody could be allowed to call it.
    #[error("{method} has no commerce.auth.v1.access rule")]
    MissingAccessRule {
        /// The RPC's full name.
        method: String,
    },
    /// The access rule lists no scope.
    #[error("{method}: the access rule lists no scope")]
    NoScopes {
        /// The RPC's full name.
        method: String,
    },
    /// A rule (or additional binding) has no method and path.
    #[error("{method}: an http rule has no method and path")]
    NoPattern {
        /// The RPC's full name.
        method: String,
    },
    /// The option's value could not be decoded.
    #[error("{method}: cannot decode {option}: {reason}")]
    Decode {
        /// The RPC's full name.
        method: String,
        /// The option.
        option: &'static str,
        /// Why.
        reason: String,
    },
}

/// Every problem found, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBindings(pub Vec<BindingError>);

impl fmt::Display for InvalidBindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::problems::write_list(f, format_args!("{} RPC option problem(s):", self.0.len()), &self.0)
    }
}

impl std::error::Error for InvalidBindings {}

/// The bindings of every RPC of every `commerce.*` service in `pool`, or every
/// RPC that lacks an http rule or an access rule.
pub fn method_bindings(pool: &DescriptorPool) -> Result<Vec<MethodBinding>, InvalidBindings> {
    let http_ext = pool
        .get_extension_by_name(HTTP_OPTION)
        .ok_or_else(|| InvalidBindings(vec![BindingError::MissingExtension(HTTP_OPTION)]))?;
    let access_ext = pool
        .get_extension_by_name(ACCESS_OPTION)
        .ok_or_else(|| InvalidBindings(vec![BindingError::MissingExtension(ACCESS_OPTION)]))?;
    let mut bindings = Vec::new();
    let mut errors = Vec::new();
    let methods = pool
        .services()
        .filter(|service| service.package_name().starts_with(SERVED_PACKAGE_PREFIX))
        .flat_map(|service| service.methods().collect::<Vec<_>>());
    for method in methods {
        let http = read_option::<HttpRule>(&method, &http_ext, HTTP_OPTION)
            .and_then(|rule| rule.ok_or_else(|| BindingError::MissingHttpRule { method: method.full_name().into() }))
            .and_then(|rule| http_bindings(&method, &rule));
        let scopes = read_option::<AccessRule>(&method, &access_ext, ACCESS_OPTION)
            .and_then(|rule| rule.ok_or_else(|| BindingError::MissingAccessRule { method: method.full_name().into() }))
            .and_then(|rule| {
                if rule.scopes.is_empty() {
                    Err(BindingError::NoScopes { method: method.full_name().into() })
                } else {
                    Ok(rule.scopes)
                }
            });
        match (http, scopes) {
            (Ok(http), Ok(scopes)) => bindings.push(MethodBinding { method, http, scopes }),
            (http, scopes) => errors.extend(http.err().into_iter().chain(scopes.err())),
        }
    }
    if errors.is_empty() { Ok(bindings) } else { Err(InvalidBindings(errors)) }
}

fn read_option<T: prost::Message + Default>(
    method: &MethodDescriptor,
    extension: &ExtensionDescriptor,
    option: &'static str,
) -> Result<Option<T>, BindingError> {
    let options = method.options();
    if !options.has_extension(extension) {
        return Ok(None);
    }
    match options.get_extension(extension).as_ref() {
        Value::Message(message) => message.transcode_to::<T>().map(Some).map_err(|e| BindingError::Decode {
            method: method.full_name().into(),
            option,
            reason: e.to_string(),
        }),
        other => Err(BindingError::Decode {
            method: method.full_name().into(),
            option,
            reason: format!("expected a message, found {other:?}"),
        }),
    }
}

fn http_bindings(method: &MethodDescriptor, rule: &HttpRule) -> Result<Vec<HttpBinding>, BindingError> {
    std::iter::once(rule)
        .chain(rule.additional_bindings.iter())
        .map(|rule| {
            let (verb, path) = match &rule.pattern {
                Some(Pattern::Get(path)) => ("GET".to_string(), path.clone()),
                Some(Pattern::Put(path)) => ("PUT".to_string(), path.clone()),
                Some(Pattern::Post(path)) => ("POST".to_string(), path.clone()),
                Some(Pattern::Delete(path)) => ("DELETE".to_string(), path.clone()),
                Some(Pattern::Patch(path)) => ("PATCH".to_string(), path.clone()),
                Some(Pattern::Custom(custom)) => (custom.kind.to_uppercase(), custom.path.clone()),
                None => return Err(BindingError::NoPattern { method: method.full_name().into() }),
            };
            if path.is_empty() || verb.is_empty() {
                return Err(BindingError::NoPattern { method: method.full_name().into() });
            }
            Ok(HttpBinding { verb, path, body: rule.body.clone(), response_body: rule.response_body.clone() })
        })
        .collect()
}
