//! `[settings]`: the instance's ranges, names, paths and defaults.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_spanned::Spanned;

use super::Ctx;
use crate::config::model::{Fallback, OnExit, Settings};
use crate::config::raw::{Int, RawSettings};

/// The kernel's reserved routing tables (`default`, `main`, `local`).
pub(super) const RESERVED_TABLES: &[(u32, &str)] =
    &[(253, "default"), (254, "main"), (255, "local")];

/// multiwan uses tables `table_base ..= table_base + TABLE_SPAN`.
pub(super) const TABLE_SPAN: u32 = 511;

/// multiwan uses ip rule priorities `rule_priority ..= rule_priority + RULE_SPAN`.
pub(super) const RULE_SPAN: u32 = 999;

/// The last priority below the kernel's own `lookup main` rule (32766).
pub(super) const LAST_FREE_RULE_PRIORITY: u32 = 32765;

impl<'t> Ctx<'_, 't> {
    pub(super) fn settings(&mut self, raw: RawSettings) -> Option<Settings> {
        let mark_mask = match &raw.mark_mask {
            None => Some(0xff00),
            Some(v) => self.mark_mask(v),
        };
        let table_base = match &raw.table_base {
            None => Some(100),
            Some(v) => self.table_base(v),
        };
        let rule_priority = match &raw.rule_priority {
            None => Some(1000),
            Some(v) => self.int(
                v,
                "settings.rule_priority",
                1,
                i64::from(LAST_FREE_RULE_PRIORITY - RULE_SPAN),
                "multiwan owns ip rule priorities rule_priority..=rule_priority+999; they \
                 must stay above 0 and below the kernel's main rule (32766)",
            ),
        };
        let nft_table = match &raw.nft_table {
            None => Some("multiwan".to_string()),
            Some(v) => self.nft_table(v),
        };
        let lan = raw.lan.as_ref().map(|entries| {
            let mut seen = HashSet::new();
            let mut ok = Vec::new();
            for e in entries {
                let key = self.key_at(&e.span());
                if let Some(name) = self.ifname(e, &key) {
                    if !seen.insert(name.clone()) {
                        self.error(
                            e.span(),
                            &key,
                            format!("{name} is listed twice; list it once"),
                        );
                    } else {
                        self.lan_entries.push((name.clone(), e.span()));
                        ok.push(name);
                    }
                }
            }
            (ok.len() == entries.len()).then_some(ok)
        });
        let fallback = match &raw.fallback {
            None => Some(Fallback::All),
            Some(v) => self.fallback(v, "settings.fallback"),
        };
        let on_exit = match &raw.on_exit {
            None => Some(OnExit::Keep),
            Some(v) => self.choice(
                v,
                "settings.on_exit",
                &[("keep", OnExit::Keep), ("flush", OnExit::Flush)],
            ),
        };
        let socket = raw
            .socket
            .as_ref()
            .map(|v| self.absolute_path(v, "settings.socket"));
        let metrics = match &raw.metrics {
            None => Some(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9581)))),
            Some(v) => self.metrics(v),
        };
        let hooks_dir = match &raw.hooks_dir {
            None => Some(PathBuf::from("/etc/multiwan/hooks.d")),
            Some(v) => self.absolute_path(v, "settings.hooks_dir"),
        };
        let hook_timeout = match &raw.hook_timeout {
            None => Some(Duration::from_secs(10)),
            Some(v) => self.nonzero_duration(v, "settings.hook_timeout"),
        };
        let log_group = match &raw.log_group {
            None => Some(0),
            Some(v) => self.int(
                v,
                "settings.log_group",
                0,
                i64::from(u16::MAX),
                "NFLOG groups are 0..=65535 (0: kernel log)",
            ),
        };

        let nft_table = nft_table?;
        let socket = match socket {
            Some(s) => s?,
            // Derived from nft_table so two instances never share a socket.
            None => PathBuf::from(format!("/run/multiwan/{nft_table}.sock")),
        };
        Some(Settings {
            mark_mask: mark_mask?,
            table_base: table_base?,
            rule_priority: rule_priority? as u32,
            state_dir: PathBuf::from(format!("/var/lib/multiwan/{nft_table}")),
            nft_table,
            table_names: raw.table_names.unwrap_or(true),
            lan: match lan {
                None => None,
                Some(list) => Some(list?),
            },
            local_traffic: raw.local_traffic.unwrap_or(true),
            fallback: fallback?,
            on_exit: on_exit?,
            socket,
            metrics: metrics?,
            hooks_dir: hooks_dir?,
            hook_timeout: hook_timeout?,
            log_group: log_group? as u16,
        })
    }

    pub(super) fn mark_mask(&mut self, v: &Spanned<Int>) -> Option<u32> {
        let key = "settings.mark_mask";
        let mask = self.int(
            v,
            key,
            0,
            i64::from(u32::MAX),
            "marks are 32 bits wide; give a mask such as 0xff00",
        )? as u32;
        // The planner puts ids 1..=254 and the reserved main mark 255 into the lowest
        // run of 8 contiguous mask bits (plan::marks), so such a run must exist.
        if !has_eight_contiguous_bits(mask) {
            self.error(
                v.span(),
                key,
                format!(
                    "mark_mask {mask:#x} has no 8 contiguous bits; multiwan needs 8 for link ids \
                     1..=254 and the main mark, e.g. 0xff00 or 0xff0000"
                ),
            );
            return None;
        }
        Some(mask)
    }

    pub(super) fn table_base(&mut self, v: &Spanned<Int>) -> Option<u32> {
        let key = "settings.table_base";
        let base = self.int(
            v,
            key,
            1,
            i64::from(u32::MAX - TABLE_SPAN),
            "multiwan uses tables table_base..=table_base+511, which must be above 0 \
             (unspec) and fit in 32 bits",
        )? as u32;
        // The default policy's table is table_base itself. Link tables are checked
        // against the links' ids in cross_link_checks; named-policy tables start at
        // table_base + 256 > 255 and can never hit a reserved table.
        if let Some((_, name)) = RESERVED_TABLES.iter().find(|(t, _)| *t == base) {
            self.error(
                v.span(),
                key,
                format!(
                    "table {base} is the kernel's {name} table, which multiwan must not own; \
                     use e.g. table_base = 100 or 1000"
                ),
            );
            return None;
        }
        Some(base)
    }

    pub(super) fn nft_table(&mut self, v: &Spanned<String>) -> Option<String> {
        let name = v.get_ref();
        let mut chars = name.chars();
        let valid = name.len() <= 32
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            self.error(
                v.span(),
                "settings.nft_table",
                format!(
                    "{name:?} is not an nftables table name; use 1 to 32 characters of \
                     A-Z, a-z, 0-9, _ and -, starting with a letter"
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    pub(super) fn metrics(&mut self, v: &Spanned<String>) -> Option<Option<SocketAddr>> {
        let text = v.get_ref();
        if text.is_empty() {
            return Some(None);
        }
        match text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                self.error(
                    v.span(),
                    "settings.metrics",
                    format!(
                        "{text:?} has port 0, which would listen on a random port; give a \
                         fixed port, e.g. \"127.0.0.1:9581\", or \"\" to disable metrics"
                    ),
                );
                None
            }
            Ok(addr) => Some(Some(addr)),
            Err(_) => {
                self.error(
                    v.span(),
                    "settings.metrics",
                    format!(
                        "{text:?} is not an address and port; write e.g. \"127.0.0.1:9581\" or \
                         \"[::1]:9581\", or \"\" to disable metrics"
                    ),
                );
                None
            }
        }
    }

    pub(super) fn absolute_path(&mut self, v: &Spanned<String>, key: &str) -> Option<PathBuf> {
        let text = v.get_ref();
        if !text.starts_with('/') {
            // The daemon and the clients run from different directories; a relative
            // path would point them at different places.
            self.error(
                v.span(),
                key,
                format!("{text:?} is not an absolute path; write it starting with /"),
            );
            return None;
        }
        Some(PathBuf::from(text))
    }
}

/// Whether `mask` holds a run of 8 contiguous set bits, where the planner puts link ids
/// 1..=254 and the reserved main mark (`plan::marks`).
fn has_eight_contiguous_bits(mask: u32) -> bool {
    (0..=24).any(|shift| (mask >> shift) & 0xff == 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_masks() {
        for good in [0xff00, 0xff, 0xff00_0000, 0x1fe0, 0xffff_ffff] {
            assert!(has_eight_contiguous_bits(good), "{good:#x}");
        }
        for bad in [0, 0x7f, 0xf0f0, 0x7f00_0000] {
            assert!(!has_eight_contiguous_bits(bad), "{bad:#x}");
        }
    }
}
