//! The fuzzing machinery shared by `fuzz_config.rs` and `fuzz_regressions.rs`: a
//! choice tape (proptest shrinks it towards zeros, i.e. the first, plainest choices),
//! a config generator, TOML mutations of the corpus, the checks every input must pass,
//! and `nft -c` over many rulesets at once.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use multiwan::config::{self, ConfigErrors};
use multiwan::kernel::nft;
use multiwan::plan::nft::NftTable;
use multiwan::plan::{self, Facts, InterfaceFacts, LinkState, LinkStates, PlanInput};
use multiwan::render;
use netns_lab::Netns;
use proptest::prop_assert;
use proptest::test_runner::TestCaseError;

use crate::common;

/// Numbers that decide every choice; 0 once used up.
pub struct Tape<'a> {
    choices: &'a [u32],
    at: usize,
    /// Values come only from the first two of each pool (the valid ones), so that
    /// many generated configs are accepted and reach the planner and nft.
    pub sane: bool,
}

impl<'a> Tape<'a> {
    pub fn new(choices: &'a [u32]) -> Tape<'a> {
        Tape {
            choices,
            at: 0,
            sane: false,
        }
    }

    pub fn next(&mut self) -> u32 {
        let v = self.choices.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        v
    }

    /// `0..n`
    pub fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n.max(1)
    }

    pub fn pick<'p, T: ?Sized>(&mut self, pool: &'p [&'p T]) -> &'p T {
        pool[self.below(pool.len())]
    }

    /// A value from `pool`: from its first two only when [`Tape::sane`].
    pub fn value<'p>(&mut self, pool: &'p [&'p str]) -> &'p str {
        let n = if self.sane {
            pool.len().min(2)
        } else {
            pool.len()
        };
        pool[self.below(n)]
    }

    /// True `percent` of the time (false for a zero, so shrinking drops options).
    pub fn chance(&mut self, percent: u32) -> bool {
        let v = self.next();
        v != 0 && v % 100 < percent
    }
}

// ------------------------------------------------------------------ generation

const NAMES: &[&str] = &[
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
const IFACES: &[&str] = &[
    "\"wan1\"", "\"wan2\"", "\"wan3\"", "\"lan0\"", "\"ppp0\"", "\"\"",
];
const GATEWAYS: &[&str] = &[
    "\"auto\"",
    "\"none\"",
    "\"100.64.1.1\"",
    "\"100.64.2.1\"",
    "\"2001:db8::1\"",
    "\"x\"",
    "1",
];
const GATEWAYS6: &[&str] = &[
    "\"auto\"",
    "\"none\"",
    "\"fe80::1\"",
    "\"2001:db8:1::1\"",
    "\"1.2.3.4\"",
];
const SMALL: &[&str] = &[
    "1", "2", "3", "0", "254", "255", "256", "257", "-1", "1000", "\"1\"", "1.5",
];
const BOOLS: &[&str] = &["true", "false", "1", "\"yes\""];
const DURATIONS: &[&str] = &[
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
const FALLBACKS: &[&str] = &[
    "\"all\"",
    "\"unreachable\"",
    "\"blackhole\"",
    "\"main\"",
    "\"isp1\"",
    "\"x\"",
];
const PREFIXES: &[&str] = &[
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
const PORTS: &[&str] = &[
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
const TARGETS: &[&str] = &[
    "\"198.18.0.1\"",
    "\"198.18.0.2\"",
    "\"2001:db8::5\"",
    "\"http://198.18.0.1/\"",
    "\"https://example.com/x\"",
    "\"x\"",
];

/// Settings lines: a key and its candidate values.
const SETTINGS: &[(&str, &[&str])] = &[
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

const LINK_KEYS: &[(&str, &[&str])] = &[
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

const CHECK_KEYS: &[(&str, &[&str])] = &[
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
const ODD_KEYS: &[&str] = &[
    "bogus_key",
    "snat_to",
    "ca_file",
    "query",
    "port",
    "method",
    "masquerade6",
    "min_targets",
];

fn list(t: &mut Tape, pool: &[&str], max: usize) -> String {
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
    targets.extend(["\"main\"", "\"unreachable\"", "\"blackhole\""].map(String::from));
    if !t.sane {
        targets.push("\"missing\"".into());
    }
    for _ in 0..t.below(6) {
        out.push_str("\n[[rules]]\n");
        if t.chance(50) {
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
        }
        if t.chance(30) && !t.sane {
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
    out
}

// ------------------------------------------------------------------ mutation

/// `examples/*.toml` and `tests/golden/*.toml`: (name, text).
pub fn corpus() -> &'static [(String, String)] {
    static CORPUS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in [root.join("../../examples"), root.join("tests/golden")] {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            entries.sort();
            files.extend(entries);
        }
        assert!(files.len() >= 5, "corpus: {files:?}");
        files
            .into_iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect()
    })
}

/// Values a mutation may put in place of another.
fn any_value(t: &mut Tape) -> String {
    let pools: &[&[&str]] = &[
        SMALL, BOOLS, DURATIONS, FALLBACKS, PREFIXES, PORTS, GATEWAYS, TARGETS,
    ];
    let pool = pools[t.below(pools.len())];
    match t.below(6) {
        0 => list(t, pool, 3),
        1 => "{}".to_string(),
        2 => format!("{}", t.next()),
        _ => t.pick(pool).to_string(),
    }
}

const NOISE: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    "#",
    "\n",
    "\"",
    "'",
    "\\",
    " ",
    "\t",
    "0x",
    ".",
    "é",
    "\u{0}",
    "[[rules]]\n",
    "[links.x]\n",
    "\"\"\"",
    "-",
    "inf",
    "nan",
    "1e999",
];

/// Corpus file `index` with a few mutations from the tape.
pub fn mutate(index: usize, t: &mut Tape) -> String {
    let mut lines: Vec<String> = corpus()[index].1.lines().map(String::from).collect();
    for _ in 0..1 + t.below(4) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        let i = t.below(n);
        match t.below(9) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(t.below(n + 1), l);
            }
            2 => lines.swap(i, t.below(n)),
            3 | 4 => {
                if let Some((key, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{key}= {}", any_value(t));
                }
            }
            5 => {
                let (key, values) =
                    [SETTINGS, LINK_KEYS, CHECK_KEYS].map(|k| k[t.below(k.len())])[t.below(3)];
                lines.insert(i, format!("{key} = {}", t.pick(values)));
            }
            6 => {
                let l = &lines[i];
                let cut = t.below(l.chars().count() + 1);
                lines[i] = l.chars().take(cut).collect();
            }
            7 => {
                let l = &lines[i];
                let at = t.below(l.chars().count() + 1);
                let (a, b): (String, String) =
                    (l.chars().take(at).collect(), l.chars().skip(at).collect());
                lines[i] = format!("{a}{}{b}", t.pick(NOISE));
            }
            _ => {
                // A number nudged: ids, priorities and weights at their edges.
                let nudged = lines[i]
                    .split_once("= ")
                    .filter(|(_, v)| v.trim().parse::<i64>().is_ok())
                    .map(|(k, v)| {
                        let v: i64 = v.trim().parse().unwrap();
                        let d = [-1i64, 1, 255, -256, 1 << 32][t.below(5)];
                        format!("{k}= {}", v.saturating_add(d))
                    });
                if let Some(l) = nudged {
                    lines[i] = l;
                }
            }
        }
    }
    lines.join("\n") + "\n"
}

// ------------------------------------------------------------------ checks

const FILE: &str = "fuzz.toml";

/// Every error names the file and a position inside the text.
fn check_errors(text: &str, errors: &ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "a rejection without errors");
    let lines = text.lines().count().max(1) + 1;
    for e in &errors.0 {
        let shown = e.to_string();
        prop_assert!(
            e.file == Path::new(FILE) && e.line >= 1 && e.line <= lines && e.column >= 1,
            "error without a position in the text ({lines} lines): {shown}"
        );
        // The column lies on the line (or just past its end: a value missing at the end).
        if let Some(line) = text.lines().nth(e.line - 1) {
            let width = line.chars().count() + 1;
            prop_assert!(
                e.column <= width,
                "column past the end of line {line:?}: {shown}"
            );
        }
        prop_assert!(
            shown.starts_with(&format!("{FILE}:{}:{}: ", e.line, e.column)),
            "{shown}"
        );
        prop_assert!(!e.message.trim().is_empty(), "empty message: {shown}");
    }
    Ok(())
}

/// Interfaces the links name, as the tape decides they look now.
fn facts_for(config: &config::Config, t: &mut Tape) -> Facts {
    let mut facts = common::lab_facts();
    for (k, link) in config.links.iter().enumerate() {
        let k = (k % 200) as u8 + 10;
        let iface = facts
            .interfaces
            .entry(link.interface.clone())
            .or_insert_with(|| InterfaceFacts {
                ifindex: 100 + u32::from(k),
                admin_up: true,
                carrier: true,
                addresses: vec![format!("100.64.{k}.2/24").parse().unwrap()],
                default_gateway4: Some(Ipv4Addr::new(100, 64, k, 1)),
                default_gateway6: None,
            });
        if t.chance(25) {
            iface
                .addresses
                .push(format!("2001:db8:{k}::2/64").parse().unwrap());
            iface.default_gateway6 = Some("fe80::1".parse().unwrap());
        }
        if t.chance(10) {
            iface.carrier = false;
        }
        if t.chance(10) {
            iface.addresses.clear();
        }
    }
    facts
}

fn states_for(config: &config::Config, t: &mut Tape) -> LinkStates {
    let all = [
        LinkState::Up,
        LinkState::Down,
        LinkState::Degraded,
        LinkState::Waiting,
        LinkState::Disabled,
    ];
    config
        .links
        .iter()
        .filter_map(|l| {
            let pick = t.chance(40).then(|| all[t.below(all.len())]);
            pick.map(|s| (l.name.clone(), s))
        })
        .collect()
}

/// Parses `text`; a rejection must carry positions; an accepted config is planned
/// (link states and facts from `t`) and rendered. Returns the nft table to check.
pub fn check_text(text: &str, t: &mut Tape) -> Result<Option<NftTable>, TestCaseError> {
    let config = match config::parse(text, Path::new(FILE)) {
        Ok(c) => c,
        Err(errors) => {
            if std::env::var_os("MULTIWAN_FUZZ_VERBOSE").is_some() {
                eprintln!("rejected: {}", errors.0[0]);
            }
            return check_errors(text, &errors).map(|()| None);
        }
    };
    let facts = facts_for(&config, t);
    let states = states_for(&config, t);
    let desired = plan::plan(&PlanInput {
        config: &config,
        states: &states,
        facts: &facts,
        seed: t.next(),
    });
    let script = render::plan_script(&config, &desired);
    prop_assert!(script.contains("table inet"), "{script}");
    // As apply loads it: rules naming a cgroup that does not exist are left out.
    let (table, _notes) = multiwan::kernel::nft::with_live_cgroups(&desired.nft);
    Ok(Some(table.into_owned()))
}

// ------------------------------------------------------------------ nft -c

/// `nft <args> -c -f -` in `ns` (with the cgroup v2 hierarchy mounted, where `socket
/// cgroupv2` paths are looked up); nft's complaint on failure.
fn nft_check(ns: &Netns, args: &[&str], script: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = common::with_cgroup2(ns, "nft");
    let mut child = cmd
        .args(args)
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nft");
    let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Rulesets per nft call: one transaction of this many tables is still fast.
const BATCH: usize = 50;

/// The scripts (by index; `None`: nothing to check) that nft refuses, with its
/// message: checked `BATCH` at a time, one by one only in a batch that fails.
fn refused(
    ns: &Netns,
    args: &[&str],
    scripts: &[Option<String>],
    join: fn(&[&str]) -> String,
) -> Vec<(usize, String)> {
    let present: Vec<(usize, &str)> = scripts
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.as_deref()?)))
        .collect();
    let mut out = Vec::new();
    for chunk in present.chunks(BATCH) {
        let texts: Vec<&str> = chunk.iter().map(|(_, s)| *s).collect();
        if nft_check(ns, args, &join(&texts)).is_ok() {
            continue;
        }
        for (i, script) in chunk {
            if let Err(e) = nft_check(ns, args, &join(&[script])) {
                out.push((*i, e));
            }
        }
    }
    out
}

/// Several JSON batches as one: their command lists, one after the other.
fn join_json(batches: &[&str]) -> String {
    let commands: Vec<serde_json::Value> = batches
        .iter()
        .flat_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["nftables"].as_array().cloned().unwrap_or_default()
        })
        .filter(|c| c.get("metainfo").is_none())
        .collect();
    serde_json::json!({ "nftables": commands }).to_string()
}

/// Checks every accepted config's ruleset with `nft -c`, in a namespace made for it,
/// in both forms: the text `multiwan plan` prints and the JSON batch `apply` sends
/// (tables matching cgroups are sent as text, so they have no JSON form). Panics with
/// the config and nft's message for those nft refuses.
pub fn nft_check_all(accepted: &[(String, NftTable)]) {
    let ns = Netns::new(netns_lab::unique_name("mwfz", "nftc")).expect("creating a namespace");
    let tables: Vec<NftTable> = accepted
        .iter()
        .enumerate()
        .map(|(i, (_, table))| NftTable {
            name: format!("fz{i}"),
            ..table.clone()
        })
        .collect();
    let text: Vec<Option<String>> = tables
        .iter()
        .map(|t| Some(render::nft_text::table(t)))
        .collect();
    let json: Vec<Option<String>> = tables
        .iter()
        .map(|t| match nft::to_batch(t, &nft::Existing::default()) {
            nft::NftBatch::Json(j) => Some(serde_json::to_string(&j).unwrap()),
            nft::NftBatch::Text(_) => None,
        })
        .collect();
    eprintln!(
        "nft -c: {} rulesets as text, {} as JSON",
        text.len(),
        json.iter().flatten().count()
    );
    let failures = [
        ("text", &text, refused(&ns, &[], &text, |s| s.concat())),
        ("JSON", &json, refused(&ns, &["-j"], &json, join_json)),
    ];
    for (form, scripts, refused) in failures {
        if let Some((i, e)) = refused.first() {
            panic!(
                "{} of {} accepted configs plan to rulesets whose {form} form nft -c \
                 refuses; the first:\n--- config\n{}\n--- ruleset\n{}\n--- nft\n{e}",
                refused.len(),
                accepted.len(),
                accepted[*i].0,
                scripts[*i].as_deref().unwrap_or_default()
            );
        }
    }
}
