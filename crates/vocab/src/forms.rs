//! The conversions every validated string type of this crate shares, written once.

/// Implements, for a `struct $name(String)` built by its `parse(&str)`: `Display` (the text as
/// parsed), `TryFrom<String>` (through `parse`, what serde's `try_from` calls) and
/// `From<$name> for String`; with `deref`, `Deref<Target = str>` too.
macro_rules! string_forms {
    ($name:ident, deref) => {
        $crate::forms::string_forms!($name);

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
    ($name:ident) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::invalid::Invalid;
            fn try_from(raw: String) -> Result<Self, $crate::invalid::Invalid> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

pub(crate) use string_forms;
