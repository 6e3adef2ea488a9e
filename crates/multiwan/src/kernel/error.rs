//! The kernel layer's error type. Every message says what failed and what to do about it,
//! because these errors end up in front of an operator, not a developer.

use std::path::PathBuf;

use thiserror::Error;

/// Anything that went wrong while reading or changing kernel state.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The rtnetlink socket could not be opened.
    #[error(
        "cannot open a netlink socket ({0}); multiwan must run as root (CAP_NET_ADMIN) on Linux"
    )]
    Socket(#[source] std::io::Error),

    /// A netlink request was refused.
    #[error("netlink request failed while {what}: {detail}; {hint}")]
    Netlink {
        what: String,
        detail: String,
        hint: &'static str,
    },

    /// The `nft` binary could not be run or its output not be read.
    #[error("running nft failed while {what}: {detail}; is nftables (the `nft` command, 0.9.3 or newer) installed and in PATH?")]
    NftExec { what: String, detail: String },

    /// `nft` ran and refused what it was given.
    #[error("nft refused {what}: {stderr}")]
    NftRefused { what: String, stderr: String },

    /// `nft -j list` printed something this code cannot read.
    #[error("cannot read the output of `nft -j list table inet {table}`: {detail}; is the nft binary too old (JSON support needs 0.9.3 or newer)?")]
    NftListing { table: String, detail: String },

    /// A file under /proc/sys or /etc could not be read or written.
    #[error("{what} {}: {source}; {hint}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },

    /// The ctnetlink socket failed or the kernel refused a conntrack request.
    #[error("conntrack request failed while {what}: {detail}; is the nf_conntrack_netlink module loaded and multiwan root?")]
    Conntrack { what: String, detail: String },

    /// The desired state holds something that cannot be installed (a planner bug).
    #[error("cannot install {what}: {why}; this is a bug in multiwan, please report it with the output of `multiwan plan`")]
    Invalid { what: String, why: String },

    /// A flush went on past failures; these are all of them.
    #[error("flush removed {removed} objects, but {} steps failed: {}; fix the cause and run `multiwan flush` again (it removes only what is left)", errors.len(), list(errors))]
    Flush {
        removed: usize,
        errors: Vec<KernelError>,
    },

    /// One step of an apply failed; says what became of the earlier steps.
    #[error("apply failed at step `{step}`: {source}{rollback}")]
    Step {
        step: &'static str,
        #[source]
        source: Box<KernelError>,
        rollback: super::Rollback,
    },
}

impl KernelError {
    pub(crate) fn netlink(what: impl Into<String>, err: rtnetlink::Error) -> KernelError {
        let (detail, hint) = match &err {
            rtnetlink::Error::NetlinkError(msg) => {
                let code = msg.raw_code().abs();
                let hint = match code {
                    libc::EPERM | libc::EACCES => "multiwan must run as root (CAP_NET_ADMIN)",
                    libc::ENODEV => "the interface is gone; multiwan retries when it comes back",
                    libc::ENETUNREACH | libc::EINVAL => {
                        "is the gateway on a subnet of the link's interface, and the interface up?"
                    }
                    libc::EEXIST => "something else installed a conflicting entry; remove it or run `multiwan flush`",
                    _ => "see `ip rule` / `ip route show table all` for the current state",
                };
                (msg.to_io().to_string(), hint)
            }
            other => (
                other.to_string(),
                "the netlink connection failed; restart multiwan",
            ),
        };
        KernelError::Netlink {
            what: what.into(),
            detail,
            hint,
        }
    }

    pub(crate) fn nft(
        what: impl Into<String>,
        err: nftables::helper::NftablesError,
    ) -> KernelError {
        use nftables::helper::NftablesError as E;
        let what = what.into();
        match err {
            E::NftFailed { stderr, stdout, .. } => KernelError::NftRefused {
                what,
                stderr: if stderr.trim().is_empty() {
                    stdout.trim().to_string()
                } else {
                    stderr.trim().to_string()
                },
            },
            other => KernelError::NftExec {
                what,
                detail: other.to_string(),
            },
        }
    }
}

fn list(errors: &[KernelError]) -> String {
    let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    all.join("; ")
}

/// Results of the kernel layer.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_error_lists_every_failure() {
        let e = KernelError::Flush {
            removed: 3,
            errors: vec![
                KernelError::Invalid {
                    what: "a".into(),
                    why: "one".into(),
                },
                KernelError::Conntrack {
                    what: "b".into(),
                    detail: "two".into(),
                },
            ],
        };
        let text = e.to_string();
        assert!(
            text.starts_with("flush removed 3 objects, but 2 steps failed"),
            "{text}"
        );
        assert!(
            text.contains("cannot install a: one") && text.contains("while b: two"),
            "{text}"
        );
        assert!(text.contains("run `multiwan flush` again"), "{text}");
    }
}
