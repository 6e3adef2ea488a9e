//! The daemon's API: what can be asked of a running `multiwan run`, and what it says.
//!
//! A neutral module below both sides: the daemon's event loop (`daemon`) serves
//! [`Request`]s, and the ways in (the control socket and the metrics listener in
//! `control`) send them through a [`DaemonHandle`]. Neither side imports the other.
//!
//! - [`ClientRequest`], [`Reply`] and [`Event`] are the wire types of the control socket
//!   (one JSON object per line, documented in `control`); [`LinkAction`] is part of them.
//! - [`Request`] is a command to the event loop; each carries the oneshot its answer
//!   goes back on, so the loop never waits for the asker.
//! - [`Refusal`] is why the daemon did not do what it was asked, with the CLI's exit code.
//!
//! Nothing here knows about the command line: clap stays in `cli`, which converts its own
//! argument types into these.

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::status::Status;

/// A state change as `multiwan events` shows it. `from` is `none` for a link that a
/// reload added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time: String,
    pub link: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// One request line from a client of the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum ClientRequest {
    Status,
    Events,
    Reload,
    Link { link: String, action: LinkAction },
}

/// `multiwan link LINK up|down|auto`: an operator override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

    pub fn status(status: Status) -> Reply {
        Reply {
            ok: Some(true),
            status: Some(status),
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

    /// A request's outcome as its reply line.
    pub fn outcome(r: Result<String, Refusal>) -> Reply {
        match r {
            Ok(message) => Reply::message(message),
            Err(refusal) => Reply::refused(refusal),
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

/// The event loop has stopped (or is stopping): nobody will answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the daemon is stopping")]
pub struct Gone;

impl From<Gone> for Refusal {
    fn from(g: Gone) -> Refusal {
        Refusal::runtime(g.to_string())
    }
}

/// A command to the daemon's event loop, with the channel its answer goes back on.
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

/// How the control socket and the metrics listener talk to the event loop: one async
/// method per command. Cheap to clone; every clone feeds the same loop.
#[derive(Debug, Clone)]
pub struct DaemonHandle {
    tx: mpsc::Sender<Request>,
}

/// A handle and the receiver the event loop serves, with room for `capacity` commands
/// waiting (a sender waits while it is full: back-pressure, nothing is dropped).
pub fn channel(capacity: usize) -> (DaemonHandle, mpsc::Receiver<Request>) {
    let (tx, rx) = mpsc::channel(capacity);
    (DaemonHandle { tx }, rx)
}

impl DaemonHandle {
    /// Whether the event loop has gone (its receiver was dropped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends the command `make` builds around a fresh oneshot and waits for the answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub async fn status(&self) -> Result<Status, Gone> {
        self.ask(Request::Status).await
    }

    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Event>, Gone> {
        self.ask(Request::Subscribe).await
    }

    pub async fn reload(&self) -> Result<String, Refusal> {
        self.ask(Request::Reload).await?
    }

    pub async fn link(&self, link: String, action: LinkAction) -> Result<String, Refusal> {
        self.ask(|reply| Request::Link {
            link,
            action,
            reply,
        })
        .await?
    }

    pub async fn metrics(&self) -> Result<String, Gone> {
        self.ask(Request::Metrics).await
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

    #[tokio::test]
    async fn handle_carries_answers_and_notices_a_stopped_loop() {
        let (handle, mut rx) = channel(4);
        let serve = tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                match request {
                    Request::Link {
                        link,
                        action,
                        reply,
                    } => {
                        let _ = reply.send(Err(Refusal::usage(format!(
                            "no link {link} ({})",
                            action.as_str()
                        ))));
                    }
                    Request::Reload(reply) => {
                        let _ = reply.send(Ok("reloaded".into()));
                    }
                    // Dropped unanswered: the asker sees the loop as gone.
                    _ => {}
                }
            }
        });
        assert_eq!(handle.reload().await, Ok("reloaded".into()));
        assert_eq!(
            handle.link("x".into(), LinkAction::Down).await,
            Err(Refusal::usage("no link x (down)"))
        );
        assert_eq!(handle.status().await, Err(Gone));
        serve.abort();
        let _ = serve.await;
        assert!(handle.is_closed());
        assert_eq!(
            handle.reload().await,
            Err(Refusal::runtime("the daemon is stopping"))
        );
    }
}
