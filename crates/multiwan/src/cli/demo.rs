//! `multiwan demo`.
use super::CliResult;

pub fn run() -> CliResult {
    Ok(0)
}
