//! Issue 6 through `BPF_PROG_TEST_RUN`: IPv6 (extension headers, fragments, checksums, hop
//! limit, reverse path, ICMPv6/NDP untouched), TCP (SSTP fallback) in the persistency group,
//! ESP in every mode and both families, and DSR — one table of rows per test, over the
//! dual-stack fixture of `ikelb_tests::xdp` (a virtual server with an IPv4 and an IPv6 VIP,
//! UDP 500/4500, TCP 443 and ESP). Expected frames are built independently
//! (`ikelb_tests::packet`, `packet6`: checksums from scratch), compared byte for byte, and
//! each row names the one counter its verdict must bump. Frames arrive on the fixture's real
//! `ext`/`int` interfaces and every table runs with the slot fast path off and on
//! (`ikelb_tests::xdp`, module doc); new clients land in the probation maps.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ikelb_tests::{
    packet::{IpFrame, Ipv4Frame, PROTO_ESP},
    packet6::{
        esp_body, neighbour_solicitation, Ext, Ipv6Frame, IP6_LEN, IP6_OFFSET, NEXT_AUTH,
        NEXT_NONE, PROTO_ICMPV6,
    },
    xdp::{
        backend_mac, backend_v4, backend_v6, case, Case, Expect, Fixture, Setup, Topology, EXT_MAC,
        INT_MAC, ROUTER_MAC, VIP4, VIP6,
    },
};
use lb_common::{counter, Traffic, DIR_FORWARD, DIR_REVERSE};

/// Clients.
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 8);
const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 0x33);
const D6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 1, 0x44);
const A4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const B4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
/// Bytes of transport payload in a first fragment (1280-byte IPv6 minimum MTU: 1280 − 40 −
/// 8, rounded down to 8).
const FRAG_LEN: usize = 1232;
/// The same for IPv4 (1500-byte MTU).
const FRAG_LEN4: usize = 1480;
/// An SSTP-ish TLS record start, for TCP payloads.
const TLS: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x40, 1, 0, 0, 0x3c, 3, 3];

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// A client's UDP datagram to the IPv6 VIP, as it arrives from the upstream router.
fn udp6(client: Ipv6Addr, port: u16, len: usize) -> Ipv6Frame {
    Ipv6Frame::udp(
        ROUTER_MAC,
        EXT_MAC,
        (client, port),
        (VIP6, port),
        &data(len),
    )
}

fn tcp6(client: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Ipv6Frame {
    Ipv6Frame::tcp(ROUTER_MAC, EXT_MAC, (client, sport), (VIP6, dport), payload)
}

fn esp6(client: Ipv6Addr, seq: u32) -> Ipv6Frame {
    Ipv6Frame::raw(
        ROUTER_MAC,
        EXT_MAC,
        client,
        VIP6,
        PROTO_ESP,
        &esp_body(0xc0ffee, seq, 100),
    )
}

/// What a correct forward NAT makes of `f` for backend `id`, leaving by the interface whose
/// MAC is `smac`.
fn fwd6(f: &Ipv6Frame, id: u32, smac: [u8; 6]) -> Vec<u8> {
    f.readdressed(f.src, backend_v6(id))
        .with_hop_limit(f.hop_limit - 1)
        .with_macs(smac, backend_mac(id))
        .bytes()
}

/// The two fragments of `whole` after a correct forward NAT (the first fragment's checksum
/// covers the whole rewritten datagram).
fn fwd6_fragments(whole: &Ipv6Frame, id: u32) -> (Vec<u8>, Vec<u8>) {
    let out = whole
        .readdressed(whole.src, backend_v6(id))
        .with_hop_limit(whole.hop_limit - 1)
        .with_macs(INT_MAC, backend_mac(id));
    let (a, b) = out.fragments(FRAG_LEN, 0x5eed);
    (a.bytes(), b.bytes())
}

fn rev6(f: &Ipv6Frame) -> Vec<u8> {
    f.readdressed(VIP6, f.dst)
        .with_hop_limit(f.hop_limit - 1)
        .with_macs(EXT_MAC, ROUTER_MAC)
        .bytes()
}

fn udp_from_backend6(id: u32, sport: u16, client: Ipv6Addr, len: usize) -> Ipv6Frame {
    Ipv6Frame::udp(
        backend_mac(id),
        INT_MAC,
        (backend_v6(id), sport),
        (client, sport),
        &data(len),
    )
}

fn ring(f: &mut Fixture, a: impl Into<IpAddr>) -> u32 {
    f.ring_choice(a.into())
}

#[test]
fn ipv6_forward_path() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let (a, b, c, d) = (ring(lb, A6), ring(lb, B6), ring(lb, C6), ring(lb, D6));

        let init = udp6(A6, 500, 300);
        let auth = udp6(A6, 4500, 400);
        let zero = udp6(A6, 4500, 100).with_udp_checksum(0);
        let esp = esp6(A6, 1);
        let syn = tcp6(A6, 50_000, 443, &[]);
        let sstp = tcp6(A6, 50_000, 443, TLS);
        // B6's IKE_AUTH with certificates, fragmented by its stack.
        let big = udp6(B6, 4500, 3000);
        let (f1, f2) = big.fragments(FRAG_LEN, 0x5eed);
        let (f1_out, f2_out) = fwd6_fragments(&big, b);
        // C6 is first seen through a non-first fragment: steered by its address alone.
        let (_, c_f2) = udp6(C6, 4500, 3000).fragments(FRAG_LEN, 0x5eed);
        // A large SSTP segment, fragmented (RFC 8200 §5 lets a source fragment TCP too).
        let tbig = tcp6(D6, 50_001, 443, &data(2000));
        let (t1, t2) = tbig.fragments(FRAG_LEN, 0x5eed);
        let (t1_out, t2_out) = fwd6_fragments(&tbig, d);
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
            .fragments(FRAG_LEN, 7);
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

        #[rustfmt::skip]
        let rows = vec![
            case("UDP 500 to the VIP", init.bytes(), Expect::Redirect(fwd6(&init, a, INT_MAC)), counter::FORWARD),
            case("UDP 4500, same client", auth.bytes(), Expect::Redirect(fwd6(&auth, a, INT_MAC)), counter::FORWARD),
            case("UDP checksum 0 stays 0 (invalid in IPv6, never made valid)", zero.bytes(), Expect::Redirect(fwd6(&zero, a, INT_MAC)), counter::FORWARD),
            case("ESP, same client", esp.bytes(), Expect::Redirect(fwd6(&esp, a, INT_MAC)), counter::FORWARD),
            case("TCP 443 SYN, same client", syn.bytes(), Expect::Redirect(fwd6(&syn, a, INT_MAC)), counter::FORWARD),
            case("TCP 443 data, same client", sstp.bytes(), Expect::Redirect(fwd6(&sstp, a, INT_MAC)), counter::FORWARD),
            case("first fragment", f1.bytes(), Expect::Redirect(f1_out), counter::FORWARD),
            case("non-first fragment", f2.bytes(), Expect::Redirect(f2_out), counter::FORWARD),
            case("non-first fragment of a new client", c_f2.bytes(), Expect::Redirect(fwd6(&c_f2, c, INT_MAC)), counter::FORWARD),
            case("TCP first fragment", t1.bytes(), Expect::Redirect(t1_out), counter::FORWARD),
            case("TCP non-first fragment", t2.bytes(), Expect::Redirect(t2_out), counter::FORWARD),
            case("Destination Options walked", dest.bytes(), Expect::Redirect(fwd6(&dest, a, INT_MAC)), counter::FORWARD),
            case("Hop-by-Hop walked", hop.bytes(), Expect::Redirect(fwd6(&hop, a, INT_MAC)), counter::FORWARD),
            case("Routing, segments left 0, walked", routed.bytes(), Expect::Redirect(fwd6(&routed, a, INT_MAC)), counter::FORWARD),
            case("atomic fragment (RFC 6946)", atomic.bytes(), Expect::Redirect(fwd6(&atomic, a, INT_MAC)), counter::FORWARD),
            case("four extension headers walked", chain.bytes(), Expect::Redirect(fwd6(&chain, a, INT_MAC)), counter::FORWARD),
            case("Routing with segments left", waypoint.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("AH", ah.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("Hop-by-Hop not first", late_hop.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("five extension headers", too_long.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("non-first fragment starting with options", opts_f2.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("another UDP port to the VIP", Ipv6Frame::udp(ROUTER_MAC, EXT_MAC, (A6, 5000), (VIP6, 53), &data(20)).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("TCP 80 to the VIP", tcp6(A6, 50_002, 80, &[]).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("no next header to the VIP", Ipv6Frame::raw(ROUTER_MAC, EXT_MAC, A6, VIP6, NEXT_NONE, &[]).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("ICMPv6 echo to the VIP", echo.bytes(), Expect::Pass, counter::PASS_ICMPV6),
            case("neighbour solicitation for the VIP", neighbour_solicitation(ROUTER_MAC, A6, VIP6), Expect::Pass, counter::PASS_ICMPV6),
            case("hop limit 1", udp6(A6, 500, 50).with_hop_limit(1).bytes(), Expect::Pass, counter::PASS_TTL),
            case("not to a VIP", Ipv6Frame::udp(ROUTER_MAC, EXT_MAC, (A6, 500), (Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x11), 500), &data(20)).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
        ];
        lb.check(&rows);

        // New clients are on probation; one seen only through a non-first fragment has no
        // entry at all.
        for (client, id) in [(A6, a), (B6, b), (D6, d)] {
            let e = lb.probation(client.into()).expect("a probation entry");
            assert_eq!((e.backend, e.client_mac, e.port), (id, ROUTER_MAC, 0));
            assert_eq!(lb.persisted(client.into()), None, "not established");
        }
        assert_eq!(
            (lb.persisted(C6.into()), lb.probation(C6.into())),
            (None, None)
        );
        assert_eq!(lb.persisted(VIP4.into()), None);
        // Per-backend traffic: every forwarded frame of A6, by its length.
        let a_frames = [
            &init, &auth, &zero, &esp, &syn, &sstp, &dest, &hop, &routed, &atomic, &chain,
        ];
        let a_bytes: u64 = a_frames.iter().map(|f| f.bytes().len() as u64).sum();
        let mut want = [Traffic::default(); 7];
        want[a as usize].packets += a_frames.len() as u64;
        want[a as usize].bytes += a_bytes;
        for (id, frames) in [(b, [&f1, &f2]), (d, [&t1, &t2])] {
            want[id as usize].packets += 2;
            want[id as usize].bytes += frames.iter().map(|f| f.bytes().len() as u64).sum::<u64>();
        }
        want[c as usize].packets += 1;
        want[c as usize].bytes += c_f2.bytes().len() as u64;
        for id in 4..=6 {
            assert_eq!(
                lb.traffic(id, DIR_FORWARD),
                want[id as usize],
                "backend {id} forward traffic"
            );
        }
    });
}

#[test]
fn ipv6_malformed_and_truncated_frames_are_never_forwarded() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let good = udp6(A6, 500, 64).bytes();
        let ip = IP6_OFFSET;
        let l4 = IP6_OFFSET + IP6_LEN;
        let set_payload_len = |f: &mut Vec<u8>, n: usize| {
            f[ip + 4..ip + 6].copy_from_slice(&(n as u16).to_be_bytes());
        };

        let mut version4 = good.clone();
        version4[ip] = 0x40;
        let mut too_long = good.clone();
        set_payload_len(&mut too_long, good.len() - l4 + 1);
        // A UDP header cut after 4 bytes, consistently.
        let mut udp_cut = good[..l4 + 4].to_vec();
        set_payload_len(&mut udp_cut, 4);
        // The same with Ethernet padding: the header "fits" the frame, not the datagram.
        let mut udp_cut_padded = udp_cut.clone();
        udp_cut_padded.resize(l4 + 40, 0);
        let syn = tcp6(A6, 50_000, 443, &[]).bytes();
        let mut tcp_cut = syn[..l4 + 12].to_vec();
        set_payload_len(&mut tcp_cut, 12);
        let mut tcp_cut_padded = tcp_cut.clone();
        tcp_cut_padded.resize(l4 + 40, 0);
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
        set_payload_len(&mut frag_cut, 4);
        // A first fragment too short to hold the UDP header (RFC 7112 forbids it).
        let mut tiny_first = frag.bytes()[..l4 + 8 + 4].to_vec();
        set_payload_len(&mut tiny_first, 12);

        #[rustfmt::skip]
        let rows = vec![
            case("IPv6 header truncated", good[..ip + 20].to_vec(), Expect::Drop, counter::DROP_MALFORMED),
            case("Ethernet header only", good[..ip].to_vec(), Expect::Drop, counter::DROP_MALFORMED),
            case("version 4 in an IPv6 ethertype", version4, Expect::Drop, counter::DROP_MALFORMED),
            case("payload length beyond the frame", too_long, Expect::Drop, counter::DROP_MALFORMED),
            case("UDP header truncated", udp_cut, Expect::Drop, counter::DROP_MALFORMED),
            case("UDP header beyond the datagram", udp_cut_padded, Expect::Drop, counter::DROP_MALFORMED),
            case("TCP header truncated", tcp_cut, Expect::Drop, counter::DROP_MALFORMED),
            case("TCP header beyond the datagram", tcp_cut_padded, Expect::Drop, counter::DROP_MALFORMED),
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

#[test]
fn ipv6_reverse_path() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let a = ring(lb, A6);
        let other = if a == 4 { 5 } else { 4 };
        let init = udp6(A6, 500, 300);
        // A client without any entry whose ring slot names another backend than `a`.
        let stranger = (1..=250u16)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x100 + i))
            .find(|&c| ring(lb, c) != a)
            .unwrap();

        let reply = udp_from_backend6(a, 500, A6, 200);
        let nat_t = udp_from_backend6(a, 4500, A6, 90);
        let zero = udp_from_backend6(a, 4500, A6, 90).with_udp_checksum(0);
        let big = udp_from_backend6(a, 4500, A6, 2000);
        let (f1, f2) = big.fragments(FRAG_LEN, 3);
        let out = big
            .readdressed(VIP6, A6)
            .with_hop_limit(63)
            .with_macs(EXT_MAC, ROUTER_MAC);
        let (f1_out, f2_out) = out.fragments(FRAG_LEN, 3);
        let esp = Ipv6Frame::raw(
            backend_mac(a),
            INT_MAC,
            backend_v6(a),
            A6,
            PROTO_ESP,
            &esp_body(0xc0ffee, 7, 100),
        );
        let tcp = Ipv6Frame::tcp(
            backend_mac(a),
            INT_MAC,
            (backend_v6(a), 443),
            (A6, 50_000),
            TLS,
        );
        let ns = neighbour_solicitation(
            backend_mac(a),
            backend_v6(a),
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
        );

        #[rustfmt::skip]
        let rows = vec![
            case("client's IKE_SA_INIT", init.bytes(), Expect::Redirect(fwd6(&init, a, INT_MAC)), counter::FORWARD),
            case("backend reply from 500", reply.bytes(), Expect::Redirect(rev6(&reply)), counter::REVERSE),
            case("backend reply from 4500", nat_t.bytes(), Expect::Redirect(rev6(&nat_t)), counter::REVERSE),
            case("backend reply, UDP checksum 0", zero.bytes(), Expect::Redirect(rev6(&zero)), counter::REVERSE),
            case("backend reply, first fragment", f1.bytes(), Expect::Redirect(f1_out.bytes()), counter::REVERSE),
            case("backend reply, non-first fragment", f2.bytes(), Expect::Redirect(f2_out.bytes()), counter::REVERSE),
            case("backend ESP", esp.bytes(), Expect::Redirect(rev6(&esp)), counter::REVERSE),
            case("backend SSTP from 443", tcp.bytes(), Expect::Redirect(rev6(&tcp)), counter::REVERSE),
            case("backend to a non-client of its ring slot", udp_from_backend6(a, 4500, stranger, 40).bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("another backend to the client", udp_from_backend6(other, 4500, A6, 40).bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("backend from another port", Ipv6Frame::udp(backend_mac(a), INT_MAC, (backend_v6(a), 22), (A6, 40_000), &data(40)).bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
            case("backend's neighbour solicitation", ns, Expect::Pass, counter::PASS_ICMPV6),
            case("backend reply, hop limit 1", udp_from_backend6(a, 4500, A6, 40).with_hop_limit(1).bytes(), Expect::Pass, counter::PASS_TTL),
            case("backend reply behind AH", udp_from_backend6(a, 4500, A6, 40).with_ext(Ext::Raw { kind: NEXT_AUTH }).bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("not from a backend", Ipv6Frame::udp(ROUTER_MAC, INT_MAC, (Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x99), 4500), (A6, 4500), &data(40)).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
        ];
        lb.check(&rows);
        let sent: u64 = [&reply, &nat_t, &zero, &f1, &f2, &esp, &tcp]
            .iter()
            .map(|f| f.bytes().len() as u64)
            .sum();
        assert_eq!(
            lb.traffic(a, DIR_REVERSE),
            Traffic {
                packets: 7,
                bytes: sent
            }
        );
    });
}

/// SSTP fallback over IPv4: TCP 443 joins the client's UDP persistence entry, both ways.
#[test]
fn ipv4_tcp_joins_the_persistency_group() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let a = ring(lb, A4);
        let b = ring(lb, B4);
        let fwd = |f: &Ipv4Frame, id: u32| {
            f.readdressed(f.src, backend_v4(id))
                .with_ttl(f.ttl - 1)
                .with_macs(INT_MAC, backend_mac(id))
                .bytes()
        };
        let rev = |f: &Ipv4Frame| {
            f.readdressed(VIP4, f.dst)
                .with_ttl(f.ttl - 1)
                .with_macs(EXT_MAC, ROUTER_MAC)
                .bytes()
        };
        let init = Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (A4, 500), (VIP4, 500), &data(200));
        let syn = Ipv4Frame::tcp(ROUTER_MAC, EXT_MAC, (A4, 50_000), (VIP4, 443), &[]);
        let sstp = Ipv4Frame::tcp(ROUTER_MAC, EXT_MAC, (A4, 50_000), (VIP4, 443), TLS);
        let big = Ipv4Frame::tcp(ROUTER_MAC, EXT_MAC, (B4, 50_001), (VIP4, 443), &data(2500));
        let (t1, t2) = big.fragments(FRAG_LEN4);
        let big_out = big
            .readdressed(B4, backend_v4(b))
            .with_ttl(63)
            .with_macs(INT_MAC, backend_mac(b));
        let (t1_out, t2_out) = big_out.fragments(FRAG_LEN4);
        let reply = Ipv4Frame::tcp(
            backend_mac(a),
            INT_MAC,
            (backend_v4(a), 443),
            (A4, 50_000),
            TLS,
        );
        let ssh = Ipv4Frame::tcp(
            backend_mac(a),
            INT_MAC,
            (backend_v4(a), 22),
            (A4, 50_000),
            TLS,
        );
        let mut tcp_cut = syn.bytes()[..14 + 20 + 12].to_vec();
        tcp_cut[16..18].copy_from_slice(&32u16.to_be_bytes());
        ikelb_tests::packet::fix_ipv4_checksum(&mut tcp_cut);

        #[rustfmt::skip]
        let rows = vec![
            case("UDP 500", init.bytes(), Expect::Redirect(fwd(&init, a)), counter::FORWARD),
            case("TCP 443 SYN, same backend", syn.bytes(), Expect::Redirect(fwd(&syn, a)), counter::FORWARD),
            case("TCP 443 data", sstp.bytes(), Expect::Redirect(fwd(&sstp, a)), counter::FORWARD),
            case("TCP first fragment", t1.bytes(), Expect::Redirect(t1_out.bytes()), counter::FORWARD),
            case("TCP non-first fragment", t2.bytes(), Expect::Redirect(t2_out.bytes()), counter::FORWARD),
            case("backend's TCP 443 reply", reply.bytes(), Expect::Redirect(rev(&reply)), counter::REVERSE),
            case("backend's TCP from another port", ssh.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
            case("TCP 80 to the VIP", Ipv4Frame::tcp(ROUTER_MAC, EXT_MAC, (A4, 50_002), (VIP4, 80), &[]).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("TCP header truncated", tcp_cut, Expect::Drop, counter::DROP_MALFORMED),
        ];
        lb.check(&rows);
        assert_eq!(lb.probation(B4.into()).map(|e| e.backend), Some(b));
    });
}

/// Without `tcp_ports`, TCP (whole or fragment) is not ikelb's; without `esp`, ESP is not.
#[test]
fn tcp_and_esp_only_when_configured() {
    Fixture::both_fast_paths(
        Setup {
            tcp: false,
            esp: false,
            ..Setup::default()
        },
        |lb| {
            let syn4 = Ipv4Frame::tcp(ROUTER_MAC, EXT_MAC, (A4, 50_000), (VIP4, 443), &[]);
            let (_, t2) =
                Ipv4Frame::tcp(ROUTER_MAC, EXT_MAC, (A4, 50_000), (VIP4, 443), &data(2500))
                    .fragments(FRAG_LEN4);
            let esp4 = Ipv4Frame::raw(
                ROUTER_MAC,
                EXT_MAC,
                A4,
                VIP4,
                PROTO_ESP,
                &esp_body(1, 1, 64),
            );
            let (_, t2_6) = tcp6(A6, 50_000, 443, &data(2000)).fragments(FRAG_LEN, 1);
            #[rustfmt::skip]
        let rows = vec![
            case("IPv4 TCP 443", syn4.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("IPv4 TCP non-first fragment", t2.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("IPv4 ESP", esp4.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("IPv6 TCP 443", tcp6(A6, 50_000, 443, &[]).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("IPv6 TCP non-first fragment", t2_6.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("IPv6 ESP", esp6(A6, 1).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
        ];
            lb.check(&rows);
        },
    );
}

/// ESP follows the client's UDP entry in every mode and both families: NAT two-arm, one-arm
/// (XDP_TX both ways) and DSR (MACs and hop limit only, no reverse path).
#[test]
fn esp_in_every_mode() {
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
        Fixture::both_fast_paths(setup, |lb| {
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
            let a6 = ring(lb, A6);
            let a4 = ring(lb, A4);
            let v6 = |f: &Ipv6Frame, id: u32| {
                if dsr {
                    f.clone()
                        .with_hop_limit(f.hop_limit - 1)
                        .with_macs(smac, backend_mac(id))
                        .bytes()
                } else {
                    fwd6(f, id, smac)
                }
            };
            let v4 = |f: &Ipv4Frame, id: u32| {
                let dst = if dsr { f.dst } else { backend_v4(id) };
                f.readdressed(f.src, dst)
                    .with_ttl(f.ttl - 1)
                    .with_macs(smac, backend_mac(id))
                    .bytes()
            };
            let init6 = udp6(A6, 500, 100);
            let esp6a = esp6(A6, 2);
            let (e1, e2) = Ipv6Frame::raw(
                ROUTER_MAC,
                EXT_MAC,
                A6,
                VIP6,
                PROTO_ESP,
                &esp_body(5, 3, 2000),
            )
            .fragments(FRAG_LEN, 11);
            let init4 = Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (A4, 500), (VIP4, 500), &data(100));
            let esp4 = Ipv4Frame::raw(
                ROUTER_MAC,
                EXT_MAC,
                A4,
                VIP4,
                PROTO_ESP,
                &esp_body(5, 3, 100),
            );
            let back6 = Ipv6Frame::raw(
                backend_mac(a6),
                smac,
                backend_v6(a6),
                A6,
                PROTO_ESP,
                &esp_body(6, 1, 80),
            );
            let back4 = Ipv4Frame::raw(
                backend_mac(a4),
                smac,
                backend_v4(a4),
                A4,
                PROTO_ESP,
                &esp_body(6, 1, 80),
            );
            let mode = format!("{topology:?}{}", if dsr { " DSR" } else { " NAT" });
            let mut rows: Vec<Case> = vec![
                case(
                    format!("{mode}: IPv6 UDP 500"),
                    init6.bytes(),
                    wrap(v6(&init6, a6)),
                    counter::FORWARD,
                ),
                case(
                    format!("{mode}: IPv6 ESP"),
                    esp6a.bytes(),
                    wrap(v6(&esp6a, a6)),
                    counter::FORWARD,
                ),
                case(
                    format!("{mode}: IPv6 ESP first fragment"),
                    e1.bytes(),
                    wrap(v6(&e1, a6)),
                    counter::FORWARD,
                ),
                case(
                    format!("{mode}: IPv6 ESP non-first fragment"),
                    e2.bytes(),
                    wrap(v6(&e2, a6)),
                    counter::FORWARD,
                ),
                case(
                    format!("{mode}: IPv4 UDP 500"),
                    init4.bytes(),
                    wrap(v4(&init4, a4)),
                    counter::FORWARD,
                ),
                case(
                    format!("{mode}: IPv4 ESP"),
                    esp4.bytes(),
                    wrap(v4(&esp4, a4)),
                    counter::FORWARD,
                ),
            ];
            if dsr {
                // Backends answer clients from the VIP themselves; their own address is not ikelb's.
                rows.push(case(
                    format!("{mode}: IPv6 backend ESP"),
                    back6.bytes(),
                    Expect::Pass,
                    counter::PASS_NOT_VIP,
                ));
                rows.push(case(
                    format!("{mode}: IPv4 backend ESP"),
                    back4.bytes(),
                    Expect::Pass,
                    counter::PASS_NOT_VIP,
                ));
            } else {
                let r6 = back6
                    .readdressed(VIP6, A6)
                    .with_hop_limit(63)
                    .with_macs(EXT_MAC, ROUTER_MAC)
                    .bytes();
                let r4 = back4
                    .readdressed(VIP4, A4)
                    .with_ttl(63)
                    .with_macs(EXT_MAC, ROUTER_MAC)
                    .bytes();
                rows.push(case(
                    format!("{mode}: IPv6 backend ESP"),
                    back6.bytes(),
                    wrap(r6),
                    counter::REVERSE,
                ));
                rows.push(case(
                    format!("{mode}: IPv4 backend ESP"),
                    back4.bytes(),
                    wrap(r4),
                    counter::REVERSE,
                ));
            }
            lb.check(&rows);
        });
    }
}

/// DSR over IPv6: UDP, TCP and ESP keep their addresses (the backend holds the VIP).
#[test]
fn ipv6_dsr_rewrites_macs_and_hop_limit_only() {
    Fixture::both_fast_paths(
        Setup {
            dsr: true,
            ..Setup::default()
        },
        |lb| {
            let a = ring(lb, A6);
            let b = lb.backend(a);
            let dsr = |f: &Ipv6Frame| {
                f.clone()
                    .with_hop_limit(63)
                    .with_macs(b.smac, b.dmac)
                    .bytes()
            };
            let init = udp6(A6, 500, 100);
            let syn = tcp6(A6, 50_000, 443, &[]);
            let (f1, f2) = udp6(A6, 4500, 3000).fragments(FRAG_LEN, 4);
            #[rustfmt::skip]
        let rows = [
            case("UDP 500", init.bytes(), Expect::Redirect(dsr(&init)), counter::FORWARD),
            case("TCP 443", syn.bytes(), Expect::Redirect(dsr(&syn)), counter::FORWARD),
            case("first fragment", f1.bytes(), Expect::Redirect(dsr(&f1)), counter::FORWARD),
            case("non-first fragment", f2.bytes(), Expect::Redirect(dsr(&f2)), counter::FORWARD),
            case("backend packet", udp_from_backend6(a, 500, A6, 60).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
        ];
            lb.check(&rows);
        },
    );
}

/// A ring naming an IPv6 backend whose slot was never written drops as `bad_backend`.
#[test]
fn ipv6_missing_backend_drops() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let a = ring(lb, A6);
        // The ring still names backend `a`, but its slot was never written.
        lb.set_backend(a, lb_common::Backend::default());
        #[rustfmt::skip]
        let rows = [case("ring names a missing backend", udp6(A6, 500, 50).bytes(), Expect::Drop, counter::DROP_BAD_BACKEND)];
        lb.check(&rows);
        assert_eq!(lb.persisted(A6.into()), None);
    });
}
