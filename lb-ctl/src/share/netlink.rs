//! The shared persistence routes in the kernel (docs/cluster.md, "Shared persistence"): this
//! node's divergent clients, `CLIENT/32 via BACKEND proto 76` (`/128` for IPv6), in
//! `share.export_table`, which BIRD exports over iBGP; and what BIRD learned from the other
//! nodes, in `share.import_table`. The messages are those of
//! `ip route replace|del|show table N proto 76`:
//!
//! * add: `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_REPLACE` (idempotent; a client whose
//!   backend changed is one replace), type unicast, scope universe, `RTA_GATEWAY` = the
//!   backend, and for a probation client `RTA_PRIORITY` = [`METRIC_PROBATION`] (`ip route …
//!   metric 1`); the kernel resolves the outgoing interface from the gateway, as for
//!   `ip route add … via BACKEND` (so the backend must be reachable on a connected network,
//!   which every backend of a node is);
//! * remove: `RTM_DELROUTE` naming the table, the client's host prefix and protocol 76 (only
//!   ikelb's route matches); `ESRCH` (none there) is success;
//! * list ours: an `RTM_GETROUTE` dump of the table per family, protocol 76's unicast host
//!   routes with a gateway;
//! * list learned: the same dump, any protocol (BIRD writes its routes as protocol `bird`,
//!   12): the unicast host routes with one gateway of the client's family; anything else
//!   (a wider prefix, a multipath or device route) is ignored. Metric [`METRIC_PROBATION`]
//!   marks a probation client (BIRD carries it as a BGP community and writes it back as that
//!   metric, see `deploy/bird/ikelb-node.conf`); where a client has two routes, the other
//!   one, established, is the one read.
//!
//! A table that does not exist yet is empty (`ENOENT`). The socket and the exchange are
//! `crate::netlink`'s, shared with the VIP announcement.

use std::{collections::BTreeSet, io, net::IpAddr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType},
    RouteNetlinkMessage,
};

use super::Shared;
use crate::{
    announce::{prefix, RouteError},
    dataplane::Tier,
    netlink::{family, gateway, host_destination, route, table_of, Netlink},
};

/// Route protocol number (`rtm_protocol`, `ip route … proto 76`) of the shared persistence
/// routes this node writes: next to the announced VIPs' 75 (`crate::announce::RTPROT_IKELB`),
/// as free (not among the kernel's RTPROT_* in `include/uapi/linux/rtnetlink.h` nor
/// iproute2's `rt_protos`). BIRD exports exactly these (`krt_source = 76`).
pub const RTPROT_IKELB_SHARE: u8 = 76;

/// The route metric (`RTA_PRIORITY`, `ip route … metric 1`, BIRD's `krt_metric`) of a
/// client that is in probation at the node that publishes it; an established client's
/// route has the kernel's default (0 for IPv4, 1024 for IPv6; BIRD too, with `metric 0`
/// in its kernel protocol, which lets a filter set `krt_metric` per route). The metric
/// is part of a route's key, so a client promoted there is a remove and an add. (Route
/// realms, an attribute, would be one replace, but exist for IPv4 only.) Nothing on these
/// hosts routes by the share tables, so nothing else reads it.
pub const METRIC_PROBATION: u32 = 1;

/// The kernel tables of shared persistence, as far as client routes go.
pub trait ShareRoutes {
    /// Every route of ours (protocol [`RTPROT_IKELB_SHARE`]) in `table`.
    fn list_ours(&mut self, table: u32) -> Result<BTreeSet<Shared>, RouteError>;
    /// Every host route with a gateway in `table`, whoever wrote it (BIRD: protocol 12).
    fn list_learned(&mut self, table: u32) -> Result<BTreeSet<Shared>, RouteError>;
    /// Adds, or replaces, the route of `client` (one family).
    fn add(&mut self, table: u32, client: &Shared) -> Result<(), RouteError>;
    /// Removes our route of `client`, whatever its metric; one that is not there is no error.
    fn remove(&mut self, table: u32, client: IpAddr) -> Result<(), RouteError>;
}

/// The client route of `m` if it is a unicast host route in `table` with one gateway of the
/// client's family, written by `protocol` (any when `None`).
fn client_route(m: &RouteMessage, table: u32, protocol: Option<u8>) -> Option<Shared> {
    if protocol.is_some_and(|p| u8::from(m.header.protocol) != p)
        || m.header.kind != RouteType::Unicast
        || table_of(m) != table
    {
        return None;
    }
    let client = host_destination(m)?;
    let backend = gateway(m).filter(|g| g.is_ipv4() == client.is_ipv4())?;
    let probation = m
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Priority(p) if *p == METRIC_PROBATION));
    Some(if probation {
        Shared::probation(client, backend)
    } else {
        Shared::established(client, backend)
    })
}

/// The client routes of `table` (both families) written by `protocol` (any when `None`),
/// one per client.
fn dump(
    nl: &mut Netlink,
    table: u32,
    protocol: Option<u8>,
) -> Result<BTreeSet<Shared>, RouteError> {
    let all = nl.dump(table, protocol.unwrap_or(0), |r| {
        client_route(r, table, protocol)
    })?;
    // One per client, `Tier::Established` (which orders first) where it has two.
    let mut by_tier: Vec<Shared> = all.into_iter().collect();
    by_tier.sort_by_key(|s| s.tier);
    let mut seen = BTreeSet::new();
    Ok(by_tier
        .into_iter()
        .filter(|s| seen.insert(s.client))
        .collect())
}

fn socket(source: io::Error) -> RouteError {
    RouteError::Socket { source }
}

/// The `RTM_NEWROUTE` of `client` in `table`.
fn new_route(table: u32, client: &Shared) -> RouteMessage {
    let mut m = route(
        table,
        RTPROT_IKELB_SHARE,
        Some(client.client),
        family(client.client),
    );
    m.header.kind = RouteType::Unicast;
    m.header.scope = RouteScope::Universe;
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::from(client.backend)));
    if client.tier == Tier::Probation {
        m.attributes
            .push(RouteAttribute::Priority(METRIC_PROBATION));
    }
    m
}

impl ShareRoutes for Netlink {
    fn list_ours(&mut self, table: u32) -> Result<BTreeSet<Shared>, RouteError> {
        dump(self, table, Some(RTPROT_IKELB_SHARE))
    }

    fn list_learned(&mut self, table: u32) -> Result<BTreeSet<Shared>, RouteError> {
        dump(self, table, None)
    }

    fn add(&mut self, table: u32, client: &Shared) -> Result<(), RouteError> {
        let backend = client.backend;
        let write = |source| RouteError::Write {
            op: "adding",
            prefix: format!("{} via {backend}", prefix(client.client)),
            table,
            source,
        };
        if client.client.is_ipv4() != backend.is_ipv4() {
            return Err(write(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the client and the backend are of different address families",
            )));
        }
        self.request(
            RouteNetlinkMessage::NewRoute(new_route(table, client)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(socket)?
        .map(drop)
        .map_err(write)
    }

    fn remove(&mut self, table: u32, client: IpAddr) -> Result<(), RouteError> {
        let mut m = route(table, RTPROT_IKELB_SHARE, Some(client), family(client));
        // Any scope, type and gateway: the protocol and the prefix name the route.
        m.header.scope = RouteScope::NoWhere;
        match self
            .request(RouteNetlinkMessage::DelRoute(m), NLM_F_ACK)
            .map_err(socket)?
        {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(RouteError::Write {
                op: "removing",
                prefix: prefix(client),
                table,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use netlink_packet_core::{Emitable, Parseable};
    use netlink_packet_route::route::RouteProtocol;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A message as the kernel would send it back: emitted and parsed again.
    fn round_trip(m: &RouteMessage) -> RouteMessage {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        RouteMessage::parse(&buf[..]).expect("parses")
    }

    #[test]
    fn our_host_routes_are_recognised_in_their_table_only() {
        let ours = Some(RTPROT_IKELB_SHARE);
        for (table, client, backend) in [
            (100, "198.51.100.7", "192.0.2.9"),
            (100, "2001:db8:9::7", "2001:db8:1::9"),
            (70_000, "198.51.100.7", "192.0.2.9"),
        ] {
            let (client, backend) = (ip(client), ip(backend));
            let m = round_trip(&new_route(table, &Shared::established(client, backend)));
            let want = Some(Shared::established(client, backend));
            assert_eq!(
                client_route(&m, table, ours),
                want,
                "table {table}, {client}"
            );
            assert_eq!(client_route(&m, table, None), want, "learned too");
            assert_eq!(client_route(&m, table + 1, ours), None, "another table");
            assert_eq!(client_route(&m, table + 1, None), None, "another table");
            let header_table = if table < 256 { table as u8 } else { 0 };
            assert_eq!(m.header.table, header_table, "RT_TABLE_UNSPEC above 255");
            assert_eq!(u8::from(m.header.protocol), RTPROT_IKELB_SHARE);
            assert_eq!(m.header.scope, RouteScope::Universe);
            assert_eq!(m.header.kind, RouteType::Unicast);
            let p = round_trip(&new_route(table, &Shared::probation(client, backend)));
            assert_eq!(
                client_route(&p, table, None),
                Some(Shared::probation(client, backend)),
                "the realm marks a probation client"
            );
        }
        let (client, backend) = (ip("198.51.100.7"), ip("192.0.2.9"));
        let mut bird = new_route(100, &Shared::established(client, backend));
        bird.header.protocol = RouteProtocol::Bird;
        let bird = round_trip(&bird);
        assert_eq!(client_route(&bird, 100, ours), None, "BIRD's is not ours");
        assert_eq!(
            client_route(&bird, 100, None),
            Some(Shared::established(client, backend)),
            "but is learned"
        );
        let mut wider = new_route(100, &Shared::established(client, backend));
        wider.header.destination_prefix_length = 24;
        assert_eq!(
            client_route(&round_trip(&wider), 100, None),
            None,
            "not a host route"
        );
        let mut device = route(100, 12, Some(client), family(client));
        device.header.kind = RouteType::Unicast;
        device.attributes.push(RouteAttribute::Oif(1));
        assert_eq!(
            client_route(&round_trip(&device), 100, None),
            None,
            "no gateway"
        );
        let mut blackhole = new_route(100, &Shared::established(client, backend));
        blackhole.header.kind = RouteType::BlackHole;
        assert_eq!(
            client_route(&round_trip(&blackhole), 100, None),
            None,
            "not unicast"
        );
        // (Not round-tripped: the parser reads a gateway by the header's family.)
        let mixed = new_route(100, &Shared::established(client, ip("2001:db8:1::9")));
        assert_eq!(client_route(&mixed, 100, None), None, "v4 via v6");
        // The dump request: no destination, the table in RTA_TABLE.
        let dump = route(100, 0, None, netlink_packet_route::AddressFamily::Inet);
        assert_eq!(dump.header.destination_prefix_length, 0);
        assert_eq!(dump.attributes, [RouteAttribute::Table(100)]);
    }

    fn run(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("runs ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn show(table: u32) -> String {
        let mut text = String::new();
        for family in ["-4", "-6"] {
            let out = Command::new("ip")
                .args([family, "route", "show", "table", &table.to_string()])
                .output()
                .expect("runs ip");
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        text
    }

    /// Adds, replaces, lists and removes client routes of both families in a table of a
    /// private network namespace (a veth with one address per family holds the backends'
    /// networks); a route of another protocol in the same table is listed as learned, never
    /// as ours, and survives the removals. Root only.
    #[test]
    fn routes_are_added_listed_and_removed_in_a_private_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP routes_are_added_listed_and_removed_in_a_private_namespace: needs root (a private network namespace)");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: moves only this thread (and the `ip` it runs) into a fresh network
            // namespace, which goes away with them.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare: {}",
                io::Error::last_os_error()
            );
            run(&["link", "add", "f0", "type", "veth", "peer", "name", "f1"]);
            run(&["link", "set", "f0", "up"]);
            run(&["link", "set", "f1", "up"]);
            run(&["addr", "add", "192.0.2.1/24", "dev", "f0"]);
            run(&[
                "-6",
                "addr",
                "add",
                "2001:db8:1::1/64",
                "dev",
                "f0",
                "nodad",
            ]);
            // Another protocol's host route, as BIRD writes what it learned.
            run(&[
                "route",
                "add",
                "198.51.100.99/32",
                "via",
                "192.0.2.99",
                "table",
                "70000",
                "proto",
                "bird",
            ]);

            let mut nl = Netlink::default();
            let table = 70_000;
            assert_eq!(nl.list_ours(table).unwrap(), BTreeSet::new());
            assert_eq!(
                nl.list_ours(table + 1).unwrap(),
                BTreeSet::new(),
                "no such table"
            );
            let (c4, b4, b4b) = (ip("198.51.100.7"), ip("192.0.2.9"), ip("192.0.2.10"));
            let (c6, b6) = (ip("2001:db8:9::7"), ip("2001:db8:1::9"));
            nl.add(table, &Shared::established(c4, b4)).unwrap();
            nl.add(table, &Shared::probation(c6, b6)).unwrap();
            nl.add(table, &Shared::established(c4, b4b))
                .expect("a replace");
            let shown = show(table);
            assert!(
                shown.contains("198.51.100.7 via 192.0.2.10 dev f0 proto 76"),
                "{shown}"
            );
            assert!(
                shown.contains("2001:db8:9::7 via 2001:db8:1::9 dev f0 proto 76 metric 1 "),
                "{shown}"
            );
            assert_eq!(
                nl.list_ours(table).unwrap(),
                BTreeSet::from([Shared::established(c4, b4b), Shared::probation(c6, b6)])
            );
            // Promoted at the node: the probation route goes, the established one comes.
            nl.remove(table, c6).unwrap();
            nl.add(table, &Shared::established(c6, b6)).unwrap();
            // Two routes of one client (BIRD between a remove and an add): the established
            // one is read.
            nl.add(table, &Shared::probation(c4, b4b)).unwrap();
            assert_eq!(
                nl.list_ours(table).unwrap(),
                BTreeSet::from([Shared::established(c4, b4b), Shared::established(c6, b6)])
            );
            nl.remove(table, c4).unwrap();
            nl.remove(table, c4).unwrap();
            assert!(
                !nl.list_ours(table).unwrap().iter().any(|s| s.client == c4),
                "a remove takes a route of either metric"
            );
            nl.add(table, &Shared::established(c4, b4b)).unwrap();
            let bird = Shared::established(ip("198.51.100.99"), ip("192.0.2.99"));
            assert_eq!(
                nl.list_learned(table).unwrap(),
                BTreeSet::from([
                    Shared::established(c4, b4b),
                    Shared::established(c6, b6),
                    bird
                ])
            );
            let err = nl
                .add(table, &Shared::established(c4, b6))
                .unwrap_err()
                .to_string();
            assert!(err.contains("different address families"), "{err}");
            let err = nl.add(
                table,
                &Shared::established(ip("198.51.100.8"), ip("203.0.113.1")),
            );
            assert!(err.is_err(), "a gateway on no connected network");

            nl.remove(table, c4).unwrap();
            nl.remove(table, c6).unwrap();
            nl.remove(table, c6).expect("ESRCH is success");
            nl.remove(table, bird.client)
                .expect("not ours: nothing removed");
            assert_eq!(nl.list_ours(table).unwrap(), BTreeSet::new());
            assert_eq!(nl.list_learned(table).unwrap(), BTreeSet::from([bird]));
        })
        .join()
        .unwrap();
    }
}
