//! PurchaseHistory's rules, pure and unit-tested: what a valid purchase is
//! (from a stream message or from `RecordPurchase`, legacy fields included),
//! whose purchases a list asks for, and the keyset page token.
//!
//! Parse, don't validate: a [`Purchase`] is built only by [`Purchase::from_event`]
//! or [`Purchase::from_request`] (in `message.rs`, the legacy form in `legacy.rs`),
//! which bound everything a caller sends and name every bad field, so an
//! invalid purchase never reaches the store. The page token is [`PageCursor`].

mod cursor;
mod legacy;
mod message;

use chrono::{DateTime, Utc};
use proto::commerce::events::v1::PurchaseRecorded;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::r#type::v1::Money;
use vocab::{LmsUserId, LmsUsername, OrderNumber, Price, ProductKey, PurchaseId, SourceSystem, Title, ViolationReason};

pub use cursor::{CursorError, PageCursor};

/// `source` of a purchase recorded through `RecordPurchase` that names none.
pub const RECORD_PURCHASE_SOURCE: &str = "record-purchase";
/// `source` of a purchase recorded through the legacy fields (`POST /buy`).
pub const LEGACY_SOURCE: &str = "legacy-buy";
/// The currency of a legacy price, which carries none.
pub const LEGACY_CURRENCY: &str = "USD";
/// A legacy `timestamp` number below this (in magnitude) is seconds since the
/// epoch, at or above it milliseconds: 1e11 seconds is the year 5138 and 1e11
/// milliseconds is 1973-03-03, so every plausible purchase time reads right
/// either way.
pub const LEGACY_MILLIS_FROM: f64 = 1e11;

/// One purchase by one learner, valid by construction: every field is a
/// `vocab` value, parsed by the same types Fulfillment (the producer) parses
/// the order with, so what Fulfillment accepted is never refused here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purchase {
    /// Unique: a repeat of it is stored once.
    pub purchase_id: PurchaseId,
    /// The buyer's LMS user id.
    pub lms_user_id: LmsUserId,
    /// The buyer's LMS username when they bought (a placeholder once retired).
    pub username: LmsUsername,
    /// The order, when known.
    pub order_number: Option<OrderNumber>,
    /// The product bought, when known.
    pub product_key: Option<ProductKey>,
    /// The product's title as sold; may be empty.
    pub title: Title,
    /// The price paid (never negative).
    pub price: Price,
    /// When, to the microsecond (what both backends keep).
    pub purchased_at: DateTime<Utc>,
    /// Which system reported it, when a stream message named one.
    pub source: Option<SourceSystem>,
}

/// One bad field of a message, as `google.rpc.BadRequest` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The field's path as the caller sees it: `purchase.price.amount`, `userid`.
    pub field_path: String,
    /// What is wrong with it.
    pub reason: String,
    /// The rule it broke (the violation's stable `reason` on the wire).
    pub rule: ViolationReason,
}

impl Violation {
    /// A violation of `field_path` that broke `rule`.
    pub fn new(field_path: impl Into<String>, rule: ViolationReason, reason: impl Into<String>) -> Self {
        Self { field_path: field_path.into(), reason: reason.into(), rule }
    }
}

impl Purchase {
    /// The stream message for this purchase.
    pub fn to_event(&self) -> PurchaseRecorded {
        PurchaseRecorded {
            purchase_id: self.purchase_id.to_string(),
            lms_user_id: self.lms_user_id.to_string(),
            username: self.username.to_string(),
            order_number: text_of(self.order_number.as_deref()),
            product_key: text_of(self.product_key.as_deref()),
            title: self.title.to_string(),
            price: Some(Money::from(&self.price)),
            purchased_at: Some(kit::time::to_timestamp(self.purchased_at)),
            source: text_of(self.source.as_deref()),
        }
    }

    /// The API's form of this purchase, as bought (its refund, if any, is the store's to add):
    /// the stream message's fields, which the two messages share.
    pub fn to_proto(&self) -> pb::Purchase {
        let PurchaseRecorded {
            purchase_id,
            lms_user_id,
            username,
            order_number,
            product_key,
            title,
            price,
            purchased_at,
            source,
        } = self.to_event();
        pb::Purchase {
            purchase_id,
            lms_user_id,
            username,
            order_number,
            product_key,
            title,
            price,
            purchased_at,
            source,
            status: pb::PurchaseStatus::Purchased as i32,
            refund: None,
        }
    }
}

/// An optional field's wire form: empty when absent.
fn text_of(value: Option<&str>) -> String {
    value.unwrap_or_default().to_string()
}

/// A time to the microsecond, what both backends keep, so a purchase read
/// back equals the one stored and a page cursor compares exactly.
pub fn truncate_to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

/// Whose purchases to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LearnerKey {
    /// By LMS user id.
    LmsUserId(LmsUserId),
    /// By the username stored with each purchase, compared case-insensitively.
    Username(LmsUsername),
}

#[cfg(test)]
mod tests;
