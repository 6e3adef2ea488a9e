//! What a reload changes, worked out from the old and the new config alone (no runtime,
//! no kernel), so it can be tested on its own: the settings a reload must refuse, the
//! links added, removed, re-created or changed (and what changed), and the settings that
//! move. The daemon then carries it out (`operate::try_reload`); the texts here are the
//! ones its reply and log show.

use std::fmt;
use std::path::PathBuf;

use crate::config::{Config, Link, Settings};

/// A change of a setting that names the kernel objects multiwan owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedSettingChange {
    pub key: &'static str,
    pub old: String,
    pub new: String,
}

impl fmt::Display for FixedSettingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "settings.{} ({} -> {})", self.key, self.old, self.new)
    }
}

/// Why a reload is refused before anything changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} changed: that needs `multiwan flush` and a restart of the daemon; nothing changed, \
     the running config stays",
    join(.0)
)]
pub struct FixedSettingsChanged(pub Vec<FixedSettingChange>);

fn join(changes: &[FixedSettingChange]) -> String {
    let parts: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    parts.join(", ")
}

/// Why a link's runtime goes away without a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    Disabled,
}

impl Removal {
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Removed => "removed from the config",
            Removal::Disabled => "disabled in the config",
        }
    }
}

/// What happens to one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// Removed, or set to `enabled = false`: its runtime and connections go.
    Gone { name: String, why: Removal },
    /// `interface` or `id` changed: a new runtime; connections of the old one go.
    Recreated {
        name: String,
        interface: (String, String),
        id: (u8, u8),
    },
    /// Other keys changed: the runtime stays. `check`: its prober restarts.
    Changed {
        name: String,
        fields: Vec<&'static str>,
        check: bool,
    },
    /// New, or enabled again: a new runtime.
    Added { name: String },
}

impl LinkChange {
    pub fn name(&self) -> &str {
        match self {
            LinkChange::Gone { name, .. }
            | LinkChange::Recreated { name, .. }
            | LinkChange::Changed { name, .. }
            | LinkChange::Added { name } => name,
        }
    }
}

impl fmt::Display for LinkChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkChange::Gone { name, why } => write!(f, "{}: {name}", why.as_str()),
            LinkChange::Recreated {
                name,
                interface,
                id,
            } => write!(
                f,
                "re-created {name} (interface {} -> {}, id {} -> {})",
                interface.0, interface.1, id.0, id.1
            ),
            LinkChange::Changed {
                name,
                fields,
                check,
            } => {
                let mut what = fields.clone();
                if *check {
                    what.push("check");
                }
                write!(f, "changed {name} ({})", what.join(", "))
            }
            LinkChange::Added { name } => write!(f, "added {name}"),
        }
    }
}

/// Everything a reload from `old` to `new` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadDiff {
    /// The running (enabled) links by name, then the added ones in the new file's order.
    pub links: Vec<LinkChange>,
    /// `settings.metrics` differs: the listener moves at once.
    pub metrics_moved: bool,
    /// `settings.socket` differs (old, new): only the next start uses the new one.
    pub socket_moved: Option<(PathBuf, PathBuf)>,
}

impl ReloadDiff {
    pub fn new(old: &Config, new: &Config) -> Result<ReloadDiff, FixedSettingsChanged> {
        let fixed = fixed_settings_changed(&old.settings, &new.settings);
        if !fixed.is_empty() {
            return Err(FixedSettingsChanged(fixed));
        }
        let mut running: Vec<&Link> = old.links.iter().filter(|l| l.enabled).collect();
        running.sort_by(|a, b| a.name.cmp(&b.name));
        let mut links: Vec<LinkChange> = running
            .iter()
            .filter_map(|was| link_change(was, new))
            .collect();
        for l in new.links.iter().filter(|l| l.enabled) {
            if !running.iter().any(|r| r.name == l.name) {
                links.push(LinkChange::Added {
                    name: l.name.clone(),
                });
            }
        }
        let (s0, s1) = (&old.settings, &new.settings);
        Ok(ReloadDiff {
            links,
            metrics_moved: s0.metrics != s1.metrics,
            socket_moved: (s0.socket != s1.socket).then(|| (s0.socket.clone(), s1.socket.clone())),
        })
    }

    /// One note per change, in the order the reply lists them.
    pub fn notes(&self) -> Vec<String> {
        let mut notes: Vec<String> = self.links.iter().map(|c| c.to_string()).collect();
        if let Some((old, new)) = &self.socket_moved {
            notes.push(format!(
                "settings.socket changes to {} at the next restart (still {})",
                new.display(),
                old.display()
            ));
        }
        notes
    }

    /// What the reply says after "reloaded FILE: ".
    pub fn summary(&self) -> String {
        let notes = self.notes();
        if notes.is_empty() {
            "no link changed".to_string()
        } else {
            notes.join("; ")
        }
    }
}

/// What happens to the running link `was` under the new config, if anything.
fn link_change(was: &Link, new: &Config) -> Option<LinkChange> {
    let name = was.name.clone();
    let Some(l) = new.link(&was.name).filter(|l| l.enabled) else {
        let why = match new.link(&was.name) {
            Some(_) => Removal::Disabled,
            None => Removal::Removed,
        };
        return Some(LinkChange::Gone { name, why });
    };
    if l.interface != was.interface || l.id != was.id {
        return Some(LinkChange::Recreated {
            name,
            interface: (was.interface.clone(), l.interface.clone()),
            id: (was.id, l.id),
        });
    }
    (l != was).then(|| LinkChange::Changed {
        name,
        fields: changed_fields(was, l),
        check: l.check != was.check,
    })
}

/// The settings a reload must not change.
fn fixed_settings_changed(old: &Settings, new: &Settings) -> Vec<FixedSettingChange> {
    let mut out = Vec::new();
    let mut fixed = |key, differs: bool, old: String, new: String| {
        if differs {
            out.push(FixedSettingChange { key, old, new });
        }
    };
    fixed(
        "mark_mask",
        old.mark_mask != new.mark_mask,
        format!("{:#x}", old.mark_mask),
        format!("{:#x}", new.mark_mask),
    );
    fixed(
        "table_base",
        old.table_base != new.table_base,
        old.table_base.to_string(),
        new.table_base.to_string(),
    );
    fixed(
        "rule_priority",
        old.rule_priority != new.rule_priority,
        old.rule_priority.to_string(),
        new.rule_priority.to_string(),
    );
    fixed(
        "nft_table",
        old.nft_table != new.nft_table,
        format!("{:?}", old.nft_table),
        format!("{:?}", new.nft_table),
    );
    out
}

/// Names of the keys (other than `check`) that differ between two versions of a link.
fn changed_fields(old: &Link, new: &Link) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut diff = |name, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    diff("gateway", old.gateway != new.gateway);
    diff("gateway6", old.gateway6 != new.gateway6);
    diff("priority", old.priority != new.priority);
    diff("weight", old.weight != new.weight);
    diff("masquerade", old.masquerade != new.masquerade);
    diff("masquerade6", old.masquerade6 != new.masquerade6);
    diff("npt6", old.npt6 != new.npt6);
    diff("mss_clamp", old.mss_clamp != new.mss_clamp);
    diff("flush_on_down", old.flush_on_down != new.flush_on_down);
    diff(
        "flush_on_recover",
        old.flush_on_recover != new.flush_on_recover,
    );
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(settings: &str, links: &str) -> Config {
        let text = format!("[settings]\n{settings}\n{links}");
        crate::config::parse(&text, Path::new("/etc/multiwan/test.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn link(name: &str, id: u8, extra: &str) -> String {
        format!("[links.{name}]\nid = {id}\ninterface = \"wan{id}\"\n{extra}\n")
    }

    fn two() -> String {
        link("isp1", 1, "") + &link("isp2", 2, "")
    }

    #[test]
    fn same_file_changes_nothing() {
        let c = config("", &two());
        let d = ReloadDiff::new(&c, &c).unwrap();
        assert!(d.links.is_empty());
        assert!(!d.metrics_moved && d.socket_moved.is_none());
        assert_eq!(d.summary(), "no link changed");
    }

    #[test]
    fn fixed_settings_are_refused_with_old_and_new() {
        let old = config("", &two());
        let new = config(
            "mark_mask = 0xff0000\ntable_base = 200\nnft_table = \"other\"",
            &two(),
        );
        let e = ReloadDiff::new(&old, &new).unwrap_err();
        assert_eq!(
            e.to_string(),
            "settings.mark_mask (0xff00 -> 0xff0000), settings.table_base (100 -> 200), \
             settings.nft_table (\"multiwan\" -> \"other\") changed: that needs `multiwan \
             flush` and a restart of the daemon; nothing changed, the running config stays"
        );
        let new = config("rule_priority = 2000", &two());
        let e = ReloadDiff::new(&old, &new).unwrap_err();
        assert_eq!(
            e.0,
            vec![FixedSettingChange {
                key: "rule_priority",
                old: "1000".into(),
                new: "2000".into()
            }]
        );
    }

    #[test]
    fn links_removed_disabled_recreated_changed_added() {
        let old = config(
            "",
            &(link("zeta", 1, "")
                + &link("alpha", 2, "weight = 2")
                + &link("gone", 3, "")
                + &link("off", 4, "")
                + &link("later", 6, "enabled = false")),
        );
        let new = config(
            "",
            &("[links.zeta]\nid = 1\ninterface = \"ppp0\"\n".to_string()
                + &link("alpha", 2, "weight = 3\npriority = 2")
                + &link("off", 4, "enabled = false")
                + &link("new", 5, "")
                + &link("later", 6, "")),
        );
        let d = ReloadDiff::new(&old, &new).unwrap();
        assert_eq!(
            d.notes(),
            [
                "changed alpha (priority, weight)",
                "removed from the config: gone",
                "disabled in the config: off",
                "re-created zeta (interface wan1 -> ppp0, id 1 -> 1)",
                "added new",
                "added later",
            ]
        );
        assert_eq!(
            d.links[3],
            LinkChange::Recreated {
                name: "zeta".into(),
                interface: ("wan1".into(), "ppp0".into()),
                id: (1, 1)
            }
        );
        let names: Vec<&str> = d.links.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["alpha", "gone", "off", "zeta", "new", "later"]);
    }

    #[test]
    fn a_new_check_is_named_last_and_restarts_only_the_prober() {
        let check = "[links.isp1.check]\ntargets = [\"198.18.0.1\"]\n";
        let old = config("", &(link("isp1", 1, "") + check));
        let new = config(
            "",
            &(link("isp1", 1, "mss_clamp = true") + &check.replace("198.18.0.1", "198.18.0.2")),
        );
        let d = ReloadDiff::new(&old, &new).unwrap();
        assert_eq!(
            d.links,
            [LinkChange::Changed {
                name: "isp1".into(),
                fields: vec!["mss_clamp"],
                check: true
            }]
        );
        assert_eq!(d.summary(), "changed isp1 (mss_clamp, check)");
    }

    #[test]
    fn metrics_move_at_once_the_socket_at_the_next_start() {
        let old = config("", &two());
        let new = config(
            "metrics = \"127.0.0.1:9999\"\nsocket = \"/run/elsewhere.sock\"",
            &two(),
        );
        let d = ReloadDiff::new(&old, &new).unwrap();
        assert!(d.metrics_moved);
        assert_eq!(
            d.summary(),
            "settings.socket changes to /run/elsewhere.sock at the next restart (still \
             /run/multiwan/multiwan.sock)"
        );
    }
}
