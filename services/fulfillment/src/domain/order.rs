//! What a valid order is, and when two acceptances of one line item are "the same".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vocab::{
    CourseRunKey, CourseUuid, CreditProviderId, CustomerId, Invalid, LineItemId, LmsUserId, LmsUsername, OrderId,
    OrderNumber, Price, ProductKey, SourceSystem, Title, ViolationReason,
};

/// Most line items in one order.
pub const MAX_LINE_ITEMS: usize = 100;

/// An enrollment mode the LMS knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Mode {
    /// `audit`
    Audit,
    /// `honor`
    Honor,
    /// `verified`
    Verified,
    /// `professional`
    Professional,
    /// `no-id-professional`
    NoIdProfessional,
    /// `credit`: needs a credit provider.
    Credit,
    /// `masters`
    Masters,
    /// `executive-education`
    ExecutiveEducation,
    /// `paid-executive-education`
    PaidExecutiveEducation,
    /// `paid-bootcamp`
    PaidBootcamp,
}

impl Mode {
    /// Every mode, in the order the API documents them.
    pub const ALL: [Mode; 10] = [
        Mode::Audit,
        Mode::Honor,
        Mode::Verified,
        Mode::Professional,
        Mode::NoIdProfessional,
        Mode::Credit,
        Mode::Masters,
        Mode::ExecutiveEducation,
        Mode::PaidExecutiveEducation,
        Mode::PaidBootcamp,
    ];

    /// The LMS's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Honor => "honor",
            Mode::Verified => "verified",
            Mode::Professional => "professional",
            Mode::NoIdProfessional => "no-id-professional",
            Mode::Credit => "credit",
            Mode::Masters => "masters",
            Mode::ExecutiveEducation => "executive-education",
            Mode::PaidExecutiveEducation => "paid-executive-education",
            Mode::PaidBootcamp => "paid-bootcamp",
        }
    }

    /// Accepts exactly one of the LMS's mode names.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        Mode::ALL.into_iter().find(|m| m.as_str() == raw).ok_or_else(|| {
            let known: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
            let shown: String = raw.chars().take(40).collect();
            let rule = if raw.is_empty() { ViolationReason::Required } else { ViolationReason::UnknownValue };
            Invalid::because(rule, format!("unknown mode {shown:?}; expected one of {}", known.join(", ")))
        })
    }
}

impl From<Mode> for String {
    fn from(mode: Mode) -> Self {
        mode.as_str().to_string()
    }
}

impl TryFrom<String> for Mode {
    type Error = Invalid;
    fn try_from(raw: String) -> Result<Self, Invalid> {
        Mode::parse(&raw)
    }
}

/// What a line item gives the learner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Product {
    /// Enrollment in a course run.
    CourseRun {
        /// The run.
        course_run_key: CourseRunKey,
        /// The mode.
        mode: Mode,
        /// Set exactly when `mode` is credit.
        credit_provider_id: Option<CreditProviderId>,
    },
    /// An entitlement to a course of a program.
    Entitlement {
        /// The course's UUID.
        course_uuid: CourseUuid,
        /// The mode.
        mode: Mode,
    },
}

impl Product {
    /// A course-run enrollment; credit mode needs a provider, other modes must not have one.
    pub fn course_run(key: CourseRunKey, mode: Mode, credit_provider_id: &str) -> Result<Self, Invalid> {
        let credit_provider_id = match (mode, credit_provider_id) {
            (Mode::Credit, "") => {
                return Err(Invalid::because(ViolationReason::Required, "is required when mode is credit"));
            }
            (Mode::Credit, id) => Some(CreditProviderId::parse(id)?),
            (_, "") => None,
            (_, _) => return Err(Invalid::because(ViolationReason::Conflict, "must be empty unless mode is credit")),
        };
        Ok(Product::CourseRun { course_run_key: key, mode, credit_provider_id })
    }

    /// The mode, whichever the product.
    pub fn mode(&self) -> Mode {
        match self {
            Product::CourseRun { mode, .. } | Product::Entitlement { mode, .. } => *mode,
        }
    }

    /// The key purchase history shows: the course run key or the course UUID.
    pub fn key(&self) -> ProductKey {
        match self {
            Product::CourseRun { course_run_key, .. } => ProductKey::from(course_run_key),
            Product::Entitlement { course_uuid, .. } => ProductKey::from(course_uuid),
        }
    }
}

/// The learner as the order names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LearnerRef {
    /// Only the commerce customer: resolved through CustomerIdentity.
    Customer {
        /// The commerce customer id.
        customer_id: CustomerId,
    },
    /// The LMS user directly (with the customer id when the order had one).
    Lms(Learner),
}

/// A learner resolved to their LMS account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learner {
    /// The commerce customer id, when known.
    pub customer_id: Option<CustomerId>,
    /// The LMS user id.
    pub lms_user_id: LmsUserId,
    /// The LMS username the enrollment API identifies the learner by.
    pub lms_username: LmsUsername,
}

/// The order-level facts every line item's job carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderHeader {
    /// The order number shown to the learner.
    pub order_number: OrderNumber,
    /// The platform's internal id, when given.
    #[serde(with = "vocab::empty_as_none")]
    pub order_id: Option<OrderId>,
    /// The order's version when paid.
    pub order_version: i64,
    /// When the order was placed.
    pub date_placed: DateTime<Utc>,
    /// Which commerce system sent it, when given.
    #[serde(with = "vocab::empty_as_none")]
    pub source_system: Option<SourceSystem>,
    /// Passed to the LMS.
    pub email_opt_in: bool,
}

/// One line item as accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Unique within the order.
    pub line_item_id: LineItemId,
    /// What the learner gets.
    pub product: Product,
    /// The title as sold; may be empty.
    pub title: Title,
    /// The price paid (`"0"` for a free line).
    pub price: Price,
}

/// A validated order, the learner not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    header: OrderHeader,
    learner: LearnerRef,
    lines: Vec<OrderLine>,
}

impl Order {
    /// An order of `lines` (at least one, ids unique: `convert::parse_order` checks both) for `learner`.
    pub fn new(header: OrderHeader, learner: LearnerRef, lines: Vec<OrderLine>) -> Self {
        Self { header, learner, lines }
    }

    /// Order-level facts.
    pub fn header(&self) -> &OrderHeader {
        &self.header
    }

    /// The learner as named.
    pub fn learner(&self) -> &LearnerRef {
        &self.learner
    }

    /// At least one line, ids unique.
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }

    /// The fingerprint of each line as accepted, in line order: two acceptances
    /// of the same (order_number, line_item_id) are "the same order" exactly
    /// when their fingerprints are equal. It covers what reaches the LMS and
    /// purchase history, not `order_version` (a platform may resend a paid
    /// order with a later version). The learner counts as named, not as
    /// resolved, so a repeat is recognised without asking CustomerIdentity.
    pub fn fingerprints(&self) -> Vec<String> {
        #[derive(Serialize)]
        struct Fingerprinted<'a> {
            order_id: &'a str,
            date_placed: &'a DateTime<Utc>,
            source_system: &'a str,
            email_opt_in: bool,
            learner: &'a LearnerRef,
            line: &'a OrderLine,
        }
        let header = &self.header;
        self.lines
            .iter()
            .map(|line| {
                let fingerprinted = Fingerprinted {
                    // Absent as "", as fingerprints were first computed.
                    order_id: header.order_id.as_ref().map_or("", OrderId::as_str),
                    date_placed: &header.date_placed,
                    source_system: header.source_system.as_ref().map_or("", SourceSystem::as_str),
                    email_opt_in: header.email_opt_in,
                    learner: &self.learner,
                    line,
                };
                // Serializing these plain structs cannot fail.
                let canonical = serde_json::to_vec(&fingerprinted).unwrap_or_default();
                hex::encode(Sha256::digest(canonical))
            })
            .collect()
    }

    /// The jobs to store for this order, once the learner is resolved.
    pub fn jobs(&self, learner: &Learner) -> Vec<JobSpec> {
        self.lines
            .iter()
            .zip(self.fingerprints())
            .enumerate()
            .map(|(position, (line, fingerprint))| JobSpec {
                header: self.header.clone(),
                learner: learner.clone(),
                line: line.clone(),
                position: position as i32,
                fingerprint,
            })
            .collect()
    }
}

/// Everything a worker needs to fulfil one line item; stored with the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Order-level facts.
    pub header: OrderHeader,
    /// The learner, resolved.
    pub learner: Learner,
    /// The line item.
    pub line: OrderLine,
    /// The line's index in the order, for listing in line order.
    pub position: i32,
    /// See [`Order::fingerprints`].
    pub fingerprint: String,
}

/// How a repeat of an order compares with what was stored the first time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Nothing stored for this order yet.
    New,
    /// Every line matches what was stored: answer the stored jobs.
    Same,
    /// This line item differs from (or is missing from) what was stored.
    Conflict {
        /// The line item at fault.
        line_item_id: String,
    },
}

/// Compares an order's lines with the (line_item_id, fingerprint) pairs already stored for its number.
pub fn compare_repeat(order: &Order, stored: &[(String, String)]) -> Repeat {
    if stored.is_empty() {
        return Repeat::New;
    }
    for (line, fingerprint) in order.lines.iter().zip(order.fingerprints()) {
        match stored.iter().find(|(id, _)| id == line.line_item_id.as_str()) {
            Some((_, stored_fingerprint)) if *stored_fingerprint == fingerprint => {}
            _ => return Repeat::Conflict { line_item_id: line.line_item_id.to_string() },
        }
    }
    match stored.iter().find(|(id, _)| !order.lines.iter().any(|l| l.line_item_id.as_str() == id)) {
        Some((missing, _)) => Repeat::Conflict { line_item_id: missing.clone() },
        None => Repeat::Same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(lines: &[(&str, &str)]) -> Order {
        Order {
            header: OrderHeader {
                order_number: OrderNumber::parse("EDX-1").unwrap(),
                order_id: Some(OrderId::parse("o-1").unwrap()),
                order_version: 1,
                date_placed: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
                source_system: Some(SourceSystem::parse("commercetools").unwrap()),
                email_opt_in: false,
            },
            learner: LearnerRef::Customer { customer_id: CustomerId::parse("c-1").unwrap() },
            lines: lines
                .iter()
                .map(|(id, key)| OrderLine {
                    line_item_id: LineItemId::parse(id).unwrap(),
                    product: Product::course_run(CourseRunKey::parse(key).unwrap(), Mode::Verified, "").unwrap(),
                    title: Title::default(),
                    price: Price::parse("USD", "49.00").unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn modes_round_trip_and_unknown_ones_are_named() {
        for mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.as_str()), Ok(mode));
        }
        let error = Mode::parse("premium").unwrap_err().to_string();
        assert!(error.contains("premium") && error.contains("no-id-professional"), "{error}");
    }

    #[test]
    fn credit_mode_needs_a_provider_and_only_credit_has_one() {
        let key = || CourseRunKey::parse("course-v1:a+b+c").unwrap();
        assert!(Product::course_run(key(), Mode::Credit, "").is_err());
        assert!(Product::course_run(key(), Mode::Credit, "asu").is_ok());
        assert!(Product::course_run(key(), Mode::Verified, "asu").is_err());
    }

    const FINGERPRINT_BEFORE_VOCAB: &str = "ea4e27679b28dc2b1575d2fdebc420592b555ca6edbc1ce28562c0ac59de5e70";

    #[test]
    fn fingerprints_keep_the_form_they_were_first_stored_in() {
        // Computed by the release before the shared vocabulary, for the same order:
        // a repeat of an order accepted then is still recognised as the same order.
        let fingerprints = order(&[("1", "course-v1:a+b+c")]).fingerprints();
        assert_eq!(fingerprints, [FINGERPRINT_BEFORE_VOCAB]);
    }

    #[test]
    fn a_repeat_matches_line_by_line() {
        let first = order(&[("1", "course-v1:a+b+c"), ("2", "course-v1:a+b+d")]);
        let stored: Vec<(String, String)> =
            first.lines.iter().map(|l| l.line_item_id.to_string()).zip(first.fingerprints()).collect();
        assert_eq!(compare_repeat(&first, &[]), Repeat::New);
        assert_eq!(compare_repeat(&first, &stored), Repeat::Same);

        let changed = order(&[("1", "course-v1:a+b+c"), ("2", "course-v1:a+b+CHANGED")]);
        assert_eq!(compare_repeat(&changed, &stored), Repeat::Conflict { line_item_id: "2".into() });
        let extra = order(&[("1", "course-v1:a+b+c"), ("2", "course-v1:a+b+d"), ("3", "course-v1:a+b+e")]);
        assert_eq!(compare_repeat(&extra, &stored), Repeat::Conflict { line_item_id: "3".into() });
        let fewer = order(&[("1", "course-v1:a+b+c")]);
        assert_eq!(compare_repeat(&fewer, &stored), Repeat::Conflict { line_item_id: "2".into() });
    }

    #[test]
    fn a_later_order_version_is_the_same_order() {
        let first = order(&[("1", "course-v1:a+b+c")]);
        let mut resent = first.clone();
        resent.header.order_version += 1;
        assert_eq!(first.fingerprints(), resent.fingerprints());
        resent.header.email_opt_in = !resent.header.email_opt_in;
        assert_ne!(first.fingerprints(), resent.fingerprints());
    }
}
