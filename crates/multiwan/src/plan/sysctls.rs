//! The sysctls multiwan needs (SPEC §3): one list, which `apply` sets (through the
//! plan) and `check` reports when they are off.

use super::Sysctl;
use crate::config::{Config, Gateway};

/// Whether multiwan touches IPv6 at all: some enabled link may get an IPv6 next hop.
/// When none can, IPv6 is left exactly as it was (SPEC §2.12).
pub fn uses_ipv6(config: &Config) -> bool {
    config
        .links
        .iter()
        .any(|l| l.enabled && l.gateway6 != Gateway::None)
}

/// Every sysctl multiwan needs for `config`, sorted: `icmp_errors_use_inbound_ifaddr`
/// (ICMP errors about a connection leave with the address it arrived on),
/// `fib_multipath_hash_policy` per family in use (the default policy's multipath
/// route hashes per connection, ports included), and per enabled link
/// `src_valid_mark` (strict rp_filter would drop marked traffic otherwise) and, with
/// `gateway6 = "auto"`, `accept_ra = 2` (a forwarding router ignores RAs otherwise).
/// Per-interface ones only for interfaces `exists` says are there: a sysctl of a
/// missing interface cannot be set.
pub fn required(config: &Config, exists: impl Fn(&str) -> bool) -> Vec<Sysctl> {
    let mut out = vec![
        sysctl("net/ipv4/icmp_errors_use_inbound_ifaddr", "1"),
        sysctl("net/ipv4/fib_multipath_hash_policy", "1"),
    ];
    if uses_ipv6(config) {
        out.push(sysctl("net/ipv6/fib_multipath_hash_policy", "1"));
    }
    for link in config.links.iter().filter(|l| l.enabled) {
        let ifname = &link.interface;
        if !exists(ifname) {
            continue;
        }
        out.push(sysctl(
            &format!("net/ipv4/conf/{ifname}/src_valid_mark"),
            "1",
        ));
        if link.gateway6 == Gateway::Auto {
            out.push(sysctl(&format!("net/ipv6/conf/{ifname}/accept_ra"), "2"));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn sysctl(key: &str, value: &str) -> Sysctl {
    Sysctl {
        key: key.to_string(),
        value: value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn keys(toml: &str, exists: impl Fn(&str) -> bool) -> Vec<String> {
        let config = crate::config::parse(toml, Path::new("t.toml")).unwrap();
        required(&config, exists)
            .into_iter()
            .map(|s| format!("{}={}", s.dotted(), s.value))
            .collect()
    }

    #[test]
    fn ipv6_ones_only_where_ipv6_is_used() {
        let v6 = "[links.a]\nid = 1\ninterface = \"wan1\"\n\
                  [links.b]\nid = 2\ninterface = \"wan2\"\ngateway6 = \"none\"\n\
                  [links.c]\nid = 3\ninterface = \"wan3\"\nenabled = false\n";
        assert_eq!(
            keys(v6, |_| true),
            [
                "net.ipv4.conf.wan1.src_valid_mark=1",
                "net.ipv4.conf.wan2.src_valid_mark=1",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv4.icmp_errors_use_inbound_ifaddr=1",
                "net.ipv6.conf.wan1.accept_ra=2",
                "net.ipv6.fib_multipath_hash_policy=1",
            ]
        );
        let v4 = "[links.a]\nid = 1\ninterface = \"wan1\"\ngateway6 = \"none\"\n";
        assert_eq!(
            keys(v4, |i| i != "wan1"),
            [
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv4.icmp_errors_use_inbound_ifaddr=1",
            ]
        );
    }
}
