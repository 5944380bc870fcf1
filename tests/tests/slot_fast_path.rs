//! The slot fast path (config `slot_fast_path`, on by default) through the standard lab with
//! the real daemon. Root only: without root the test says why and returns.
//!
//! `bulk_clients_keep_their_backend_when_their_slot_changes`: 120 clients open their session
//! with a datagram to UDP 500 (not ESP: it takes the entry path, which records their backend in
//! a probation entry — the lab's responder answers no IKE, so nobody is promoted; the fast
//! path, the flags and the sweeps treat both tiers alike), then send only ESP-in-UDP on 4500 —
//! bulk packets that take the fast path wherever the client's ring slot is not flagged
//! `RING_F_CHANGED` and the client already refreshed its entry in the current tick (the first
//! bulk packet of each tick takes the entry path). Then the slots change three ways under that
//! bulk traffic — b4 added (a Maglev recompute moves slots of every backend to it), the
//! busiest backend's link cut (its slots move to the survivors, its clients must follow), the
//! link restored (its slots come back, nobody may move back) — and after each no client is
//! answered by another backend than its entry names. Without the daemon's flags every client
//! of a moved slot would follow the ring. Finally, bulk only for several persistence ticks
//! (≈ 1.07 s each) and until a slot flag sweep has finished: nobody moves,
//! `ikelb_xdp_events_total{event="fast_path"}` grew (the fast path ran), every client's entry
//! stays fresh (the control socket's `lookup`: `idle_seconds` ≤ 2 — the fast path still sends each
//! client through its entry once a tick), and sweeps ran (`ikelb_slot_sweeps_total` with
//! `result="ok"` above 0). `persistence_timeout` is 40 s, so
//! sweeps (every timeout / 4 = 10 s while slots are flagged) run during the test without
//! entries idling out.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ikelb_tests::lab::{
    self,
    control::{self, Clients},
    Lab, LabSpec,
};

const WAIT: Duration = Duration::from_millis(300);

fn or_log<T>(lab: &Lab, r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", lab.daemon_output_tail(40)))
}

/// Every answer of every round came from `expect[client]`.
fn assert_nobody_moved(
    rounds: &[(Instant, control::Round)],
    expect: &BTreeMap<Ipv4Addr, String>,
    what: &str,
) {
    let mut answered = 0;
    for (_, round) in rounds {
        for (c, b) in round {
            if let Some(b) = b {
                answered += 1;
                assert_eq!(
                    b, &expect[c],
                    "{what}: {c} answered by {b}, was {}",
                    expect[c]
                );
            }
        }
    }
    assert!(answered > 0, "{what}: no answer at all");
}

#[test]
fn bulk_clients_keep_their_backend_when_their_slot_changes() {
    if !lab::is_root() {
        eprintln!("SKIP bulk_clients_keep_their_backend_when_their_slot_changes: needs root");
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let started = Instant::now();
    let mut lab = Lab::build(&LabSpec {
        role: 'l',
        clients: 120,
        backends: 4,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder")))
        .expect("start responders");
    let config = control::with_health(&lab.daemon_config(), "200ms", "100ms", 3, 2)
        .replace("persistence_timeout: 30m\n", "persistence_timeout: 40s\n");
    assert!(
        !config.contains("slot_fast_path"),
        "the lab runs the default, which is on"
    );
    let addrs: BTreeMap<String, Ipv4Addr> = lab
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.addr))
        .collect();
    let addr = |name: &str| addrs[name];
    let b4 = addr("b4");
    let config = control::without_backend(&config, b4);
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon");
    let three: Vec<Ipv4Addr> = ["b1", "b2", "b3"].iter().map(|n| addr(n)).collect();
    let ready = control::wait_backends(&lab, "b1-b3 active", Duration::from_secs(20), |l| {
        l.len() == 3 && three.iter().all(|a| control::has_state(l, *a, "active"))
    });
    or_log(&lab, ready, "backends up");

    eprintln!(
        "slot_fast_path: lab and daemon up at {:?}",
        started.elapsed()
    );
    // Session starts: IKE on 500 records every client's backend.
    let ike = Clients::bind(&lab, &lab.clients, 500).expect("bind IKE clients");
    let start = or_log(&lab, ike.all_answered(5, WAIT), "IKE answers");
    drop(ike);
    eprintln!("clients per backend {:?}", control::spread(&start));
    // From now on bulk only: ESP-in-UDP on 4500.
    let bulk = Clients::bind(&lab, &lab.clients, 4500).expect("bind bulk clients");
    let first = or_log(&lab, bulk.all_answered(5, WAIT), "first bulk answers");
    assert_eq!(first, start, "bulk packets go where the session began");

    eprintln!(
        "slot_fast_path: sessions started at {:?}",
        started.elapsed()
    );
    // 1. b4 added under bulk traffic: nobody moves.
    let traffic = bulk.background(Duration::from_millis(50), Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(300));
    lab.lb_ctl(&lb_ctl, &["backend", "add", "aovpn", &b4.to_string()])
        .expect("backend add");
    let joined = control::wait_backends(&lab, "b4 active", Duration::from_secs(10), |l| {
        control::has_state(l, b4, "active")
    });
    or_log(&lab, joined, "b4 joins");
    // Its slots wait `slot_move_delay` (5 s) before they move to it: traffic runs through the
    // hold and the move.
    let moved = control::wait_ring_slots(&lab, b4, Duration::from_secs(15));
    or_log(&lab, moved, "b4 takes its slots");
    std::thread::sleep(Duration::from_millis(500));
    let (bulk, rounds) = traffic.stop().expect("traffic");
    assert_nobody_moved(&rounds, &start, "bulk traffic while b4 joined");
    let after_add = or_log(
        &lab,
        bulk.all_answered(5, WAIT),
        "bulk answers after the add",
    );
    assert_eq!(after_add, start, "a bulk client moved when b4 joined");
    let b4_slots = control::backend(&lab, &lb_ctl, b4).unwrap().unwrap()["ring_slots"]
        .as_u64()
        .unwrap();
    assert!(b4_slots > 0, "b4 took slots");

    eprintln!("slot_fast_path: 1 (add) done at {:?}", started.elapsed());
    // 2. The busiest backend's link cut: its clients move to the survivors, nobody else.
    let spread = control::spread(&start);
    let (victim, _) = spread.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim = victim.clone();
    let victim_addr = addr(&victim);
    lab.bridge
        .ip(&["link", "set", &victim, "down"])
        .expect("cut link");
    let down = control::wait_backends(&lab, "victim down", Duration::from_secs(10), |l| {
        control::has_state(l, victim_addr, "unusable")
    });
    or_log(&lab, down, "victim down");
    let outage = or_log(
        &lab,
        bulk.all_answered(5, WAIT),
        "bulk answers in the outage",
    );
    for (c, b) in &outage {
        if start[c] == victim {
            assert_ne!(*b, victim, "{c} still answered by the cut-off backend");
        } else {
            assert_eq!(*b, start[c], "{c} of a live backend moved");
        }
    }

    eprintln!("slot_fast_path: 2 (cut) done at {:?}", started.elapsed());
    // 3. The link restored: its slots come back, its former clients stay where they are.
    let traffic = bulk.background(Duration::from_millis(50), Duration::from_millis(200));
    lab.bridge
        .ip(&["link", "set", &victim, "up"])
        .expect("restore link");
    let up = control::wait_backends(&lab, "victim active", Duration::from_secs(15), |l| {
        control::has_state(l, victim_addr, "active")
    });
    or_log(&lab, up, "victim back");
    let moved = control::wait_ring_slots(&lab, victim_addr, Duration::from_secs(15));
    or_log(&lab, moved, "the victim's slots come back");
    std::thread::sleep(Duration::from_millis(500));
    let (bulk, rounds) = traffic.stop().expect("traffic");
    let after = or_log(
        &lab,
        bulk.all_answered(5, WAIT),
        "bulk answers after recovery",
    );
    assert_eq!(after, outage, "somebody moved when {victim} came back");
    // Rounds answered during the recovery: only the outage's backends.
    let mut answered = 0;
    for (_, round) in &rounds {
        for (c, b) in round.iter().filter_map(|(c, b)| b.as_ref().map(|b| (c, b))) {
            answered += 1;
            assert_eq!(b, &outage[c], "{c} moved during the recovery");
        }
    }
    assert!(answered > 0);

    eprintln!(
        "slot_fast_path: 3 (restore) done at {:?}",
        started.elapsed()
    );
    // 4. Bulk only for several ticks and until a flag sweep ran: the fast path runs, entries
    // stay fresh, nobody moves.
    let fast_before = fast_path_events(&lab);
    let traffic = bulk.background(Duration::from_millis(50), Duration::from_millis(200));
    let t0 = Instant::now();
    let mut sweeps = sweeps_ok(&lab);
    while t0.elapsed() < BULK_ONLY || (sweeps.0 == 0.0 && t0.elapsed() < SWEEP_WAIT) {
        std::thread::sleep(Duration::from_millis(250));
        sweeps = sweeps_ok(&lab);
    }
    // Sampled while the bulk traffic runs: every client's entry was refreshed within a tick
    // or two, although it sent nothing but ESP for several ticks.
    // A ring slot's first packet of each tick refreshes its client's entry: a client alone in
    // its slot is refreshed every tick; clients sharing a slot take turns (at 120 clients in
    // 65,537 slots a shared slot is rare), so for them only a live entry is asserted.
    eprintln!(
        "slot_fast_path: 4 (bulk only) done at {:?}",
        started.elapsed()
    );
    let mut max_idle = 0;
    let mut tiers = BTreeMap::<String, usize>::new();
    let mut looked = Vec::new();
    let mut per_slot = BTreeMap::<u64, usize>::new();
    // On the control socket, pipelined on one connection: what `lb-ctl lookup --json`
    // prints for each client, without 120 processes.
    let asks: Vec<_> = after
        .keys()
        .map(|c| serde_json::json!({"command": "lookup", "client": c.to_string()}))
        .collect();
    let answers = lab.requests(&asks).expect("lookups");
    for ((c, b), v) in after.iter().zip(answers) {
        let r = v["results"][0].clone();
        *per_slot
            .entry(r["slot"].as_u64().expect("slot"))
            .or_default() += 1;
        looked.push((*c, b.clone(), r));
    }
    eprintln!("slot_fast_path: lookups done at {:?}", started.elapsed());
    let mut shared = 0;
    for (c, b, r) in &looked {
        let p = &r["persisted"];
        assert_eq!(
            r["backend"].as_str(),
            Some(addr(b).to_string().as_str()),
            "lookup {c}: {r}"
        );
        assert!(
            p.is_object() && p.get("ignored_because").is_none(),
            "lookup {c}: no live entry: {r}"
        );
        let idle = p["idle_seconds"].as_u64().expect("idle_seconds");
        if per_slot[&r["slot"].as_u64().expect("slot")] == 1 {
            assert!(
                idle <= 2,
                "{c}, alone in its ring slot, sent ESP every ~50 ms for {:?}, yet its entry is \
                 {idle} s idle: the fast path did not refresh it once a tick ({r})",
                t0.elapsed()
            );
            max_idle = max_idle.max(idle);
        } else {
            shared += 1;
        }
        *tiers
            .entry(p["tier"].as_str().unwrap_or("persistence").to_string())
            .or_default() += 1;
    }
    let bulk_time = t0.elapsed();
    let (_bulk, rounds) = traffic.stop().expect("traffic");
    assert_nobody_moved(&rounds, &after, "bulk-only traffic over several ticks");
    let fast_after = fast_path_events(&lab);
    assert!(
        fast_after > fast_before && fast_after > 0,
        "the fast path never ran: fast_path events {fast_before} before {bulk_time:?} of bulk \
         traffic, {fast_after} after"
    );
    assert!(
        sweeps.0 > 0.0,
        "no slot flag sweep finished in {:?} of test (sweeps run every 10 s while slots are \
         flagged; ikelb_slot_sweeps_total{{result=\"ok\"}} = {}, failed = {})\n{}",
        started.elapsed(),
        sweeps.0,
        sweeps.1,
        lab.daemon_output_tail(20)
    );
    eprintln!(
        "SLOT FAST PATH: {} bulk-only clients kept their backend through add (b4: {b4_slots} \
         slots), failover and recovery of {victim}; then {bulk_time:?} of bulk only: \
         fast_path events {fast_before} → {fast_after}, {} rounds, every entry fresh (max \
         idle {max_idle} s alone in a slot, {shared} clients in shared slots; tiers {tiers:?}); slot flag sweeps: {} ok, {} failed",
        start.len(),
        rounds.len(),
        sweeps.0 as u64,
        sweeps.1 as u64
    );
}

/// Bulk-only time of phase 4: several persistence ticks (2^30 ns each).
const BULK_ONLY: Duration = Duration::from_secs(5);
/// How long phase 4 waits for a sweep to finish (they run every 10 s once slots are
/// flagged, i.e. since b4 joined).
const SWEEP_WAIT: Duration = Duration::from_secs(25);

/// `ikelb_xdp_events_total{event="fast_path"}`.
fn fast_path_events(lab: &Lab) -> u64 {
    let text = lab.metrics().expect("/metrics");
    let s = lab::metrics::samples(&text, "ikelb_xdp_events_total");
    assert!(
        s.iter().any(|s| s.label("event") == "fast_path"),
        "/metrics has no ikelb_xdp_events_total{{event=\"fast_path\"}}"
    );
    lab::metrics::sum(&text, "ikelb_xdp_events_total", &[("event", "fast_path")]) as u64
}

/// `ikelb_slot_sweeps_total` by result: (ok, failed).
fn sweeps_ok(lab: &Lab) -> (f64, f64) {
    let text = lab.metrics().expect("/metrics");
    let n = |r| lab::metrics::sum(&text, "ikelb_slot_sweeps_total", &[("result", r)]);
    (n("ok"), n("failed"))
}
