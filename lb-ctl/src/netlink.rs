//! [`Netlink`]: one rtnetlink socket (rtnetlink(7)) for the route tables ikelb writes — the
//! announced VIPs (`crate::announce`, protocol 75) and the shared persistence routes
//! (`crate::share`, protocol 76) — and the helpers both build their messages with.
//!
//! * A request is one message; its reply is read until the ACK or `NLMSG_DONE` of its
//!   sequence number (earlier requests' leftovers and notifications are skipped).
//! * Dumps are sent with `NETLINK_GET_STRICT_CHK`, so the kernel walks the table named and
//!   applies the header's protocol and type (Linux ≥ 4.20); callers filter the reply again,
//!   so a kernel that dumps everything gives the same answer.
//! * A table id above 255 travels in `RTA_TABLE` with `rtm_table` = `RT_TABLE_UNSPEC`, as
//!   iproute2 does.
//!
//! The socket is opened on first use and reopened after any failure; replies wait at most
//! [`REPLY_TIMEOUT`] (they come at once: the kernel answers synchronously).

use std::{collections::BTreeSet, io, net::IpAddr, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::announce::RouteError;

/// Longest wait for the kernel's reply to one request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// rtnetlink in the daemon's network namespace.
#[derive(Default)]
pub struct Netlink {
    socket: Option<Socket>,
    seq: u32,
}

impl Netlink {
    fn socket(&mut self) -> io::Result<&Socket> {
        if self.socket.is_none() {
            self.socket = Some(open()?);
        }
        Ok(self.socket.as_ref().expect("just opened"))
    }

    /// Sends `message` with `NLM_F_REQUEST | flags` and collects the routes of the reply
    /// until its ACK or `NLMSG_DONE`. The outer error is opening the socket; the inner one
    /// the kernel's answer (an errno) or a failed send/receive.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<io::Result<Vec<RouteMessage>>> {
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

impl Netlink {
    /// What `pick` keeps of the unicast routes of `table`, both families (a dump per family,
    /// filtered by the kernel on `protocol` — 0, `RTPROT_UNSPEC`, filters nothing — and
    /// again by `pick`). A table that does not exist yet is empty (`ENOENT`).
    pub fn dump<T: Ord>(
        &mut self,
        table: u32,
        protocol: u8,
        pick: impl Fn(&RouteMessage) -> Option<T>,
    ) -> Result<BTreeSet<T>, RouteError> {
        let mut found = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = route(table, protocol, None, family);
            m.header.kind = RouteType::Unicast;
            let reply = self
                .request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)
                .map_err(|source| RouteError::Socket { source })?;
            match reply {
                Ok(routes) => found.extend(routes.iter().filter_map(&pick)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(RouteError::List { table, source }),
            }
        }
        Ok(found)
    }
}

/// A route message of `family` in `table` with `protocol`, and, given a `destination`, its
/// host prefix (/32, /128). Without a destination: a dump request of the table.
pub fn route(
    table: u32,
    protocol: u8,
    destination: Option<IpAddr>,
    family: AddressFamily,
) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family;
    m.header.table = u8::try_from(table)
        .ok()
        .filter(|_| table < 256)
        .unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = protocol.into();
    m.attributes.push(RouteAttribute::Table(table));
    if let Some(destination) = destination {
        m.header.destination_prefix_length = host_length(destination);
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(destination)));
    }
    m
}

/// The address family of `ip`.
pub fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// 32 or 128: the prefix length of `ip`'s host route.
pub fn host_length(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// The table of `m`: `RTA_TABLE`, else the header's 8-bit one.
pub fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// The destination of `m` if it is a host route (/32 for IPv4, /128 for IPv6).
pub fn host_destination(m: &RouteMessage) -> Option<IpAddr> {
    let destination = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(a) => address(a),
        _ => None,
    })?;
    (m.header.destination_prefix_length == host_length(destination)).then_some(destination)
}

/// The `RTA_GATEWAY` of `m` (one next hop; a multipath route's `RTA_MULTIPATH` or an
/// `RTA_VIA` are not read).
pub fn gateway(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(a) => address(a),
        _ => None,
    })
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}
