//! Slot moves (`slot_move_delay`, `lb-ctl/src/state.rs`, "Slot moves") through the standard lab
//! with the real daemon and the slot fast path on (the default). Root only: without root the
//! test says why and returns.
//!
//! The attack on the fast path's per-slot refresh: two clients share a Maglev slot. A is busy
//! (ESP-in-UDP as fast as one socket sends), B is quiet (one ESP-in-UDP datagram every
//! 500 ms). Each tick the slot's first packet takes the persistence path and refreshes its
//! client's entry; that is almost always A's, so B's entry idles out (`persistence_timeout`
//! 6 s here) while B is active — which costs B nothing while the slot keeps its backend. Then
//! b4 is added and takes that slot. With the default delay (5 s), the slot keeps its backend,
//! flagged, until the move; B's next packet takes the persistence path, its idle entry is
//! re-selected by the ring — still the old backend — and B keeps that backend after the move.
//! The negative control runs the same with `slot_move_delay: 0s`, B silent from the check of its
//! idle entry until the slot has moved: B moves to b4. In both runs
//! a third client C of the slot, new after the move, lands on b4 (the ring names b4: B stays
//! by its entry alone).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ikelb_tests::lab::{self, control, control::Clients, Lab, LabSpec, UdpProbe, VIP};
use lb_common::{
    hash::{client_hash_v4, ring_slot},
    maglev::{self, Member},
};

/// The lab's `hash_seed` (`Lab::daemon_config`) and the small table this test sets, so that
/// some of the lab's 250 clients share slots.
const SEED: u32 = 0x5eed;
const M: u32 = 251;

fn slot_of(a: Ipv4Addr) -> usize {
    ring_slot(client_hash_v4(u32::from_ne_bytes(a.octets()), SEED), M) as usize
}

/// The Maglev table of `backends` (equal weights), by address.
fn table(backends: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    let members: Vec<Member> = backends
        .iter()
        .enumerate()
        .map(|(i, a)| Member {
            id: i as u32 + 1,
            key: a.octets().to_vec(),
            weight: 1,
            usable: true,
        })
        .collect();
    maglev::build(&members, M, SEED)
        .iter()
        .map(|&id| backends[id as usize - 1])
        .collect()
}

fn or_log<T>(lab: &Lab, r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", lab.daemon_output_tail(40)))
}

/// What one run saw.
struct Run {
    /// B's backend before the add.
    before: String,
    /// B's entry before the add: idle seconds (`None`: no entry, or idle past the timeout).
    idle_before: Option<u64>,
    /// Every answer B got from the add on.
    after: Vec<String>,
    /// Where the new client C went after the move.
    newcomer: String,
    /// Datagrams A sent.
    busy_sent: u64,
}

fn run(lb_ctl: &Path, delay: &str) -> Run {
    let mut lab = Lab::build(&LabSpec {
        role: 'm',
        clients: 250,
        backends: 4,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder")))
        .expect("start responders");
    let addr = |name: &str| lab.backends.iter().find(|b| b.name == name).unwrap().addr;
    let (b1, b2, b3, b4) = (addr("b1"), addr("b2"), addr("b3"), addr("b4"));
    // A slot with three lab clients that moves to b4 when it joins.
    let (t3, t4) = (table(&[b1, b2, b3]), table(&[b1, b2, b3, b4]));
    let (a, b, c) = (0..M as usize)
        .filter(|&s| t4[s] == b4)
        .find_map(|s| {
            let in_slot: Vec<Ipv4Addr> = lab
                .clients
                .iter()
                .copied()
                .filter(|&c| slot_of(c) == s)
                .collect();
            (in_slot.len() >= 3).then(|| (in_slot[0], in_slot[1], in_slot[2]))
        })
        .expect("three lab clients in a slot that moves to b4 (fixed addresses and seed)");
    let old = t3[slot_of(a)];
    let config = control::with_health(&lab.daemon_config(), "200ms", "100ms", 3, 2).replace(
        "persistence_timeout: 30m\n",
        &format!("persistence_timeout: 6s\nmaglev_table_size: {M}\nslot_move_delay: {delay}\n"),
    );
    let config = control::without_backend(&config, b4);
    lab.start_daemon_with_config(lb_ctl, &config)
        .expect("start lb-ctl daemon");
    let three = [b1, b2, b3];
    let ready = control::wait_backends(&lab, "b1-b3 active", Duration::from_secs(20), |l| {
        l.len() == 3 && three.iter().all(|x| control::has_state(l, *x, "active"))
    });
    or_log(&lab, ready, "backends up");

    // Both start their session on 500 (entries made), then send bulk only.
    let ike = Clients::bind(&lab, &[a, b], 500).expect("bind");
    let start = or_log(
        &lab,
        ike.all_answered(5, Duration::from_millis(300)),
        "IKE answers",
    );
    drop(ike);
    let name = |x: Ipv4Addr| {
        lab.backends
            .iter()
            .find(|be| be.addr == x)
            .unwrap()
            .name
            .clone()
    };
    assert_eq!(start[&a], name(old), "A starts where the ring says");
    assert_eq!(start[&b], name(old), "B starts where the ring says");

    // A busy: one socket sending ESP-in-UDP (a non-zero first word) as fast as it can.
    let busy_probe = or_log(
        &lab,
        lab.client_ns.run(move || UdpProbe::bind(a)).and_then(|r| r),
        "bind A",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let to = SocketAddrV4::new(VIP, 4500);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if busy_probe.send(to, 64).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    // B quiet: one datagram every 500 ms, for longer than the persistence timeout.
    let quiet = Clients::bind(&lab, &[b], 4500).expect("bind B");
    let ask_b = |quiet: &Clients| -> Option<String> {
        let r = quiet.round(Duration::from_millis(300)).ok()?;
        r.get(&b).cloned().flatten()
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(9) {
        if let Some(x) = ask_b(&quiet) {
            assert_eq!(x, name(old), "B moved before any change");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let v = or_log(
        &lab,
        lab.request(&serde_json::json!({"command": "lookup", "client": b.to_string()})),
        "lookup B",
    );
    let p = &v["results"][0]["persisted"];
    let idle_before = (p.is_object() && p.get("ignored_because").is_none())
        .then(|| p["idle_seconds"].as_u64())
        .flatten();
    eprintln!("slot_moves ({delay}): B's entry before the add: {p}");

    // b4 joins and takes the slot, after the delay.
    lab.lb_ctl(lb_ctl, &["backend", "add", "aovpn", &b4.to_string()])
        .expect("backend add");
    let mut after = Vec::new();
    let t1 = Instant::now();
    let mut moved_at = None;
    while moved_at.is_none_or(|m: Instant| m.elapsed() < Duration::from_secs(2)) {
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "b4 never took its slots\n{}",
            lab.daemon_output_tail(30)
        );
        // With a delay, B sends through the hold (what keeps it: its packets refresh its entry
        // on the old backend). Without one, B is silent until the slot has moved, so that its
        // entry is still idle when it next sends: one datagram of B that came first in a tick
        // just before the move would refresh it and keep B where it was, by chance.
        if delay != "0s" || moved_at.is_some() {
            after.extend(ask_b(&quiet));
        }
        if moved_at.is_none()
            && control::backend_list(&lab).is_ok_and(|l| {
                l.iter().any(|x| {
                    x["address"] == b4.to_string() && x["ring_slots"].as_u64().unwrap_or(0) > 0
                })
            })
        {
            moved_at = Some(Instant::now());
            eprintln!(
                "slot_moves ({delay}): b4 holds slots {:?} after the add",
                t1.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let busy_sent = busy.join().expect("busy sender");
    let newcomer = Clients::bind(&lab, &[c], 500).expect("bind C");
    let newcomer = or_log(
        &lab,
        newcomer.all_answered(5, Duration::from_millis(300)),
        "C's answer",
    )[&c]
        .clone();
    Run {
        before: name(old),
        idle_before,
        after,
        newcomer,
        busy_sent,
    }
}

#[test]
fn a_quiet_client_the_fast_path_let_idle_out_keeps_its_backend_when_its_slot_moves() {
    if !lab::is_root() {
        eprintln!("SKIP a_quiet_client_the_fast_path_let_idle_out_keeps_its_backend_when_its_slot_moves: needs root");
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    for (delay, keeps) in [("5s", true), ("0s", false)] {
        let r = run(&lb_ctl, delay);
        eprintln!(
            "SLOT MOVES ({delay}): A sent {} datagrams; B on {} idle {:?} before the add, then \
             answered by {:?}; newcomer C on {}",
            r.busy_sent, r.before, r.idle_before, r.after, r.newcomer
        );
        assert_eq!(
            r.idle_before, None,
            "{delay}: B's entry did not idle out although A always came first in the slot: the \
             scenario did not happen (A sent {} datagrams)",
            r.busy_sent
        );
        assert_eq!(r.newcomer, "b4", "{delay}: the ring names b4 for the slot");
        assert!(
            !r.after.is_empty(),
            "{delay}: B got no answer after the add"
        );
        if keeps {
            assert!(
                r.after.iter().all(|x| *x == r.before),
                "{delay}: B moved with its slot: {:?}",
                r.after
            );
        } else {
            assert_eq!(
                r.after.last().map(String::as_str),
                Some("b4"),
                "{delay} (negative control): B should have followed the ring: {:?}",
                r.after
            );
        }
    }
}
