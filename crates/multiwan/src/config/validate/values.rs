//! Small checks of single values (ranges, choices, durations, names, prefixes) that
//! every section uses; each reports its own error at the value's position.

use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use ipnet::IpNet;
use serde_spanned::Spanned;

use super::Ctx;
use crate::config::duration::parse_duration;
use crate::config::model::Fallback;
use crate::config::raw::{DurationStr, Int};

/// Names that `ip rule` / `ip route` or the rule syntax already give a meaning.
const RESERVED_NAMES: &[&str] = &[
    "main",
    "local",
    "default",
    "unspec",
    "all",
    "unreachable",
    "blackhole",
];

/// Longest link or policy name: an interface-name-sized field (IFNAMSIZ - 1), which
/// keeps `ip route show table <name>` and nft counter names short.
const MAX_NAME_LEN: usize = 15;

impl<'t> Ctx<'_, 't> {
    pub(super) fn int(
        &mut self,
        v: &Spanned<Int>,
        key: &str,
        min: i64,
        max: i64,
        why: &str,
    ) -> Option<i64> {
        let n = v.get_ref().0;
        if n < min || n > max {
            self.error(
                v.span(),
                key,
                format!("{n} is out of range {min}..={max}: {why}"),
            );
            return None;
        }
        Some(n)
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        if let Some((_, value)) = choices.iter().find(|(name, _)| name == v.get_ref()) {
            return Some(*value);
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        let (last, rest) = names.split_last().expect("choices are never empty");
        self.error(
            v.span(),
            key,
            format!(
                "{:?} is not one of {} or {last}",
                v.get_ref(),
                rest.join(", ")
            ),
        );
        None
    }

    pub(super) fn fallback(&mut self, v: &Spanned<String>, key: &str) -> Option<Fallback> {
        self.choice(
            v,
            key,
            &[
                ("all", Fallback::All),
                ("unreachable", Fallback::Unreachable),
                ("blackhole", Fallback::Blackhole),
                ("main", Fallback::Main),
            ],
        )
    }

    pub(super) fn duration(&mut self, v: &Spanned<DurationStr>, key: &str) -> Option<Duration> {
        match parse_duration(&v.get_ref().0) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v.span(), key, e.to_string());
                None
            }
        }
    }

    pub(super) fn nonzero_duration(
        &mut self,
        v: &Spanned<DurationStr>,
        key: &str,
    ) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d.is_zero() {
            self.error(v.span(), key, "must be more than zero, e.g. \"1s\"");
            return None;
        }
        Some(d)
    }

    /// A Linux interface name, as `dev_valid_name()` accepts it.
    pub(super) fn ifname(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        let name = v.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !valid {
            self.error(
                v.span(),
                key,
                format!(
                    "{name:?} is not a network interface name: 1 to 15 bytes without '/', ':' or \
                     spaces, e.g. \"eth1\""
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    /// Link and policy names (see [`name_problem`]).
    pub(super) fn check_name(&mut self, kind: &str, name: &str, span: Range<usize>, key: &str) {
        if let Some(problem) = name_problem(kind, name) {
            self.error(span, key, problem);
        }
    }

    pub(super) fn priority(&mut self, v: &Spanned<Int>, key: &str) -> Option<u32> {
        self.int(
            v,
            key,
            0,
            i64::from(u32::MAX),
            "priorities are 0..=4294967295, lower is preferred",
        )
        .map(|p| p as u32)
    }

    pub(super) fn weight(&mut self, v: &Spanned<Int>, key: &str) -> Option<u32> {
        self.int(
            v,
            key,
            1,
            256,
            "weights are 1..=256 (a multipath route's weight range)",
        )
        .map(|w| w as u32)
    }

    /// A prefix, or a bare address meaning just that host.
    pub(super) fn prefix(&mut self, v: &Spanned<String>, key: &str) -> Option<IpNet> {
        let text = v.get_ref();
        match parse_prefix(text).ok_or(()) {
            Ok(net) if net.trunc() != net => {
                // nft and ip rule would silently match the whole network (or refuse);
                // make the intent explicit.
                self.error(
                    v.span(),
                    key,
                    format!(
                        "{text} has host bits set; write the network, {}",
                        net.trunc()
                    ),
                );
                None
            }
            Ok(net) => Some(net),
            Err(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("{text:?} is not an IP prefix; write e.g. \"192.0.2.0/24\" or \"2001:db8::/32\""),
                );
                None
            }
        }
    }
}

/// A prefix, or a bare address meaning just that host.
pub(super) fn parse_prefix(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// What is wrong with a link or policy name, if anything: names become routing-table
/// names, nft counter names and rule targets, so they must not be mistaken for a
/// number or a keyword.
fn name_problem(kind: &str, name: &str) -> Option<String> {
    Some(if name.is_empty() || name.len() > MAX_NAME_LEN {
        format!(
            "a {kind} name is 1 to {MAX_NAME_LEN} characters; {name:?} has {}",
            name.chars().count()
        )
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        format!("{name:?} may use only a-z, 0-9, _ and -; rename the {kind}")
    } else if name.chars().all(|c| c.is_ascii_digit()) {
        format!("{name:?} is all digits and would read as a table number; add a letter")
    } else if RESERVED_NAMES.contains(&name) {
        format!(
            "{name:?} is reserved ({}); choose another {kind} name",
            RESERVED_NAMES.join(", ")
        )
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_problem("link", "isp-1_b"), None);
        assert_eq!(name_problem("link", "lte"), None);
        for bad in [
            "",
            "a-very-long-name-x",
            "ISP",
            "isp.1",
            "42",
            "main",
            "all",
        ] {
            assert!(name_problem("link", bad).is_some(), "{bad:?} accepted");
        }
    }
}
