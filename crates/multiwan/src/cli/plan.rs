//! `multiwan plan`: what `apply` would install now, as `ip` / `nft` text.

use std::path::Path;

use super::common::with_carrier_states;
use super::{CliResult, Failure};
use crate::config;
use crate::plan::{LinkState, LinkStates};
use crate::render;

pub fn run(config_path: &Path, down: &[String]) -> CliResult {
    let config = config::load(config_path)?;
    for name in down {
        if config.link(name).is_none() {
            return Err(Failure::Usage(format!(
                "--down {name}: no link of that name in {}",
                config_path.display()
            )));
        }
    }
    let facts = super::read_facts_or_empty();
    let states: LinkStates = down.iter().map(|n| (n.clone(), LinkState::Down)).collect();
    let states = with_carrier_states(states, &config, &facts);
    let desired = super::common::plan_without_changes(&config, &states, &facts);
    print!("{}", render::plan_script(&config, &desired));
    Ok(0)
}
