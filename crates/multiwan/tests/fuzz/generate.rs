//! Configs built from a tape: mostly valid shapes, with odd values mixed in.

use super::Tape;

pub(super) const NAMES: &[&str] = &[
    "isp1",
    "isp2",
    "lte",
    "a",
    "main",
    "123",
    "x-y_z",
    "averyveryverylongname",
    "ISP",
    "voip",
    "default",
    "",
];
pub(super) const IFACES: &[&str] = &[
    "\"wan1\"", "\"wan2\"", "\"wan3\"", "\"lan0\"", "\"ppp0\"", "\"\"",
];
pub(super) const GATEWAYS: &[&str] = &[
    "\"auto\"",
    "\"none\"",
    "\"100.64.1.1\"",
    "\"100.64.2.1\"",
    "\"2001:db8::1\"",
    "\"x\"",
    "1",
];
pub(super) const GATEWAYS6: &[&str] = &[
    "\"auto\"",
    "\"none\"",
    "\"fe80::1\"",
    "\"2001:db8:1::1\"",
    "\"1.2.3.4\"",
];
pub(super) const SMALL: &[&str] = &[
    "1", "2", "3", "0", "254", "255", "256", "257", "-1", "1000", "\"1\"", "1.5",
];
pub(super) const BOOLS: &[&str] = &["true", "false", "1", "\"yes\""];
pub(super) const DURATIONS: &[&str] = &[
    "\"1s\"",
    "\"200ms\"",
    "\"0s\"",
    "\"5\"",
    "\"5m\"",
    "\"-1s\"",
    "\"1h\"",
    "\"99999999999s\"",
    "\"1.5s\"",
    "3",
];
pub(super) const FALLBACKS: &[&str] = &[
    "\"all\"",
    "\"unreachable\"",
    "\"blackhole\"",
    "\"main\"",
    "\"isp1\"",
    "\"x\"",
];
pub(super) const PREFIXES: &[&str] = &[
    "\"192.0.2.0/25\"",
    "\"192.0.2.0/24\"",
    "\"198.18.0.2/32\"",
    "\"203.0.113.0/24\"",
    "\"0.0.0.0/0\"",
    "\"2001:db8::/32\"",
    "\"2001:db8:1::/48\"",
    "\"::/0\"",
    "\"192.0.2.1/33\"",
    "\"x\"",
    "\"198.51.100.7\"",
];
pub(super) const PORTS: &[&str] = &[
    "5060",
    "\"10000-20000\"",
    "0",
    "65535",
    "70000",
    "\"20-10\"",
    "\"80-80\"",
    "443",
    "-3",
];
pub(super) const TARGETS: &[&str] = &[
    "\"198.18.0.1\"",
    "\"198.18.0.2\"",
    "\"2001:db8::5\"",
    "\"http://198.18.0.1/\"",
    "\"https://example.com/x\"",
    "\"x\"",
];

/// Settings lines: a key and its candidate values.
pub(super) const SETTINGS: &[(&str, &[&str])] = &[
    (
        "mark_mask",
        &[
            "0xff00",
            "0xff",
            "0xf0",
            "0xff0000",
            "0x1",
            "0",
            "0xffffffff",
            "-1",
            "0xff000000",
            "0x1fe",
        ],
    ),
    (
        "table_base",
        &["100", "200", "0", "250", "4294967000", "1", "-5", "300"],
    ),
    (
        "rule_priority",
        &[
            "1000", "2000", "0", "32765", "31766", "31767", "40000", "-1",
        ],
    ),
    (
        "nft_table",
        &["\"fz\"", "\"x\"", "\"\"", "\"a b\"", "\"a;b\"", "\"mw_1\""],
    ),
    ("table_names", BOOLS),
    (
        "lan",
        &[
            "[\"lan0\"]",
            "[]",
            "[\"wan1\"]",
            "[\"lan0\", \"lan0\"]",
            "\"lan0\"",
            "[\"nope\"]",
        ],
    ),
    ("local_traffic", BOOLS),
    ("fallback", FALLBACKS),
    ("on_exit", &["\"keep\"", "\"flush\"", "\"x\""]),
    (
        "metrics",
        &["\"\"", "\"127.0.0.1:9581\"", "\"nonsense\"", "\"[::1]:1\""],
    ),
    ("hook_timeout", DURATIONS),
    ("log_group", &["0", "1", "65535", "70000", "-1"]),
    ("bogus_key", &["1"]),
];

pub(super) const LINK_KEYS: &[(&str, &[&str])] = &[
    ("interface", IFACES),
    ("gateway", GATEWAYS),
    ("gateway6", GATEWAYS6),
    ("priority", SMALL),
    ("weight", SMALL),
    ("masquerade", BOOLS),
    ("snat_to", &["\"100.64.1.2\"", "\"2001:db8::2\"", "\"x\""]),
    ("masquerade6", BOOLS),
    (
        "npt6",
        &[
            "{ inside = \"fd00:1::/64\", outside = \"2001:db8:1:100::/64\" }",
            "{ inside = \"fd00:1::/64\", outside = \"auto\" }",
            "{ inside = \"fd00:1::/48\", outside = \"2001:db8:1:100::/64\" }",
            "{ inside = \"10.0.0.0/8\", outside = \"2001:db8::/64\" }",
            "{ inside = \"fd00:1::/64\" }",
        ],
    ),
    ("mss_clamp", BOOLS),
    ("flush_on_down", BOOLS),
    ("flush_on_recover", BOOLS),
    ("enabled", BOOLS),
];

pub(super) const CHECK_KEYS: &[(&str, &[&str])] = &[
    (
        "method",
        &[
            "\"icmp\"",
            "\"tcp\"",
            "\"http\"",
            "\"https\"",
            "\"dns\"",
            "\"arp\"",
            "\"none\"",
            "\"bogus\"",
        ],
    ),
    ("port", &["443", "0", "65536", "53"]),
    ("query", &["\"example.com\"", "\"\""]),
    ("interval", DURATIONS),
    ("timeout", DURATIONS),
    ("min_targets", SMALL),
    ("down_after", SMALL),
    ("up_after", SMALL),
    ("max_loss", &["0", "5", "100", "101"]),
    ("max_rtt", DURATIONS),
    ("window", SMALL),
    (
        "ca_file",
        &["\"/etc/ssl/certs/ca-certificates.crt\"", "\"/nonexistent\""],
    ),
];

/// Keys left out of sane configs: unknown ones (`snat_to` and `ca_file` are in the spec
/// but not built yet) and keys that need others.
pub(super) const ODD_KEYS: &[&str] = &[
    "bogus_key",
    "snat_to",
    "ca_file",
    "query",
    "port",
    "method",
    "masquerade6",
    "min_targets",
];

pub(super) fn list(t: &mut Tape, pool: &[&str], max: usize) -> String {
    let n = t.below(max + 1);
    let items: Vec<&str> = (0..n).map(|_| t.value(pool)).collect();
    format!("[{}]", items.join(", "))
}

fn keys(t: &mut Tape, out: &mut String, keys: &[(&str, &[&str])], percent: u32) {
    for (key, values) in keys {
        if t.chance(percent) && !(t.sane && ODD_KEYS.contains(key)) {
            out.push_str(&format!("{key} = {}\n", t.value(values)));
        }
    }
}

/// A config built from the tape: mostly valid shapes, with odd values mixed in.
pub fn generate(t: &mut Tape) -> String {
    t.sane = t.below(4) != 0;
    let mut out = String::from("[settings]\n");
    keys(t, &mut out, SETTINGS, 25);
    let n_links = 1 + t.below(4);
    let mut names = Vec::new();
    for k in 0..n_links {
        let name = if !t.sane && t.chance(15) {
            t.pick(NAMES).to_string()
        } else {
            format!("isp{}", k + 1)
        };
        out.push_str(&format!("\n[links.\"{name}\"]\n"));
        if t.sane || !t.chance(5) {
            let id = if !t.sane && t.chance(15) {
                t.pick(SMALL).to_string()
            } else {
                (k + 1).to_string()
            };
            out.push_str(&format!("id = {id}\n"));
        }
        let iface = if !t.sane && t.chance(20) {
            t.pick(IFACES).to_string()
        } else {
            format!("\"wan{}\"", k + 1)
        };
        out.push_str(&format!("interface = {iface}\n"));
        keys(t, &mut out, &LINK_KEYS[1..], 20);
        if t.chance(60) {
            out.push_str(&format!("\n[links.\"{name}\".check]\n"));
            let targets = if t.sane {
                ["[\"198.18.0.1\"]", "[\"198.18.0.1\", \"198.18.0.2\"]"][t.below(2)].to_string()
            } else {
                list(t, TARGETS, 3)
            };
            out.push_str(&format!("targets = {targets}\n"));
            keys(t, &mut out, CHECK_KEYS, 15);
        }
        names.push(name);
    }
    let mut targets: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    targets.extend(policies(t, &mut out, &names));
    targets.extend(["\"main\"", "\"unreachable\"", "\"blackhole\""].map(String::from));
    if !t.sane {
        targets.push("\"missing\"".into());
    }
    for _ in 0..t.below(6) {
        rule(t, &mut out, &targets);
    }
    out
}

/// `[policies.*]` over the links `names`; returns their names as rules give them.
fn policies(t: &mut Tape, out: &mut String, names: &[String]) -> Vec<String> {
    let mut targets = Vec::new();
    for p in 0..t.below(3) {
        let name = if t.sane {
            format!("pol{p}")
        } else {
            t.pick(&["voip", "bulk", "isp1", "main", "x"]).to_string()
        };
        out.push_str(&format!("\n[policies.\"{name}\"]\nlinks = ["));
        let mut items = Vec::new();
        let n = if t.sane {
            1 + t.below(names.len())
        } else {
            t.below(4)
        };
        for i in 0..n {
            let link = if t.sane {
                names[i].clone()
            } else {
                names[t.below(names.len())].clone()
            };
            items.push(if t.chance(30) {
                format!(
                    "{{ link = \"{link}\", priority = {}, weight = {} }}",
                    t.value(SMALL),
                    t.value(SMALL)
                )
            } else {
                format!("\"{link}\"")
            });
        }
        out.push_str(&items.join(", "));
        out.push_str("]\n");
        if t.chance(50) {
            let sticky = t.value(&[
                "\"connection\"",
                "\"source\"",
                "\"source-destination\"",
                "\"x\"",
            ]);
            out.push_str(&format!("sticky = {sticky}\n"));
        }
        if t.chance(30) {
            out.push_str(&format!("fallback = {}\n", t.value(FALLBACKS)));
        }
        targets.push(format!("\"{name}\""));
    }
    targets
}

/// One `[[rules]]` entry whose policy is one of `targets`.
fn rule(t: &mut Tape, out: &mut String, targets: &[String]) {
    out.push_str("\n[[rules]]\n");
    if t.chance(50) && !t.sane {
        out.push_str(&format!(
            "name = \"{}\"\n",
            t.value(&["sip", "web", "sip", "r-1", ""])
        ));
    }
    for (key, percent) in [("source", 40), ("destination", 60)] {
        if t.chance(percent) {
            out.push_str(&format!("{key} = {}\n", list(t, PREFIXES, 3)));
        }
    }
    let mut ports_fit = !t.sane;
    if t.chance(40) {
        let proto = t.value(&[
            "\"tcp\"",
            "\"udp\"",
            "\"icmp\"",
            "\"icmpv6\"",
            "\"any\"",
            "\"sctp\"",
        ]);
        out.push_str(&format!("protocol = {proto}\n"));
        ports_fit |= proto == "\"tcp\"" || proto == "\"udp\"";
    }
    if t.chance(30) && ports_fit {
        out.push_str(&format!("destination_port = {}\n", list(t, PORTS, 3)));
    }
    if t.chance(15) {
        out.push_str(&format!("input_interface = {}\n", t.value(IFACES)));
    }
    if t.chance(10) {
        out.push_str(&format!(
            "user = {}\n",
            t.value(&["\"root\"", "0", "\"nobody\"", "\"nosuchuser\"", "-1"])
        ));
    }
    if t.chance(10) {
        out.push_str(&format!(
            "cgroup = {}\n",
            t.value(&["\"fz-none.slice/x.service\"", "\"\"", "\"/\""])
        ));
    }
    let policy = targets[t.below(targets.len())].clone();
    out.push_str(&format!("policy = {policy}\n"));
    if t.chance(20) && !t.sane {
        out.push_str(&format!("fallback = {}\n", t.value(FALLBACKS)));
    }
    if t.chance(10) {
        out.push_str(&format!("log = {}\n", t.value(BOOLS)));
    }
}
