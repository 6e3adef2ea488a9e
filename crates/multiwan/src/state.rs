//! The state directory (`/var/lib/multiwan/<nft_table>`): what must survive a restart.
//!
//! - `seed`: the sticky-hashing seed, so a source keeps its link across restarts;
//! - `links.json`: each link's last state and the boot it was saved in, so a restarted
//!   daemon adopts it instead of re-learning it (and moving nothing), but only while
//!   the kernel still holds what that daemon installed (see [`adoption`]);
//! - `status.json`: the last status, for `multiwan status` when no daemon answers.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::plan::{LinkState, LinkStates};

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sticky seed, created (from the kernel's random pool) on first use.
    pub fn seed(&self) -> Result<u32> {
        let file = self.path.join("seed");
        if let Ok(text) = fs::read_to_string(&file) {
            if let Ok(seed) = u32::from_str_radix(text.trim().trim_start_matches("0x"), 16) {
                return Ok(seed);
            }
        }
        let mut bytes = [0u8; 4];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .context("reading /dev/urandom for the sticky seed")?;
        let seed = u32::from_le_bytes(bytes);
        self.write_atomic("seed", format!("{seed:#010x}\n").as_bytes())?;
        Ok(seed)
    }

    /// The seed if one was stored, without creating it (for `plan`, which changes nothing).
    pub fn existing_seed(&self) -> Option<u32> {
        let text = fs::read_to_string(self.path.join("seed")).ok()?;
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    }

    /// Link states saved by the last daemon; empty if none.
    pub fn link_states(&self) -> LinkStates {
        self.saved_links().map(|s| s.states).unwrap_or_default()
    }

    /// Link states saved by the last daemon, with the boot they were saved in; `None`
    /// if there are none (or the file is unreadable: a fresh start is always safe).
    pub fn saved_links(&self) -> Option<SavedLinks> {
        let text = fs::read_to_string(self.path.join("links.json")).ok()?;
        let file: LinksFile = serde_json::from_str(&text).ok()?;
        let (boot_id, raw) = match file {
            LinksFile::Current { boot_id, links } => (boot_id, links),
            // Written before boot ids were recorded: which boot is unknown.
            LinksFile::Unversioned(links) => (None, links),
        };
        let states = raw
            .into_iter()
            .filter_map(|(name, s)| parse_state(&s).map(|st| (name, st)))
            .collect();
        Some(SavedLinks { boot_id, states })
    }

    /// Saves the link states with this boot's id.
    pub fn save_link_states(&self, states: &LinkStates) -> Result<()> {
        let links = states
            .iter()
            .map(|(n, s)| (n.clone(), s.as_str().to_string()))
            .collect();
        let file = LinksFile::Current {
            boot_id: boot_id(),
            links,
        };
        self.write_atomic(
            "links.json",
            serde_json::to_string_pretty(&file)?.as_bytes(),
        )
    }

    /// Writes `name` in the directory through a temporary file and a rename, so a
    /// reader never sees half a file.
    pub fn write_atomic(&self, name: &str, content: &[u8]) -> Result<()> {
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating state directory {}", self.path.display()))?;
        let tmp = self.path.join(format!(".{name}.tmp"));
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(content)?;
        f.sync_all().ok();
        fs::rename(&tmp, self.path.join(name))
            .with_context(|| format!("replacing {}", self.path.join(name).display()))?;
        Ok(())
    }

    /// Removes what a write interrupted by a crash (`kill -9` between create and
    /// rename) left: `.<name>.tmp` files. Called once at daemon start, before any write.
    pub fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    pub fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path.join(name)).ok()
    }

    /// Removes the directory (after `flush`): nothing of this instance is left.
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `links.json`: `{"boot_id": "…", "links": {"isp1": "down"}}`; a plain map of states
/// from before boot ids were recorded is still read.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum LinksFile {
    Current {
        boot_id: Option<String>,
        links: BTreeMap<String, String>,
    },
    Unversioned(BTreeMap<String, String>),
}

/// Link states as the last daemon saved them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedLinks {
    /// The kernel's boot id when they were saved (`None`: not recorded).
    pub boot_id: Option<String>,
    pub states: LinkStates,
}

/// Where the kernel tells its boot apart from every other one (a random UUID made at
/// boot; one per kernel, shared by all network namespaces).
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id, `None` where the kernel does not say.
pub fn boot_id() -> Option<String> {
    let id = fs::read_to_string(BOOT_ID).ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

/// What the kernel shows, at start, of the state this instance installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelHolds {
    /// `table inet <nft_table>` exists and carries multiwan's digest.
    pub nft_table: bool,
    /// The instance's config-only ip rules (`lookup main suppress_prefixlength 0` and
    /// `fwmark <main mark> lookup main`) are in its priority range.
    pub rules: bool,
}

/// Whether saved link states may be adopted, and if not, why (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    Adopt(LinkStates),
    Fresh(String),
}

/// Whether `saved` (if any) was saved in this boot (`boot`), so that the kernel is
/// worth asking about (see [`adoption`]).
pub fn same_boot(saved: Option<&SavedLinks>, boot: Option<&str>) -> bool {
    matches!((saved.and_then(|s| s.boot_id.as_deref()), boot), (Some(a), Some(b)) if a == b)
}

/// Saved link states describe the kernel the last daemon ran on: a `down` link's
/// traffic was moved by rules and tables that daemon installed. They are adopted only
/// when they were saved in this boot and that kernel state is still there; after a
/// reboot, a `flush`, or in new namespaces, adopting `down` would keep a healthy link
/// out of service for `up_after` rounds, so every link starts `up` and its probes
/// decide.
pub fn adoption(saved: Option<SavedLinks>, boot: Option<&str>, kernel: KernelHolds) -> Adoption {
    let Some(saved) = saved else {
        return Adoption::Fresh("no saved link states".into());
    };
    let why = match (saved.boot_id.as_deref(), boot) {
        (None, _) => "the saved link states do not say which boot they are from",
        (_, None) => "this kernel has no boot id",
        (Some(a), Some(b)) if a != b => "the saved link states are from another boot",
        _ if !kernel.nft_table => "its nft table is not in the kernel",
        _ if !kernel.rules => "its ip rules are not in the kernel",
        _ => return Adoption::Adopt(saved.states),
    };
    Adoption::Fresh(why.into())
}

pub fn parse_state(s: &str) -> Option<LinkState> {
    Some(match s {
        "up" => LinkState::Up,
        "degraded" => LinkState::Degraded,
        "down" => LinkState::Down,
        "waiting" => LinkState::Waiting,
        "disabled" => LinkState::Disabled,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_and_states_survive() {
        let dir = std::env::temp_dir().join(format!("mw-state-{}", std::process::id()));
        let s = StateDir::new(&dir);
        assert_eq!(s.existing_seed(), None);
        let seed = s.seed().unwrap();
        assert_eq!(s.seed().unwrap(), seed);
        assert_eq!(s.existing_seed(), Some(seed));
        let states: LinkStates = [("a".to_string(), LinkState::Down)].into_iter().collect();
        s.save_link_states(&states).unwrap();
        assert_eq!(s.link_states(), states);
        assert_eq!(s.saved_links().unwrap().boot_id, boot_id());
        assert!(boot_id().is_some(), "Linux says its boot id");
        s.remove();
        assert!(!dir.exists());
    }

    fn saved(boot: Option<&str>) -> SavedLinks {
        SavedLinks {
            boot_id: boot.map(str::to_string),
            states: [("isp1".to_string(), LinkState::Down)]
                .into_iter()
                .collect(),
        }
    }

    const ALL: KernelHolds = KernelHolds {
        nft_table: true,
        rules: true,
    };

    #[test]
    fn adopts_only_what_this_boot_and_kernel_confirm() {
        let adopt = |saved: Option<SavedLinks>, boot: Option<&str>, kernel| {
            matches!(adoption(saved, boot, kernel), Adoption::Adopt(_))
        };
        assert_eq!(
            adoption(Some(saved(Some("b1"))), Some("b1"), ALL),
            Adoption::Adopt(saved(None).states)
        );
        assert!(!adopt(None, Some("b1"), ALL));
        assert!(!adopt(Some(saved(Some("b0"))), Some("b1"), ALL));
        assert!(!adopt(Some(saved(None)), Some("b1"), ALL));
        assert!(!adopt(Some(saved(Some("b1"))), None, ALL));
        let no_table = KernelHolds {
            nft_table: false,
            ..ALL
        };
        let no_rules = KernelHolds {
            rules: false,
            ..ALL
        };
        assert!(!adopt(Some(saved(Some("b1"))), Some("b1"), no_table));
        assert!(!adopt(Some(saved(Some("b1"))), Some("b1"), no_rules));
        assert!(same_boot(Some(&saved(Some("b1"))), Some("b1")));
        assert!(!same_boot(Some(&saved(Some("b0"))), Some("b1")));
        assert!(!same_boot(Some(&saved(None)), Some("b1")));
        assert!(!same_boot(None, Some("b1")));
    }

    #[test]
    fn reads_link_states_saved_before_boot_ids() {
        let dir = std::env::temp_dir().join(format!("mw-state-old-{}", std::process::id()));
        let s = StateDir::new(&dir);
        s.write_atomic("links.json", br#"{"isp1": "down", "isp2": "up"}"#)
            .unwrap();
        let saved = s.saved_links().unwrap();
        assert_eq!(saved.boot_id, None);
        assert_eq!(saved.states.get("isp1"), Some(&LinkState::Down));
        s.write_atomic("links.json", b"not json").unwrap();
        assert_eq!(s.saved_links(), None);
        s.remove();
    }
}
