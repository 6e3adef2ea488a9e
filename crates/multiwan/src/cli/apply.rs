//! `multiwan apply` and `multiwan flush`.
use std::path::Path;

use super::CliResult;

pub fn apply(_config: &Path) -> CliResult {
    Ok(0)
}

pub fn flush(_config: &Path) -> CliResult {
    Ok(0)
}
