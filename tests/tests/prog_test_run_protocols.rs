//! The protocols of a persistency group through `BPF_PROG_TEST_RUN`: TCP (the SSTP fallback)
//! joining the client's UDP entry, TCP and ESP only when configured, ESP in every mode — each
//! one table for both address families (`case::ipv4`, `case::ipv6`, `ikelb_tests::both_families!`)
//! — and what only one family has: IPv4's header length and options, its ICMP (parsed for
//! frag-needed, else no service port) and ARP; IPv6's extension headers (walked, passed,
//! malformed) and ICMPv6, which is the kernel's before any lookup, neighbour discovery to a
//! VIP or from a backend included (`lb-ebpf/src/flow.rs`).
//!
//! Over the dual-stack fixture of `ikelb_tests::xdp` (a virtual server with an IPv4 and an
//! IPv6 VIP, UDP 500/4500, TCP 443 and ESP). Expected frames are built independently
//! (`ikelb_tests::packet`, `packet6`: checksums from scratch), compared byte for byte, and each
//! row names the one counter its verdict must bump. Frames arrive on the fixture's real
//! `ext`/`int` interfaces and every table runs with the slot fast path off and on
//! (`ikelb_tests::xdp`, module doc); new clients land in the probation maps.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::{Ipv4Addr, Ipv6Addr};

use ikelb_tests::{
    both_families,
    frame::ETH_LEN,
    packet::{self, IpFrame, Ipv4Frame, PROTO_ESP, PROTO_ICMP},
    packet6::{
        esp_body, neighbour_solicitation, Ext, Ipv6Frame, IP6_LEN, IP6_OFFSET, NEXT_AUTH,
        NEXT_NONE, PROTO_ICMPV6,
    },
    xdp::{
        backend_mac, case, forwarded, forwarded_frame, from_backend, raw_from_backend, raw_to_vip,
        reversed, to_vip, Case, Expect, Fixture, FixtureFamily, Setup, Topology, EXT_MAC, INT_MAC,
        ROUTER_MAC, VIP4, VIP6,
    },
};
use lb_common::{counter, Traffic, DIR_FORWARD, DIR_REVERSE};

/// IPv6 clients of the extension-header tables.
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
/// An SSTP-ish TLS record start, for TCP payloads.
const TLS: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x40, 1, 0, 0, 0x3c, 3, 3];

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn ring<F: FixtureFamily>(lb: &mut Fixture, client: F) -> u32 {
    lb.ring_choice(client.into())
}

/// A client's TCP segment to the VIP (SYN without data, else PSH|ACK).
fn tcp<F: FixtureFamily>(client: F, sport: u16, dport: u16, payload: &[u8]) -> F::Frame {
    F::Frame::tcp(
        ROUTER_MAC,
        EXT_MAC,
        (client, sport),
        (F::VIP, dport),
        payload,
    )
}

/// A client's UDP datagram of `len` bytes to the IPv6 VIP's `port`.
fn udp6(client: Ipv6Addr, port: u16, len: usize) -> Ipv6Frame {
    to_vip(client, port, port, &data(len))
}

// ---------------------------------------------------------------------------------------------
// TCP in the persistency group

both_families!(tcp_joins_the_persistency_group, Setup::default());

/// SSTP fallback: TCP 443 joins the client's UDP persistence entry, both ways.
fn tcp_joins_the_persistency_group<F: FixtureFamily>(lb: &mut Fixture) {
    let (ca, cb) = (F::client(7), F::client(8));
    let (a, b) = (ring(lb, ca), ring(lb, cb));
    let l4 = ETH_LEN + F::IP_HEADER_LEN;
    let init = to_vip(ca, 500, 500, &data(200));
    let syn = tcp(ca, 50_000, 443, &[]);
    let sstp = tcp(ca, 50_000, 443, TLS);
    // A large SSTP segment of another client, fragmented (RFC 8200 §5 lets an IPv6 source
    // fragment TCP too).
    let big = tcp(cb, 50_001, 443, &data(2500));
    let (t1, t2) = big.split(F::FRAG_LEN);
    let (t1_out, t2_out) = forwarded_frame(&big, b, INT_MAC).split(F::FRAG_LEN);
    let from_a = |sport: u16| {
        F::Frame::tcp(
            backend_mac(a),
            INT_MAC,
            (F::backend(a), sport),
            (ca, 50_000),
            TLS,
        )
    };
    let (reply, ssh) = (from_a(443), from_a(22));
    // A TCP header cut after 12 bytes, consistently; then with padding after it, so that the
    // header "fits" the frame but not the datagram.
    let mut tcp_cut = syn.bytes()[..l4 + 12].to_vec();
    F::set_payload_len(&mut tcp_cut, 12);
    let mut tcp_cut_padded = tcp_cut.clone();
    tcp_cut_padded.resize(l4 + 40, 0);

    #[rustfmt::skip]
    let rows = vec![
        case("UDP 500", init.bytes(), Expect::Redirect(forwarded(&init, a)), counter::FORWARD),
        case("TCP 443 SYN, same backend", syn.bytes(), Expect::Redirect(forwarded(&syn, a)), counter::FORWARD),
        case("TCP 443 data", sstp.bytes(), Expect::Redirect(forwarded(&sstp, a)), counter::FORWARD),
        case("TCP first fragment", t1.bytes(), Expect::Redirect(t1_out.bytes()), counter::FORWARD),
        case("TCP non-first fragment", t2.bytes(), Expect::Redirect(t2_out.bytes()), counter::FORWARD),
        case("backend's TCP 443 reply", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE),
        case("backend's TCP from another port", ssh.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
        case("TCP 80 to the VIP", tcp(ca, 50_002, 80, &[]).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
        case("TCP header truncated", tcp_cut, Expect::Drop, counter::DROP_MALFORMED),
        case("TCP header beyond the datagram", tcp_cut_padded, Expect::Drop, counter::DROP_MALFORMED),
    ];
    lb.check(&rows);
    assert_eq!(lb.probation(cb.into()).map(|e| e.backend), Some(b));
    // Per-backend traffic, both ways: every forwarded frame, its length.
    let len = |fs: &[&F::Frame]| fs.iter().map(|f| f.bytes().len() as u64).sum::<u64>();
    let mut want = [Traffic::default(); 7];
    for (id, packets, bytes) in [(a, 3, len(&[&init, &syn, &sstp])), (b, 2, len(&[&t1, &t2]))] {
        want[id as usize].packets += packets;
        want[id as usize].bytes += bytes;
    }
    for id in F::BACKEND_IDS {
        assert_eq!(
            lb.traffic(id, DIR_FORWARD),
            want[id as usize],
            "backend {id} forward"
        );
    }
    let back = Traffic {
        packets: 1,
        bytes: len(&[&reply]),
    };
    assert_eq!(lb.traffic(a, DIR_REVERSE), back, "backend {a} reverse");
}

both_families!(
    tcp_and_esp_only_when_configured,
    Setup {
        tcp: false,
        esp: false,
        ..Setup::default()
    }
);

/// Without `tcp_ports`, TCP (whole or fragment) is not ikelb's; without `esp`, ESP is not.
fn tcp_and_esp_only_when_configured<F: FixtureFamily>(lb: &mut Fixture) {
    let c = F::client(7);
    let syn = tcp(c, 50_000, 443, &[]);
    let (_, t2) = tcp(c, 50_000, 443, &data(2500)).split(F::FRAG_LEN);
    let esp = raw_to_vip(c, PROTO_ESP, &esp_body(1, 1, 64));
    let name = |what: &str| format!("{} {what}", F::NAME);
    #[rustfmt::skip]
    let rows = vec![
        case(name("TCP 443"), syn.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
        case(name("TCP non-first fragment"), t2.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
        case(name("ESP"), esp.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
    ];
    lb.check(&rows);
}

// ---------------------------------------------------------------------------------------------
// ESP

both_families!(esp_in_every_mode);

/// ESP follows the client's UDP entry in every mode: NAT two-arm, one-arm (XDP_TX both ways)
/// and DSR (MACs and TTL or hop limit only, no reverse path).
fn esp_in_every_mode<F: FixtureFamily>() {
    for (topology, dsr) in [
        (Topology::TwoArm, false),
        (Topology::OneArm, false),
        (Topology::TwoArm, true),
        (Topology::OneArm, true),
    ] {
        let setup = Setup {
            topology,
            dsr,
            ..Setup::default()
        };
        Fixture::both_fast_paths(setup, |lb| esp_rows::<F>(lb, topology, dsr));
    }
}

fn esp_rows<F: FixtureFamily>(lb: &mut Fixture, topology: Topology, dsr: bool) {
    // The gateway's MAC toward the backends: the source of what it sends them, the
    // destination of their replies.
    let smac = if topology == Topology::OneArm {
        EXT_MAC
    } else {
        INT_MAC
    };
    let wrap = |f: Vec<u8>| {
        if topology == Topology::OneArm {
            Expect::Tx(f)
        } else {
            Expect::Redirect(f)
        }
    };
    let c = F::client(7);
    let a = ring(lb, c);
    let out = |f: &F::Frame| {
        let hops = f.hops() - 1;
        let (src, _) = f.addrs();
        let f = if dsr {
            f.clone()
        } else {
            f.readdressed(src, F::backend(a))
        };
        f.with_hops(hops).with_macs(smac, backend_mac(a)).bytes()
    };
    let init = to_vip(c, 500, 500, &data(100));
    let esp = raw_to_vip(c, PROTO_ESP, &esp_body(5, 3, 100));
    let (e1, e2) = raw_to_vip(c, PROTO_ESP, &esp_body(5, 3, 2000)).split(F::FRAG_LEN);
    let back =
        raw_from_backend(a, c, PROTO_ESP, &esp_body(6, 1, 80)).with_macs(backend_mac(a), smac);
    let mode = format!(
        "{topology:?}{}: {}",
        if dsr { " DSR" } else { " NAT" },
        F::NAME
    );
    #[rustfmt::skip]
    let mut rows: Vec<Case> = vec![
        case(format!("{mode} UDP 500"), init.bytes(), wrap(out(&init)), counter::FORWARD),
        case(format!("{mode} ESP"), esp.bytes(), wrap(out(&esp)), counter::FORWARD),
        case(format!("{mode} ESP first fragment"), e1.bytes(), wrap(out(&e1)), counter::FORWARD),
        case(format!("{mode} ESP non-first fragment"), e2.bytes(), wrap(out(&e2)), counter::FORWARD),
    ];
    if dsr {
        // Backends answer clients from the VIP themselves; their own address is not ikelb's.
        #[rustfmt::skip]
        rows.push(case(format!("{mode} backend ESP"), back.bytes(), Expect::Pass, counter::PASS_NOT_VIP));
    } else {
        #[rustfmt::skip]
        rows.push(case(format!("{mode} backend ESP"), back.bytes(), wrap(reversed(&back, ROUTER_MAC)), counter::REVERSE));
    }
    lb.check(&rows);
}

// ---------------------------------------------------------------------------------------------
// What only IPv4 has

/// What only IPv4 has: its header's IHL and options, ICMP on the forward and the reverse path
/// (parsed for frag-needed, else no service port or not a client), ARP; and an IPv6 frame to
/// no VIP. With the fixture of `prog_test_run.rs` (no TCP).
#[test]
fn ipv4_options_icmp_and_foreign_frames() {
    let setup = Setup {
        tcp: false,
        ..Setup::default()
    };
    Fixture::both_fast_paths(setup, |lb| {
        let c1 = Ipv4Addr::client(7);
        let b1 = ring(lb, c1);
        let good = to_vip(c1, 500, 500, &data(64)).bytes();
        let ip = packet::IP_OFFSET;
        let mut ihl4 = good.clone();
        ihl4[ip] = 0x44;
        packet::fix_ipv4_checksum(&mut ihl4);
        let mut shorter_than_header = good.clone();
        shorter_than_header[ip + 2..ip + 4].copy_from_slice(&19u16.to_be_bytes());
        packet::fix_ipv4_checksum(&mut shorter_than_header);
        let echo = Ipv4Frame::raw(
            ROUTER_MAC,
            EXT_MAC,
            c1,
            VIP4,
            PROTO_ICMP,
            &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
        );
        let nat_t = from_backend(b1, 4500, c1, 4500, &data(90));
        let gateway_int = Ipv4Addr::OWN_INT;
        let echo_reply =
            raw_from_backend(b1, gateway_int, PROTO_ICMP, &[0, 0, 0xff, 0xff, 0, 0, 0, 0]);

        #[rustfmt::skip]
        let rows = vec![
            case("IHL 4", ihl4, Expect::Drop, counter::DROP_MALFORMED),
            case("total length below the header", shorter_than_header, Expect::Drop, counter::DROP_MALFORMED),
            case("IP options to the VIP", packet::with_ip_option(&good), Expect::Pass, counter::PASS_IP_OPTIONS),
            case("ARP", packet::arp_request(ROUTER_MAC, Ipv4Addr::new(203, 0, 113, 1), VIP4), Expect::Pass, counter::PASS_NOT_IP),
            case("ICMP echo to the VIP", echo.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            // IPv6 has its own tables; one not to a VIP is passed.
            case("IPv6 not to a VIP", packet::ipv6_udp(ROUTER_MAC, EXT_MAC), Expect::Pass, counter::PASS_NOT_VIP),
            case("backend reply with IP options", packet::with_ip_option(&nat_t.bytes()), Expect::Pass, counter::PASS_IP_OPTIONS),
            case("ICMP echo reply to the gateway", echo_reply.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
        ];
        lb.check(&rows);
        assert_eq!(
            (lb.persisted(c1.into()), lb.probation(c1.into())),
            (None, None),
            "nothing was learned from refused frames"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// What only IPv6 has

/// Extension headers on both paths (RFC 8200 §4): those the walk follows are forwarded like
/// any packet of the client, those it does not (a routing header with segments left, AH, a
/// Hop-by-Hop header not first, a chain too long, a non-first fragment starting with options)
/// are the kernel's; ICMPv6 to a VIP or from a backend, neighbour discovery included, is the
/// kernel's before any lookup.
#[test]
fn ipv6_extension_headers_and_icmpv6() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let a = ring(lb, A6);
        let fwd = |f: &Ipv6Frame| forwarded(f, a);

        let init = udp6(A6, 500, 300);
        // Extension headers the walk follows.
        let dest = udp6(A6, 4500, 64).with_ext(Ext::DestOpts { pad: 4 });
        let hop = udp6(A6, 4500, 64).with_ext(Ext::HopByHop { pad: 12 });
        let routed = udp6(A6, 4500, 64).with_ext(Ext::Routing { segments_left: 0 });
        let atomic = udp6(A6, 4500, 64).with_ext(Ext::Fragment {
            offset: 0,
            more: false,
            id: 9,
        });
        let chain = udp6(A6, 4500, 64)
            .with_ext(Ext::HopByHop { pad: 4 })
            .with_ext(Ext::DestOpts { pad: 4 })
            .with_ext(Ext::Routing { segments_left: 0 })
            .with_ext(Ext::DestOpts { pad: 12 });
        // And those it passes.
        let waypoint = udp6(A6, 4500, 64).with_ext(Ext::Routing { segments_left: 1 });
        let ah = udp6(A6, 4500, 64).with_ext(Ext::Raw { kind: NEXT_AUTH });
        let late_hop = udp6(A6, 4500, 64)
            .with_ext(Ext::DestOpts { pad: 4 })
            .with_ext(Ext::HopByHop { pad: 4 });
        let mut too_long = udp6(A6, 4500, 64);
        for _ in 0..5 {
            too_long = too_long.with_ext(Ext::DestOpts { pad: 4 });
        }
        let (_, opts_f2) = udp6(A6, 4500, 3000)
            .with_ext(Ext::DestOpts { pad: 4 })
            .fragments(1232, 7);
        // The second fragment's fragmentable part starts with the Destination Options header.
        let mut opts_f2 = opts_f2;
        opts_f2.ext.swap(0, 1);
        let echo = Ipv6Frame::raw(
            ROUTER_MAC,
            EXT_MAC,
            A6,
            VIP6,
            PROTO_ICMPV6,
            &[128, 0, 0x12, 0x34, 0, 1, 0, 1],
        );
        // The reverse path: a backend's neighbour solicitation, a reply behind AH.
        let ns = neighbour_solicitation(backend_mac(a), Ipv6Addr::backend(a), Ipv6Addr::OWN_INT);
        let behind_ah =
            from_backend(a, 4500, A6, 4500, &data(40)).with_ext(Ext::Raw { kind: NEXT_AUTH });

        #[rustfmt::skip]
        let rows = vec![
            case("UDP 500 to the VIP", init.bytes(), Expect::Redirect(fwd(&init)), counter::FORWARD),
            case("Destination Options walked", dest.bytes(), Expect::Redirect(fwd(&dest)), counter::FORWARD),
            case("Hop-by-Hop walked", hop.bytes(), Expect::Redirect(fwd(&hop)), counter::FORWARD),
            case("Routing, segments left 0, walked", routed.bytes(), Expect::Redirect(fwd(&routed)), counter::FORWARD),
            case("atomic fragment (RFC 6946)", atomic.bytes(), Expect::Redirect(fwd(&atomic)), counter::FORWARD),
            case("four extension headers walked", chain.bytes(), Expect::Redirect(fwd(&chain)), counter::FORWARD),
            case("Routing with segments left", waypoint.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("AH", ah.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("Hop-by-Hop not first", late_hop.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("five extension headers", too_long.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("non-first fragment starting with options", opts_f2.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("no next header to the VIP", Ipv6Frame::raw(ROUTER_MAC, EXT_MAC, A6, VIP6, NEXT_NONE, &[]).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("ICMPv6 echo to the VIP", echo.bytes(), Expect::Pass, counter::PASS_ICMPV6),
            case("neighbour solicitation for the VIP", neighbour_solicitation(ROUTER_MAC, A6, VIP6), Expect::Pass, counter::PASS_ICMPV6),
            case("backend's neighbour solicitation", ns, Expect::Pass, counter::PASS_ICMPV6),
            case("backend reply behind AH", behind_ah.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
        ];
        lb.check(&rows);
        assert_eq!(lb.persisted(VIP4.into()), None);
        // Per-backend traffic: every forwarded frame, by its length.
        let frames = [&init, &dest, &hop, &routed, &atomic, &chain];
        let bytes: u64 = frames.iter().map(|f| f.bytes().len() as u64).sum();
        let want = Traffic {
            packets: frames.len() as u64,
            bytes,
        };
        assert_eq!(
            lb.traffic(a, DIR_FORWARD),
            want,
            "backend {a} forward traffic"
        );
    });
}

/// Extension headers that do not add up (RFC 8200 §4, RFC 7112): dropped.
#[test]
fn ipv6_malformed_extension_headers_are_never_forwarded() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let l4 = IP6_OFFSET + IP6_LEN;
        // A Destination Options header whose length runs past the datagram.
        let mut opts_long = udp6(A6, 500, 64).with_ext(Ext::DestOpts { pad: 4 }).bytes();
        opts_long[l4 + 1] = 30;
        // A Fragment header cut short.
        let frag = udp6(A6, 500, 64).with_ext(Ext::Fragment {
            offset: 0,
            more: true,
            id: 1,
        });
        let mut frag_cut = frag.bytes()[..l4 + 4].to_vec();
        Ipv6Addr::set_payload_len(&mut frag_cut, 4);
        // A first fragment too short to hold the UDP header (RFC 7112 forbids it).
        let mut tiny_first = frag.bytes()[..l4 + 8 + 4].to_vec();
        Ipv6Addr::set_payload_len(&mut tiny_first, 12);

        #[rustfmt::skip]
        let rows = vec![
            case("options beyond the datagram", opts_long, Expect::Drop, counter::DROP_MALFORMED),
            case("fragment header truncated", frag_cut, Expect::Drop, counter::DROP_MALFORMED),
            case("first fragment without the whole UDP header", tiny_first, Expect::Drop, counter::DROP_MALFORMED),
        ];
        lb.check(&rows);
        assert_eq!(
            lb.persisted(A6.into()),
            None,
            "nothing learned from refused frames"
        );
    });
}
