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
//! # Who owns what
//!
//! The socket server and the metrics listener are tasks on the daemon's event loop that
//! own no state: each request becomes a [`Request`] on an mpsc channel that the daemon's
//! `select!` serves, with a oneshot for the answer. The daemon alone owns the link
//! states, the config and the counters, so there are no locks and a request sees the
//! state between two events, never half of one.

pub mod client;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use crate::daemon::Event;
use crate::status::Status;

/// How long a connected client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the socket is when the config says nothing (and the default `nft_table`).
pub const DEFAULT_SOCKET: &str = "/run/multiwan/multiwan.sock";

/// One request line from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum ClientRequest {
    Status,
    Events,
    Reload,
    Link { link: String, action: LinkAction },
}

/// `multiwan link LINK up|down|auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LinkAction {
    /// Force in service (state `up`) whatever the probes say.
    Up,
    /// Force out of service (state `disabled`); its connections are not deleted.
    Down,
    /// Back to what the health checks say.
    Auto,
}

impl LinkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAction::Up => "up",
            LinkAction::Down => "down",
            LinkAction::Auto => "auto",
        }
    }
}

/// One reply line to a client. Fields that do not apply are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Present on the first line: whether the request was carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// With `ok: false`: the exit code the CLI should end with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    /// Events dropped for a slow `events` client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lagged: Option<u64>,
}

impl Reply {
    pub fn message(message: impl Into<String>) -> Reply {
        Reply {
            ok: Some(true),
            message: Some(message.into()),
            ..Reply::default()
        }
    }

    pub fn refused(r: Refusal) -> Reply {
        Reply {
            ok: Some(false),
            code: Some(r.code),
            error: Some(r.message),
            ..Reply::default()
        }
    }

    /// The line as sent: JSON and a newline.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"ok\":false,\"code\":1,\"error\":\"encoding the reply: {e}\"}}")
        });
        s.push('\n');
        s
    }
}

/// Why the daemon did not do what a client asked, with the CLI's exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: i32,
    pub message: String,
}

impl Refusal {
    /// Exit 2: the config or the request is wrong.
    pub fn usage(message: impl Into<String>) -> Refusal {
        Refusal {
            code: 2,
            message: message.into(),
        }
    }

    /// Exit 1: something failed at run time.
    pub fn runtime(message: impl Into<String>) -> Refusal {
        Refusal {
            code: 1,
            message: message.into(),
        }
    }
}

/// What the socket server and the metrics listener ask the daemon's event loop.
#[derive(Debug)]
pub enum Request {
    Status(oneshot::Sender<Status>),
    /// A receiver of every later [`Event`].
    Subscribe(oneshot::Sender<broadcast::Receiver<Event>>),
    /// Re-read the config file the daemon was started with.
    Reload(oneshot::Sender<Result<String, Refusal>>),
    Link {
        link: String,
        action: LinkAction,
        reply: oneshot::Sender<Result<String, Refusal>>,
    },
    /// The Prometheus text exposition of every metric.
    Metrics(oneshot::Sender<String>),
}

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
    fn requests_round_trip() {
        let r: ClientRequest =
            serde_json::from_str(r#"{"request":"link","link":"isp1","action":"down"}"#).unwrap();
        assert_eq!(
            r,
            ClientRequest::Link {
                link: "isp1".into(),
                action: LinkAction::Down
            }
        );
        assert_eq!(
            serde_json::to_string(&ClientRequest::Status).unwrap(),
            r#"{"request":"status"}"#
        );
    }

    #[test]
    fn replies_leave_out_what_does_not_apply() {
        assert_eq!(
            Reply::message("done").to_line(),
            "{\"ok\":true,\"message\":\"done\"}\n"
        );
        assert_eq!(
            Reply::refused(Refusal::usage("no")).to_line(),
            "{\"ok\":false,\"code\":2,\"error\":\"no\"}\n"
        );
    }

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
