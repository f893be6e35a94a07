//! Identifiers from the commerce platform and the mesh: 1 to [`MAX_ID_LEN`]
//! characters, none of them whitespace or control characters.

use serde::{Deserialize, Serialize};

use crate::forms::string_forms;
use crate::invalid::{Invalid, ViolationReason};

/// Longest identifier accepted, in characters.
pub const MAX_ID_LEN: usize = 100;

/// The rule every identifier here follows.
pub(crate) fn check_id(raw: &str, max: usize) -> Result<(), Invalid> {
    if raw.is_empty() {
        return Err(Invalid::empty());
    }
    if raw.chars().count() > max {
        return Err(Invalid::because(ViolationReason::TooLong, format!("must be at most {max} characters")));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Invalid::because(
            ViolationReason::InvalidFormat,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Declares an identifier type: parsed by [`check_id`], a string inside.
macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Accepts 1 to [`MAX_ID_LEN`] characters, none of them whitespace or control characters.
            pub fn parse(raw: &str) -> Result<Self, Invalid> {
                check_id(raw, MAX_ID_LEN)?;
                Ok(Self(raw.to_owned()))
            }

            /// The identifier as sent.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        string_forms!($name, deref);

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// The order number a learner sees; an order's key in Fulfillment and in purchase history.
    OrderNumber
);
identifier!(
    /// The commerce platform's internal id of an order.
    OrderId
);
identifier!(
    /// A line item of an order, unique within it.
    LineItemId
);
identifier!(
    /// A commerce platform's customer id (CustomerIdentity links it to an LMS user).
    CustomerId
);
identifier!(
    /// A purchase in purchase history: one per fulfilled line item, or as a caller recorded it.
    PurchaseId
);
identifier!(
    /// The system that reported an order or a purchase (a commerce platform, a line of business).
    SourceSystem
);
identifier!(
    /// A fulfillment job (one line item of an order), as Fulfillment names it in its API and events.
    FulfillmentId
);
identifier!(
    /// A credit provider of a credit-mode enrollment.
    CreditProviderId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_empty_long_whitespace_and_control() {
        assert!(OrderNumber::parse("EDX-1001").is_ok());
        assert!(OrderNumber::parse(&"é".repeat(MAX_ID_LEN)).is_ok(), "characters, not bytes");
        assert_eq!(OrderNumber::parse("").unwrap_err().reason(), "must not be empty");
        assert!(OrderNumber::parse(&"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(LineItemId::parse("a b").is_err());
        assert!(LineItemId::parse("a\u{7}").is_err());
        assert!(LineItemId::parse("a\u{2028}").is_err(), "unicode whitespace too");
    }

    #[test]
    fn serde_goes_through_the_parser() {
        let id: PurchaseId = serde_json::from_str("\"p-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"p-1\"");
        assert!(serde_json::from_str::<PurchaseId>("\"p 1\"").is_err());
    }
}
