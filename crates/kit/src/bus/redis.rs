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
//! set is pruned by [`EventBus::trim`] with ZREMRANGEBYRANK, a bounded number
//! of members per call (docs/OPERATIONS.md has the measured bytes per event).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

use super::{
    BusConfig, BusError, DEAD_LETTER_SCAN_LIMIT, DeadLetter, DeadLetterPage, DeadLetterQuery, Delivery, Discard,
    DiscardedDeadLetter, DiscardedPage, EntryId, EventBus, KnownStreams, Publication, StreamStats, before,
    dead_letter_stream, discarded_stream, epoch_millis,
};

/// How long any command but a blocking read may take before it fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting may take before a call fails.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle dedicated connections kept for blocking reads.
const MAX_IDLE_BLOCKING: usize = 8;

/// Entries (or markers) one trim script removes at most from each key: a few
/// milliseconds of Redis's time, so a trim never stalls other clients.
const TRIM_LIMIT: u64 = 10_000;

/// Trim scripts one [`EventBus::trim`] runs at most; what is left waits for the next trim.
const TRIM_ROUNDS: usize = 20;

/// Checks the dedupe marker and appends, atomically, capping the stream at
/// about `max_len` entries (the safety net, nearly free at append time). The
/// marker is set after the append rather than before it: if the append failed
/// (a key of the wrong type, out of memory) a marker set first would make the
/// event "published" without any entry; inside one script both orders are
/// equally atomic.
/// KEYS: stream, markers. ARGV: event id, payload, now in ms, max len.
const PUBLISH_SCRIPT: &str = r"
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'event_id', ARGV[1], 'payload', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
";

/// Trims a stream, its dead-letter stream and its markers, and answers what
/// they keep; all in one script, so no read, ack or group creation comes
/// between deciding what no group needs and dropping it.
///
/// What a group still needs starts at its last delivered entry (everything
/// before it was delivered) or its oldest pending entry, whichever is older;
/// the stream keeps everything from the oldest such entry of all groups on
/// (XTRIM MINID). A stream without groups keeps the dedupe window instead.
/// Then the MAXLEN floor, whatever the groups need. Approximate (`~`) trims
/// remove whole nodes only, which is what makes them cheap; LIMIT bounds the
/// work of one call.
/// KEYS: stream, dead-letter stream, markers, discarded dead letters (kept as
/// long as dead letters).
/// ARGV: window cutoff in ms, dead-letter cutoff in ms, max len, limit.
/// Answers: removed from the stream, from the dead-letter stream, markers
/// removed, stream length, oldest entry id (or ''), markers, dead letters.
const TRIM_SCRIPT: &str = r"
local limit = tonumber(ARGV[4])
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local removed, dead_removed, markers_removed = 0, 0, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local keep = false
  for _, fields in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local group = {}
    for i = 1, #fields, 2 do group[fields[i]] = fields[i + 1] end
    local need = group['last-delivered-id']
    if group['pending'] > 0 then
      local oldest = redis.call('XPENDING', KEYS[1], group['name'])[2]
      if oldest and older(oldest, need) then need = oldest end
    end
    if not keep or older(need, keep) then keep = need end
  end
  if not keep then keep = ARGV[1] .. '-0' end
  removed = redis.call('XTRIM', KEYS[1], 'MINID', '~', keep, 'LIMIT', limit)
    + redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3], 'LIMIT', limit)
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  dead_removed = redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[2] .. '-0', 'LIMIT', limit)
    + redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[3], 'LIMIT', limit)
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  dead_removed = dead_removed + redis.call('XTRIM', KEYS[4], 'MINID', '~', ARGV[2] .. '-0', 'LIMIT', limit)
end
local expired = redis.call('ZCOUNT', KEYS[3], '-inf', '(' .. ARGV[1])
if expired > 0 then
  markers_removed = math.min(expired, limit)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, markers_removed - 1)
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local oldest = ''
if first then oldest = first[1] end
return {removed, dead_removed, markers_removed, redis.call('XLEN', KEYS[1]), oldest,
  redis.call('ZCARD', KEYS[3]), redis.call('XLEN', KEYS[2])}
";

/// Claims stale pending entries and answers each with its delivery count
/// (XAUTOCLAIM increments it but does not report it). XAUTOCLAIM scans a
/// bounded part of the pending list per call, so the script follows its
/// cursor until it has `max` entries or went round; the number of rounds is
/// capped so one call never blocks Redis for long.
/// KEYS: stream. ARGV: group, consumer, min idle in ms, max.
const RECLAIM_SCRIPT: &str = r"
local max = tonumber(ARGV[4])
local claimed = {}
local cursor = '0-0'
local rounds = 0
repeat
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', max - #claimed)
  cursor = reply[1]
  rounds = rounds + 1
  for _, entry in ipairs(reply[2]) do
    -- Redis 6.2 answers nil (false here) for an entry deleted from the stream.
    if entry then
      local info = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
      local count = 0
      if info[1] then count = info[1][4] end
      claimed[#claimed + 1] = {entry[1], entry[2], count}
    end
  end
until cursor == '0-0' or #claimed >= max or rounds >= 100
return claimed
";

/// Acknowledges first (it validates the id, before anything is written), then
/// appends to the dead-letter stream: both or, on a bad id, neither.
/// KEYS: stream, dead-letter stream. ARGV: group, original id, event id, payload, reason, delivery count.
const DEAD_LETTER_SCRIPT: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', 'original_id', ARGV[2], 'event_id', ARGV[3], 'payload', ARGV[4], 'reason', ARGV[5],
  'group', ARGV[1], 'delivery_count', ARGV[6])
return 1
";

/// Appends a dead letter back to its stream as a new entry, renews its event
/// id's dedupe marker (a replay appends whatever the window says; a producer
/// publishing the id again afterwards appends nothing) and removes the dead
/// letter: all or nothing. Answers the new entry's id, or '' when there is no
/// such dead letter.
/// KEYS: stream, dead-letter stream, markers. ARGV: dead letter id, now in ms, max len.
const REPLAY_SCRIPT: &str = r"
local found = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])[1]
if not found then return '' end
local fields, event_id, payload = found[2], '', ''
for i = 1, #fields, 2 do
  if fields[i] == 'event_id' then event_id = fields[i + 1] end
  if fields[i] == 'payload' then payload = fields[i + 1] end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event_id', event_id, 'payload', payload)
redis.call('ZADD', KEYS[3], ARGV[2], event_id)
redis.call('XDEL', KEYS[2], ARGV[1])
return id
";

/// Moves a dead letter to the stream of discarded ones, with who discarded it
/// and why. Answers 1, or 0 when there is no such dead letter.
/// KEYS: dead-letter stream, discarded stream. ARGV: dead letter id, by, reason, max len.
const DISCARD_SCRIPT: &str = r"
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not found then return 0 end
local copy = {'dead_letter_id', ARGV[1]}
for _, value in ipairs(found[2]) do copy[#copy + 1] = value end
copy[#copy + 1] = 'discarded_by'
copy[#copy + 1] = ARGV[2]
copy[#copy + 1] = 'discard_reason'
copy[#copy + 1] = ARGV[3]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(copy))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
";

/// Deletes a consumer from its group unless it holds pending entries, which
/// deleting it would drop from the pending list (so nobody could reclaim them).
/// KEYS: stream. ARGV: group, consumer. Answers 1 when it is gone, 0 when it stays.
const LEAVE_SCRIPT: &str = r"
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";

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
        self.streams.note(event.stream);
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
        if query.max == 0 {
            return Ok((kept, None));
        }
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
                    self.dead_letter(stream, group, &delivery, &format!("malformed entry: {reason}")).await?;
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
impl EventBus for RedisStreams {
    async fn publish(&self, stream: &str, event_id: &str, payload: &[u8]) -> Result<bool, BusError> {
        let mut connection = self.connection.clone();
        let event = Publication { stream, event_id, payload };
        let appended: i64 = self.publication(&event, epoch_millis(Utc::now())).invoke_async(&mut connection).await?;
        Ok(appended == 1)
    }

    async fn publish_all(&self, events: &[Publication<'_>]) -> Result<Vec<bool>, BusError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
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

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        self.streams.note(stream);
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

    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        // COUNT 0 would mean "no limit" to Redis.
        if max == 0 {
            return Ok(Vec::new());
        }
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

    async fn ack(&self, stream: &str, group: &str, ids: &[EntryId]) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let _: i64 = redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(ids.iter().map(|id| id.0.as_str()).collect::<Vec<_>>())
            .query_async(&mut connection)
            .await?;
        Ok(())
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

    async fn dead_letter(&self, stream: &str, group: &str, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
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

    async fn list_dead_letters(&self, stream: &str, query: &DeadLetterQuery) -> Result<DeadLetterPage, BusError> {
        let dead = dead_letter_stream(stream);
        let (letters, next) = self
            .scan(&dead, query, |entry| {
                let letter = dead_letter_of(&dead, entry);
                query.matches(&letter).then_some(letter)
            })
            .await?;
        Ok(DeadLetterPage { letters, next })
    }

    async fn dead_letters_by_id(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<DeadLetter>>, BusError> {
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

    async fn replay_dead_letters(&self, stream: &str, ids: &[EntryId]) -> Result<Vec<Option<EntryId>>, BusError> {
        self.streams.note(stream);
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

    async fn discard_dead_letters(
        &self,
        stream: &str,
        ids: &[EntryId],
        discard: &Discard,
    ) -> Result<Vec<bool>, BusError> {
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

    async fn discarded_dead_letters(&self, stream: &str, query: &DeadLetterQuery) -> Result<DiscardedPage, BusError> {
        let discarded = discarded_stream(stream);
        let (records, next) = self
            .scan(&discarded, query, |entry| {
                let record = discarded_of(&discarded, entry);
                query.matches(&record.letter).then_some(record)
            })
            .await?;
        Ok(DiscardedPage { records, next })
    }

    async fn pending(&self, stream: &str, group: &str) -> Result<u64, BusError> {
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

    async fn leave(&self, stream: &str, group: &str, consumer: &str) -> Result<bool, BusError> {
        let mut connection = self.connection.clone();
        let left: Result<i64, _> = self.leave.key(stream).arg(group).arg(consumer).invoke_async(&mut connection).await;
        match left.map_err(group_error(stream, group)) {
            Ok(left) => Ok(left == 1),
            // No group (or no stream): there is nothing to leave.
            Err(BusError::NoGroup { .. }) => Ok(true),
            Err(error) => Err(error),
        }
    }

    async fn trim(&self, stream: &str, now: DateTime<Utc>) -> Result<StreamStats, BusError> {
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

    fn streams(&self) -> Vec<String> {
        self.streams.list()
    }
}

/// What one run of [`TRIM_SCRIPT`] answers.
struct TrimReply {
    removed: u64,
    dead_removed: u64,
    markers_removed: u64,
    entries: u64,
    oldest_entry: Option<DateTime<Utc>>,
    markers: u64,
    dead_letters: u64,
}

impl TrimReply {
    fn parse(stream: &str, reply: Value) -> Result<Self, BusError> {
        let malformed = |reason: &str| BusError::malformed(stream, "", format!("trim reply: {reason}"));
        let items = array(reply).ok_or_else(|| malformed("not an array"))?;
        let [removed, dead_removed, markers_removed, entries, oldest, markers, dead_letters] =
            <[Value; 7]>::try_from(items).map_err(|_| malformed("not seven values"))?;
        let count = |value: Value| match value {
            Value::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            _ => Err(malformed("a count is not an integer")),
        };
        let oldest = bytes(oldest).ok_or_else(|| malformed("the oldest id is not a string"))?;
        Ok(Self {
            removed: count(removed)?,
            dead_removed: count(dead_removed)?,
            markers_removed: count(markers_removed)?,
            entries: count(entries)?,
            oldest_entry: entry_time(&String::from_utf8_lossy(&oldest)),
            markers: count(markers)?,
            dead_letters: count(dead_letters)?,
        })
    }
}

/// Whether `id` is a stream entry id as Redis writes them (`<ms>-<seq>`): what
/// else a caller names is no entry, rather than an error from Redis.
fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
}

/// When Redis appended the entry `id` (`<ms>-<seq>`); None for '' or an id Redis would not make.
fn entry_time(id: &str) -> Option<DateTime<Utc>> {
    let millis = id.split_once('-')?.0.parse::<i64>().ok()?;
    DateTime::from_timestamp_millis(millis)
}

/// A stream entry as Redis answers it: its id and its field/value pairs.
struct RawEntry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    /// `[id, [field, value, ...]]` (or a map of fields, in RESP3).
    fn parse(stream: &str, value: Value) -> Result<Self, BusError> {
        let mut parts = array(value).unwrap_or_default().into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            return Err(BusError::malformed(stream, "", "entry is not [id, fields]"));
        };
        let id = bytes(id)
            .and_then(|id| String::from_utf8(id).ok())
            .ok_or_else(|| BusError::malformed(stream, "", "entry id is not a string"))?;
        let pairs: Vec<(Value, Value)> = match fields {
            Value::Map(pairs) => pairs,
            Value::Array(flat) => {
                let mut flat = flat.into_iter();
                let mut pairs = Vec::new();
                while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                    pairs.push((name, value));
                }
                pairs
            }
            _ => return Err(BusError::malformed(stream, &id, "fields are not an array")),
        };
        let fields = pairs.into_iter().filter_map(|(name, value)| Some((bytes(name)?, bytes(value)?))).collect();
        Ok(Self { id, fields })
    }

    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(field, _)| field == name.as_bytes()).map(|(_, value)| value.as_slice())
    }

    /// A field that must be there, as text.
    fn text(&self, stream: &str, name: &str) -> Result<String, BusError> {
        let bytes = self.field(name).ok_or_else(|| BusError::malformed(stream, &self.id, format!("no {name}")))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| BusError::malformed(stream, &self.id, format!("{name} is not UTF-8")))
    }

    /// A field that may be missing (written by an older release), as text.
    fn optional_text(&self, name: &str) -> Option<String> {
        self.field(name).map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }

    fn delivery(&self, delivery_count: u64) -> Result<Delivery, &'static str> {
        let event_id = self.field("event_id").ok_or("no event_id field")?;
        let event_id = String::from_utf8(event_id.to_vec()).map_err(|_| "event_id is not UTF-8")?;
        let payload = self.field("payload").ok_or("no payload field")?.to_vec();
        Ok(Delivery { id: EntryId(self.id.clone()), event_id, payload, delivery_count })
    }
}

/// A dead letter from its entry on `dead` (the dead-letter stream, or the discarded one).
/// A dead letter from its entry on `dead`: never an error, since one bad entry must not
/// fail every listing; what cannot be read is left empty and said in `unreadable`.
fn dead_letter_of(dead: &str, entry: &RawEntry) -> DeadLetter {
    let mut problems = Vec::new();
    let mut text = |name: &str| {
        entry.text(dead, name).unwrap_or_else(|error| {
            problems.push(match error {
                BusError::Malformed { reason, .. } => reason,
                other => other.to_string(),
            });
            entry.optional_text(name).unwrap_or_default()
        })
    };
    let original_id = text("original_id");
    let event_id = text("event_id");
    let reason = text("reason");
    if entry.field("payload").is_none() {
        problems.push("no payload".to_string());
    }
    let unreadable = (!problems.is_empty()).then(|| format!("unreadable dead letter: {}", problems.join(", ")));
    if let Some(why) = &unreadable {
        tracing::warn!(stream = dead, id = %entry.id, why, "dead letter listed with what could be read");
    }
    DeadLetter {
        id: EntryId(entry.id.clone()),
        first_seen: entry_time(&original_id),
        original_id: EntryId(original_id),
        event_id,
        payload: entry.field("payload").map(<[u8]>::to_vec).unwrap_or_default(),
        reason,
        group: entry.optional_text("group"),
        delivery_count: entry.optional_text("delivery_count").and_then(|count| count.parse().ok()),
        dead_lettered_at: entry_time(&entry.id),
        unreadable,
    }
}

/// A discarded dead letter from its audit entry on `discarded` (as readable as [`dead_letter_of`]).
fn discarded_of(discarded: &str, entry: &RawEntry) -> DiscardedDeadLetter {
    let mut letter = dead_letter_of(discarded, entry);
    let text = |name: &str| entry.optional_text(name).unwrap_or_default();
    letter.id = EntryId(text("dead_letter_id"));
    letter.dead_lettered_at = entry_time(&letter.id.0);
    DiscardedDeadLetter {
        letter,
        discard: Discard { by: text("discarded_by"), reason: text("discard_reason") },
        discarded_at: entry_time(&entry.id).unwrap_or(DateTime::UNIX_EPOCH),
    }
}

/// XREADGROUP's answer: nil when the block ran out, else the entries of our one stream
/// (`[[name, [entry, ...]]]`, or a map in RESP3).
fn read_reply(stream: &str, reply: Value) -> Result<Vec<RawEntry>, BusError> {
    let per_stream: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        Value::Array(streams) => {
            streams.into_iter().filter_map(|pair| array(pair).and_then(|pair| pair.into_iter().nth(1))).collect()
        }
        _ => return Err(BusError::malformed(stream, "", "XREADGROUP reply is neither nil nor streams")),
    };
    let mut entries = Vec::new();
    for list in per_stream {
        for entry in array(list).unwrap_or_default() {
            entries.push(RawEntry::parse(stream, entry)?);
        }
    }
    Ok(entries)
}

fn array(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::Int(number) => Some(number.to_string().into_bytes()),
        _ => None,
    }
}
