//! The edge rules of the data path through `BPF_PROG_TEST_RUN`, on the real-interface fixture
//! of `ikelb_tests::xdp` (own namespace, `ext` clients / `int` backends, per-row ingress
//! ifindex, a redirect row runs with only its expected devmap port; every table with the slot
//! fast path off and on unless the test is about the fast path itself):
//!
//! * ingress roles: VIP traffic only on an interface with the clients role, checked right
//!   after the VIP lookup (`drop/not_client_interface`);
//! * RFC 1858: a TCP fragment at offset 1 (`drop/fragment_offset_1`), UDP ones forwarded;
//! * two tiers: new clients on probation (rationed by `NEW_CLIENT_QUOTA`, `lost` for a
//!   mid-session packet), promotion only when the client echoes the proof the reverse path
//!   recorded (IKE responder SPI, TCP ISN + 1), selection PERSIST → PROBATION → ring;
//! * MAC / port moves only with `bpf_fib_lookup` evidence (the namespace's routes and
//!   permanent neighbours make the FIB agree or not);
//! * the reverse path's checks: group, backend interface and MAC, live entry of this backend,
//!   else the ring and a FIB route (`reverse_stateless`), else a drop;
//! * the slot fast path, over IPv4 and IPv6, keyed by the ring slot's `REFRESHED_V4` stamp;
//! * ICMP fragmentation-needed / ICMPv6 packet-too-big about a client's flow, sent on to its
//!   backend with every checksum right (expected frames built from scratch).
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ikelb_tests::{
    packet::{
        icmp_error, icmp_frag_needed, ike_message, ike_proof, non_esp, tcp_proof, Ipv4Frame,
        TcpFlags, PROTO_ESP, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    },
    packet6::{esp_body, icmpv6_error, Ext, IpFrame, Ipv6Frame, PROTO_ICMPV6},
    xdp::{
        backend_mac, backend_v4, backend_v6, case, mac_str, now_ticks, ticks_ago, Expect, Fixture,
        Setup, Side, EXT_MAC, INT_MAC, PORT_EXT, PORT_INT, ROUTER4, ROUTER_MAC, VIP4, VIP6,
    },
};
use lb_common::{
    counter, event, PersistValue, ProbationValue, BACKEND_F_USABLE, QUOTA_WINDOW_SHIFT,
};

const ROUTER2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
/// A MAC that is neither a backend's nor a router's.
const STRANGER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x0e];
/// A router on the clients' path (source of ICMP errors).
const PATH_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PATH_ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);

fn c4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i)
}

/// A client address on an unreachable route in the namespace (100.64.0.0/10).
fn unrouted(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 10 + i)
}

fn c6(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10 + i)
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

fn udp4(client: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Ipv4Frame {
    Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (client, sport), (VIP4, dport), payload)
}

fn esp4(client: Ipv4Addr, spi: u32, seq: u32) -> Ipv4Frame {
    Ipv4Frame::raw(
        ROUTER_MAC,
        EXT_MAC,
        client,
        VIP4,
        PROTO_ESP,
        &esp_body(spi, seq, 80),
    )
}

fn fwd4(f: &Ipv4Frame, id: u32) -> Vec<u8> {
    f.readdressed(f.src, backend_v4(id))
        .with_ttl(f.ttl - 1)
        .with_macs(INT_MAC, backend_mac(id))
        .bytes()
}

fn from_backend4(id: u32, sport: u16, client: Ipv4Addr, dport: u16, payload: &[u8]) -> Ipv4Frame {
    Ipv4Frame::udp(
        backend_mac(id),
        INT_MAC,
        (backend_v4(id), sport),
        (client, dport),
        payload,
    )
}

fn rev4(f: &Ipv4Frame, mac: [u8; 6]) -> Vec<u8> {
    f.readdressed(VIP4, f.dst)
        .with_ttl(f.ttl - 1)
        .with_macs(EXT_MAC, mac)
        .bytes()
}

fn persist_v(backend: u32, atime: u32, mac: [u8; 6], port: u32) -> PersistValue {
    PersistValue {
        backend,
        atime,
        client_mac: mac,
        port: port as u8,
        _pad: 0,
    }
}

fn prob_v(backend: u32, atime: u32, mac: [u8; 6], port: u32, proof: u64) -> ProbationValue {
    ProbationValue {
        backend,
        atime,
        client_mac: mac,
        port: port as u8,
        _pad: 0,
        proof,
    }
}

/// Another IPv4 backend than `id`.
fn other4(id: u32) -> u32 {
    id % 3 + 1
}

/// Another IPv6 backend than `id` (4–6).
fn other6(id: u32) -> u32 {
    (id - 3) % 3 + 4
}

fn ring(lb: &mut Fixture, a: impl Into<IpAddr>) -> u32 {
    lb.ring_choice(a.into())
}

// ---------------------------------------------------------------------------------------------
// Ingress roles

#[test]
fn vip_traffic_only_on_a_clients_interface_checked_first() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c4(1);
        let b = ring(lb, c);
        let init = udp4(c, 500, 500, &sa_init(1));
        let on_int = |f: Vec<u8>| f;
        let opts = ikelb_tests::packet::with_ip_option(&init.bytes());
        let echo = Ipv4Frame::raw(
            ROUTER_MAC,
            EXT_MAC,
            c,
            VIP4,
            PROTO_ICMP,
            &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
        );
        let v6 = Ipv6Frame::udp(ROUTER_MAC, EXT_MAC, (c6(1), 500), (VIP6, 500), &sa_init(2));
        let not_vip = Ipv4Frame::udp(
            ROUTER_MAC,
            EXT_MAC,
            (c, 500),
            (Ipv4Addr::new(203, 0, 113, 11), 500),
            &data(20),
        );
        #[rustfmt::skip]
        let rows = vec![
            case("IKE to the VIP on the backends' interface", on_int(init.bytes()), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int).events(&[]),
            case("TTL 1 to the VIP on int (role first)", init.clone().with_ttl(1).bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int).events(&[]),
            case("UDP 53 to the VIP on int (role first)", udp4(c, 5000, 53, &data(20)).bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int),
            case("IP options to the VIP on int (role first)", opts, Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int),
            case("ICMP echo to the VIP on int", echo.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int),
            case("IPv6 IKE to the VIP6 on int", v6.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int).events(&[]),
            case("not to a VIP, on int", not_vip.bytes(), Expect::Pass, counter::PASS_NOT_VIP).on(Side::Int),
        ];
        lb.check(&rows);
        assert_eq!(
            (lb.persisted(c.into()), lb.probation(c.into())),
            (None, None)
        );
        #[rustfmt::skip]
        let rows = [case("the same IKE on ext", init.bytes(), Expect::Redirect(fwd4(&init, b)), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1)])];
        lb.check(&rows);
    });
}

// ---------------------------------------------------------------------------------------------
// RFC 1858

fn frag4(client: Ipv4Addr, proto: u8, offset: u16, len: usize) -> Ipv4Frame {
    let mut f = Ipv4Frame::raw(ROUTER_MAC, EXT_MAC, client, VIP4, proto, &data(len));
    f.frag_offset = offset;
    f.more_fragments = false;
    f
}

#[test]
fn tcp_fragment_at_offset_1_is_dropped() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c4(2);
        let b = ring(lb, c);
        let t1 = frag4(c, PROTO_TCP, 1, 24);
        let t2 = frag4(c, PROTO_TCP, 2, 24);
        let u1 = frag4(c, PROTO_UDP, 1, 24);
        #[rustfmt::skip]
        let rows = [
            case("TCP fragment at offset 1 (8 bytes)", t1.bytes(), Expect::Drop, counter::DROP_FRAGMENT_OFFSET).events(&[]),
            case("TCP fragment at offset 2", t2.bytes(), Expect::Redirect(fwd4(&t2, b)), counter::FORWARD).events(&[]),
            case("UDP fragment at offset 1", u1.bytes(), Expect::Redirect(fwd4(&u1, b)), counter::FORWARD).events(&[]),
        ];
        lb.check(&rows);
    });
}

/// IPv6 non-first fragments at offsets 1 and 2 are forwarded like any other.
#[test]
fn ipv6_non_first_fragments_at_small_offsets() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c6(2);
        let b = ring(lb, c);
        let frag = |proto: u8, offset: u16| {
            Ipv6Frame::raw(ROUTER_MAC, EXT_MAC, c, VIP6, proto, &data(24)).with_ext(Ext::Fragment {
                offset,
                more: false,
                id: 77,
            })
        };
        let fwd6 = |f: &Ipv6Frame| {
            f.readdressed(f.src, backend_v6(b))
                .with_hop_limit(63)
                .with_macs(INT_MAC, backend_mac(b))
                .bytes()
        };
        let (t1, t2, u1) = (frag(PROTO_TCP, 1), frag(PROTO_TCP, 2), frag(PROTO_UDP, 1));
        // No RFC 1858 rule for IPv6, by decision (`docs/security.md`, "Fragments"): RFC 5722
        // makes receivers drop overlapping fragments, so an offset-1 TCP fragment cannot
        // rewrite the first one's flags at the backend; it is steered like any other.
        #[rustfmt::skip]
        let rows = [
            case("IPv6 TCP fragment at offset 1: steered (RFC 5722, no overlap at the backend)", t1.bytes(), Expect::Redirect(fwd6(&t1)), counter::FORWARD),
            case("IPv6 TCP fragment at offset 2", t2.bytes(), Expect::Redirect(fwd6(&t2)), counter::FORWARD),
            case("IPv6 UDP fragment at offset 1", u1.bytes(), Expect::Redirect(fwd6(&u1)), counter::FORWARD),
        ];
        lb.check(&rows);
    });
}

// ---------------------------------------------------------------------------------------------
// New clients: probation, lost, quota

#[test]
fn new_clients_go_on_probation() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let cs: Vec<Ipv4Addr> = (20..28).map(c4).collect();
        let r: Vec<u32> = cs.iter().map(|&c| ring(lb, c)).collect();
        let init = udp4(cs[0], 500, 500, &sa_init(1));
        let auth4500 = udp4(cs[1], 4500, 4500, &non_esp(&auth(2, 0x1122_3344_5566_7788)));
        let esp = esp4(cs[2], 0xc0ffee, 9);
        let esp_udp = udp4(cs[3], 4500, 4500, &esp_body(0xbeef, 3, 64));
        let frag = frag4(cs[4], PROTO_UDP, 185, 100);
        let info = udp4(cs[5], 500, 500, &ike_message(6, 0x99, 37, 0x08, 40));
        let syn = Ipv4Frame::tcp_segment(
            ROUTER_MAC,
            EXT_MAC,
            (cs[6], 50_000),
            (VIP4, 443),
            1000,
            0,
            TcpFlags {
                syn: true,
                ..Default::default()
            },
            &[],
        );
        let t0 = now_ticks();
        #[rustfmt::skip]
        let rows = vec![
            case("IKE_SA_INIT of a new client", init.bytes(), Expect::Redirect(fwd4(&init, r[0])), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
            case("IKE_AUTH (4500, marker) of an unknown client: lost", auth4500.bytes(), Expect::Redirect(fwd4(&auth4500, r[1])), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
            case("ESP of an unknown client: lost", esp.bytes(), Expect::Redirect(fwd4(&esp, r[2])), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
            case("ESP-in-UDP of an unknown client: lost", esp_udp.bytes(), Expect::Redirect(fwd4(&esp_udp, r[3])), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
            case("non-first fragment of an unknown client: no entry", frag.bytes(), Expect::Redirect(fwd4(&frag, r[4])), counter::FORWARD)
                .events(&[]),
            case("INFORMATIONAL on 500 (responder SPI set): lost", info.bytes(), Expect::Redirect(fwd4(&info, r[5])), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
            case("TCP SYN of a new client", syn.bytes(), Expect::Redirect(fwd4(&syn, r[6])), counter::FORWARD)
                .events(&[(event::PROBATION_INSERT, 1)]),
        ];
        lb.check(&rows);
        let t1 = now_ticks();
        for (i, &c) in cs.iter().enumerate().take(7) {
            assert_eq!(lb.persisted(c.into()), None, "client {c}: not established");
            let p = lb.probation(c.into());
            if i == 4 {
                assert_eq!(p, None, "a non-first fragment creates no entry");
                continue;
            }
            let p = p.unwrap_or_else(|| panic!("client {c}: a probation entry"));
            assert_eq!(
                (p.backend, p.client_mac, p.port, p.proof),
                (r[i], ROUTER_MAC, PORT_EXT as u8, 0),
                "client {c}"
            );
            assert!(
                (t0..=t1).contains(&p.atime),
                "client {c}: atime {} in {t0}..={t1}",
                p.atime
            );
        }
    });
}

fn quota_window() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64) >> QUOTA_WINDOW_SHIFT
}

/// Waits for the start of a fresh quota window (so a few rows fit in one).
fn fresh_window() -> u64 {
    let w = quota_window();
    while quota_window() == w {
        std::thread::sleep(Duration::from_millis(1));
    }
    quota_window()
}

/// Pins this thread to CPU 0: the quota is per CPU.
fn pin_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET on it is in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn new_client_quota_throttles_probation_inserts() {
    Fixture::both_fast_paths(
        Setup {
            new_client_quota: 2,
            ..Setup::default()
        },
        |lb| {
            pin_cpu0();
            let cs: Vec<Ipv4Addr> = (40..43).map(c4).collect();
            let r: Vec<u32> = cs.iter().map(|&c| ring(lb, c)).collect();
            let f: Vec<Ipv4Frame> = cs.iter().map(|&c| udp4(c, 500, 500, &sa_init(7))).collect();
            let w0 = fresh_window();
            #[rustfmt::skip]
            let rows = [
                case("1st new client in the window", f[0].bytes(), Expect::Redirect(fwd4(&f[0], r[0])), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
                case("2nd new client in the window", f[1].bytes(), Expect::Redirect(fwd4(&f[1], r[1])), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
                case("3rd: over quota, still forwarded by the ring", f[2].bytes(), Expect::Redirect(fwd4(&f[2], r[2])), counter::FORWARD).events(&[(event::PROBATION_THROTTLED, 1)]),
            ];
            lb.check(&rows);
            assert_eq!(
                quota_window(),
                w0,
                "the rows crossed a quota window (retry)"
            );
            assert_eq!(
                lb.probation(cs[2].into()),
                None,
                "nothing inserted over quota"
            );
            assert!(lb.probation(cs[1].into()).is_some());
            fresh_window();
            #[rustfmt::skip]
            let rows = [case("3rd again in a new window", f[2].bytes(), Expect::Redirect(fwd4(&f[2], r[2])), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)])];
            lb.check(&rows);
            assert!(lb.probation(cs[2].into()).is_some());

            // With the ration used up, an IKE_SA_INIT does not even look for a probation
            // entry: it follows the ring (the flood contract for clients not established);
            // other messages of a probation client still find theirs.
            let c = c4(44);
            let now = now_ticks();
            let pb = other4(ring(lb, c));
            lb.set_probation(c.into(), prob_v(pb, now, ROUTER_MAC, PORT_EXT, 0));
            let init = udp4(c, 500, 500, &sa_init(9));
            let next = udp4(c, 500, 500, &auth(9, 0x77));
            let fill: Vec<Ipv4Frame> = [45, 46].map(|i| udp4(c4(i), 500, 500, &sa_init(8))).into();
            let w0 = fresh_window();
            #[rustfmt::skip]
            let rows = [
                case("fill the ration 1", fill[0].bytes(), Expect::Redirect(fwd4(&fill[0], ring(lb, c4(45)))), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
                case("fill the ration 2", fill[1].bytes(), Expect::Redirect(fwd4(&fill[1], ring(lb, c4(46)))), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
                case("IKE_SA_INIT over the ration: the ring, not its probation entry", init.bytes(), Expect::Redirect(fwd4(&init, ring(lb, c))), counter::FORWARD).events(&[(event::PROBATION_THROTTLED, 1)]),
                case("its IKE_AUTH: the probation entry", next.bytes(), Expect::Redirect(fwd4(&next, pb)), counter::FORWARD).events(&[]),
            ];
            lb.check(&rows);
            assert_eq!(
                quota_window(),
                w0,
                "the rows crossed a quota window (retry)"
            );
            assert_eq!(
                lb.probation(c.into()).map(|p| p.backend),
                Some(pb),
                "entry untouched"
            );
        },
    );
}

/// With the slot fast path on, an IKE_SA_INIT over the ration in an unchanged slot reads
/// neither map (the slot's invariant makes the ring's backend the one any live entry names):
/// an established client's entry is not even refreshed by it. In a flagged slot it still finds
/// its entry; a backend's address is still refused. With the fast path off, every such packet
/// looks up its entry, as before.
#[test]
fn throttled_ike_sa_init_reads_no_map_in_an_unchanged_slot() {
    Fixture::both_fast_paths(
        Setup {
            new_client_quota: 2,
            persist_timeout_ticks: IDLE_TIMEOUT,
            ..Setup::default()
        },
        |lb| {
            pin_cpu0();
            let fast = lb.setup.slot_fast_path;
            let (kept, moved) = (c4(60), c4(61));
            let (rk, rm) = (ring(lb, kept), ring(lb, moved));
            let old = ticks_ago(3);
            // `kept` sits in an unchanged slot on the ring's backend (the invariant); `moved`
            // was persisted against the ring, so the daemon flagged its slot.
            lb.persist(kept.into(), persist_v(rk, old, ROUTER_MAC, PORT_EXT));
            lb.persist(moved.into(), persist_v(other4(rm), old, ROUTER_MAC, PORT_EXT));
            lb.mark_changed(moved.into());
            let fill: Vec<Ipv4Frame> = [62, 63].map(|i| udp4(c4(i), 500, 500, &sa_init(8))).into();
            let init_kept = udp4(kept, 500, 500, &sa_init(10));
            let init_moved = udp4(moved, 500, 500, &sa_init(11));
            let init_new = udp4(c4(64), 500, 500, &sa_init(12));
            let from_backend = Ipv4Frame::udp(
                ROUTER_MAC,
                EXT_MAC,
                (backend_v4(1), 500),
                (VIP4, 500),
                &sa_init(13),
            );
            let w0 = fresh_window();
            #[rustfmt::skip]
            let rows = [
                case("fill the ration 1", fill[0].bytes(), Expect::Redirect(fwd4(&fill[0], ring(lb, c4(62)))), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
                case("fill the ration 2", fill[1].bytes(), Expect::Redirect(fwd4(&fill[1], ring(lb, c4(63)))), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
                case("established, unchanged slot: its backend, the ring's", init_kept.bytes(), Expect::Redirect(fwd4(&init_kept, rk)), counter::FORWARD)
                    .events(if fast { &[(event::PROBATION_THROTTLED, 1)][..] } else { &[][..] }),
                case("established, flagged slot: its entry's backend", init_moved.bytes(), Expect::Redirect(fwd4(&init_moved, other4(rm))), counter::FORWARD).events(&[]),
                case("new source over the ration: the ring, no entry", init_new.bytes(), Expect::Redirect(fwd4(&init_new, ring(lb, c4(64)))), counter::FORWARD).events(&[(event::PROBATION_THROTTLED, 1)]),
                case("a backend's address over the ration: dropped", from_backend.bytes(), Expect::Drop, counter::DROP_SOURCE_BACKEND).events(&[]),
            ];
            lb.check(&rows);
            assert_eq!(
                quota_window(),
                w0,
                "the rows crossed a quota window (retry)"
            );
            assert_eq!(lb.probation(c4(64).into()), None, "nothing inserted over quota");
            assert_eq!(lb.probation(backend_v4(1).into()), None, "no entry for a backend");
            let atime = |lb: &mut Fixture, c: Ipv4Addr| lb.persisted(c.into()).map(|e| e.atime);
            // The shortcut is seen in what it leaves alone: the entry it did not read.
            if fast {
                assert_eq!(atime(lb, kept), Some(old), "unchanged slot: entry not read");
            } else {
                assert_ne!(atime(lb, kept), Some(old), "fast path off: entry refreshed");
            }
            assert_ne!(atime(lb, moved), Some(old), "flagged slot: entry refreshed");
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Selection with entries

/// Idle timeout of the rows with entries, in ticks (~10.7 s: rows under TCG emulation take
/// seconds, and an active entry must not idle out meanwhile).
const IDLE_TIMEOUT: u32 = 10;

#[test]
fn persist_then_probation_then_ring() {
    Fixture::both_fast_paths(
        Setup {
            persist_timeout_ticks: IDLE_TIMEOUT,
            ..Setup::default()
        },
        |lb| {
            let idle = ticks_ago(IDLE_TIMEOUT + 2);
            let now = now_ticks();
            // Established on a backend the ring does not give it (as the daemon would, its
            // slot is flagged changed).
            let (ca, cb, cc, cd) = (c4(50), c4(51), c4(52), c4(53));
            let pa = other4(ring(lb, ca));
            lb.persist(ca.into(), persist_v(pa, now, ROUTER_MAC, PORT_EXT));
            lb.mark_changed(ca.into());
            // On probation on another backend than the ring's.
            let pb = other4(ring(lb, cb));
            lb.set_probation(cb.into(), prob_v(pb, now, ROUTER_MAC, PORT_EXT, 0));
            lb.mark_changed(cb.into());
            // Idle probation entry, and one naming an unusable backend.
            let rc = ring(lb, cc);
            lb.set_probation(cc.into(), prob_v(other4(rc), idle, ROUTER_MAC, PORT_EXT, 0));
            let rd = ring(lb, cd);
            let dead = other4(rd);
            lb.set_probation(cd.into(), prob_v(dead, now, ROUTER_MAC, PORT_EXT, 0));

            let fa = udp4(ca, 4500, 4500, &non_esp(&auth(1, 2)));
            let fb = udp4(cb, 500, 500, &auth(3, 4));
            let fc = udp4(cc, 500, 500, &auth(5, 6));
            let fd = udp4(cd, 500, 500, &auth(7, 8));
            let t0 = now_ticks();
            #[rustfmt::skip]
            let rows = [
                case("persistence hit", fa.bytes(), Expect::Redirect(fwd4(&fa, pa)), counter::FORWARD).events(&[]),
                case("probation hit (no proof recorded: not promoted)", fb.bytes(), Expect::Redirect(fwd4(&fb, pb)), counter::FORWARD).events(&[]),
                case("idle probation entry: the ring", fc.bytes(), Expect::Redirect(fwd4(&fc, rc)), counter::FORWARD),
            ];
            lb.check(&rows);
            let t1 = now_ticks();
            let mut bk = lb.backend(dead);
            bk.flags &= !BACKEND_F_USABLE;
            lb.set_backend(dead, bk);
            #[rustfmt::skip]
            lb.check(&[case("probation entry on an unusable backend: the ring", fd.bytes(), Expect::Redirect(fwd4(&fd, rd)), counter::FORWARD)]);
            let e = lb.persisted(ca.into()).unwrap();
            assert!(e.atime >= t0, "atime refreshed");
            // The stamp only matters to the slot fast path (the data path writes it only then).
            if lb.setup.slot_fast_path {
                let stamp = lb.refreshed(ca);
                assert!(
                    (t0..=t1).contains(&stamp),
                    "REFRESHED_V4 stamp of {ca}'s slot: {stamp}, want this tick ({t0}..={t1})"
                );
            }
            assert_eq!(lb.probation(cb.into()).map(|p| p.backend), Some(pb));
            assert_eq!(lb.persisted(cb.into()), None);
            assert_eq!(
                lb.probation(cc.into()).map(|p| p.backend),
                Some(rc),
                "re-selected in place"
            );
            assert_eq!(
                lb.probation(cd.into()).map(|p| p.backend),
                Some(rd),
                "re-selected in place"
            );
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Proof and promotion

#[test]
fn ike_responder_spi_promotes() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c4(60);
        let b = ring(lb, c);
        let o = other4(b);
        let spi_i = 0x0102_0304_0506_0708;
        let spi_r = 0xa1b2_c3d4_e5f6_0718;
        let init = udp4(c, 500, 500, &sa_init(spi_i));
        let resp = from_backend4(b, 500, c, 500, &ike_message(spi_i, spi_r, 34, 0x20, 300));
        let wrong = udp4(c, 4500, 4500, &non_esp(&auth(spi_i, spi_r ^ 1)));
        // ESP-in-UDP whose bytes 8..16 happen to be the SPI: no marker, not IKE.
        let mut esp_like = auth(spi_i, spi_r);
        esp_like[0] = 0x55;
        let esp_like = udp4(c, 4500, 4500, &esp_like);
        // An IKE header cut at 24 bytes (the SPI is there, the header is not complete).
        let cut = udp4(c, 500, 500, &auth(spi_i, spi_r)[..24]);
        // An IKEv1 header (major version 1) with the same SPIs: not an IKEv2 proof.
        let mut v1 = auth(spi_i, spi_r);
        v1[17] = 0x10;
        let v1 = udp4(c, 4500, 4500, &non_esp(&v1));
        let good = udp4(c, 4500, 4500, &non_esp(&auth(spi_i, spi_r)));
        let on_500 = udp4(c, 500, 500, &auth(spi_i, spi_r));
        let reply = from_backend4(
            b,
            4500,
            c,
            4500,
            &non_esp(&ike_message(spi_i, spi_r, 35, 0x20, 500)),
        );
        let other_reply = from_backend4(o, 500, c, 500, &ike_message(9, 0x77, 34, 0x20, 60));
        #[rustfmt::skip]
        let rows = vec![
            case("IKE_SA_INIT", init.bytes(), Expect::Redirect(fwd4(&init, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
            case("backend's IKE_SA_INIT response", resp.bytes(), Expect::Redirect(rev4(&resp, ROUTER_MAC)), counter::REVERSE).events(&[]),
        ];
        lb.check(&rows);
        assert_eq!(
            lb.probation(c.into()).map(|p| p.proof),
            Some(ike_proof(spi_r)),
            "proof recorded"
        );
        #[rustfmt::skip]
        let rows = vec![
            case("another backend's IKE to the client: dropped, no proof", other_reply.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            case("IKE_AUTH with another responder SPI", wrong.bytes(), Expect::Redirect(fwd4(&wrong, b)), counter::FORWARD).events(&[]),
            // Events unchecked: with the fast path on, a probation client whose refresh wrote
            // the stamp may take it (bulk never carries a proof either way).
            case("ESP-in-UDP carrying the SPI bytes", esp_like.bytes(), Expect::Redirect(fwd4(&esp_like, b)), counter::FORWARD),
            case("IKE header cut at 24 bytes", cut.bytes(), Expect::Redirect(fwd4(&cut, b)), counter::FORWARD).events(&[]),
            case("IKEv1 header with the SPI", v1.bytes(), Expect::Redirect(fwd4(&v1, b)), counter::FORWARD).events(&[]),
        ];
        lb.check(&rows);
        assert_eq!(
            lb.probation(c.into()).map(|p| p.proof),
            Some(ike_proof(spi_r)),
            "proof kept"
        );
        assert_eq!(lb.persisted(c.into()), None, "not promoted yet");
        let t0 = now_ticks();
        #[rustfmt::skip]
        let rows = vec![
            case("IKE_AUTH echoing the responder SPI: promoted", good.bytes(), Expect::Redirect(fwd4(&good, b)), counter::FORWARD).events(&[(event::PROMOTED, 1)]),
        ];
        lb.check(&rows);
        let e = lb.persisted(c.into()).expect("established");
        assert_eq!(
            (e.backend, e.client_mac, e.port),
            (b, ROUTER_MAC, PORT_EXT as u8)
        );
        assert!(e.atime >= t0);
        assert_eq!(lb.probation(c.into()), None, "probation entry deleted");
        #[rustfmt::skip]
        let rows = vec![
            case("backend's IKE_AUTH response, now established", reply.bytes(), Expect::Redirect(rev4(&reply, ROUTER_MAC)), counter::REVERSE).events(&[]),
            case("the client again on 500: a persistence hit", on_500.bytes(), Expect::Redirect(fwd4(&on_500, b)), counter::FORWARD).events(&[]),
        ];
        lb.check(&rows);
    });
}

#[test]
fn reverse_path_records_the_proof_only_from_ike_with_a_responder_spi() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c4(61);
        let b = ring(lb, c);
        let init = udp4(c, 500, 500, &sa_init(5));
        let s1 = 0x1111_2222_3333_4444u64;
        let s3 = 0x5555_6666_7777_8888u64;
        let nat_t = from_backend4(
            b,
            4500,
            c,
            4500,
            &non_esp(&ike_message(5, s1, 35, 0x20, 80)),
        );
        let esp_udp = from_backend4(b, 4500, c, 4500, &ike_message(0x66, 0x99, 35, 0x20, 80));
        let zero = from_backend4(b, 500, c, 500, &ike_message(5, 0, 34, 0x20, 80));
        let again = from_backend4(b, 500, c, 500, &ike_message(5, s3, 34, 0x20, 80));
        let proof = |lb: &mut Fixture| lb.probation(c.into()).map(|p| p.proof);
        #[rustfmt::skip]
        lb.check(&[case("IKE_SA_INIT", init.bytes(), Expect::Redirect(fwd4(&init, b)), counter::FORWARD)]);
        assert_eq!(proof(lb), Some(0));
        #[rustfmt::skip]
        lb.check(&[case("backend IKE on 4500 behind the marker", nat_t.bytes(), Expect::Redirect(rev4(&nat_t, ROUTER_MAC)), counter::REVERSE)]);
        assert_eq!(proof(lb), Some(ike_proof(s1)), "from 4500 after the marker");
        #[rustfmt::skip]
        lb.check(&[case("backend ESP-in-UDP", esp_udp.bytes(), Expect::Redirect(rev4(&esp_udp, ROUTER_MAC)), counter::REVERSE)]);
        assert_eq!(proof(lb), Some(ike_proof(s1)), "ESP-in-UDP records nothing");
        #[rustfmt::skip]
        lb.check(&[case("backend IKE with responder SPI 0", zero.bytes(), Expect::Redirect(rev4(&zero, ROUTER_MAC)), counter::REVERSE)]);
        assert_eq!(proof(lb), Some(ike_proof(s1)), "SPI 0 records nothing");
        #[rustfmt::skip]
        lb.check(&[case("backend IKE with another responder SPI", again.bytes(), Expect::Redirect(rev4(&again, ROUTER_MAC)), counter::REVERSE)]);
        assert_eq!(
            proof(lb),
            Some(ike_proof(s3)),
            "proof := the latest responder SPI"
        );
    });
}

#[test]
fn tcp_isn_plus_one_promotes() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c4(62);
        let b = ring(lb, c);
        let isn_c = 0x1000_0000u32;
        let isn_s = 0xfedc_ba98u32;
        let seg = |flags: TcpFlags, seq: u32, ack: u32, data: &[u8]| {
            Ipv4Frame::tcp_segment(
                ROUTER_MAC,
                EXT_MAC,
                (c, 50_000),
                (VIP4, 443),
                seq,
                ack,
                flags,
                data,
            )
        };
        let syn = seg(
            TcpFlags {
                syn: true,
                ..Default::default()
            },
            isn_c,
            0,
            &[],
        );
        let syn_ack = Ipv4Frame::tcp_segment(
            backend_mac(b),
            INT_MAC,
            (backend_v4(b), 443),
            (c, 50_000),
            isn_s,
            isn_c + 1,
            TcpFlags {
                syn: true,
                ack: true,
                ..Default::default()
            },
            &[],
        );
        let syn_again = seg(
            TcpFlags {
                syn: true,
                ..Default::default()
            },
            isn_c,
            isn_s.wrapping_add(1),
            &[],
        );
        let wrong_ack = seg(
            TcpFlags {
                ack: true,
                ..Default::default()
            },
            isn_c + 1,
            isn_s.wrapping_add(2),
            &[],
        );
        let ack = seg(
            TcpFlags {
                ack: true,
                ..Default::default()
            },
            isn_c + 1,
            isn_s.wrapping_add(1),
            &[],
        );
        #[rustfmt::skip]
        lb.check(&[
            case("SYN", syn.bytes(), Expect::Redirect(fwd4(&syn, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
            case("backend SYN-ACK", syn_ack.bytes(), Expect::Redirect(rev4(&syn_ack, ROUTER_MAC)), counter::REVERSE).events(&[]),
        ]);
        assert_eq!(
            lb.probation(c.into()).map(|p| p.proof),
            Some(tcp_proof(isn_s))
        );
        #[rustfmt::skip]
        lb.check(&[
            case("SYN without ACK flag carrying the number", syn_again.bytes(), Expect::Redirect(fwd4(&syn_again, b)), counter::FORWARD).events(&[]),
            case("ACK of another number", wrong_ack.bytes(), Expect::Redirect(fwd4(&wrong_ack, b)), counter::FORWARD).events(&[]),
            case("ACK of ISN + 1: promoted", ack.bytes(), Expect::Redirect(fwd4(&ack, b)), counter::FORWARD).events(&[(event::PROMOTED, 1)]),
        ]);
        assert_eq!(lb.persisted(c.into()).map(|e| e.backend), Some(b));
        assert_eq!(lb.probation(c.into()), None);
    });
}

#[test]
fn zero_proof_never_promotes() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = c4(63);
        let b = ring(lb, c);
        let now = now_ticks();
        lb.set_probation(c.into(), prob_v(b, now, ROUTER_MAC, PORT_EXT, 0));
        // Responder SPI 0 echoes proof 0: not a proof.
        let init = udp4(c, 500, 500, &sa_init(1));
        #[rustfmt::skip]
        lb.check(&[case("IKE_SA_INIT against proof 0", init.bytes(), Expect::Redirect(fwd4(&init, b)), counter::FORWARD).events(&[])]);
        assert_eq!(lb.persisted(c.into()), None);
    });
}

// ---------------------------------------------------------------------------------------------
// MAC / port moves

#[test]
fn mac_and_port_moves_need_fib_evidence() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let now = now_ticks();
        let (ca, cb, cc, cd) = (c4(70), c4(71), c4(72), unrouted(1));
        let (ra, rb, rc, rd) = (ring(lb, ca), ring(lb, cb), ring(lb, cc), ring(lb, cd));
        lb.persist(ca.into(), persist_v(ra, now, ROUTER_MAC, PORT_EXT));
        lb.set_probation(cb.into(), prob_v(rb, now, ROUTER_MAC, PORT_EXT, 0));
        // Recorded on the internal port: its next frame from the router on ext is a move.
        lb.persist(cc.into(), persist_v(rc, now, ROUTER_MAC, PORT_INT));
        lb.persist(cd.into(), persist_v(rd, now, ROUTER_MAC, PORT_EXT));
        let via2 = |c: Ipv4Addr| udp4(c, 500, 500, &auth(1, 2)).with_macs(ROUTER2_MAC, EXT_MAC);
        let (a2, b2, d2) = (via2(ca), via2(cb), via2(cd));
        let c1 = udp4(cc, 500, 500, &auth(1, 2));
        let reply_a = from_backend4(ra, 500, ca, 500, &data(40));
        #[rustfmt::skip]
        lb.check(&[
            case("persisted client from another MAC, FIB disagrees", a2.bytes(), Expect::Redirect(fwd4(&a2, ra)), counter::FORWARD).events(&[(event::MAC_MOVE_REJECTED, 1)]),
            case("reply still to the recorded MAC", reply_a.bytes(), Expect::Redirect(rev4(&reply_a, ROUTER_MAC)), counter::REVERSE),
            case("probation client from another MAC, FIB disagrees", b2.bytes(), Expect::Redirect(fwd4(&b2, rb)), counter::FORWARD).events(&[(event::MAC_MOVE_REJECTED, 1)]),
            case("client on another port, FIB agrees", c1.bytes(), Expect::Redirect(fwd4(&c1, rc)), counter::FORWARD).events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
            case("client without a route from another MAC", d2.bytes(), Expect::Redirect(fwd4(&d2, rd)), counter::FORWARD).events(&[(event::MAC_MOVE_REJECTED, 1)]),
        ]);
        let mac_port =
            |lb: &mut Fixture, c: Ipv4Addr| lb.persisted(c.into()).map(|e| (e.client_mac, e.port));
        assert_eq!(mac_port(lb, ca), Some((ROUTER_MAC, 0)));
        assert_eq!(
            lb.probation(cb.into()).map(|e| (e.client_mac, e.port)),
            Some((ROUTER_MAC, 0))
        );
        assert_eq!(
            mac_port(lb, cc),
            Some((ROUTER_MAC, PORT_EXT as u8)),
            "port learned"
        );
        assert_eq!(mac_port(lb, cd), Some((ROUTER_MAC, 0)));
        // The router's address moves to router 2's MAC: now the FIB agrees.
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
        lb.check(&[
            case("persisted client from another MAC, FIB agrees", a2.bytes(), Expect::Redirect(fwd4(&a2, ra)), counter::FORWARD).events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
            case("reply to the new MAC", reply_a.bytes(), Expect::Redirect(rev4(&reply_a, ROUTER2_MAC)), counter::REVERSE),
            case("probation client from another MAC, FIB agrees", b2.bytes(), Expect::Redirect(fwd4(&b2, rb)), counter::FORWARD).events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
        ]);
        assert_eq!(mac_port(lb, ca), Some((ROUTER2_MAC, 0)));
        assert_eq!(
            lb.probation(cb.into()).map(|e| e.client_mac),
            Some(ROUTER2_MAC)
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Reverse path

#[test]
fn reverse_path_checks_and_stateless_replies() {
    Fixture::both_fast_paths(
        Setup {
            persist_timeout_ticks: IDLE_TIMEOUT,
            ..Setup::default()
        },
        |lb| {
            let idle = ticks_ago(IDLE_TIMEOUT + 2);
            let now = now_ticks();
            // Entries of each kind, on backend `b` of each client's ring slot unless said.
            let (cp, cq, ci, cj, co, ck) = (c4(80), c4(81), c4(82), c4(83), c4(84), c4(85));
            let bp = ring(lb, cp);
            lb.persist(cp.into(), persist_v(bp, now, ROUTER2_MAC, PORT_EXT));
            let bq = ring(lb, cq);
            lb.set_probation(cq.into(), prob_v(bq, now, ROUTER2_MAC, PORT_EXT, 0));
            let bi = ring(lb, ci);
            lb.persist(ci.into(), persist_v(bi, idle, ROUTER_MAC, PORT_EXT));
            let bj = ring(lb, cj);
            lb.set_probation(cj.into(), prob_v(bj, idle, ROUTER_MAC, PORT_EXT, 0));
            let bo = ring(lb, co);
            lb.persist(co.into(), persist_v(other4(bo), now, ROUTER_MAC, PORT_EXT));
            let bk = ring(lb, ck);
            lb.set_probation(ck.into(), prob_v(other4(bk), now, ROUTER_MAC, PORT_EXT, 0));
            // No entry at all: one routed, one not, one whose slot names another backend.
            let cs = c4(86);
            let bs = ring(lb, cs);
            let cn = unrouted(2);
            let bn = ring(lb, cn);
            let cx = c4(87);
            let bx = other4(ring(lb, cx));

            let r = |id, c| from_backend4(id, 4500, c, 4500, &data(60));
            let (fp, fq, fi, fj, fo, fk) = (
                r(bp, cp),
                r(bq, cq),
                r(bi, ci),
                r(bj, cj),
                r(bo, co),
                r(bk, ck),
            );
            let (fs, fnr, fx) = (r(bs, cs), r(bn, cn), r(bx, cx));
            // The gateway's own address on the backends' side (its probes of a backend's
            // service port get answers like this one).
            let to_gw = r(1, Ipv4Addr::new(10, 0, 0, 1));
            let to_gw_ext = r(2, Ipv4Addr::new(192, 0, 2, 1));
            let ssh_ext = Ipv4Frame::udp(
                backend_mac(bp),
                EXT_MAC,
                (backend_v4(bp), 22),
                (cp, 40_000),
                &data(20),
            );
            let wrong_if = r(bp, cp).with_macs(backend_mac(bp), EXT_MAC);
            let wrong_mac = r(bp, cp).with_macs(STRANGER_MAC, INT_MAC);
            let esp_s = Ipv4Frame::raw(
                backend_mac(bs),
                INT_MAC,
                backend_v4(bs),
                cs,
                PROTO_ESP,
                &esp_body(3, 1, 40),
            );
            let mut frag_x = Ipv4Frame::raw(
                backend_mac(bx),
                INT_MAC,
                backend_v4(bx),
                cx,
                PROTO_UDP,
                &data(40),
            );
            frag_x.frag_offset = 185;
            let mut frag_s = Ipv4Frame::raw(
                backend_mac(bs),
                INT_MAC,
                backend_v4(bs),
                cs,
                PROTO_UDP,
                &data(40),
            );
            frag_s.frag_offset = 185;
            #[rustfmt::skip]
            let rows = vec![
                case("not in the group, on the wrong interface: not ours", ssh_ext.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT).on(Side::Ext),
                case("backend address on the clients' interface", wrong_if.bytes(), Expect::Drop, counter::DROP_REVERSE_WRONG_IFACE).on(Side::Ext).events(&[]),
                case("backend address from another MAC", wrong_mac.bytes(), Expect::Drop, counter::DROP_REVERSE_WRONG_MAC).events(&[]),
                case("established client: MAC from the entry", fp.bytes(), Expect::Redirect(rev4(&fp, ROUTER2_MAC)), counter::REVERSE).events(&[]),
                case("probation client: MAC from the entry", fq.bytes(), Expect::Redirect(rev4(&fq, ROUTER2_MAC)), counter::REVERSE).events(&[]),
                case("idle established entry", fi.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
                case("idle probation entry", fj.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
                case("established on another backend", fo.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
                case("on probation on another backend", fk.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
                case("no entry, ring names this backend: FIB route", fs.bytes(), Expect::Redirect(rev4(&fs, ROUTER_MAC)), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
                case("no entry, ESP, ring names this backend", esp_s.bytes(), Expect::Redirect(rev4(&esp_s, ROUTER_MAC)), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
                case("no entry, non-first fragment, ring names this backend", frag_s.bytes(), Expect::Redirect(rev4(&frag_s, ROUTER_MAC)), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
                case("no entry, no route to the client", fnr.bytes(), Expect::Drop, counter::DROP_NO_ROUTE).events(&[]),
                case("to the gateway's own internal address: the kernel's", to_gw.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT).events(&[]),
                case("to the gateway's own external address: the kernel's", to_gw_ext.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT).events(&[]),
                case("no entry, ring names another backend", fx.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT).events(&[]),
                case("no entry, non-first fragment, ring names another backend", frag_x.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
            ];
            lb.check(&rows);
            assert_eq!(
                (lb.persisted(cs.into()), lb.probation(cs.into())),
                (None, None),
                "a stateless reply creates no entry"
            );
        },
    );
}

/// The IPv6 rows of the reverse path's checks (same rules over `PERSIST_V6`/`PROBATION_V6`
/// and the IPv6 FIB).
#[test]
fn ipv6_reverse_path_checks_and_stateless_replies() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let from = |id: u32, c: Ipv6Addr| {
            Ipv6Frame::udp(
                backend_mac(id),
                INT_MAC,
                (backend_v6(id), 4500),
                (c, 4500),
                &data(60),
            )
        };
        let rev6 = |f: &Ipv6Frame, mac| {
            f.readdressed(VIP6, f.dst)
                .with_hop_limit(63)
                .with_macs(EXT_MAC, mac)
                .bytes()
        };
        let cs = c6(1);
        let bs = ring(lb, cs);
        let cx = c6(2);
        let bx = other6(ring(lb, cx));
        // 2001:db8:f::/48 is an unreachable route in the namespace.
        let cn = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 5);
        let bn = ring(lb, cn);
        let (fs, fx, fnr) = (from(bs, cs), from(bx, cx), from(bn, cn));
        let to_gw = from(4, Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1));
        let wrong_if = from(bs, cs).with_macs(backend_mac(bs), EXT_MAC);
        let wrong_mac = from(bs, cs).with_macs(STRANGER_MAC, INT_MAC);
        #[rustfmt::skip]
        let rows = vec![
            case("IPv6 backend address on the clients' interface", wrong_if.bytes(), Expect::Drop, counter::DROP_REVERSE_WRONG_IFACE).on(Side::Ext),
            case("IPv6 backend address from another MAC", wrong_mac.bytes(), Expect::Drop, counter::DROP_REVERSE_WRONG_MAC),
            case("IPv6 no entry, ring names this backend: FIB route", fs.bytes(), Expect::Redirect(rev6(&fs, ROUTER_MAC)), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
            case("IPv6 no entry, no route", fnr.bytes(), Expect::Drop, counter::DROP_NO_ROUTE),
            case("IPv6 to the gateway's own address: the kernel's", to_gw.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
            case("IPv6 no entry, ring names another backend", fx.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
        ];
        lb.check(&rows);
    });
}

// ---------------------------------------------------------------------------------------------
// Slot fast path

/// An address family of the slot fast path's rows: the same tables run over both.
#[derive(Clone, Copy, Debug)]
enum Fam {
    V4,
    V6,
}

/// A client's frame of either family.
enum Frame {
    V4(Ipv4Frame),
    V6(Ipv6Frame),
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Frame::V4(f) => f.bytes(),
            Frame::V6(f) => f.bytes(),
        }
    }

    /// As forwarded to backend `id` (NAT mode).
    fn fwd(&self, id: u32) -> Vec<u8> {
        match self {
            Frame::V4(f) => fwd4(f, id),
            Frame::V6(f) => f
                .readdressed(f.src, backend_v6(id))
                .with_hop_limit(f.hop_limit - 1)
                .with_macs(INT_MAC, backend_mac(id))
                .bytes(),
        }
    }
}

impl Fam {
    fn client(self, i: u8) -> IpAddr {
        match self {
            Fam::V4 => c4(i).into(),
            Fam::V6 => c6(u16::from(i)).into(),
        }
    }

    fn udp(self, c: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Frame {
        match c {
            IpAddr::V4(c) => Frame::V4(udp4(c, sport, dport, payload)),
            IpAddr::V6(c) => Frame::V6(Ipv6Frame::udp(
                ROUTER_MAC,
                EXT_MAC,
                (c, sport),
                (VIP6, dport),
                payload,
            )),
        }
    }

    fn esp(self, c: IpAddr, spi: u32, seq: u32) -> Frame {
        match c {
            IpAddr::V4(c) => Frame::V4(esp4(c, spi, seq)),
            IpAddr::V6(c) => Frame::V6(Ipv6Frame::raw(
                ROUTER_MAC,
                EXT_MAC,
                c,
                VIP6,
                PROTO_ESP,
                &esp_body(spi, seq, 80),
            )),
        }
    }

    /// A non-first fragment (offset 24 bytes, the last) of an ESP packet of `c`.
    fn esp_fragment(self, c: IpAddr) -> Frame {
        match c {
            IpAddr::V4(c) => Frame::V4(frag4(c, PROTO_ESP, 3, 24)),
            IpAddr::V6(c) => Frame::V6(
                Ipv6Frame::raw(ROUTER_MAC, EXT_MAC, c, VIP6, PROTO_ESP, &data(24)).with_ext(
                    Ext::Fragment {
                        offset: 3,
                        more: false,
                        id: 91,
                    },
                ),
            ),
        }
    }

    /// `c`'s slot in the service's ring (the fixture's seed and ring size).
    fn slot(self, c: IpAddr) -> u32 {
        use ikelb_tests::xdp::{words, RING, SEED};
        use lb_common::hash::ring_slot;
        match self {
            Fam::V4 => ring_slot(lb_common::hash::client_hash_v4(words(c)[0], SEED), RING),
            Fam::V6 => ring_slot(lb_common::hash::client_hash_v6(&words(c), SEED), RING),
        }
    }
}

/// Per family: a bulk packet (ESP, ESP-in-UDP, a non-first fragment; over IPv6 also ESP behind
/// an extension header) of a client whose slot is stamped this tick takes the fast path, even
/// without any entry; IKE (UDP 500, the non-ESP marker on 4500) and NAT keepalives never do;
/// a slot flagged `RING_F_CHANGED` never does.
#[test]
fn slot_fast_path_is_keyed_by_the_slot_stamp() {
    for fast in [false, true] {
        let Some(mut fx) = Fixture::load(Setup {
            slot_fast_path: fast,
            ..Setup::default()
        }) else {
            return;
        };
        let lb = &mut fx;
        for fam in [Fam::V4, Fam::V6] {
            slot_stamp_rows(lb, fast, fam);
        }
    }
}

fn slot_stamp_rows(lb: &mut Fixture, fast: bool, fam: Fam) {
    let mode = format!("{fam:?} SLOT_FAST_PATH={}", u32::from(fast));
    let fp = |n: u64| -> Vec<(u32, u64)> {
        if fast {
            vec![(event::FAST_PATH, n)]
        } else {
            vec![]
        }
    };
    // The stamp is per tick: retry if a tick boundary falls inside the rows.
    for attempt in 0.. {
        let c = fam.client(100 + attempt);
        let b = ring(lb, c);
        let now = now_ticks();
        lb.persist(c, persist_v(b, now.wrapping_sub(5), ROUTER_MAC, PORT_EXT));
        let esp = fam.esp(c, 0xabc, 1);
        let esp_udp = fam.udp(c, 4500, 4500, &esp_body(0xabd, 2, 64));
        let frag = fam.esp_fragment(c);
        let ike = fam.udp(c, 500, 500, &auth(1, 2));
        let ike_4500 = fam.udp(c, 4500, 4500, &non_esp(&auth(3, 4)));
        let keepalive = fam.udp(c, 4500, 4500, &[0xff]);
        let t0 = now_ticks();
        #[rustfmt::skip]
        lb.check(&[
            case(format!("{mode}: ESP, stale stamp: the entry is refreshed"), esp.bytes(), Expect::Redirect(esp.fwd(b)), counter::FORWARD).events(&[]),
        ]);
        let e = lb.persisted(c).unwrap();
        assert!(e.atime >= t0, "{mode}: atime refreshed");
        if fast {
            assert_eq!(lb.refreshed(c), e.atime, "{mode}: slot stamped");
        }
        // The persistence entry goes away: only the fast path can still find the backend
        // without re-selecting (which would create a probation entry).
        lb.unpersist(c);
        #[rustfmt::skip]
        let mut rows = vec![
            case(format!("{mode}: ESP again"), esp.bytes(), Expect::Redirect(esp.fwd(b)), counter::FORWARD)
                .events(&if fast { fp(1) } else { vec![(event::PROBATION_INSERT, 1), (event::LOST, 1)] }),
            case(format!("{mode}: ESP-in-UDP"), esp_udp.bytes(), Expect::Redirect(esp_udp.fwd(b)), counter::FORWARD)
                .events(&fp(1)),
            case(format!("{mode}: a non-first fragment"), frag.bytes(), Expect::Redirect(frag.fwd(b)), counter::FORWARD)
                .events(&fp(1)),
        ];
        if let Frame::V6(f) = &esp {
            // The walk's extension headers in front of ESP change nothing.
            for (what, ext) in [
                ("Destination Options", Ext::DestOpts { pad: 4 }),
                (
                    "an atomic fragment",
                    Ext::Fragment {
                        offset: 0,
                        more: false,
                        id: 92,
                    },
                ),
            ] {
                let g = Frame::V6(f.clone().with_ext(ext));
                #[rustfmt::skip]
                rows.push(
                    case(format!("{mode}: ESP behind {what}"), g.bytes(), Expect::Redirect(g.fwd(b)), counter::FORWARD)
                        .events(&fp(1)),
                );
            }
        }
        // IKE goes through the entries: with the fast path on the client has none, so UDP 500
        // is `lost` (mid-session) and gets a probation entry, which the next rows find.
        #[rustfmt::skip]
        rows.extend([
            case(format!("{mode}: IKE never takes the fast path"), ike.bytes(), Expect::Redirect(ike.fwd(b)), counter::FORWARD)
                .events(&if fast { vec![(event::PROBATION_INSERT, 1), (event::LOST, 1)] } else { vec![] }),
            case(format!("{mode}: IKE on 4500 (non-ESP marker) neither"), ike_4500.bytes(), Expect::Redirect(ike_4500.fwd(b)), counter::FORWARD)
                .events(&[]),
            case(format!("{mode}: a NAT keepalive neither"), keepalive.bytes(), Expect::Redirect(keepalive.fwd(b)), counter::FORWARD)
                .events(&[]),
        ]);
        if let Frame::V4(_) = &keepalive {
            // On the wire an IPv4 keepalive (43 bytes) is padded to Ethernet's 60: the padding
            // is not an SPI. The datagram ends at the 0xff; what follows is cut off on the way
            // out.
            let padded = [&keepalive.bytes()[..], &[0; 17]].concat();
            #[rustfmt::skip]
            rows.push(
                case(format!("{mode}: a NAT keepalive padded to 60 bytes neither"), padded, Expect::Redirect(keepalive.fwd(b)), counter::FORWARD)
                    .events(&[(event::TRIMMED, 1)]),
            );
        }
        lb.check(&rows);
        if now_ticks() != t0 && attempt < 3 {
            eprintln!("{mode}: a tick boundary fell inside the rows; again");
            continue;
        }
        // A flagged slot never takes the fast path.
        lb.mark_changed(c);
        let before = lb.events()[event::FAST_PATH as usize];
        lb.run(&esp.bytes());
        assert_eq!(
            lb.events()[event::FAST_PATH as usize],
            before,
            "{mode}: RING_F_CHANGED slot"
        );
        break;
    }
}

/// Per family, two clients in one ring slot: the first packet of the slot in a tick refreshes
/// its client's entry and stamps the slot; the other client's bulk packets then take the fast
/// path in that tick without a lookup (its entry is refreshed in a tick where it comes first).
/// A stamp of another tick sends the slot's next packet through its entry again.
#[test]
fn one_refresh_per_ring_slot_and_tick() {
    let Some(mut fx) = Fixture::load(Setup {
        slot_fast_path: true,
        ..Setup::default()
    }) else {
        return;
    };
    for fam in [Fam::V4, Fam::V6] {
        one_refresh_rows(&mut fx, fam);
    }
}

fn one_refresh_rows(lb: &mut Fixture, fam: Fam) {
    let (a, b) = (100..=250u8)
        .flat_map(|i| (i + 1..=250).map(move |j| (fam.client(i), fam.client(j))))
        .find(|&(a, b)| fam.slot(a) == fam.slot(b))
        .expect("two clients in one slot of 251 among 151");
    for attempt in 0.. {
        let now = now_ticks();
        let id = ring(lb, a);
        lb.persist(a, persist_v(id, now.wrapping_sub(5), ROUTER_MAC, PORT_EXT));
        lb.persist(b, persist_v(id, now.wrapping_sub(5), ROUTER_MAC, PORT_EXT));
        lb.set_refreshed(a, now.wrapping_sub(1));
        let (ea, eb) = (fam.esp(a, 0xa1, 1), fam.esp(b, 0xb1, 1));
        let t0 = now_ticks();
        #[rustfmt::skip]
        lb.check(&[
            case(format!("{a}: stale stamp, its entry refreshed"), ea.bytes(), Expect::Redirect(ea.fwd(id)), counter::FORWARD).events(&[]),
            case(format!("{b}: same slot, stamped this tick: fast path"), eb.bytes(), Expect::Redirect(eb.fwd(id)), counter::FORWARD).events(&[(event::FAST_PATH, 1)]),
            case(format!("{a}: fast path"), ea.bytes(), Expect::Redirect(ea.fwd(id)), counter::FORWARD).events(&[(event::FAST_PATH, 1)]),
        ]);
        if now_ticks() != t0 && attempt < 3 {
            eprintln!("a tick boundary fell inside the rows; again");
            continue;
        }
        assert!(lb.persisted(a).unwrap().atime >= t0, "{a} refreshed");
        assert_eq!(
            lb.persisted(b).unwrap().atime,
            now.wrapping_sub(5),
            "{b} not looked up"
        );
        assert_eq!(lb.refreshed(b), lb.refreshed(a), "one stamp for the slot");
        break;
    }
}

// ---------------------------------------------------------------------------------------------
// ICMP

#[test]
fn icmp_frag_needed_goes_to_the_clients_backend() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let now = now_ticks();
        let (ca, cb, cc) = (c4(110), c4(111), c4(112));
        let pa = other4(ring(lb, ca));
        lb.persist(ca.into(), persist_v(pa, now, ROUTER_MAC, PORT_EXT));
        lb.mark_changed(ca.into());
        let pb = other4(ring(lb, cb));
        lb.set_probation(cb.into(), prob_v(pb, now, ROUTER_MAC, PORT_EXT, 0));
        lb.mark_changed(cb.into());
        let rc = ring(lb, cc);
        // The packets the VIP sent (the backends' replies after SNAT), as quoted.
        let out_udp = |c: Ipv4Addr, sport: u16| {
            Ipv4Frame::udp(EXT_MAC, ROUTER_MAC, (VIP4, sport), (c, sport), &data(1400)).with_ttl(63)
        };
        let out_tcp = |c: Ipv4Addr| {
            Ipv4Frame::tcp_segment(
                EXT_MAC,
                ROUTER_MAC,
                (VIP4, 443),
                (c, 50_000),
                7,
                8,
                TcpFlags {
                    ack: true,
                    psh: true,
                    ..Default::default()
                },
                &data(1400),
            )
            .with_ttl(63)
        };
        let out_esp = |c: Ipv4Addr| {
            Ipv4Frame::raw(
                EXT_MAC,
                ROUTER_MAC,
                VIP4,
                c,
                PROTO_ESP,
                &esp_body(9, 9, 1400),
            )
            .with_ttl(63)
        };
        let icmp =
            |q: &Ipv4Frame| icmp_frag_needed(ROUTER_MAC, EXT_MAC, PATH_ROUTER, VIP4, q, 8, 1400);
        // What a correct rewrite makes of it: the quoted packet as backend `id` sent it
        // (every checksum from scratch), the ICMP to that backend.
        let want = |q: &Ipv4Frame, id: u32| {
            let inner = q.readdressed(backend_v4(id), q.dst);
            icmp_frag_needed(
                INT_MAC,
                backend_mac(id),
                PATH_ROUTER,
                backend_v4(id),
                &inner,
                8,
                1400,
            )
            .with_ttl(63)
            .bytes()
        };
        let qa = out_udp(ca, 4500);
        let qa0 = out_udp(ca, 4500).without_udp_checksum();
        let qb = out_udp(cb, 500);
        let qc = out_udp(cc, 4500);
        let qt = out_tcp(ca);
        let qe = out_esp(cb);
        let not_vip = Ipv4Frame::udp(
            EXT_MAC,
            ROUTER_MAC,
            (Ipv4Addr::new(203, 0, 113, 99), 4500),
            (ca, 4500),
            &data(100),
        );
        let other_port = out_udp(ca, 53);
        let port_unreach = icmp_error(ROUTER_MAC, EXT_MAC, PATH_ROUTER, VIP4, 3, 3, &qa, 8, 0);
        #[rustfmt::skip]
        let rows = vec![
            case("frag needed about an established client's UDP", icmp(&qa).bytes(), Expect::Redirect(want(&qa, pa)), counter::FORWARD_ICMP),
            case("… quoted UDP checksum 0 stays 0", icmp(&qa0).bytes(), Expect::Redirect(want(&qa0, pa)), counter::FORWARD_ICMP),
            case("… TCP 443 (checksum not in the 8 quoted bytes)", icmp(&qt).bytes(), Expect::Redirect(want(&qt, pa)), counter::FORWARD_ICMP),
            case("about a probation client", icmp(&qb).bytes(), Expect::Redirect(want(&qb, pb)), counter::FORWARD_ICMP),
            case("about a probation client's ESP", icmp(&qe).bytes(), Expect::Redirect(want(&qe, pb)), counter::FORWARD_ICMP),
            case("about a client without an entry: the ring", icmp(&qc).bytes(), Expect::Redirect(want(&qc, rc)), counter::FORWARD_ICMP),
            case("quoted source not the VIP", icmp(&not_vip).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("quoted source port not in the group", icmp(&other_port).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
            case("port unreachable (type 3 code 3)", port_unreach.bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
        ];
        lb.check(&rows);
    });
}

#[test]
fn icmpv6_packet_too_big_goes_to_the_clients_backend() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let now = now_ticks();
        let (ca, cc) = (c6(20), c6(21));
        let pa = other6(ring(lb, ca));
        lb.persist(ca.into(), persist_v(pa, now, ROUTER_MAC, PORT_EXT));
        lb.mark_changed(ca.into());
        let rc = ring(lb, cc);
        let out = |c: Ipv6Addr, sport: u16| {
            Ipv6Frame::udp(EXT_MAC, ROUTER_MAC, (VIP6, sport), (c, sport), &data(1400))
                .with_hop_limit(63)
        };
        let ptb =
            |q: &Ipv6Frame| icmpv6_error(ROUTER_MAC, EXT_MAC, PATH_ROUTER6, VIP6, 2, 0, 1280, q, 8);
        let want = |q: &Ipv6Frame, id: u32| {
            let inner = q.readdressed(backend_v6(id), q.dst);
            icmpv6_error(
                INT_MAC,
                backend_mac(id),
                PATH_ROUTER6,
                backend_v6(id),
                2,
                0,
                1280,
                &inner,
                8,
            )
            .with_hop_limit(63)
            .bytes()
        };
        let qa = out(ca, 4500);
        let qc = out(cc, 500);
        let unreach = icmpv6_error(ROUTER_MAC, EXT_MAC, PATH_ROUTER6, VIP6, 1, 4, 0, &qa, 8);
        let echo = Ipv6Frame::raw(
            ROUTER_MAC,
            EXT_MAC,
            ca,
            VIP6,
            PROTO_ICMPV6,
            &[128, 0, 0x12, 0x34, 0, 1, 0, 1],
        );
        #[rustfmt::skip]
        let rows = vec![
            case("packet too big about an established client", ptb(&qa).bytes(), Expect::Redirect(want(&qa, pa)), counter::FORWARD_ICMP),
            case("packet too big about a client without an entry", ptb(&qc).bytes(), Expect::Redirect(want(&qc, rc)), counter::FORWARD_ICMP),
            case("destination unreachable", unreach.bytes(), Expect::Pass, counter::PASS_ICMPV6),
            case("echo request", echo.bytes(), Expect::Pass, counter::PASS_ICMPV6),
        ];
        lb.check(&rows);
    });
}
