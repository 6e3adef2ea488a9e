//! Sysctls multiwan needs: written only when they differ, so an apply that changes
//! nothing writes nothing, and the caller can log exactly what it changed.

use std::path::{Path, PathBuf};

use super::error::{KernelError, Result};
use crate::plan::{Family, Sysctl};

/// Where sysctls live. `net.*` entries under it belong to the network namespace of the
/// thread that opens them.
pub const PROC_SYS: &str = "/proc/sys";

/// One sysctl that was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    pub key: String,
    /// The value before (trimmed), to log and to restore on a failed apply.
    pub old: String,
    pub new: String,
}

impl SysctlChange {
    /// `net.ipv4.conf.wan1.src_valid_mark: 0 -> 1`
    pub fn describe(&self) -> String {
        format!(
            "sysctl {}: {} -> {}",
            self.key.replace('/', "."),
            self.old,
            self.new
        )
    }
}

fn path_of(root: &Path, key: &str) -> PathBuf {
    root.join(key.trim_start_matches('/'))
}

/// Reads one sysctl (trimmed).
pub fn read(root: &Path, key: &str) -> Result<String> {
    let path = path_of(root, key);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| KernelError::Io {
            what: "reading sysctl",
            path,
            source,
            hint: "does the interface exist (multiwan retries when it appears)?",
        })
}

fn write(root: &Path, key: &str, value: &str) -> Result<()> {
    let path = path_of(root, key);
    std::fs::write(&path, format!("{value}\n")).map_err(|source| KernelError::Io {
        what: "writing sysctl",
        path,
        source,
        hint: "multiwan must run as root, with /proc/sys writable (not a read-only container)",
    })
}

/// Multi-value sysctls (`1 0`) read back with tabs; compare word by word.
fn same(current: &str, wanted: &str) -> bool {
    current.split_whitespace().eq(wanted.split_whitespace())
}

/// Writes every sysctl whose value differs; returns what it changed, in order. Stops at
/// the first failure after putting back what it had changed.
pub fn apply(root: &Path, sysctls: &[Sysctl]) -> Result<Vec<SysctlChange>> {
    let mut changed = Vec::new();
    for s in sysctls {
        let result = read(root, &s.key).and_then(|old| {
            if same(&old, &s.value) {
                Ok(None)
            } else {
                write(root, &s.key, &s.value).map(|()| Some(old))
            }
        });
        match result {
            Ok(Some(old)) => changed.push(SysctlChange {
                key: s.key.clone(),
                old,
                new: s.value.trim().to_string(),
            }),
            Ok(None) => {}
            Err(e) => {
                let _ = restore(root, &changed);
                return Err(e);
            }
        }
    }
    Ok(changed)
}

/// Puts back the old values of `changes` (newest first).
pub fn restore(root: &Path, changes: &[SysctlChange]) -> Result<()> {
    let mut first_err = None;
    for c in changes.iter().rev() {
        if let Err(e) = write(root, &c.key, &c.old) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Whether this host (network namespace) runs IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6 {
    On,
    /// `net.ipv6.conf.all.disable_ipv6 = 1`.
    Disabled,
    /// No `net/ipv6` under the sysctl root: the kernel was booted with `ipv6.disable=1`
    /// (or built without IPv6).
    Absent,
}

impl Ipv6 {
    /// Read under `root` (`/proc/sys`).
    pub fn of(root: &Path) -> Ipv6 {
        if !path_of(root, "net/ipv6").is_dir() {
            return Ipv6::Absent;
        }
        match read(root, "net/ipv6/conf/all/disable_ipv6") {
            Ok(v) if v == "1" => Ipv6::Disabled,
            _ => Ipv6::On,
        }
    }

    /// The families the kernel has tables for (what can be dumped and flushed): IPv6
    /// unless it is absent.
    pub fn present(self) -> Vec<Family> {
        match self {
            Ipv6::Absent => vec![Family::V4],
            Ipv6::On | Ipv6::Disabled => vec![Family::V4, Family::V6],
        }
    }

    /// The one log line saying IPv6 is skipped (`None` when it is on).
    pub fn skipped_line(self) -> Option<&'static str> {
        match self {
            Ipv6::On => None,
            Ipv6::Disabled => Some(
                "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1): IPv6 rules, routes and sysctls are skipped; IPv4 works as usual",
            ),
            Ipv6::Absent => Some(
                "IPv6 is absent (no /proc/sys/net/ipv6: kernel booted with ipv6.disable=1?): IPv6 rules, routes and sysctls are skipped; IPv4 works as usual",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mw-sysctl-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net/ipv4/conf/wan1")).unwrap();
        dir
    }

    #[test]
    fn writes_only_what_differs() {
        let root = tmp("differs");
        std::fs::write(root.join("net/ipv4/conf/wan1/src_valid_mark"), "0\n").unwrap();
        std::fs::write(root.join("net/ipv4/conf/wan1/rp_filter"), "1\n").unwrap();
        let want = vec![
            Sysctl {
                key: "net/ipv4/conf/wan1/src_valid_mark".into(),
                value: "1".into(),
            },
            Sysctl {
                key: "net/ipv4/conf/wan1/rp_filter".into(),
                value: "1".into(),
            },
        ];
        let changed = apply(&root, &want).unwrap();
        assert_eq!(
            changed,
            vec![SysctlChange {
                key: "net/ipv4/conf/wan1/src_valid_mark".into(),
                old: "0".into(),
                new: "1".into()
            }]
        );
        assert_eq!(
            read(&root, "net/ipv4/conf/wan1/src_valid_mark").unwrap(),
            "1"
        );
        assert!(apply(&root, &want).unwrap().is_empty());
        restore(&root, &changed).unwrap();
        assert_eq!(
            read(&root, "net/ipv4/conf/wan1/src_valid_mark").unwrap(),
            "0"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_missing_key_fails_and_restores() {
        let root = tmp("missing");
        std::fs::write(root.join("net/ipv4/conf/wan1/src_valid_mark"), "0\n").unwrap();
        let want = vec![
            Sysctl {
                key: "net/ipv4/conf/wan1/src_valid_mark".into(),
                value: "1".into(),
            },
            Sysctl {
                key: "net/ipv4/conf/nope/src_valid_mark".into(),
                value: "1".into(),
            },
        ];
        assert!(apply(&root, &want).is_err());
        assert_eq!(
            read(&root, "net/ipv4/conf/wan1/src_valid_mark").unwrap(),
            "0"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn multi_value_compare() {
        assert!(same("1\t0", "1 0"));
        assert!(!same("1", "0"));
    }

    #[test]
    fn ipv6_state_from_the_sysctl_tree() {
        let root = tmp("ipv6");
        assert_eq!(Ipv6::of(&root), Ipv6::Absent);
        std::fs::create_dir_all(root.join("net/ipv6/conf/all")).unwrap();
        std::fs::write(root.join("net/ipv6/conf/all/disable_ipv6"), "0\n").unwrap();
        assert_eq!(Ipv6::of(&root), Ipv6::On);
        std::fs::write(root.join("net/ipv6/conf/all/disable_ipv6"), "1\n").unwrap();
        assert_eq!(Ipv6::of(&root), Ipv6::Disabled);
        let _ = std::fs::remove_dir_all(&root);
    }
}
