//! DNS probes: an `A` query over UDP to a resolver, good on a `NOERROR` response.
//!
//! A fresh socket per probe: a new random source port (with the random id) makes a
//! spoofed or stale answer unlikely to be taken for this probe's, and a connected UDP
//! socket reports an ICMP port/host unreachable as an error on the next receive, which
//! concludes the probe at once.

use std::io;
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use socket2::{Protocol, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{
    describe, link_socket, random_u16, source_for, ProbeEndpoint, ProbeError, ProbeOutcome,
};

const DNS_PORT: u16 = 53;

/// The query name as an absolute DNS name.
pub(crate) fn query_name(query: &str) -> Result<Name, ProbeError> {
    let mut name = Name::from_ascii(query).map_err(|e| ProbeError::BadQueryName {
        name: query.to_string(),
        reason: e.to_string(),
    })?;
    // Configured names are absolute: no search domains apply.
    name.set_fqdn(true);
    Ok(name)
}

pub(crate) async fn probe(ep: &ProbeEndpoint, resolver: IpAddr, name: &Name) -> ProbeOutcome {
    let started = Instant::now();
    match query(ep, resolver, name, RecordType::A).await {
        Ok(answer) => match answer.metadata.response_code {
            ResponseCode::NoError => ProbeOutcome::Answered(started.elapsed()),
            code => ProbeOutcome::Failed(format!(
                "{resolver} answered {name} with {}",
                rcode_text(code)
            )),
        },
        Err(reason) => ProbeOutcome::Failed(reason),
    }
}

/// Sends one query for `name`/`rtype` to `resolver` through the link (pinned like every
/// probe) and returns the response, whatever its response code. Waits until a matching
/// response arrives: the caller bounds the time. Also used to resolve probe URLs' host
/// names through their link (`super::resolve`).
pub(crate) async fn query(
    ep: &ProbeEndpoint,
    resolver: IpAddr,
    name: &Name,
    rtype: RecordType,
) -> Result<Message, String> {
    let server = SocketAddr::new(resolver, DNS_PORT);
    let local = source_for(ep, resolver).map_err(|e| e.to_string())?;
    let socket = link_socket(ep, local, Type::DGRAM, Protocol::UDP).map_err(|e| e.to_string())?;
    let socket = UdpSocket::from_std(socket.into())
        .map_err(|e| format!("cannot register a DNS probe socket: {}", describe(&e)))?;
    socket
        .connect(server)
        .await
        .map_err(|e| io_reason(server, &e))?;

    let id = random_u16();
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name.clone(), rtype));
    let bytes = query
        .to_vec()
        .map_err(|e| format!("cannot encode the DNS query for {name}: {e}"))?;

    socket
        .send(&bytes)
        .await
        .map_err(|e| io_reason(server, &e))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| io_reason(server, &e))?;
        // Garbage or an answer to someone else's query: keep waiting (the deadline
        // still applies).
        let Ok(answer) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        // Some servers leave the question out of an error response.
        let same_question = answer
            .queries
            .first()
            .is_none_or(|q| q.name() == name && q.query_type() == rtype);
        if answer.metadata.id != id
            || answer.metadata.message_type != MessageType::Response
            || !same_question
        {
            continue;
        }
        return Ok(answer);
    }
}

/// `SERVFAIL (Server Failure)`, for reasons.
pub(crate) fn rcode_text(code: ResponseCode) -> String {
    format!("{} ({code})", rcode_name(code))
}

fn rcode_name(code: ResponseCode) -> String {
    match u16::from(code) {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE {n}"),
    }
}

fn io_reason(server: SocketAddr, e: &io::Error) -> String {
    match e.kind() {
        // ICMP port unreachable from the resolver.
        io::ErrorKind::ConnectionRefused => format!("{server}: nothing listens (port unreachable)"),
        _ => format!("{server}: {}", describe(e)),
    }
}
