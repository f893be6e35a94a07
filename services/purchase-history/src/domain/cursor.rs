//! The keyset page token of `ListPurchases`.

use chrono::{DateTime, Utc};
use vocab::{MAX_ID_LEN, PurchaseId};

use super::Purchase;

/// Where a page of `ListPurchases` ends: the next page holds what sorts
/// strictly after it in (purchased_at, purchase_id) descending order, so new
/// purchases (newer, hence on earlier pages) never shift later pages. Built
/// only from a listed purchase ([`PageCursor::after`]) or a token this service
/// wrote ([`PageCursor::decode`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    purchased_at: DateTime<Utc>,
    purchase_id: PurchaseId,
}

/// Why a page token is not one [`PageCursor::encode`] wrote (the text completes "the token …").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Longer than any token written.
    #[error("is too long")]
    TooLong,
    /// Not hex.
    #[error("is not a page token")]
    NotHex,
    /// No bytes at all.
    #[error("is empty")]
    Empty,
    /// Another format version.
    #[error("is not a page token of this version")]
    Version,
    /// Shorter than a time.
    #[error("is truncated")]
    Truncated,
    /// A time outside what a purchase may hold.
    #[error("holds a time outside years 1 to 9999")]
    TimeOutOfRange,
    /// Id bytes that are not text.
    #[error("holds an id that is not UTF-8")]
    IdNotUtf8,
    /// An id a purchase could not have.
    #[error("holds an invalid id: {0}")]
    InvalidId(vocab::Invalid),
}

/// First byte of an encoded cursor, so the format can change without misreading old tokens.
const CURSOR_VERSION: u8 = 1;
/// Longest token decoded: version, 8 bytes of time, an id of at most 100 characters of 4 bytes, in hex.
const MAX_TOKEN_LEN: usize = 2 * (1 + 8 + 4 * MAX_ID_LEN);

impl PageCursor {
    /// The cursor after `purchase`, the last of a page.
    pub fn after(purchase: &Purchase) -> Self {
        Self { purchased_at: purchase.purchased_at, purchase_id: purchase.purchase_id.clone() }
    }

    /// The last listed purchase's time.
    pub fn purchased_at(&self) -> DateTime<Utc> {
        self.purchased_at
    }

    /// The last listed purchase's id.
    pub fn purchase_id(&self) -> &PurchaseId {
        &self.purchase_id
    }

    /// The opaque token: hex of a version byte, the time in microseconds (big-endian) and the id's bytes.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(9 + self.purchase_id.len());
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(&self.purchased_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.purchase_id.as_bytes());
        hex::encode(bytes)
    }

    /// Reads a token [`PageCursor::encode`] wrote; anything else is refused, saying why.
    pub fn decode(token: &str) -> Result<Self, CursorError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(CursorError::TooLong);
        }
        let bytes = hex::decode(token).map_err(|_| CursorError::NotHex)?;
        let (version, rest) = bytes.split_first().ok_or(CursorError::Empty)?;
        if *version != CURSOR_VERSION {
            return Err(CursorError::Version);
        }
        let (micros, id) = rest.split_first_chunk::<8>().ok_or(CursorError::Truncated)?;
        let purchased_at = DateTime::from_timestamp_micros(i64::from_be_bytes(*micros))
            .filter(|t| kit::time::in_range(*t))
            .ok_or(CursorError::TimeOutOfRange)?;
        let purchase_id = std::str::from_utf8(id).map_err(|_| CursorError::IdNotUtf8)?;
        let purchase_id = PurchaseId::parse(purchase_id).map_err(CursorError::InvalidId)?;
        Ok(Self { purchased_at, purchase_id })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::domain::tests::{event, t0};

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_write() {
        let cursor = PageCursor { purchased_at: t0(), purchase_id: PurchaseId::parse("p-ü-1").unwrap() };
        assert_eq!(PageCursor::decode(&cursor.encode()), Ok(cursor.clone()));
        assert_eq!(PageCursor::after(&Purchase::from_event(&event()).unwrap()).purchase_id.as_str(), "p-1");
        for bad in ["", "zz", "00", "01", "0100000000", "02000000000000000070", &"a".repeat(2000)] {
            assert!(PageCursor::decode(bad).is_err(), "{bad}");
        }
        // A cursor with an empty id or a time past year 9999 was never written.
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&t0().timestamp_micros().to_be_bytes());
        assert!(PageCursor::decode(&hex::encode(&bytes)).is_err());
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&i64::MAX.to_be_bytes());
        bytes.push(b'p');
        assert!(PageCursor::decode(&hex::encode(&bytes)).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(token in prop_oneof![".{0,64}", "[0-9a-f]{0,300}", "01[0-9a-f]{16,40}"]) {
            let _ = PageCursor::decode(&token);
        }

        #[test]
        fn cursors_round_trip(
            micros in -62_135_596_800_000_000i64..=253_402_300_799_999_999,
            purchase_id in "[^\\s\\p{Cc}]{1,100}",
        ) {
            let purchase_id = PurchaseId::parse(&purchase_id).unwrap();
            let cursor = PageCursor { purchased_at: DateTime::from_timestamp_micros(micros).unwrap(), purchase_id };
            prop_assert_eq!(PageCursor::decode(&cursor.encode()), Ok(cursor));
        }
    }
}
