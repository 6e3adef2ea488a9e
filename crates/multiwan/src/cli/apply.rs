//! `multiwan apply` and `multiwan flush`.

use std::path::Path;

use anyhow::Context;

use super::{runtime, CliResult};
use crate::config;
use crate::kernel::{Kernel, Ownership};
use crate::plan::{self, Facts, LinkStates, PlanInput};
use crate::state::StateDir;

/// Installs the plan for "every enabled link in service" once and exits.
pub fn apply(config_path: &Path) -> CliResult {
    let config = config::load(config_path)?;
    crate::preflight::check_forwarding(&config)?;
    runtime()?.block_on(async {
        let kernel = Kernel::new().context("opening netlink")?;
        let facts = kernel.read_facts().await.context("reading interfaces")?;
        let states = super::common::with_carrier_states(LinkStates::new(), &config, &facts);
        let seed = StateDir::new(&config.settings.state_dir).seed()?;
        let desired = plan::plan(&PlanInput {
            config: &config,
            states: &states,
            facts: &facts,
            seed,
        });
        for l in &desired.links {
            if let Some(why) = &l.waiting {
                eprintln!("multiwan apply: link {} is waiting: {why}", l.name);
            }
        }
        let report = kernel.apply(&desired).await.context("applying the plan")?;
        if report.changed {
            for c in &report.changes {
                eprintln!("multiwan apply: {c}");
            }
        }
        eprintln!("multiwan apply: {report}");
        Ok(0)
    })
}

/// Removes every kernel object multiwan owns under this config's names and ranges.
pub fn flush(config_path: &Path) -> CliResult {
    let config = config::load(config_path)?;
    runtime()?.block_on(async {
        let kernel = Kernel::new().context("opening netlink")?;
        let desired = plan::plan(&PlanInput {
            config: &config,
            states: &LinkStates::new(),
            facts: &Facts::default(),
            seed: 0,
        });
        let report = kernel
            .flush(&Ownership::from(&desired))
            .await
            .context("flushing")?;
        for c in &report.changes {
            eprintln!("multiwan flush: {c}");
        }
        eprintln!("multiwan flush: {report}");
        Ok(0)
    })
}
