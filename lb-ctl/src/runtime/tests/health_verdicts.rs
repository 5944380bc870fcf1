//! Health verdicts applied to the balancer: the first round, a backend that never answers,
//! failover that moves only the dead backend's clients, recovery that moves nobody back.

use super::*;

#[test]
fn every_backend_is_up_and_in_the_table_after_the_first_round() {
    let mut h = Harness::new();
    let list = h.list();
    assert_eq!(list.len(), 4);
    assert!(
        list.iter()
            .all(|b| b.state == "active" && b.health == HealthState::Up),
        "{list:?}"
    );
    let slots: u32 = list
        .iter()
        .filter(|b| b.virtual_server == "aovpn")
        .map(|b| b.ring_slots)
        .sum();
    assert_eq!(slots, M);
}

#[test]
fn a_backend_that_never_answers_takes_no_traffic() {
    let dir = TempDir::new("never");
    let cfg = config(&dir.0);
    let mut lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces(), 64).unwrap();
    let mut c = Controller::new(cfg.clone(), Store::new(&cfg.state_dir));
    c.replay(&mut lb, SystemTime::now()).unwrap();
    let mut h = Harness {
        lb,
        c,
        now: Clock::now(),
        _dir: dir,
    };
    h.resolve();
    h.health_round(|a| a != ip("10.0.0.12"));
    let b = h.lb.backend_by_address(ip("10.0.0.12")).unwrap();
    assert_eq!(b.health, HealthState::Unknown);
    assert!(!b.usable());
    let id = b.id;
    assert!(h.traffic(300).values().all(|b| *b != Some(id)));
}

#[test]
fn failover_moves_only_the_dead_backends_clients_and_recovery_moves_nobody_back() {
    let mut h = Harness::new();
    let before = h.traffic(600);
    let dead = h.id("10.0.0.12");
    assert!(before.values().filter(|b| **b == Some(dead)).count() > 100);

    // fall - 1 failures: nothing happens.
    for _ in 0..2 {
        h.health_round(|a| a != ip("10.0.0.12"));
    }
    assert!(h.lb.backend(dead).unwrap().usable());
    h.lb.dataplane_mut().ops.clear();
    // The third: down, one flip, the backend's flag cleared after it.
    h.health_round(|a| a != ip("10.0.0.12"));
    let ops = h.lb.dataplane().ops.clone();
    assert_eq!(
        ops.iter().filter(|o| matches!(o, Op::Flip { .. })).count(),
        1,
        "{ops:?}"
    );
    let flip = ops
        .iter()
        .position(|o| matches!(o, Op::Flip { id: 0, .. }))
        .unwrap();
    let cleared = ops
        .iter()
        .position(|o| *o == Op::SetBackend { id: dead, flags: 0 })
        .unwrap();
    assert!(flip < cleared, "{ops:?}");
    assert!(h.lb.services()[0]
        .active_table()
        .iter()
        .all(|&b| b & lb_common::RING_BACKEND_MASK != dead));

    let during = h.traffic(600);
    for (c, b) in &before {
        if *b == Some(dead) {
            assert_ne!(
                during[c],
                Some(dead),
                "client {c} still on the dead backend"
            );
            assert!(during[c].is_some());
        } else {
            assert_eq!(
                during[c], *b,
                "client {c} moved although its backend is alive"
            );
        }
    }

    // Back after `rise` = 2 successes; nobody moves back, but new clients can land there.
    h.health_round(|_| true);
    assert!(!h.lb.backend(dead).unwrap().usable());
    h.health_round(|_| true);
    assert!(h.lb.backend(dead).unwrap().in_ring());
    let after = h.traffic(600);
    assert_eq!(after, during, "nobody moves when the backend comes back");
    let newcomers: Vec<Option<u32>> = (601..=900).map(|c| h.route(0, client(c))).collect();
    assert!(
        newcomers.contains(&Some(dead)),
        "new clients land on the recovered backend"
    );
}

#[test]
fn all_backends_down_gives_an_empty_table_and_no_packet_to_a_dead_server() {
    let mut h = Harness::new();
    h.traffic(100);
    for _ in 0..3 {
        h.health_round(|a| !a.to_string().starts_with("10.0.0."));
    }
    assert!(h.lb.services()[0]
        .active_table()
        .iter()
        .all(|&b| b & lb_common::RING_BACKEND_MASK == BACKEND_NONE));
    assert!(h.traffic(200).values().all(Option::is_none));
    // The other virtual server is untouched.
    assert!(h.route(1, client(1)).is_some());
    match ok(h.request(Request::Status)) {
        Reply::Status(s) => {
            assert_eq!(s.virtual_servers[0].active, 0);
            assert_eq!(s.virtual_servers[1].active, 1);
        }
        r => panic!("{r:?}"),
    }
}

/// A harness whose configuration probes with both types (`probes: [icmp, ike]`, the default).
fn both_probes() -> Harness {
    let dir = TempDir::new("both");
    let mut cfg = config(&dir.0);
    cfg.health_check.probes = crate::health::ProbeKinds::DEFAULT;
    let mut lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces(), 64).unwrap();
    let mut c = Controller::new(cfg.clone(), Store::new(&cfg.state_dir));
    c.replay(&mut lb, SystemTime::now()).unwrap();
    let mut h = Harness {
        lb,
        c,
        now: Clock::now(),
        _dir: dir,
    };
    h.resolve();
    h
}

/// One round of both probe types: every ping answered, `ike_ok(address)` says which IKE
/// probes are.
fn round_both(h: &mut Harness, ike_ok: impl Fn(IpAddr) -> bool) {
    let reports: Vec<Report> =
        h.c.targets(&h.lb)
            .into_iter()
            .flat_map(|t| {
                [ProbeKind::Icmp, ProbeKind::Ike].map(|kind| {
                    let ok = kind == ProbeKind::Icmp || ike_ok(t.addr);
                    Report {
                        id: t.id,
                        addr: t.addr,
                        kind,
                        probe: Probe {
                            outcome: if ok {
                                ProbeOutcome::Success
                            } else {
                                ProbeOutcome::Error
                            },
                            duration: Duration::from_millis(1),
                            error: (!ok).then(|| "ICMP port unreachable".to_owned()),
                        },
                    }
                })
            })
            .collect();
    h.c.on_health(&mut h.lb, &reports);
    h.apply();
}

#[test]
fn a_backend_that_answers_ping_but_not_ike_is_taken_out_and_nobody_else_moves() {
    let mut h = both_probes();
    round_both(&mut h, |_| true);
    let before = h.traffic(600);
    let dead = h.id("10.0.0.12");
    assert!(before.values().filter(|b| **b == Some(dead)).count() > 100);

    for _ in 0..3 {
        round_both(&mut h, |a| a != ip("10.0.0.12"));
    }
    let b = h.lb.backend(dead).unwrap();
    assert_eq!(b.health, HealthState::Down);
    assert!(!b.usable());
    let info = h.list().into_iter().find(|b| b.id == dead).unwrap();
    let probes: Vec<(&str, HealthState)> = info
        .probes
        .iter()
        .map(|p| (p.probe.as_str(), p.health))
        .collect();
    assert_eq!(
        probes,
        [("icmp", HealthState::Up), ("ike", HealthState::Down)]
    );
    let after = h.traffic(600);
    for (c, was) in &before {
        if *was == Some(dead) {
            assert_ne!(after[c], Some(dead), "client {c} still on the dead backend");
        } else {
            assert_eq!(after[c], *was, "client {c} moved");
        }
    }

    // IKE answers again: `rise` (2) rounds bring it back.
    round_both(&mut h, |_| true);
    assert_eq!(h.lb.backend(dead).unwrap().health, HealthState::Down);
    round_both(&mut h, |_| true);
    assert_eq!(h.lb.backend(dead).unwrap().health, HealthState::Up);
}

#[test]
fn with_probes_icmp_a_dead_ike_service_is_not_seen() {
    let mut h = Harness::new();
    let dead = h.id("10.0.0.12");
    // The harness configures `probes: [icmp]`: IKE reports (as a monitor of that config
    // never sends) have no say.
    for _ in 0..5 {
        round_both(&mut h, |a| a != ip("10.0.0.12"));
    }
    assert_eq!(h.lb.backend(dead).unwrap().health, HealthState::Up);
}
