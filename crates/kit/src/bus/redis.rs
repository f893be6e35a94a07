//! The Redis Streams backend, for production.
//!
//! Keys: the stream itself; `<stream>:published`, a sorted set of the event
//! ids published within the dedupe window, scored by publish time (ms);
//! `<stream>.dead` is the dead-letter stream (fields `original_id`, `event_id`,
//! `payload`, `reason`, and since dead letters became replayable `group` and
//! `delivery_count`), `<stream>.dead.discarded` keeps discarded dead letters
//! (the same fields, `dead_letter_id`, `discarded_by`, `discard_reason`).
//! Entries carry the fields `event_id` and `payload`. Scripts touch several
//! keys of one stream, so on a Redis Cluster a stream's name needs a hash tag
//! (`{orders}.paid`) to keep them in one slot.
//!
//! Why one sorted set per stream rather than a key per event id with a TTL:
//! a key costs Redis a dictionary entry, its name (the stream's name again),
//! an expiry entry and an object; a set member costs its id and a score. The
//! set is pruned by [`EventBus::trim`](crate::bus::EventBus::trim) with ZREMRANGEBYRANK, a bounded number
//! of members per call (docs/OPERATIONS.md has the measured bytes per event).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

use self::reply::{RawEntry, TrimReply, array, dead_letter_of, discarded_of, is_entry_id, read_reply};
use self::scripts::{
    DEAD_LETTER_SCRIPT, DISCARD_SCRIPT, LEAVE_SCRIPT, PUBLISH_SCRIPT, RECLAIM_SCRIPT, REPLAY_SCRIPT, TRIM_SCRIPT,
};
use super::backend::Backend;
use super::{
    BusConfig, BusError, DEAD_LETTER_SCAN_LIMIT, DeadLetter, DeadLetterPage, DeadLetterQuery, Delivery, Discard,
    DiscardedPage, EntryId, KnownStreams, Publication, StreamStats, before, dead_letter_stream, discarded_stream,
    epoch_millis,
};

mod reply;
mod scripts;

/// How long any command but a blocking read may take before it fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting may take before a call fails.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle dedicated connections kept for blocking reads.
const MAX_IDLE_BLOCKING: usize = 8;

/// Entries (or markers) one trim script removes at most from each key: a few
/// milliseconds of Redis's time, so a trim never stalls other clients.
const TRIM_LIMIT: u64 = 10_000;

/// Trim scripts one [`EventBus::trim`](crate::bus::EventBus::trim) runs at most; what is left waits for the next trim.
const TRIM_ROUNDS: usize = 20;

/// The Redis Streams backend: consumer groups, XAUTOCLAIM, a dead-letter stream per stream.
#[derive(Clone)]
pub struct RedisStreams {
    connection: ConnectionManager,
    blocking: Arc<BlockingConnections>,
    config: BusConfig,
    streams: Arc<KnownStreams>,
    publish: Arc<redis::Script>,
    reclaim: Arc<redis::Script>,
    dead_letter: Arc<redis::Script>,
    replay: Arc<redis::Script>,
    discard: Arc<redis::Script>,
    trim: Arc<redis::Script>,
    leave: Arc<redis::Script>,
}

/// Connections for blocking reads. A blocking XREADGROUP holds its connection
/// until it answers, and Redis answers a connection's commands in order: on
/// the shared multiplexed connection it would stall every publish and ack of
/// the process for the whole block. So each blocking read takes a connection
/// of its own, returned here for reuse when it answered.
struct BlockingConnections {
    client: redis::Client,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl BlockingConnections {
    async fn take(&self) -> Result<MultiplexedConnection, BusError> {
        if let Some(connection) = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop() {
            return Ok(connection);
        }
        // The read bounds its own wait (block plus RESPONSE_TIMEOUT), so no response timeout here.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(None);
        Ok(self.client.get_multiplexed_async_connection_with_config(&config).await?)
    }

    fn give_back(&self, connection: MultiplexedConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE_BLOCKING {
            idle.push(connection);
        }
    }
}

impl RedisStreams {
    /// A lazily connecting client of `url` (`redis://host:6379/0`), with the
    /// default [`BusConfig`]. Fails only on a malformed URL.
    pub fn new(url: &str) -> Result<Self, BusError> {
        let client = crate::redis_tcp::client(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            connection,
            blocking: Arc::new(BlockingConnections { client, idle: Mutex::new(Vec::new()) }),
            config: BusConfig::default(),
            streams: Arc::new(KnownStreams::default()),
            publish: Arc::new(redis::Script::new(PUBLISH_SCRIPT)),
            reclaim: Arc::new(redis::Script::new(RECLAIM_SCRIPT)),
            dead_letter: Arc::new(redis::Script::new(DEAD_LETTER_SCRIPT)),
            replay: Arc::new(redis::Script::new(REPLAY_SCRIPT)),
            discard: Arc::new(redis::Script::new(DISCARD_SCRIPT)),
            trim: Arc::new(redis::Script::new(TRIM_SCRIPT)),
            leave: Arc::new(redis::Script::new(LEAVE_SCRIPT)),
        })
    }

    /// The same client with these retention settings.
    pub fn with_config(mut self, config: BusConfig) -> Self {
        self.config = config;
        self
    }

    /// The publish script for one event, as of `now_ms`.
    fn publication<'a>(&'a self, event: &Publication<'_>, now_ms: i64) -> redis::ScriptInvocation<'a> {
        let mut invocation = self.publish.key(event.stream);
        invocation
            .key(markers_key(event.stream))
            .arg(event.event_id)
            .arg(event.payload)
            .arg(now_ms)
            .arg(self.config.max_len.max(1));
        invocation
    }

    /// A page of `key`'s entries after `query.after`, oldest first, kept by `keep` (which
    /// filters): at most `query.max` kept, [`DEAD_LETTER_SCAN_LIMIT`] examined, and the id
    /// of the last one examined as `next` when the page stops early.
    async fn scan<T>(
        &self,
        key: &str,
        query: &DeadLetterQuery,
        mut keep: impl FnMut(&RawEntry) -> Option<T>,
    ) -> Result<(Vec<T>, Option<EntryId>), BusError> {
        let mut kept = Vec::new();
        let mut connection = self.connection.clone();
        // Exclusive start (Redis 6.2); an id Redis would not make starts at the beginning.
        let mut start = match &query.after {
            Some(after) if is_entry_id(&after.0) => format!("({after}"),
            _ => "-".to_string(),
        };
        let chunk = query.max.clamp(100, 1000);
        let mut scanned = 0;
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(chunk)
                .query_async(&mut connection)
                .await?;
            let items = array(reply).ok_or_else(|| BusError::malformed(key, "", "XRANGE reply is not an array"))?;
            let last_chunk = items.len() < chunk;
            for item in items {
                let entry = RawEntry::parse(key, item)?;
                scanned += 1;
                start = format!("({}", entry.id);
                kept.extend(keep(&entry));
                if kept.len() >= query.max || scanned >= DEAD_LETTER_SCAN_LIMIT {
                    return Ok((kept, Some(EntryId(entry.id))));
                }
            }
            if last_chunk {
                return Ok((kept, None));
            }
        }
    }

    /// Turns entries into deliveries; an entry `publish` did not write (no
    /// `event_id` or `payload`) would fail its consumer on every reclaim, so it
    /// goes to the dead-letter stream instead of being delivered.
    async fn deliveries(
        &self,
        stream: &str,
        group: &str,
        entries: Vec<(RawEntry, u64)>,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut deliveries = Vec::with_capacity(entries.len());
        for (entry, delivery_count) in entries {
            match entry.delivery(delivery_count) {
                Ok(delivery) => deliveries.push(delivery),
                Err(reason) => {
                    tracing::warn!(stream, group, id = %entry.id, reason, "malformed stream entry dead-lettered");
                    let delivery = Delivery {
                        id: EntryId(entry.id.clone()),
                        event_id: entry
                            .field("event_id")
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                        payload: entry.field("payload").map(<[u8]>::to_vec).unwrap_or_default(),
                        delivery_count,
                    };
                    self.bury(stream, group, &delivery, &format!("malformed entry: {reason}")).await?;
                }
            }
        }
        Ok(deliveries)
    }
}

/// The sorted set of `stream`'s published event ids.
fn markers_key(stream: &str) -> String {
    format!("{stream}:published")
}

/// NOGROUP (no such stream or group) becomes [`BusError::NoGroup`].
fn group_error(stream: &str, group: &str) -> impl FnOnce(redis::RedisError) -> BusError {
    move |error| {
        if error.code() == Some("NOGROUP") { BusError::no_group(stream, group) } else { BusError::Redis(error) }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait::async_trait]
impl Backend for RedisStreams {
    fn known_streams(&self) -> &KnownStreams {
        &self.streams
    }

    async fn append_one(&self, event: Publication<'_>) -> Result<bool, BusError> {
        let mut connection = self.connection.clone();
        let appended: i64 = self.publication(&event, epoch_millis(Utc::now())).invoke_async(&mut connection).await?;
        Ok(appended == 1)
    }

    async fn append_all(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError> {
        let now_ms = epoch_millis(Utc::now());
        let invocations: Vec<_> = events.iter().map(|event| self.publication(event, now_ms)).collect();
        // One round trip; Redis runs the scripts in this order. The script is
        // loaded first, as a pipeline cannot fall back from EVALSHA by itself.
        let mut pipeline = redis::pipe();
        pipeline.load_script(&self.publish).ignore();
        for invocation in &invocations {
            pipeline.invoke_script(invocation);
        }
        let mut connection = self.connection.clone();
        let appended: Vec<i64> = pipeline.query_async(&mut connection).await?;
        Ok(appended.into_iter().map(|n| n == 1).collect())
    }

    async fn create_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            // BUSYGROUP: it exists already, which is what we want.
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    async fn read_new(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        // `max` is at least 1 here, which matters: COUNT 0 would mean "no limit" to Redis.
        let mut command = redis::cmd("XREADGROUP");
        command.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(max);
        let reply: Value = if block.is_zero() {
            let mut connection = self.connection.clone();
            command.arg("STREAMS").arg(stream).arg(">");
            command.query_async(&mut connection).await.map_err(group_error(stream, group))?
        } else {
            // BLOCK 0 would mean "forever": round a sub-millisecond block up.
            command.arg("BLOCK").arg(millis(block).max(1)).arg("STREAMS").arg(stream).arg(">");
            let mut connection = self.blocking.take().await?;
            let answered = tokio::time::timeout(block + RESPONSE_TIMEOUT, command.query_async(&mut connection)).await;
            match answered {
                Ok(Ok(reply)) => {
                    self.blocking.give_back(connection);
                    reply
                }
                // The connection is dropped: it may be broken or still owe an answer.
                Ok(Err(error)) => return Err(group_error(stream, group)(error)),
                Err(_elapsed) => {
                    return Err(BusError::Redis(
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "blocking XREADGROUP did not answer").into(),
                    ));
                }
            }
        };
        let entries = read_reply(stream, reply)?;
        // A new entry's first delivery: XREADGROUP with `>` only hands out entries never delivered.
        self.deliveries(stream, group, entries.into_iter().map(|entry| (entry, 1)).collect()).await
    }

    async fn acknowledge(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        let _: i64 = redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(ids.iter().map(|id| id.0.as_str()).collect::<Vec<_>>())
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut connection = self.connection.clone();
        let reply: Value = self
            .reclaim
            .key(stream)
            .arg(group)
            .arg(consumer)
            .arg(millis(min_idle))
            .arg(max)
            .invoke_async(&mut connection)
            .await
            .map_err(group_error(stream, group))?;
        let mut entries = Vec::new();
        for item in array(reply).ok_or_else(|| BusError::malformed(stream, "", "reclaim reply is not an array"))? {
            let mut parts = array(item).unwrap_or_default().into_iter();
            let (Some(id), Some(fields), Some(count)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(BusError::malformed(stream, "", "reclaimed entry is not [id, fields, count]"));
            };
            let entry = RawEntry::parse(stream, Value::Array(vec![id, fields]))?;
            let count = match count {
                Value::Int(count) => u64::try_from(count).unwrap_or(0),
                _ => return Err(BusError::malformed(stream, &entry.id, "delivery count is not an integer")),
            };
            entries.push((entry, count));
        }
        self.deliveries(stream, group, entries).await
    }

    async fn bury(&self, stream: &str, group: &str, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .dead_letter
            .key(stream)
            .key(dead_letter_stream(stream))
            .arg(group)
            .arg(&delivery.id.0)
            .arg(&delivery.event_id)
            .arg(&delivery.payload)
            .arg(reason)
            .arg(delivery.delivery_count)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    async fn dead_letter_page(&self, stream: &str, query: &DeadLetterQuery) -> Result<DeadLetterPage, BusError> {
        let dead = dead_letter_stream(stream);
        let (letters, next) = self
            .scan(&dead, query, |entry| {
                let letter = dead_letter_of(&dead, entry);
                query.matches(&letter).then_some(letter)
            })
            .await?;
        Ok(DeadLetterPage { letters, next })
    }

    async fn find_dead_letters(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<DeadLetter>>, BusError> {
        let dead = dead_letter_stream(stream);
        let mut connection = self.connection.clone();
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if !is_entry_id(&id.0) {
                found.push(None);
                continue;
            }
            let reply: Value =
                redis::cmd("XRANGE").arg(&dead).arg(&id.0).arg(&id.0).query_async(&mut connection).await?;
            let items = array(reply).ok_or_else(|| BusError::malformed(&dead, "", "XRANGE reply is not an array"))?;
            match items.into_iter().next() {
                Some(item) => found.push(Some(dead_letter_of(&dead, &RawEntry::parse(&dead, item)?))),
                None => found.push(None),
            }
        }
        Ok(found)
    }

    async fn replay(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<EntryId>>, BusError> {
        let (dead, markers) = (dead_letter_stream(stream), markers_key(stream));
        let mut connection = self.connection.clone();
        let mut replayed = Vec::with_capacity(ids.len());
        for id in ids {
            if !is_entry_id(&id.0) {
                replayed.push(None);
                continue;
            }
            let new_id: String = self
                .replay
                .key(stream)
                .key(&dead)
                .key(&markers)
                .arg(&id.0)
                .arg(epoch_millis(Utc::now()))
                .arg(self.config.max_len.max(1))
                .invoke_async(&mut connection)
                .await?;
            replayed.push((!new_id.is_empty()).then_some(EntryId(new_id)));
        }
        Ok(replayed)
    }

    async fn discard(&self, stream: &str, ids: &[EntryId], discard: &Discard) -> Result<Vec<bool>, BusError> {
        let (dead, discarded) = (dead_letter_stream(stream), discarded_stream(stream));
        let mut connection = self.connection.clone();
        let mut answers = Vec::with_capacity(ids.len());
        for id in ids {
            if !is_entry_id(&id.0) {
                answers.push(false);
                continue;
            }
            let moved: i64 = self
                .discard
                .key(&dead)
                .key(&discarded)
                .arg(&id.0)
                .arg(&discard.by)
                .arg(&discard.reason)
                .arg(self.config.max_len.max(1))
                .invoke_async(&mut connection)
                .await?;
            answers.push(moved == 1);
        }
        Ok(answers)
    }

    async fn discarded_page(&self, stream: &str, query: &DeadLetterQuery) -> Result<DiscardedPage, BusError> {
        let discarded = discarded_stream(stream);
        let (records, next) = self
            .scan(&discarded, query, |entry| {
                let record = discarded_of(&discarded, entry);
                query.matches(&record.letter).then_some(record)
            })
            .await?;
        Ok(DiscardedPage { records, next })
    }

    async fn pending_count(&self, stream: &str, group: &str) -> Result<u64, BusError> {
        let mut connection = self.connection.clone();
        let reply: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(&mut connection)
            .await
            .map_err(group_error(stream, group))?;
        // The summary form: [count, smallest id, greatest id, [[consumer, count], ...]].
        match array(reply).and_then(|summary| summary.into_iter().next()) {
            Some(Value::Int(count)) => Ok(u64::try_from(count).unwrap_or(0)),
            _ => Err(BusError::malformed(stream, "", "XPENDING summary has no count")),
        }
    }

    async fn leave_group(&self, stream: &str, group: &str, consumer: &str) -> Result<bool, BusError> {
        let mut connection = self.connection.clone();
        let left: Result<i64, _> = self.leave.key(stream).arg(group).arg(consumer).invoke_async(&mut connection).await;
        match left.map_err(group_error(stream, group)) {
            Ok(left) => Ok(left == 1),
            // No group (or no stream): there is nothing to leave.
            Err(BusError::NoGroup { .. }) => Ok(true),
            Err(error) => Err(error),
        }
    }

    async fn trim_stream(&self, stream: &str, now: DateTime<Utc>) -> Result<StreamStats, BusError> {
        let window_cutoff = epoch_millis(before(now, self.config.dedupe_window));
        let dead_cutoff = epoch_millis(before(now, self.config.dead_letter_window));
        let (dead, markers) = (dead_letter_stream(stream), markers_key(stream));
        let mut connection = self.connection.clone();
        let mut trimmed = 0;
        let mut round = 0;
        loop {
            round += 1;
            let reply: Value = self
                .trim
                .key(stream)
                .key(&dead)
                .key(&markers)
                .key(discarded_stream(stream))
                .arg(window_cutoff)
                .arg(dead_cutoff)
                .arg(self.config.max_len.max(1))
                .arg(TRIM_LIMIT)
                .invoke_async(&mut connection)
                .await?;
            let reply = TrimReply::parse(stream, reply)?;
            trimmed += reply.removed + reply.dead_removed;
            // An approximate trim removes whole nodes, so "near the limit" means "maybe more".
            let more = reply.removed.max(reply.dead_removed) >= TRIM_LIMIT / 2 || reply.markers_removed >= TRIM_LIMIT;
            if !more || round >= TRIM_ROUNDS {
                return Ok(StreamStats {
                    entries: reply.entries,
                    oldest_entry: reply.oldest_entry,
                    dedupe_markers: reply.markers,
                    dead_letters: reply.dead_letters,
                    trimmed,
                });
            }
        }
    }
}
