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
//! The socket, its exchange and the message helpers are `crate::netlink`'s, shared with the
//! shared persistence routes (`crate::share`).

use std::{collections::BTreeSet, io, net::IpAddr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    route::{RouteAttribute, RouteMessage, RouteScope, RouteType},
    AddressFamily, RouteNetlinkMessage,
};

pub use crate::netlink::Netlink;
use crate::netlink::{family, host_destination, table_of};

use super::{prefix, RouteError, RouteTable, RTPROT_IKELB};

/// `request` with the socket's failure as a [`RouteError`].
fn request(
    nl: &mut Netlink,
    message: RouteNetlinkMessage,
    flags: u16,
) -> Result<io::Result<Vec<RouteMessage>>, RouteError> {
    nl.request(message, flags)
        .map_err(|source| RouteError::Socket { source })
}

/// The header and attributes every message of ours carries: family, host prefix, table,
/// protocol.
fn route(table: u32, vip: Option<IpAddr>, family: AddressFamily) -> RouteMessage {
    crate::netlink::route(table, RTPROT_IKELB, vip, family)
}

/// The VIP of `m` if it is a host route of ikelb's in `table`.
fn ours(m: &RouteMessage, table: u32) -> Option<IpAddr> {
    if u8::from(m.header.protocol) != RTPROT_IKELB || table_of(m) != table {
        return None;
    }
    host_destination(m)
}

/// `lo`'s ifindex (1 in every network namespace since Linux 4.x, looked up all the same).
fn loopback() -> io::Result<u32> {
    crate::daemon::if_nametoindex("lo")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no interface lo"))
}

impl RouteTable for Netlink {
    fn list(&mut self, table: u32) -> Result<BTreeSet<IpAddr>, RouteError> {
        self.dump(table, RTPROT_IKELB, |r| ours(r, table))
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
        request(
            self,
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
        match request(self, RouteNetlinkMessage::DelRoute(m), NLM_F_ACK)? {
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
