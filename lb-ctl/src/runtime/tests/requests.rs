//! The requests: `backend add` and `backend remove` against the data path's model, every
//! refused request changing nothing, and `lookup`.

use super::*;

#[test]
fn backend_add_moves_no_established_client_and_is_probed_before_it_takes_clients() {
    let mut h = Harness::new();
    let before = h.traffic(600);
    let (resp, effects) = h.c.handle(
        &mut h.lb,
        Request::BackendAdd {
            virtual_server: "203.0.113.10".into(),
            address: ip("10.0.0.14"),
            weight: 2,
            dry_run: false,
        },
        h.now,
    );
    let Reply::BackendAdded {
        backend,
        drain_cancelled,
    } = ok(resp)
    else {
        panic!()
    };
    assert!(!drain_cancelled);
    assert_eq!(
        (backend.id, backend.weight, backend.health),
        (5, 2, HealthState::Unknown)
    );
    assert!(effects.targets_changed && effects.resolve);
    h.apply();
    assert_eq!(
        h.traffic(600),
        before,
        "not in the table before its first probe"
    );
    h.resolve();
    h.health_round(|_| true);
    let new = h.id("10.0.0.14");
    assert!(h.lb.backend(new).unwrap().in_ring());
    assert_eq!(h.traffic(600), before, "no established client moves");
    let newcomers: Vec<Option<u32>> = (601..=900).map(|c| h.route(0, client(c))).collect();
    assert!(newcomers.contains(&Some(new)));
    let file = h.state_file().unwrap();
    assert!(
        file.contains("\"10.0.0.14\"") && file.contains("\"weight\": 2"),
        "{file}"
    );
}

#[test]
fn backend_remove_stops_every_packet_to_it_and_frees_it_in_the_maps() {
    let mut h = Harness::new();
    let before = h.traffic(600);
    let gone = h.id("10.0.0.11");
    h.lb.dataplane_mut().ops.clear();
    let Reply::BackendRemoved {
        backend,
        draining_until: None,
    } = ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.11"),
        drain: None,
        dry_run: false,
    }))
    else {
        panic!()
    };
    assert_eq!(backend.id, gone);
    assert!(backend.clients > 100);
    let ops = &h.lb.dataplane().ops;
    assert_eq!(
        ops.last(),
        Some(&Op::RemoveBackend {
            id: gone,
            index: true
        }),
        "{ops:?}"
    );
    assert_eq!(h.lb.dataplane().backends[&gone], Backend::default());
    assert!(!h.lb.dataplane().backend_ids.contains_key(&[
        u32::from_ne_bytes([10, 0, 0, 11]),
        0,
        0,
        0
    ]));
    let after = h.traffic(600);
    for (c, b) in &before {
        assert_ne!(after[c], Some(gone));
        if *b != Some(gone) {
            assert_eq!(after[c], *b, "client {c} of a remaining backend moved");
        }
    }
    assert!(h.list().iter().all(|b| b.address != ip("10.0.0.11")));
    let file = h.state_file().unwrap();
    assert!(
        file.contains("\"removed\"") && file.contains("10.0.0.11"),
        "{file}"
    );
}

#[test]
fn every_bad_request_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        drain: Some(Duration::from_secs(60)),
        dry_run: false,
    }));
    let list_before = h.list();
    let file_before = h.state_file();
    let table_before = h.lb.services()[0].active_table().to_vec();
    h.lb.dataplane_mut().ops.clear();
    let add = |vs: &str, a: &str, weight: u32| Request::BackendAdd {
        virtual_server: vs.into(),
        address: ip(a),
        weight,
        dry_run: false,
    };
    let remove = |vs: &str, a: &str, drain: Option<u64>| Request::BackendRemove {
        virtual_server: vs.into(),
        address: ip(a),
        drain: drain.map(Duration::from_secs),
        dry_run: false,
    };
    let cases = [
        (
            add("vpn", "10.0.0.14", 1),
            ErrorCode::UnknownVirtualServer,
            "no virtual server \"vpn\"",
        ),
        (
            add("203.0.113.99", "10.0.0.14", 1),
            ErrorCode::UnknownVirtualServer,
            "known: aovpn 203.0.113.10",
        ),
        (
            add("aovpn", "10.0.0.11", 1),
            ErrorCode::DuplicateBackend,
            "already a backend of aovpn",
        ),
        (
            add("aovpn", "10.0.1.11", 1),
            ErrorCode::DuplicateBackend,
            "already a backend of other",
        ),
        (
            add("aovpn", "203.0.113.11", 1),
            ErrorCode::InvalidAddress,
            "VIP of virtual server other",
        ),
        (
            add("aovpn", "2001:db8::1", 1),
            ErrorCode::InvalidAddress,
            "address family",
        ),
        (
            add("aovpn", "0.0.0.0", 1),
            ErrorCode::InvalidAddress,
            "not a unicast address",
        ),
        (
            add("aovpn", "127.0.0.1", 1),
            ErrorCode::InvalidAddress,
            "not a unicast address",
        ),
        (
            add("aovpn", "224.0.0.1", 1),
            ErrorCode::InvalidAddress,
            "not a unicast address",
        ),
        (
            add("aovpn", "255.255.255.255", 1),
            ErrorCode::InvalidAddress,
            "not a unicast address",
        ),
        (
            add("aovpn", "10.0.0.14", 0),
            ErrorCode::InvalidWeight,
            "outside 1..=1000",
        ),
        (
            add("aovpn", "10.0.0.14", 1001),
            ErrorCode::InvalidWeight,
            "outside 1..=1000",
        ),
        (
            add("aovpn", "10.0.0.13", 0),
            ErrorCode::InvalidWeight,
            "outside",
        ),
        (
            remove("aovpn", "10.0.0.99", None),
            ErrorCode::UnknownBackend,
            "not a backend of aovpn",
        ),
        (
            remove("aovpn", "10.0.1.11", None),
            ErrorCode::UnknownBackend,
            "it is a backend of other",
        ),
        (
            remove("nope", "10.0.0.11", None),
            ErrorCode::UnknownVirtualServer,
            "no virtual server",
        ),
        (
            remove("aovpn", "10.0.0.11", Some(31 * 24 * 3600)),
            ErrorCode::InvalidDrain,
            "longer than the maximum",
        ),
        (
            Request::Lookup {
                client: ip("2001:db8::7"),
            },
            ErrorCode::InvalidAddress,
            "IPv6",
        ),
    ];
    for (req, code, text) in cases {
        let shown = format!("{req:?}");
        let e = err(h.request(req));
        assert_eq!(e.code, code, "{shown}: {e:?}");
        assert!(
            e.message.contains(text),
            "{shown}: {:?} lacks {text:?}",
            e.message
        );
        assert!(!e.message.contains('\n'), "one line: {:?}", e.message);
    }
    assert!(
        h.lb.dataplane().ops.is_empty(),
        "no map written: {:?}",
        h.lb.dataplane().ops
    );
    assert_eq!(h.list(), list_before);
    assert_eq!(h.state_file(), file_before);
    assert_eq!(h.lb.services()[0].active_table(), table_before);
}

#[test]
fn lookup_tells_persistence_from_maglev() {
    let mut h = Harness::new();
    let c = client(7);
    let addr = IpAddr::from([100, 64, 0, 7]);
    let Reply::Lookup { results, .. } = ok(h.request(Request::Lookup { client: addr })) else {
        panic!()
    };
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].source, "maglev");
    assert!(results[0].persisted.is_none());
    let chosen = h.route(0, c).unwrap();
    assert_eq!(results[0].backend_id, Some(chosen));
    let Reply::Lookup { results, .. } = ok(h.request(Request::Lookup { client: addr })) else {
        panic!()
    };
    assert_eq!(results[0].source, "persistence");
    assert_eq!(
        results[0].backend,
        Some(h.lb.backend(chosen).unwrap().address)
    );
    // Its backend goes down: the entry no longer decides.
    let down = h.lb.backend(chosen).unwrap().address;
    for _ in 0..3 {
        h.health_round(|a| a != down);
    }
    let Reply::Lookup { results, .. } = ok(h.request(Request::Lookup { client: addr })) else {
        panic!()
    };
    assert_eq!(results[0].source, "maglev");
    assert_ne!(results[0].backend_id, Some(chosen));
    assert_eq!(
        results[0]
            .persisted
            .as_ref()
            .unwrap()
            .ignored_because
            .as_deref(),
        Some("backend unusable")
    );
    assert_eq!(results[0].backend_id, h.route(0, c));
}
