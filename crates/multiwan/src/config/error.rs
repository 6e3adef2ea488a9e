//! Config errors: each names the file, the 1-based line and column, and the dotted key.

use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
///
/// `line` and `column` are 1-based (columns count characters, not bytes); both are 0
/// when the error is about the file as a whole (it could not be read). `key` is the
/// dotted TOML path (`links.isp1.check.min_targets`, `rules[2].policy`, array indexes
/// 1-based like line numbers and the default rule names `rule<N>`); it is empty when
/// no key applies (a syntax error outside any key, an unreadable file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(self))]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

fn render(e: &ConfigError) -> String {
    // An empty key would print as "file:1:2: : message"; drop the segment instead.
    if e.key.is_empty() {
        format!(
            "{}:{}:{}: {}",
            e.file.display(),
            e.line,
            e.column,
            e.message
        )
    } else {
        format!(
            "{}:{}:{}: {}: {}",
            e.file.display(),
            e.line,
            e.column,
            e.key,
            e.message
        )
    }
}

impl ConfigError {
    /// An error about the file as a whole (line and column 0), e.g. it cannot be read.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: message.into(),
        }
    }
}

/// Every error found in one config file, sorted by position.
///
/// Displays as one error per line (no trailing newline), ready for stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_all(&self.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn render_all(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// Orders by position (file-level errors first) and drops exact repeats, so the
    /// output reads top to bottom like the file.
    pub(crate) fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
        errors.sort_by(|a, b| {
            (a.line, a.column, &a.key, &a.message).cmp(&(b.line, b.column, &b.key, &b.message))
        });
        errors.dedup();
        ConfigErrors(errors)
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(line: usize, key: &str) -> ConfigError {
        ConfigError {
            file: "/etc/multiwan/multiwan.toml".into(),
            line,
            column: 3,
            key: key.into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn display_one_per_line() {
        let errs = ConfigErrors::sorted(vec![e(7, "links.isp1.id"), e(2, "")]);
        assert_eq!(
            errs.to_string(),
            "/etc/multiwan/multiwan.toml:2:3: bad\n\
             /etc/multiwan/multiwan.toml:7:3: links.isp1.id: bad"
        );
    }
}
