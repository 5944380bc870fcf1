use super::*;
use std::{collections::HashMap, sync::Mutex};

fn run(tracker: &mut Tracker, results: &str, rise: u32, fall: u32) -> Vec<(HealthState, bool)> {
    results
        .chars()
        .map(|c| {
            let flipped = tracker.observe(c == '+', rise, fall);
            (tracker.state(), flipped)
        })
        .collect()
}

#[test]
fn a_new_backend_is_up_on_its_first_success() {
    let mut t = Tracker::default();
    assert_eq!(t.state(), HealthState::Unknown);
    assert_eq!(run(&mut t, "+", 2, 3), [(HealthState::Up, true)]);
}

#[test]
fn a_new_backend_that_never_answers_is_down_after_fall_failures() {
    let mut t = Tracker::default();
    let states = run(&mut t, "---", 2, 3);
    assert_eq!(
        states,
        [
            (HealthState::Unknown, false),
            (HealthState::Unknown, false),
            (HealthState::Down, true)
        ]
    );
    // Once it has been down, `rise` applies.
    assert_eq!(
        run(&mut t, "++", 2, 3),
        [(HealthState::Down, false), (HealthState::Up, true)]
    );
}

#[test]
fn fall_consecutive_failures_take_it_down_and_a_success_resets_the_count() {
    let mut t = Tracker::default();
    run(&mut t, "+", 2, 3);
    let states = run(&mut t, "--+--+---", 2, 3);
    let flips: Vec<usize> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| s.1)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(flips, [8], "{states:?}");
    assert_eq!(t.state(), HealthState::Down);
}

#[test]
fn rise_consecutive_successes_bring_it_back_and_a_failure_resets_the_count() {
    let mut t = Tracker::default();
    run(&mut t, "+---", 3, 3);
    assert_eq!(t.state(), HealthState::Down);
    let states = run(&mut t, "++-+++", 3, 3);
    assert_eq!(
        states.iter().map(|s| s.1).collect::<Vec<_>>(),
        [false, false, false, false, false, true]
    );
    assert_eq!(t.state(), HealthState::Up);
}

#[test]
fn fall_and_rise_of_one_flip_at_once() {
    let mut t = Tracker::default();
    assert_eq!(
        run(&mut t, "+-+-", 1, 1),
        [
            (HealthState::Up, true),
            (HealthState::Down, true),
            (HealthState::Up, true),
            (HealthState::Down, true)
        ]
    );
}

/// Answers from a script: address → outcomes in order (then the last one forever).
#[derive(Default)]
struct Scripted {
    script: Mutex<HashMap<(IpAddr, ProbeKind), Vec<ProbeOutcome>>>,
}

impl Prober for Scripted {
    fn probe(
        &self,
        kind: ProbeKind,
        addr: IpAddr,
        _timeout: Duration,
    ) -> impl Future<Output = Probe> + Send {
        let mut s = self.script.lock().unwrap();
        let v = s.entry((addr, kind)).or_default();
        let outcome = if v.len() > 1 {
            v.remove(0)
        } else {
            v.first().copied().unwrap_or(ProbeOutcome::Success)
        };
        std::future::ready(Probe {
            outcome,
            duration: Duration::from_millis(1),
            error: None,
        })
    }
}

fn check() -> HealthCheck {
    HealthCheck {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(50),
        fall: 3,
        rise: 2,
        probes: ProbeKinds::of(&[ProbeKind::Icmp]),
    }
}

fn target(id: u32) -> Target {
    Target {
        id,
        addr: IpAddr::from([10, 0, 0, id as u8]),
    }
}

#[tokio::test(start_paused = true)]
async fn a_round_reports_in_target_order_and_feeds_the_observer() {
    let prober = Arc::new(Scripted::default());
    prober.script.lock().unwrap().insert(
        (target(2).addr, ProbeKind::Icmp),
        vec![ProbeOutcome::Timeout],
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let observer: ProbeObserver = Arc::new(move |addr, _kind, p: &Probe| {
        seen2.lock().unwrap().push((addr, p.outcome.label()));
    });
    let m = Monitor::new(prober, check(), Some(observer));
    let reports = m.round(&[target(1), target(2), target(3)]).await;
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.id, r.probe.outcome))
            .collect::<Vec<_>>(),
        [
            (1, ProbeOutcome::Success),
            (2, ProbeOutcome::Timeout),
            (3, ProbeOutcome::Success)
        ]
    );
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            (target(1).addr, "success"),
            (target(2).addr, "timeout"),
            (target(3).addr, "success")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_monitor_probes_every_interval_and_new_targets_at_once() {
    let m = Monitor::new(Arc::new(Scripted::default()), check(), None);
    let (targets_tx, targets_rx) = watch::channel(vec![target(1)]);
    let (tx, mut rx) = mpsc::channel(8);
    let task = tokio::spawn(m.run(targets_rx, tx));
    let t0 = tokio::time::Instant::now();

    // Nothing before the first interval: the daemon ran round one itself.
    let first = rx.recv().await.unwrap();
    assert_eq!(t0.elapsed(), check().interval);
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);

    // A new target is probed at once, alone.
    tokio::time::sleep(Duration::from_millis(10)).await;
    targets_tx.send(vec![target(1), target(2)]).unwrap();
    let new = rx.recv().await.unwrap();
    assert_eq!(new.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
    assert!(t0.elapsed() < 2 * check().interval);

    // The next interval probes both.
    let both = rx.recv().await.unwrap();
    assert_eq!(both.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(t0.elapsed(), 2 * check().interval);

    // A removed target is not probed any more.
    targets_tx.send(vec![target(2)]).unwrap();
    let after = rx.recv().await.unwrap();
    assert_eq!(after.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);

    drop(targets_tx);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_round_probes_every_target_with_every_enabled_type() {
    let prober = Arc::new(Scripted::default());
    prober
        .script
        .lock()
        .unwrap()
        .insert((target(1).addr, ProbeKind::Ike), vec![ProbeOutcome::Error]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let observer: ProbeObserver = Arc::new(move |addr, kind, p: &Probe| {
        seen2.lock().unwrap().push((addr, kind, p.outcome));
    });
    let check = HealthCheck {
        probes: ProbeKinds::DEFAULT,
        ..check()
    };
    let m = Monitor::new(prober, check, Some(observer));
    let reports = m.round(&[target(1), target(2)]).await;
    let got: Vec<_> = reports
        .iter()
        .map(|r| (r.id, r.kind, r.probe.outcome))
        .collect();
    assert_eq!(
        got,
        [
            (1, ProbeKind::Icmp, ProbeOutcome::Success),
            (1, ProbeKind::Ike, ProbeOutcome::Error),
            (2, ProbeKind::Icmp, ProbeOutcome::Success),
            (2, ProbeKind::Ike, ProbeOutcome::Success),
        ]
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "the observer sees every probe"
    );
}

/// `results`: one character per probe, `i`/`I` an ICMP failure/success, `k`/`K` an IKE
/// one; the backend's state after each, and whether it changed.
fn run_both(t: &mut Trackers, kinds: ProbeKinds, results: &str) -> Vec<(HealthState, bool)> {
    results
        .chars()
        .map(|c| {
            let kind = match c.to_ascii_lowercase() {
                'i' => ProbeKind::Icmp,
                'k' => ProbeKind::Ike,
                _ => unreachable!("{c}"),
            };
            let flip = t.observe(kinds, kind, c.is_ascii_uppercase(), 2, 3);
            (t.state(kinds), flip.is_some())
        })
        .collect()
}

#[test]
fn a_backend_is_up_only_while_every_enabled_probe_type_is_up() {
    let both = ProbeKinds::DEFAULT;
    let mut t = Trackers::default();
    // ICMP alone up is not enough; the first IKE success makes it Up.
    assert_eq!(
        run_both(&mut t, both, "IK"),
        [(HealthState::Unknown, false), (HealthState::Up, true)]
    );
    // IKE fails `fall` times while ping keeps answering: Down, with ICMP still Up.
    assert_eq!(
        run_both(&mut t, both, "kIkIk"),
        [
            (HealthState::Up, false),
            (HealthState::Up, false),
            (HealthState::Up, false),
            (HealthState::Up, false),
            (HealthState::Down, true)
        ]
    );
    assert_eq!(t.of(ProbeKind::Icmp), HealthState::Up);
    assert_eq!(t.of(ProbeKind::Ike), HealthState::Down);
    // IKE's own `rise` (2) brings it back.
    assert_eq!(
        run_both(&mut t, both, "KK"),
        [(HealthState::Down, false), (HealthState::Up, true)]
    );
}

#[test]
fn a_type_that_is_not_enabled_has_no_say() {
    let icmp = ProbeKinds::of(&[ProbeKind::Icmp]);
    let mut t = Trackers::default();
    assert_eq!(
        run_both(&mut t, icmp, "Ikkkk"),
        [
            (HealthState::Up, true),
            (HealthState::Up, false),
            (HealthState::Up, false),
            (HealthState::Up, false),
            (HealthState::Up, false)
        ]
    );
}

#[test]
fn probe_kinds_parse_and_iterate_in_a_fixed_order() {
    assert_eq!(ProbeKind::from_label("ike"), Some(ProbeKind::Ike));
    assert_eq!(ProbeKind::from_label("IKE"), None);
    let k = ProbeKinds::of(&[ProbeKind::Ike, ProbeKind::Icmp]);
    assert_eq!(k, ProbeKinds::DEFAULT);
    assert_eq!(k.labels(), ["icmp", "ike"]);
    assert!(ProbeKinds::of(&[]).is_empty());
}
