//! `google.protobuf.Timestamp` ⇄ `chrono`, once for every service.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//!
//! let placed = Utc.with_ymd_and_hms(2025, 11, 13, 2, 13, 20).unwrap();
//! let wire = kit::time::to_timestamp(placed);
//! assert_eq!(kit::time::from_timestamp(&wire), Ok(placed));
//! // Out of the protobuf range (years 1 to 9999), or nanos not in [0, 1e9): refused.
//! let bad = prost_types::Timestamp { seconds: 0, nanos: 1_500_000_000 };
//! assert!(kit::time::from_timestamp(&bad).is_err());
//! ```

use chrono::{DateTime, Utc};

/// 0001-01-01T00:00:00Z, the earliest time a protobuf Timestamp may hold.
const MIN_SECONDS: i64 = -62_135_596_800;
/// 9999-12-31T23:59:59Z, the latest.
const MAX_SECONDS: i64 = 253_402_300_799;

/// Whether a time fits a protobuf Timestamp (years 1 to 9999): check times a
/// caller or a source supplies before storing them, so they read back.
pub fn in_range(time: DateTime<Utc>) -> bool {
    (MIN_SECONDS..=MAX_SECONDS).contains(&time.timestamp())
}

/// The protobuf form of a time.
pub fn to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    // chrono keeps a leap second as nanos >= 1e9; protobuf has no leap seconds.
    let nanos = time.timestamp_subsec_nanos().min(999_999_999);
    prost_types::Timestamp { seconds: time.timestamp(), nanos: nanos as i32 }
}

/// A caller's Timestamp as a time; refuses what the protobuf spec does not
/// allow (years outside 1..=9999, nanos outside [0, 1e9)), naming why.
pub fn from_timestamp(timestamp: &prost_types::Timestamp) -> Result<DateTime<Utc>, String> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&timestamp.seconds) {
        return Err(format!("seconds {} is outside years 1 to 9999", timestamp.seconds));
    }
    let nanos = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| format!("nanos {} is outside 0 to 999999999", timestamp.nanos))?;
    DateTime::from_timestamp(timestamp.seconds, nanos).ok_or_else(|| "not a valid time".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_ends_are_accepted_and_beyond_them_refused() {
        for seconds in [MIN_SECONDS, 0, MAX_SECONDS] {
            let t = prost_types::Timestamp { seconds, nanos: 999_999_999 };
            assert_eq!(from_timestamp(&t).map(to_timestamp), Ok(t));
        }
        for (seconds, nanos) in [(MIN_SECONDS - 1, 0), (MAX_SECONDS + 1, 0), (0, -1), (0, 1_000_000_000), (i64::MAX, 0)]
        {
            assert!(from_timestamp(&prost_types::Timestamp { seconds, nanos }).is_err(), "{seconds} {nanos}");
        }
    }
}
