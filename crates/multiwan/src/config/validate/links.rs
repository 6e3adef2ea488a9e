//! `[links.<name>]`: one link's keys, and the checks across links (ids, interfaces and
//! gateways, tables, LAN interfaces).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use ipnet::{IpNet, Ipv6Net};
use serde_spanned::Spanned;

use super::settings::RESERVED_TABLES;
use super::spans::key_segment;
use super::Ctx;
use crate::config::model::{Gateway, Link, Npt6, Settings};
use crate::config::raw::{RawLink, RawNpt6};

/// What cross-section checks need to know about one link, as far as it could be read.
pub(super) struct LinkFacts {
    pub(super) name: String,
    pub(super) id: Option<(u8, Range<usize>)>,
    pub(super) interface: Option<(String, Range<usize>)>,
    /// The gateway, and the key and span to point at for a clash: the gateway value,
    /// or the interface when the gateway is left at its default.
    pub(super) gateway: Option<(Gateway<Ipv4Addr>, &'static str, Range<usize>)>,
    pub(super) link: Option<Link>,
    /// Read without shape errors: its defaults are what the file means.
    pub(super) clean: bool,
}

impl<'t> Ctx<'_, 't> {
    pub(super) fn link(
        &mut self,
        name: &str,
        table_span: Range<usize>,
        raw: Option<RawLink>,
    ) -> LinkFacts {
        let mut facts = LinkFacts {
            name: name.to_string(),
            id: None,
            interface: None,
            gateway: None,
            link: None,
            clean: !self.lenient,
        };
        let Some(raw) = raw else {
            return facts;
        };
        let base_key = format!("links.{}", key_segment(name));
        let key = |k: &str| format!("{base_key}.{k}");
        let errors_before = self.errors.len();

        let id = match &raw.id {
            None => {
                self.dep_error(
                    table_span.clone(),
                    &key("id"),
                    "missing id; give each link its own id in 1..=254, e.g. id = 1 (it fixes \
                     the link's mark and routing table)",
                );
                None
            }
            Some(v) => self
                .int(
                    v,
                    &key("id"),
                    1,
                    254,
                    "give each link its own id in 1..=254 (it fixes the link's mark and \
                     routing table)",
                )
                .map(|id| (id as u8, v.span())),
        };
        let interface = match &raw.interface {
            None => {
                self.dep_error(
                    table_span.clone(),
                    &key("interface"),
                    "missing interface; name the network device of this uplink, e.g. \
                     interface = \"eth1\"",
                );
                None
            }
            Some(v) => self.ifname(v, &key("interface")).map(|i| (i, v.span())),
        };
        let gateway = match &raw.gateway {
            None => Some(Gateway::Auto),
            Some(v) => self.gateway4(v, &key("gateway")),
        };
        let gateway6 = match &raw.gateway6 {
            None => Some(Gateway::Auto),
            Some(v) => self.gateway6(v, &key("gateway6")),
        };
        let priority = match &raw.priority {
            None => Some(1),
            Some(v) => self.priority(v, &key("priority")),
        };
        let weight = match &raw.weight {
            None => Some(1),
            Some(v) => self.weight(v, &key("weight")),
        };
        let (snat_to, npt6) = self.nat(&raw, &base_key);
        let check = raw
            .check
            .as_ref()
            .map(|c| self.check(c, &key("check"), gateway, gateway6));

        facts.id = id.clone();
        facts.gateway = match (gateway, &raw.gateway, &interface) {
            (Some(g), Some(v), _) => Some((g, "gateway", v.span())),
            (Some(g), None, Some((_, span))) => Some((g, "interface", span.clone())),
            _ => None,
        };
        facts.interface = interface.clone();
        if self.errors.len() > errors_before {
            return facts;
        }
        // Every piece is known to be present here; the closure only unwraps them.
        facts.link = (move || {
            Some(Link {
                name: name.to_string(),
                id: id?.0,
                interface: interface?.0,
                gateway: gateway?,
                gateway6: gateway6?,
                priority: priority?,
                weight: weight?,
                masquerade: raw.masquerade.unwrap_or(true),
                snat_to: snat_to.flatten(),
                masquerade6: raw.masquerade6.is_some_and(|v| *v.get_ref()),
                npt6: npt6.flatten(),
                mss_clamp: raw.mss_clamp.unwrap_or(false),
                flush_on_down: raw.flush_on_down.unwrap_or(true),
                flush_on_recover: raw.flush_on_recover.unwrap_or(false),
                enabled: raw.enabled.unwrap_or(true),
                check: check.flatten(),
            })
        })();
        facts
    }

    pub(super) fn gateway4(&mut self, v: &Spanned<String>, key: &str) -> Option<Gateway<Ipv4Addr>> {
        let text = v.get_ref().as_str();
        let problem = match text {
            "auto" => return Some(Gateway::Auto),
            "none" => return Some(Gateway::None),
            _ => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
                    format!("{a} cannot be a next hop; give the router's unicast address")
                }
                Ok(IpAddr::V4(a)) => return Some(Gateway::Static(a)),
                Ok(IpAddr::V6(_)) => format!("{text} is an IPv6 address; put it in gateway6"),
                Err(_) => format!(
                    "{text:?} is not an IPv4 address, \"auto\" (follow the interface's default \
                     route) or \"none\" (point-to-point device)"
                ),
            },
        };
        self.error(v.span(), key, problem);
        None
    }

    pub(super) fn gateway6(&mut self, v: &Spanned<String>, key: &str) -> Option<Gateway<Ipv6Addr>> {
        let text = v.get_ref().as_str();
        let problem = match text {
            "auto" => return Some(Gateway::Auto),
            "none" => return Some(Gateway::None),
            _ => match text.parse::<IpAddr>() {
                Ok(IpAddr::V6(a)) if a.is_unspecified() || a.is_multicast() => {
                    format!("{a} cannot be a next hop; give the router's unicast address")
                }
                Ok(IpAddr::V6(a)) => return Some(Gateway::Static(a)),
                Ok(IpAddr::V4(_)) => format!("{text} is an IPv4 address; put it in gateway"),
                Err(_) => format!(
                    "{text:?} is not an IPv6 address, \"auto\" (from router advertisements) \
                     or \"none\" (no IPv6 on this link)"
                ),
            },
        };
        self.error(v.span(), key, problem);
        None
    }

    /// The NAT keys: `snat_to` (IPv4), and `npt6` or `masquerade6` (IPv6, one of them).
    /// `None`: the key is absent; `Some(None)`: it is wrong.
    fn nat(
        &mut self,
        raw: &RawLink,
        base_key: &str,
    ) -> (Option<Option<Ipv4Addr>>, Option<Option<Npt6>>) {
        let key = |k: &str| format!("{base_key}.{k}");
        let snat_to = raw
            .snat_to
            .as_ref()
            .map(|v| self.snat_to(v, &key("snat_to"), raw.masquerade));
        let npt6 = raw.npt6.as_ref().map(|v| self.npt6(v, &key("npt6")));
        // With masquerade6 as well, the error below says to keep one of them first.
        let masquerade6 = raw.masquerade6.as_ref().is_some_and(|m| *m.get_ref());
        if let (Some(v), Some(Some(n)), false) = (&raw.npt6, &npt6, masquerade6) {
            self.npt6_unsupported(v, n, &key("npt6"));
        }
        if let (Some(m6), Some(_)) = (&raw.masquerade6, &raw.npt6) {
            if *m6.get_ref() {
                self.error(
                    m6.span(),
                    &key("masquerade6"),
                    "npt6 and masquerade6 both translate IPv6 leaving this link; keep one \
                     (npt6 keeps addresses stable, masquerade6 hides the LAN behind one)",
                );
            }
        }
        (snat_to, npt6)
    }

    /// `snat_to`: the address masquerade would pick, fixed. It is a variant of
    /// masquerade (the same rule, another source address), so it needs `masquerade`
    /// on (the default): with `masquerade = false` the link does no NAT at all and an
    /// address to NAT to would be a contradiction.
    pub(super) fn snat_to(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        masquerade: Option<bool>,
    ) -> Option<Ipv4Addr> {
        let text = v.get_ref();
        let addr = match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
                self.error(
                    v.span(),
                    key,
                    format!("{a} cannot be a source address; give the link's unicast address"),
                );
                return None;
            }
            Ok(IpAddr::V4(a)) => a,
            Ok(IpAddr::V6(_)) => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "{text} is an IPv6 address; snat_to is for IPv4 (IPv6 uses masquerade6 \
                         or npt6)"
                    ),
                );
                return None;
            }
            Err(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("{text:?} is not an IPv4 address; write e.g. \"198.51.100.2\""),
                );
                return None;
            }
        };
        if masquerade == Some(false) {
            self.dep_error(
                v.span(),
                key,
                "snat_to sets the address masquerade translates to, but masquerade = false \
                 turns NAT off on this link; remove one of them",
            );
            return None;
        }
        Some(addr)
    }

    pub(super) fn npt6(&mut self, v: &Spanned<RawNpt6>, key: &str) -> Option<Npt6> {
        let raw = v.get_ref();
        let inside = match &raw.inside {
            None => {
                self.dep_error(
                    v.span(),
                    &format!("{key}.inside"),
                    "missing inside; give the LAN prefix to translate, e.g. \
                     npt6 = { inside = \"fd00:1::/48\", outside = \"auto\" }",
                );
                None
            }
            Some(s) => self.prefix6(s, &format!("{key}.inside")),
        };
        let outside = match &raw.outside {
            None => Some(None),
            Some(s) if s.get_ref() == "auto" => Some(None),
            Some(s) => self.prefix6(s, &format!("{key}.outside")).map(Some),
        };
        let (inside, outside) = (inside?, outside?);
        if let (Some(out), Some(s)) = (outside, &raw.outside) {
            // NPTv6 maps prefix onto prefix; different lengths cannot map one to one.
            if out.prefix_len() != inside.prefix_len() {
                self.error(
                    s.span(),
                    &format!("{key}.outside"),
                    format!(
                        "{out} is a /{} but inside {inside} is a /{}; the two prefixes must \
                         have the same length",
                        out.prefix_len(),
                        inside.prefix_len()
                    ),
                );
                return None;
            }
        }
        Some(Npt6 { inside, outside })
    }

    pub(super) fn prefix6(&mut self, v: &Spanned<String>, key: &str) -> Option<Ipv6Net> {
        match self.prefix(v, key)? {
            IpNet::V6(net) => Some(net),
            IpNet::V4(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("{} is IPv4; NPTv6 needs an IPv6 prefix", v.get_ref()),
                );
                None
            }
        }
    }

    pub(super) fn cross_link_checks(&mut self, facts: &[LinkFacts], settings: Option<&Settings>) {
        // Duplicate ids: point at the later link, the one to change.
        let mut ids: HashMap<u8, &str> = HashMap::new();
        for f in facts {
            if let Some((id, span)) = &f.id {
                if let Some(first) = ids.get(id) {
                    let key = format!("links.{}.id", key_segment(&f.name));
                    self.error(
                        span.clone(),
                        &key,
                        format!(
                            "id {id} is already used by link {first}; give each link its own \
                             id in 1..=254"
                        ),
                    );
                } else {
                    ids.insert(*id, &f.name);
                }
            }
        }

        // Same interface and same gateway: the two links would be one route twice.
        let mut hops: HashMap<(&str, Gateway<Ipv4Addr>), &str> = HashMap::new();
        // Only clean links: a removed gateway key would compare as "auto".
        for f in facts.iter().filter(|f| f.clean) {
            let (Some((iface, _)), Some((gw, which, span))) = (&f.interface, &f.gateway) else {
                continue;
            };
            if let Some(first) = hops.get(&(iface.as_str(), *gw)) {
                let gw_text = match gw {
                    Gateway::Auto => "auto".to_string(),
                    Gateway::None => "none".to_string(),
                    Gateway::Static(a) => a.to_string(),
                };
                let key = format!("links.{}.{which}", key_segment(&f.name));
                self.error(
                    span.clone(),
                    &key,
                    format!(
                        "link {first} already uses interface {iface} with gateway {gw_text}; two \
                         links on one interface need different gateways"
                    ),
                );
            } else {
                hops.insert((iface.as_str(), *gw), &f.name);
            }
        }

        let Some(settings) = settings else {
            return;
        };

        // Link tables are table_base + id; none may be a kernel-reserved table.
        let base = settings.table_base;
        for f in facts {
            let Some((id, span)) = &f.id else { continue };
            let table = base + u32::from(*id);
            if let Some((_, name)) = RESERVED_TABLES.iter().find(|(t, _)| *t == table) {
                let key = format!("links.{}.id", key_segment(&f.name));
                let bad: Vec<String> = RESERVED_TABLES
                    .iter()
                    .filter_map(|(t, _)| t.checked_sub(base))
                    .filter(|i| (1..=254).contains(i))
                    .map(|i| i.to_string())
                    .collect();
                self.error(
                    span.clone(),
                    &key,
                    format!(
                        "with table_base {base} this link's table would be {table}, the kernel's \
                         {name} table; avoid ids {} or change table_base",
                        bad.join(", ")
                    ),
                );
            }
        }

        // An interface is a link or a LAN interface, never both.
        if settings.lan.is_some() {
            let by_iface: HashMap<&str, &str> = facts
                .iter()
                .filter_map(|f| {
                    f.interface
                        .as_ref()
                        .map(|(i, _)| (i.as_str(), f.name.as_str()))
                })
                .collect();
            for (name, span) in std::mem::take(&mut self.lan_entries) {
                if let Some(link) = by_iface.get(name.as_str()) {
                    let key = self.key_at(&span);
                    self.error(
                        span,
                        &key,
                        format!(
                            "{name} is the interface of link {link}; an interface is either a \
                             link or a LAN interface, remove it from lan"
                        ),
                    );
                }
            }
        }
    }
}
