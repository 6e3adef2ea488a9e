//! `multiwan plan`: what `apply` would install now, as `ip` / `nft` text.

use std::path::Path;

use super::common::with_carrier_states;
use super::{CliResult, Failure};
use crate::config;
use crate::plan::{self, LinkState, LinkStates, PlanInput};
use crate::render;
use crate::state::StateDir;

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
    // `plan` changes nothing, not even the state directory: a missing seed plans as 0.
    let seed = StateDir::new(&config.settings.state_dir)
        .existing_seed()
        .unwrap_or(0);
    let desired = plan::plan(&PlanInput {
        config: &config,
        states: &states,
        facts: &facts,
        seed,
    });
    print!("{}", render::plan_script(&config, &desired));
    Ok(0)
}
