//! One link inside the daemon: its health machine, its prober, and the endpoint the
//! prober sends from (re-derived from the facts whenever they change, so a DHCP renew
//! or a PPP reconnect with a new ifindex is picked up without a restart).

use std::net::IpAddr;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::config::{Gateway, Link, Settings};
use crate::health::{InterfaceStatus, LinkHealth, Round, Transition};
use crate::plan::marks::MarkLayout;
use crate::plan::{Facts, LinkState};
use crate::probe::{self, ProbeEndpoint, ProbeOutcome, RoundReport};

pub(super) struct LinkRuntime {
    pub link: Link,
    pub mark: u32,
    pub health: LinkHealth,
    endpoint: watch::Sender<Option<ProbeEndpoint>>,
    prober: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for LinkRuntime {
    fn drop(&mut self) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
    }
}

impl LinkRuntime {
    pub fn start(
        link: &Link,
        settings: &Settings,
        initial: LinkState,
        now: Instant,
        facts: &Facts,
        reports: mpsc::Sender<RoundReport>,
    ) -> LinkRuntime {
        let mark = MarkLayout::new(settings.mark_mask).link(link.id);
        let health = LinkHealth::new(&link.name, link.check.clone(), initial, now)
            .with_interface(&link.interface);
        let (endpoint, endpoint_rx) = watch::channel(endpoint_of(link, mark, facts));
        let prober = link.check.clone().map(|check| {
            if let Err(e) = probe::check_supported(&check) {
                eprintln!("multiwan: link {}: {e}", link.name);
            }
            probe::spawn_link_prober(link.name.clone(), check, endpoint_rx, reports)
        });
        LinkRuntime {
            link: link.clone(),
            mark,
            health,
            endpoint,
            prober,
        }
    }

    /// Feeds the interface's current facts to the health machine.
    pub fn observe(&mut self, now: Instant, facts: &Facts) -> Option<Transition> {
        let status = match facts.interfaces.get(&self.link.interface) {
            None => InterfaceStatus {
                exists: false,
                admin_up: false,
                carrier: false,
                has_address: false,
                has_gateway: false,
            },
            Some(f) => InterfaceStatus {
                exists: true,
                admin_up: f.admin_up,
                carrier: f.carrier,
                has_address: !f.addresses.is_empty(),
                has_gateway: match self.link.gateway {
                    Gateway::Auto => {
                        f.default_gateway4.is_some()
                            || (self.link.gateway6 != Gateway::None
                                && f.default_gateway6.is_some())
                    }
                    Gateway::Static(_) | Gateway::None => true,
                },
            },
        };
        self.health.on_interface(now, status)
    }

    pub fn update_endpoint(&mut self, facts: &Facts) {
        let new = endpoint_of(&self.link, self.mark, facts);
        self.endpoint.send_if_modified(|cur| {
            if *cur != new {
                *cur = new;
                true
            } else {
                false
            }
        });
    }

    pub fn on_round(&mut self, now: Instant, report: &RoundReport) -> Option<Transition> {
        let rtts: Vec<_> = report
            .outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                ProbeOutcome::Answered(rtt) => Some(*rtt),
                _ => None,
            })
            .collect();
        let round = Round {
            answered: rtts.len() as u32,
            sent: report.outcomes.len() as u32,
            rtts,
            good: report.good,
            per_target: report
                .outcomes
                .iter()
                .map(|(t, o)| {
                    (
                        t.clone(),
                        match o {
                            ProbeOutcome::Answered(rtt) => Some(*rtt),
                            _ => None,
                        },
                    )
                })
                .collect(),
        };
        self.health.on_round(now, &round)
    }
}

/// Where the link's probes leave from, or `None` while it has no interface or address.
fn endpoint_of(link: &Link, mark: u32, facts: &Facts) -> Option<ProbeEndpoint> {
    let f = facts.interfaces.get(&link.interface)?;
    let source4 = f.ipv4_addresses().find_map(|a| match a.addr() {
        IpAddr::V4(v4) => Some(v4),
        _ => None,
    });
    let source6 = f.ipv6_addresses().find_map(|a| match a.addr() {
        IpAddr::V6(v6) => Some(v6),
        _ => None,
    });
    if source4.is_none() && source6.is_none() {
        return None;
    }
    let gateway4 = match link.gateway {
        Gateway::Static(g) => Some(g),
        Gateway::Auto => f.default_gateway4,
        Gateway::None => None,
    };
    Some(ProbeEndpoint {
        ifname: link.interface.clone(),
        ifindex: f.ifindex,
        source4,
        source6,
        mark,
        gateway4,
    })
}
