//! `PurchaseHistoryDeadLetterService`: operators list, replay and discard the dead
//! letters of the streams PurchaseHistory consumes (the purchases and customers streams, group
//! [`crate::consumer::GROUP`]), through [`kit::dead_letters`].

use std::sync::Arc;

use kit::bus::EventBus;
use kit::dead_letters::{ConsumedStream, DeadLetterOps};
use proto::commerce::purchases::v1::purchase_history_dead_letter_service_server::{
    PurchaseHistoryDeadLetterService, PurchaseHistoryDeadLetterServiceServer,
};

/// The service: every call handed to [`DeadLetterOps`] (by [`kit::serve_dead_letters`]).
#[derive(Clone, Debug)]
pub struct PurchaseHistoryDeadLetters(DeadLetterOps);

/// The service over `bus`, for the consumers of `purchases_stream` and `customers_stream`.
pub fn service(
    bus: Arc<dyn EventBus>,
    purchases_stream: &str,
    customers_stream: &str,
) -> PurchaseHistoryDeadLetterServiceServer<PurchaseHistoryDeadLetters> {
    let streams = vec![
        ConsumedStream::new(purchases_stream, crate::consumer::GROUP),
        ConsumedStream::new(customers_stream, crate::consumer::GROUP),
    ];
    PurchaseHistoryDeadLetterServiceServer::new(PurchaseHistoryDeadLetters(DeadLetterOps::new(bus, streams)))
}

kit::serve_dead_letters!(PurchaseHistoryDeadLetterService, PurchaseHistoryDeadLetters);
