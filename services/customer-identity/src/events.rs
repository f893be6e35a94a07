//! Events out: a retirement's `CustomerRetired`, written to the outbox in the
//! transaction that retires the customer and published by `kit::outbox::Relay`.

use chrono::{DateTime, Utc};
use kit::outbox::OutboxEvent;
use kit::time::to_timestamp;
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::events::v1::{self as events, event_envelope::Payload};

use crate::domain::Customer;

/// The `CustomerRetired` event of a customer just retired. Its id is derived
/// from the customer, so a relay that publishes it twice appends it once.
/// It carries the placeholder, never the username it replaced.
pub fn customer_retired(retired: &Customer, retired_at: DateTime<Utc>, trace: &TextContext) -> OutboxEvent {
    let event_id = format!("customer-retired:{}", retired.customer_id);
    let envelope = events::EventEnvelope {
        event_id: event_id.clone(),
        event_type: "commerce.events.v1.CustomerRetired".into(),
        occurred_at: Some(to_timestamp(retired_at)),
        traceparent: trace.traceparent.clone(),
        tracestate: trace.tracestate.clone(),
        payload: Some(Payload::CustomerRetired(events::CustomerRetired {
            customer_id: retired.customer_id.clone(),
            lms_user_id: retired.lms_user_id.to_string(),
            retired_username: retired.lms_username.clone(),
            retired_at: Some(to_timestamp(retired_at)),
        })),
    };
    OutboxEvent { event_id, stream: proto::streams::CUSTOMERS.into(), payload: envelope.encode_to_vec() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_event_names_the_learner_by_id_and_placeholder_only() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let customer = Customer {
            customer_id: "c-1".into(),
            lms_user_id: 42,
            lms_username: "retired__user_0123456789abcdef0123456789abcdef01234567".into(),
            email: String::new(),
            version: 2,
            retired: true,
            create_time: at,
            update_time: at,
        };
        let event = customer_retired(&customer, at, &TextContext::default());
        assert_eq!(
            (event.event_id.as_str(), event.stream.as_str()),
            ("customer-retired:c-1", proto::streams::CUSTOMERS)
        );
        let envelope = events::EventEnvelope::decode(event.payload.as_slice()).unwrap();
        let Some(Payload::CustomerRetired(retired)) = envelope.payload else { panic!("a CustomerRetired") };
        assert_eq!(
            (retired.lms_user_id.as_str(), retired.retired_username.as_str()),
            ("42", customer.lms_username.as_str())
        );
    }
}
