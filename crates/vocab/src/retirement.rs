//! A learner's retirement as every service that holds their name receives
//! it: the `CustomerRetired` event, parsed.

use prost::Message;
use proto::commerce::events::v1::{CustomerRetired, EventEnvelope, event_envelope::Payload};

use crate::id::CustomerId;
use crate::invalid::Invalid;
use crate::learner::{LmsUserId, LmsUsername};

/// A retired learner: whose rows to change (by LMS user id) and the
/// placeholder that replaces their username.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retirement {
    /// The commerce customer retired, when the event named one.
    pub customer_id: Option<CustomerId>,
    /// The learner, as every service finds their rows.
    pub lms_user_id: LmsUserId,
    /// The placeholder username (always [`LmsUsername::is_retired`]).
    pub retired_username: LmsUsername,
}

impl Retirement {
    /// Parses the event; the reason names the field at fault.
    pub fn from_event(event: &CustomerRetired) -> Result<Self, Invalid> {
        let named = |field: &str, invalid: Invalid| Invalid::new(format!("{field}: {invalid}"));
        let lms_user_id = LmsUserId::parse(&event.lms_user_id).map_err(|e| named("lms_user_id", e))?;
        let retired_username = LmsUsername::parse(&event.retired_username).map_err(|e| named("retired_username", e))?;
        if !retired_username.is_retired() {
            return Err(named("retired_username", Invalid::new("must be a retired learner's placeholder")));
        }
        let customer_id = match event.customer_id.as_str() {
            "" => None,
            raw => Some(CustomerId::parse(raw).map_err(|e| named("customer_id", e))?),
        };
        Ok(Self { customer_id, lms_user_id, retired_username })
    }

    /// Reads a stream entry: an `EventEnvelope` carrying a `CustomerRetired`.
    pub fn decode(payload: &[u8]) -> Result<Self, Invalid> {
        let envelope =
            EventEnvelope::decode(payload).map_err(|e| Invalid::new(format!("not an EventEnvelope: {e}")))?;
        match envelope.payload {
            Some(Payload::CustomerRetired(event)) => Self::from_event(&event),
            Some(_) => Err(Invalid::new(format!("not a CustomerRetired: {}", envelope.event_type))),
            None => Err(Invalid::new("the envelope has no payload")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CustomerRetired {
        CustomerRetired {
            customer_id: "c-1".into(),
            lms_user_id: "42".into(),
            retired_username: format!("{}{}", crate::RETIRED_PREFIX, "ab".repeat(20)),
            retired_at: None,
        }
    }

    #[test]
    fn a_retirement_names_the_learner_and_a_placeholder() {
        let retirement = Retirement::from_event(&event()).unwrap();
        assert_eq!(retirement.lms_user_id.get(), 42);
        let envelope = EventEnvelope { payload: Some(Payload::CustomerRetired(event())), ..Default::default() };
        assert_eq!(Retirement::decode(&envelope.encode_to_vec()), Ok(retirement));
    }

    #[test]
    fn a_plain_username_is_no_placeholder() {
        let mut bad = event();
        bad.retired_username = "ada".into();
        assert!(Retirement::from_event(&bad).unwrap_err().reason().starts_with("retired_username"));
        bad = event();
        bad.lms_user_id = "0".into();
        assert!(Retirement::from_event(&bad).unwrap_err().reason().starts_with("lms_user_id"));
        assert!(Retirement::decode(b"\xff\xff").is_err());
    }
}
