//! What a router checks before it forwards (RFC 1812, RFC 8200, RFC 4291; `lb-ebpf/src/sanity.rs`,
//! docs/security.md "What a router checks"), through `BPF_PROG_TEST_RUN` on the real-interface
//! fixture of `ikelb_tests::xdp` (`ext` clients, `int` backends), every table with the slot fast
//! path off and on:
//!
//! * the IPv4 header checksum (`drop/ip_checksum`; IPv6 has none);
//! * sources that cannot be a client, by reason — and never an entry for them; the backend's
//!   replies to such addresses are not rewritten either;
//! * the destination MAC: the receiving interface's, never broadcast, multicast or another
//!   host's, both ways;
//! * lengths: UDP length, TCP data offset, fragments ending past 65,535 bytes; bytes past the
//!   datagram are cut off from what is forwarded (padding included) and left on what is passed;
//! * the reverse path only on an interface with the `backends` role.
//!
//! The first frame of several rows is the one the review found forwarded (hex as it was
//! given). Needs root (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::HashMap;
use ikelb_tests::{
    packet::{
        fix_ipv4_checksum, icmp_frag_needed, ike_message, with_ip_option, Ipv4Frame, TcpFlags,
        PROTO_ESP, PROTO_UDP,
    },
    packet6::{esp_body, icmpv6_error, Ext, IpFrame, Ipv6Frame},
    xdp::{
        backend_mac, backend_v4, backend_v6, case, Case, Expect, Fixture, Setup, Side, EXT_MAC,
        INT_MAC, PORT_EXT, ROUTER_MAC, VIP4, VIP6,
    },
};
use lb_common::{counter, event, maps, DIR_FORWARD, DIR_REVERSE, OWN_ADDRESS_ID};

/// A MAC that is no interface's, router's or backend's.
const STRANGER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x0e];
/// The gateway's address on `ext` (the fixture's namespace), listed as its own.
const OWN4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OWN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 1);

fn c4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i)
}

fn c6(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10 + i)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// IKE_SA_INIT request (responder SPI 0): what would create a probation entry.
fn sa_init(spi: u64) -> Vec<u8> {
    ike_message(spi, 0, 34, 0x08, 100)
}

fn udp4(src: Ipv4Addr, port: u16, payload: &[u8]) -> Ipv4Frame {
    Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (src, port), (VIP4, port), payload)
}

fn udp6(src: Ipv6Addr, port: u16, payload: &[u8]) -> Ipv6Frame {
    Ipv6Frame::udp(ROUTER_MAC, EXT_MAC, (src, port), (VIP6, port), payload)
}

fn esp4(src: Ipv4Addr) -> Ipv4Frame {
    let body = esp_body(7, 1, 60);
    Ipv4Frame::raw(ROUTER_MAC, EXT_MAC, src, VIP4, PROTO_ESP, &body)
}

fn esp6(src: Ipv6Addr) -> Ipv6Frame {
    let body = esp_body(7, 1, 60);
    Ipv6Frame::raw(ROUTER_MAC, EXT_MAC, src, VIP6, PROTO_ESP, &body)
}

/// A TCP segment from `src`:50000 to the VIP's 443.
fn tcp4(src: Ipv4Addr, seq: u32, ack: u32, flags: TcpFlags) -> Ipv4Frame {
    let (from, to) = ((src, 50_000), (VIP4, 443));
    Ipv4Frame::tcp_segment(ROUTER_MAC, EXT_MAC, from, to, seq, ack, flags, &[])
}

fn syn4(src: Ipv4Addr) -> Ipv4Frame {
    tcp4(src, 0x0102_0304, 0, TcpFlags::SYN)
}

/// A correct forward NAT of `f` toward backend `id` (out of `int`).
fn fwd4(f: &Ipv4Frame, id: u32) -> Vec<u8> {
    f.readdressed(f.src, backend_v4(id))
        .with_ttl(f.ttl - 1)
        .with_macs(INT_MAC, backend_mac(id))
        .bytes()
}

fn fwd6(f: &Ipv6Frame, id: u32) -> Vec<u8> {
    f.readdressed(f.src, backend_v6(id))
        .with_hop_limit(f.hop_limit - 1)
        .with_macs(INT_MAC, backend_mac(id))
        .bytes()
}

/// Backend `id`'s IKE_SA_INIT response from 500 to `client`, to the gateway's `int` MAC.
fn reply4(id: u32, client: Ipv4Addr) -> Ipv4Frame {
    let (ike, from) = (ike_message(9, 0x77, 34, 0x20, 80), (backend_v4(id), 500));
    Ipv4Frame::udp(backend_mac(id), INT_MAC, from, (client, 500), &ike)
}

fn reply6(id: u32, client: Ipv6Addr) -> Ipv6Frame {
    let (ike, from) = (ike_message(9, 0x77, 34, 0x20, 80), (backend_v6(id), 500));
    Ipv6Frame::udp(backend_mac(id), INT_MAC, from, (client, 500), &ike)
}

/// A correct reverse NAT of `f` (source VIP, out of `ext` toward the clients' router).
fn rev4(f: &Ipv4Frame) -> Vec<u8> {
    f.readdressed(VIP4, f.dst)
        .with_ttl(f.ttl - 1)
        .with_macs(EXT_MAC, ROUTER_MAC)
        .bytes()
}

fn rev6(f: &Ipv6Frame) -> Vec<u8> {
    f.readdressed(VIP6, f.dst)
        .with_hop_limit(f.hop_limit - 1)
        .with_macs(EXT_MAC, ROUTER_MAC)
        .bytes()
}

/// A row whose frame is dropped for `reason` and leaves no trace: no event (no entry made).
fn dropped(name: impl Into<String>, frame: Vec<u8>, reason: u32) -> Case {
    case(name, frame, Expect::Drop, reason).events(&[])
}

fn ring(lb: &mut Fixture, a: impl Into<IpAddr>) -> u32 {
    lb.ring_choice(a.into())
}

/// `BACKEND_IDS_V4/V6[own] = OWN_ADDRESS_ID`: the gateway's own addresses, as the control plane
/// lists them.
fn list_own(lb: &mut Fixture) {
    let mut v4: HashMap<_, u32, u32> = lb.map(maps::BACKEND_IDS_V4);
    v4.insert(u32::from_ne_bytes(OWN4.octets()), OWN_ADDRESS_ID, 0)
        .unwrap();
    let mut v6: HashMap<_, [u32; 4], u32> = lb.map(maps::BACKEND_IDS_V6);
    let w = ikelb_tests::xdp::words(OWN6.into());
    v6.insert(w, OWN_ADDRESS_ID, 0).unwrap();
}

/// Neither tier holds an entry for any of `addrs`.
fn assert_no_entries(lb: &mut Fixture, addrs: &[IpAddr]) {
    for &a in addrs {
        assert_eq!(
            (lb.persisted(a), lb.probation(a)),
            (None, None),
            "{a} got an entry"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// IPv4 header checksum

#[test]
fn ipv4_header_checksum_is_verified_both_ways() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c4(1);
        let b = ring(lb, c);
        let init = udp4(c, 500, &sa_init(1));
        let mut bad = init.bytes();
        bad[14 + 10] ^= 0x01;
        let rc = c4(2);
        let rb = ring(lb, rc);
        let mut bad_reply = reply4(rb, rc).bytes();
        bad_reply[14 + 11] ^= 0x80;
        let mut bad_options = with_ip_option(&init.bytes());
        bad_options[14 + 10] ^= 0x01;
        let mut bad_not_vip = Ipv4Frame::udp(
            ROUTER_MAC,
            EXT_MAC,
            (c, 500),
            (Ipv4Addr::new(203, 0, 113, 99), 500),
            &data(20),
        )
        .bytes();
        bad_not_vip[14 + 10] ^= 0x01;
        // ESP from 198.51.108.5, a 20-byte datagram whose checksum is 0x023f (right: 0x8b3f).
        let reviewer = hex("02000000e001020000000101080045000014123400004032023fc6336c05cb00710a");
        #[rustfmt::skip]
        let rows = [
            case("review: ESP with a wrong header checksum", reviewer, Expect::Drop, counter::DROP_IP_CHECKSUM).events(&[]),
            case("IKE_SA_INIT, checksum off by one", bad, Expect::Drop, counter::DROP_IP_CHECKSUM).events(&[]),
            case("backend reply, checksum wrong", bad_reply, Expect::Drop, counter::DROP_IP_CHECKSUM).events(&[]),
            case("IP options, checksum wrong: the kernel's", bad_options, Expect::Pass, counter::PASS_IP_OPTIONS),
            case("not to a VIP, checksum wrong: the kernel's", bad_not_vip, Expect::Pass, counter::PASS_NOT_VIP),
            case("the same IKE_SA_INIT, checksum right", init.bytes(), Expect::Redirect(fwd4(&init, b)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
        ];
        lb.check(&rows);
        assert_no_entries(lb, &[Ipv4Addr::new(198, 51, 108, 5).into()]);
    });
}

// ---------------------------------------------------------------------------------------------
// Sources that cannot be a client

#[test]
fn ipv4_sources_that_cannot_be_clients_are_dropped_by_reason() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        list_own(lb);
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let sources = [
            (a("0.0.0.0"), counter::DROP_SOURCE_UNSPECIFIED),
            (a("0.1.2.3"), counter::DROP_SOURCE_MARTIAN),
            (a("240.0.0.1"), counter::DROP_SOURCE_MARTIAN),
            (a("255.255.255.254"), counter::DROP_SOURCE_MARTIAN),
            (a("255.255.255.255"), counter::DROP_SOURCE_MULTICAST),
            (a("224.0.0.5"), counter::DROP_SOURCE_MULTICAST),
            (a("127.0.0.1"), counter::DROP_SOURCE_LOOPBACK),
            (a("127.255.0.9"), counter::DROP_SOURCE_LOOPBACK),
            (VIP4, counter::DROP_SOURCE_VIP),
            (backend_v4(1), counter::DROP_SOURCE_BACKEND),
            (backend_v4(3), counter::DROP_SOURCE_BACKEND),
            (OWN4, counter::DROP_SOURCE_OWN),
        ];
        // ESP from 239.255.255.250 (SSDP's group).
        let review = hex("02000000e0010200000001010800450000141234000040323c7feffffffacb00710a");
        // A non-first fragment from a backend: no entry, so the lookup a new client meets.
        let (_, tail) = udp4(backend_v4(2), 4500, &data(200)).fragments(96);
        // ICMP "fragmentation needed" to the VIP about one of its replies.
        let quoted = Ipv4Frame::udp(EXT_MAC, ROUTER_MAC, (VIP4, 500), (c4(3), 500), &data(40));
        let frag_needed = |src| icmp_frag_needed(ROUTER_MAC, EXT_MAC, src, VIP4, &quoted, 8, 1400);
        // A client still gets through (the rows above fail for their source alone).
        let c = c4(4);
        let init = udp4(c, 500, &sa_init(99));
        let b = ring(lb, c);
        #[rustfmt::skip]
        let rows: Vec<Case> = sources.iter().enumerate().flat_map(|(i, &(src, reason))| [
            dropped(format!("IKE_SA_INIT from {src}"), udp4(src, 500, &sa_init(i as u64)).bytes(), reason),
            dropped(format!("ESP from {src}"), esp4(src).bytes(), reason),
        ]).chain([
            dropped("review: ESP from a multicast source", review, counter::DROP_SOURCE_MULTICAST),
            dropped("non-first fragment from a backend", tail.bytes(), counter::DROP_SOURCE_BACKEND),
            dropped("frag needed from a backend", frag_needed(backend_v4(1)).bytes(), counter::DROP_SOURCE_BACKEND),
            dropped("frag needed from 127.0.0.1", frag_needed(a("127.0.0.1")).bytes(), counter::DROP_SOURCE_LOOPBACK),
            case("IKE_SA_INIT from a client", init.bytes(), Expect::Redirect(fwd4(&init, b)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
        ]).collect();
        lb.check(&rows);
        let mut addrs: Vec<IpAddr> = sources.iter().map(|&(a, _)| a.into()).collect();
        addrs.extend([IpAddr::from(a("239.255.255.250")), backend_v4(2).into()]);
        assert_no_entries(lb, &addrs);

        // The backend's replies to such addresses are never rewritten: martians are dropped,
        // backends and the gateway itself are the kernel's.
        let r = |dst: &str| reply4(1, a(dst)).bytes();
        #[rustfmt::skip]
        let rows = [
            case("reply to 240.0.0.1", r("240.0.0.1"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to 127.0.0.1", r("127.0.0.1"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to 224.0.0.5", r("224.0.0.5"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to 255.255.255.255", r("255.255.255.255"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to 0.0.0.0", r("0.0.0.0"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to another backend", r("10.0.0.12"), Expect::Pass, counter::PASS_NOT_CLIENT),
            case("reply to the gateway's own address", r("192.0.2.1"), Expect::Pass, counter::PASS_NOT_CLIENT),
        ];
        lb.check(&rows);
    });
}

#[test]
fn ipv6_sources_that_cannot_be_clients_are_dropped_by_reason() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        list_own(lb);
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let sources = [
            (a("::"), counter::DROP_SOURCE_UNSPECIFIED),
            (a("::1"), counter::DROP_SOURCE_LOOPBACK),
            (a("ff02::1"), counter::DROP_SOURCE_MULTICAST),
            (a("ff0e::1:3"), counter::DROP_SOURCE_MULTICAST),
            (a("fe80::1"), counter::DROP_SOURCE_MARTIAN),
            (a("febf::9"), counter::DROP_SOURCE_MARTIAN),
            (a("::ffff:198.51.100.7"), counter::DROP_SOURCE_MARTIAN),
            (VIP6, counter::DROP_SOURCE_VIP),
            (backend_v6(4), counter::DROP_SOURCE_BACKEND),
            (OWN6, counter::DROP_SOURCE_OWN),
        ];
        let (_, tail) = udp6(backend_v6(5), 4500, &data(200)).fragments(96, 0x77);
        let quoted = Ipv6Frame::udp(EXT_MAC, ROUTER_MAC, (VIP6, 500), (c6(3), 500), &data(40));
        let too_big = |src| icmpv6_error(ROUTER_MAC, EXT_MAC, src, VIP6, 2, 0, 1280, &quoted, 8);
        // Just past fe80::/10 and a plain global address: clients.
        let (c, c2) = (a("fec0::1"), c6(4));
        let (init, init2) = (udp6(c, 500, &sa_init(98)), udp6(c2, 500, &sa_init(97)));
        let (b, b2) = (ring(lb, c), ring(lb, c2));
        #[rustfmt::skip]
        let rows: Vec<Case> = sources.iter().enumerate().flat_map(|(i, &(src, reason))| [
            dropped(format!("IKE_SA_INIT from {src}"), udp6(src, 500, &sa_init(i as u64)).bytes(), reason),
            dropped(format!("ESP from {src}"), esp6(src).bytes(), reason),
        ]).chain([
            dropped("non-first fragment from a backend", tail.bytes(), counter::DROP_SOURCE_BACKEND),
            dropped("packet too big from a backend", too_big(backend_v6(6)).bytes(), counter::DROP_SOURCE_BACKEND),
            dropped("packet too big from ::1", too_big(a("::1")).bytes(), counter::DROP_SOURCE_LOOPBACK),
            case("IKE_SA_INIT from fec0::1", init.bytes(), Expect::Redirect(fwd6(&init, b)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
            case("IKE_SA_INIT from a client", init2.bytes(), Expect::Redirect(fwd6(&init2, b2)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
        ]).collect();
        lb.check(&rows);
        let mut addrs: Vec<IpAddr> = sources.iter().map(|&(a, _)| a.into()).collect();
        addrs.push(backend_v6(5).into());
        assert_no_entries(lb, &addrs);

        let r = |dst: &str| reply6(4, a(dst)).bytes();
        #[rustfmt::skip]
        let rows = [
            case("reply to ff02::1", r("ff02::1"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to ::1", r("::1"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to fe80::1", r("fe80::1"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to ::", r("::"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to ::ffff:198.51.100.7", r("::ffff:198.51.100.7"), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("reply to another backend", r("2001:db8:1::12"), Expect::Pass, counter::PASS_NOT_CLIENT),
            case("reply to the gateway's own address", r("2001:db8:e::1"), Expect::Pass, counter::PASS_NOT_CLIENT),
        ];
        lb.check(&rows);
    });
}

// ---------------------------------------------------------------------------------------------
// Destination MAC

#[test]
fn destination_mac_is_the_receiving_interface_s_both_ways() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c4(5);
        let b = ring(lb, c);
        let init = udp4(c, 500, &sa_init(5));
        let rc = c4(6);
        let rb = ring(lb, rc);
        let reply = reply4(rb, rc);
        let c6a = c6(5);
        let b6 = ring(lb, c6a);
        let init6 = udp6(c6a, 500, &sa_init(6));
        let rc6 = c6(6);
        let rb6 = ring(lb, rc6);
        let reply6 = reply6(rb6, rc6);
        let to = |f: Vec<u8>, mac: [u8; 6]| [&mac[..], &f[6..]].concat();
        let ip4mc = [0x01, 0, 0x5e, 0, 0, 0xfb];
        let ip6mc = [0x33, 0x33, 0, 0, 0, 1];
        #[rustfmt::skip]
        let rows = [
            case("IKE to the VIP, broadcast MAC", to(init.bytes(), [0xff; 6]), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Ext).events(&[]),
            case("IKE to the VIP, IPv4 multicast MAC", to(init.bytes(), ip4mc), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Ext).events(&[]),
            case("IKE to the VIP, another host's MAC", to(init.bytes(), STRANGER_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Ext).events(&[]),
            case("IKE to the VIP, int's MAC, on ext", to(init.bytes(), INT_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Ext).events(&[]),
            // ESP from backend 10.0.0.11 to 198.51.100.7.
            case("review: backend ESP to the broadcast MAC", hex("ffffffffffff020000000b01080045000014123400004032343f0a00000bc6336407"), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Int),
            case("backend reply, another host's MAC", to(reply.bytes(), STRANGER_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Int),
            case("backend reply, ext's MAC, on int", to(reply.bytes(), EXT_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Int),
            case("IPv6 IKE to the VIP, multicast MAC", to(init6.bytes(), ip6mc), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Ext).events(&[]),
            case("IPv6 IKE to the VIP, broadcast MAC", to(init6.bytes(), [0xff; 6]), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Ext).events(&[]),
            case("IPv6 IKE to the VIP, another host's MAC", to(init6.bytes(), STRANGER_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Ext).events(&[]),
            case("IPv6 backend reply, multicast MAC", to(reply6.bytes(), ip6mc), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Int),
            case("IPv6 backend reply, another host's MAC", to(reply6.bytes(), STRANGER_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Int),
            // To the right MACs all four go through.
            case("IKE to the VIP", init.bytes(), Expect::Redirect(fwd4(&init, b)), counter::FORWARD),
            case("backend reply", reply.bytes(), Expect::Redirect(rev4(&reply)), counter::REVERSE),
            case("IPv6 IKE to the VIP", init6.bytes(), Expect::Redirect(fwd6(&init6, b6)), counter::FORWARD),
            case("IPv6 backend reply", reply6.bytes(), Expect::Redirect(rev6(&reply6)), counter::REVERSE),
        ];
        lb.check(&rows);
    });
}

// ---------------------------------------------------------------------------------------------
// Lengths

/// `f` with the 16-bit field at `at` set to `v`.
fn set16(mut f: Vec<u8>, at: usize, v: u16) -> Vec<u8> {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    f
}

/// `f` with the TCP data offset (header at `tcp`) set to `words`.
fn set_doff(mut f: Vec<u8>, tcp: usize, words: u8) -> Vec<u8> {
    f[tcp + 12] = (words << 4) | (f[tcp + 12] & 0x0f);
    f
}

#[test]
fn ipv4_udp_tcp_and_fragment_lengths_must_agree() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        const UDP: usize = 14 + 20;
        let c = c4(7);
        let b = ring(lb, c);
        let ike = udp4(c, 4500, &data(100));
        let carried = (8 + 100) as u16;
        let big = udp4(c, 4500, &data(300));
        let (head, _) = big.fragments(96);
        let (head_out, _) = big
            .readdressed(c, backend_v4(b))
            .with_ttl(63)
            .with_macs(INT_MAC, backend_mac(b))
            .fragments(96);
        let syn = syn4(c);
        // Fragments at offset 8189 (65,512 bytes): 3 bytes end at 65,535, 4 bytes one past.
        let frag = |n: usize| Ipv4Frame {
            frag_offset: 8189,
            ..Ipv4Frame::raw(ROUTER_MAC, EXT_MAC, c, VIP4, PROTO_UDP, &data(n))
        };
        #[rustfmt::skip]
        let rows = [
            // UDP 500 → 500, length 264 in an 8-byte datagram.
            case("review: UDP length past the datagram", hex("02000000e00102000000010108004500001c1234000040110258c6336407cb00710a01f401f4010895b0"), Expect::Drop, counter::DROP_UDP_LENGTH).events(&[]),
            case("UDP length 4 (< 8)", set16(ike.bytes(), UDP + 4, 4), Expect::Drop, counter::DROP_UDP_LENGTH).events(&[]),
            case("UDP length one short of the payload", set16(ike.bytes(), UDP + 4, carried - 1), Expect::Drop, counter::DROP_UDP_LENGTH),
            case("UDP length one past the payload", set16(ike.bytes(), UDP + 4, carried + 1), Expect::Drop, counter::DROP_UDP_LENGTH),
            case("first fragment, UDP length short of what it carries", set16(head.bytes(), UDP + 4, 40), Expect::Drop, counter::DROP_UDP_LENGTH),
            // TCP 50000 → 443 SYN with data offset 4.
            case("review: TCP data offset 4", hex("02000000e001020000000101080045000028123440004006c256c6336407cb00710ac35001bb01020304000000004002faf0859a0000"), Expect::Drop, counter::DROP_TCP_DATA_OFFSET).events(&[]),
            case("TCP data offset 0", set_doff(syn.bytes(), UDP, 0), Expect::Drop, counter::DROP_TCP_DATA_OFFSET),
            case("TCP data offset 6 in a 20-byte segment", set_doff(syn.bytes(), UDP, 6), Expect::Drop, counter::DROP_TCP_DATA_OFFSET),
            case("TCP data offset 15 in a 20-byte segment", set_doff(syn.bytes(), UDP, 15), Expect::Drop, counter::DROP_TCP_DATA_OFFSET),
            // UDP, offset 0x1fff (65,528 bytes) + total length 28.
            case("review: fragment ending past 65,535", hex("02000000e00102000000010108004500001c12341fff4011e258c6336407cb00710a01f401f4000895b0"), Expect::Drop, counter::DROP_FRAGMENT_END).events(&[]),
            case("fragment ending at 65,536", frag(4).bytes(), Expect::Drop, counter::DROP_FRAGMENT_END),
            // What agrees goes through.
            case("fragment ending at 65,535", frag(3).bytes(), Expect::Redirect(fwd4(&frag(3), b)), counter::FORWARD),
            case("UDP length = payload", ike.bytes(), Expect::Redirect(fwd4(&ike, b)), counter::FORWARD),
            case("first fragment, UDP length of the datagram", head.bytes(), Expect::Redirect(head_out.bytes()), counter::FORWARD),
            case("TCP SYN, data offset 5", syn.bytes(), Expect::Redirect(fwd4(&syn, b)), counter::FORWARD),
        ];
        lb.check(&rows);
    });
}

#[test]
fn ipv6_udp_tcp_and_fragment_lengths_must_agree() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        const UDP: usize = 14 + 40;
        let c = c6(7);
        let b = ring(lb, c);
        let ike = udp6(c, 4500, &data(100));
        let carried = (8 + 100) as u16;
        let big = udp6(c, 4500, &data(300));
        let (head, _) = big.fragments(96, 0x66);
        let (head_out, _) = big
            .readdressed(c, backend_v6(b))
            .with_hop_limit(63)
            .with_macs(INT_MAC, backend_mac(b))
            .fragments(96, 0x66);
        let syn = Ipv6Frame::tcp(ROUTER_MAC, EXT_MAC, (c, 50_000), (VIP6, 443), &[]);
        // Fragments at offset 8191 (65,528 bytes): 7 bytes end at 65,535, 8 one past.
        let frag = |n: usize| {
            Ipv6Frame::raw(ROUTER_MAC, EXT_MAC, c, VIP6, PROTO_UDP, &data(n)).with_ext(
                Ext::Fragment {
                    offset: 8191,
                    more: false,
                    id: 0x55,
                },
            )
        };
        // A first fragment whose fragmentable part starts with Destination Options.
        let (dest_first, _) = udp6(c, 4500, &data(300))
            .with_ext(Ext::Fragment {
                offset: 0,
                more: true,
                id: 0x44,
            })
            .with_ext(Ext::DestOpts { pad: 4 })
            .fragments(96, 0x44);
        #[rustfmt::skip]
        let rows = [
            case("UDP length 4 (< 8)", set16(ike.bytes(), UDP + 4, 4), Expect::Drop, counter::DROP_UDP_LENGTH).events(&[]),
            case("UDP length 0 (a jumbogram's, RFC 2675)", set16(ike.bytes(), UDP + 4, 0), Expect::Drop, counter::DROP_UDP_LENGTH).events(&[]),
            case("UDP length one short of the payload", set16(ike.bytes(), UDP + 4, carried - 1), Expect::Drop, counter::DROP_UDP_LENGTH),
            case("UDP length one past the payload", set16(ike.bytes(), UDP + 4, carried + 1), Expect::Drop, counter::DROP_UDP_LENGTH),
            case("first fragment, UDP length short of what it carries", set16(head.bytes(), UDP + 8 + 4, 40), Expect::Drop, counter::DROP_UDP_LENGTH),
            case("TCP data offset 4", set_doff(syn.bytes(), UDP, 4), Expect::Drop, counter::DROP_TCP_DATA_OFFSET).events(&[]),
            case("TCP data offset 15 in a 20-byte segment", set_doff(syn.bytes(), UDP, 15), Expect::Drop, counter::DROP_TCP_DATA_OFFSET),
            case("fragment ending at 65,536", frag(8).bytes(), Expect::Drop, counter::DROP_FRAGMENT_END).events(&[]),
            case("first fragment behind Destination Options: the kernel's", dest_first.bytes(), Expect::Pass, counter::PASS_IPV6_EXT),
            case("fragment ending at 65,535", frag(7).bytes(), Expect::Redirect(fwd6(&frag(7), b)), counter::FORWARD),
            case("UDP length = payload", ike.bytes(), Expect::Redirect(fwd6(&ike, b)), counter::FORWARD),
            case("first fragment, UDP length of the datagram", head.bytes(), Expect::Redirect(head_out.bytes()), counter::FORWARD),
            case("TCP SYN, data offset 5", syn.bytes(), Expect::Redirect(fwd6(&syn, b)), counter::FORWARD),
        ];
        lb.check(&rows);
    });
}

// ---------------------------------------------------------------------------------------------
// Bytes past the datagram

#[test]
fn bytes_past_the_datagram_are_cut_from_what_is_forwarded() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let trailer = |f: &[u8], n: usize| [f, &data(n)[..]].concat();
        // The review's TCP SYN (198.51.100.7:50000 → VIP:443, DF) with data offset 5 (its
        // checksum is the one of that segment): the builder's, byte for byte.
        let rc = Ipv4Addr::new(198, 51, 100, 7);
        let review = Ipv4Frame {
            dont_fragment: true,
            ..syn4(rc)
        };
        let given = hex("02000000e001020000000101080045000028123440004006c256c6336407cb00710ac35001bb01020304000000004002faf0859a0000");
        let differ: Vec<usize> = (0..54).filter(|&i| review.bytes()[i] != given[i]).collect();
        assert_eq!(differ, [46], "the data offset only");
        let review_b = ring(lb, rc);
        let c = c4(8);
        let b = ring(lb, c);
        let ack = tcp4(c, 5, 0x0102_0305, TcpFlags::ACK);
        assert_eq!(
            ack.bytes().len(),
            54,
            "a pure ACK: padded to 60 on Ethernet"
        );
        let rc2 = c4(9);
        let rb = ring(lb, rc2);
        let reply = reply4(rb, rc2);
        let c6a = c6(8);
        let b6 = ring(lb, c6a);
        let init6 = udp6(c6a, 500, &sa_init(8));
        let reply6 = reply6(ring(lb, c6(9)), c6(9));
        let not_vip = Ipv4Frame::udp(
            ROUTER_MAC,
            EXT_MAC,
            (c, 500),
            (Ipv4Addr::new(203, 0, 113, 99), 500),
            &data(8),
        );
        // ICMP errors to the VIP whose datagram ends before their quote does (the rest of the
        // quote past it): the kernel's, untouched — the exit would cut off what the rewrite fixed.
        let quoted = Ipv4Frame::udp(EXT_MAC, ROUTER_MAC, (VIP4, 500), (c, 500), &data(40));
        let mut cut4 = icmp_frag_needed(ROUTER_MAC, EXT_MAC, c4(1), VIP4, &quoted, 8, 1400).bytes();
        cut4 = set16(cut4, 14 + 2, 27);
        fix_ipv4_checksum(&mut cut4);
        let quoted6 = Ipv6Frame::udp(EXT_MAC, ROUTER_MAC, (VIP6, 500), (c6a, 500), &data(40));
        let too_big = icmpv6_error(ROUTER_MAC, EXT_MAC, c6(1), VIP6, 2, 0, 1280, &quoted6, 8);
        let cut6 = set16(too_big.bytes(), 14 + 4, 7);
        let count = |lb: &mut Fixture| {
            [
                lb.traffic(review_b, DIR_FORWARD).bytes,
                lb.traffic(b, DIR_FORWARD).bytes,
                lb.traffic(rb, DIR_REVERSE).bytes,
                lb.traffic(b6, DIR_FORWARD).bytes,
            ]
        };
        let before = count(lb);
        #[rustfmt::skip]
        let rows = [
            case("review: TCP SYN + 7 bytes", trailer(&review.bytes(), 7), Expect::Redirect(fwd4(&review, review_b)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::TRIMMED, 1)]),
            case("TCP SYN, nothing past it", syn4(c).bytes(), Expect::Redirect(fwd4(&syn4(c), b)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
            case("TCP ACK padded to 60 bytes", [&ack.bytes()[..], &[0; 6]].concat(), Expect::Redirect(fwd4(&ack, b)), counter::FORWARD)
                .events(&[(event::TRIMMED, 1)]),
            case("backend reply + 5 bytes", trailer(&reply.bytes(), 5), Expect::Redirect(rev4(&reply)), counter::REVERSE)
                .events(&[(event::REVERSE_STATELESS, 1), (event::TRIMMED, 1)]),
            case("IPv6 IKE + 64 bytes", trailer(&init6.bytes(), 64), Expect::Redirect(fwd6(&init6, b6)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::TRIMMED, 1)]),
            case("IPv6 backend reply + 1 byte", trailer(&reply6.bytes(), 1), Expect::Redirect(rev6(&reply6)), counter::REVERSE)
                .events(&[(event::REVERSE_STATELESS, 1), (event::TRIMMED, 1)]),
            case("not to a VIP + 9 bytes: the kernel's, untouched", trailer(&not_vip.bytes(), 9), Expect::Pass, counter::PASS_NOT_VIP),
            case("frag needed, quote past the datagram", cut4, Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("packet too big, quote past the packet", cut6, Expect::Pass, counter::PASS_ICMPV6),
        ];
        lb.check(&rows);
        // The backends' byte counters count what left: the frames without the extra bytes.
        let after = count(lb);
        let sent = [
            fwd4(&review, review_b).len(),
            fwd4(&syn4(c), b).len() + fwd4(&ack, b).len(),
            rev4(&reply).len(),
            fwd6(&init6, b6).len(),
        ];
        let grown: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        let sent: Vec<u64> = sent.iter().map(|&n| n as u64).collect();
        // (Backends may coincide: compare the sums per backend id.)
        let ids = [review_b, b, rb, b6];
        for (i, id) in ids.iter().enumerate() {
            let dir_of = |j: usize| if j == 2 { DIR_REVERSE } else { DIR_FORWARD };
            let want: u64 = (0..4)
                .filter(|&j| ids[j] == *id && dir_of(j) == dir_of(i))
                .map(|j| sent[j])
                .sum();
            assert_eq!(grown[i], want, "bytes counted for backend {id}");
        }
    });
}

/// What a packet says of its session is read inside its datagram only: an IKE header or an
/// ESP SPI in the bytes past it (which the exit cuts off) is no evidence. A UDP 500 datagram
/// without payload, followed by an IKE header with a responder SPI, is a new client's first
/// packet, not lost mid-session traffic; so is a one-byte datagram on 4500 followed by an SPI.
#[test]
fn session_evidence_past_the_datagram_is_not_read() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let trailing = |f: &[u8], t: &[u8]| [f, t].concat();
        let (c1, c2, c3) = (c4(30), c4(31), c6(30));
        let empty = udp4(c1, 500, &[]);
        let keepalive = udp4(c2, 4500, &[0xff]);
        let empty6 = udp6(c3, 500, &[]);
        let mid = ike_message(9, 0x77, 37, 0x08, 28);
        let spi = [0u8, 0, 0x12, 0x34, 0, 0, 0, 1];
        #[rustfmt::skip]
        let rows = [
            case("UDP 500, empty, + an IKE header with a responder SPI", trailing(&empty.bytes(), &mid), Expect::Redirect(fwd4(&empty, ring(lb, c1))), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::TRIMMED, 1)]),
            case("UDP 4500 keepalive + an ESP SPI and sequence", trailing(&keepalive.bytes(), &spi), Expect::Redirect(fwd4(&keepalive, ring(lb, c2))), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::TRIMMED, 1)]),
            case("IPv6 UDP 500, empty, + an IKE header with a responder SPI", trailing(&empty6.bytes(), &mid), Expect::Redirect(fwd6(&empty6, ring(lb, c3))), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::TRIMMED, 1)]),
        ];
        lb.check(&rows);
    });
}

// ---------------------------------------------------------------------------------------------
// Reverse path only on a backends interface

#[test]
fn backend_replies_only_on_an_interface_with_the_backends_role() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        // A backend whose next hop the daemon found on `ext`, which faces clients only.
        let ext = lb.ifindex(Side::Ext);
        for id in [1, 4] {
            let mut b = lb.backend(id);
            b.ifindex = ext;
            b.tx_port = PORT_EXT;
            b.smac = EXT_MAC;
            lb.set_backend(id, b);
        }
        let on_ext4 = reply4(1, c4(10)).with_macs(backend_mac(1), EXT_MAC);
        let on_ext6 = reply6(4, c6(10)).with_macs(backend_mac(4), EXT_MAC);
        // A client whose ring names another backend than 1: its reply goes through.
        let client = (11..60).map(c4).find(|&a| ring(lb, a) != 1).unwrap();
        let fine = reply4(ring(lb, client), client);
        #[rustfmt::skip]
        let rows = [
            case("backend reply on ext, its next hop's interface", on_ext4.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_BACKEND_IFACE).on(Side::Ext),
            case("IPv6 backend reply on ext, its next hop's interface", on_ext6.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_BACKEND_IFACE).on(Side::Ext),
            case("the same on int: not its interface", reply4(1, c4(10)).bytes(), Expect::Drop, counter::DROP_REVERSE_WRONG_IFACE).on(Side::Int),
            case("another backend's reply on int", fine.bytes(), Expect::Redirect(rev4(&fine)), counter::REVERSE).on(Side::Int),
        ];
        lb.check(&rows);
    });
}
