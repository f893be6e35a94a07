//! The vocabulary of the mesh: every value more than one service handles,
//! parsed by one type with private fields, so a value one service accepts is,
//! by construction, a value the next one accepts.
//!
//! Parse, don't validate: each type below is built only by its `parse` (or an
//! infallible conversion from another type of this crate), so an invalid one
//! cannot exist. A service parses at its edge and carries these values inward;
//! a consumer of an event parses the same fields with the same types.
//!
//! ```
//! use vocab::{CourseRunKey, LineItemId, Price, ProductKey};
//!
//! let key = CourseRunKey::parse("course-v1:MITx+6.00x+2026_T1").unwrap();
//! let price = Price::parse("USD", "149.00").unwrap();
//! assert_eq!(price.amount_text(), "149.00");
//! // What Fulfillment sells is a product key PurchaseHistory lists.
//! assert_eq!(ProductKey::from(&key).as_str(), key.as_str());
//! assert!(Price::parse("USD", "-5").is_err(), "a price is never negative");
//! assert!(LineItemId::parse("line 1").is_err(), "ids have no whitespace");
//! ```
//!
//! Where a rule genuinely differs, the type says so: a [`Price`] is never
//! negative (a free line is `"0"`), a [`Money`] amount may be (a refund), an
//! [`LmsUsername`] is either what the LMS accepts for a new account or a retired
//! learner's placeholder ([`LmsUsername::is_retired`]).

mod course;
pub mod empty_as_none;
pub(crate) mod forms;
mod id;
mod invalid;
mod learner;
mod money;
mod retirement;
mod text;

pub use course::{CourseKey, CourseRunKey, CourseUuid, MAX_KEY_LEN, ProductKey};
pub use id::{
    CreditProviderId, CustomerId, FulfillmentId, LineItemId, MAX_ID_LEN, OrderId, OrderNumber, PurchaseId, SourceSystem,
};
pub use invalid::{Invalid, ViolationReason};
pub use learner::{LmsUserId, LmsUsername, RETIRED_PREFIX, RetirementKey};
pub use money::{CurrencyCode, MAX_AMOUNT_LEN, Money, MoneyError, MoneyPart, Price};
pub use retirement::Retirement;
pub use text::{MAX_REASON_LEN, MAX_TITLE_LEN, RefundReason, Title};
