//! The edge rules of the data path through `BPF_PROG_TEST_RUN`, on the real-interface fixture
//! of `ikelb_tests::xdp` (own namespace, `ext` clients / `int` backends, per-row ingress
//! ifindex, a redirect row runs with only its expected devmap port; every table with the slot
//! fast path off and on unless the test is about the fast path itself), one module per concern:
//!
//! * `ingress`: VIP traffic only on an interface with the clients role, checked right after the
//!   VIP lookup (`drop/not_client_interface`); RFC 1858: an IPv4 TCP fragment at offset 1
//!   (`drop/fragment_offset_1`), UDP ones forwarded, and IPv6's steered;
//! * `probation`: new clients on probation (rationed by `NEW_CLIENT_QUOTA`, `lost` for a
//!   mid-session packet), selection PERSIST → PROBATION → ring;
//! * `promotion`: promotion only when the client echoes the proof the reverse path recorded
//!   (IKE responder SPI, TCP ISN + 1);
//! * `reverse`: MAC / port moves only with `bpf_fib_lookup` evidence (the namespace's routes
//!   and permanent neighbours make the FIB agree or not); the reverse path's checks: group,
//!   backend interface and MAC, live entry of this backend, else the ring and a FIB route
//!   (`reverse_stateless`), else a drop;
//! * `fast_path`: the slot fast path, keyed by the ring slot's `REFRESHED_V4` stamp;
//! * `steering`: SA steering — a client that moved follows its established IKE or ESP SA;
//! * `ike_stages`: the `IKE_STAGES` counters and each client's last IKE stage (where a client
//!   that fails to connect stopped);
//! * `icmp`: ICMP fragmentation-needed / ICMPv6 packet-too-big about a client's flow, sent on
//!   to its backend with every checksum right (expected frames built from scratch).
//!
//! Every table is written once for both address families and runs as `case::ipv4` and
//! `case::ipv6` (`ikelb_tests::both_families!`). What differs is in [`EdgeFamily`]: IPv4's
//! options and ICMP on the backends' interface against IPv6's extension headers and ICMPv6
//! (the kernel's before the role check, `lb-ebpf/src/flow.rs`), the ICMP errors that are not
//! "too big", and the bulk packets only one family has; RFC 1858's rule is IPv4's alone
//! (`docs/security.md`, "Fragments"), so the small-offset fragments have a table per family.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::{Ipv4Addr, Ipv6Addr};

use ikelb_tests::{
    frame::echo_request_of,
    packet::{ike_message, with_ip_option, IpFrame, Ipv4Frame, Mac, PROTO_ICMP},
    packet6::{Ext, Ipv6Frame, NEXT_AUTH},
    xdp::{case, to_vip, Case, Expect, Fixture, FixtureFamily, Side, EXT_MAC, ROUTER_MAC, VIP4},
};
use lb_common::counter;

mod fast_path;
mod icmp;
mod ike_stages;
mod ingress;
mod probation;
mod promotion;
mod reverse;
mod steering;

const ROUTER2_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x02];
/// A MAC that is neither a backend's nor a router's.
const STRANGER_MAC: Mac = [0x02, 0, 0, 0, 0x0e, 0x0e];

/// Idle timeout of the rows with entries, in ticks (~10.7 s: rows under TCG emulation take
/// seconds, and an active entry must not idle out meanwhile).
const IDLE_TIMEOUT: u32 = 10;

/// What the edge tables do differently per family (module doc).
trait EdgeFamily: FixtureFamily {
    /// Rows only this family has in the table of VIP traffic on the backends' interface, for
    /// client `c`'s IKE_SA_INIT `init` (all arrive on `int`).
    fn role_rows(c: Self, init: &Self::Frame) -> Vec<Case>;
    /// ICMP errors about `quoted` that are not "too big", from `router` to the VIP, with their
    /// names.
    fn other_icmp_errors(router: Self, quoted: &Self::Frame) -> Vec<(&'static str, Self::Frame)>;
    /// `esp` behind the extension headers the walk follows (none over IPv4), with their names.
    fn behind_headers(esp: &Self::Frame) -> Vec<(&'static str, Self::Frame)>;
    /// A NAT keepalive `keepalive` as it is on the wire, if Ethernet pads it (IPv4: 43 bytes,
    /// padded to 60; IPv6's is longer than that).
    fn padded(keepalive: &Self::Frame) -> Option<Vec<u8>>;
}

impl EdgeFamily for Ipv4Addr {
    fn role_rows(c: Self, init: &Ipv4Frame) -> Vec<Case> {
        let echo = Ipv4Frame::raw(
            ROUTER_MAC,
            EXT_MAC,
            c,
            VIP4,
            PROTO_ICMP,
            &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
        );
        #[rustfmt::skip]
        let rows = vec![
            case("IP options to the VIP on int (role first)", with_ip_option(&init.bytes()), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int),
            case("ICMP echo to the VIP on int", echo.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int),
        ];
        rows
    }

    fn other_icmp_errors(router: Self, quoted: &Ipv4Frame) -> Vec<(&'static str, Ipv4Frame)> {
        let unreachable =
            ikelb_tests::packet::icmp_error(ROUTER_MAC, EXT_MAC, router, VIP4, 3, 3, quoted, 8, 0);
        vec![("port unreachable (type 3 code 3)", unreachable)]
    }

    fn behind_headers(_: &Ipv4Frame) -> Vec<(&'static str, Ipv4Frame)> {
        vec![]
    }

    /// The padding is not an SPI: the datagram ends at the 0xff, and what follows is cut off
    /// on the way out.
    fn padded(keepalive: &Ipv4Frame) -> Option<Vec<u8>> {
        let b = keepalive.bytes();
        Some([&b[..], &vec![0; 60 - b.len()]].concat())
    }
}

impl EdgeFamily for Ipv6Addr {
    /// The role is checked before the extension headers are walked; ICMPv6 is the kernel's
    /// before any lookup, on any interface.
    fn role_rows(c: Self, init: &Ipv6Frame) -> Vec<Case> {
        let ah = init.clone().with_ext(Ext::Raw { kind: NEXT_AUTH });
        let echo: Ipv6Frame = echo_request_of(ROUTER_MAC, EXT_MAC, c, Self::VIP);
        #[rustfmt::skip]
        let rows = vec![
            case("AH to the VIP on int (role first)", ah.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int),
            case("ICMPv6 echo to the VIP on int: the kernel's", echo.bytes(), Expect::Pass, counter::PASS_ICMPV6).on(Side::Int),
        ];
        rows
    }

    fn other_icmp_errors(router: Self, quoted: &Ipv6Frame) -> Vec<(&'static str, Ipv6Frame)> {
        let unreachable = ikelb_tests::packet6::icmpv6_error(
            ROUTER_MAC,
            EXT_MAC,
            router,
            Self::VIP,
            1,
            4,
            0,
            quoted,
            8,
        );
        let echo = echo_request_of(ROUTER_MAC, EXT_MAC, router, Self::VIP);
        vec![
            ("destination unreachable (type 1 code 4)", unreachable),
            ("echo request", echo),
        ]
    }

    fn behind_headers(esp: &Ipv6Frame) -> Vec<(&'static str, Ipv6Frame)> {
        let atomic = Ext::Fragment {
            offset: 0,
            more: false,
            id: 92,
        };
        vec![
            (
                "Destination Options",
                esp.clone().with_ext(Ext::DestOpts { pad: 4 }),
            ),
            ("an atomic fragment", esp.clone().with_ext(atomic)),
        ]
    }

    fn padded(_: &Ipv6Frame) -> Option<Vec<u8>> {
        None
    }
}

/// Client `i` of the tables: 198.51.100.(10 + `i`), 2001:db8:c::(10 + `i`).
fn client<F: FixtureFamily>(i: u16) -> F {
    F::client(10 + i)
}

/// A client address on an unreachable route in the namespace (100.64.0.0/10,
/// 2001:db8:f::/48).
fn unrouted<F: FixtureFamily>(i: u16) -> F {
    F::unrouted(10 + i)
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// IKE_SA_INIT request (responder SPI 0).
fn sa_init(spi_i: u64) -> Vec<u8> {
    ike_message(spi_i, 0, 34, 0x08, 200)
}

/// An IKE_AUTH request with responder SPI `spi_r` (mid-session).
fn auth(spi_i: u64, spi_r: u64) -> Vec<u8> {
    ike_message(spi_i, spi_r, 35, 0x08, 120)
}

fn udp<F: FixtureFamily>(client: F, sport: u16, dport: u16, payload: &[u8]) -> F::Frame {
    to_vip(client, sport, dport, payload)
}

fn ring<F: FixtureFamily>(lb: &mut Fixture, a: F) -> u32 {
    lb.ring_choice(a.into())
}
