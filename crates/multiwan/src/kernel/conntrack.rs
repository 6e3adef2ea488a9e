//! Deleting conntrack entries by mark over ctnetlink (never by running `conntrack`).
//!
//! The kernel filters a dump and a flush by `CTA_MARK` only together with
//! `CTA_MARK_MASK` (a mark alone is ignored, see KERNEL-NOTES). A dump is filtered by
//! the family in the nfgenmsg header; a filtered flush is on some kernels and not on
//! others (6.18 flushes both families), so entries are counted per family first and
//! then a flush is sent for each family. Without `CTA_ZONE` the filter matches entries
//! of every zone.

use netlink_packet_core::{
    DefaultNla, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::error::{KernelError, Result};

/// `CTA_MARK_MASK` (the crate has no variant for it).
const CTA_MARK_MASK: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: one entry of a dump.
const CT_NEW: u16 = 1 << 8;

fn err(what: &str, detail: impl ToString) -> KernelError {
    KernelError::Conntrack {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

fn filter(mark: u32, mask: u32) -> Vec<ConntrackAttribute> {
    vec![
        ConntrackAttribute::CtaMark(mark),
        ConntrackAttribute::Other(DefaultNla::new(CTA_MARK_MASK, mask.to_be_bytes().to_vec())),
    ]
}

struct Ctnetlink {
    socket: Socket,
    seq: u32,
}

impl Ctnetlink {
    fn open() -> Result<Ctnetlink> {
        let mut socket =
            Socket::new(NETLINK_NETFILTER).map_err(|e| err("opening a ctnetlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| err("binding the ctnetlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connecting the ctnetlink socket", e))?;
        Ok(Ctnetlink { socket, seq: 0 })
    }

    /// Sends one request; returns the number of conntrack entries in the answer (for a
    /// dump) once the kernel said it is done (or acked).
    fn request(
        &mut self,
        what: &str,
        family: NetfilterProtoFamily,
        msg: ConntrackMessage,
        flags: u16,
    ) -> Result<usize> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                msg,
            )),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| err(what, e))?;

        let mut count = 0;
        let mut rx = vec![0u8; 1 << 16];
        loop {
            let n = self
                .socket
                .recv(&mut &mut rx[..], 0)
                .map_err(|e| err(what, e))?;
            let mut off = 0;
            while off < n {
                let nl = NetlinkBuffer::new_checked(&rx[off..n]).map_err(|e| err(what, e))?;
                let len = nl.length() as usize;
                if nl.sequence_number() == self.seq {
                    match nl.message_type() {
                        NLMSG_DONE => return Ok(count),
                        NLMSG_ERROR => {
                            let e =
                                ErrorBuffer::new_checked(nl.payload()).map_err(|e| err(what, e))?;
                            return match e.code() {
                                None => Ok(count),
                                Some(code) => {
                                    Err(err(what, std::io::Error::from_raw_os_error(-code.get())))
                                }
                            };
                        }
                        CT_NEW => count += 1,
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// Number of conntrack entries whose `mark & mask == mark`, both families, every zone.
pub fn count_by_mark(mark: u32, mask: u32) -> Result<usize> {
    let mut nl = Ctnetlink::open()?;
    let mut n = 0;
    for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
        n += nl.request(
            "counting conntrack entries by mark",
            family,
            ConntrackMessage::Get(filter(mark, mask)),
            NLM_F_DUMP,
        )?;
    }
    Ok(n)
}

/// Deletes the conntrack entries whose `mark & mask == mark` (both families, every
/// zone); returns how many there were just before (the kernel does not say how many a
/// filtered flush removed, so they are counted first).
pub fn delete_by_mark(mark: u32, mask: u32) -> Result<usize> {
    if mark & !mask != 0 {
        return Err(KernelError::Invalid {
            what: format!("conntrack delete by mark {mark:#x}/{mask:#x}"),
            why: "the mark has bits outside the mask, so nothing could match".into(),
        });
    }
    if mask == 0 {
        // A zero mask matches every entry: that would flush the whole table.
        return Err(KernelError::Invalid {
            what: "conntrack delete by mark with mask 0".into(),
            why: "it would delete every connection, not only multiwan's".into(),
        });
    }
    // Count both families before deleting: some kernels apply the nfgenmsg family to
    // a filtered flush and some do not (6.18 flushes both), so a count taken after the
    // first flush could miss entries it already took along.
    let found = count_by_mark(mark, mask)?;
    if found > 0 {
        let mut nl = Ctnetlink::open()?;
        for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
            nl.request(
                "deleting conntrack entries by mark",
                family,
                ConntrackMessage::Delete(filter(mark, mask)),
                NLM_F_ACK,
            )?;
        }
    }
    Ok(found)
}
