//! `multiwan explain`: where a new connection would go, and why (SPEC §4). The
//! answer is [`crate::explain`]'s, for the planner's output under the running daemon's
//! link states (or, as `apply` installs it, every enabled link with carrier in service
//! when no daemon answers).

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use super::{CliResult, Failure};
use crate::api::ClientRequest;
use crate::config::{self, Config, Protocol};
use crate::control;
use crate::control::client::{self, ClientError};
use crate::explain::{self, Inputs, Query};
use crate::plan::{Facts, LinkStates};
use crate::state::parse_state;

/// The command line, as typed (checked here so each mistake is one clear line).
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// Destination address.
    #[arg(long, value_name = "ADDR")]
    pub to: String,
    /// Source address (a LAN host; for --local, a bound source address).
    #[arg(long, value_name = "ADDR")]
    pub from: Option<String>,
    /// tcp | udp | icmp | icmpv6 | any
    #[arg(long, value_name = "P")]
    pub proto: Option<String>,
    /// Destination port (needs --proto tcp or udp).
    #[arg(long, value_name = "N")]
    pub dport: Option<String>,
    /// Interface the connection arrives on [default: the first `lan` interface].
    #[arg(long, value_name = "IF")]
    pub iif: Option<String>,
    /// The router's own connection (routing: ip rules, policy tables, source address).
    #[arg(long)]
    pub local: bool,
    /// One JSON object instead of the lines for people.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config_path: &Path, args: &ExplainArgs) -> CliResult {
    let config = config::load(config_path)?;
    let mut facts = super::read_facts_or_empty();
    let query = query(args, &config, &facts).map_err(Failure::Usage)?;
    explain::assume_absent_interfaces(&config, &mut facts);
    let (states, daemon) = live_states(&config, config_path)?;
    // Without a daemon, what `apply` installs: a link without carrier is down.
    let states = if daemon {
        states
    } else {
        super::common::with_carrier_states(states, &config, &facts)
    };
    let desired = super::common::plan_without_changes(&config, &states, &facts);
    let answer = explain::explain(
        &Inputs {
            config: &config,
            desired: &desired,
            facts: &facts,
            daemon,
        },
        &query,
    );
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&answer).map_err(anyhow::Error::from)?;
        s.push('\n');
        s
    } else {
        answer.table()
    };
    // A closed pipe (`multiwan explain … | head -1`) is not an error.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(0)
}

/// The daemon's link states, or none (every enabled link in service) when no daemon
/// answers. A daemon that answers but breaks off is an error: its answer would be
/// wrong either way.
fn live_states(config: &Config, config_path: &Path) -> Result<(LinkStates, bool), Failure> {
    let socket = if config.settings.socket.as_os_str().is_empty() {
        control::socket_for(config_path)
    } else {
        config.settings.socket.clone()
    };
    match client::request(&socket, &ClientRequest::Status) {
        Ok(reply) => {
            let Some(status) = reply.status else {
                return Ok((LinkStates::new(), false));
            };
            let states = status
                .links
                .iter()
                .filter_map(|l| Some((l.name.clone(), parse_state(&l.state)?)))
                .collect();
            Ok((states, true))
        }
        Err(ClientError::NoDaemon(_)) => Ok((LinkStates::new(), false)),
        Err(e) => Err(e.into()),
    }
}

/// Checks the command line against the config and the machine.
pub fn query(args: &ExplainArgs, config: &Config, facts: &Facts) -> Result<Query, String> {
    let addr = |flag: &str, s: &str| {
        s.parse::<IpAddr>()
            .map_err(|_| format!("--{flag} {s}: not an IPv4 or IPv6 address"))
    };
    let to = addr("to", &args.to)?;
    let from = args.from.as_deref().map(|s| addr("from", s)).transpose()?;
    if let Some(f) = from {
        if f.is_ipv4() != to.is_ipv4() {
            return Err(format!(
                "--from {f} and --to {to} are of different families: give two IPv4 or two IPv6 addresses"
            ));
        }
    }
    let proto = match args.proto.as_deref() {
        None => None,
        Some("tcp") => Some(Protocol::Tcp),
        Some("udp") => Some(Protocol::Udp),
        Some("icmp") => Some(Protocol::Icmp),
        Some("icmpv6") => Some(Protocol::Icmpv6),
        Some("any") => Some(Protocol::Any),
        Some(p) => return Err(format!("--proto {p}: use tcp, udp, icmp, icmpv6 or any")),
    };
    let dport = match args.dport.as_deref() {
        None => None,
        Some(d) => Some(
            d.parse::<u16>()
                .map_err(|_| format!("--dport {d}: not a port number (0-65535)"))?,
        ),
    };
    if dport.is_some() && !matches!(proto, Some(Protocol::Tcp | Protocol::Udp)) {
        return Err("--dport needs --proto tcp or --proto udp (ports belong to those)".into());
    }
    if args.local && args.iif.is_some() {
        return Err(
            "--iif and --local exclude each other: --local is the router's own connection".into(),
        );
    }
    if let Some(i) = &args.iif {
        let known = facts.interfaces.contains_key(i)
            || config.links.iter().any(|l| &l.interface == i)
            || config.settings.lan.as_ref().is_some_and(|l| l.contains(i));
        if !known {
            return Err(format!(
                "--iif {i}: no such interface here, and the config names none (a lan or link interface)"
            ));
        }
    }
    Ok(Query {
        from,
        to,
        proto,
        dport,
        iif: args.iif.clone(),
        local: args.local,
    })
}
