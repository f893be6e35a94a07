//! Layered configuration: defaults, then an optional TOML file, then `MESH_*`
//! environment variables.
//!
//! Nested keys are separated by `__` in the environment, so
//! `MESH_FULFILLMENT__LISTEN=0.0.0.0:50051` sets `fulfillment.listen`. A value
//! that reads as a number or `true`/`false` is taken as one; text in double
//! quotes stays text (`MESH_X='"0123"'`), and a refusal of such a value names
//! its key and variable without the value, which may be a secret:
//!
//! ```
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! #[serde(default)]
//! struct Settings {
//!     data_dir: String,
//! }
//!
//! // No file, no MESH_DATA_DIR: the default.
//! let settings: Settings = kit::config::load(None).unwrap();
//! assert_eq!(settings.data_dir, "");
//! ```

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The prefix of every configuration variable.
pub const ENV_PREFIX: &str = "MESH_";

/// Variables with the prefix that are not configuration keys.
const NOT_CONFIG: [&str; 2] = ["CONFIG", "TEST_POSTGRES_URL"];

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file named does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value has the wrong type or form; the message names the key and where it came from.
    #[error("invalid configuration: {0}")]
    Invalid(Box<Refusal>),
}

/// A configuration value refused: figment's error, described without the
/// value where figment would quote it (it may be a secret), in `Debug` too.
pub struct Refusal {
    error: figment::Error,
    /// figment's path stops at a flattened section and the key under it is not known.
    under_section: bool,
}

impl From<Box<figment::Error>> for ConfigError {
    fn from(error: Box<figment::Error>) -> Self {
        Self::Invalid(Box::new(Refusal { error: *error, under_section: false }))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self))
    }
}

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Refusal").field(&describe(self)).finish()
    }
}

/// Loads `T`: its `Default`, then `file` (TOML) if given, then `MESH_*` variables.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let figment = figment::<T>(file)?;
    figment.extract().map_err(|error| ConfigError::Invalid(Box::new(to_the_leaf(&figment, error))))
}

/// Whether text was wanted and the value read as a number or `true`/`false`.
fn text_read_as_other(error: &figment::Error) -> bool {
    use figment::error::{Actual, Kind};
    matches!(
        &error.kind,
        Kind::InvalidType(Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) | Actual::Bool(_), expected)
            if expected.contains("string")
    )
}

/// A key under `#[serde(flatten)]` fails with figment's path stopping at its
/// section (`FULFILLMENT`), tagged with whichever source last set a key of
/// that section: where the section holds exactly one value, from the file or
/// the environment, equal to the one refused, the path ends at it
/// (`FULFILLMENT.LMS.CLIENT_SECRET`) and the source is that value's;
/// otherwise the refusal says the key is under the section.
fn to_the_leaf(figment: &Figment, mut error: figment::Error) -> Refusal {
    use figment::error::{Actual, Kind};
    use figment::value::Value;
    fn leaves<'a>(value: &'a Value, path: &mut Vec<String>, found: &mut Vec<(Vec<String>, &'a Value)>) {
        match value {
            Value::Dict(_, dict) => {
                for (key, value) in dict {
                    path.push(key.clone());
                    leaves(value, path, found);
                    path.pop();
                }
            }
            leaf => found.push((path.clone(), leaf)),
        }
    }
    let Ok(section @ Value::Dict(..)) = figment.find_value(&error.path.join(".")) else {
        return Refusal { error, under_section: false };
    };
    let actual = match &error.kind {
        Kind::InvalidType(actual, _) | Kind::InvalidValue(actual, _) => actual.clone(),
        _ => return Refusal { error, under_section: true },
    };
    // The defaults are never refused: only what the file or the environment set.
    let configured = |value: &Value| {
        figment.get_metadata(value.tag()).is_some_and(|source| {
            matches!(source.source, Some(figment::Source::File(_))) || source.name.contains("environment")
        })
    };
    let same = |value: &Value| match (&actual, value) {
        _ if !configured(value) => false,
        (Actual::Unsigned(n), value) => value.to_u128() == Some(*n),
        (Actual::Signed(n), value) => value.to_i128() == Some(*n),
        (Actual::Float(n), value) => value.to_f64() == Some(*n),
        (Actual::Bool(b), Value::Bool(_, value)) => value == b,
        (Actual::Str(text), Value::String(_, value)) => value == text,
        _ => false,
    };
    let mut found = Vec::new();
    leaves(&section, &mut Vec::new(), &mut found);
    let mut matching = found.into_iter().filter(|(_, value)| same(value));
    match (matching.next(), matching.next()) {
        (Some((rest, value)), None) => {
            error.path.extend(rest);
            error.metadata = figment.get_metadata(value.tag()).cloned();
            Refusal { error, under_section: false }
        }
        _ => Refusal { error, under_section: true },
    }
}

/// What kind of value was found, without the value.
fn kind_of(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "true or false",
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "text",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "a value",
    }
}

/// figment's words where they cannot quote a value; otherwise the key, where
/// it came from and what was wanted, without the value (it may be a secret),
/// and for text that read as a number or `true`/`false` how to keep it text.
fn describe(refusal: &Refusal) -> String {
    use figment::error::Kind;
    let error = &refusal.error;
    let (actual, expected) = match &error.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => (actual, expected),
        _ => return error.to_string(),
    };
    let section = error.path.join(".").to_uppercase();
    let variable = format!("{ENV_PREFIX}{}", error.path.join("__").to_uppercase());
    let (key, variable) = if refusal.under_section {
        (format!("a key under \"{section}\""), format!("{variable}__<KEY>"))
    } else {
        (format!("key \"{section}\""), variable)
    };
    let source = match (&error.metadata, refusal.under_section) {
        (Some(source), false) => match &source.source {
            Some(file @ figment::Source::File(_)) => format!("{} {file}", source.name),
            _ => source.name.to_string(),
        },
        _ => "the file or the environment".to_string(),
    };
    let found = kind_of(actual);
    if !text_read_as_other(error) {
        return format!("{key} in {source}: expected {expected}, found {found} (the value is not shown)");
    }
    let how = match &error.metadata {
        Some(source) if !refusal.under_section && !source.name.contains("environment") => {
            "write it in double quotes".to_string()
        }
        _ if refusal.under_section => format!("write it in double quotes (in a file), or {variable}='\"...\"'"),
        _ => format!("put it in double quotes: {variable}='\"...\"'"),
    };
    format!(
        "{key} in {source} is text, but its value reads as {found} (not shown: it may be a secret); to keep it \
         text, {how}"
    )
}

/// The layered sources for `T`, for callers that add layers of their own.
pub fn figment<T: Serialize + Default>(file: Option<&Path>) -> Result<Figment, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let env = Env::prefixed(ENV_PREFIX).ignore(&NOT_CONFIG).split("__");
    Ok(figment.merge(env))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Settings {
        name: String,
        port: u16,
        inner: Inner,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        flag: bool,
        url: Option<String>,
    }

    impl Default for Settings {
        fn default() -> Self {
            Self { name: "default".into(), port: 1, inner: Inner::default() }
        }
    }

    #[test]
    fn file_overrides_defaults_and_environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("mesh.toml", "name = \"from-file\"\nport = 2\n[inner]\nflag = true\n")?;
            jail.set_env("MESH_PORT", "3");
            jail.set_env("MESH_INNER__URL", "postgres://db");
            jail.set_env("MESH_CONFIG", "ignored: names the file, not a key");
            let settings: Settings = load(Some(Path::new("mesh.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                settings,
                Settings {
                    name: "from-file".into(),
                    port: 3,
                    inner: Inner { flag: true, url: Some("postgres://db".into()) },
                }
            );
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key_and_source() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MESH_PORT", "not-a-port");
            let err = load::<Settings>(None).expect_err("a string is not a port");
            let text = err.to_string();
            assert!(text.to_lowercase().contains("key \"port\""), "{text}");
            assert!(text.contains("MESH_"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn text_that_reads_as_a_number_says_how_to_quote_it() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MESH_NAME", "000123");
            let text = load::<Settings>(None).expect_err("a number is not text").to_string();
            assert!(text.contains("MESH_NAME='\"...\"'"), "says how to keep it text: {text}");
            assert!(!text.contains("123"), "the value may be a secret: {text}");
            jail.set_env("MESH_NAME", "\"000123\"");
            assert_eq!(load::<Settings>(None).map_err(|e| e.to_string())?.name, "000123", "quoted, it stays text");
            jail.set_env("MESH_PORT", "not-a-port");
            let text = load::<Settings>(None).expect_err("not a port").to_string();
            assert!(text.contains("expected u16, found text"), "what was wanted and found: {text}");
            assert!(!text.contains("not-a-port"), "never the value, which may be a secret: {text}");
            Ok(())
        });
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Section {
        listen: String,
        #[serde(flatten)]
        own: Own,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Own {
        client: Client,
        check: bool,
        secrets: Vec<String>,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Client {
        secret: String,
        /// A default that reads as the same number as the refused value.
        attempts: u32,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Flattened {
        section: Section,
    }

    #[test]
    fn text_under_a_flattened_section_is_named_to_its_key_and_quoted_in_a_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MESH_SECTION__CLIENT__SECRET", "0");
            let text = load::<Flattened>(None).expect_err("a number is not text").to_string();
            assert!(text.contains("SECTION.CLIENT.SECRET\" in `MESH_`"), "names the key itself: {text}");
            assert!(text.contains("MESH_SECTION__CLIENT__SECRET='\"...\"'"), "and its variable: {text}");
            jail.clear_env();
            jail.create_file("mesh.toml", "[section.client]\nsecret = 31415\n")?;
            // Another key of the section from the environment: the refused one is still the file's.
            jail.set_env("MESH_SECTION__LISTEN", "elsewhere");
            let text = load::<Flattened>(Some(Path::new("mesh.toml"))).expect_err("in the file too").to_string();
            assert!(!text.contains("31415"), "the value may be a secret: {text}");
            assert!(text.contains("SECTION.CLIENT.SECRET\" in TOML file"), "and the file: {text}");
            assert!(text.contains("write it in double quotes"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn an_ambiguous_key_under_a_section_is_not_guessed_and_no_value_shows_even_in_debug() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("mesh.toml", "[section.client]\nsecret = true\n")?;
            jail.set_env("MESH_SECTION__CHECK", "true");
            let err = load::<Flattened>(Some(Path::new("mesh.toml"))).expect_err("true is not text");
            let text = err.to_string();
            assert!(text.contains("a key under \"SECTION\""), "not the valid CHECK: {text}");
            assert!(!text.contains("CHECK"), "{text}");
            jail.clear_env();
            jail.create_file("mesh.toml", "")?;
            jail.set_env("MESH_SECTION__SECRETS", "whsec_not_a_list");
            let err = load::<Flattened>(Some(Path::new("mesh.toml"))).expect_err("not a list");
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(text.contains("SECTION.SECRETS"), "{text}");
                assert!(!text.contains("whsec"), "the value may be a secret: {text}");
            }
            Ok(())
        });
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error() {
        let err = load::<Settings>(Some(Path::new("/nonexistent/mesh.toml"))).expect_err("missing");
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
