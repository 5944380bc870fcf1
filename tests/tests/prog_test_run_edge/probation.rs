//! New clients: probation, `lost`, the ration; selection PERSIST → PROBATION → ring.

use std::time::Duration;

use ikelb_tests::{
    both_families,
    packet::{ike_message, non_esp, IpFrame, TcpFlags, PROTO_ESP, PROTO_UDP},
    packet6::esp_body,
    xdp::{
        case, forwarded, now_ticks, persist_entry, probation_entry, raw_to_vip, ticks_ago, to_vip,
        Expect, Fixture, FixtureFamily, Setup, EXT_MAC, PORT_EXT, ROUTER_MAC,
    },
};
use lb_common::{counter, event, BACKEND_F_USABLE, QUOTA_WINDOW_SHIFT};

use super::{auth, client, data, ring, sa_init, udp, IDLE_TIMEOUT};

both_families!(new_clients_go_on_probation, Setup::default());

fn new_clients_go_on_probation<F: FixtureFamily>(lb: &mut Fixture) {
    let cs: Vec<F> = (20..28).map(client).collect();
    let r: Vec<u32> = cs.iter().map(|&c| ring(lb, c)).collect();
    let init = udp(cs[0], 500, 500, &sa_init(1));
    let auth4500 = udp(cs[1], 4500, 4500, &non_esp(&auth(2, 0x1122_3344_5566_7788)));
    let esp = raw_to_vip(cs[2], PROTO_ESP, &esp_body(0xc0ffee, 9, 80));
    let esp_udp = udp(cs[3], 4500, 4500, &esp_body(0xbeef, 3, 64));
    let frag = raw_to_vip(cs[4], PROTO_UDP, &data(100)).last_fragment_at(185);
    let info = udp(cs[5], 500, 500, &ike_message(6, 0x99, 37, 0x08, 40));
    let syn = F::Frame::tcp_segment(
        ROUTER_MAC,
        EXT_MAC,
        (cs[6], 50_000),
        (F::VIP, 443),
        1000,
        0,
        TcpFlags::SYN,
        &[],
    );
    let t0 = now_ticks();
    #[rustfmt::skip]
    let rows = vec![
        case("IKE_SA_INIT of a new client", init.bytes(), Expect::Redirect(forwarded(&init, r[0])), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1)]),
        case("IKE_AUTH (4500, marker) of an unknown client: lost", auth4500.bytes(), Expect::Redirect(forwarded(&auth4500, r[1])), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
        case("ESP of an unknown client: lost", esp.bytes(), Expect::Redirect(forwarded(&esp, r[2])), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
        case("ESP-in-UDP of an unknown client: lost", esp_udp.bytes(), Expect::Redirect(forwarded(&esp_udp, r[3])), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
        case("non-first fragment of an unknown client: no entry", frag.bytes(), Expect::Redirect(forwarded(&frag, r[4])), counter::FORWARD)
            .events(&[]),
        case("INFORMATIONAL on 500 (responder SPI set): lost", info.bytes(), Expect::Redirect(forwarded(&info, r[5])), counter::FORWARD)
            .events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
        case("TCP SYN of a new client", syn.bytes(), Expect::Redirect(forwarded(&syn, r[6])), counter::FORWARD)
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

both_families!(
    new_client_quota_throttles_probation_inserts,
    Setup {
        new_client_quota: 2,
        ..Setup::default()
    }
);

fn new_client_quota_throttles_probation_inserts<F: FixtureFamily>(lb: &mut Fixture) {
    pin_cpu0();
    let cs: Vec<F> = (40..43).map(client).collect();
    let r: Vec<u32> = cs.iter().map(|&c| ring(lb, c)).collect();
    let f: Vec<F::Frame> = cs.iter().map(|&c| udp(c, 500, 500, &sa_init(7))).collect();
    let w0 = fresh_window();
    #[rustfmt::skip]
    let rows = [
        case("1st new client in the window", f[0].bytes(), Expect::Redirect(forwarded(&f[0], r[0])), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("2nd new client in the window", f[1].bytes(), Expect::Redirect(forwarded(&f[1], r[1])), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("3rd: over quota, still forwarded by the ring", f[2].bytes(), Expect::Redirect(forwarded(&f[2], r[2])), counter::FORWARD).events(&[(event::PROBATION_THROTTLED, 1)]),
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
    lb.check(&[case("3rd again in a new window", f[2].bytes(), Expect::Redirect(forwarded(&f[2], r[2])), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)])]);
    assert!(lb.probation(cs[2].into()).is_some());

    // With the ration used up, an IKE_SA_INIT does not even look for a probation entry: it
    // follows the ring (the flood contract for clients not established); other messages of a
    // probation client still find theirs.
    let c = client::<F>(44);
    let now = now_ticks();
    let pb = F::other_backend(ring(lb, c));
    lb.set_probation(c.into(), probation_entry(pb, now, ROUTER_MAC, PORT_EXT, 0));
    let init = udp(c, 500, 500, &sa_init(9));
    let next = udp(c, 500, 500, &auth(9, 0x77));
    let fill: Vec<F::Frame> = [45, 46]
        .map(|i| udp(client::<F>(i), 500, 500, &sa_init(8)))
        .into();
    let (r45, r46) = (ring(lb, client::<F>(45)), ring(lb, client::<F>(46)));
    let w0 = fresh_window();
    #[rustfmt::skip]
    let rows = [
        case("fill the ration 1", fill[0].bytes(), Expect::Redirect(forwarded(&fill[0], r45)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("fill the ration 2", fill[1].bytes(), Expect::Redirect(forwarded(&fill[1], r46)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("IKE_SA_INIT over the ration: the ring, not its probation entry", init.bytes(), Expect::Redirect(forwarded(&init, ring(lb, c))), counter::FORWARD).events(&[(event::PROBATION_THROTTLED, 1)]),
        case("its IKE_AUTH: the probation entry", next.bytes(), Expect::Redirect(forwarded(&next, pb)), counter::FORWARD).events(&[]),
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
}

both_families!(
    throttled_ike_sa_init_reads_no_map_in_an_unchanged_slot,
    Setup {
        new_client_quota: 2,
        persist_timeout_ticks: IDLE_TIMEOUT,
        ..Setup::default()
    }
);

/// With the slot fast path on, an IKE_SA_INIT over the ration in an unchanged slot reads
/// neither map (the slot's invariant makes the ring's backend the one any live entry names):
/// an established client's entry is not even refreshed by it. In a flagged slot it still finds
/// its entry; a backend's address is still refused. With the fast path off, every such packet
/// looks up its entry, as before.
fn throttled_ike_sa_init_reads_no_map_in_an_unchanged_slot<F: FixtureFamily>(lb: &mut Fixture) {
    pin_cpu0();
    let fast = lb.setup.slot_fast_path;
    let (kept, moved, new) = (client::<F>(60), client::<F>(61), client::<F>(64));
    let (rk, rm) = (ring(lb, kept), ring(lb, moved));
    let old = ticks_ago(3);
    // `kept` sits in an unchanged slot on the ring's backend (the invariant); `moved` was
    // persisted against the ring, so the daemon flagged its slot.
    lb.persist(kept.into(), persist_entry(rk, old, ROUTER_MAC, PORT_EXT));
    let om = F::other_backend(rm);
    lb.persist(moved.into(), persist_entry(om, old, ROUTER_MAC, PORT_EXT));
    lb.mark_changed(moved.into());
    let fill: Vec<F::Frame> = [62, 63]
        .map(|i| udp(client::<F>(i), 500, 500, &sa_init(8)))
        .into();
    let (r62, r63, rn) = (
        ring(lb, client::<F>(62)),
        ring(lb, client::<F>(63)),
        ring(lb, new),
    );
    let init_kept = udp(kept, 500, 500, &sa_init(10));
    let init_moved = udp(moved, 500, 500, &sa_init(11));
    let init_new = udp(new, 500, 500, &sa_init(12));
    let backend = F::backend(F::BACKEND_IDS[0]);
    let from_backend = to_vip(backend, 500, 500, &sa_init(13));
    let throttled: &[(u32, u64)] = if fast {
        &[(event::PROBATION_THROTTLED, 1)]
    } else {
        &[]
    };
    let w0 = fresh_window();
    #[rustfmt::skip]
    let rows = [
        case("fill the ration 1", fill[0].bytes(), Expect::Redirect(forwarded(&fill[0], r62)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("fill the ration 2", fill[1].bytes(), Expect::Redirect(forwarded(&fill[1], r63)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("established, unchanged slot: its backend, the ring's", init_kept.bytes(), Expect::Redirect(forwarded(&init_kept, rk)), counter::FORWARD)
            .events(throttled),
        case("established, flagged slot: its entry's backend", init_moved.bytes(), Expect::Redirect(forwarded(&init_moved, om)), counter::FORWARD).events(&[]),
        case("new source over the ration: the ring, no entry", init_new.bytes(), Expect::Redirect(forwarded(&init_new, rn)), counter::FORWARD).events(&[(event::PROBATION_THROTTLED, 1)]),
        case("a backend's address over the ration: dropped", from_backend.bytes(), Expect::Drop, counter::DROP_SOURCE_BACKEND).events(&[]),
    ];
    lb.check(&rows);
    assert_eq!(
        quota_window(),
        w0,
        "the rows crossed a quota window (retry)"
    );
    assert_eq!(
        lb.probation(new.into()),
        None,
        "nothing inserted over quota"
    );
    assert_eq!(lb.probation(backend.into()), None, "no entry for a backend");
    let atime = |lb: &mut Fixture, c: F| lb.persisted(c.into()).map(|e| e.atime);
    // The shortcut is seen in what it leaves alone: the entry it did not read.
    if fast {
        assert_eq!(atime(lb, kept), Some(old), "unchanged slot: entry not read");
    } else {
        assert_ne!(atime(lb, kept), Some(old), "fast path off: entry refreshed");
    }
    assert_ne!(atime(lb, moved), Some(old), "flagged slot: entry refreshed");
}

both_families!(
    persist_then_probation_then_ring,
    Setup {
        persist_timeout_ticks: IDLE_TIMEOUT,
        ..Setup::default()
    }
);

fn persist_then_probation_then_ring<F: FixtureFamily>(lb: &mut Fixture) {
    let idle = ticks_ago(IDLE_TIMEOUT + 2);
    let now = now_ticks();
    // Established on a backend the ring does not give it (as the daemon would, its slot is
    // flagged changed).
    let [ca, cb, cc, cd] = [50, 51, 52, 53].map(client::<F>);
    let pa = F::other_backend(ring(lb, ca));
    lb.persist(ca.into(), persist_entry(pa, now, ROUTER_MAC, PORT_EXT));
    lb.mark_changed(ca.into());
    // On probation on another backend than the ring's.
    let pb = F::other_backend(ring(lb, cb));
    lb.set_probation(cb.into(), probation_entry(pb, now, ROUTER_MAC, PORT_EXT, 0));
    lb.mark_changed(cb.into());
    // Idle probation entry, and one naming an unusable backend.
    let rc = ring(lb, cc);
    let oc = F::other_backend(rc);
    lb.set_probation(
        cc.into(),
        probation_entry(oc, idle, ROUTER_MAC, PORT_EXT, 0),
    );
    let rd = ring(lb, cd);
    let dead = F::other_backend(rd);
    lb.set_probation(
        cd.into(),
        probation_entry(dead, now, ROUTER_MAC, PORT_EXT, 0),
    );

    let fa = udp(ca, 4500, 4500, &non_esp(&auth(1, 2)));
    let fb = udp(cb, 500, 500, &auth(3, 4));
    let fc = udp(cc, 500, 500, &auth(5, 6));
    let fd = udp(cd, 500, 500, &auth(7, 8));
    let t0 = now_ticks();
    #[rustfmt::skip]
    let rows = [
        case("persistence hit", fa.bytes(), Expect::Redirect(forwarded(&fa, pa)), counter::FORWARD).events(&[]),
        case("probation hit (no proof recorded: not promoted)", fb.bytes(), Expect::Redirect(forwarded(&fb, pb)), counter::FORWARD).events(&[]),
        case("idle probation entry: the ring", fc.bytes(), Expect::Redirect(forwarded(&fc, rc)), counter::FORWARD),
    ];
    lb.check(&rows);
    let t1 = now_ticks();
    let mut bk = lb.backend(dead);
    bk.flags &= !BACKEND_F_USABLE;
    lb.set_backend(dead, bk);
    #[rustfmt::skip]
    lb.check(&[case("probation entry on an unusable backend: the ring", fd.bytes(), Expect::Redirect(forwarded(&fd, rd)), counter::FORWARD)]);
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
}
