//! The client side of the control socket, for the CLI (blocking, no runtime needed).

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::api::{ClientRequest, Event, Refusal, Reply};

/// How long `status`, `reload` and `link` wait for the daemon's answer (a reload applies
/// a plan, which takes milliseconds; this only guards against a stuck daemon).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Exit 3: nothing answers on the socket.
    #[error("{0}")]
    Unreachable(String),
    /// The daemon answered with a refusal (its exit code and message).
    #[error("{0}")]
    Refused(Refusal),
    /// Exit 1: the conversation broke off.
    #[error("{0}")]
    Broken(String),
}

fn unreachable(socket: &Path, e: &std::io::Error) -> ClientError {
    let s = socket.display();
    ClientError::Unreachable(match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            format!("no multiwan daemon answers on {s}: is `multiwan run` running?")
        }
        ErrorKind::PermissionDenied => format!(
            "cannot connect to {s}: permission denied (the control socket is root's: run \
             this as root)"
        ),
        _ => format!("cannot connect to {s}: {e}: is `multiwan run` running?"),
    })
}

fn connect(socket: &Path, request: &ClientRequest) -> Result<UnixStream, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable(socket, &e))?;
    let mut line = serde_json::to_string(request).expect("requests always encode");
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| ClientError::Broken(format!("sending to {}: {e}", socket.display())))?;
    Ok(stream)
}

fn read_reply(
    reader: &mut impl BufRead,
    socket: &Path,
    line: &mut String,
) -> Result<Option<Reply>, ClientError> {
    line.clear();
    match reader.read_line(line) {
        Ok(0) => Ok(None),
        Ok(_) => serde_json::from_str(line.trim()).map(Some).map_err(|e| {
            ClientError::Broken(format!(
                "the daemon on {} sent something this multiwan does not understand ({e}); \
                 are the daemon and the command the same version?",
                socket.display()
            ))
        }),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(ClientError::Broken(format!(
                "the daemon on {} did not answer within {ANSWER_TIMEOUT:?}; see its log \
                 (journalctl -u multiwan)",
                socket.display()
            )))
        }
        Err(e) => Err(ClientError::Broken(format!(
            "reading from {}: {e}",
            socket.display()
        ))),
    }
}

fn first(reply: Option<Reply>, socket: &Path) -> Result<Reply, ClientError> {
    let Some(reply) = reply else {
        return Err(ClientError::Broken(format!(
            "the daemon on {} closed the connection without an answer; see its log",
            socket.display()
        )));
    };
    if reply.ok == Some(true) {
        return Ok(reply);
    }
    Err(ClientError::Refused(Refusal {
        code: reply.code.unwrap_or(1),
        message: reply
            .error
            .unwrap_or_else(|| "the daemon refused without saying why".into()),
    }))
}

/// Sends one request and returns the daemon's (successful) answer.
pub fn request(socket: &Path, request: &ClientRequest) -> Result<Reply, ClientError> {
    let stream = connect(socket, request)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| ClientError::Broken(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let reply = read_reply(&mut reader, socket, &mut line)?;
    first(reply, socket)
}

/// Subscribes to events and calls `each` for every one until it returns false.
/// Returns `Ok(())` when `each` stopped, an error when the daemon went away.
pub fn events(socket: &Path, mut each: impl FnMut(EventLine) -> bool) -> Result<(), ClientError> {
    let stream = connect(socket, &ClientRequest::Events)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| ClientError::Broken(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    first(read_reply(&mut reader, socket, &mut line)?, socket)?;
    // Events come whenever they come.
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(|e| ClientError::Broken(e.to_string()))?;
    loop {
        let Some(reply) = read_reply(&mut reader, socket, &mut line)? else {
            return Err(ClientError::Unreachable(format!(
                "the daemon on {} closed the connection (stopped or restarted)",
                socket.display()
            )));
        };
        let item = match (reply.event, reply.lagged) {
            (Some(e), _) => EventLine::Event(e),
            (None, Some(n)) => EventLine::Lagged(n),
            _ => continue,
        };
        if !each(item) {
            return Ok(());
        }
    }
}

/// One line of the event stream.
#[derive(Debug, Clone)]
pub enum EventLine {
    Event(Event),
    /// This many events were dropped because the client read too slowly.
    Lagged(u64),
}
