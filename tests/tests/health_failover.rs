//! Health checks through the standard lab with the real daemon (docs/operations.md, "Health checks"). Root only:
//! without root each test says why and returns.
//!
//! `failover_moves_only_the_dead_backends_clients_and_recovery_moves_nobody_back`: health
//! checks every 500 ms (timeout 200 ms, fall 3, rise 2). The bridge port of the busiest
//! backend is set down; within interval × fall + one interval its clients are answered by the
//! survivors, and no other client changes backend. The port comes back: the backend is up
//! again after `rise` successes, nobody moves back, and new clients land there. Then every
//! backend is cut: the VIP answers nobody and the data path counts the packets as
//! `no_backend` — none is forwarded to a dead server.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ikelb_tests::lab::{
    self,
    control::{self, Clients},
    metrics, Lab, LabSpec,
};

const INTERVAL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_millis(200);
const FALL: u32 = 3;
const RISE: u32 = 2;

fn skip_unless_root(test: &str) -> bool {
    if lab::is_root() {
        return false;
    }
    eprintln!(
        "SKIP {test}: needs root (network namespaces, veth, XDP); run `cargo xtask test` as root"
    );
    true
}

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

/// Fails with the daemon's log tail.
fn or_log<T>(lab: &Lab, r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", lab.daemon_output_tail(40)))
}

#[test]
fn failover_moves_only_the_dead_backends_clients_and_recovery_moves_nobody_back() {
    if skip_unless_root(
        "failover_moves_only_the_dead_backends_clients_and_recovery_moves_nobody_back",
    ) {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'h',
        clients: 90,
        backends: 3,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let config = control::with_health(
        &lab.daemon_config(),
        &format!("{}ms", INTERVAL.as_millis()),
        &format!("{}ms", TIMEOUT.as_millis()),
        FALL,
        RISE,
    );
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon");
    let addrs: BTreeMap<String, Ipv4Addr> = lab
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.addr))
        .collect();
    let all: Vec<Ipv4Addr> = addrs.values().copied().collect();
    let ready =
        control::wait_backends(&lab, "every backend active", Duration::from_secs(20), |l| {
            all.iter().all(|a| control::has_state(l, *a, "active"))
        });
    or_log(&lab, ready, "backends up");

    // 60 established clients; 30 kept for later as newcomers.
    let (old, new) = lab.clients.split_at(60);
    let clients = Clients::bind(&lab, old, 500).expect("bind clients");
    let before = or_log(
        &lab,
        clients.all_answered(5, Duration::from_millis(300)),
        "first answers",
    );
    let spread = control::spread(&before);
    let (victim, _) = spread.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim = victim.clone();
    let victim_addr = addrs[&victim];
    let moved: Vec<Ipv4Addr> = before
        .iter()
        .filter(|(_, b)| **b == victim)
        .map(|(c, _)| *c)
        .collect();
    eprintln!(
        "clients per backend {spread:?}; cutting {victim} ({victim_addr}) with {} clients",
        moved.len()
    );

    // Cut the victim's link at the switch.
    let t0 = Instant::now();
    lab.bridge
        .ip(&["link", "set", &victim, "down"])
        .expect("cut link");
    let mut failover = None;
    let mut during: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let limit = INTERVAL * (FALL + 1) + Duration::from_secs(3);
    while t0.elapsed() < limit {
        let round = clients.round(Duration::from_millis(100)).expect("round");
        for (c, b) in &round {
            let Some(b) = b else { continue };
            assert_ne!(*b, victim, "{c} answered by the cut-off backend?");
            if !moved.contains(c) {
                assert_eq!(
                    *b, before[c],
                    "{c} of a live backend moved from {} to {b}",
                    before[c]
                );
            }
            during.insert(*c, b.clone());
        }
        if moved.iter().all(|c| round[c].is_some()) {
            failover = Some(t0.elapsed());
            break;
        }
    }
    let failover = failover.unwrap_or_else(|| {
        panic!(
            "the victim's clients did not reach the survivors within {limit:?}\n{}",
            lab.daemon_output_tail(30)
        )
    });
    let bound = INTERVAL * FALL + INTERVAL;
    eprintln!(
        "FAILOVER: {victim}'s {} clients answered by survivors {failover:.2?} after the link cut \
         (bound interval × fall + interval = {bound:?})",
        moved.len()
    );
    // The figure is printed, not asserted against the bound: a loaded 2-core machine can
    // delay a probe round without anything being wrong. What is asserted is that the daemon,
    // not a timeout of the loop above, took the backend out (its state below).
    let down = control::backend(&lab, &lb_ctl, victim_addr)
        .unwrap()
        .unwrap();
    assert_eq!(down["health"], "down", "{down}");
    assert_eq!(down["state"], "unusable", "{down}");
    assert_eq!(down["ring_slots"], 0, "{down}");

    // Everyone is answered again; the survivors' clients never moved.
    let outage = or_log(
        &lab,
        clients.all_answered(5, Duration::from_millis(300)),
        "answers during the outage",
    );
    for (c, b) in &outage {
        if before[c] != victim {
            assert_eq!(*b, before[c], "{c} moved");
        } else {
            assert_ne!(*b, victim);
        }
    }

    // Restore: up after `rise` successes (≥ (rise - 1) intervals), nobody moves back.
    let t1 = Instant::now();
    lab.bridge
        .ip(&["link", "set", &victim, "up"])
        .expect("restore link");
    let recovered = control::wait_backends(
        &lab,
        "the victim active again",
        Duration::from_secs(15),
        |l| control::has_state(l, victim_addr, "active"),
    );
    let recovered = or_log(&lab, recovered, "recovery");
    // Its slots come back `slot_move_delay` later (lb-ctl/src/state.rs, "Slot moves").
    let back = control::wait_ring_slots(&lab, victim_addr, Duration::from_secs(15));
    let back = or_log(&lab, back, "the victim's slots back");
    eprintln!("RECOVERY: {victim}'s ring slots back {back:.2?} after it was up again");
    eprintln!(
        "RECOVERY: {victim} back in the table {recovered:.2?} after the link came up (rise {RISE})"
    );
    assert!(
        t1.elapsed() >= INTERVAL * (RISE - 1),
        "up before {RISE} successes could have been seen"
    );
    let after = or_log(
        &lab,
        clients.all_answered(5, Duration::from_millis(300)),
        "answers after recovery",
    );
    assert_eq!(after, outage, "somebody moved when {victim} came back");
    let newcomers = Clients::bind(&lab, new, 500).expect("bind newcomers");
    let fresh = or_log(
        &lab,
        newcomers.all_answered(5, Duration::from_millis(300)),
        "newcomers",
    );
    let landed = fresh.values().filter(|b| **b == victim).count();
    assert!(
        landed > 0,
        "no new client landed on the recovered {victim}: {:?}",
        control::spread(&fresh)
    );

    // Every backend cut: nothing answers, the data path drops as no_backend, nobody is
    // forwarded to a dead server.
    for b in addrs.keys() {
        lab.bridge
            .ip(&["link", "set", b, "down"])
            .expect("cut link");
    }
    let empty = control::wait_backends(&lab, "no active backend", Duration::from_secs(10), |l| {
        l.iter().all(|b| b["state"] != "active")
    });
    or_log(&lab, empty, "all down");
    let status = lab.lb_ctl(&lb_ctl, &["status"]).expect("status");
    assert!(
        status.contains("0 of 3 backends active") && status.contains("NO BACKEND"),
        "{status}"
    );
    let counted = |text: &str, reason: &str| {
        metrics::sum(text, "ikelb_xdp_packets_total", &[("reason", reason)])
    };
    let m0 = lab.metrics().ok();
    let silent = clients.round(Duration::from_millis(300)).expect("round");
    assert!(
        silent.values().all(Option::is_none),
        "answers with every backend down: {silent:?}"
    );
    match (m0, lab.metrics().ok()) {
        (Some(a), Some(b)) => {
            let dropped = counted(&b, "no_backend") - counted(&a, "no_backend");
            let forwarded = counted(&b, "forward") - counted(&a, "forward");
            assert!(
                dropped >= clients.addrs().len() as f64,
                "no_backend grew by {dropped}"
            );
            assert_eq!(forwarded, 0.0, "packets forwarded with every backend down");
        }
        _ => eprintln!("note: no metrics endpoint to count no_backend drops"),
    }
    let stopped = lab.stop_daemon().expect("stop the daemon");
    assert!(
        stopped.success(),
        "daemon exited with {stopped}\n{}",
        lab.daemon_output_tail(20)
    );
}
