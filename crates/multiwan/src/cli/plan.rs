//! `multiwan plan`.
use std::path::Path;

use super::CliResult;

pub fn run(_config: &Path, _down: &[String]) -> CliResult {
    Ok(0)
}
