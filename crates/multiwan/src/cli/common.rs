//! What several commands share (`plan` and `apply`), so that sibling commands
//! never import each other.

use crate::config::Config;
use crate::plan::{Facts, LinkState, LinkStates};

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
