//! Percent-decoding of path text: literals compare decoded, captured values
//! are decoded (a multi-segment one keeping `%2F`), and a stray `%` is refused.

use percent_encoding::percent_decode_str;

/// Path text that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum BadEscape {
    /// A `%` not followed by two hex digits.
    #[error("'%' at byte {at} does not start a percent-escape (%XX)")]
    StrayPercent {
        /// Where the `%` is in the raw text.
        at: usize,
    },
    /// The decoded bytes are not UTF-8.
    #[error("not UTF-8 once percent-decoded (byte {valid_up_to} of the decoded value)")]
    NotUtf8 {
        /// How many decoded bytes are valid.
        valid_up_to: usize,
    },
}

/// Whether `raw`, percent-decoded, is `decoded`. A malformed escape matches nothing.
pub(super) fn literal_eq(raw: &str, decoded: &str) -> bool {
    check_escapes(raw).is_ok() && percent_decode_str(raw).eq(decoded.bytes())
}

/// Refuses a `%` that does not start `%XX`: the crate's decoder would keep it
/// as it is, and a caller who sent it meant something else.
fn check_escapes(raw: &str) -> Result<(), BadEscape> {
    let bytes = raw.as_bytes();
    for (index, _) in raw.match_indices('%') {
        let hex = bytes.get(index + 1..index + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !hex {
            return Err(BadEscape::StrayPercent { at: index });
        }
    }
    Ok(())
}

/// Decodes every escape.
pub(super) fn decode(raw: &str) -> Result<String, BadEscape> {
    check_escapes(raw)?;
    from_utf8(percent_decode_str(raw).collect())
}

/// Decodes everything but `%2F` (any case), which stays as written.
pub(super) fn decode_keeping_slashes(raw: &str) -> Result<String, BadEscape> {
    check_escapes(raw)?;
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = find_encoded_slash(rest) {
        bytes.extend(percent_decode_str(&rest[..at]));
        bytes.extend_from_slice(&rest.as_bytes()[at..at + 3]);
        rest = &rest[at + 3..];
    }
    bytes.extend(percent_decode_str(rest));
    from_utf8(bytes)
}

fn find_encoded_slash(raw: &str) -> Option<usize> {
    raw.match_indices('%')
        .map(|(at, _)| at)
        .find(|&at| raw.get(at + 1..at + 3).is_some_and(|h| h.eq_ignore_ascii_case("2f")))
}

fn from_utf8(bytes: Vec<u8>) -> Result<String, BadEscape> {
    String::from_utf8(bytes).map_err(|e| BadEscape::NotUtf8 { valid_up_to: e.utf8_error().valid_up_to() })
}
