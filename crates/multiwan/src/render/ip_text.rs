//! Rules, routes and sysctls of a desired state as `ip` / `sysctl` commands.

use crate::plan::{Family, IpRule, Route, RouteKind, Sysctl, MAIN_TABLE};

fn family_flag(f: Family) -> &'static str {
    match f {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

fn table_text(t: u32) -> String {
    if t == MAIN_TABLE {
        "main".into()
    } else {
        t.to_string()
    }
}

/// `ip -4 rule add priority … <selector> lookup <table>`
pub fn rule(r: &IpRule) -> String {
    let s = &r.selector;
    let mut parts = vec![
        "ip".to_string(),
        family_flag(r.family).into(),
        "rule".into(),
        "add".into(),
        "priority".into(),
        r.priority.to_string(),
    ];
    if let Some(from) = &s.from {
        parts.push(format!("from {from}"));
    }
    if let Some(to) = &s.to {
        parts.push(format!("to {to}"));
    }
    if let Some((mark, mask)) = s.fwmark {
        parts.push(format!("fwmark {mark:#x}/{mask:#x}"));
    }
    if let Some(iif) = &s.iif {
        parts.push(format!("iif {iif}"));
    }
    if let Some(p) = s.ipproto {
        parts.push(format!("ipproto {p}"));
    }
    if let Some((a, b)) = s.dport {
        parts.push(if a == b {
            format!("dport {a}")
        } else {
            format!("dport {a}-{b}")
        });
    }
    if let Some((a, b)) = s.uidrange {
        parts.push(format!("uidrange {a}-{b}"));
    }
    parts.push(format!("lookup {}", table_text(r.table)));
    if let Some(len) = s.suppress_prefixlength {
        parts.push(format!("suppress_prefixlength {len}"));
    }
    parts.join(" ")
}

/// `ip -4 route add table … default …`
pub fn route(r: &Route) -> String {
    let mut parts = vec![
        "ip".to_string(),
        family_flag(r.family).into(),
        "route".into(),
        "add".into(),
        "table".into(),
        table_text(r.table),
    ];
    let dst = if r.dst.prefix_len() == 0 {
        "default".to_string()
    } else {
        r.dst.to_string()
    };
    match &r.kind {
        RouteKind::Unreachable => parts.push(format!("unreachable {dst}")),
        RouteKind::Blackhole => parts.push(format!("blackhole {dst}")),
        RouteKind::Unicast(hops) if hops.len() == 1 => {
            parts.push(dst);
            let h = &hops[0];
            if let Some(gw) = h.gateway {
                parts.push(format!("via {gw}"));
            }
            parts.push(format!("dev {}", h.ifname));
        }
        RouteKind::Unicast(hops) => {
            parts.push(dst);
            for h in hops {
                parts.push("nexthop".into());
                if let Some(gw) = h.gateway {
                    parts.push(format!("via {gw}"));
                }
                parts.push(format!("dev {} weight {}", h.ifname, h.weight));
            }
        }
    }
    if r.metric != 0 {
        parts.push(format!("metric {}", r.metric));
    }
    parts.join(" ")
}

/// `sysctl -w key=value`
pub fn sysctl(s: &Sysctl) -> String {
    format!("sysctl -w {}={}", s.dotted(), s.value)
}
