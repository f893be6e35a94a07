//! What a backend supplies, and the one [`EventBus`] impl both backends share.
//!
//! The contract's own logic lives here once: a call with nothing to do (no
//! events, no ids, `max` 0) answers at once without touching storage, and
//! every stream a call names is remembered for [`EventBus::streams`]. A
//! [`Backend`] does only its storage's part, and may assume a batch is not
//! empty and `max` is at least 1.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{
    BusError, DeadLetter, DeadLetterPage, DeadLetterQuery, Delivery, Discard, DiscardedPage, EntryId, EventBus,
    KnownStreams, Publication, StreamStats,
};

/// One storage of the bus: each method is the storage's side of the [`EventBus`] method it
/// names, with that method's meaning.
#[async_trait::async_trait]
pub(super) trait Backend: Send + Sync + 'static {
    /// The streams this client used.
    fn known_streams(&self) -> &KnownStreams;
    /// [`EventBus::publish`].
    async fn append_one(&self, event: Publication<'_>) -> Result<bool, BusError> {
        Ok(self.append_all(&[event]).await?.first() == Some(&true))
    }
    /// [`EventBus::publish_all`], `events` not empty.
    async fn append_all(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError>;
    /// [`EventBus::ensure_group`].
    async fn create_group(&self, stream: &str, group: &str) -> Result<(), BusError>;
    /// [`EventBus::read`], `max` at least 1.
    async fn read_new(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, BusError>;
    /// [`EventBus::ack`], `ids` not empty.
    async fn acknowledge(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<(), BusError>;
    /// [`EventBus::reclaim`], `max` at least 1.
    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError>;
    /// [`EventBus::dead_letter`].
    async fn bury(&self, stream: &str, group: &str, delivery: &Delivery, reason: &str) -> Result<(), BusError>;
    /// [`EventBus::list_dead_letters`], `query.max` at least 1.
    async fn dead_letter_page(&self, stream: &str, query: &DeadLetterQuery) -> Result<DeadLetterPage, BusError>;
    /// [`EventBus::replay_dead_letters`].
    async fn replay(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<EntryId>>, BusError>;
    /// [`EventBus::discard_dead_letters`].
    async fn discard(&self, stream: &str, ids: &[EntryId], discard: &Discard) -> Result<Vec<bool>, BusError>;
    /// [`EventBus::discarded_dead_letters`], `query.max` at least 1.
    async fn discarded_page(&self, stream: &str, query: &DeadLetterQuery) -> Result<DiscardedPage, BusError>;
    /// [`EventBus::dead_letters_by_id`].
    async fn find_dead_letters(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<DeadLetter>>, BusError>;
    /// [`EventBus::pending`].
    async fn pending_count(&self, stream: &str, group: &str) -> Result<u64, BusError>;
    /// [`EventBus::leave`].
    async fn leave_group(&self, stream: &str, group: &str, consumer: &str) -> Result<bool, BusError>;
    /// [`EventBus::trim`].
    async fn trim_stream(&self, stream: &str, now: DateTime<Utc>) -> Result<StreamStats, BusError>;
}

#[async_trait::async_trait]
impl<B: Backend> EventBus for B {
    async fn publish(&self, stream: &str, event_id: &str, payload: &[u8]) -> Result<bool, BusError> {
        self.known_streams().note(stream);
        self.append_one(Publication { stream, event_id, payload }).await
    }

    async fn publish_all(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for event in events {
            self.known_streams().note(event.stream);
        }
        self.append_all(events).await
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        self.known_streams().note(stream);
        self.create_group(stream, group).await
    }

    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.read_new(stream, group, consumer, max, block).await
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.acknowledge(stream, group, ids).await
    }

    async fn reclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.claim_idle(stream, group, consumer, min_idle, max).await
    }

    async fn dead_letter(&self, stream: &str, group: &str, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        self.bury(stream, group, delivery, reason).await
    }

    async fn list_dead_letters(&self, stream: &str, query: &DeadLetterQuery) -> Result<DeadLetterPage, BusError> {
        if query.max == 0 {
            return Ok(DeadLetterPage::default());
        }
        self.dead_letter_page(stream, query).await
    }

    async fn replay_dead_letters(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<EntryId>>, BusError> {
        self.known_streams().note(stream);
        self.replay(stream, ids).await
    }

    async fn discard_dead_letters(
        &self,
        stream: &str,
        ids: &[EntryId],
        discard: &Discard,
    ) -> Result<Vec<bool>, BusError> {
        self.discard(stream, ids, discard).await
    }

    async fn discarded_dead_letters(&self, stream: &str, query: &DeadLetterQuery) -> Result<DiscardedPage, BusError> {
        if query.max == 0 {
            return Ok(DiscardedPage::default());
        }
        self.discarded_page(stream, query).await
    }

    async fn dead_letters_by_id(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<DeadLetter>>, BusError> {
        self.find_dead_letters(stream, ids).await
    }

    async fn pending(&self, stream: &str, group: &str) -> Result<u64, BusError> {
        self.pending_count(stream, group).await
    }

    async fn leave(&self, stream: &str, group: &str, consumer: &str) -> Result<bool, BusError> {
        self.leave_group(stream, group, consumer).await
    }

    async fn trim(&self, stream: &str, now: DateTime<Utc>) -> Result<StreamStats, BusError> {
        self.trim_stream(stream, now).await
    }

    fn streams(&self) -> Vec<String> {
        self.known_streams().list()
    }
}
