//! Start-up problems reported all at once, one line each, so that a bad
//! deployment is fixed in one round instead of one error per restart.

use std::fmt;

/// Writes `heading`, then each problem on a line of its own.
pub(crate) fn write_list<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    heading: fmt::Arguments<'_>,
    problems: &[T],
) -> fmt::Result {
    writeln!(f, "{heading}")?;
    for problem in problems {
        writeln!(f, "  - {problem}")?;
    }
    Ok(())
}
