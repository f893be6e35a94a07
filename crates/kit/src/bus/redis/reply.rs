//! Redis's replies as the backend reads them: stream entries, dead letters
//! (never an error: one bad entry must not fail every listing) and what a
//! trim script answers.

use chrono::{DateTime, Utc};
use redis::Value;

use super::super::{BusError, DeadLetter, Delivery, Discard, DiscardedDeadLetter, EntryId};

/// What one run of [`TRIM_SCRIPT`](super::scripts::TRIM_SCRIPT) answers.
pub(super) struct TrimReply {
    pub(super) removed: u64,
    pub(super) dead_removed: u64,
    pub(super) markers_removed: u64,
    pub(super) entries: u64,
    pub(super) oldest_entry: Option<DateTime<Utc>>,
    pub(super) markers: u64,
    pub(super) dead_letters: u64,
}

impl TrimReply {
    pub(super) fn parse(stream: &str, reply: Value) -> Result<Self, BusError> {
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
pub(super) fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
}

/// When Redis appended the entry `id` (`<ms>-<seq>`); None for '' or an id Redis would not make.
pub(super) fn entry_time(id: &str) -> Option<DateTime<Utc>> {
    let millis = id.split_once('-')?.0.parse::<i64>().ok()?;
    DateTime::from_timestamp_millis(millis)
}

/// A stream entry as Redis answers it: its id and its field/value pairs.
pub(super) struct RawEntry {
    pub(super) id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    /// `[id, [field, value, ...]]` (or a map of fields, in RESP3).
    pub(super) fn parse(stream: &str, value: Value) -> Result<Self, BusError> {
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

    pub(super) fn field(&self, name: &str) -> Option<&[u8]> {
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

    pub(super) fn delivery(&self, delivery_count: u64) -> Result<Delivery, &'static str> {
        let event_id = self.field("event_id").ok_or("no event_id field")?;
        let event_id = String::from_utf8(event_id.to_vec()).map_err(|_| "event_id is not UTF-8")?;
        let payload = self.field("payload").ok_or("no payload field")?.to_vec();
        Ok(Delivery { id: EntryId(self.id.clone()), event_id, payload, delivery_count })
    }
}

/// A dead letter from its entry on `dead` (the dead-letter stream, or the discarded one): never an error, since one bad entry must not
/// fail every listing; what cannot be read is left empty and said in `unreadable`.
pub(super) fn dead_letter_of(dead: &str, entry: &RawEntry) -> DeadLetter {
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
pub(super) fn discarded_of(discarded: &str, entry: &RawEntry) -> DiscardedDeadLetter {
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
pub(super) fn read_reply(stream: &str, reply: Value) -> Result<Vec<RawEntry>, BusError> {
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

/// The items of an array (or set) reply; nil is none.
pub(super) fn array(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// A reply's value as bytes (numbers as their digits).
pub(super) fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::Int(number) => Some(number.to_string().into_bytes()),
        _ => None,
    }
}
