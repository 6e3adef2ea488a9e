//! `[links.<name>.check]`: the health check, with the keys each method needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde_spanned::Spanned;

use super::Ctx;
use crate::config::model::{Check, Gateway, Probe};
use crate::config::raw::{Int, RawCheck};

/// A probe method as written; each needs its own keys (see [`Ctx::probe`]).
#[derive(Clone, Copy, PartialEq)]
enum Method {
    Icmp,
    Tcp,
    Http,
    Https,
    Dns,
    Arp,
    None,
}

impl Method {
    const CHOICES: &[(&str, Method)] = &[
        ("icmp", Method::Icmp),
        ("tcp", Method::Tcp),
        ("http", Method::Http),
        ("https", Method::Https),
        ("dns", Method::Dns),
        ("arp", Method::Arp),
        ("none", Method::None),
    ];

    /// Methods that probe a list of targets (arp probes the gateway, none nothing).
    fn needs_targets(self) -> bool {
        matches!(
            self,
            Method::Icmp | Method::Tcp | Method::Http | Method::Https | Method::Dns
        )
    }
}

impl<'t> Ctx<'_, 't> {
    pub(super) fn check(
        &mut self,
        v: &Spanned<RawCheck>,
        key: &str,
        gateway: Option<Gateway<Ipv4Addr>>,
        gateway6: Option<Gateway<Ipv6Addr>>,
    ) -> Option<Check> {
        let raw = v.get_ref();
        let k = |s: &str| format!("{key}.{s}");
        let method = match &raw.method {
            None => Some(Method::Icmp),
            Some(m) => self.choice(m, &k("method"), Method::CHOICES),
        };
        let probe = method.and_then(|method| self.probe(v, key, method, gateway));
        if let (Some(Probe::Icmp { .. } | Probe::Tcp { .. } | Probe::Dns { .. }), Some(t)) =
            (&probe, &raw.targets)
        {
            if gateway6 == Some(Gateway::None) {
                self.ipv6_targets_without_ipv6(t.get_ref());
            }
        }
        if method == Some(Method::None) {
            self.unused_without_probes(raw, key);
        }
        let interval = match &raw.interval {
            None => Some(Duration::from_secs(1)),
            Some(d) => self.nonzero_duration(d, &k("interval")),
        };
        let timeout = match &raw.timeout {
            None => Some(Duration::from_secs(1)),
            Some(d) => self.nonzero_duration(d, &k("timeout")),
        };
        let min_targets = self.min_targets(raw, key, method);
        let rounds = |cx: &mut Self, v: &Option<Spanned<Int>>, name: &str, default: u32| match v {
            None => Some(default),
            Some(n) => cx
                .int(
                    n,
                    &k(name),
                    1,
                    i64::from(u32::MAX),
                    "a count of rounds, at least 1",
                )
                .map(|n| n as u32),
        };
        let down_after = rounds(self, &raw.down_after, "down_after", 3);
        let up_after = rounds(self, &raw.up_after, "up_after", 5);
        let window = rounds(self, &raw.window, "window", 20);
        let max_loss = match &raw.max_loss {
            None => Some(0),
            Some(n) => self
                .int(
                    n,
                    &k("max_loss"),
                    0,
                    100,
                    "a percentage, 0..=100 (0 disables)",
                )
                .map(|n| n as u8),
        };
        let max_rtt = match &raw.max_rtt {
            None => Some(Duration::ZERO),
            Some(d) => self.duration(d, &k("max_rtt")),
        };

        Some(Check {
            probe: probe?,
            interval: interval?,
            timeout: timeout?,
            min_targets: min_targets? as u32,
            down_after: down_after?,
            up_after: up_after?,
            max_loss: max_loss?,
            max_rtt: max_rtt?,
            window: window?,
        })
    }

    /// What the method probes, with the keys it needs; keys it would silently ignore
    /// are errors (a likely mistake).
    fn probe(
        &mut self,
        v: &Spanned<RawCheck>,
        key: &str,
        method: Method,
        gateway: Option<Gateway<Ipv4Addr>>,
    ) -> Option<Probe> {
        let raw = v.get_ref();
        let k = |s: &str| format!("{key}.{s}");
        let method_name = raw.method.as_ref().map_or("icmp", |m| m.get_ref().as_str());
        let targets = self.targets(v, key, method, method_name);
        let port = match (&raw.port, method) {
            (None, Method::Tcp) => {
                self.dep_error(
                    v.span(),
                    &k("port"),
                    "method tcp needs the port to connect to, e.g. port = 443",
                );
                None
            }
            (Some(p), Method::Tcp) => self
                .int(p, &k("port"), 1, 65535, "TCP ports are 1..=65535")
                .map(|p| p as u16),
            (Some(p), _) => {
                self.dep_error(
                    p.span(),
                    &k("port"),
                    format!("port is only used by method tcp, not {method_name}; remove it"),
                );
                None
            }
            (None, _) => None,
        };
        let query = match (&raw.query, method) {
            (None, Method::Dns) => {
                self.dep_error(
                    v.span(),
                    &k("query"),
                    "method dns needs a name to resolve, e.g. query = \"example.com\"",
                );
                None
            }
            (Some(q), Method::Dns) => self.dns_name(q, &k("query")),
            (Some(q), _) => {
                self.dep_error(
                    q.span(),
                    &k("query"),
                    format!("query is only used by method dns, not {method_name}; remove it"),
                );
                None
            }
            (None, _) => None,
        };
        let ca_file = match (&raw.ca_file, method) {
            (Some(f), Method::Https) => self.absolute_path(f, &k("ca_file")).map(Some),
            (Some(f), _) => {
                self.dep_error(
                    f.span(),
                    &k("ca_file"),
                    format!("ca_file is only used by method https, not {method_name}; remove it"),
                );
                None
            }
            (None, _) => Some(None),
        };
        if method == Method::Arp && gateway == Some(Gateway::None) {
            self.dep_error(
                raw.method.as_ref().map_or(v.span(), |m| m.span()),
                &k("method"),
                "method arp probes the IPv4 gateway, but this link has gateway = \"none\"; \
                 use icmp with targets instead",
            );
            return None;
        }
        if self.lenient {
            // The method may be a default standing in for a removed key; the
            // targets cannot be judged against it.
            return None;
        }
        Some(match method {
            Method::Icmp => Probe::Icmp {
                targets: self.addresses(targets?)?,
            },
            Method::Tcp => {
                let targets = self.addresses(targets?);
                Probe::Tcp {
                    targets: targets?,
                    port: port?,
                }
            }
            Method::Dns => {
                let resolvers = self.addresses(targets?);
                Probe::Dns {
                    resolvers: resolvers?,
                    query: query?,
                }
            }
            Method::Http => Probe::Http {
                urls: self.urls(targets?, false)?,
            },
            Method::Https => Probe::Https {
                urls: self.urls(targets?, true)?,
                ca_file: ca_file?,
            },
            Method::Arp => Probe::Arp,
            Method::None => Probe::None,
        })
    }

    /// The targets as written, when the method needs them and has some.
    fn targets<'v>(
        &mut self,
        v: &'v Spanned<RawCheck>,
        key: &str,
        method: Method,
        method_name: &str,
    ) -> Option<&'v [Spanned<String>]> {
        let key = format!("{key}.targets");
        match (&v.get_ref().targets, method.needs_targets()) {
            (None, true) => {
                let example = match method {
                    Method::Http => "targets = [\"http://example.com/\"]",
                    Method::Https => "targets = [\"https://example.com/\"]",
                    _ => "targets = [\"198.18.0.1\", \"198.18.0.2\"]",
                };
                self.dep_error(
                    v.span(),
                    &key,
                    format!("method {method_name} needs targets to probe, e.g. {example}"),
                );
                None
            }
            (Some(t), true) if t.get_ref().is_empty() => {
                self.dep_error(
                    t.span(),
                    &key,
                    format!("method {method_name} needs at least one target"),
                );
                None
            }
            (Some(t), false) => {
                let why = if method == Method::Arp {
                    "method arp probes the link's gateway; remove targets"
                } else {
                    "method none sends no probes; remove targets"
                };
                self.error(t.span(), &key, why);
                None
            }
            (t, _) => t.as_ref().map(|t| t.get_ref().as_slice()),
        }
    }

    /// `min_targets`, which must be reachable: above the number of targets no round
    /// could ever be good. Counted from the list as written, so a bad entry does not
    /// also trip this.
    fn min_targets(&mut self, raw: &RawCheck, key: &str, method: Option<Method>) -> Option<i64> {
        let key = format!("{key}.min_targets");
        let count_hint = "a round is good when at least min_targets targets answered";
        let min_targets = match &raw.min_targets {
            None => Some(1),
            Some(n) => self.int(n, &key, 1, i64::from(u32::MAX), count_hint),
        };
        let target_count = match method {
            Some(Method::Arp) => Some(1),
            Some(Method::None) | None => None,
            Some(_) => raw.targets.as_ref().map(|t| t.get_ref().len()),
        };
        if let (Some(min), Some(count), Some(n)) = (min_targets, target_count, &raw.min_targets) {
            if count > 0 && min > count as i64 {
                let what = if method == Some(Method::Arp) {
                    "arp probes one target, the gateway".to_string()
                } else {
                    format!("there are only {count} targets")
                };
                self.dep_error(
                    n.span(),
                    &key,
                    format!(
                        "min_targets {min} can never be met: {what}; use 1..={count} or add \
                         targets"
                    ),
                );
            }
        }
        min_targets
    }

    /// Method none sends no probes, so the keys that shape rounds would do nothing:
    /// refused like the targets are, as a likely mistake.
    fn unused_without_probes(&mut self, raw: &RawCheck, key: &str) {
        let spans = [
            ("interval", raw.interval.as_ref().map(|v| v.span())),
            ("timeout", raw.timeout.as_ref().map(|v| v.span())),
            ("min_targets", raw.min_targets.as_ref().map(|v| v.span())),
            ("down_after", raw.down_after.as_ref().map(|v| v.span())),
            ("up_after", raw.up_after.as_ref().map(|v| v.span())),
            ("max_loss", raw.max_loss.as_ref().map(|v| v.span())),
            ("max_rtt", raw.max_rtt.as_ref().map(|v| v.span())),
            ("window", raw.window.as_ref().map(|v| v.span())),
        ];
        for (name, span) in spans {
            if let Some(span) = span {
                self.dep_error(
                    span,
                    &format!("{key}.{name}"),
                    format!(
                        "method none sends no probes, so {name} has no effect; remove it (the \
                         link is up while it has carrier and an address)"
                    ),
                );
            }
        }
    }

    /// A link with `gateway6 = "none"` has no IPv6 route out, so an IPv6 target could
    /// never answer through it and the link would never come up.
    fn ipv6_targets_without_ipv6(&mut self, targets: &[Spanned<String>]) {
        for t in targets {
            if let Ok(IpAddr::V6(a)) = t.get_ref().parse::<IpAddr>() {
                let key = self.key_at(&t.span());
                self.dep_error(
                    t.span(),
                    &key,
                    format!(
                        "{a} is IPv6, but this link has gateway6 = \"none\" (no IPv6 route to \
                         probe through), so it could never answer; probe IPv4 targets or set \
                         gateway6"
                    ),
                );
            }
        }
    }

    /// Probe targets that are addresses (icmp, tcp, dns resolvers).
    pub(super) fn addresses(&mut self, targets: &[Spanned<String>]) -> Option<Vec<IpAddr>> {
        let mut ok = Vec::new();
        let mut failed = false;
        for t in targets {
            let key = self.key_at(&t.span());
            match t.get_ref().parse::<IpAddr>() {
                Ok(a) if a.is_unspecified() || a.is_multicast() => {
                    self.error(
                        t.span(),
                        &key,
                        format!("{a} cannot be probed; give a unicast address"),
                    );
                    failed = true;
                }
                Ok(a) if ok.contains(&a) => {
                    // A duplicate would count twice towards min_targets.
                    self.error(
                        t.span(),
                        &key,
                        format!("{a} is listed twice; list each target once"),
                    );
                    failed = true;
                }
                Ok(a) => ok.push(a),
                Err(_) => {
                    self.error(
                        t.span(),
                        &key,
                        format!(
                            "{:?} is not an IP address (v4 or v6); give addresses, not names",
                            t.get_ref()
                        ),
                    );
                    failed = true;
                }
            }
        }
        (!failed).then_some(ok)
    }

    /// `http://` or `https://` URLs; `https_only` (method https): `https://` ones.
    pub(super) fn urls(
        &mut self,
        targets: &[Spanned<String>],
        https_only: bool,
    ) -> Option<Vec<String>> {
        let mut ok: Vec<String> = Vec::new();
        let mut failed = false;
        for t in targets {
            let key = self.key_at(&t.span());
            let url = t.get_ref();
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
            if host.is_none_or(str::is_empty) || url.chars().any(char::is_whitespace) {
                self.error(
                    t.span(),
                    &key,
                    format!("{url:?} is not an http:// or https:// URL; write e.g. \"http://example.com/\""),
                );
                failed = true;
            } else if https_only && !url.starts_with("https://") {
                self.error(
                    t.span(),
                    &key,
                    format!("method https probes https:// URLs, not {url}; use method http for it"),
                );
                failed = true;
            } else if ok.contains(url) {
                self.error(
                    t.span(),
                    &key,
                    format!("{url} is listed twice; list each target once"),
                );
                failed = true;
            } else {
                ok.push(url.clone());
            }
        }
        (!failed).then_some(ok)
    }

    pub(super) fn dns_name(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        let name = v.get_ref();
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        let valid = !trimmed.is_empty()
            && trimmed.len() <= 253
            && trimmed.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid {
            self.error(
                v.span(),
                key,
                format!("{name:?} is not a DNS name; write e.g. \"example.com\""),
            );
            return None;
        }
        Some(name.clone())
    }
}
