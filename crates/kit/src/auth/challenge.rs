//! Why a request is refused: a 401 ([`Unauthenticated`]) or a 403
//! ([`Forbidden`]), each with its `WWW-Authenticate` challenge (RFC 6750 §3).

use http::HeaderValue;

/// The challenge for a request without a bearer token (RFC 6750 §3).
const BARE_CHALLENGE: &str = "Bearer realm=\"commerce-mesh\"";

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

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking
mod tests {
    use proptest::prelude::*;

    use super::*;

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
    }
}
