//! `FulfillmentDeadLetterService`: operators list, replay and discard the dead
//! letters of the streams Fulfillment consumes (the customers stream, group
//! [`crate::retirement::GROUP`]), through [`kit::dead_letters`].

use std::sync::Arc;

use kit::bus::EventBus;
use kit::dead_letters::{ConsumedStream, DeadLetterOps};
use proto::commerce::fulfillment::v1::fulfillment_dead_letter_service_server::{
    FulfillmentDeadLetterService, FulfillmentDeadLetterServiceServer,
};
use proto::commerce::ops::v1 as pb;
use tonic::{Request, Response, Status};

/// The service: every call handed to [`DeadLetterOps`].
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

#[tonic::async_trait]
impl FulfillmentDeadLetterService for FulfillmentDeadLetters {
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.0.list(request).await
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        self.0.replay(request).await
    }

    async fn discard_dead_letters(
        &self,
        request: Request<pb::DiscardDeadLettersRequest>,
    ) -> Result<Response<pb::DiscardDeadLettersResponse>, Status> {
        self.0.discard(request).await
    }
}
