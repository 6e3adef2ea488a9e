//! The kernel's change events, as the daemon needs them: interface facts that changed,
//! rules and routes in what multiwan owns that someone added or deleted, its nft table
//! changed or deleted, and events lost to a full socket buffer.
//!
//! Two sockets: an rtnetlink multicast connection (links, addresses, routes, rules of
//! both families) and a `NETLINK_NETFILTER` socket in group `NFNLGRP_NFTABLES`, the
//! group `nft monitor` reads. Of each nftables message only the nfgenmsg family and
//! the table-name attribute are parsed: enough to tell whether it concerns
//! `inet <nft_table>`.
//!
//! A socket whose buffer overflowed (`ENOBUFS`) lost events, and a stream that ended
//! will send none: both yield [`KernelEvent::Overflow`] (the daemon then re-reads
//! everything) and the lost subscription is made again.

use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use rtnetlink::MulticastGroup;
use tokio::sync::{mpsc, watch};

use super::{routes, rules, KernelError, Ownership, Result};
use crate::plan::IpRule;

/// What changed in the kernel.
#[derive(Debug, Clone)]
pub enum KernelEvent {
    /// A link or an address: the interfaces' facts may differ.
    Facts,
    /// A route outside multiwan's tables was added or replaced, or deleted: the main
    /// table's routes make the facts (gateways, prefixes; `FactsWatch` applies it).
    FactsRoute {
        deleted: bool,
        msg: Box<RouteMessage>,
    },
    /// A rule inside the owned priority range was added or replaced (`deleted: false`)
    /// or deleted. `rule` is `None` for a rule the model cannot express.
    Rule { deleted: bool, rule: Option<IpRule> },
    /// A route in one of the owned tables was added or replaced, or deleted.
    Route {
        deleted: bool,
        msg: Box<RouteMessage>,
    },
    /// Something in `inet <nft_table>` changed; `table_deleted` when the table went.
    Nft { table_deleted: bool },
    /// Events were lost (a socket overflowed, or its stream ended and was made again):
    /// everything must be read again.
    Overflow { socket: &'static str },
}

/// Receive buffer asked for on both sockets: an nft table load notifies one message
/// per rule, set element and chain, and a firewall reload several tables' worth.
const RCVBUF: usize = 4 << 20;

/// The nftables subsystem of nfnetlink and its multicast group.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNLGRP_NFTABLES: u32 = 7;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_DESTROYTABLE: u16 = 26;
const NFPROTO_INET: u8 = 1;

/// Subscribes in the calling thread's network namespace and spawns the reader on the
/// current runtime. `scope` says what multiwan owns now (it may grow on reload).
/// Subscribe before reading the state, so no change between the read and the loop is
/// missed.
pub fn subscribe(scope: watch::Receiver<Ownership>) -> Result<mpsc::Receiver<KernelEvent>> {
    let (tx, rx) = mpsc::channel(1024);
    let route = route_stream()?;
    let nft = nft_socket()?;
    tokio::spawn(read_rtnetlink(route, scope.clone(), tx.clone()));
    tokio::spawn(read_nfnetlink(nft, scope, tx));
    Ok(rx)
}

type RouteEvents =
    futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

fn route_stream() -> Result<RouteEvents> {
    let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv6Rule,
    ])
    .map_err(KernelError::Socket)?;
    // Best effort: the default is enough for all but bursts, and an overflow is handled.
    let _ = conn.socket_mut().socket_mut().set_rx_buf_sz(RCVBUF);
    tokio::spawn(conn);
    Ok(messages)
}

fn nft_socket() -> Result<TokioSocket> {
    let mut socket =
        TokioSocket::new(netlink_sys::protocols::NETLINK_NETFILTER).map_err(KernelError::Socket)?;
    let s = socket.socket_mut();
    s.bind_auto().map_err(KernelError::Socket)?;
    s.add_membership(NFNLGRP_NFTABLES)
        .map_err(KernelError::Socket)?;
    let _ = s.set_rx_buf_sz(RCVBUF);
    Ok(socket)
}

/// How long to wait before subscribing again after a socket could not be made.
const RETRY: Duration = Duration::from_millis(200);

async fn read_rtnetlink(
    mut stream: RouteEvents,
    scope: watch::Receiver<Ownership>,
    tx: mpsc::Sender<KernelEvent>,
) {
    loop {
        while let Some((msg, _)) = stream.next().await {
            let event = match msg.payload {
                NetlinkPayload::Overrun(_) => Some(KernelEvent::Overflow {
                    socket: "rtnetlink",
                }),
                NetlinkPayload::InnerMessage(m) => classify_route(m, &scope.borrow()),
                _ => None,
            };
            if let Some(e) = event {
                if tx.send(e).await.is_err() {
                    return; // the daemon is gone
                }
            }
        }
        // The connection ended (a socket error other than ENOBUFS): subscribe again.
        stream = loop {
            match route_stream() {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!("subscribing to rtnetlink events again: {e}");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        let lost = KernelEvent::Overflow {
            socket: "rtnetlink",
        };
        if tx.send(lost).await.is_err() {
            return;
        }
    }
}

fn classify_route(msg: RouteNetlinkMessage, own: &Ownership) -> Option<KernelEvent> {
    use RouteNetlinkMessage as M;
    match msg {
        M::NewRoute(r) if !own.tables.contains(&routes::table_of(&r)) => {
            // The main table's routes make the facts (gateways, prefixes).
            Some(KernelEvent::FactsRoute {
                deleted: false,
                msg: Box::new(r),
            })
        }
        M::DelRoute(r) if !own.tables.contains(&routes::table_of(&r)) => {
            Some(KernelEvent::FactsRoute {
                deleted: true,
                msg: Box::new(r),
            })
        }
        M::NewRoute(r) => Some(KernelEvent::Route {
            deleted: false,
            msg: Box::new(r),
        }),
        M::DelRoute(r) => Some(KernelEvent::Route {
            deleted: true,
            msg: Box::new(r),
        }),
        M::NewRule(r) | M::DelRule(r) if !in_range(&r, own.priorities) => None,
        M::NewRule(r) => Some(KernelEvent::Rule {
            deleted: false,
            rule: rules::from_message(&r),
        }),
        M::DelRule(r) => Some(KernelEvent::Rule {
            deleted: true,
            rule: rules::from_message(&r),
        }),
        _ => Some(KernelEvent::Facts),
    }
}

fn in_range(msg: &RuleMessage, (lo, hi): (u32, u32)) -> bool {
    // The kernel leaves FRA_PRIORITY out for priority 0.
    let prio = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    (lo..=hi).contains(&prio)
}

async fn read_nfnetlink(
    mut socket: TokioSocket,
    scope: watch::Receiver<Ownership>,
    tx: mpsc::Sender<KernelEvent>,
) {
    loop {
        let event = match socket.recv_from_full().await {
            Ok((buf, _)) => {
                let table = scope.borrow().nft_table.clone();
                classify_nft(&buf, &table)
            }
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    // Not an overflow: this socket is broken; make a new one.
                    tracing::warn!("nftables events: {e}; subscribing again");
                    socket = loop {
                        match nft_socket() {
                            Ok(s) => break s,
                            Err(e) => {
                                tracing::warn!("subscribing to nftables events: {e}");
                                tokio::time::sleep(RETRY).await;
                            }
                        }
                    };
                }
                Some(KernelEvent::Overflow {
                    socket: "nfnetlink",
                })
            }
        };
        if let Some(e) = event {
            if tx.send(e).await.is_err() {
                return;
            }
        }
    }
}

/// What a datagram of nftables notifications says about `inet <table>`: `None` when
/// none of its messages concerns that table.
pub fn classify_nft(buf: &[u8], table: &str) -> Option<KernelEvent> {
    let mut touched = false;
    let mut deleted = false;
    for (msg_type, body) in netlink_messages(buf) {
        if msg_type >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        let op = msg_type & 0xff;
        if op == NFT_MSG_NEWGEN || body.len() < 4 || body[0] != NFPROTO_INET {
            continue;
        }
        // After the 4-byte nfgenmsg: attributes; type 1 is the table's name in every
        // object kind (table, chain, rule, set, element list, object, flowtable).
        if attribute(&body[4..], 1).is_some_and(|name| c_str(name) == table.as_bytes()) {
            touched = true;
            deleted |= op == NFT_MSG_DELTABLE || op == NFT_MSG_DESTROYTABLE;
        }
    }
    touched.then_some(KernelEvent::Nft {
        table_deleted: deleted,
    })
}

/// The (type, payload) of each netlink message in a datagram.
fn netlink_messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let msg_type = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let body = &buf[16..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((msg_type, body))
    })
}

/// The payload of the first attribute of type `wanted` (flags masked off).
fn attribute(mut attrs: &[u8], wanted: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == wanted {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn c_str(b: &[u8]) -> &[u8] {
    b.split(|c| *c == 0).next().unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(op: u16, family: u8, table: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let name = format!("{table}\0");
        attr.extend(((4 + name.len()) as u16).to_ne_bytes());
        attr.extend(1u16.to_ne_bytes());
        attr.extend(name.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let len = 16 + 4 + attr.len();
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(((NFNL_SUBSYS_NFTABLES << 8) | op).to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend([family, 0, 0, 0]);
        m.extend(attr);
        m
    }

    fn own() -> Ownership {
        Ownership {
            priorities: (1000, 1999),
            tables: vec![100, 101, 102],
            nft_table: "multiwan".into(),
        }
    }

    fn rule(prio: u32) -> RuleMessage {
        let mut r = RuleMessage::default();
        r.header.family = netlink_packet_route::AddressFamily::Inet;
        r.header.action = netlink_packet_route::rule::RuleAction::ToTable;
        r.attributes.push(RuleAttribute::Priority(prio));
        r.attributes.push(RuleAttribute::Table(101));
        r
    }

    fn route(table: u32) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = netlink_packet_route::AddressFamily::Inet;
        r.attributes
            .push(netlink_packet_route::route::RouteAttribute::Table(table));
        r
    }

    #[test]
    fn route_events_are_sorted_by_what_multiwan_owns() {
        use RouteNetlinkMessage as M;
        let own = own();
        assert!(matches!(
            classify_route(M::DelRule(rule(1003)), &own),
            Some(KernelEvent::Rule { deleted: true, .. })
        ));
        assert!(matches!(
            classify_route(M::NewRule(rule(1003)), &own),
            Some(KernelEvent::Rule { deleted: false, .. })
        ));
        // Another tenant's rule outside the range: nothing to do.
        assert!(classify_route(M::DelRule(rule(5210)), &own).is_none());
        assert!(matches!(
            classify_route(M::DelRoute(route(101)), &own),
            Some(KernelEvent::Route { deleted: true, .. })
        ));
        // The main table (and any other) makes the facts.
        assert!(matches!(
            classify_route(M::NewRoute(route(254)), &own),
            Some(KernelEvent::FactsRoute { deleted: false, .. })
        ));
        assert!(matches!(
            classify_route(M::DelRoute(route(220)), &own),
            Some(KernelEvent::FactsRoute { deleted: true, .. })
        ));
    }

    #[test]
    fn nft_messages_are_told_apart_by_family_and_table() {
        let mut buf = msg(6, NFPROTO_INET, "other");
        assert!(classify_nft(&buf, "multiwan").is_none());
        buf.extend(msg(6, NFPROTO_INET, "multiwan"));
        assert!(matches!(
            classify_nft(&buf, "multiwan"),
            Some(KernelEvent::Nft {
                table_deleted: false
            })
        ));
        // `ip multiwan` is someone else's table.
        assert!(classify_nft(&msg(NFT_MSG_DELTABLE, 2, "multiwan"), "multiwan").is_none());
        assert!(matches!(
            classify_nft(&msg(NFT_MSG_DELTABLE, NFPROTO_INET, "multiwan"), "multiwan"),
            Some(KernelEvent::Nft {
                table_deleted: true
            })
        ));
        // A prefix of the name is another table.
        assert!(classify_nft(&msg(6, NFPROTO_INET, "multiwan2"), "multiwan").is_none());
        // Truncated input: nothing, no panic.
        assert!(classify_nft(&buf[..10], "multiwan").is_none());
    }
}
