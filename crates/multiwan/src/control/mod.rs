//! Operating the daemon: the control socket (`multiwan status | events | reload | link`)
//! and the Prometheus listener.
//!
//! # The control socket
//!
//! A Unix stream socket at `settings.socket` (default `/run/multiwan/<nft_table>.sock`),
//! mode 0600: only root talks to the daemon. `multiwan run` removes a stale socket file
//! at start (one that nothing answers on) and refuses to start when another daemon
//! answers on it. The file is removed when the daemon stops.
//!
//! The protocol is JSON lines (one JSON object per line, UTF-8, `\n`-terminated). A
//! client connects, sends **one** request line, and reads reply lines:
//!
//! ```text
//! → {"request":"status"}
//! ← {"ok":true,"status":{"links":[…],"policies":[…]}}
//!
//! → {"request":"reload"}
//! ← {"ok":true,"message":"reloaded /etc/multiwan/multiwan.toml: …"}
//! ← {"ok":false,"code":2,"error":"/etc/multiwan/multiwan.toml:7:1: links.isp1.id: …"}
//!
//! → {"request":"link","link":"isp1","action":"down"}      (action: up | down | auto)
//! ← {"ok":true,"message":"link isp1: up -> disabled (operator override: down)"}
//!
//! → {"request":"events"}
//! ← {"ok":true,"message":"subscribed"}
//! ← {"event":{"time":"2026-11-23T19:02:11Z","link":"isp1","from":"up","to":"down","reason":"…"}}
//! ← {"lagged":12}        (this client fell behind; 12 events were dropped for it)
//! ← …                    until the client closes the connection
//! ```
//!
//! `code` in a refusal is the exit code the CLI ends with (SPEC §4): 2 for a bad config
//! or usage (unknown link, a reload that changes `table_base`, …), 1 for a failure at
//! run time. After a reply (other than to `events`) the daemon closes the connection.
//! A client that sends nothing for [`REQUEST_TIMEOUT`] is disconnected.
//!
//! The other way round, a client gives up on a daemon that accepts but does not answer
//! (exit 3, like no daemon at all): [`client::ANSWER_TIMEOUT`] for `status`, `link` and
//! the first line of `events`, [`client::RELOAD_TIMEOUT`] for `reload` (and `apply`
//! handing over to a running daemon), [`client::CONNECT_TIMEOUT`] to be accepted.
//!
//! # Who owns what
//!
//! The socket server and the metrics listener are tasks on the daemon's event loop that
//! own no state: each request becomes a call on a [`crate::api::DaemonHandle`], that is an
//! [`crate::api::Request`] on an mpsc channel that the daemon's `select!` serves, with a
//! oneshot for the answer. The wire types ([`crate::api::ClientRequest`],
//! [`crate::api::Reply`], [`crate::api::Event`]) live in [`crate::api`], which both this
//! module and the daemon use; this module never imports the daemon. The daemon alone owns the link
//! states, the config and the counters, so there are no locks and a request sees the
//! state between two events, never half of one.

pub mod client;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

/// How long a connected client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the socket is when the config says nothing (and the default `nft_table`).
pub const DEFAULT_SOCKET: &str = "/run/multiwan/multiwan.sock";

/// The socket a client command talks to: `--socket`, else `settings.socket` of the
/// config, else [`DEFAULT_SOCKET`].
///
/// The config is read leniently (only `settings.socket` and `settings.nft_table`): a
/// config with errors elsewhere still names the running daemon's socket, which matters
/// most for `multiwan reload` after an edit that broke the file.
pub fn socket_for(config: &std::path::Path) -> PathBuf {
    let Ok(text) = std::fs::read_to_string(config) else {
        return PathBuf::from(DEFAULT_SOCKET);
    };
    socket_from_text(&text)
}

fn socket_from_text(text: &str) -> PathBuf {
    let Ok(table) = text.parse::<toml::Table>() else {
        return PathBuf::from(DEFAULT_SOCKET);
    };
    let settings = table.get("settings").and_then(|s| s.as_table());
    if let Some(socket) = settings
        .and_then(|s| s.get("socket"))
        .and_then(|v| v.as_str())
    {
        return PathBuf::from(socket);
    }
    match settings
        .and_then(|s| s.get("nft_table"))
        .and_then(|v| v.as_str())
    {
        Some(t) => PathBuf::from(format!("/run/multiwan/{t}.sock")),
        None => PathBuf::from(DEFAULT_SOCKET),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_from_config_text() {
        assert_eq!(
            socket_from_text("[settings]\nsocket = \"/run/x.sock\"\n"),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            socket_from_text(
                "[settings]\nnft_table = \"lab\"\nbogus_key = 1\n[links.a]\nid = \"x\""
            ),
            PathBuf::from("/run/multiwan/lab.sock")
        );
        assert_eq!(
            socket_from_text("[[[ not toml"),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(socket_from_text(""), PathBuf::from(DEFAULT_SOCKET));
    }
}
