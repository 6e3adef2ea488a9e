//! What several commands share (`plan` and `apply`), so that sibling commands
//! never import each other.

use crate::config::Config;
use crate::plan::{self, Desired, Facts, LinkState, LinkStates, PlanInput};
use crate::state::StateDir;

/// `apply` and `plan` take a link without carrier as down: installing it in service
/// would send connections into a dead wire.
pub(super) fn with_carrier_states(
    mut states: LinkStates,
    config: &Config,
    facts: &Facts,
) -> LinkStates {
    for link in &config.links {
        if let Some(f) = facts.interfaces.get(&link.interface) {
            if !f.carrier {
                states.entry(link.name.clone()).or_insert(LinkState::Down);
            }
        }
    }
    states
}

/// The plan for these states and facts, changing nothing, not even the state directory:
/// a missing sticky seed plans as 0 (`plan` and `explain`).
pub(super) fn plan_without_changes(config: &Config, states: &LinkStates, facts: &Facts) -> Desired {
    let seed = StateDir::new(&config.settings.state_dir)
        .existing_seed()
        .unwrap_or(0);
    plan::plan(&PlanInput {
        config,
        states,
        facts,
        seed,
    })
}
