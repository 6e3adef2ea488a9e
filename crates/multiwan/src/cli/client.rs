//! The client commands: `status`, `events`, `reload`, `link` (SPEC §4). They talk to
//! `multiwan run` over its control socket; `-c` only says where that socket is.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{CliResult, Failure};
use crate::api::{ClientRequest, Event, LinkAction};
use crate::control;
use crate::control::client::{self, ClientError, EventLine};

/// `multiwan link LINK up|down|auto` on the command line; the wire has its own
/// [`LinkAction`] (the API knows nothing of clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkActionArg {
    /// Force in service (state `up`) whatever the probes say.
    Up,
    /// Force out of service (state `disabled`); its connections are not deleted.
    Down,
    /// Back to what the health checks say.
    Auto,
}

impl From<LinkActionArg> for LinkAction {
    fn from(a: LinkActionArg) -> LinkAction {
        match a {
            LinkActionArg::Up => LinkAction::Up,
            LinkActionArg::Down => LinkAction::Down,
            LinkActionArg::Auto => LinkAction::Auto,
        }
    }
}

/// `--socket`, else the config's `settings.socket` (read leniently), else the default.
pub fn socket(config: Option<&Path>, socket: Option<&Path>) -> PathBuf {
    match (socket, config) {
        (Some(s), _) => s.to_path_buf(),
        (None, Some(c)) => control::socket_for(c),
        (None, None) => control::socket_for(Path::new(super::DEFAULT_CONFIG)),
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::NoDaemon(m) | ClientError::Unreachable(m) => Failure::Unreachable(m),
            ClientError::Refused(r) => Failure::Refused {
                code: r.code,
                message: r.message,
            },
            ClientError::Broken(m) => Failure::Runtime(anyhow::anyhow!(m)),
        }
    }
}

pub fn status(socket: &Path, json: bool) -> CliResult {
    let reply = client::request(socket, &ClientRequest::Status)?;
    let Some(status) = reply.status else {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "the daemon on {} answered without a status; are the daemon and the command the \
             same version?",
            socket.display()
        )));
    };
    let text = if json {
        let mut s = serde_json::to_string_pretty(&status).map_err(anyhow::Error::from)?;
        s.push('\n');
        s
    } else {
        status.table()
    };
    // A closed pipe (`multiwan status | head -1`) is not an error.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(0)
}

/// One line for people.
pub fn event_line(e: &Event) -> String {
    format!(
        "{} {}: {} -> {} ({})",
        e.time, e.link, e.from, e.to, e.reason
    )
}

pub fn events(socket: &Path, json: bool) -> CliResult {
    let stdout = std::io::stdout();
    let result = client::events(socket, |line| match line {
        EventLine::Event(e) => {
            let text = if json {
                serde_json::to_string(&e).unwrap_or_default()
            } else {
                event_line(&e)
            };
            let mut out = stdout.lock();
            // Stop quietly when the reader has gone (`multiwan events | head`).
            writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
        }
        EventLine::Lagged(n) => {
            eprintln!("multiwan events: {n} events were dropped because this reader was too slow");
            true
        }
    });
    result?;
    Ok(0)
}

pub fn reload(socket: &Path) -> CliResult {
    let reply = client::request(socket, &ClientRequest::Reload)?;
    println!("{}", reply.message.unwrap_or_else(|| "reloaded".into()));
    Ok(0)
}

pub fn link(socket: &Path, link: &str, action: LinkAction) -> CliResult {
    let request = ClientRequest::Link {
        link: link.to_string(),
        action,
    };
    let reply = client::request(socket, &request)?;
    println!("{}", reply.message.unwrap_or_default());
    Ok(0)
}
