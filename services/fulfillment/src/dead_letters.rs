//! `FulfillmentDeadLetterService`: operators list, replay and discard the dead
//! letters of the streams Fulfillment consumes (the customers stream, group
//! [`crate::retirement::GROUP`]), through [`kit::dead_letters`].

use std::sync::Arc;

use kit::bus::EventBus;
use kit::dead_letters::{ConsumedStream, DeadLetterOps};
use proto::commerce::fulfillment::v1::fulfillment_dead_letter_service_server::{
    FulfillmentDeadLetterService, FulfillmentDeadLetterServiceServer,
};

/// The service: every call handed to [`DeadLetterOps`] (by [`kit::serve_dead_letters`]).
#[derive(Clone, Debug)]
pub struct FulfillmentDeadLetters(DeadLetterOps);

/// The service over `bus`, for the retirements consumer's `customers_stream`.
pub fn service(
    bus: Arc<dyn EventBus>,
    customers_stream: &str,
) -> FulfillmentDeadLetterServiceServer<FulfillmentDeadLetters> {
    let streams = vec![ConsumedStream::new(customers_stream, crate::retirement::GROUP)];
    FulfillmentDeadLetterServiceServer::new(FulfillmentDeadLetters(DeadLetterOps::new(bus, streams)))
}

kit::serve_dead_letters!(FulfillmentDeadLetterService, FulfillmentDeadLetters);
