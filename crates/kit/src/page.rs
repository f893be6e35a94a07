//! Pages of a list RPC, the same in every service: the size a caller may ask
//! for, and the next-page token of a page read one row longer than asked.
//!
//! ```
//! use kit::error::BadRequest;
//! use kit::page::PageSize;
//!
//! let mut bad = BadRequest::new();
//! let size = PageSize::clamped(0, &mut bad);
//! assert_eq!(size.get(), kit::page::DEFAULT_PAGE_SIZE);
//! // Read one row more than the page holds: its presence says another page follows.
//! let rows: Vec<u32> = (1..=51).collect();
//! assert_eq!(size.rows_to_read(), 51);
//! let (page, next) = size.split(rows, |last| format!("after:{last}"));
//! assert_eq!((page.len(), next.as_str()), (50, "after:50"));
//! ```

use crate::error::{BadRequest, ViolationReason};

/// The page size when the caller asks for none (0).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest page; [`PageSize::clamped`] answers this many for larger requests.
pub const MAX_PAGE_SIZE: u32 = 500;

/// How many rows one page holds: 1 to [`MAX_PAGE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// The page size a request's `page_size` asks for: 0 is the default, more than
    /// the largest is the largest, and a negative one is a `page_size` violation
    /// recorded in `bad` (the default stands in, so the other fields are still checked).
    pub fn clamped(requested: i32, bad: &mut BadRequest) -> Self {
        match u32::try_from(requested) {
            Ok(0) => Self(DEFAULT_PAGE_SIZE),
            Ok(n) => Self(n.min(MAX_PAGE_SIZE)),
            Err(_) => {
                bad.violation("page_size", ViolationReason::OutOfRange, "must not be negative");
                Self(DEFAULT_PAGE_SIZE)
            }
        }
    }

    /// The rows one page holds.
    pub fn get(self) -> u32 {
        self.0
    }

    /// How many rows to read for one page: one more, to learn whether another follows.
    pub fn rows_to_read(self) -> i64 {
        i64::from(self.0) + 1
    }

    /// The page out of `rows` (read with [`rows_to_read`](Self::rows_to_read)) and
    /// the token of the next page, made by `token` from the page's last row; empty
    /// when no row follows.
    pub fn split<T>(self, mut rows: Vec<T>, token: impl FnOnce(&T) -> String) -> (Vec<T>, String) {
        let size = self.0 as usize;
        if rows.len() <= size {
            return (rows, String::new());
        }
        rows.truncate(size);
        let next = rows.last().map(token).unwrap_or_default();
        (rows, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_defaulted_clamped_and_negative_ones_refused_by_name() {
        let mut bad = BadRequest::new();
        assert_eq!(PageSize::clamped(0, &mut bad).get(), DEFAULT_PAGE_SIZE);
        assert_eq!(PageSize::clamped(7, &mut bad).get(), 7);
        assert_eq!(PageSize::clamped(10_000, &mut bad).get(), MAX_PAGE_SIZE);
        assert!(bad.is_empty());
        assert_eq!(PageSize::clamped(-1, &mut bad).get(), DEFAULT_PAGE_SIZE);
        assert_eq!(crate::error::violation_reasons(&bad.into_status())[0].0, "page_size");
    }

    #[test]
    fn a_full_page_has_a_token_only_when_a_row_follows() {
        let size = PageSize(2);
        assert_eq!(size.split(vec![1, 2], |n| n.to_string()), (vec![1, 2], String::new()));
        assert_eq!(size.split(vec![1, 2, 3], |n| n.to_string()), (vec![1, 2], "2".to_string()));
        assert_eq!(size.split(Vec::<i32>::new(), |n| n.to_string()), (vec![], String::new()));
    }
}
