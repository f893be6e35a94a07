//! Layered configuration: defaults, then an optional TOML file, then `MESH_*`
//! environment variables.
//!
//! Nested keys are separated by `__` in the environment, so
//! `MESH_FULFILLMENT__LISTEN=0.0.0.0:50051` sets `fulfillment.listen`:
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
    Invalid(#[from] Box<figment::Error>),
}

/// Loads `T`: its `Default`, then `file` (TOML) if given, then `MESH_*` variables.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    figment::<T>(file)?.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))
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
    fn a_named_file_that_is_missing_is_an_error() {
        let err = load::<Settings>(Some(Path::new("/nonexistent/mesh.toml"))).expect_err("missing");
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
