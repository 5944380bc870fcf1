//! The XDP program on crafted frames through `BPF_PROG_TEST_RUN` (aya `test_run`).
//!
//! Each test loads the embedded object (`lb_ctl::EBPF_OBJECT`) through the shared fixture
//! `ikelb_tests::xdp` with small maps filled like the daemon would; these tables use its IPv4
//! service (VIP 203.0.113.10, UDP 500/4500 + ESP, no TCP here, three backends 10.0.0.11–13 in a
//! Maglev ring from `lb_common::maglev::build`; the IPv6 service and backends 4–6 are also
//! loaded, for `prog_test_run_protocols.rs`), and runs a table of rows:
//! input frame, expected action, expected output frame byte for byte (built independently by
//! `ikelb_tests::packet`, checksums from scratch), and the one counter the verdict must bump.
//!
//! Every frame arrives on a real interface of the fixture's own network namespace (`ext` for
//! clients, `int` for backends, through `xdp_md.ingress_ifindex`), and each redirect row runs
//! with only its expected devmap port present, so a frame sent by the wrong port or by
//! XDP_TX fails the row (`ikelb_tests::xdp`, module doc). Every test runs its table twice:
//! with the load-time global `SLOT_FAST_PATH` off and on (`Fixture::both_fast_paths`).
//! New clients land in `PROBATION_V4` (not yet established); `PERSIST_V4` holds established
//! ones. The edge rules (roles, proof, promotion, FIB evidence, ICMP) are in
//! `prog_test_run_edge.rs`.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::Ipv4Addr;

use ikelb_tests::{
    packet::{self, IpFrame, Ipv4Frame, Mac, PROTO_ESP, PROTO_ICMP},
    xdp::{
        backend_mac, backend_v4, case, mac_str, now_ticks, ticks_ago, Expect, Fixture, Setup, Side,
        Topology, EXT_MAC, INT_MAC, PORT_EXT, RING, ROUTER4, ROUTER_MAC, SVC4, SVC6, VIP4,
    },
};
use lb_common::{
    counter, event, PersistValue, Traffic, BACKEND_F_USABLE, DIR_FORWARD, DIR_REVERSE,
};

const GATEWAY_INT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const ROUTER2_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x02];

/// The fixture as this file's tables expect it: UDP 500/4500 and ESP, no TCP.
fn setup() -> Setup {
    Setup {
        tcp: false,
        ..Setup::default()
    }
}

const C1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const C2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const C3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 33);
const C4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

/// IKE-sized payloads (the content does not matter to ikelb; the length does for fragments).
fn ike(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// A client's datagram to the VIP, as it arrives from the upstream router.
fn to_vip(client: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Ipv4Frame {
    Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (client, sport), (VIP4, dport), data)
}

/// What a correct forward NAT makes of `f` for backend `id` behind the internal interface.
fn forwarded(f: &Ipv4Frame, id: u32) -> Vec<u8> {
    forwarded_from(f, id, INT_MAC)
}

/// As [`forwarded`], leaving by the interface whose MAC is `smac`.
fn forwarded_from(f: &Ipv4Frame, id: u32, smac: Mac) -> Vec<u8> {
    let addr = backend_v4(id);
    f.readdressed(f.src, addr)
        .with_ttl(f.ttl - 1)
        .with_macs(smac, backend_mac(id))
        .bytes()
}

/// The two fragments of `whole` after a correct forward NAT to `addr`: the first fragment's
/// UDP checksum covers the whole datagram, so it is computed on the rewritten whole.
fn nat_fragments(whole: &Ipv4Frame, addr: Ipv4Addr, smac: Mac, dmac: Mac) -> (Vec<u8>, Vec<u8>) {
    let out = whole
        .readdressed(whole.src, addr)
        .with_ttl(whole.ttl - 1)
        .with_macs(smac, dmac);
    let (a, b) = out.fragments(FRAG_LEN);
    (a.bytes(), b.bytes())
}

/// As [`nat_fragments`] for a backend's reply going back to its client.
fn reverse_fragments(whole: &Ipv4Frame) -> (Vec<u8>, Vec<u8>) {
    let out = whole
        .readdressed(VIP4, whole.dst)
        .with_ttl(whole.ttl - 1)
        .with_macs(EXT_MAC, ROUTER_MAC);
    let (a, b) = out.fragments(FRAG_LEN);
    (a.bytes(), b.bytes())
}

/// IP payload bytes in a first fragment (1500-byte MTU).
const FRAG_LEN: usize = 1480;

/// A backend's datagram to `client`, as it arrives from the backend.
fn from_backend(id: u32, sport: u16, client: Ipv4Addr, dport: u16, data: &[u8]) -> Ipv4Frame {
    Ipv4Frame::udp(
        backend_mac(id),
        INT_MAC,
        (backend_v4(id), sport),
        (client, dport),
        data,
    )
}

/// What a correct reverse NAT makes of `f`: source VIP, MACs toward the client's router.
fn reversed(f: &Ipv4Frame, router: Mac) -> Vec<u8> {
    f.readdressed(VIP4, f.dst)
        .with_ttl(f.ttl - 1)
        .with_macs(EXT_MAC, router)
        .bytes()
}

#[test]
fn forward_path() {
    Fixture::both_fast_paths(setup(), |lb| {
        let b1 = lb.ring_choice(C1.into());
        let b2 = lb.ring_choice(C2.into());
        let b3 = lb.ring_choice(C3.into());

        let init = to_vip(C1, 500, 500, &ike(300));
        let auth = to_vip(C1, 4500, 4500, &ike(400));
        let nocsum = to_vip(C1, 4500, 4500, &ike(100)).without_udp_checksum();
        let esp = Ipv4Frame::raw(ROUTER_MAC, EXT_MAC, C1, VIP4, PROTO_ESP, &ike(120));
        // C2's IKE_AUTH with certificates, fragmented by its IP stack: the first fragment has the
        // UDP header (whose checksum covers the whole datagram), the second has no ports.
        let big = to_vip(C2, 4500, 4500, &ike(1800));
        let (frag1, frag2) = big.fragments(FRAG_LEN);
        let (frag1_out, frag2_out) = nat_fragments(&big, backend_v4(b2), INT_MAC, backend_mac(b2));
        // C3 is first seen through a non-first fragment: steered by address alone.
        let (_, c3_frag2) = to_vip(C3, 4500, 4500, &ike(1800)).fragments(FRAG_LEN);
        let esp_out = esp.readdressed(C1, backend_v4(b1)).with_ttl(63);
        let esp_out = esp_out.with_macs(INT_MAC, backend_mac(b1)).bytes();

        #[rustfmt::skip]
        let rows = vec![
            case("UDP 500 to the VIP", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD),
            case("UDP 4500, same client", auth.bytes(), Expect::Redirect(forwarded(&auth, b1)), counter::FORWARD),
            case("UDP checksum 0 stays 0", nocsum.bytes(), Expect::Redirect(forwarded(&nocsum, b1)), counter::FORWARD),
            case("ESP, same client", esp.bytes(), Expect::Redirect(esp_out), counter::FORWARD),
            case("first fragment", frag1.bytes(), Expect::Redirect(frag1_out), counter::FORWARD),
            case("non-first fragment", frag2.bytes(), Expect::Redirect(frag2_out), counter::FORWARD),
            case("non-first fragment of a new client", c3_frag2.bytes(), Expect::Redirect(forwarded(&c3_frag2, b3)), counter::FORWARD),
            case("another UDP port to the VIP", to_vip(C1, 5000, 53, &ike(20)).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("ICMP echo to the VIP", Ipv4Frame::raw(ROUTER_MAC, EXT_MAC, C1, VIP4, PROTO_ICMP, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("TTL 1", to_vip(C1, 500, 500, &ike(50)).with_ttl(1).bytes(), Expect::Pass, counter::PASS_TTL),
            case("not to a VIP", Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (C1, 500), (Ipv4Addr::new(203, 0, 113, 11), 500), &ike(20)).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
        ];
        lb.check(&rows);

        // New clients are on probation: the entry remembers the backend and where the
        // client's frames came from; nothing is established yet.
        for (client, id) in [(C1, b1), (C2, b2)] {
            let e = lb.probation(client.into()).expect("a probation entry");
            assert_eq!(
                (e.backend, e.client_mac, e.port, e.proof),
                (id, ROUTER_MAC, PORT_EXT as u8, 0)
            );
            assert_eq!(lb.persisted(client.into()), None, "not established");
        }
        // A non-first fragment never creates an entry (it proves nothing, and a spoofed one
        // costs nothing to send).
        assert_eq!(
            (lb.persisted(C3.into()), lb.probation(C3.into())),
            (None, None)
        );
        // Per-backend traffic: every forwarded frame, its length.
        let c1_bytes: u64 = [&init, &auth, &nocsum, &esp]
            .iter()
            .map(|f| f.bytes().len() as u64)
            .sum();
        let c2_bytes = (frag1.bytes().len() + frag2.bytes().len()) as u64;
        let mut want = [Traffic::default(); 4];
        for (id, packets, bytes) in [(b1, 4, c1_bytes), (b2, 2, c2_bytes)] {
            want[id as usize].packets += packets;
            want[id as usize].bytes += bytes;
        }
        want[b3 as usize].packets += 1;
        want[b3 as usize].bytes += c3_frag2.bytes().len() as u64;
        for id in 1..=3 {
            assert_eq!(
                lb.traffic(id, DIR_FORWARD),
                want[id as usize],
                "backend {id} forward traffic"
            );
        }
    });
}

#[test]
fn malformed_and_foreign_frames_are_never_forwarded() {
    Fixture::both_fast_paths(setup(), |lb| {
        let good = to_vip(C1, 500, 500, &ike(64)).bytes();
        let ip = packet::IP_OFFSET;

        let mut ihl4 = good.clone();
        ihl4[ip] = 0x44;
        packet::fix_ipv4_checksum(&mut ihl4);
        let mut version6 = good.clone();
        version6[ip] = 0x65;
        let mut too_long = good.clone();
        too_long[ip + 2..ip + 4].copy_from_slice(&((good.len() - ip + 1) as u16).to_be_bytes());
        packet::fix_ipv4_checksum(&mut too_long);
        let mut shorter_than_header = good.clone();
        shorter_than_header[ip + 2..ip + 4].copy_from_slice(&19u16.to_be_bytes());
        packet::fix_ipv4_checksum(&mut shorter_than_header);
        // A UDP header cut after 4 bytes, consistently (total length 24).
        let mut udp_cut = good[..ip + 24].to_vec();
        udp_cut[ip + 2..ip + 4].copy_from_slice(&24u16.to_be_bytes());
        packet::fix_ipv4_checksum(&mut udp_cut);
        // The same, with Ethernet padding after it: the UDP header "fits" the frame but not the
        // datagram.
        let mut udp_cut_padded = udp_cut.clone();
        udp_cut_padded.resize(60, 0);

        #[rustfmt::skip]
        let rows = vec![
            // test_run refuses frames shorter than an Ethernet header (EINVAL), so the
            // truncated-Ethernet branch is reachable only on a real interface.
            case("IP header truncated", good[..ip + 10].to_vec(), Expect::Drop, counter::DROP_MALFORMED),
            case("Ethernet header only", good[..ip].to_vec(), Expect::Drop, counter::DROP_MALFORMED),
            case("IHL 4", ihl4, Expect::Drop, counter::DROP_MALFORMED),
            case("version 6 in an IPv4 ethertype", version6, Expect::Drop, counter::DROP_MALFORMED),
            case("total length beyond the frame", too_long, Expect::Drop, counter::DROP_MALFORMED),
            case("total length below the header", shorter_than_header, Expect::Drop, counter::DROP_MALFORMED),
            case("UDP header truncated", udp_cut, Expect::Drop, counter::DROP_MALFORMED),
            case("UDP header beyond the datagram", udp_cut_padded, Expect::Drop, counter::DROP_MALFORMED),
            case("IP options to the VIP", packet::with_ip_option(&good), Expect::Pass, counter::PASS_IP_OPTIONS),
            case("ARP", packet::arp_request(ROUTER_MAC, Ipv4Addr::new(203, 0, 113, 1), VIP4), Expect::Pass, counter::PASS_NOT_IP),
            case("802.1Q tagged", packet::vlan_tagged(&good, 0x8100, 7), Expect::Pass, counter::PASS_VLAN),
            case("802.1ad tagged", packet::vlan_tagged(&good, 0x88a8, 7), Expect::Pass, counter::PASS_VLAN),
            // IPv6 has its own table (prog_test_run_protocols.rs); one not to a VIP is passed.
            case("IPv6 not to a VIP", packet::ipv6_udp(ROUTER_MAC, EXT_MAC), Expect::Pass, counter::PASS_NOT_VIP),
        ];
        lb.check(&rows);
        assert_eq!(
            (lb.persisted(C1.into()), lb.probation(C1.into())),
            (None, None),
            "nothing was learned from refused frames"
        );
    });
}

#[test]
fn reverse_path() {
    Fixture::both_fast_paths(setup(), |lb| {
        let b1 = lb.ring_choice(C1.into());
        let other = if b1 == 1 { 2 } else { 1 };
        let init = to_vip(C1, 500, 500, &ike(300));
        // A client without any entry whose ring slot names another backend than b1.
        let stranger = (1..=250)
            .map(|i| Ipv4Addr::new(198, 51, 100, i))
            .find(|&a| lb.ring_choice(a.into()) != b1)
            .unwrap();

        let reply = from_backend(b1, 500, C1, 500, &ike(200));
        let nat_t = from_backend(b1, 4500, C1, 4500, &ike(90));
        let nocsum = from_backend(b1, 4500, C1, 4500, &ike(90)).without_udp_checksum();
        let big = from_backend(b1, 4500, C1, 4500, &ike(1600));
        let (frag1, frag2) = big.fragments(FRAG_LEN);
        let (frag1_out, frag2_out) = reverse_fragments(&big);
        let esp = Ipv4Frame::raw(
            backend_mac(b1),
            INT_MAC,
            backend_v4(b1),
            C1,
            PROTO_ESP,
            &ike(100),
        );
        let esp_out = esp
            .readdressed(VIP4, C1)
            .with_ttl(63)
            .with_macs(EXT_MAC, ROUTER_MAC)
            .bytes();
        let echo_reply = Ipv4Frame::raw(
            backend_mac(b1),
            INT_MAC,
            backend_v4(b1),
            GATEWAY_INT,
            PROTO_ICMP,
            &[0, 0, 0xff, 0xff, 0, 0, 0, 0],
        );

        #[rustfmt::skip]
        let rows = vec![
            case("client's IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD),
            case("backend reply from 500", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE),
            case("backend reply from 4500", nat_t.bytes(), Expect::Redirect(reversed(&nat_t, ROUTER_MAC)), counter::REVERSE),
            case("backend reply, UDP checksum 0", nocsum.bytes(), Expect::Redirect(reversed(&nocsum, ROUTER_MAC)), counter::REVERSE),
            case("backend reply, first fragment", frag1.bytes(), Expect::Redirect(frag1_out), counter::REVERSE),
            case("backend reply, non-first fragment", frag2.bytes(), Expect::Redirect(frag2_out), counter::REVERSE),
            case("backend ESP", esp.bytes(), Expect::Redirect(esp_out), counter::REVERSE),
            case("backend to a non-client of its ring slot", from_backend(b1, 4500, stranger, 4500, &ike(40)).bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("another backend to the client", from_backend(other, 4500, C1, 4500, &ike(40)).bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("backend from another port", from_backend(b1, 22, C1, 40000, &ike(40)).bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
            case("ICMP echo reply to the gateway", echo_reply.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
            case("backend reply, TTL 1", from_backend(b1, 4500, C1, 4500, &ike(40)).with_ttl(1).bytes(), Expect::Pass, counter::PASS_TTL),
            case("backend reply with IP options", packet::with_ip_option(&nat_t.bytes()), Expect::Pass, counter::PASS_IP_OPTIONS),
            case("not from a backend", Ipv4Frame::udp(ROUTER_MAC, INT_MAC, (Ipv4Addr::new(10, 0, 0, 99), 4500), (C1, 4500), &ike(40)).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
        ];
        lb.check(&rows);

        let sent: u64 = [&reply, &nat_t, &nocsum, &frag1, &frag2, &esp]
            .iter()
            .map(|f| f.bytes().len() as u64)
            .sum();
        assert_eq!(
            lb.traffic(b1, DIR_REVERSE),
            Traffic {
                packets: 6,
                bytes: sent
            }
        );
    });
}

#[test]
fn client_behind_a_new_router_is_relearned() {
    Fixture::both_fast_paths(setup(), |lb| {
        let b1 = lb.ring_choice(C1.into());
        // A real IKE_SA_INIT request (responder SPI 0: not mid-session).
        let first = to_vip(C1, 500, 500, &packet::ike_message(0x1234, 0, 34, 0x08, 100));
        let moved = to_vip(C1, 4500, 4500, &ike(100)).with_macs(ROUTER2_MAC, EXT_MAC);
        let reply = from_backend(b1, 4500, C1, 4500, &ike(60));
        #[rustfmt::skip]
        let rows = [
            case("via router 1", first.bytes(), Expect::Redirect(forwarded(&first, b1)), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
        ];
        lb.check(&rows);
        // The upstream router's address now answers from router 2's MAC: the FIB agrees
        // with the new frames, so the entry learns them.
        let r = ROUTER4.to_string();
        let m = mac_str(ROUTER2_MAC);
        lb.net.ip(&[
            "neigh",
            "replace",
            &r,
            "lladdr",
            &m,
            "nud",
            "permanent",
            "dev",
            "ext",
        ]);
        #[rustfmt::skip]
        let rows = [
            case("via router 2", moved.bytes(), Expect::Redirect(forwarded(&moved, b1)), counter::FORWARD)
                .events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
            case("reply goes to router 2", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER2_MAC)), counter::REVERSE),
        ];
        lb.check(&rows);
    });
}

#[test]
fn one_arm_leaves_by_xdp_tx() {
    Fixture::both_fast_paths(
        Setup {
            topology: Topology::OneArm,
            ..setup()
        },
        |lb| {
            let b1 = lb.ring_choice(C1.into());
            let init = to_vip(C1, 500, 500, &ike(100));
            // One arm: the backend sends to the gateway's only interface, `ext`.
            let reply =
                from_backend(b1, 500, C1, 500, &ike(60)).with_macs(backend_mac(b1), EXT_MAC);
            #[rustfmt::skip]
        let rows = [
            case("client to VIP", init.bytes(), Expect::Tx(forwarded_from(&init, b1, EXT_MAC)), counter::FORWARD),
            case("backend reply", reply.bytes(), Expect::Tx(reversed(&reply, ROUTER_MAC)), counter::REVERSE),
        ];
            lb.check(&rows);
        },
    );
}

#[test]
fn dsr_rewrites_macs_and_ttl_only() {
    Fixture::both_fast_paths(
        Setup {
            dsr: true,
            ..setup()
        },
        |lb| {
            let b1 = lb.ring_choice(C1.into());
            let init = to_vip(C1, 500, 500, &ike(100));
            let b = lb.backend(b1);
            let want = init.clone().with_ttl(63).with_macs(b.smac, b.dmac).bytes();
            #[rustfmt::skip]
        let rows = [
            case("client to VIP", init.bytes(), Expect::Redirect(want), counter::FORWARD),
            // In DSR mode backends answer from the VIP themselves; a packet from a backend
            // address is not ikelb's.
            case("backend packet", from_backend(b1, 500, C1, 500, &ike(60)).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
        ];
            lb.check(&rows);
        },
    );
}

#[test]
fn unusable_backend_is_reselected() {
    Fixture::both_fast_paths(setup(), |lb| {
        let b1 = lb.ring_choice(C1.into());
        let init = to_vip(C1, 500, 500, &ike(100));
        #[rustfmt::skip]
        let rows = [case("before", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD)];
        lb.check(&rows);

        // The daemon marks b1 down and rebuilds the ring without it.
        let mut b = lb.backend(b1);
        b.flags &= !BACKEND_F_USABLE;
        lb.set_backend(b1, b);
        let ring = lb.maglev(SVC4, &[b1]);
        lb.write_ring(SVC4, &ring);
        let now = lb.ring_choice(C1.into());
        assert_ne!(now, b1);

        let auth = to_vip(C1, 4500, 4500, &ike(100));
        #[rustfmt::skip]
        let rows = [case("after", auth.bytes(), Expect::Redirect(forwarded(&auth, now)), counter::FORWARD)];
        lb.check(&rows);
        // The probation entry is re-selected in place.
        assert_eq!(lb.probation(C1.into()).map(|e| e.backend), Some(now));
    });
}

/// Idle timeout of the persistence rows, in ticks (~10.7 s: a row under TCG emulation takes
/// seconds, and an active entry must not idle out while it runs).
const TIMEOUT: u32 = 10;

#[test]
fn persistence_wins_over_the_ring_until_idle() {
    Fixture::both_fast_paths(
        Setup {
            persist_timeout_ticks: TIMEOUT,
            ..setup()
        },
        |lb| {
            // Clients the ring would send elsewhere, persisted on another backend: C1 active,
            // C2 idle, C4 stamped a tick ahead of this CPU's clock (another CPU crossed the
            // tick first): as live as C1, not idle for 2^32 ticks.
            let r1 = lb.ring_choice(C1.into());
            let r2 = lb.ring_choice(C2.into());
            let r4 = lb.ring_choice(C4.into());
            let r3 = lb.ring_choice(C3.into());
            let (p1, p2, p3) = (r1 % 3 + 1, r2 % 3 + 1, r3 % 3 + 1);
            // Neither C4's ring choice nor C3's backend (given away below).
            let p4 = (1..=3).find(|&b| b != r4 && b != p3).unwrap();
            let idle = ticks_ago(TIMEOUT + 2);
            let now = now_ticks();
            lb.persist(C1.into(), persist_entry(p1, now));
            lb.persist(C2.into(), persist_entry(p2, idle));
            lb.persist(C4.into(), persist_entry(p4, now + 1));
            // C3 is persisted on a backend id the daemon has since given to another service.
            lb.persist(C3.into(), persist_entry(p3, now));
            let mut b = lb.backend(p3);
            b.service = SVC6;
            lb.set_backend(p3, b);

            let f1 = to_vip(C1, 4500, 4500, &ike(80));
            let f2 = to_vip(C2, 4500, 4500, &ike(80));
            let f3 = to_vip(C3, 4500, 4500, &ike(80));
            let f4 = to_vip(C4, 4500, 4500, &ike(80));
            #[rustfmt::skip]
            let rows = [
                case("active client keeps its backend", f1.bytes(), Expect::Redirect(forwarded(&f1, p1)), counter::FORWARD),
                case("idle client is re-balanced", f2.bytes(), Expect::Redirect(forwarded(&f2, r2)), counter::FORWARD),
                case("backend id now another service's", f3.bytes(), Expect::Redirect(forwarded(&f3, r3)), counter::FORWARD),
                case("entry stamped a tick ahead keeps its backend", f4.bytes(), Expect::Redirect(forwarded(&f4, p4)), counter::FORWARD),
            ];
            lb.check(&rows);
            let e1 = lb.persisted(C1.into()).unwrap();
            assert_eq!(e1.backend, p1);
            assert!(e1.atime >= now, "atime refreshed");
            assert_eq!(lb.persisted(C2.into()).unwrap().backend, r2);
            assert_eq!(lb.persisted(C3.into()).unwrap().backend, r3);
            assert_eq!(lb.persisted(C4.into()).unwrap().backend, p4);
        },
    );
}

/// A gateway younger than its persistence timeout (`now` below the timeout, as on every boot):
/// an entry stamped at tick 0 is live, and so is one stamped ahead of `now`.
#[test]
fn young_clock_keeps_persisted_clients() {
    let now = now_ticks();
    Fixture::both_fast_paths(
        Setup {
            persist_timeout_ticks: now + 1000,
            ..setup()
        },
        |lb| {
            let r1 = lb.ring_choice(C1.into());
            let r4 = lb.ring_choice(C4.into());
            let (p1, p4) = (r1 % 3 + 1, r4 % 3 + 1);
            lb.persist(C1.into(), persist_entry(p1, 0));
            lb.persist(C4.into(), persist_entry(p4, now_ticks() + 3));
            let f1 = to_vip(C1, 500, 500, &ike(80));
            let f4 = to_vip(C4, 500, 500, &ike(80));
            #[rustfmt::skip]
            let rows = [
                case("entry stamped at tick 0", f1.bytes(), Expect::Redirect(forwarded(&f1, p1)), counter::FORWARD),
                case("entry stamped in the future", f4.bytes(), Expect::Redirect(forwarded(&f4, p4)), counter::FORWARD),
            ];
            lb.check(&rows);
        },
    );
}

fn persist_entry(backend: u32, atime: u32) -> PersistValue {
    PersistValue {
        backend,
        atime,
        client_mac: ROUTER_MAC,
        port: 0,
        _pad: 0,
    }
}

#[test]
fn no_usable_backend_drops() {
    Fixture::both_fast_paths(setup(), |lb| {
        lb.write_ring(SVC4, &vec![0; RING as usize]);
        #[rustfmt::skip]
        let rows = [case("ring of zeros", to_vip(C1, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_NO_BACKEND)];
        lb.check(&rows);
        assert_eq!(
            (lb.persisted(C1.into()), lb.probation(C1.into())),
            (None, None)
        );
    });
}

#[test]
fn inconsistent_maps_drop_as_bad_backend() {
    Fixture::both_fast_paths(setup(), |lb| {
        // A ring naming a backend id whose BACKENDS slot was never written.
        lb.write_ring(SVC4, &vec![9; RING as usize]);
        #[rustfmt::skip]
        let rows = [case("missing backend", to_vip(C1, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_BAD_BACKEND)];
        lb.check(&rows);

        // A backend whose egress port has no devmap entry.
        let ring = lb.maglev(SVC4, &[]);
        lb.write_ring(SVC4, &ring);
        let b1 = lb.ring_choice(C2.into());
        let mut b = lb.backend(b1);
        b.tx_port = 5;
        lb.set_backend(b1, b);
        #[rustfmt::skip]
        let rows = [case("no egress interface", to_vip(C2, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_BAD_BACKEND)];
        lb.check(&rows);
    });
}

#[test]
fn vip_traffic_only_on_a_clients_interface() {
    Fixture::both_fast_paths(setup(), |lb| {
        let init = to_vip(C1, 500, 500, &ike(100));
        // The same frame arriving on the backends' interface (no clients role).
        #[rustfmt::skip]
        let rows = [
            case("VIP packet on the backends' interface", init.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int).events(&[]),
        ];
        lb.check(&rows);
        // An interface ikelb is not attached to (no INGRESS entry at all).
        lb.set_ingress(Side::Ext, 0);
        #[rustfmt::skip]
        let rows = [
            case("VIP packet on an unattached interface", init.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).events(&[]),
        ];
        lb.check(&rows);
        assert_eq!(
            (lb.persisted(C1.into()), lb.probation(C1.into())),
            (None, None)
        );
    });
}

/// The data path finds an IPv4 VIP in `VIP_INDEX_V4` (one array read) before any hash lookup:
/// the slot names its one VIP and service, or says that several VIPs share it (then
/// `VIPS_V4` decides). An address in a VIP's slot that is not that VIP is no VIP; a VIP whose
/// slot the daemon has not written yet (it writes the index after `VIPS_V4` and `SERVICES`)
/// is not served yet.
#[test]
fn the_vip_index_decides_and_a_shared_slot_asks_the_hash() {
    use aya::maps::Array;
    use lb_common::{maps, vip_slot, VipSlot, VIP_SLOT_SHARED};
    Fixture::both_fast_paths(setup(), |lb| {
        let vip = u32::from_ne_bytes(VIP4.octets());
        let slot = vip_slot(vip);
        let twin = (1u32..)
            .map(|i| Ipv4Addr::new(203, 0, (i >> 8) as u8, i as u8))
            .find(|a| *a != VIP4 && vip_slot(u32::from_ne_bytes(a.octets())) == slot)
            .expect("an address in the VIP's slot");
        let f = to_vip(C1, 500, 500, &ike(40));
        let b = lb.ring_choice(C1.into());
        let to_twin = Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (C2, 500), (twin, 500), &ike(40));
        #[rustfmt::skip]
        lb.check(&[
            case("the VIP, alone in its slot", f.bytes(), Expect::Redirect(forwarded(&f, b)), counter::FORWARD),
            case("another address of the slot: no VIP", to_twin.bytes(), Expect::Pass, counter::PASS_NOT_VIP),
        ]);
        let set = |lb: &mut Fixture, v: VipSlot| {
            let mut a: Array<_, VipSlot> = lb.map(maps::VIP_INDEX_V4);
            a.set(slot, v, 0).unwrap();
        };
        set(
            lb,
            VipSlot {
                state: VIP_SLOT_SHARED,
                ..VipSlot::default()
            },
        );
        #[rustfmt::skip]
        lb.check(&[
            case("shared slot: VIPS_V4 has the VIP", f.bytes(), Expect::Redirect(forwarded(&f, b)), counter::FORWARD),
            case("shared slot: VIPS_V4 has no such VIP", to_twin.bytes(), Expect::Pass, counter::PASS_NOT_VIP),
        ]);
        set(lb, VipSlot::default());
        #[rustfmt::skip]
        lb.check(&[case("slot not written yet: not served", f.bytes(), Expect::Pass, counter::PASS_NOT_VIP)]);
    });
}
