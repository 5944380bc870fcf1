//! What a router checks before it forwards (RFC 1812, RFC 8200, RFC 4291; `lb-ebpf/src/sanity.rs`,
//! docs/security.md "What a router checks"), through `BPF_PROG_TEST_RUN` on the real-interface
//! fixture of `ikelb_tests::xdp` (`ext` clients, `int` backends), every table with the slot fast
//! path off and on:
//!
//! * the IPv4 header checksum (`drop/ip_checksum`; IPv6 has none: an IPv4-only table);
//! * sources that cannot be a client, by reason — and never an entry for them; the backend's
//!   replies to such addresses are not rewritten either;
//! * the destination MAC: the receiving interface's, never broadcast, multicast or another
//!   host's, both ways;
//! * lengths: UDP length, TCP data offset, fragments ending past 65,535 bytes; bytes past the
//!   datagram are cut off from what is forwarded (padding included) and left on what is passed;
//! * the reverse path only on an interface with the `backends` role.
//!
//! Every table but the checksum's is written once for both families and runs as `case::ipv4`
//! and `case::ipv6` (`ikelb_tests::both_families!`). What the families do not share is data,
//! in [`RouterFamily`]: which addresses are martians (RFC 1122 §3.2.1.3 and RFC 6890 for
//! IPv4; RFC 4291 §2.5 for IPv6), the group MAC of each family's multicast (RFC 1112 §6.4,
//! RFC 2464 §7), where a fragment ends at 65,535 bytes (IPv4's total length counts its
//! header, IPv6's payload length does not); and `FixtureFamily::PASS_ICMP`, the verdict of
//! an ICMP message that is the kernel's.
//!
//! The review's frames (hex as they were given, IPv4) are rows of their tables. Needs root
//! (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::{AddrParseError, IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use aya::maps::HashMap;
use ikelb_tests::{
    both_families,
    frame::{too_big_of, ETH_LEN},
    packet::{
        ike_message, with_ip_option, IpFrame, Ipv4Frame, Mac, TcpFlags, PROTO_ESP, PROTO_UDP,
    },
    packet6::{esp_body, Ext},
    xdp::{
        backend_mac, case, forwarded, forwarded_frame, from_backend, raw_to_vip, reversed, to_vip,
        words_of, Case, Expect, Fixture, FixtureFamily, Setup, Side, EXT_MAC, INT_MAC, PORT_EXT,
        ROUTER_MAC,
    },
};
use lb_common::{counter, event, maps, Backend, DIR_FORWARD, DIR_REVERSE, OWN_ADDRESS_ID};

/// A MAC that is no interface's, router's or backend's.
const STRANGER_MAC: Mac = [0x02, 0, 0, 0, 0x0e, 0x0e];
/// The MTU the ICMP "too big" rows announce.
const MTU: u16 = 1400;

/// What a table of this file needs to know of a family beyond the fixture (module doc).
trait RouterFamily: FixtureFamily + FromStr<Err = AddrParseError> {
    /// Sources no client can have by their address class, with the reason the data path
    /// gives (the VIP, backends and the gateway's own address are added by the table).
    const MARTIANS: &'static [(&'static str, u32)];
    /// Destinations a backend's reply is dropped for.
    const MARTIAN_DESTINATIONS: &'static [&'static str];
    /// Sources at the edge of a martian range that are clients.
    const EDGE_CLIENTS: &'static [&'static str];
    /// The group MAC its multicast is sent to.
    const MULTICAST_MAC: Mac;
    /// A last fragment whose data ends at byte 65,535 of the reassembled packet: (offset in
    /// 8-byte units, bytes of data); one byte more ends past it.
    const LAST_FRAGMENT: (u16, usize);
    /// The rows only this family has in table `table` (the review's frames are IPv4), `c`
    /// its client, with the addresses they would have made entries for.
    fn family_rows(table: &str, c: Self) -> (Vec<Case>, Vec<IpAddr>);
    /// The SYN of the review's trailer row from `c`.
    fn review_syn(c: Self) -> Self::Frame;
}

fn parse<F: RouterFamily>(list: &[&str]) -> Vec<F> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

impl RouterFamily for Ipv4Addr {
    #[rustfmt::skip]
    const MARTIANS: &'static [(&'static str, u32)] = &[
        ("0.0.0.0", counter::DROP_SOURCE_UNSPECIFIED),
        ("0.1.2.3", counter::DROP_SOURCE_MARTIAN), ("240.0.0.1", counter::DROP_SOURCE_MARTIAN),
        ("255.255.255.254", counter::DROP_SOURCE_MARTIAN),
        ("255.255.255.255", counter::DROP_SOURCE_MULTICAST), ("224.0.0.5", counter::DROP_SOURCE_MULTICAST),
        ("127.0.0.1", counter::DROP_SOURCE_LOOPBACK), ("127.255.0.9", counter::DROP_SOURCE_LOOPBACK),
    ];
    const MARTIAN_DESTINATIONS: &'static [&'static str] = &[
        "240.0.0.1",
        "127.0.0.1",
        "224.0.0.5",
        "255.255.255.255",
        "0.0.0.0",
    ];
    const EDGE_CLIENTS: &'static [&'static str] = &[];
    const MULTICAST_MAC: Mac = [0x01, 0, 0x5e, 0, 0, 0xfb];
    /// The total length counts the 20-byte header: 65,512 + 20 + 3.
    const LAST_FRAGMENT: (u16, usize) = (8189, 3);

    #[rustfmt::skip]
    fn family_rows(table: &str, _: Self) -> (Vec<Case>, Vec<IpAddr>) {
        match table {
            // ESP from 239.255.255.250 (SSDP's group).
            "sources" => (
                vec![dropped("review: ESP from a multicast source", hex("02000000e0010200000001010800450000141234000040323c7feffffffacb00710a"), counter::DROP_SOURCE_MULTICAST)],
                vec![Ipv4Addr::new(239, 255, 255, 250).into()],
            ),
            // ESP from backend 10.0.0.11 to 198.51.100.7.
            "mac" => (vec![case("review: backend ESP to the broadcast MAC", hex("ffffffffffff020000000b01080045000014123400004032343f0a00000bc6336407"), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Int)], vec![]),
            "lengths" => (vec![
                // UDP 500 → 500, length 264 in an 8-byte datagram.
                case("review: UDP length past the datagram", hex("02000000e00102000000010108004500001c1234000040110258c6336407cb00710a01f401f4010895b0"), Expect::Drop, counter::DROP_UDP_LENGTH).events(&[]),
                // TCP 50000 → 443 SYN with data offset 4.
                case("review: TCP data offset 4", hex(REVIEW_SYN), Expect::Drop, counter::DROP_TCP_DATA_OFFSET).events(&[]),
                // UDP, offset 0x1fff (65,528 bytes) + total length 28.
                case("review: fragment ending past 65,535", hex("02000000e00102000000010108004500001c12341fff4011e258c6336407cb00710a01f401f4000895b0"), Expect::Drop, counter::DROP_FRAGMENT_END).events(&[]),
            ], vec![]),
            _ => (vec![], vec![]),
        }
    }

    /// The review's TCP SYN (198.51.100.7:50000 → VIP:443, DF) with data offset 5 (its
    /// checksum is the one of that segment): the builder's, byte for byte.
    fn review_syn(c: Self) -> Ipv4Frame {
        let review = Ipv4Frame {
            dont_fragment: true,
            ..syn(c)
        };
        let given = hex(REVIEW_SYN);
        let differ: Vec<usize> = (0..54).filter(|&i| review.bytes()[i] != given[i]).collect();
        assert_eq!(differ, [46], "the data offset only");
        review
    }
}

/// The review's TCP SYN with data offset 4.
const REVIEW_SYN: &str = "02000000e001020000000101080045000028123440004006c256c6336407cb00710ac35001bb01020304000000004002faf0859a0000";

impl RouterFamily for Ipv6Addr {
    #[rustfmt::skip]
    const MARTIANS: &'static [(&'static str, u32)] = &[
        ("::", counter::DROP_SOURCE_UNSPECIFIED), ("::1", counter::DROP_SOURCE_LOOPBACK),
        ("ff02::1", counter::DROP_SOURCE_MULTICAST), ("ff0e::1:3", counter::DROP_SOURCE_MULTICAST),
        ("fe80::1", counter::DROP_SOURCE_MARTIAN), ("febf::9", counter::DROP_SOURCE_MARTIAN),
        ("::ffff:198.51.100.7", counter::DROP_SOURCE_MARTIAN),
    ];
    const MARTIAN_DESTINATIONS: &'static [&'static str] =
        &["ff02::1", "::1", "fe80::1", "::", "::ffff:198.51.100.7"];
    /// Just past fe80::/10.
    const EDGE_CLIENTS: &'static [&'static str] = &["fec0::1"];
    const MULTICAST_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];
    /// The payload length leaves out the fixed header: 65,528 + 7.
    const LAST_FRAGMENT: (u16, usize) = (8191, 7);

    fn family_rows(table: &str, c: Self) -> (Vec<Case>, Vec<IpAddr>) {
        if table != "lengths" {
            return (vec![], vec![]);
        }
        // A first fragment whose fragmentable part starts with Destination Options.
        let (dest_first, _) = to_vip(c, 4500, 4500, &data(300))
            .with_ext(Ext::Fragment {
                offset: 0,
                more: true,
                id: 0x44,
            })
            .with_ext(Ext::DestOpts { pad: 4 })
            .fragments(96, 0x44);
        #[rustfmt::skip]
        let rows = vec![case("first fragment behind Destination Options: the kernel's", dest_first.bytes(), Expect::Pass, counter::PASS_IPV6_EXT)];
        (rows, vec![])
    }

    fn review_syn(c: Self) -> Self::Frame {
        syn(c)
    }
}

/// Client `i` of the tables: 198.51.100.(10 + `i`), 2001:db8:c::(10 + `i`).
fn client<F: FixtureFamily>(i: u16) -> F {
    F::client(10 + i)
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

fn udp<F: FixtureFamily>(src: F, port: u16, payload: &[u8]) -> F::Frame {
    to_vip(src, port, port, payload)
}

fn esp<F: FixtureFamily>(src: F) -> F::Frame {
    raw_to_vip(src, PROTO_ESP, &esp_body(7, 1, 60))
}

/// A TCP segment from `src`:50000 to the VIP's 443.
fn tcp<F: FixtureFamily>(src: F, seq: u32, ack: u32, flags: TcpFlags) -> F::Frame {
    let (from, to) = ((src, 50_000), (F::VIP, 443));
    F::Frame::tcp_segment(ROUTER_MAC, EXT_MAC, from, to, seq, ack, flags, &[])
}

fn syn<F: FixtureFamily>(src: F) -> F::Frame {
    tcp(src, 0x0102_0304, 0, TcpFlags::SYN)
}

/// Backend `id`'s IKE_SA_INIT response from 500 to `client`, to the gateway's `int` MAC.
fn reply<F: FixtureFamily>(id: u32, client: F) -> F::Frame {
    from_backend(id, 500, client, 500, &ike_message(9, 0x77, 34, 0x20, 80))
}

fn rev<Fr: IpFrame>(f: &Fr) -> Vec<u8>
where
    Fr::Addr: FixtureFamily,
{
    reversed(f, ROUTER_MAC)
}

/// A row whose frame is dropped for `reason` and leaves no trace: no event (no entry made).
fn dropped(name: impl Into<String>, frame: Vec<u8>, reason: u32) -> Case {
    case(name, frame, Expect::Drop, reason).events(&[])
}

fn ring<F: FixtureFamily>(lb: &mut Fixture, a: F) -> u32 {
    lb.ring_choice(a.into())
}

/// `BACKEND_IDS_V4/V6[own] = OWN_ADDRESS_ID`: the gateway's own addresses, as the control plane
/// lists them.
fn list_own(lb: &mut Fixture) {
    let mut v4: HashMap<_, u32, u32> = lb.map(maps::BACKEND_IDS_V4);
    v4.insert(&words_of(Ipv4Addr::OWN_EXT)[0], &OWN_ADDRESS_ID, 0)
        .unwrap();
    let mut v6: HashMap<_, [u32; 4], u32> = lb.map(maps::BACKEND_IDS_V6);
    v6.insert(&words_of(Ipv6Addr::OWN_EXT), &OWN_ADDRESS_ID, 0)
        .unwrap();
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

/// Where the transport header of `f` starts in its frame (after any extension headers).
fn l4_of<Fr: IpFrame>(f: &Fr) -> usize {
    f.bytes().len() - f.payload().len()
}

// ---------------------------------------------------------------------------------------------
// IPv4 header checksum

#[test]
fn ipv4_header_checksum_is_verified_both_ways() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = client::<Ipv4Addr>(1);
        let b = ring(lb, c);
        let init = udp(c, 500, &sa_init(1));
        let mut bad = init.bytes();
        bad[14 + 10] ^= 0x01;
        let rc = client::<Ipv4Addr>(2);
        let rb = ring(lb, rc);
        let mut bad_reply = reply(rb, rc).bytes();
        bad_reply[14 + 11] ^= 0x80;
        let mut bad_options = with_ip_option(&init.bytes());
        bad_options[14 + 10] ^= 0x01;
        let not_vip = Ipv4Addr::in_vip_net(99);
        let mut bad_not_vip =
            Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (c, 500), (not_vip, 500), &data(20)).bytes();
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
            case("the same IKE_SA_INIT, checksum right", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
        ];
        lb.check(&rows);
        assert_no_entries(lb, &[Ipv4Addr::new(198, 51, 108, 5).into()]);
    });
}

// ---------------------------------------------------------------------------------------------
// Sources that cannot be a client

both_families!(
    sources_that_cannot_be_clients_are_dropped_by_reason,
    Setup::default()
);

fn sources_that_cannot_be_clients_are_dropped_by_reason<F: RouterFamily>(lb: &mut Fixture) {
    list_own(lb);
    let ids = F::BACKEND_IDS;
    let mut sources: Vec<(F, u32)> = F::MARTIANS
        .iter()
        .map(|&(a, reason)| (a.parse().unwrap(), reason))
        .collect();
    sources.extend([
        (F::VIP, counter::DROP_SOURCE_VIP),
        (F::backend(ids[0]), counter::DROP_SOURCE_BACKEND),
        (F::backend(ids[2]), counter::DROP_SOURCE_BACKEND),
        (F::OWN_EXT, counter::DROP_SOURCE_OWN),
    ]);
    let (review, mut addrs) = F::family_rows("sources", client(4));
    // A non-first fragment from a backend: no entry, so the lookup a new client meets.
    let (_, tail) = udp(F::backend(ids[1]), 4500, &data(200)).split(96);
    // ICMP "too big" to the VIP about one of its replies.
    let quoted = F::Frame::udp(
        EXT_MAC,
        ROUTER_MAC,
        (F::VIP, 500),
        (client(3), 500),
        &data(40),
    );
    let too_big = |src| too_big_of(ROUTER_MAC, EXT_MAC, src, F::VIP, &quoted, 8, MTU);
    // Clients still get through (the rows above fail for their source alone).
    let mut clients: Vec<(F, u64)> = vec![(client(4), 99)];
    clients.extend(parse::<F>(F::EDGE_CLIENTS).into_iter().map(|a| (a, 98)));
    #[rustfmt::skip]
    let rows: Vec<Case> = sources.iter().enumerate().flat_map(|(i, &(src, reason))| [
        dropped(format!("IKE_SA_INIT from {src}"), udp(src, 500, &sa_init(i as u64)).bytes(), reason),
        dropped(format!("ESP from {src}"), esp(src).bytes(), reason),
    ]).chain(review).chain([
        dropped("non-first fragment from a backend", tail.bytes(), counter::DROP_SOURCE_BACKEND),
        dropped("too big from a backend", too_big(F::backend(ids[0])).bytes(), counter::DROP_SOURCE_BACKEND),
        dropped(format!("too big from {}", F::LOOPBACK), too_big(F::LOOPBACK).bytes(), counter::DROP_SOURCE_LOOPBACK),
    ]).chain(clients.into_iter().map(|(a, spi)| {
        let init = udp(a, 500, &sa_init(spi));
        case(format!("IKE_SA_INIT from client {a}"), init.bytes(), Expect::Redirect(forwarded(&init, ring(lb, a))), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1)])
    })).collect();
    lb.check(&rows);
    addrs.extend(sources.iter().map(|&(a, _)| a.into()));
    addrs.push(F::backend(ids[1]).into());
    assert_no_entries(lb, &addrs);

    // The backend's replies to such addresses are never rewritten: martians are dropped,
    // backends and the gateway itself are the kernel's.
    let r = |dst: F| reply(ids[0], dst).bytes();
    #[rustfmt::skip]
    let rows: Vec<Case> = parse::<F>(F::MARTIAN_DESTINATIONS).into_iter().map(|d| {
        case(format!("reply to {d}"), r(d), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT)
    }).chain([
        case("reply to another backend", r(F::backend(ids[1])), Expect::Pass, counter::PASS_NOT_CLIENT),
        case("reply to the gateway's own address", r(F::OWN_EXT), Expect::Pass, counter::PASS_NOT_CLIENT),
    ]).collect();
    lb.check(&rows);

    // A backend that is not usable (down: the daemon's entry has no interface or MACs) still
    // reaches the gateway itself — the replies to its IKE health probe that can bring it
    // back — while its replies to clients stay dropped.
    let up = lb.backend(ids[0]);
    lb.set_backend(
        ids[0],
        Backend {
            addr: up.addr,
            service: up.service,
            ..Backend::default()
        },
    );
    let client_reply = reply(ids[0], client::<F>(4)).bytes();
    #[rustfmt::skip]
    let rows = [
        case("IKE reply of a down backend to the gateway's own address", r(F::OWN_EXT), Expect::Pass, counter::PASS_NOT_CLIENT),
        case("IKE reply of a down backend to a client", client_reply, Expect::Drop, counter::DROP_REVERSE_WRONG_IFACE),
    ];
    lb.check(&rows);
    lb.set_backend(ids[0], up);
}

// ---------------------------------------------------------------------------------------------
// Destination MAC

both_families!(
    destination_mac_is_the_receiving_interface_s_both_ways,
    Setup::default()
);

fn destination_mac_is_the_receiving_interface_s_both_ways<F: RouterFamily>(lb: &mut Fixture) {
    let c5 = client::<F>(5);
    let b = ring(lb, c5);
    let init = udp(c5, 500, &sa_init(5));
    let rc = client::<F>(6);
    let rb = ring(lb, rc);
    let reply = reply(rb, rc);
    let to = |f: Vec<u8>, mac: Mac| [&mac[..], &f[6..]].concat();
    let group = F::MULTICAST_MAC;
    let (review, _) = F::family_rows("mac", c5);
    #[rustfmt::skip]
    let rows: Vec<Case> = [
        case("IKE to the VIP, broadcast MAC", to(init.bytes(), [0xff; 6]), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Ext).events(&[]),
        case("IKE to the VIP, multicast MAC", to(init.bytes(), group), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Ext).events(&[]),
        case("IKE to the VIP, another host's MAC", to(init.bytes(), STRANGER_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Ext).events(&[]),
        case("IKE to the VIP, int's MAC, on ext", to(init.bytes(), INT_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Ext).events(&[]),
        case("backend reply, broadcast MAC", to(reply.bytes(), [0xff; 6]), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Int),
        case("backend reply, multicast MAC", to(reply.bytes(), group), Expect::Drop, counter::DROP_DST_MAC_GROUP).on(Side::Int),
        case("backend reply, another host's MAC", to(reply.bytes(), STRANGER_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Int),
        case("backend reply, ext's MAC, on int", to(reply.bytes(), EXT_MAC), Expect::Drop, counter::DROP_DST_MAC_OTHER).on(Side::Int),
    ].into_iter().chain(review).chain([
        // To the right MACs both go through.
        case("IKE to the VIP", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD),
        case("backend reply", reply.bytes(), Expect::Redirect(rev(&reply)), counter::REVERSE),
    ]).collect();
    lb.check(&rows);
}

// ---------------------------------------------------------------------------------------------
// Lengths

both_families!(udp_tcp_and_fragment_lengths_must_agree, Setup::default());

fn udp_tcp_and_fragment_lengths_must_agree<F: RouterFamily>(lb: &mut Fixture) {
    let c = client::<F>(7);
    let b = ring(lb, c);
    let ike = udp(c, 4500, &data(100));
    let at = l4_of(&ike);
    let carried = (8 + 100) as u16;
    let big = udp(c, 4500, &data(300));
    let (head, _) = big.split(96);
    let (head_out, _) = forwarded_frame(&big, b, INT_MAC).split(96);
    let head_at = l4_of(&head);
    let syn = syn(c);
    // Last fragments at the highest offset: `fits` bytes end at 65,535, one more past it.
    let (offset, fits) = F::LAST_FRAGMENT;
    let frag = |n: usize| raw_to_vip(c, PROTO_UDP, &data(n)).last_fragment_at(offset);
    let (review, _) = F::family_rows("lengths", c);
    #[rustfmt::skip]
    let rows: Vec<Case> = [
        case("UDP length 4 (< 8)", set16(ike.bytes(), at + 4, 4), Expect::Drop, counter::DROP_UDP_LENGTH).events(&[]),
        case("UDP length 0 (IPv6: a jumbogram's, RFC 2675)", set16(ike.bytes(), at + 4, 0), Expect::Drop, counter::DROP_UDP_LENGTH).events(&[]),
        case("UDP length one short of the payload", set16(ike.bytes(), at + 4, carried - 1), Expect::Drop, counter::DROP_UDP_LENGTH),
        case("UDP length one past the payload", set16(ike.bytes(), at + 4, carried + 1), Expect::Drop, counter::DROP_UDP_LENGTH),
        case("first fragment, UDP length short of what it carries", set16(head.bytes(), head_at + 4, 40), Expect::Drop, counter::DROP_UDP_LENGTH),
        case("TCP data offset 0", set_doff(syn.bytes(), at, 0), Expect::Drop, counter::DROP_TCP_DATA_OFFSET),
        case("TCP data offset 4", set_doff(syn.bytes(), at, 4), Expect::Drop, counter::DROP_TCP_DATA_OFFSET).events(&[]),
        case("TCP data offset 6 in a 20-byte segment", set_doff(syn.bytes(), at, 6), Expect::Drop, counter::DROP_TCP_DATA_OFFSET),
        case("TCP data offset 15 in a 20-byte segment", set_doff(syn.bytes(), at, 15), Expect::Drop, counter::DROP_TCP_DATA_OFFSET),
        case("fragment ending at 65,536", frag(fits + 1).bytes(), Expect::Drop, counter::DROP_FRAGMENT_END).events(&[]),
    ].into_iter().chain(review).chain([
        // What agrees goes through.
        case("fragment ending at 65,535", frag(fits).bytes(), Expect::Redirect(forwarded(&frag(fits), b)), counter::FORWARD),
        case("UDP length = payload", ike.bytes(), Expect::Redirect(forwarded(&ike, b)), counter::FORWARD),
        case("first fragment, UDP length of the datagram", head.bytes(), Expect::Redirect(head_out.bytes()), counter::FORWARD),
        case("TCP SYN, data offset 5", syn.bytes(), Expect::Redirect(forwarded(&syn, b)), counter::FORWARD),
    ]).collect();
    lb.check(&rows);
}

// ---------------------------------------------------------------------------------------------
// Bytes past the datagram

both_families!(
    bytes_past_the_datagram_are_cut_from_what_is_forwarded,
    Setup::default()
);

fn bytes_past_the_datagram_are_cut_from_what_is_forwarded<F: RouterFamily>(lb: &mut Fixture) {
    let trailer = |f: &[u8], n: usize| [f, &data(n)[..]].concat();
    let rc = F::client(7);
    let review = F::review_syn(rc);
    let review_b = ring(lb, rc);
    let c8 = client::<F>(8);
    let b = ring(lb, c8);
    let ack = tcp(c8, 5, 0x0102_0305, TcpFlags::ACK);
    // A pure ACK: 54 bytes over IPv4, which Ethernet pads to 60.
    let pure = ETH_LEN + F::IP_HEADER_LEN + 20;
    assert_eq!(ack.bytes().len(), pure, "a pure ACK");
    let (rc9, rc11) = (client::<F>(9), client::<F>(11));
    let (rb, rb11) = (ring(lb, rc9), ring(lb, rc11));
    let (reply, reply11) = (reply(rb, rc9), reply(rb11, rc11));
    let c10 = client::<F>(10);
    let b10 = ring(lb, c10);
    let init = udp(c10, 500, &sa_init(8));
    let not_vip = F::Frame::udp(
        ROUTER_MAC,
        EXT_MAC,
        (c8, 500),
        (F::in_vip_net(99), 500),
        &data(8),
    );
    // ICMP errors to the VIP whose datagram ends before their quote does (the rest of the quote
    // past it): the kernel's, untouched — the exit would cut off what the rewrite fixed.
    let quoted = F::Frame::udp(EXT_MAC, ROUTER_MAC, (F::VIP, 500), (c8, 500), &data(40));
    let mut cut = too_big_of(ROUTER_MAC, EXT_MAC, client(1), F::VIP, &quoted, 8, MTU).bytes();
    F::set_payload_len(&mut cut, 7);
    let count = |lb: &mut Fixture| {
        [
            lb.traffic(review_b, DIR_FORWARD).bytes,
            lb.traffic(b, DIR_FORWARD).bytes,
            lb.traffic(rb, DIR_REVERSE).bytes,
            lb.traffic(b10, DIR_FORWARD).bytes,
            lb.traffic(rb11, DIR_REVERSE).bytes,
        ]
    };
    let before = count(lb);
    let syn = syn(c8);
    #[rustfmt::skip]
    let rows = [
        case("review: TCP SYN + 7 bytes", trailer(&review.bytes(), 7), Expect::Redirect(forwarded(&review, review_b)), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1), (event::TRIMMED, 1)]),
        case("TCP SYN, nothing past it", syn.bytes(), Expect::Redirect(forwarded(&syn, b)), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1)]),
        case("TCP ACK + 6 bytes of padding", [&ack.bytes()[..], &[0; 6]].concat(), Expect::Redirect(forwarded(&ack, b)), counter::FORWARD)
            .events(&[(event::TRIMMED, 1)]),
        case("backend reply + 5 bytes", trailer(&reply.bytes(), 5), Expect::Redirect(rev(&reply)), counter::REVERSE)
            .events(&[(event::REVERSE_STATELESS, 1), (event::TRIMMED, 1)]),
        case("IKE + 64 bytes", trailer(&init.bytes(), 64), Expect::Redirect(forwarded(&init, b10)), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1), (event::TRIMMED, 1)]),
        case("backend reply + 1 byte", trailer(&reply11.bytes(), 1), Expect::Redirect(rev(&reply11)), counter::REVERSE)
            .events(&[(event::REVERSE_STATELESS, 1), (event::TRIMMED, 1)]),
        case("not to a VIP + 9 bytes: the kernel's, untouched", trailer(&not_vip.bytes(), 9), Expect::Pass, counter::PASS_NOT_VIP),
        case("too big, quote past the datagram", cut, Expect::Pass, F::PASS_ICMP),
    ];
    lb.check(&rows);
    // The backends' byte counters count what left: the frames without the extra bytes.
    let after = count(lb);
    let sent = [
        forwarded(&review, review_b).len(),
        forwarded(&syn, b).len() + forwarded(&ack, b).len(),
        rev(&reply).len(),
        forwarded(&init, b10).len(),
        rev(&reply11).len(),
    ];
    let grown: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let sent: Vec<u64> = sent.iter().map(|&n| n as u64).collect();
    // (Backends may coincide: compare the sums per backend id and direction.)
    let ids = [review_b, b, rb, b10, rb11];
    let dir_of = |j: usize| {
        if j == 2 || j == 4 {
            DIR_REVERSE
        } else {
            DIR_FORWARD
        }
    };
    for (i, id) in ids.iter().enumerate() {
        let want: u64 = (0..ids.len())
            .filter(|&j| ids[j] == *id && dir_of(j) == dir_of(i))
            .map(|j| sent[j])
            .sum();
        assert_eq!(grown[i], want, "bytes counted for backend {id}");
    }
}

both_families!(
    session_evidence_past_the_datagram_is_not_read,
    Setup::default()
);

/// What a packet says of its session is read inside its datagram only: an IKE header or an
/// ESP SPI in the bytes past it (which the exit cuts off) is no evidence. A UDP 500 datagram
/// without payload, followed by an IKE header with a responder SPI, is a new client's first
/// packet, not lost mid-session traffic; a one-byte datagram on 4500 followed by an SPI is a
/// NAT keepalive, neither lost nor given an entry (a keepalive pins nothing: SA steering,
/// `lb-ebpf/src/steer.rs`).
fn session_evidence_past_the_datagram_is_not_read<F: RouterFamily>(lb: &mut Fixture) {
    let trailing = |f: &[u8], t: &[u8]| [f, t].concat();
    let (c1, c2) = (client::<F>(30), client::<F>(31));
    let empty = udp(c1, 500, &[]);
    let keepalive = udp(c2, 4500, &[0xff]);
    let mid = ike_message(9, 0x77, 37, 0x08, 28);
    let spi = [0u8, 0, 0x12, 0x34, 0, 0, 0, 1];
    #[rustfmt::skip]
    let rows = [
        case("UDP 500, empty, + an IKE header with a responder SPI", trailing(&empty.bytes(), &mid), Expect::Redirect(forwarded(&empty, ring(lb, c1))), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1), (event::TRIMMED, 1)]),
        case("UDP 4500 keepalive + an ESP SPI and sequence", trailing(&keepalive.bytes(), &spi), Expect::Redirect(forwarded(&keepalive, ring(lb, c2))), counter::FORWARD)
            .events(&[(event::TRIMMED, 1)]),
    ];
    lb.check(&rows);
}

// ---------------------------------------------------------------------------------------------
// Reverse path only on a backends interface

both_families!(
    backend_replies_only_on_an_interface_with_the_backends_role,
    Setup::default()
);

fn backend_replies_only_on_an_interface_with_the_backends_role<F: RouterFamily>(lb: &mut Fixture) {
    // A backend whose next hop the daemon found on `ext`, which faces clients only.
    let id = F::BACKEND_IDS[0];
    let mut b = lb.backend(id);
    b.ifindex = lb.ifindex(Side::Ext);
    b.tx_port = PORT_EXT;
    b.smac = EXT_MAC;
    lb.set_backend(id, b);
    let on_ext = reply(id, client::<F>(10)).with_macs(backend_mac(id), EXT_MAC);
    // A client whose ring names another backend: its reply goes through.
    let other = (11..60)
        .map(client::<F>)
        .find(|&a| ring(lb, a) != id)
        .unwrap();
    let fine = reply(ring(lb, other), other);
    #[rustfmt::skip]
    let rows = [
        case("backend reply on ext, its next hop's interface", on_ext.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_BACKEND_IFACE).on(Side::Ext),
        case("the same on int: not its interface", reply(id, client::<F>(10)).bytes(), Expect::Drop, counter::DROP_REVERSE_WRONG_IFACE).on(Side::Int),
        case("another backend's reply on int", fine.bytes(), Expect::Redirect(rev(&fine)), counter::REVERSE).on(Side::Int),
    ];
    lb.check(&rows);
}
