//! The nft text syntax of the intermediate form (`nft -f` input): the renderer of
//! `multiwan plan` and of the kernel's text batches. It lives beside the IR so both
//! `render` and `kernel` use it without depending on each other.

use std::fmt::Write;

use super::*;

/// The whole table, as `nft -f` reads it.
pub fn table(t: &NftTable) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table inet {} {{", t.name);
    for c in &t.counters {
        let _ = writeln!(out, "\tcounter {c} {{\n\t}}\n");
    }
    for s in &t.sets {
        let (ty, elems) = set_parts(&s.elements);
        let _ = writeln!(out, "\tset {} {{", s.name);
        let _ = writeln!(out, "\t\ttype {ty}");
        let _ = writeln!(out, "\t\tflags interval");
        if !elems.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(", "));
        }
        let _ = writeln!(out, "\t}}\n");
    }
    for c in &t.chains {
        let _ = writeln!(out, "\tchain {} {{", c.name);
        if let Some(b) = &c.hook {
            let _ = writeln!(out, "\t\t{}", base_chain_spec(b));
        }
        for r in &c.rules {
            let _ = writeln!(out, "\t\t{}", rule(r));
        }
        let _ = writeln!(out, "\t}}\n");
    }
    let _ = writeln!(out, "\tchain plan {{");
    let _ = writeln!(out, "\t\treturn comment \"{}\"", t.digest);
    let _ = writeln!(out, "\t}}");
    out.push_str("}\n");
    out
}

/// A named set's type and its elements as nft writes them.
pub(crate) fn set_parts(elements: &SetElements) -> (&'static str, Vec<String>) {
    match elements {
        SetElements::Ipv4(v) => ("ipv4_addr", v.iter().map(|n| n.to_string()).collect()),
        SetElements::Ipv6(v) => ("ipv6_addr", v.iter().map(|n| n.to_string()).collect()),
    }
}

/// `type filter hook prerouting priority -150; policy accept;`
pub(crate) fn base_chain_spec(b: &BaseChain) -> String {
    format!(
        "type {} hook {} priority {}; policy accept;",
        chain_kind(b.kind),
        hook(b.hook),
        b.priority
    )
}

fn chain_kind(k: ChainKind) -> &'static str {
    match k {
        ChainKind::Filter => "filter",
        ChainKind::Nat => "nat",
        ChainKind::Route => "route",
    }
}

fn hook(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

/// One rule on one line.
pub fn rule(r: &NftRule) -> String {
    let mut parts: Vec<String> = r.matches.iter().map(match_text).collect();
    parts.extend(r.actions.iter().map(action_text));
    if let Some(c) = &r.comment {
        parts.push(format!("comment \"{c}\""));
    }
    parts.join(" ")
}

fn cmp(c: Cmp) -> &'static str {
    match c {
        Cmp::Eq => "==",
        Cmp::Ne => "!=",
    }
}

fn ip_kw(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "ip",
        IpVersion::V6 => "ip6",
    }
}

fn quoted_set(names: &[String]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("{{ {} }}", q.join(", "))
}

fn match_text(m: &Match) -> String {
    match m {
        Match::CtMark {
            mask,
            cmp: c,
            value,
        } => {
            format!("ct mark & {mask:#010x} {} {value:#010x}", cmp(*c))
        }
        Match::MetaMark {
            mask,
            cmp: c,
            value,
        } => {
            format!("meta mark & {mask:#010x} {} {value:#010x}", cmp(*c))
        }
        Match::CtStateNew(Cmp::Eq) => "ct state new".into(),
        Match::CtStateNew(Cmp::Ne) => "ct state != new".into(),
        Match::IifLoopback => "iif \"lo\"".into(),
        Match::Iifname { cmp: c, names } => match c {
            Cmp::Eq => format!("iifname {}", quoted_set(names)),
            Cmp::Ne => format!("iifname != {}", quoted_set(names)),
        },
        Match::Oifname(n) => format!("oifname \"{n}\""),
        Match::Nfproto(v) => format!(
            "meta nfproto {}",
            match v {
                IpVersion::V4 => "ipv4",
                IpVersion::V6 => "ipv6",
            }
        ),
        Match::DaddrInSet { version, set } => format!("{} daddr @{set}", ip_kw(*version)),
        Match::FibDaddrLocal => "fib daddr type local".into(),
        Match::Saddr { version, nets } => {
            format!("{} saddr {{ {} }}", ip_kw(*version), nets.join(", "))
        }
        Match::Daddr { version, nets } => {
            format!("{} daddr {{ {} }}", ip_kw(*version), nets.join(", "))
        }
        Match::L4Proto(p) => format!("meta l4proto {p}"),
        Match::ThDport(ranges) => format!("th dport {{ {} }}", port_list(ranges)),
        Match::TcpSyn => "tcp flags & (syn | rst) == syn".into(),
        Match::SkUid(uid) => format!("meta skuid {uid}"),
        Match::SocketCgroupv2 { level, path } => {
            format!("socket cgroupv2 level {level} \"{path}\"")
        }
    }
}

fn port_list(ranges: &[(u16, u16)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn range_text((first, last): (u32, u32)) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

pub(crate) fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
        Verdict::RejectHostUnreachable => "reject with icmpx type host-unreachable".into(),
        Verdict::RejectIpv6AdminProhibited => "reject with icmpv6 type admin-prohibited".into(),
        Verdict::RejectTcpReset => "reject with tcp reset".into(),
    }
}

fn action_text(a: &Action) -> String {
    match a {
        Action::SetMark { kind, keep, value } => {
            let k = match kind {
                MarkKind::Meta => "meta mark",
                MarkKind::Ct => "ct mark",
            };
            format!("{k} set {k} & {keep:#010x} | {value:#010x}")
        }
        Action::Counter(name) => format!("counter name \"{name}\""),
        Action::AnonCounter => "counter".into(),
        Action::Masquerade => "masquerade".into(),
        Action::Snat { version, addr } => format!("snat {} to {addr}", ip_kw(*version)),
        Action::SnatPrefix { to } => format!("snat ip6 prefix to {to}"),
        Action::ClampMssToPmtu => "tcp option maxseg size set rt mtu".into(),
        Action::Log { group, prefix } => match group {
            Some(g) => format!("log prefix \"{prefix}\" group {g}"),
            None => format!("log prefix \"{prefix}\""),
        },
        Action::CtMarkVmap { mask, entries } => {
            let e: Vec<String> = entries
                .iter()
                .map(|(v, verd)| format!("{v:#010x} : {}", verdict(verd)))
                .collect();
            format!("ct mark & {mask:#010x} vmap {{ {} }}", e.join(", "))
        }
        Action::IifnameVmap(entries) | Action::OifnameVmap(entries) => {
            let kw = if matches!(a, Action::IifnameVmap(_)) {
                "iifname"
            } else {
                "oifname"
            };
            let e: Vec<String> = entries
                .iter()
                .map(|(n, verd)| format!("\"{n}\" : {}", verdict(verd)))
                .collect();
            format!("{kw} vmap {{ {} }}", e.join(", "))
        }
        Action::DaddrVmap { version, entries } => {
            let e: Vec<String> = entries
                .iter()
                .map(|(net, verd)| format!("{net} : {}", verdict(verd)))
                .collect();
            format!("{} daddr vmap {{ {} }}", ip_kw(*version), e.join(", "))
        }
        Action::NumgenVmap { modulus, entries } => {
            let e: Vec<String> = entries
                .iter()
                .map(|(r, verd)| format!("{} : {}", range_text(*r), verdict(verd)))
                .collect();
            format!("numgen random mod {modulus} vmap {{ {} }}", e.join(", "))
        }
        Action::JhashVmap {
            key,
            modulus,
            seed,
            entries,
        } => {
            let k = match key {
                HashKey::Saddr(v) => format!("{} saddr", ip_kw(*v)),
                HashKey::SaddrDaddr(v) => format!("{0} saddr . {0} daddr", ip_kw(*v)),
            };
            let e: Vec<String> = entries
                .iter()
                .map(|(r, verd)| format!("{} : {}", range_text(*r), verdict(verd)))
                .collect();
            format!(
                "jhash {k} mod {modulus} seed {seed:#010x} vmap {{ {} }}",
                e.join(", ")
            )
        }
        Action::Verdict(v) => verdict(v),
    }
}
