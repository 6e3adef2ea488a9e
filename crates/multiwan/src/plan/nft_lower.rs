//! Lowers links and policies into the nft vocabulary of [`super::nft`].
//!
//! The table, for a packet in `prerouting`:
//! 1. a connection that already has a link (its ct mark under `mark_mask`) gets that
//!    mark back on the packet (`restore_<link>`), and nothing else happens;
//! 2. a new connection arriving on a link is that link's (answers go back the same way);
//! 3. a new connection from the LAN goes through `classify`: never for destinations the
//!    main table reaches by a specific route, then rules (first match), then the
//!    `default` policy, which picks a link by weight (`policy_<name>`);
//! 4. `mark_<link>` sets the packet mark and the ct mark (owned bits only) and counts.
//!
//! Router-local connections are steered by routing (ip rules), not here; `postrouting`
//! only records their link in the ct mark by the interface they leave through, so that
//! replies restore it and a flush by mark finds them. The exception are rules by
//! cgroup, which ip rules cannot see: `route_output` (a `route` chain, so a changed mark
//! makes the kernel route the packet again) marks such a connection on its first
//! packet and restores the mark on every later one, and the link's masquerade gives it
//! the link's address.
//!
//! A policy's links are chosen per address family when some link has an IPv6 route:
//! IPv6 connections only go to links that can carry them (`meta nfproto ipv6`).

use sha2::{Digest, Sha256};

use super::marks::MarkLayout;
use super::nft::*;
use super::{refusal, rules, selection, sticky, weights, Family, PlanInput, Resolved};
use crate::config::{Fallback, Policy, Sticky};

pub(crate) const CHAIN_CLASSIFY: &str = "classify";
/// The refusal of [`refusal::refuse`], for verdict maps (which cannot reject).
pub(crate) const CHAIN_UNREACHABLE: &str = "reject_unreachable";
/// `drop`, for verdict maps (see `rules::classify_rules`).
pub(crate) const CHAIN_BLACKHOLE: &str = "drop_blackhole";
/// Router-local connections matched by cgroup rules.
pub(crate) const CHAIN_ROUTE_OUTPUT: &str = "route_output";
pub(crate) const SET_BYPASS4: &str = "bypass4";
pub(crate) const SET_BYPASS6: &str = "bypass6";

pub(crate) fn mark_chain(link: &str) -> String {
    format!("mark_{link}")
}

pub(crate) fn restore_chain(link: &str) -> String {
    format!("restore_{link}")
}

pub(crate) fn policy_chain(policy: &str) -> String {
    format!("policy_{policy}")
}

/// Name of a link's new-connection counter.
pub fn counter_name(link: &str) -> String {
    format!("new_{link}")
}

pub(crate) const MARK_MAIN: &str = "mark_main";
const RESTORE_MAIN: &str = "restore_main";

pub(crate) fn lower(input: &PlanInput, links: &[Resolved], marks: &MarkLayout) -> NftTable {
    let config = input.config;
    let settings = &config.settings;
    let mut chains = link_chains(links, marks);

    // Policies: the default one (named ones come with rules).
    let default_policy = config.default_policy();
    chains.push(policy_chain_for(&default_policy, links, input.seed));
    chains.extend(rules::policy_chains(config, links, input.seed));

    chains.extend(classify_chains(input, &default_policy));
    chains.push(prerouting(input, links, marks));
    let output_rules = if settings.local_traffic && !links.is_empty() {
        rules::output_rules(config)
    } else {
        Vec::new()
    };
    if !output_rules.is_empty() {
        chains.push(route_output(links, marks, output_rules));
    }
    chains.push(postrouting(links, marks));
    if !super::handles_ipv6(links) {
        leave_ipv6_alone(&mut chains);
    }
    chains.push(forward(links));
    chains.push(nat_postrouting(links));

    let mut table = NftTable {
        name: settings.nft_table.clone(),
        counters: links.iter().map(|r| counter_name(&r.link.name)).collect(),
        sets: bypass_sets(input),
        chains,
        digest: String::new(),
    };
    table.digest = digest(&table);
    table
}

/// No link has IPv6 (SPEC §2.12): the chains that mark connections let IPv6 pass
/// untouched, so the router forwards it as it did without multiwan.
fn leave_ipv6_alone(chains: &mut [NftChain]) {
    for chain in chains.iter_mut().filter(|c| c.hook.is_some()) {
        chain.rules.insert(
            0,
            NftRule::new(
                vec![Match::Nfproto(IpVersion::V6)],
                vec![Action::Verdict(Verdict::Return)],
            )
            .with_comment("no link has IPv6"),
        );
    }
}

/// Per link: restore and mark chains, and those of the reserved main mark (reached by
/// jump/goto, so listed first).
fn link_chains(links: &[Resolved], marks: &MarkLayout) -> Vec<NftChain> {
    let mut chains = Vec::new();
    for r in links {
        let name = &r.link.name;
        chains.push(NftChain {
            name: restore_chain(name),
            hook: None,
            rules: vec![set_mark(MarkKind::Meta, marks, r.mark)],
        });
        chains.push(NftChain {
            name: mark_chain(name),
            hook: None,
            rules: vec![
                set_mark(MarkKind::Meta, marks, r.mark),
                set_mark(MarkKind::Ct, marks, r.mark),
                NftRule::new(vec![], vec![Action::Counter(counter_name(name))]),
            ],
        });
    }
    chains.push(NftChain {
        name: RESTORE_MAIN.into(),
        hook: None,
        rules: vec![set_mark(MarkKind::Meta, marks, marks.main())],
    });
    chains.push(NftChain {
        name: MARK_MAIN.into(),
        hook: None,
        rules: vec![
            set_mark(MarkKind::Meta, marks, marks.main()),
            set_mark(MarkKind::Ct, marks, marks.main()),
        ],
    });
    chains
}

/// `classify`: what a new LAN connection gets; preceded by the one-rule reject and
/// drop chains its verdict maps go to, when they do.
fn classify_chains(input: &PlanInput, default_policy: &Policy) -> Vec<NftChain> {
    let config = input.config;
    let mut chains = Vec::new();
    let mut classify = not_policy_routed();
    let log_group = (config.settings.log_group != 0).then_some(config.settings.log_group);
    classify.extend(rules::classify_rules(config, log_group));
    let goes_to = |rules: &[NftRule], chain: &str| {
        rules.iter().any(|r| {
            r.actions.iter().any(|a| match a {
                Action::Verdict(Verdict::Goto(c)) => c == chain,
                Action::DaddrVmap { entries, .. } => entries
                    .iter()
                    .any(|(_, v)| *v == Verdict::Goto(chain.to_string())),
                _ => false,
            })
        })
    };
    for (chain, rules) in [
        (CHAIN_UNREACHABLE, refusal::refuse(vec![], vec![])),
        (
            CHAIN_BLACKHOLE,
            vec![NftRule::new(vec![], vec![Action::Verdict(Verdict::Drop)])],
        ),
    ] {
        if goes_to(&classify, chain) {
            chains.push(NftChain {
                name: chain.into(),
                hook: None,
                rules,
            });
        }
    }
    classify.push(NftRule::new(
        vec![],
        vec![Action::Verdict(Verdict::Goto(policy_chain(
            &default_policy.name,
        )))],
    ));
    chains.push(NftChain {
        name: CHAIN_CLASSIFY.into(),
        hook: None,
        rules: classify,
    });
    chains
}

/// The first rules of `prerouting` and `route_output`: a connection that has a link
/// gets its mark back, and nothing else happens to it.
fn keeps_its_link(links: &[Resolved], marks: &MarkLayout) -> [NftRule; 2] {
    let mut restore: Vec<(u32, Verdict)> = links
        .iter()
        .map(|r| (r.mark, Verdict::Jump(restore_chain(&r.link.name))))
        .collect();
    restore.push((marks.main(), Verdict::Jump(RESTORE_MAIN.into())));
    [
        NftRule::new(
            vec![],
            vec![Action::CtMarkVmap {
                mask: marks.mask(),
                entries: restore,
            }],
        )
        .with_comment("a connection keeps its link"),
        NftRule::new(
            vec![Match::CtMark {
                mask: marks.mask(),
                cmp: Cmp::Ne,
                value: 0,
            }],
            vec![Action::Verdict(Verdict::Return)],
        ),
    ]
}

fn prerouting(input: &PlanInput, links: &[Resolved], marks: &MarkLayout) -> NftChain {
    let mut pre = keeps_its_link(links, marks).to_vec();
    pre.extend([
        NftRule::new(
            vec![Match::IifLoopback],
            vec![Action::Verdict(Verdict::Return)],
        ),
        // Only a connection's first packet is classified: packets of connections that
        // predate multiwan, and untracked ones, keep being routed as they were.
        NftRule::new(
            vec![Match::CtStateNew(Cmp::Ne)],
            vec![Action::Verdict(Verdict::Return)],
        ),
    ]);
    if !links.is_empty() {
        pre.push(
            NftRule::new(vec![], vec![Action::IifnameVmap(by_interface(links))])
                .with_comment("arrived on a link: answered through it"),
        );
    }
    let to_classify = Action::Verdict(Verdict::Goto(CHAIN_CLASSIFY.into()));
    pre.push(match &input.config.settings.lan {
        Some(lan) if lan.is_empty() => NftRule::new(vec![], vec![Action::Verdict(Verdict::Return)]),
        Some(lan) => NftRule::new(
            vec![Match::Iifname {
                cmp: Cmp::Eq,
                names: lan.clone(),
            }],
            vec![to_classify],
        ),
        None => NftRule::new(vec![], vec![to_classify]),
    });
    NftChain {
        name: "prerouting".into(),
        hook: Some(BaseChain {
            kind: ChainKind::Filter,
            hook: Hook::Prerouting,
            priority: PRIORITY_MANGLE,
        }),
        rules: pre,
    }
}

/// `route_output`: router-local connections by cgroup (see the module docs).
fn route_output(links: &[Resolved], marks: &MarkLayout, output_rules: Vec<NftRule>) -> NftChain {
    let mut out = keeps_its_link(links, marks).to_vec();
    out.push(NftRule::new(
        vec![Match::CtStateNew(Cmp::Ne)],
        vec![Action::Verdict(Verdict::Return)],
    ));
    out.push(
        NftRule::new(
            vec![Match::MetaMark {
                mask: marks.mask(),
                cmp: Cmp::Ne,
                value: 0,
            }],
            vec![Action::Verdict(Verdict::Return)],
        )
        .with_comment("marked by its socket: health-check probes"),
    );
    out.extend(not_policy_routed());
    out.extend(output_rules);
    NftChain {
        name: CHAIN_ROUTE_OUTPUT.into(),
        hook: Some(BaseChain {
            kind: ChainKind::Route,
            hook: Hook::Output,
            priority: PRIORITY_MANGLE,
        }),
        rules: out,
    }
}

/// `postrouting`: record the link of connections that got none on the way in
/// (router-local ones), by the interface they leave through.
fn postrouting(links: &[Resolved], marks: &MarkLayout) -> NftChain {
    let mut post = Vec::new();
    if !links.is_empty() {
        post.push(NftRule::new(
            vec![
                Match::CtStateNew(Cmp::Eq),
                Match::CtMark {
                    mask: marks.mask(),
                    cmp: Cmp::Eq,
                    value: 0,
                },
                // Health-check probes carry their link's mark from their socket: they
                // are not the link's connections (not counted, not flushed).
                Match::MetaMark {
                    mask: marks.mask(),
                    cmp: Cmp::Eq,
                    value: 0,
                },
            ],
            vec![Action::OifnameVmap(by_interface(links))],
        ));
    }
    NftChain {
        name: "postrouting".into(),
        hook: Some(BaseChain {
            kind: ChainKind::Filter,
            hook: Hook::Postrouting,
            priority: PRIORITY_MANGLE,
        }),
        rules: post,
    }
}

/// `forward`: MSS clamping.
fn forward(links: &[Resolved]) -> NftChain {
    let clamp: Vec<NftRule> = links
        .iter()
        .filter(|r| r.link.mss_clamp)
        .map(|r| {
            NftRule::new(
                vec![Match::Oifname(r.link.interface.clone()), Match::TcpSyn],
                vec![Action::ClampMssToPmtu],
            )
        })
        .collect();
    NftChain {
        name: "forward".into(),
        hook: Some(BaseChain {
            kind: ChainKind::Filter,
            hook: Hook::Forward,
            priority: PRIORITY_MANGLE,
        }),
        rules: clamp,
    }
}

/// `nat_postrouting`: per link and family, masquerade (or SNAT to `snat_to`), and
/// NAT66 (`masquerade6`) or NPTv6 (`npt6`: the inside prefix replaced by the outside
/// one, interface ids kept; only the inside prefix is translated, so LAN hosts
/// numbered from the link's own delegated prefix pass untouched).
fn nat_postrouting(links: &[Resolved]) -> NftChain {
    let mut nat = Vec::new();
    for r in links {
        let ifname = &r.link.interface;
        if r.link.masquerade {
            let action = match r.link.snat_to {
                Some(addr) => Action::Snat {
                    version: IpVersion::V4,
                    addr: addr.into(),
                },
                None => Action::Masquerade,
            };
            nat.push(NftRule::new(
                vec![
                    Match::Oifname(ifname.clone()),
                    Match::Nfproto(IpVersion::V4),
                ],
                vec![action],
            ));
        }
        // `outside = "auto"` is refused by `check` until the delegated prefix is followed.
        if let Some(crate::config::Npt6 {
            inside,
            outside: Some(outside),
        }) = &r.link.npt6
        {
            nat.push(NftRule::new(
                vec![
                    Match::Oifname(ifname.clone()),
                    Match::Saddr {
                        version: IpVersion::V6,
                        nets: vec![inside.to_string()],
                    },
                ],
                vec![Action::SnatPrefix { to: *outside }],
            ));
        }
        if r.link.masquerade6 {
            nat.push(NftRule::new(
                vec![
                    Match::Oifname(ifname.clone()),
                    Match::Nfproto(IpVersion::V6),
                ],
                vec![Action::Masquerade],
            ));
        }
    }
    NftChain {
        name: "nat_postrouting".into(),
        hook: Some(BaseChain {
            kind: ChainKind::Nat,
            hook: Hook::Postrouting,
            priority: PRIORITY_SRCNAT,
        }),
        rules: nat,
    }
}

/// The destinations the main table reaches by a specific route, per family.
fn bypass_sets(input: &PlanInput) -> Vec<NftSet> {
    let mut bypass4: Vec<ipnet::Ipv4Net> = Vec::new();
    let mut bypass6: Vec<ipnet::Ipv6Net> = Vec::new();
    for net in &input.facts.main_prefixes {
        match net.trunc() {
            ipnet::IpNet::V4(n) => bypass4.push(n),
            ipnet::IpNet::V6(n) => bypass6.push(n),
        }
    }
    // Overlapping intervals are refused by nft: keep the widest.
    vec![
        NftSet {
            name: SET_BYPASS4.into(),
            elements: SetElements::Ipv4(ipnet::Ipv4Net::aggregate(&bypass4)),
        },
        NftSet {
            name: SET_BYPASS6.into(),
            elements: SetElements::Ipv6(ipnet::Ipv6Net::aggregate(&bypass6)),
        },
    ]
}

/// Each link's interface → its mark chain: a connection is the link's by where it
/// arrived (prerouting) or where it leaves (postrouting). Links sharing an interface
/// (two gateways on one segment) cannot be told apart by it: the first of them takes
/// the interface, since nft refuses a map with one key twice.
fn by_interface(links: &[Resolved]) -> Vec<(String, Verdict)> {
    let mut seen = std::collections::BTreeSet::new();
    links
        .iter()
        .filter(|r| seen.insert(r.link.interface.as_str()))
        .map(|r| {
            (
                r.link.interface.clone(),
                Verdict::Goto(mark_chain(&r.link.name)),
            )
        })
        .collect()
}

/// New connections that are never policy-routed: to destinations the main table
/// reaches by a specific route, and to the router itself (SPEC §2.5).
fn not_policy_routed() -> Vec<NftRule> {
    vec![
        NftRule::new(
            vec![Match::DaddrInSet {
                version: IpVersion::V4,
                set: SET_BYPASS4.into(),
            }],
            vec![Action::Verdict(Verdict::Return)],
        )
        .with_comment("the main table has a specific route"),
        NftRule::new(
            vec![Match::DaddrInSet {
                version: IpVersion::V6,
                set: SET_BYPASS6.into(),
            }],
            vec![Action::Verdict(Verdict::Return)],
        ),
        NftRule::new(
            vec![Match::FibDaddrLocal],
            vec![Action::Verdict(Verdict::Return)],
        )
        .with_comment("to the router itself"),
    ]
}

fn set_mark(kind: MarkKind, marks: &MarkLayout, value: u32) -> NftRule {
    NftRule::new(
        vec![],
        vec![Action::SetMark {
            kind,
            keep: marks.keep(),
            value,
        }],
    )
}

/// `policy_<name>`: the links it selects, shared by weight per connection or by a
/// sticky hash, or its fallback when it has none. When some link has an IPv6 route and
/// the two families would select differently, each family gets its own selection
/// (`meta nfproto`): an IPv6 connection never goes to a link without an IPv6 route
/// while another link of the policy has one.
pub(crate) fn policy_chain_for(policy: &Policy, links: &[Resolved], seed: u32) -> NftChain {
    let rules = if links.iter().any(|r| r.route6.is_some()) {
        let v4 = selection(policy, links, Some(Family::V4));
        let v6 = selection(policy, links, Some(Family::V6));
        let key = |s: &super::Selection| {
            s.as_ref()
                .map(|c| c.iter().map(|(r, w)| (r.link.id, *w)).collect::<Vec<_>>())
                .map_err(|f| *f)
        };
        if key(&v4) == key(&v6) {
            policy_rules(policy, v4, seed, None)
        } else {
            let mut rules = policy_rules(policy, v4, seed, Some(IpVersion::V4));
            rules.extend(policy_rules(policy, v6, seed, Some(IpVersion::V6)));
            rules
        }
    } else {
        policy_rules(policy, selection(policy, links, None), seed, None)
    };
    NftChain {
        name: policy_chain(&policy.name),
        hook: None,
        rules,
    }
}

/// The rules of a policy chain for one selection, for one family (`meta nfproto`) or
/// for both (`None`).
fn policy_rules(
    policy: &Policy,
    selected: super::Selection,
    seed: u32,
    family: Option<IpVersion>,
) -> Vec<NftRule> {
    let only = |matches: Vec<Match>| -> Vec<Match> {
        family
            .map(Match::Nfproto)
            .into_iter()
            .chain(matches)
            .collect()
    };
    let chosen = match selected {
        Ok(chosen) => chosen,
        Err(fallback) => return fallback_rules(fallback, only(vec![])),
    };
    if chosen.len() == 1 {
        vec![NftRule::new(
            only(vec![]),
            vec![Action::Verdict(Verdict::Goto(mark_chain(
                &chosen[0].0.link.name,
            )))],
        )]
    } else if policy.sticky == Sticky::Connection {
        let entries: Vec<(String, u32)> = chosen
            .iter()
            .map(|(r, w)| (mark_chain(&r.link.name), *w))
            .collect();
        let (modulus, ranges) = weights::split(&entries);
        vec![NftRule::new(
            only(vec![]),
            vec![Action::NumgenVmap {
                modulus,
                entries: ranges
                    .into_iter()
                    .map(|(chain, range)| (range, Verdict::Goto(chain)))
                    .collect(),
            }],
        )]
    } else {
        let candidates: Vec<(u8, u32)> = chosen.iter().map(|(r, w)| (r.link.id, *w)).collect();
        let entries: Vec<((u32, u32), Verdict)> =
            sticky::ranges(&sticky::assign(seed, &candidates))
                .into_iter()
                .map(|(range, i)| (range, Verdict::Goto(mark_chain(&chosen[i].0.link.name))))
                .collect();
        [IpVersion::V4, IpVersion::V6]
            .into_iter()
            .filter(|v| family.is_none_or(|f| f == *v))
            .map(|v| {
                let key = match policy.sticky {
                    Sticky::Source => HashKey::Saddr(v),
                    _ => HashKey::SaddrDaddr(v),
                };
                NftRule::new(
                    vec![Match::Nfproto(v)],
                    vec![Action::JhashVmap {
                        key,
                        modulus: sticky::BUCKETS,
                        seed,
                        entries: entries.clone(),
                    }],
                )
            })
            .collect()
    }
}

/// What a connection `matches` selects gets when its policy has no link to offer.
fn fallback_rules(fallback: Fallback, matches: Vec<Match>) -> Vec<NftRule> {
    let verdict = match fallback {
        Fallback::Main => Verdict::Goto(MARK_MAIN.into()),
        Fallback::Blackhole => Verdict::Drop,
        // `All` ends here only when no link can be installed at all.
        Fallback::Unreachable | Fallback::All => return refusal::refuse(matches, vec![]),
    };
    vec![NftRule::new(matches, vec![Action::Verdict(verdict)])]
}

/// A short digest of the table's content, stored with it so an apply can see that what
/// is installed is already what it wants. Set elements are left out (only the sets'
/// names and types count): they follow the main table, and a change of them is sent
/// element by element (`kernel::nft::elements`), never as a rewrite of the table.
fn digest(table: &NftTable) -> String {
    let sets: Vec<(&str, &str)> = table
        .sets
        .iter()
        .map(|x| {
            let ty = match x.elements {
                SetElements::Ipv4(_) => "ipv4_addr",
                SetElements::Ipv6(_) => "ipv6_addr",
            };
            (x.name.as_str(), ty)
        })
        .collect();
    let text = format!(
        "{}|{:?}|{:?}|{:?}",
        table.name, table.counters, sets, table.chains
    );
    let hash = Sha256::digest(text.as_bytes());
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
