//! `multiwan check`.
use std::path::Path;

use super::CliResult;

pub fn run(_config: &Path) -> CliResult {
    Ok(0)
}
