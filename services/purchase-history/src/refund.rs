//! A purchase's refund, as PurchaseHistory keeps it: parsed from a
//! `PurchaseRefunded` event with the same `vocab` types Fulfillment (the
//! producer) built it from, so what Fulfillment announces is never refused.
//! Pure and unit-tested, like [`crate::domain`].

use chrono::{DateTime, Utc};
use proto::commerce::events::v1::PurchaseRefunded;
use proto::commerce::purchases::v1 as pb;
use proto::commerce::r#type::v1::Money;
use vocab::{Invalid, LmsUserId, Price, PurchaseId, RefundReason, SourceSystem, ViolationReason};

use crate::domain::{Violation, truncate_to_micros};

/// The refund of one purchase, valid by construction: built only by
/// [`PurchaseRefund::from_event`] or [`PurchaseRefund::new`] from parsed values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurchaseRefund {
    purchase_id: PurchaseId,
    lms_user_id: LmsUserId,
    amount: Price,
    reason: RefundReason,
    source: SourceSystem,
    refunded_at: DateTime<Utc>,
}

impl PurchaseRefund {
    /// The refund of `purchase_id` (bought by `lms_user_id`): `amount`, for
    /// `reason`, by `source`, recorded at `refunded_at` (kept to the microsecond).
    pub fn new(
        purchase_id: PurchaseId,
        lms_user_id: LmsUserId,
        amount: Price,
        reason: RefundReason,
        source: SourceSystem,
        refunded_at: DateTime<Utc>,
    ) -> Self {
        Self { purchase_id, lms_user_id, amount, reason, source, refunded_at: truncate_to_micros(refunded_at) }
    }

    /// The purchase refunded.
    pub fn purchase_id(&self) -> &PurchaseId {
        &self.purchase_id
    }

    /// The buyer.
    pub fn lms_user_id(&self) -> LmsUserId {
        self.lms_user_id
    }

    /// How much (never negative).
    pub fn amount(&self) -> &Price {
        &self.amount
    }

    /// Why; may be empty.
    pub fn reason(&self) -> &RefundReason {
        &self.reason
    }

    /// Which system refunded it.
    pub fn source(&self) -> &SourceSystem {
        &self.source
    }

    /// When it was recorded, to the microsecond (what both backends keep).
    pub fn refunded_at(&self) -> DateTime<Utc> {
        self.refunded_at
    }

    /// From a stream message: every field required but `reason`; every violation named.
    pub fn from_event(event: &PurchaseRefunded) -> Result<Self, Vec<Violation>> {
        let mut violations = Vec::new();
        let mut bad =
            |path: &str, invalid: Invalid| violations.push(Violation::new(path, invalid.rule(), invalid.reason()));
        let purchase_id = PurchaseId::parse(&event.purchase_id).map_err(|e| bad("purchase_id", e)).ok();
        let lms_user_id = LmsUserId::parse(&event.lms_user_id).map_err(|e| bad("lms_user_id", e)).ok();
        let reason = RefundReason::parse(&event.reason).map_err(|e| bad("reason", e)).ok();
        let source = SourceSystem::parse(&event.source).map_err(|e| bad("source", e)).ok();
        let amount = match &event.refunded_amount {
            None => {
                bad("refunded_amount", Invalid::because(ViolationReason::Required, "is required"));
                None
            }
            Some(money) => {
                Price::try_from(money).map_err(|e| bad(&format!("refunded_amount.{}", e.part.field()), e.invalid)).ok()
            }
        };
        let refunded_at = match &event.refunded_at {
            None => {
                bad("refunded_at", Invalid::because(ViolationReason::Required, "is required"));
                None
            }
            Some(at) => kit::time::from_timestamp(at)
                .map(truncate_to_micros)
                .map_err(|reason| bad("refunded_at", Invalid::because(ViolationReason::OutOfRange, reason)))
                .ok(),
        };
        match (purchase_id, lms_user_id, amount, reason, source, refunded_at) {
            (Some(purchase_id), Some(lms_user_id), Some(amount), Some(reason), Some(source), Some(refunded_at)) => {
                Ok(Self { purchase_id, lms_user_id, amount, reason, source, refunded_at })
            }
            _ => Err(violations),
        }
    }

    /// The API's view of the refund.
    pub fn to_proto(&self) -> pb::PurchaseRefund {
        pb::PurchaseRefund {
            refunded_amount: Some(Money::from(&self.amount)),
            reason: self.reason.to_string(),
            source: self.source.to_string(),
            refund_time: Some(kit::time::to_timestamp(self.refunded_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event() -> PurchaseRefunded {
        PurchaseRefunded {
            purchase_id: "fulfillment:01".into(),
            lms_user_id: "4242".into(),
            order_number: "EDX-1".into(),
            line_item_id: "l1".into(),
            refunded_amount: Some(Money { currency_code: "USD".into(), amount: "49.00".into() }),
            reason: "requested_by_customer".into(),
            source: "stripe".into(),
            refunded_at: Some(prost_types::Timestamp { seconds: 1_763_000_000, nanos: 1_500 }),
        }
    }

    #[test]
    fn a_refund_event_parses_to_the_microsecond() {
        let refund = PurchaseRefund::from_event(&event()).unwrap();
        assert_eq!(refund.amount.amount_text(), "49.00");
        assert_eq!(refund.refunded_at.timestamp_subsec_micros(), 1);
        assert_eq!(refund.to_proto().refunded_amount.unwrap().amount, "49.00");
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = PurchaseRefunded {
            purchase_id: String::new(),
            lms_user_id: "-1".into(),
            refunded_amount: Some(Money { currency_code: "USD".into(), amount: "-5".into() }),
            source: String::new(),
            refunded_at: None,
            reason: "a\u{7}".into(),
            ..event()
        };
        let mut fields: Vec<String> =
            PurchaseRefund::from_event(&bad).unwrap_err().into_iter().map(|v| v.field_path).collect();
        fields.sort();
        assert_eq!(fields, ["lms_user_id", "purchase_id", "reason", "refunded_amount.amount", "refunded_at", "source"]);
    }
}
