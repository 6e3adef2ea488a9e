//! `multiwan apply` and `multiwan flush`.
//!
//! Both first look for a daemon of this instance (one that listens on the config's
//! `settings.socket`): it owns the kernel state and its link states. `apply` then asks it
//! to reload instead of installing "every link in service" behind its back (an ifupdown
//! `post-up` must not put a dead link back in service); `flush` refuses, since the
//! daemon would go on routing over what was just removed (SPEC §4).

use std::path::Path;

use anyhow::Context;

use super::{runtime, CliResult, Failure};
use crate::api::ClientRequest;
use crate::config;
use crate::control::client::{self, ClientError};
use crate::kernel::{Kernel, Ownership};
use crate::plan::{self, Facts, LinkStates, PlanInput};
use crate::state::StateDir;

/// Installs the plan for "every enabled link in service" once and exits.
pub fn apply(config_path: &Path) -> CliResult {
    let config = config::load(config_path)?;
    if let Some(handed_over) = hand_over(&config.settings.socket) {
        return handed_over;
    }
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
    let socket = &config.settings.socket;
    if client::daemon_listens(socket) {
        return Err(Failure::Usage(format!(
            "a multiwan daemon runs for this instance (it answers on {}): it would go on \
             routing over what flush removes. Stop it first (`systemctl stop multiwan`; \
             with on_exit = \"flush\" stopping it also flushes), then run `multiwan flush`",
            socket.display()
        )));
    }
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

/// When a daemon of this instance answers on `socket`, asks it to reload and says so:
/// `None` when there is none (a missing or stale socket), so `apply` installs itself.
fn hand_over(socket: &Path) -> Option<CliResult> {
    let what = "a multiwan daemon runs for this instance: asked it to reload instead";
    match client::request(socket, &ClientRequest::Reload) {
        Err(ClientError::NoDaemon(_)) => None,
        Ok(reply) => {
            let message = reply.message.unwrap_or_else(|| "reloaded".into());
            eprintln!("multiwan apply: {what} ({message})");
            Some(Ok(0))
        }
        Err(ClientError::Refused(r)) => Some(Err(Failure::Refused {
            code: r.code,
            message: format!("{what}, which it refused: {}", r.message),
        })),
        Err(e) => Some(Err(Failure::from(e))),
    }
}
