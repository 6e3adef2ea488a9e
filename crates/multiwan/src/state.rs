//! The state directory (`/var/lib/multiwan/<nft_table>`): what must survive a restart.
//!
//! - `seed`: the sticky-hashing seed, so a source keeps its link across restarts;
//! - `links.json`: each link's last state, so a restarted daemon adopts it instead of
//!   re-learning it (and moving nothing);
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
        let Ok(text) = fs::read_to_string(self.path.join("links.json")) else {
            return LinkStates::new();
        };
        let raw: BTreeMap<String, String> = serde_json::from_str(&text).unwrap_or_default();
        raw.into_iter()
            .filter_map(|(name, s)| parse_state(&s).map(|st| (name, st)))
            .collect()
    }

    pub fn save_link_states(&self, states: &LinkStates) -> Result<()> {
        let raw: BTreeMap<&str, &str> = states
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_str()))
            .collect();
        self.write_atomic("links.json", serde_json::to_string_pretty(&raw)?.as_bytes())
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

    pub fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path.join(name)).ok()
    }

    /// Removes the directory (after `flush`): nothing of this instance is left.
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.path);
    }
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
        s.remove();
        assert!(!dir.exists());
    }
}
