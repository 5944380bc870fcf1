//! The text exposition through the fake dataplane: a balancer on `FakeDataplane`, its model
//! published, counters and persistence entries in the fake, one scrape.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use lb_common::{counter, event, PersistKeyV4, PersistValue, ProbationValue, Traffic};

use super::*;
use crate::{
    config,
    dataplane::{fake::FakeDataplane, Dataplane, DataplaneError, PersistEntry},
    health::{Probe, ProbeKind, ProbeOutcome},
    state::{IfaceInfo, NextHop},
};

/// The fake's maps plus per-backend traffic (which `FakeDataplane` does not model).
struct Fake {
    dp: Mutex<FakeDataplane>,
    traffic: BTreeMap<u32, [Traffic; 2]>,
    /// `IKE_STAGES` (which `FakeDataplane` does not model).
    ike: Vec<u64>,
}

impl StatsSource for Fake {
    fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
        self.dp.lock().unwrap().counters()
    }
    fn events(&self) -> Result<Vec<u64>, DataplaneError> {
        self.dp.lock().unwrap().events()
    }
    fn ike_stages(&self) -> Result<Vec<u64>, DataplaneError> {
        Ok(self.ike.clone())
    }
    fn backend_traffic(&self, id: u32) -> Result<[Traffic; 2], DataplaneError> {
        Ok(self.traffic.get(&id).copied().unwrap_or_default())
    }
    fn persistence(&self) -> Result<Vec<PersistEntry>, DataplaneError> {
        self.dp.lock().unwrap().persistence()
    }
}

fn line_value(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_exposition_has_every_contract_metric_with_the_data_path_values() {
    let cfg = config::parse(
        "t.yaml",
        "interfaces: [ext, int]\nmaglev_table_size: 251\npersistence_entries: 1000\n\
         persistence_timeout: 5s\nvirtual_servers:
  - name: aovpn
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
",
    )
    .unwrap();
    let ifaces = vec![
        IfaceInfo {
            name: "ext".into(),
            ifindex: 10,
            mac: [2, 0, 0, 0, 0, 10],
        },
        IfaceInfo {
            name: "int".into(),
            ifindex: 20,
            mac: [2, 0, 0, 0, 0, 20],
        },
    ];
    let mut lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces, 1024).unwrap();
    // Backend 1 usable; backend 2's next hop unknown (down).
    lb.set_next_hop(
        1,
        Some(NextHop {
            port: 1,
            mac: [0xaa; 6],
        }),
    )
    .unwrap();
    lb.set_health(1, crate::health::HealthState::Up).unwrap();

    let now = now_ticks();
    // A stamp 5 ticks past the timeout (a stamp "before boot" would wrap to the future, which
    // counts as live).
    let stale = now
        .checked_sub(cfg.persist_timeout_ticks() + 5)
        .expect("this test needs a machine up for more than 11 s");
    let entry = |client: u8, backend, atime| {
        (
            PersistKeyV4 {
                service: 0,
                client: u32::from_ne_bytes([100, 64, 1, client]),
            },
            PersistValue {
                backend,
                atime,
                ..PersistValue::default()
            },
        )
    };
    let mut counters = vec![0; counter::COUNT as usize];
    counters[counter::FORWARD as usize] = 750;
    counters[counter::DROP_NO_BACKEND as usize] = 3;
    let mut events = vec![0; event::COUNT as usize];
    events[event::PROBATION_THROTTLED as usize] = 42;
    let probation = |client: u8, backend, atime| {
        let (k, v) = entry(client, backend, atime);
        (
            k,
            ProbationValue {
                backend: v.backend,
                atime: v.atime,
                proof: 0x1234,
                ..ProbationValue::default()
            },
        )
    };
    let dp = FakeDataplane {
        counters,
        events,
        // New clients: counted as clients of their backend, not as established entries.
        probation_v4: vec![
            probation(5, 2, now),
            probation(6, 2, stale), // idle
        ],
        persist_v4: vec![
            entry(1, 1, now),
            entry(2, 1, now),
            entry(3, 2, now),
            entry(4, 1, stale), // idle: no longer a client
        ],
        ..FakeDataplane::default()
    };
    let source = Arc::new(Fake {
        dp: Mutex::new(dp),
        traffic: BTreeMap::from([(
            1,
            [
                Traffic {
                    packets: 500,
                    bytes: 64_000,
                },
                Traffic {
                    packets: 250,
                    bytes: 32_000,
                },
            ],
        )]),
        ike: vec![],
    });
    let capacity = Capacity {
        persistence: 1000,
        probation: 300,
    };
    let metrics = Arc::new(Metrics::new(source, cfg.persist_timeout_ticks(), capacity).unwrap());
    lb.apply().unwrap(); // backend 1's table: one flip
    metrics.publish(&lb);
    metrics.publish(&lb); // counted once
    let observe = metrics.probe_observer();
    for (ms, kind, outcome) in [
        (1, ProbeKind::Icmp, ProbeOutcome::Success),
        (3, ProbeKind::Icmp, ProbeOutcome::Success),
        (150, ProbeKind::Icmp, ProbeOutcome::Timeout),
        (2, ProbeKind::Ike, ProbeOutcome::Error),
    ] {
        observe(
            "10.0.0.11".parse().unwrap(),
            kind,
            &Probe {
                outcome,
                duration: Duration::from_millis(ms),
                error: None,
            },
        );
    }

    let text = metrics.render().unwrap();
    let v = |l: &str| line_value(&text, l).unwrap_or_else(|| panic!("no {l} in\n{text}"));
    assert_eq!(
        v(r#"ikelb_backend_up{backend="10.0.0.11",vs="aovpn"}"#),
        1.0
    );
    assert_eq!(
        v(r#"ikelb_backend_up{backend="10.0.0.12",vs="aovpn"}"#),
        0.0
    );
    assert_eq!(
        v(r#"ikelb_backend_packets_total{backend="10.0.0.11",direction="forward",vs="aovpn"}"#),
        500.0
    );
    assert_eq!(
        v(r#"ikelb_backend_bytes_total{backend="10.0.0.11",direction="reverse",vs="aovpn"}"#),
        32_000.0
    );
    assert_eq!(
        v(r#"ikelb_backend_packets_total{backend="10.0.0.12",direction="forward",vs="aovpn"}"#),
        0.0
    );
    assert_eq!(
        v(r#"ikelb_backend_clients{backend="10.0.0.11",vs="aovpn"}"#),
        2.0
    );
    assert_eq!(
        v(r#"ikelb_backend_clients{backend="10.0.0.12",vs="aovpn"}"#),
        2.0,
        "one established client and one in probation"
    );
    assert_eq!(v("ikelb_persistence_entries "), 3.0);
    assert_eq!(v("ikelb_persistence_capacity "), 1000.0);
    assert_eq!(v("ikelb_probation_entries "), 1.0);
    assert_eq!(v("ikelb_probation_capacity "), 300.0);
    assert_eq!(
        v(r#"ikelb_xdp_events_total{event="probation_throttled"}"#),
        42.0
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("ikelb_xdp_events_total{"))
            .count(),
        event::COUNT as usize,
        "every event is exported, zeros included"
    );
    assert_eq!(
        v(r#"ikelb_xdp_packets_total{action="redirect",reason="forward"}"#),
        750.0
    );
    assert_eq!(
        v(r#"ikelb_xdp_packets_total{action="drop",reason="no_backend"}"#),
        3.0
    );
    // Every (action, reason) pair is exported, zeros included.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("ikelb_xdp_packets_total{"))
            .count(),
        counter::COUNT as usize
    );
    assert_eq!(v("ikelb_maglev_rebuilds_total "), 1.0);
    assert_eq!(
        v(r#"ikelb_health_checks_total{backend="10.0.0.11",probe="icmp",result="success"}"#),
        2.0
    );
    assert_eq!(
        v(r#"ikelb_health_checks_total{backend="10.0.0.11",probe="icmp",result="timeout"}"#),
        1.0
    );
    assert_eq!(
        v(r#"ikelb_health_checks_total{backend="10.0.0.11",probe="ike",result="error"}"#),
        1.0
    );
    assert_eq!(
        v(
            r#"ikelb_health_check_duration_seconds_bucket{backend="10.0.0.11",probe="icmp",le="0.005"}"#
        ),
        2.0
    );
    assert_eq!(
        v(r#"ikelb_health_check_duration_seconds_count{backend="10.0.0.11",probe="icmp"}"#),
        3.0
    );
    assert_eq!(
        v(r#"ikelb_health_check_duration_seconds_count{backend="10.0.0.11",probe="ike"}"#),
        1.0
    );
    assert_eq!(
        v(&format!(
            r#"ikelb_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    for family in [
        "# TYPE ikelb_backend_up gauge",
        "# TYPE ikelb_backend_packets_total counter",
        "# TYPE ikelb_backend_bytes_total counter",
        "# TYPE ikelb_backend_clients gauge",
        "# TYPE ikelb_health_check_duration_seconds histogram",
        "# TYPE ikelb_health_checks_total counter",
        "# TYPE ikelb_xdp_packets_total counter",
        "# TYPE ikelb_persistence_entries gauge",
        "# TYPE ikelb_persistence_capacity gauge",
        "# TYPE ikelb_probation_entries gauge",
        "# TYPE ikelb_probation_capacity gauge",
        "# TYPE ikelb_xdp_events_total counter",
        "# TYPE ikelb_maglev_rebuilds_total counter",
        "# TYPE ikelb_build_info gauge",
    ] {
        assert!(text.contains(family), "{family} missing in\n{text}");
    }

    // A backend that goes down shows at the next scrape.
    lb.set_next_hop(1, None).unwrap();
    metrics.publish(&lb);
    let text = metrics.render().unwrap();
    assert_eq!(
        line_value(&text, r#"ikelb_backend_up{backend="10.0.0.11",vs="aovpn"}"#),
        Some(0.0)
    );
}

/// With `announce`: one `ikelb_vip_announced` per VIP (0 or 1), and the route counters at
/// the announcer's totals; a VIP the config lost drops out of the gauge.
#[test]
fn the_announce_state_is_exported() {
    let source = Arc::new(Fake {
        dp: Mutex::new(FakeDataplane::default()),
        traffic: BTreeMap::new(),
        ike: vec![],
    });
    let metrics = Metrics::new(
        source,
        10,
        Capacity {
            persistence: 1000,
            probation: 250,
        },
    )
    .unwrap();
    let text = metrics.render().unwrap();
    assert!(
        !text.contains("ikelb_vip_announced{"),
        "no VIP before any announce state:\n{text}"
    );
    let announced = |vs: &str, vip: &str, announced| crate::announce::Announced {
        vs: vs.into(),
        vip: vip.parse().unwrap(),
        announced,
    };
    let mut view = crate::announce::View {
        table: 100,
        vips: vec![
            announced("aovpn", "203.0.113.10", true),
            announced("aovpn", "2001:db8:ffff::10", false),
        ],
        changes: 3,
        errors: 2,
    };
    metrics.announce(&view);
    let text = metrics.render().unwrap();
    let v = |line: &str| line_value(&text, line);
    assert_eq!(
        v(r#"ikelb_vip_announced{vip="203.0.113.10",vs="aovpn"}"#),
        Some(1.0)
    );
    assert_eq!(
        v(r#"ikelb_vip_announced{vip="2001:db8:ffff::10",vs="aovpn"}"#),
        Some(0.0)
    );
    assert_eq!(v("ikelb_announce_route_changes_total "), Some(3.0));
    assert_eq!(v("ikelb_announce_route_errors_total "), Some(2.0));

    view.vips.pop();
    view.vips[0].announced = false;
    view.changes = 4;
    metrics.announce(&view);
    let text = metrics.render().unwrap();
    let v = |line: &str| line_value(&text, line);
    assert_eq!(
        v(r#"ikelb_vip_announced{vip="203.0.113.10",vs="aovpn"}"#),
        Some(0.0)
    );
    assert_eq!(v(r#"ikelb_vip_announced{vip="2001:db8:ffff::10""#), None);
    assert_eq!(v("ikelb_announce_route_changes_total "), Some(4.0));
    assert_eq!(v("ikelb_announce_route_errors_total "), Some(2.0));
}

/// `IKE_STAGES` becomes the `ikelb_ike_*` counters (every series present, zeros included), and
/// the stage in each live client entry's flags the `ikelb_ike_clients` gauge; an idle entry
/// and the probation-only guess flag count for nothing.
#[test]
fn the_ike_stages_are_exported() {
    use lb_common::ike;
    let mut stages = vec![0; ike::COUNT as usize];
    stages[ike::SA_INIT_REQUEST as usize] = 9;
    stages[ike::SA_INIT_RESPONSE as usize] = 4;
    stages[ike::AUTH_REQUEST as usize] = 3;
    stages[ike::AUTH_FRAGMENTED as usize] = 2;
    stages[ike::FRAGMENT_NO_ENTRY as usize] = 7;
    stages[ike::STEERED_ESP as usize] = 5;
    let now = now_ticks();
    let key = |client: u8| PersistKeyV4 {
        service: 0,
        client: u32::from_ne_bytes([100, 64, 1, client]),
    };
    let persist = |client, stage, atime| {
        (
            key(client),
            PersistValue {
                backend: 1,
                atime,
                flags: ike::with_stage(0, stage),
                ..PersistValue::default()
            },
        )
    };
    let probation = |client, flags| {
        (
            key(client),
            ProbationValue {
                backend: 1,
                atime: now,
                flags,
                ..ProbationValue::default()
            },
        )
    };
    let dp = FakeDataplane {
        persist_v4: vec![
            persist(1, ike::STAGE_ESP, now),
            persist(2, ike::STAGE_ESP, now),
            persist(3, ike::STAGE_AUTH_FRAGMENTED, now),
            persist(4, ike::STAGE_SA_INIT_SENT, now.saturating_sub(1000)), // idle
        ],
        probation_v4: vec![
            probation(5, ike::with_stage(0, ike::STAGE_SA_INIT_SENT)),
            probation(6, ike::with_stage(0, ike::STAGE_SA_INIT_SENT)),
            probation(7, ike::with_stage(0, ike::STAGE_SA_INIT_ANSWERED)),
            probation(8, lb_common::PROBATION_F_GUESS),
        ],
        ..FakeDataplane::default()
    };
    let source = Arc::new(Fake {
        dp: Mutex::new(dp),
        traffic: BTreeMap::new(),
        ike: stages,
    });
    let capacity = Capacity {
        persistence: 100,
        probation: 100,
    };
    let metrics = Metrics::new(source, 10, capacity).unwrap();
    let text = metrics.render().unwrap();
    let v = |l: &str| line_value(&text, l).unwrap_or_else(|| panic!("no {l} in\n{text}"));
    for (series, n) in [
        (
            r#"ikelb_ike_messages_total{direction="request",exchange="ike_sa_init"}"#,
            9.0,
        ),
        (
            r#"ikelb_ike_messages_total{direction="response",exchange="ike_sa_init"}"#,
            4.0,
        ),
        (
            r#"ikelb_ike_messages_total{direction="request",exchange="ike_auth"}"#,
            5.0,
        ),
        ("ikelb_ike_auth_fragmented_total ", 2.0),
        ("ikelb_ike_fragments_no_entry_total ", 7.0),
        (r#"ikelb_ike_steered_total{sa="ike"}"#, 0.0),
        (r#"ikelb_ike_steered_total{sa="esp"}"#, 5.0),
        (r#"ikelb_ike_clients{stage="none"}"#, 1.0),
        (r#"ikelb_ike_clients{stage="ike_sa_init_sent"}"#, 2.0),
        (r#"ikelb_ike_clients{stage="ike_sa_init_answered"}"#, 1.0),
        (r#"ikelb_ike_clients{stage="ike_auth_sent"}"#, 0.0),
        (r#"ikelb_ike_clients{stage="ike_auth_fragmented"}"#, 1.0),
        (r#"ikelb_ike_clients{stage="established"}"#, 2.0),
    ] {
        assert_eq!(v(series), n, "{series}");
    }
    for family in [
        "# TYPE ikelb_ike_messages_total counter",
        "# TYPE ikelb_ike_auth_fragmented_total counter",
        "# TYPE ikelb_ike_fragments_no_entry_total counter",
        "# TYPE ikelb_ike_steered_total counter",
        "# TYPE ikelb_ike_clients gauge",
    ] {
        assert!(text.contains(family), "{family} missing in\n{text}");
    }
}
