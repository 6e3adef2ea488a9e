//! The configuration file: parsing, validation, and the validated model.
//!
//! [`load`] / [`parse`] turn a TOML file (SPEC §1) into a [`Config`], or into
//! [`ConfigErrors`] naming file, line, column and key of everything wrong with it.

pub mod duration;
pub mod error;
pub mod model;
mod raw;
pub mod rule_order;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

/// Reads and validates the config file at `path`.
///
/// A file that cannot be read is a single error with line and column 0.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::whole_file(
            path,
            format!(
                "cannot read the config file: {e}; check the path (-c FILE) and its permissions"
            ),
        )
    })?;
    parse(&text, path)
}

/// Validates config text; `path` is only used in messages and as `Config::path`.
///
/// User names in rules (`user = "openvpn"`) are resolved through the system's user
/// database (NSS).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    validate::parse_with(text, path, &validate::SystemUsers)
}
