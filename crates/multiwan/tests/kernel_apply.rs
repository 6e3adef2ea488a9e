//! The kernel layer against a real kernel: every test builds its own network namespace
//! with two veth "uplinks", applies a hand-made desired state there and checks it with
//! `ip` and `nft`. Needs root; fails (never skips) without it.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use multiwan::kernel::{ApplyReport, Kernel, KernelError, Ownership};
use multiwan::plan::nft::*;
use multiwan::plan::{
    Desired, Facts, Family, IpRule, NextHop, Route, RouteKind, RuleSelector, Sysctl,
    LAST_RESORT_METRIC,
};
use netns_lab::netns::{unique_name, Netns};
use sha2::{Digest, Sha256};

const MASK: u32 = 0xff00;
const BASE: u32 = 100;
const LOCAL_TABLE: u32 = 356;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel_apply tests need root (network namespaces, netlink, nft): run them as root"
    );
}

/// One uplink of the test router.
#[derive(Clone)]
struct Link {
    id: u32,
    ifname: &'static str,
    addr4: &'static str,
    gw4: &'static str,
    addr6: &'static str,
    gw6: &'static str,
    weight: u32,
}

fn links() -> Vec<Link> {
    vec![
        Link {
            id: 1,
            ifname: "wan1",
            addr4: "192.0.2.2",
            gw4: "192.0.2.1",
            addr6: "2001:db8:1::2",
            gw6: "2001:db8:1::1",
            weight: 3,
        },
        Link {
            id: 2,
            ifname: "wan2",
            addr4: "198.51.100.2",
            gw4: "198.51.100.1",
            addr6: "2001:db8:2::2",
            gw6: "2001:db8:2::1",
            weight: 1,
        },
    ]
}

struct Lab {
    ns: Netns,
    rt_dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.rt_dir);
    }
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root();
        let name = unique_name("mwk", tag);
        let ns = Netns::new(name.clone()).expect("creating the test namespace");
        ns.sh("for i in 1 2; do
               ip link add wan$i type veth peer name wan${i}p
               ip link set wan$i up; ip link set wan${i}p up
             done
             ip addr add 192.0.2.2/24 dev wan1
             ip addr add 198.51.100.2/24 dev wan2
             ip -6 addr add 2001:db8:1::2/64 dev wan1 nodad
             ip -6 addr add 2001:db8:2::2/64 dev wan2 nodad")
            .expect("setting up veth links");
        let rt_dir = std::env::temp_dir().join(format!("{name}-rt_tables.d"));
        let _ = std::fs::remove_dir_all(&rt_dir);
        Lab { ns, rt_dir }
    }

    /// Runs `f` with a fresh `Kernel` on a thread inside the namespace.
    fn with_kernel<T, Fut>(&self, f: impl FnOnce(Kernel) -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T>,
    {
        let dir = self.rt_dir.clone();
        self.ns
            .run(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let k = Kernel::new()
                        .expect("rtnetlink connection")
                        .with_rt_tables_dir(dir);
                    f(k).await
                })
            })
            .expect("thread in namespace")
    }

    fn try_apply(&self, d: &Desired) -> Result<ApplyReport, KernelError> {
        let d = d.clone();
        self.with_kernel(move |k| async move { k.apply(&d).await })
    }

    fn apply(&self, d: &Desired) -> ApplyReport {
        self.try_apply(d)
            .unwrap_or_else(|e| panic!("apply failed: {e}"))
    }

    fn flush(&self, d: &Desired) -> ApplyReport {
        let own = Ownership::from(d);
        self.with_kernel(move |k| async move { k.flush(&own).await })
            .unwrap_or_else(|e| panic!("flush failed: {e}"))
    }

    fn facts(&self) -> Facts {
        self.with_kernel(|k| async move { k.read_facts().await })
            .unwrap_or_else(|e| panic!("read_facts failed: {e}"))
    }

    fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        self.with_kernel(|k| async move { k.read_counters("mw").await })
            .unwrap_or_else(|e| panic!("read_counters failed: {e}"))
    }

    fn sh(&self, script: &str) -> String {
        let out = self
            .ns
            .sh(script)
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn rules(&self) -> String {
        self.sh("ip -N rule show; ip -N -6 rule show")
    }

    fn table(&self, t: u32) -> String {
        self.sh(&format!(
            "ip route show table {t} 2>/dev/null || true; ip -6 route show table {t} 2>/dev/null || true"
        ))
    }

    fn nft(&self) -> String {
        self.sh("nft list table inet mw 2>&1 || true")
    }

    fn sysctl(&self, key: &str) -> String {
        self.sh(&format!("cat /proc/sys/{key}")).trim().to_string()
    }

    /// Sends `n` UDP datagrams to 127.0.0.2 from inside the namespace (the test
    /// table's output chain counts them in `udp_probe`; the link counters also count
    /// whatever IPv6 autoconfiguration sends out of the links, so they are not exact).
    fn send_udp(&self, n: usize) {
        self.ns
            .run(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                for _ in 0..n {
                    s.send_to(b"x", "127.0.0.2:9").unwrap();
                }
            })
            .unwrap();
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sel() -> RuleSelector {
    RuleSelector::default()
}

fn rule(family: Family, priority: u32, selector: RuleSelector, table: u32) -> IpRule {
    IpRule {
        family,
        priority,
        selector,
        table,
    }
}

fn hop(facts: &Facts, l: &Link, family: Family, weight: u32) -> NextHop {
    NextHop {
        gateway: Some(ip(if family == Family::V4 { l.gw4 } else { l.gw6 })),
        ifname: l.ifname.into(),
        ifindex: facts.interfaces[l.ifname].ifindex,
        weight,
    }
}

fn set_mark(kind: MarkKind, id: u32) -> Action {
    Action::SetMark {
        kind,
        keep: !MASK,
        value: id << 8,
    }
}

fn goto(c: &str) -> Verdict {
    Verdict::Goto(c.into())
}

fn base(kind: ChainKind, hook: Hook, priority: i32) -> Option<BaseChain> {
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}

fn chain(name: &str, hook: Option<BaseChain>, rules: Vec<NftRule>) -> NftChain {
    NftChain {
        name: name.into(),
        hook,
        rules,
    }
}

/// An nft table in the shape the planner makes, for `links`.
fn nft_table(links: &[Link]) -> NftTable {
    let mut chains = Vec::new();
    for l in links {
        chains.push(chain(
            &format!("mark_isp{}", l.id),
            None,
            vec![
                NftRule::new(vec![], vec![set_mark(MarkKind::Meta, l.id)]),
                NftRule::new(vec![], vec![set_mark(MarkKind::Ct, l.id)]),
                NftRule::new(vec![], vec![Action::Counter(format!("new_isp{}", l.id))]),
            ],
        ));
        chains.push(chain(
            &format!("restore_isp{}", l.id),
            None,
            vec![NftRule::new(vec![], vec![set_mark(MarkKind::Meta, l.id)])],
        ));
    }
    let total: u32 = links.iter().map(|l| l.weight).sum();
    let mut next = 0;
    let mut ranges = Vec::new();
    for l in links {
        ranges.push((
            (next, next + l.weight - 1),
            goto(&format!("mark_isp{}", l.id)),
        ));
        next += l.weight;
    }
    chains.push(chain(
        "policy_default",
        None,
        vec![NftRule::new(
            vec![],
            vec![Action::NumgenVmap {
                modulus: total,
                entries: ranges,
            }],
        )],
    ));
    let half = 1024 / links.len() as u32;
    chains.push(chain(
        "sticky",
        None,
        vec![NftRule::new(
            vec![],
            vec![Action::JhashVmap {
                key: HashKey::Saddr(IpVersion::V4),
                modulus: 1024,
                seed: 0xdeadbeef,
                entries: links
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let i = i as u32;
                        (
                            (i * half, i * half + half - 1),
                            goto(&format!("mark_isp{}", l.id)),
                        )
                    })
                    .collect(),
            }],
        )],
    ));
    chains.push(chain(
        "misc",
        None,
        vec![
            NftRule::new(
                vec![
                    Match::Saddr {
                        version: IpVersion::V4,
                        nets: vec!["10.0.0.0/8".into(), "192.168.1.1".into()],
                    },
                    Match::L4Proto(6),
                    Match::ThDport(vec![(22, 22), (1000, 2000)]),
                ],
                vec![
                    Action::Log {
                        group: Some(3),
                        prefix: "mw ".into(),
                    },
                    Action::AnonCounter,
                    Action::Verdict(Verdict::Accept),
                ],
            ),
            NftRule::new(
                vec![Match::Iifname {
                    cmp: Cmp::Ne,
                    names: vec!["lan0".into(), "lan1".into()],
                }],
                vec![Action::Verdict(Verdict::Return)],
            )
            .with_comment("not from the LAN"),
        ],
    ));
    chains.push(chain(
        "classify",
        None,
        vec![
            NftRule::new(
                vec![Match::DaddrInSet {
                    version: IpVersion::V4,
                    set: "bypass4".into(),
                }],
                vec![Action::Verdict(Verdict::Return)],
            ),
            NftRule::new(
                vec![Match::DaddrInSet {
                    version: IpVersion::V6,
                    set: "bypass6".into(),
                }],
                vec![Action::Verdict(Verdict::Return)],
            ),
            NftRule::new(
                vec![Match::FibDaddrLocal],
                vec![Action::Verdict(Verdict::Return)],
            ),
            NftRule::new(vec![], vec![Action::Verdict(goto("policy_default"))]),
            NftRule::new(
                vec![],
                vec![Action::Verdict(Verdict::RejectHostUnreachable)],
            ),
        ],
    ));
    chains.push(chain(
        "prerouting",
        base(ChainKind::Filter, Hook::Prerouting, PRIORITY_MANGLE),
        vec![
            NftRule::new(
                vec![],
                vec![Action::CtMarkVmap {
                    mask: MASK,
                    entries: links
                        .iter()
                        .map(|l| (l.id << 8, Verdict::Jump(format!("restore_isp{}", l.id))))
                        .collect(),
                }],
            ),
            NftRule::new(
                vec![Match::CtMark {
                    mask: MASK,
                    cmp: Cmp::Ne,
                    value: 0,
                }],
                vec![Action::Verdict(Verdict::Return)],
            ),
            NftRule::new(
                vec![Match::IifLoopback],
                vec![Action::Verdict(Verdict::Return)],
            ),
            NftRule::new(
                vec![],
                vec![Action::IifnameVmap(
                    links
                        .iter()
                        .map(|l| (l.ifname.to_string(), goto(&format!("mark_isp{}", l.id))))
                        .collect(),
                )],
            ),
            NftRule::new(
                vec![Match::Iifname {
                    cmp: Cmp::Eq,
                    names: vec!["lan0".into()],
                }],
                vec![Action::Verdict(goto("classify"))],
            ),
        ],
    ));
    chains.push(chain(
        "postrouting",
        base(ChainKind::Filter, Hook::Postrouting, PRIORITY_MANGLE),
        vec![NftRule::new(
            vec![Match::CtMark {
                mask: MASK,
                cmp: Cmp::Eq,
                value: 0,
            }],
            vec![Action::OifnameVmap(
                links
                    .iter()
                    .map(|l| (l.ifname.to_string(), goto(&format!("mark_isp{}", l.id))))
                    .collect(),
            )],
        )],
    ));
    chains.push(chain(
        "nat",
        base(ChainKind::Nat, Hook::Postrouting, PRIORITY_SRCNAT),
        links
            .iter()
            .map(|l| {
                NftRule::new(
                    vec![
                        Match::Oifname(l.ifname.into()),
                        Match::Nfproto(IpVersion::V4),
                    ],
                    vec![Action::Masquerade],
                )
            })
            .collect(),
    ));
    chains.push(chain(
        "forward",
        base(ChainKind::Filter, Hook::Forward, PRIORITY_MANGLE),
        links
            .iter()
            .map(|l| {
                NftRule::new(
                    vec![Match::Oifname(l.ifname.into()), Match::TcpSyn],
                    vec![Action::ClampMssToPmtu],
                )
            })
            .collect(),
    ));
    // Not something the planner makes: lets the tests move a counter by exactly N.
    chains.push(chain(
        "output",
        base(ChainKind::Filter, Hook::Output, PRIORITY_MANGLE),
        vec![NftRule::new(
            vec![Match::Daddr {
                version: IpVersion::V4,
                nets: vec!["127.0.0.2".into()],
            }],
            vec![Action::Counter("udp_probe".into())],
        )],
    ));
    let mut t = NftTable {
        name: "mw".into(),
        counters: links
            .iter()
            .map(|l| format!("new_isp{}", l.id))
            .chain(["udp_probe".to_string()])
            .collect(),
        sets: vec![
            NftSet {
                name: "bypass4".into(),
                elements: SetElements::Ipv4(vec!["203.0.113.0/24".parse::<Ipv4Net>().unwrap()]),
            },
            NftSet {
                name: "bypass6".into(),
                elements: SetElements::Ipv6(vec![
                    "2001:db8:ff::/48".parse::<Ipv6Net>().unwrap(),
                    "2001:db8:fe::1/128".parse::<Ipv6Net>().unwrap(),
                ]),
            },
        ],
        chains,
        digest: String::new(),
    };
    t.digest = digest(&t);
    t
}

fn digest(t: &NftTable) -> String {
    let text = format!("{:?}{:?}{:?}", t.counters, t.sets, t.chains);
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A desired state for `links`, as the planner would make it (by hand: the tests do not
/// depend on the planner).
fn desired(facts: &Facts, links: &[Link]) -> Desired {
    let mut rules = Vec::new();
    let mut routes = Vec::new();
    for family in [Family::V4, Family::V6] {
        let v4 = family == Family::V4;
        rules.push(rule(
            family,
            1000,
            RuleSelector {
                suppress_prefixlength: Some(0),
                ..sel()
            },
            254,
        ));
        rules.push(rule(
            family,
            1002,
            RuleSelector {
                fwmark: Some((0xff00, MASK)),
                ..sel()
            },
            254,
        ));
        rules.push(rule(family, 1999, sel(), BASE));
        for l in links {
            let addr = if v4 { l.addr4 } else { l.addr6 };
            let host = IpNet::new(ip(addr), if v4 { 32 } else { 128 }).unwrap();
            rules.push(rule(
                family,
                1001,
                RuleSelector {
                    from: Some(host),
                    ..sel()
                },
                BASE + l.id,
            ));
            rules.push(rule(
                family,
                1003,
                RuleSelector {
                    fwmark: Some((l.id << 8, MASK)),
                    ..sel()
                },
                BASE + l.id,
            ));
            routes.push(Route {
                family,
                table: BASE + l.id,
                dst: family.default_net(),
                // IPv6 metric 0 is stored as 1024: must still compare equal.
                metric: 0,
                kind: RouteKind::Unicast(vec![hop(facts, l, family, 1)]),
            });
            routes.push(Route {
                family,
                table: BASE + l.id,
                dst: family.default_net(),
                metric: LAST_RESORT_METRIC,
                kind: RouteKind::Unreachable,
            });
        }
        routes.push(Route {
            family,
            table: BASE,
            dst: family.default_net(),
            metric: 0,
            kind: RouteKind::Unicast(
                links
                    .iter()
                    .map(|l| hop(facts, l, family, l.weight))
                    .collect(),
            ),
        });
    }
    // Router-local steering into a policy table (> 255: travels in RTA_TABLE / FRA_TABLE).
    rules.push(rule(
        Family::V4,
        1010,
        RuleSelector {
            iif: Some("lo".into()),
            ipproto: Some(6),
            dport: Some((443, 443)),
            ..sel()
        },
        LOCAL_TABLE,
    ));
    rules.push(rule(
        Family::V4,
        1011,
        RuleSelector {
            iif: Some("lo".into()),
            to: Some(net("203.0.113.0/24")),
            uidrange: Some((1000, 1999)),
            ..sel()
        },
        LOCAL_TABLE,
    ));
    routes.push(Route {
        family: Family::V4,
        table: LOCAL_TABLE,
        dst: Family::V4.default_net(),
        metric: 0,
        kind: RouteKind::Unicast(vec![hop(facts, &links[0], Family::V4, 1)]),
    });
    routes.push(Route {
        family: Family::V4,
        table: LOCAL_TABLE,
        dst: net("203.0.113.0/24"),
        metric: 10,
        kind: RouteKind::Blackhole,
    });
    rules.sort();
    routes.sort();
    let mut sysctls = vec![Sysctl {
        key: "net/ipv4/fib_multipath_hash_policy".into(),
        value: "1".into(),
    }];
    for l in links {
        sysctls.push(Sysctl {
            key: format!("net/ipv4/conf/{}/src_valid_mark", l.ifname),
            value: "1".into(),
        });
    }
    let mut table_names = vec![(BASE, "mw_default".to_string())];
    table_names.extend(links.iter().map(|l| (BASE + l.id, format!("isp{}", l.id))));
    table_names.push((LOCAL_TABLE, "mw_local".into()));
    Desired {
        rules,
        routes,
        nft: nft_table(links),
        sysctls,
        table_names,
        owned_tables: (BASE..=BASE + 9)
            .chain(LOCAL_TABLE..=LOCAL_TABLE + 3)
            .collect(),
        owned_priorities: (1000, 1999),
        links: vec![],
        policies: Vec::new(),
    }
}

/// Nothing of multiwan's left in the namespace.
fn assert_nothing_owned(lab: &Lab, d: &Desired) {
    let rules = lab.rules();
    for line in rules.lines() {
        let prio: u32 = line.split(':').next().unwrap().trim().parse().unwrap();
        // Only tagged rules are multiwan's (a foreign one in the range stays).
        let tagged = line.contains("proto multiwan") || line.contains("proto 77");
        assert!(
            !(tagged && (1000..=1999).contains(&prio)),
            "owned rule left: {line}\n{rules}"
        );
    }
    for t in &d.owned_tables {
        assert_eq!(lab.table(*t).trim(), "", "routes left in table {t}");
    }
    assert!(
        lab.nft().contains("No such file"),
        "nft table left:\n{}",
        lab.nft()
    );
    assert!(
        !lab.rt_dir.join("mw.conf").exists(),
        "rt_tables.d file left"
    );
}

#[test]
fn read_facts_sees_interfaces_gateways_and_main_prefixes() {
    let lab = Lab::new("facts");
    lab.sh("ip route add default via 192.0.2.1 dev wan1 metric 10
         ip route add default via 198.51.100.1 dev wan2 metric 20
         ip -6 route add default via 2001:db8:2::1 dev wan2
         ip route add 10.9.0.0/16 via 192.0.2.1
         ip link set wan2p down");
    let f = lab.facts();
    let w1 = &f.interfaces["wan1"];
    let w2 = &f.interfaces["wan2"];
    assert!(w1.admin_up && w1.carrier);
    assert!(w2.admin_up && !w2.carrier, "peer down: no carrier");
    assert_eq!(
        w1.addresses,
        vec![net("192.0.2.2/24"), net("2001:db8:1::2/64")]
    );
    assert!(
        w2.addresses
            .iter()
            .all(|a| !a.addr().to_string().starts_with("fe80")),
        "link-local addresses are left out: {:?}",
        w2.addresses
    );
    assert_eq!(w1.default_gateway4, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(w2.default_gateway4, Some("198.51.100.1".parse().unwrap()));
    assert_eq!(w2.default_gateway6, Some("2001:db8:2::1".parse().unwrap()));
    assert_eq!(w1.default_gateway6, None);
    for p in [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "10.9.0.0/16",
        "2001:db8:1::/64",
    ] {
        assert!(
            f.main_prefixes.contains(&net(p)),
            "{p} missing from {:?}",
            f.main_prefixes
        );
    }
    assert!(
        f.main_prefixes.iter().all(|p| p.prefix_len() > 0
            && !p.addr().to_string().starts_with("fe80")
            && !p.addr().is_multicast()),
        "{:?}",
        f.main_prefixes
    );
    assert_eq!(f.interfaces["lo"].ifindex, 1);
}

#[test]
fn apply_installs_everything_and_second_apply_changes_nothing() {
    let lab = Lab::new("apply");
    let d = desired(&lab.facts(), &links());
    let r = lab.apply(&d);
    assert!(r.changed);
    assert_eq!(r.rules_added, d.rules.len(), "{:#?}", r.changes);
    assert_eq!(r.routes_added, d.routes.len(), "{:#?}", r.changes);
    assert_eq!(
        (r.rules_deleted, r.routes_deleted, r.routes_replaced),
        (0, 0, 0)
    );
    assert!(r.nft && r.table_names);
    assert_eq!(r.sysctls, 3, "{:#?}", r.changes);

    let rules = lab.rules();
    for want in [
        "1000:\tfrom all lookup 254 suppress_prefixlength 0",
        "1001:\tfrom 192.0.2.2 lookup 101",
        "1001:\tfrom 198.51.100.2 lookup 102",
        "1002:\tfrom all fwmark 0xff00/0xff00 lookup 254",
        "1003:\tfrom all fwmark 0x100/0xff00 lookup 101",
        "1003:\tfrom all fwmark 0x200/0xff00 lookup 102",
        "1010:\tfrom all iif lo ipproto ipproto-6 dport 443 lookup 356",
        "1011:\tfrom all to 203.0.113.0/24 iif lo uidrange 1000-1999 lookup 356",
        "1999:\tfrom all lookup 100",
        "1001:\tfrom 2001:db8:1::2 lookup 101",
        "1003:\tfrom all fwmark 0x200/0xff00 lookup 102",
    ] {
        assert!(rules.contains(want), "missing `{want}` in\n{rules}");
    }
    let t101 = lab.table(101);
    assert!(t101.contains("default via 192.0.2.1 dev wan1"), "{t101}");
    assert!(
        t101.contains("unreachable default proto multiwan metric 4294967295"),
        "{t101}"
    );
    assert!(
        t101.contains("default via 2001:db8:1::1 dev wan1 proto multiwan metric 1024"),
        "{t101}"
    );
    let t100 = lab.table(100);
    assert!(
        t100.contains("nexthop via 192.0.2.1 dev wan1 weight 3"),
        "{t100}"
    );
    assert!(
        t100.contains("nexthop via 198.51.100.1 dev wan2 weight 1"),
        "{t100}"
    );
    assert!(
        t100.contains("nexthop via 2001:db8:1::1 dev wan1 weight 3"),
        "{t100}"
    );
    let t356 = lab.table(356);
    assert!(t356.contains("default via 192.0.2.1 dev wan1"), "{t356}");
    assert!(
        t356.contains("blackhole 203.0.113.0/24 proto multiwan metric 10"),
        "{t356}"
    );

    let nft = lab.nft();
    for want in [
        "counter new_isp1",
        "counter new_isp2",
        "elements = { 203.0.113.0/24 }",
        "type filter hook prerouting priority mangle; policy accept;",
        "numgen random mod 4 vmap { 0-2 : goto mark_isp1, 3 : goto mark_isp2 }",
        "jhash ip saddr mod 1024 seed 0xdeadbeef vmap { 0-511 : goto mark_isp1, 512-1023 : goto mark_isp2 }",
        "meta mark set meta mark & 0xffff01ff | 0x00000100",
        "ct mark & 0x0000ff00 vmap { 0x00000100 : jump restore_isp1, 0x00000200 : jump restore_isp2 }",
        "oifname \"wan1\" meta nfproto ipv4 masquerade",
        "tcp option maxseg size set rt mtu",
        "reject with icmpx host-unreachable",
        &format!("return comment \"{}\"", d.nft.digest),
    ] {
        assert!(nft.contains(want), "missing `{want}` in\n{nft}");
    }
    assert_eq!(lab.sysctl("net/ipv4/conf/wan1/src_valid_mark"), "1");
    assert_eq!(lab.sysctl("net/ipv4/fib_multipath_hash_policy"), "1");
    let names = std::fs::read_to_string(lab.rt_dir.join("mw.conf")).unwrap();
    assert!(
        names.contains("101 isp1\n") && names.contains("356 mw_local\n"),
        "{names}"
    );

    let again = lab.apply(&d);
    assert!(!again.changed, "second apply changed: {:#?}", again.changes);
    assert_eq!(
        again,
        ApplyReport {
            elapsed: again.elapsed,
            ..Default::default()
        }
    );
}

#[test]
fn edited_desired_changes_only_what_differs() {
    let lab = Lab::new("edit");
    let facts = lab.facts();
    let d = desired(&facts, &links());
    lab.apply(&d);

    // A weight changes: one route replaced (both families' multipath), nothing else.
    let mut ls = links();
    ls[0].weight = 2;
    let mut d2 = desired(&facts, &ls);
    d2.nft = d.nft.clone();
    let r = lab.apply(&d2);
    assert_eq!(r.routes_replaced, 2, "{:#?}", r.changes);
    assert_eq!(r.count(), 2, "{:#?}", r.changes);
    assert!(!r.nft);
    let t100 = lab.table(100);
    assert!(
        t100.contains("nexthop via 192.0.2.1 dev wan1 weight 2"),
        "{t100}"
    );
    assert!(
        t100.contains("nexthop via 2001:db8:1::1 dev wan1 weight 2"),
        "{t100}"
    );

    // A link leaves: its rules and routes go, the multipath routes become single ones,
    // the nft table is rewritten; nothing is added.
    let one = vec![links()[0].clone()];
    let d3 = desired(&facts, &one);
    let r = lab.apply(&d3);
    assert_eq!(r.rules_added, 0, "{:#?}", r.changes);
    assert_eq!(r.routes_added, 0, "{:#?}", r.changes);
    assert_eq!(
        r.rules_deleted, 4,
        "from + fwmark rules of wan2, both families: {:#?}",
        r.changes
    );
    assert_eq!(
        r.routes_deleted, 4,
        "table 102, both families: {:#?}",
        r.changes
    );
    assert_eq!(r.routes_replaced, 2, "{:#?}", r.changes);
    assert!(r.nft && r.table_names);
    assert_eq!(r.sysctls, 0);
    assert_eq!(lab.table(102).trim(), "");
    assert!(!lab.rules().contains("lookup 102"), "{}", lab.rules());
    let t100 = lab.table(100);
    assert!(t100.contains("default via 192.0.2.1 dev wan1"), "{t100}");
    assert!(!t100.contains("wan2"), "{t100}");
    let nft = lab.nft();
    assert!(!nft.contains("isp2"), "{nft}");
    assert!(!lab.apply(&d3).changed);
}

#[test]
fn foreign_state_survives_apply_and_flush() {
    let lab = Lab::new("foreign");
    let d = desired(&lab.facts(), &links());
    lab.sh("ip rule add pref 900 fwmark 0x5 lookup 200
         ip rule add pref 3000 from 192.0.2.0/24 lookup 200
         ip -6 rule add pref 3000 lookup 200
         ip route add default via 192.0.2.1 dev wan1 table 200
         ip route add 10.1.0.0/16 via 198.51.100.1
         nft add table inet other; nft add chain inet other c
         nft add table ip mw; nft add chain ip mw c");
    std::fs::create_dir_all(&lab.rt_dir).unwrap();
    std::fs::write(lab.rt_dir.join("other.conf"), "200 other\n").unwrap();
    // A rule inside multiwan's range that multiwan did not add (no `proto multiwan`
    // tag) is foreign (SPEC §3, issue #9): apply and flush leave it.
    lab.sh("ip rule add pref 1500 lookup 77");

    let r = lab.apply(&d);
    assert_eq!(r.rules_deleted, 0, "{:#?}", r.changes);
    assert!(lab.rules().contains("1500:"));
    let f = lab.flush(&d);
    assert!(f.changed && f.nft && f.table_names);
    assert_eq!(f.rules_deleted, d.rules.len());
    assert_eq!(f.routes_deleted, d.routes.len());
    assert_nothing_owned(&lab, &d);

    let rules = lab.rules();
    for want in [
        "1500:\tfrom all lookup 77",
        "900:\tfrom all fwmark 0x5 lookup 200",
        "3000:\tfrom 192.0.2.0/24 lookup 200",
        "3000:\tfrom all lookup 200",
    ] {
        assert!(rules.contains(want), "foreign rule `{want}` gone:\n{rules}");
    }
    assert!(lab.table(200).contains("default via 192.0.2.1 dev wan1"));
    assert!(lab
        .sh("ip route show")
        .contains("10.1.0.0/16 via 198.51.100.1"));
    let tables = lab.sh("nft list tables");
    assert!(
        tables.contains("table inet other") && tables.contains("table ip mw"),
        "{tables}"
    );
    assert!(lab.rt_dir.join("other.conf").exists());

    // Flushing what is already gone changes nothing.
    assert!(!lab.flush(&d).changed);
}

#[test]
fn counters_keep_counting_across_applies() {
    let lab = Lab::new("counters");
    let facts = lab.facts();
    let d = desired(&facts, &links());
    lab.apply(&d);
    lab.send_udp(5);
    let before = lab.counters();
    assert_eq!(before["udp_probe"], 5, "{before:?}");

    // Rewrite the table (another weight): the counter objects stay, with their counts.
    let mut ls = links();
    ls[1].weight = 3;
    let r = lab.apply(&desired(&facts, &ls));
    assert!(r.nft, "{:#?}", r.changes);
    lab.send_udp(2);
    let mid = lab.counters();
    assert_eq!(mid["udp_probe"], 7, "{mid:?}");
    assert!(
        mid["new_isp1"] >= before["new_isp1"],
        "{before:?} -> {mid:?}"
    );

    // A link leaving takes its counter along, the others stay.
    let r = lab.apply(&desired(&facts, &ls[..1]));
    assert!(r.nft);
    let after = lab.counters();
    assert_eq!(after.get("udp_probe"), Some(&7), "{after:?}");
    assert!(after["new_isp1"] >= mid["new_isp1"], "{mid:?} -> {after:?}");
    assert!(!after.contains_key("new_isp2"), "{after:?}");
}

#[test]
fn nft_table_changed_behind_our_back_is_left_alone_while_the_digest_matches() {
    // The digest is the contract: same digest, no nft call that changes anything.
    let lab = Lab::new("digest");
    let d = desired(&lab.facts(), &links());
    lab.apply(&d);
    lab.sh("nft add chain inet mw extra");
    assert!(!lab.apply(&d).nft);
    assert!(lab.nft().contains("chain extra"));
    // A new digest rewrites the table and removes what is not desired.
    let mut d2 = d.clone();
    d2.nft.digest.push('x');
    assert!(lab.apply(&d2).nft);
    assert!(!lab.nft().contains("chain extra"), "{}", lab.nft());
}

#[test]
fn failed_apply_puts_back_what_it_changed() {
    let lab = Lab::new("rollback");
    let facts = lab.facts();
    let mut d = desired(&facts, &links());
    // A next hop on an interface that does not exist: the last IPv4 route fails.
    d.routes.push(Route {
        family: Family::V4,
        table: LOCAL_TABLE + 1,
        dst: Family::V4.default_net(),
        metric: 0,
        kind: RouteKind::Unicast(vec![NextHop {
            gateway: Some(ip("192.0.2.1")),
            ifname: "ghost".into(),
            ifindex: 9999,
            weight: 1,
        }]),
    });
    d.routes.sort();
    let before_sysctl = lab.sysctl("net/ipv4/conf/wan1/src_valid_mark");
    let err = lab
        .try_apply(&d)
        .expect_err("a route on a missing interface must fail");
    let text = err.to_string();
    assert!(
        text.contains("routes") && text.contains("put back"),
        "{text}"
    );
    assert_eq!(
        lab.sysctl("net/ipv4/conf/wan1/src_valid_mark"),
        before_sysctl
    );
    for t in &d.owned_tables {
        assert_eq!(lab.table(*t).trim(), "", "table {t} not restored");
    }
    assert!(lab.nft().contains("No such file"));
}

#[test]
fn conntrack_delete_by_mark_only_touches_that_mark() {
    let lab = Lab::new("conntrack");
    let ct = |args: &str| {
        format!("conntrack -I -p tcp --state ESTABLISHED --timeout 600 --dport 80 {args} >/dev/null 2>&1")
    };
    lab.sh(&[
        // Owned mark 0x100 under 0xff00: zone 0, zone 7, IPv6, and with foreign high bits.
        ct("-s 10.0.0.1 -d 10.0.0.2 --sport 1000 --mark 0x100"),
        ct("-s 10.0.0.1 -d 10.0.0.2 --sport 1001 --mark 0x100 --zone 7"),
        ct("-s 2001:db8::1 -d 2001:db8::2 --sport 1002 --mark 0x100"),
        ct("-s 10.0.0.1 -d 10.0.0.2 --sport 1003 --mark 0x70100"),
        // Not ours: another link's mark, no mark, a foreign mark outside the mask.
        ct("-s 10.0.0.1 -d 10.0.0.2 --sport 2000 --mark 0x200"),
        ct("-s 10.0.0.1 -d 10.0.0.2 --sport 2001"),
        ct("-s 2001:db8::1 -d 2001:db8::2 --sport 2002 --mark 0x1"),
    ]
    .join("\n"));
    let deleted = lab
        .with_kernel(|k| async move { k.delete_conntrack_by_mark(0x100, 0xff00).await })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(deleted, 4);
    let left = lab.sh("conntrack -L 2>/dev/null; conntrack -L -f ipv6 2>/dev/null");
    for sport in ["1000", "1001", "1002", "1003"] {
        assert!(
            !left.contains(&format!("sport={sport} ")),
            "{sport} survived:\n{left}"
        );
    }
    for sport in ["2000", "2001", "2002"] {
        assert!(
            left.contains(&format!("sport={sport} ")),
            "{sport} was deleted:\n{left}"
        );
    }
    let again = lab
        .with_kernel(|k| async move { k.delete_conntrack_by_mark(0x100, 0xff00).await })
        .unwrap();
    assert_eq!(again, 0);
}

/// `d` moved to another instance's ranges: tables +200, priorities +2000, nft table `mw2`.
fn other_instance(d: &Desired) -> Desired {
    let mut o = d.clone();
    let moved = |t: u32| {
        if d.owned_tables.contains(&t) {
            t + 200
        } else {
            t
        }
    };
    for r in &mut o.rules {
        r.priority += 2000;
        r.table = moved(r.table);
    }
    for r in &mut o.routes {
        r.table = moved(r.table);
    }
    o.owned_tables = d.owned_tables.iter().map(|t| t + 200).collect();
    o.owned_priorities = (3000, 3999);
    o.nft.name = "mw2".into();
    o.table_names = d
        .table_names
        .iter()
        .map(|(t, n)| (t + 200, format!("{n}_2")))
        .collect();
    o
}

#[test]
fn another_instance_and_untagged_objects_are_left_alone() {
    let lab = Lab::new("instances");
    let d = desired(&lab.facts(), &links());
    let other = other_instance(&d);
    lab.apply(&other);
    let theirs = format!("{}{}", lab.rules(), lab.table(301));
    // Untagged routes in one of multiwan's tables: a route by hand, and one that sits
    // where multiwan wants its own (same destination and metric): neither is touched.
    lab.sh("ip route add blackhole 203.0.113.0/24 table 101
            ip route add unreachable default metric 4294967295 table 102 proto static");

    let r = lab.apply(&d);
    assert_eq!(
        (r.rules_deleted, r.routes_deleted, r.routes_replaced),
        (0, 0, 0),
        "{:#?}",
        r.changes
    );
    assert!(lab.table(101).contains("blackhole 203.0.113.0/24"));
    assert!(
        lab.table(102)
            .contains("unreachable default proto static metric 4294967295"),
        "{}",
        lab.table(102)
    );
    let f = lab.flush(&d);
    assert_eq!(f.rules_deleted, d.rules.len(), "{:#?}", f.changes);
    assert_eq!(
        f.routes_deleted,
        d.routes.len() - 1,
        "all but the one held by a foreign route: {:#?}",
        f.changes
    );
    assert_eq!(format!("{}{}", lab.rules(), lab.table(301)), theirs);
    assert!(lab.table(101).contains("blackhole 203.0.113.0/24"));
    assert!(lab.table(102).contains("proto static"));
    assert!(lab.sh("nft list tables").contains("table inet mw2"));
    assert!(lab.rt_dir.join("mw2.conf").exists());
}

#[test]
fn flush_goes_on_past_a_failure_and_reports_every_error() {
    let lab = Lab::new("flusherr");
    let d = desired(&lab.facts(), &links());
    lab.apply(&d);
    // An `nft` that always fails, first in PATH (nextest runs each test in its own
    // process, so the change is this test's alone).
    let shim = lab.rt_dir.with_extension("bin");
    std::fs::create_dir_all(&shim).unwrap();
    let fake = shim.join("nft");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'nft: broken for the test' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", shim.display()));

    let own = Ownership::from(&d);
    let err = lab
        .with_kernel(move |k| async move { k.flush(&own).await })
        .expect_err("nft fails: the flush must say so");
    std::env::set_var("PATH", path);
    let _ = std::fs::remove_dir_all(&shim);
    let text = err.to_string();
    assert!(
        text.contains("flush removed") && text.contains("broken for the test"),
        "{text}"
    );
    // Everything but the nft table went anyway.
    assert!(!lab.rules().contains("proto 77") && !lab.rules().contains("proto multiwan"));
    for t in &d.owned_tables {
        assert_eq!(lab.table(*t).trim(), "", "routes left in table {t}");
    }
    assert!(lab.nft().contains("table inet mw"), "{}", lab.nft());
    // With nft back, a second flush removes the rest.
    let f = lab.flush(&d);
    assert!(f.nft, "{:#?}", f.changes);
    assert_nothing_owned(&lab, &d);
}
