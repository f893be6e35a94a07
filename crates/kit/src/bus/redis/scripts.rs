//! The Lua scripts of the Redis backend: each touches several keys of one
//! stream, so what must not be interleaved with other clients runs in Redis,
//! in one step.

/// Checks the dedupe marker and appends, atomically, capping the stream at
/// about `max_len` entries (the safety net, nearly free at append time). The
/// marker is set after the append rather than before it: if the append failed
/// (a key of the wrong type, out of memory) a marker set first would make the
/// event "published" without any entry; inside one script both orders are
/// equally atomic.
/// KEYS: stream, markers. ARGV: event id, payload, now in ms, max len.
pub(super) const PUBLISH_SCRIPT: &str = r"
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
pub(super) const TRIM_SCRIPT: &str = r"
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
pub(super) const RECLAIM_SCRIPT: &str = r"
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
pub(super) const DEAD_LETTER_SCRIPT: &str = r"
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
pub(super) const REPLAY_SCRIPT: &str = r"
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
pub(super) const DISCARD_SCRIPT: &str = r"
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
pub(super) const LEAVE_SCRIPT: &str = r"
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";
