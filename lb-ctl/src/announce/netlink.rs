//! [`Netlink`]: ikelb's host routes read and written through rtnetlink (rtnetlink(7)), the
//! messages `ip route replace|del|show table N proto 75` send:
//!
//! * add: `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_REPLACE` (idempotent), type unicast,
//!   `RTA_OIF` = `lo`, scope link for IPv4 (a route without gateway, as `ip` sets it),
//!   universe for IPv6 (where the kernel ignores the scope);
//! * remove: `RTM_DELROUTE` naming the table, destination and protocol (only ikelb's route
//!   matches); `ESRCH` (none there) is success;
//! * list: an `RTM_GETROUTE` dump per family with `NETLINK_GET_STRICT_CHK`, so the kernel
//!   walks table N only and returns protocol 75's unicast routes (Linux ≥ 4.20); the reply
//!   is filtered here again, so a kernel that dumps everything gives the same answer.
//!   A table that does not exist yet is empty (`ENOENT`).
//!
//! A table id above 255 travels in `RTA_TABLE` with `rtm_table` = `RT_TABLE_UNSPEC`, as
//! iproute2 does. The socket is opened on first use and reopened after any failure; replies
//! wait at most [`REPLY_TIMEOUT`] (they come at once: the kernel answers synchronously).

use std::{collections::BTreeSet, io, net::IpAddr, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{prefix, RouteError, RouteTable, RTPROT_IKELB};

/// Longest wait for the kernel's reply to one request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// rtnetlink in the daemon's network namespace.
#[derive(Default)]
pub struct Netlink {
    socket: Option<Socket>,
    seq: u32,
}

impl Netlink {
    fn socket(&mut self) -> Result<&Socket, RouteError> {
        if self.socket.is_none() {
            self.socket = Some(open().map_err(|source| RouteError::Socket { source })?);
        }
        Ok(self.socket.as_ref().expect("just opened"))
    }

    /// Sends `message` and collects the routes of the reply until its ACK or `NLMSG_DONE`.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<io::Result<Vec<RouteMessage>>, RouteError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let socket = self.socket()?;
        let result = exchange(socket, message, flags, seq);
        if result.is_err() {
            // A reply left half read must not be taken for the next request's.
            self.socket = None;
        }
        Ok(result)
    }
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Filtering is an optimisation only (see the module comment): a refusal changes nothing.
    let _ = socket.set_netlink_get_strict_chk(true);
    let _ = socket.set_ext_ack(true);
    let tv = libc::timeval {
        tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: REPLY_TIMEOUT.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads `size_of::<timeval>()` bytes of `tv`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn exchange(
    socket: &Socket,
    message: RouteNetlinkMessage,
    flags: u16,
    seq: u32,
) -> io::Result<Vec<RouteMessage>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut routes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < n.min(buf.len()) {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            if len == 0 {
                break;
            }
            offset += len.next_multiple_of(4);
            if reply.header.sequence_number != seq {
                continue; // an earlier request's, or a notification
            }
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => routes.push(r),
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(routes),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::Done(d) if d.code == 0 => return Ok(routes),
                NetlinkPayload::Done(d) => return Err(io::Error::from_raw_os_error(-d.code)),
                NetlinkPayload::Overrun(_) => {
                    return Err(io::Error::other("netlink reply overrun"));
                }
                _ => {}
            }
        }
    }
}

/// The header and attributes every message of ours carries: family, host prefix, table,
/// protocol.
fn route(table: u32, vip: Option<IpAddr>, family: AddressFamily) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family;
    m.header.table = u8::try_from(table)
        .ok()
        .filter(|_| table < 256)
        .unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = RTPROT_IKELB.into();
    m.attributes.push(RouteAttribute::Table(table));
    if let Some(vip) = vip {
        m.header.destination_prefix_length = if vip.is_ipv4() { 32 } else { 128 };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(vip)));
    }
    m
}

fn family(vip: IpAddr) -> AddressFamily {
    if vip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The VIP of `m` if it is a host route of ikelb's in `table`.
fn ours(m: &RouteMessage, table: u32) -> Option<IpAddr> {
    if u8::from(m.header.protocol) != RTPROT_IKELB {
        return None;
    }
    let in_table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if in_table != table {
        return None;
    }
    let vip = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })?;
    let host = if vip.is_ipv4() { 32 } else { 128 };
    (m.header.destination_prefix_length == host).then_some(vip)
}

/// `lo`'s ifindex (1 in every network namespace since Linux 4.x, looked up all the same).
fn loopback() -> io::Result<u32> {
    crate::daemon::if_nametoindex("lo")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no interface lo"))
}

impl RouteTable for Netlink {
    fn list(&mut self, table: u32) -> Result<BTreeSet<IpAddr>, RouteError> {
        let mut found = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = route(table, None, family);
            m.header.kind = RouteType::Unicast;
            match self.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)? {
                Ok(routes) => found.extend(routes.iter().filter_map(|r| ours(r, table))),
                // The table does not exist (yet): nothing of ours in it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(RouteError::List { table, source }),
            }
        }
        Ok(found)
    }

    fn add(&mut self, table: u32, vip: IpAddr) -> Result<(), RouteError> {
        let write = |source| RouteError::Write {
            op: "adding",
            prefix: prefix(vip),
            table,
            source,
        };
        let lo = loopback().map_err(write)?;
        let mut m = route(table, Some(vip), family(vip));
        m.header.kind = RouteType::Unicast;
        m.header.scope = if vip.is_ipv4() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        m.attributes.push(RouteAttribute::Oif(lo));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?
        .map(drop)
        .map_err(write)
    }

    fn remove(&mut self, table: u32, vip: IpAddr) -> Result<(), RouteError> {
        let mut m = route(table, Some(vip), family(vip));
        // Any scope and type: the protocol and the prefix name the route.
        m.header.scope = RouteScope::NoWhere;
        match self.request(RouteNetlinkMessage::DelRoute(m), NLM_F_ACK)? {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(RouteError::Write {
                op: "removing",
                prefix: prefix(vip),
                table,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};
    use netlink_packet_route::route::RouteProtocol;

    use super::*;

    /// A message as the kernel would send it back: emitted and parsed again.
    fn round_trip(m: &RouteMessage) -> RouteMessage {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        RouteMessage::parse(&buf[..]).expect("parses")
    }

    #[test]
    fn our_host_routes_are_recognised_in_their_table_only() {
        for (table, vip) in [
            (100, "203.0.113.10"),
            (100, "2001:db8:ffff::10"),
            (70_000, "203.0.113.10"),
        ] {
            let vip: IpAddr = vip.parse().unwrap();
            let m = round_trip(&route(table, Some(vip), family(vip)));
            assert_eq!(ours(&m, table), Some(vip), "table {table}, {vip}");
            assert_eq!(ours(&m, table + 1), None, "another table");
            let header_table = if table < 256 { table as u8 } else { 0 };
            assert_eq!(m.header.table, header_table, "RT_TABLE_UNSPEC above 255");
            assert_eq!(u8::from(m.header.protocol), RTPROT_IKELB);
        }
        let vip: IpAddr = "203.0.113.10".parse().unwrap();
        let mut other = route(100, Some(vip), family(vip));
        other.header.protocol = RouteProtocol::Bird;
        assert_eq!(ours(&round_trip(&other), 100), None, "another protocol's");
        let mut wider = route(100, Some(vip), family(vip));
        wider.header.destination_prefix_length = 24;
        assert_eq!(ours(&round_trip(&wider), 100), None, "not a host route");
        // The dump request: no destination, the table in RTA_TABLE.
        let dump = route(100, None, AddressFamily::Inet);
        assert_eq!(dump.header.destination_prefix_length, 0);
        assert_eq!(dump.attributes, [RouteAttribute::Table(100)]);
    }
}
