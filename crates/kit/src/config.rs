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
    /// (Not a `source`: figment's words quote the value, which may be a secret.)
    #[error("invalid configuration: {}", describe(.0))]
    Invalid(Box<figment::Error>),
}

impl From<Box<figment::Error>> for ConfigError {
    fn from(error: Box<figment::Error>) -> Self {
        Self::Invalid(error)
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

/// What a value refused where text was wanted read as: a number, or true or false.
fn read_as_other_than_text(error: &figment::Error) -> Option<&'static str> {
    use figment::error::{Actual, Kind};
    match &error.kind {
        Kind::InvalidType(actual, expected) if expected.contains("string") => match actual {
            Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => Some("a number"),
            Actual::Bool(_) => Some("true or false"),
            _ => None,
        },
        _ => None,
    }
}

/// A key under `#[serde(flatten)]` fails with figment's path stopping at its
/// section (`FULFILLMENT`): where that section holds one value equal to the
/// one refused from the same source, the path is made to end at it
/// (`FULFILLMENT.LMS.CLIENT_SECRET`).
fn to_the_leaf(figment: &Figment, mut error: figment::Error) -> figment::Error {
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
    if read_as_other_than_text(&error).is_none() {
        return error;
    }
    let Kind::InvalidType(actual, _) = &error.kind else { return error };
    let Ok(section @ Value::Dict(..)) = figment.find_value(&error.path.join(".")) else { return error };
    let from_the_same_source = |value: &Value| {
        figment.get_metadata(value.tag()).map(|source| &source.name) == error.metadata.as_ref().map(|m| &m.name)
    };
    let same = |value: &Value| match (actual, value) {
        _ if !from_the_same_source(value) => false,
        (Actual::Unsigned(n), value) => value.to_u128() == Some(*n),
        (Actual::Signed(n), value) => value.to_i128() == Some(*n),
        (Actual::Float(n), value) => value.to_f64() == Some(*n),
        (Actual::Bool(b), Value::Bool(_, value)) => value == b,
        _ => false,
    };
    let mut found = Vec::new();
    leaves(&section, &mut Vec::new(), &mut found);
    let mut matching = found.into_iter().filter(|(_, value)| same(value));
    if let (Some((rest, _)), None) = (matching.next(), matching.next()) {
        error.path.extend(rest);
    }
    error
}

/// figment's own words, except where text was wanted and the value read as a
/// number or `true`/`false` (a secret of digits, say): then how to keep it
/// text, and not the value, which may be a secret.
fn describe(error: &figment::Error) -> String {
    let Some(read_as) = read_as_other_than_text(error) else { return error.to_string() };
    let key = error.path.join(".").to_uppercase();
    let source = error.metadata.as_ref().map_or_else(|| "the configuration".to_string(), |s| s.name.to_string());
    let how = if source.contains("environment") {
        format!("put it in double quotes: {ENV_PREFIX}{}='\"...\"'", error.path.join("__").to_uppercase())
    } else {
        "write it in double quotes".to_string()
    };
    format!(
        "{key} in {source} is text, but its value reads as {read_as} (not shown: it may be a secret); to keep it \
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
            assert!(text.contains("not-a-port"), "figment's own words where text was not wanted: {text}");
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
            assert!(text.contains("SECTION.CLIENT.SECRET in"), "names the key itself: {text}");
            assert!(text.contains("MESH_SECTION__CLIENT__SECRET='\"...\"'"), "and its variable: {text}");
            jail.clear_env();
            jail.create_file("mesh.toml", "[section.client]\nsecret = 31415\n")?;
            let text = load::<Flattened>(Some(Path::new("mesh.toml"))).expect_err("in the file too").to_string();
            assert!(!text.contains("31415"), "the value may be a secret: {text}");
            let text = load::<Flattened>(Some(Path::new("mesh.toml"))).expect_err("in the file too").to_string();
            assert!(text.contains("SECTION.CLIENT.SECRET in"), "{text}");
            assert!(text.contains("write it in double quotes"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error() {
        let err = load::<Settings>(Some(Path::new("/nonexistent/mesh.toml"))).expect_err("missing");
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
