//! GCRA in Redis: one script per check, keyed by the quota's key, on Redis's
//! clock (`TIME`), so replicas with skewed clocks still share one quota.

use std::time::Duration;

use super::{Quota, ThrottleError, Verdict};

/// The prefix of quota keys unless configured: `quota:<key>`.
pub const DEFAULT_KEY_PREFIX: &str = "quota:";

/// Governor's GCRA. KEYS[1] holds the theoretical arrival time (TAT) in
/// microseconds of Redis's clock; ARGV[1] is the emission interval (µs per
/// call), ARGV[2] the tolerance (interval × (burst − 1)). A call is admitted
/// when now ≥ TAT − tolerance, and moves TAT to max(TAT, now) + interval.
/// Answers 0 when admitted, else the microseconds until a call would be.
///
/// The key expires when TAT passes: from then on a missing key and an old one
/// mean the same (a full burst), so idle keys cost nothing. `TIME` before a
/// write is allowed because Redis (5 and later, the only mode of 7) replicates
/// a script's effects, not the script: `redis.replicate_commands()` is not needed.
const GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local earliest = tat - tolerance
if now < earliest then
  return earliest - now
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return 0
";

/// Quotas kept in Redis, shared by every client of the same keys (see the
/// module's documentation for the semantics). Connects lazily.
#[derive(Clone)]
pub struct RedisQuota {
    connection: redis::aio::ConnectionManager,
    script: redis::Script,
    prefix: String,
}

impl RedisQuota {
    /// A client of `url` (`redis://host:6379/0`) whose connects and answers
    /// time out after `timeout`, with keys `quota:<key>`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, ThrottleError> {
        let client = crate::redis_tcp::client(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self { connection, script: redis::Script::new(GCRA_SCRIPT), prefix: DEFAULT_KEY_PREFIX.to_string() })
    }

    /// The same with keys `<prefix><key>`.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// The Redis key that holds `key`'s state.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Admits one call for `key` under `quota` (`EVALSHA`, the script loaded
    /// again if Redis lost it), or answers how long until one would be. An
    /// error when Redis cannot be asked.
    pub async fn check(&self, key: &str, quota: Quota) -> Result<Verdict, ThrottleError> {
        // Microseconds per call: a rate above 1,000,000/s counts as 1,000,000/s.
        let interval = (1_000_000 / u64::from(quota.rate_per_second.max(1))).max(1);
        let tolerance = interval * u64::from(quota.burst.max(1) - 1);
        let mut connection = self.connection.clone();
        let wait: i64 =
            self.script.key(self.redis_key(key)).arg(interval).arg(tolerance).invoke_async(&mut connection).await?;
        match u64::try_from(wait) {
            Ok(0) => Ok(Ok(())),
            Ok(micros) => Ok(Err(Duration::from_micros(micros))),
            Err(_) => Err(ThrottleError::Unexpected(wait)),
        }
    }
}
