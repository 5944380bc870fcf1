//! The XDP program on crafted frames through `BPF_PROG_TEST_RUN` (aya `test_run`): forward and
//! reverse paths, relearning, one-arm, DSR, reselection, persistence, a young clock, no usable
//! backend, inconsistent maps, the clients' interface and the VIP index.
//!
//! Each test loads the embedded object (`lb_ctl::EBPF_OBJECT`) through the shared fixture
//! `ikelb_tests::xdp` with small maps filled like the daemon would: a dual-stack virtual
//! server, VIPs 203.0.113.10 and 2001:db8:ffff::10, UDP 500/4500 + ESP (no TCP here, but in
//! the DSR test), three backends per family in a Maglev ring from `lb_common::maglev::build`.
//! A table is a list of rows: input frame, expected action, expected output frame byte for
//! byte (built independently by `ikelb_tests::packet` / `packet6`, checksums from scratch),
//! and the one counter the verdict must bump.
//!
//! Every table is written once, generic over the address family (`FixtureFamily`), and runs
//! as two tests, `case::ipv4` and `case::ipv6` (`ikelb_tests::both_families!`): the data path
//! selects, persists and rewrites both families alike. What only one family has (IPv4's header
//! options and ICMP, IPv6's extension headers and ICMPv6) is in `prog_test_run_protocols.rs`.
//!
//! Every frame arrives on a real interface of the fixture's own network namespace (`ext` for
//! clients, `int` for backends, through `xdp_md.ingress_ifindex`), and each redirect row runs
//! with only its expected devmap port present, so a frame sent by the wrong port or by
//! XDP_TX fails the row (`ikelb_tests::xdp`, module doc). Every test runs its table twice:
//! with the load-time global `SLOT_FAST_PATH` off and on (`Fixture::both_fast_paths`).
//! New clients land in the probation maps (not yet established); the persistence maps hold
//! established ones. The edge rules (roles, proof, promotion, FIB evidence, ICMP) are in
//! `prog_test_run_edge/`.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ikelb_tests::{
    both_families,
    family::FamilySock,
    frame::ETH_LEN,
    packet::{self, IpFrame, Mac, PROTO_ESP},
    xdp::{
        backend_mac, case, forwarded, forwarded_frame, forwarded_from, from_backend, mac_str,
        now_ticks, persist_entry, raw_from_backend, raw_to_vip, reversed, reversed_frame,
        ticks_ago, to_vip, Expect, Fixture, FixtureFamily, Setup, Side, Topology, EXT_MAC, INT_MAC,
        PORT_EXT, RING, ROUTER_MAC,
    },
};
use lb_common::{
    counter, event, Backend, Traffic, BACKEND_F_USABLE, DIR_FORWARD, DIR_REVERSE, VIP_SLOT_EMPTY,
    VIP_SLOT_SHARED,
};

const ROUTER2_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x02];

/// The fixture as this file's tables expect it: UDP 500/4500 and ESP, no TCP.
fn setup() -> Setup {
    Setup {
        tcp: false,
        ..Setup::default()
    }
}

/// Clients C1–C4: 198.51.100.7, .8, 192.0.2.33 (another routed network), 198.51.100.9, and
/// their IPv6 counterparts.
fn clients<F: FixtureFamily>() -> [F; 4] {
    [F::client(7), F::client(8), F::far_client(33), F::client(9)]
}

/// IKE-sized payloads (the content does not matter to ikelb; the length does for fragments).
fn ike(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn ring<F: FixtureFamily>(lb: &mut Fixture, client: F) -> u32 {
    lb.ring_choice(client.into())
}

/// The two fragments of `whole` after a correct forward NAT to backend `id`: the first
/// fragment's UDP checksum covers the whole datagram, so it is computed on the rewritten whole.
fn nat_fragments<Fr: IpFrame>(whole: &Fr, id: u32) -> (Vec<u8>, Vec<u8>)
where
    Fr::Addr: FixtureFamily,
{
    let (a, b) = forwarded_frame(whole, id, INT_MAC).split(Fr::Addr::FRAG_LEN);
    (a.bytes(), b.bytes())
}

/// As [`nat_fragments`] for a backend's reply going back to its client.
fn reverse_fragments<Fr: IpFrame>(whole: &Fr) -> (Vec<u8>, Vec<u8>)
where
    Fr::Addr: FixtureFamily,
{
    let (a, b) = reversed_frame(whole, ROUTER_MAC).split(Fr::Addr::FRAG_LEN);
    (a.bytes(), b.bytes())
}

both_families!(forward_path, setup());

fn forward_path<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, c2, c3, _] = clients::<F>();
    let (b1, b2, b3) = (ring(lb, c1), ring(lb, c2), ring(lb, c3));

    let init = to_vip(c1, 500, 500, &ike(300));
    let auth = to_vip(c1, 4500, 4500, &ike(400));
    // No checksum over IPv4 (RFC 768); invalid over IPv6 (RFC 8200 §8.1), never made valid.
    let nocsum = to_vip(c1, 4500, 4500, &ike(100)).with_udp_checksum(0);
    let esp = raw_to_vip(c1, PROTO_ESP, &ike(120));
    // C2's IKE_AUTH with certificates, fragmented by its IP stack: the first fragment has the
    // UDP header (whose checksum covers the whole datagram), the second has no ports.
    let big = to_vip(c2, 4500, 4500, &ike(1800));
    let (frag1, frag2) = big.split(F::FRAG_LEN);
    let (frag1_out, frag2_out) = nat_fragments(&big, b2);
    // C3 is first seen through a non-first fragment: steered by address alone.
    let (_, c3_frag2) = to_vip(c3, 4500, 4500, &ike(1800)).split(F::FRAG_LEN);
    let not_vip = F::Frame::udp(
        ROUTER_MAC,
        EXT_MAC,
        (c1, 500),
        (F::in_vip_net(11), 500),
        &ike(20),
    );

    #[rustfmt::skip]
    let rows = vec![
        case("UDP 500 to the VIP", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD),
        case("UDP 4500, same client", auth.bytes(), Expect::Redirect(forwarded(&auth, b1)), counter::FORWARD),
        case("UDP checksum 0 stays 0", nocsum.bytes(), Expect::Redirect(forwarded(&nocsum, b1)), counter::FORWARD),
        case("ESP, same client", esp.bytes(), Expect::Redirect(forwarded(&esp, b1)), counter::FORWARD),
        case("first fragment", frag1.bytes(), Expect::Redirect(frag1_out), counter::FORWARD),
        case("non-first fragment", frag2.bytes(), Expect::Redirect(frag2_out), counter::FORWARD),
        case("non-first fragment of a new client", c3_frag2.bytes(), Expect::Redirect(forwarded(&c3_frag2, b3)), counter::FORWARD),
        case("another UDP port to the VIP", to_vip(c1, 5000, 53, &ike(20)).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
        case("TTL 1", to_vip(c1, 500, 500, &ike(50)).with_hops(1).bytes(), Expect::Pass, counter::PASS_TTL),
        case("not to a VIP", not_vip.bytes(), Expect::Pass, counter::PASS_NOT_VIP),
    ];
    lb.check(&rows);

    // New clients are on probation: the entry remembers the backend and where the client's
    // frames came from; nothing is established yet.
    for (client, id) in [(c1, b1), (c2, b2)] {
        let e = lb.probation(client.into()).expect("a probation entry");
        assert_eq!(
            (e.backend, e.client_mac, e.port, e.proof),
            (id, ROUTER_MAC, PORT_EXT as u8, 0)
        );
        assert_eq!(lb.persisted(client.into()), None, "not established");
    }
    // A non-first fragment never creates an entry (it proves nothing, and a spoofed one costs
    // nothing to send).
    assert_eq!(
        (lb.persisted(c3.into()), lb.probation(c3.into())),
        (None, None)
    );
    // Per-backend traffic: every forwarded frame, its length.
    let c1_bytes: u64 = [&init, &auth, &nocsum, &esp]
        .iter()
        .map(|f| f.bytes().len() as u64)
        .sum();
    let c2_bytes = (frag1.bytes().len() + frag2.bytes().len()) as u64;
    let mut want = [Traffic::default(); 7];
    for (id, packets, bytes) in [(b1, 4, c1_bytes), (b2, 2, c2_bytes)] {
        want[id as usize].packets += packets;
        want[id as usize].bytes += bytes;
    }
    want[b3 as usize].packets += 1;
    want[b3 as usize].bytes += c3_frag2.bytes().len() as u64;
    for id in F::BACKEND_IDS {
        assert_eq!(
            lb.traffic(id, DIR_FORWARD),
            want[id as usize],
            "backend {id} forward traffic"
        );
    }
}

both_families!(malformed_and_foreign_frames_are_never_forwarded, setup());

fn malformed_and_foreign_frames_are_never_forwarded<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, ..] = clients::<F>();
    let good = to_vip(c1, 500, 500, &ike(64)).bytes();
    let ip = ETH_LEN;
    let l4 = ip + F::IP_HEADER_LEN;

    // The other family's version number in the header.
    let other = if good[ip] >> 4 == 4 { 6 } else { 4 };
    let mut version = good.clone();
    version[ip] = (other << 4) | (good[ip] & 0x0f);
    let mut too_long = good.clone();
    F::set_payload_len(&mut too_long, good.len() - l4 + 1);
    // A UDP header cut after 4 bytes, consistently.
    let mut udp_cut = good[..l4 + 4].to_vec();
    F::set_payload_len(&mut udp_cut, 4);
    // The same, with Ethernet padding after it (IPv4: to the 60-byte minimum frame): the UDP
    // header "fits" the frame but not the datagram.
    let mut udp_cut_padded = udp_cut.clone();
    udp_cut_padded.resize(l4 + 26, 0);

    #[rustfmt::skip]
    let rows = vec![
        // test_run refuses frames shorter than an Ethernet header (EINVAL), so the
        // truncated-Ethernet branch is reachable only on a real interface.
        case("IP header truncated", good[..ip + F::IP_HEADER_LEN / 2].to_vec(), Expect::Drop, counter::DROP_MALFORMED),
        case("Ethernet header only", good[..ip].to_vec(), Expect::Drop, counter::DROP_MALFORMED),
        case(format!("version {other} in an {} ethertype", F::NAME), version, Expect::Drop, counter::DROP_MALFORMED),
        case("IP length beyond the frame", too_long, Expect::Drop, counter::DROP_MALFORMED),
        case("UDP header truncated", udp_cut, Expect::Drop, counter::DROP_MALFORMED),
        case("UDP header beyond the datagram", udp_cut_padded, Expect::Drop, counter::DROP_MALFORMED),
        case("802.1Q tagged", packet::vlan_tagged(&good, 0x8100, 7), Expect::Pass, counter::PASS_VLAN),
        case("802.1ad tagged", packet::vlan_tagged(&good, 0x88a8, 7), Expect::Pass, counter::PASS_VLAN),
    ];
    lb.check(&rows);
    assert_eq!(
        (lb.persisted(c1.into()), lb.probation(c1.into())),
        (None, None),
        "nothing was learned from refused frames"
    );
}

both_families!(reverse_path, setup());

fn reverse_path<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, ..] = clients::<F>();
    let ids = F::BACKEND_IDS;
    let b1 = ring(lb, c1);
    let other = if b1 == ids[0] { ids[1] } else { ids[0] };
    let init = to_vip(c1, 500, 500, &ike(300));
    // A client without any entry whose ring slot names another backend than b1.
    let stranger = (1..=250)
        .map(F::client)
        .find(|&a| ring(lb, a) != b1)
        .unwrap();

    let reply = from_backend(b1, 500, c1, 500, &ike(200));
    let nat_t = from_backend(b1, 4500, c1, 4500, &ike(90));
    let nocsum = from_backend(b1, 4500, c1, 4500, &ike(90)).with_udp_checksum(0);
    let big = from_backend(b1, 4500, c1, 4500, &ike(1600));
    let (frag1, frag2) = big.split(F::FRAG_LEN);
    let (frag1_out, frag2_out) = reverse_fragments(&big);
    let esp = raw_from_backend(b1, c1, PROTO_ESP, &ike(100));
    let stranger_reply = from_backend(b1, 4500, stranger, 4500, &ike(40));
    let not_backend = F::Frame::udp(
        ROUTER_MAC,
        INT_MAC,
        (F::in_backends_net(99), 4500),
        (c1, 4500),
        &ike(40),
    );

    #[rustfmt::skip]
    let rows = vec![
        case("client's IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD),
        case("backend reply from 500", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE),
        case("backend reply from 4500", nat_t.bytes(), Expect::Redirect(reversed(&nat_t, ROUTER_MAC)), counter::REVERSE),
        case("backend reply, UDP checksum 0", nocsum.bytes(), Expect::Redirect(reversed(&nocsum, ROUTER_MAC)), counter::REVERSE),
        case("backend reply, first fragment", frag1.bytes(), Expect::Redirect(frag1_out), counter::REVERSE),
        case("backend reply, non-first fragment", frag2.bytes(), Expect::Redirect(frag2_out), counter::REVERSE),
        case("backend ESP", esp.bytes(), Expect::Redirect(reversed(&esp, ROUTER_MAC)), counter::REVERSE),
        case("backend to a non-client of its ring slot", stranger_reply.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
        case("another backend to the client", from_backend(other, 4500, c1, 4500, &ike(40)).bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
        case("backend from another port", from_backend(b1, 22, c1, 40000, &ike(40)).bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
        case("backend reply, TTL 1", from_backend(b1, 4500, c1, 4500, &ike(40)).with_hops(1).bytes(), Expect::Pass, counter::PASS_TTL),
        case("not from a backend", not_backend.bytes(), Expect::Pass, counter::PASS_NOT_VIP),
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
}

both_families!(client_behind_a_new_router_is_relearned, setup());

fn client_behind_a_new_router_is_relearned<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, ..] = clients::<F>();
    let b1 = ring(lb, c1);
    // A real IKE_SA_INIT request (responder SPI 0: not mid-session).
    let first = to_vip(c1, 500, 500, &packet::ike_message(0x1234, 0, 34, 0x08, 100));
    let moved = to_vip(c1, 4500, 4500, &ike(100)).with_macs(ROUTER2_MAC, EXT_MAC);
    let reply = from_backend(b1, 4500, c1, 4500, &ike(60));
    #[rustfmt::skip]
    let rows = [
        case("via router 1", first.bytes(), Expect::Redirect(forwarded(&first, b1)), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1)]),
    ];
    lb.check(&rows);
    // The upstream router's address now answers from router 2's MAC: the FIB agrees with the
    // new frames, so the entry learns them.
    let (r, m) = (F::ROUTER.to_string(), mac_str(ROUTER2_MAC));
    #[rustfmt::skip]
    lb.net.ip(&["neigh", "replace", &r, "lladdr", &m, "nud", "permanent", "dev", "ext"]);
    #[rustfmt::skip]
    let rows = [
        case("via router 2", moved.bytes(), Expect::Redirect(forwarded(&moved, b1)), counter::FORWARD)
            .events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
        case("reply goes to router 2", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER2_MAC)), counter::REVERSE),
    ];
    lb.check(&rows);
}

both_families!(
    one_arm_leaves_by_xdp_tx,
    Setup {
        topology: Topology::OneArm,
        ..setup()
    }
);

fn one_arm_leaves_by_xdp_tx<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, ..] = clients::<F>();
    let b1 = ring(lb, c1);
    let init = to_vip(c1, 500, 500, &ike(100));
    // One arm: the backend sends to the gateway's only interface, `ext`.
    let reply = from_backend(b1, 500, c1, 500, &ike(60)).with_macs(backend_mac(b1), EXT_MAC);
    #[rustfmt::skip]
    let rows = [
        case("client to VIP", init.bytes(), Expect::Tx(forwarded_from(&init, b1, EXT_MAC)), counter::FORWARD),
        case("backend reply", reply.bytes(), Expect::Tx(reversed(&reply, ROUTER_MAC)), counter::REVERSE),
    ];
    lb.check(&rows);
}

// DSR with TCP 443 in the group, for its row.
both_families!(
    dsr_rewrites_macs_and_hops_only,
    Setup {
        dsr: true,
        ..Setup::default()
    }
);

/// DSR: UDP, TCP and fragments keep their addresses (the backend holds the VIP); only the
/// MACs and the TTL or hop limit change.
fn dsr_rewrites_macs_and_hops_only<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, ..] = clients::<F>();
    let b1 = ring(lb, c1);
    let b = lb.backend(b1);
    let dsr = |f: &F::Frame| {
        let hops = f.hops() - 1;
        f.clone().with_hops(hops).with_macs(b.smac, b.dmac).bytes()
    };
    let init = to_vip(c1, 500, 500, &ike(100));
    let syn = F::Frame::tcp(ROUTER_MAC, EXT_MAC, (c1, 50_000), (F::VIP, 443), &[]);
    let (f1, f2) = to_vip(c1, 4500, 4500, &ike(3000)).split(F::FRAG_LEN);
    let backend_packet = from_backend(b1, 500, c1, 500, &ike(60));
    #[rustfmt::skip]
    let rows = [
        case("client to VIP", init.bytes(), Expect::Redirect(dsr(&init)), counter::FORWARD),
        case("TCP 443", syn.bytes(), Expect::Redirect(dsr(&syn)), counter::FORWARD),
        case("first fragment", f1.bytes(), Expect::Redirect(dsr(&f1)), counter::FORWARD),
        case("non-first fragment", f2.bytes(), Expect::Redirect(dsr(&f2)), counter::FORWARD),
        // In DSR mode backends answer from the VIP themselves; a packet from a backend
        // address is not ikelb's.
        case("backend packet", backend_packet.bytes(), Expect::Pass, counter::PASS_NOT_VIP),
    ];
    lb.check(&rows);
}

both_families!(unusable_backend_is_reselected, setup());

fn unusable_backend_is_reselected<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, ..] = clients::<F>();
    let b1 = ring(lb, c1);
    let init = to_vip(c1, 500, 500, &ike(100));
    #[rustfmt::skip]
    lb.check(&[case("before", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD)]);

    // The daemon marks b1 down and rebuilds the ring without it.
    let mut b = lb.backend(b1);
    b.flags &= !BACKEND_F_USABLE;
    lb.set_backend(b1, b);
    let table = lb.maglev(F::SVC, &[b1]);
    lb.write_ring(F::SVC, &table);
    let now = ring(lb, c1);
    assert_ne!(now, b1);

    let auth = to_vip(c1, 4500, 4500, &ike(100));
    #[rustfmt::skip]
    lb.check(&[case("after", auth.bytes(), Expect::Redirect(forwarded(&auth, now)), counter::FORWARD)]);
    // The probation entry is re-selected in place.
    assert_eq!(lb.probation(c1.into()).map(|e| e.backend), Some(now));
}

/// Idle timeout of the persistence rows, in ticks (~10.7 s: a row under TCG emulation takes
/// seconds, and an active entry must not idle out while it runs).
const TIMEOUT: u32 = 10;

both_families!(
    persistence_wins_over_the_ring_until_idle,
    Setup {
        persist_timeout_ticks: TIMEOUT,
        ..setup()
    }
);

fn persistence_wins_over_the_ring_until_idle<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, c2, c3, c4] = clients::<F>();
    // Clients the ring would send elsewhere, persisted on another backend: C1 active, C2 idle,
    // C4 stamped a tick ahead of this CPU's clock (another CPU crossed the tick first): as
    // live as C1, not idle for 2^32 ticks.
    let (r1, r2, r3, r4) = (ring(lb, c1), ring(lb, c2), ring(lb, c3), ring(lb, c4));
    let (p1, p2, p3) = (
        F::other_backend(r1),
        F::other_backend(r2),
        F::other_backend(r3),
    );
    // Neither C4's ring choice nor C3's backend (given away below).
    let p4 = F::BACKEND_IDS
        .into_iter()
        .find(|&b| b != r4 && b != p3)
        .unwrap();
    let idle = ticks_ago(TIMEOUT + 2);
    let now = now_ticks();
    lb.persist(c1.into(), persist_entry(p1, now, ROUTER_MAC, 0));
    lb.persist(c2.into(), persist_entry(p2, idle, ROUTER_MAC, 0));
    lb.persist(c4.into(), persist_entry(p4, now + 1, ROUTER_MAC, 0));
    // C3 is persisted on a backend id the daemon has since given to another service.
    lb.persist(c3.into(), persist_entry(p3, now, ROUTER_MAC, 0));
    let mut b = lb.backend(p3);
    b.service = F::OTHER_SVC;
    lb.set_backend(p3, b);

    let f1 = to_vip(c1, 4500, 4500, &ike(80));
    let f2 = to_vip(c2, 4500, 4500, &ike(80));
    let f3 = to_vip(c3, 4500, 4500, &ike(80));
    let f4 = to_vip(c4, 4500, 4500, &ike(80));
    #[rustfmt::skip]
    let rows = [
        case("active client keeps its backend", f1.bytes(), Expect::Redirect(forwarded(&f1, p1)), counter::FORWARD),
        case("idle client is re-balanced", f2.bytes(), Expect::Redirect(forwarded(&f2, r2)), counter::FORWARD),
        case("backend id now another service's", f3.bytes(), Expect::Redirect(forwarded(&f3, r3)), counter::FORWARD),
        case("entry stamped a tick ahead keeps its backend", f4.bytes(), Expect::Redirect(forwarded(&f4, p4)), counter::FORWARD),
    ];
    lb.check(&rows);
    let e1 = lb.persisted(c1.into()).unwrap();
    assert_eq!(e1.backend, p1);
    assert!(e1.atime >= now, "atime refreshed");
    assert_eq!(lb.persisted(c2.into()).unwrap().backend, r2);
    assert_eq!(lb.persisted(c3.into()).unwrap().backend, r3);
    assert_eq!(lb.persisted(c4.into()).unwrap().backend, p4);
}

both_families!(young_clock_keeps_persisted_clients);

/// A gateway younger than its persistence timeout (`now` below the timeout, as on every boot):
/// an entry stamped at tick 0 is live, and so is one stamped ahead of `now`.
fn young_clock_keeps_persisted_clients<F: FixtureFamily>() {
    let now = now_ticks();
    let setup = Setup {
        persist_timeout_ticks: now + 1000,
        ..setup()
    };
    Fixture::both_fast_paths(setup, |lb| {
        let [c1, _, _, c4] = clients::<F>();
        let (p1, p4) = (
            F::other_backend(ring(lb, c1)),
            F::other_backend(ring(lb, c4)),
        );
        lb.persist(c1.into(), persist_entry(p1, 0, ROUTER_MAC, 0));
        lb.persist(c4.into(), persist_entry(p4, now_ticks() + 3, ROUTER_MAC, 0));
        let f1 = to_vip(c1, 500, 500, &ike(80));
        let f4 = to_vip(c4, 500, 500, &ike(80));
        #[rustfmt::skip]
        let rows = [
            case("entry stamped at tick 0", f1.bytes(), Expect::Redirect(forwarded(&f1, p1)), counter::FORWARD),
            case("entry stamped in the future", f4.bytes(), Expect::Redirect(forwarded(&f4, p4)), counter::FORWARD),
        ];
        lb.check(&rows);
    });
}

both_families!(no_usable_backend_drops, setup());

fn no_usable_backend_drops<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, ..] = clients::<F>();
    lb.write_ring(F::SVC, &vec![0; RING as usize]);
    #[rustfmt::skip]
    lb.check(&[case("ring of zeros", to_vip(c1, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_NO_BACKEND)]);
    assert_eq!(
        (lb.persisted(c1.into()), lb.probation(c1.into())),
        (None, None)
    );
}

both_families!(inconsistent_maps_drop_as_bad_backend, setup());

fn inconsistent_maps_drop_as_bad_backend<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, c2, ..] = clients::<F>();
    // A ring naming a backend id whose BACKENDS slot was never written.
    lb.write_ring(F::SVC, &vec![9; RING as usize]);
    #[rustfmt::skip]
    lb.check(&[case("missing backend", to_vip(c1, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_BAD_BACKEND)]);

    // A backend whose egress port has no devmap entry.
    let table = lb.maglev(F::SVC, &[]);
    lb.write_ring(F::SVC, &table);
    let b2 = ring(lb, c2);
    let mut b = lb.backend(b2);
    b.tx_port = 5;
    lb.set_backend(b2, b);
    #[rustfmt::skip]
    lb.check(&[case("no egress interface", to_vip(c2, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_BAD_BACKEND)]);

    // The ring still names the client's backend, but its slot was cleared.
    let b1 = ring(lb, c1);
    lb.set_backend(b1, Backend::default());
    #[rustfmt::skip]
    lb.check(&[case("ring names a cleared backend", to_vip(c1, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_BAD_BACKEND)]);
    assert_eq!(lb.persisted(c1.into()), None);
}

both_families!(vip_traffic_only_on_a_clients_interface, setup());

fn vip_traffic_only_on_a_clients_interface<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, ..] = clients::<F>();
    let init = to_vip(c1, 500, 500, &ike(100));
    // The same frame arriving on the backends' interface (no clients role).
    #[rustfmt::skip]
    lb.check(&[
        case("VIP packet on the backends' interface", init.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int).events(&[]),
    ]);
    // An interface ikelb is not attached to (no INGRESS entry at all).
    lb.set_ingress(Side::Ext, 0);
    #[rustfmt::skip]
    lb.check(&[
        case("VIP packet on an unattached interface", init.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).events(&[]),
    ]);
    assert_eq!(
        (lb.persisted(c1.into()), lb.probation(c1.into())),
        (None, None)
    );
}

both_families!(
    the_vip_index_decides_and_a_shared_slot_asks_the_hash,
    setup()
);

/// Address `i` of a network around the VIP: 203.0.`i / 256`.`i % 256`, 2001:db8:ffff::`i`
/// (two low groups).
fn near_vip<F: FixtureFamily>(i: u32) -> F {
    let ip: IpAddr = match F::VIP.into() {
        IpAddr::V4(_) => Ipv4Addr::new(203, 0, (i >> 8) as u8, i as u8).into(),
        IpAddr::V6(vip) => {
            let mut s = vip.segments();
            (s[6], s[7]) = ((i >> 16) as u16, i as u16);
            Ipv6Addr::from(s).into()
        }
    };
    F::of_sock(SocketAddr::new(ip, 0))
        .expect("the VIP's family")
        .ip_addr()
}

/// The data path finds a VIP in its family's VIP index (`VIP_INDEX_V4`, `VIP_INDEX_V6`: one
/// array read) before any hash lookup: the slot names its one VIP and service, or says that
/// several VIPs share it (then `VIPS_V4` or `VIPS_V6` decides). An address in a VIP's slot
/// that is not that VIP is no VIP; a VIP whose slot the daemon has not written yet (it writes
/// the index after the VIP hash and `SERVICES`) is not served yet.
fn the_vip_index_decides_and_a_shared_slot_asks_the_hash<F: FixtureFamily>(lb: &mut Fixture) {
    let [c1, c2, ..] = clients::<F>();
    let slot = Fixture::vip_index_slot(F::VIP.into());
    let twin = (1u32..)
        .map(near_vip::<F>)
        .find(|&a| a != F::VIP && Fixture::vip_index_slot(a.into()) == slot)
        .expect("an address in the VIP's slot");
    let f = to_vip(c1, 500, 500, &ike(40));
    let b = ring(lb, c1);
    let to_twin = F::Frame::udp(ROUTER_MAC, EXT_MAC, (c2, 500), (twin, 500), &ike(40));
    #[rustfmt::skip]
    lb.check(&[
        case("the VIP, alone in its slot", f.bytes(), Expect::Redirect(forwarded(&f, b)), counter::FORWARD),
        case("another address of the slot: no VIP", to_twin.bytes(), Expect::Pass, counter::PASS_NOT_VIP),
    ]);
    lb.set_vip_index(F::VIP.into(), VIP_SLOT_SHARED, 0);
    #[rustfmt::skip]
    lb.check(&[
        case("shared slot: the hash has the VIP", f.bytes(), Expect::Redirect(forwarded(&f, b)), counter::FORWARD),
        case("shared slot: the hash has no such VIP", to_twin.bytes(), Expect::Pass, counter::PASS_NOT_VIP),
    ]);
    lb.set_vip_index(F::VIP.into(), VIP_SLOT_EMPTY, 0);
    #[rustfmt::skip]
    lb.check(&[case("slot not written yet: not served", f.bytes(), Expect::Pass, counter::PASS_NOT_VIP)]);
}
