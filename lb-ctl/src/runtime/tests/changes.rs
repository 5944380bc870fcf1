//! Runtime changes replayed at start (same ids, drains whose deadline passed, changes the
//! config does not allow kept, a bad file) and a change refused when it cannot be saved.

use super::*;

#[test]
fn runtime_changes_survive_a_restart_with_the_same_ids() {
    let dir = TempDir::new("restart");
    let path = dir.0.clone();
    let mut h = Harness::start(dir);
    ok(h.request(Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.14"),
        weight: 3,
        dry_run: false,
    }));
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: None,
        dry_run: false,
    }));
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        drain: Some(Duration::from_secs(3600)),
        dry_run: false,
    }));
    let ids = |h: &Harness| {
        h.lb.backends()
            .map(|b| (b.address, b.id, b.weight, b.drain_until))
            .collect::<Vec<_>>()
    };
    let before = ids(&h);
    let file = h.state_file().unwrap();
    // Same directory, new balancer from the config: replay.
    let dir2 = TempDir(path);
    std::mem::forget(std::mem::replace(&mut h._dir, TempDir(PathBuf::new())));
    let h2 = Harness::start(dir2);
    assert_eq!(ids(&h2), before);
    assert_eq!(
        h2.state_file().unwrap(),
        file,
        "nothing to normalise: file unchanged"
    );
    assert!(!file.contains(".tmp"));
}

#[test]
fn a_drain_whose_deadline_passed_while_down_completes_at_start() {
    let dir = TempDir::new("deadline");
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(
        dir.0.join(STATE_FILE),
        r#"{"version":1,"virtual_servers":{"aovpn":{"draining":[{"address":"10.0.0.12","until":"1970-01-01T00:10:00Z"}]}}}"#,
    )
    .unwrap();
    let h = Harness::start(dir);
    assert!(h.lb.backend_by_address(ip("10.0.0.12")).is_none());
    let file = h.state_file().unwrap();
    assert!(
        file.contains("\"removed\"") && !file.contains("draining"),
        "{file}"
    );
}

#[test]
fn stale_runtime_changes_are_kept_with_a_warning_and_a_bad_file_stops_the_start() {
    let dir = TempDir::new("stale");
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(
        dir.0.join(STATE_FILE),
        r#"{"version":1,"virtual_servers":{
            "gone":{"added":[{"address":"10.0.9.1","weight":1}]},
            "aovpn":{"added":[{"address":"203.0.113.11","weight":1},{"address":"10.0.1.11","weight":1},{"address":"10.0.0.20","weight":1}],
                     "removed":["10.0.0.99"]}}}"#,
    )
    .unwrap();
    let cfg = config(&dir.0);
    let mut lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces(), 64).unwrap();
    let mut c = Controller::new(cfg.clone(), Store::new(&cfg.state_dir));
    let w = c.replay(&mut lb, SystemTime::now()).unwrap();
    assert_eq!(w.len(), 4, "{w:#?}");
    assert!(lb.backend_by_address(ip("10.0.0.20")).is_some());
    let file = fs::read_to_string(dir.0.join(STATE_FILE)).unwrap();
    // Not applied but kept (runtime/store.rs tests: they come back with the config).
    assert!(
        file.contains("10.0.0.20") && file.contains("gone") && file.contains("10.0.0.99"),
        "{file}"
    );

    fs::write(
        dir.0.join(STATE_FILE),
        "{\"version\":1,\n\"virtual_servers\": {\"aovpn\": {\"addded\": []}}}",
    )
    .unwrap();
    let mut lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces(), 64).unwrap();
    let e = Controller::new(cfg.clone(), Store::new(&cfg.state_dir))
        .replay(&mut lb, SystemTime::now())
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("backends.json") && msg.contains("line 2") && msg.contains("addded"),
        "{msg}"
    );
}

#[test]
fn an_unwritable_state_dir_refuses_the_change_and_changes_nothing() {
    let dir = TempDir::new("ro");
    let mut h = Harness::start(dir);
    // A file where the directory should be.
    let state_dir = h.c.store.path().parent().unwrap().to_owned();
    let _ = fs::remove_dir_all(&state_dir);
    fs::write(&state_dir, "not a directory").unwrap();
    let list_before = h.list();
    h.lb.dataplane_mut().ops.clear();
    let e = err(h.request(Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.14"),
        weight: 1,
        dry_run: false,
    }));
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("nothing was changed"), "{e:?}");
    assert_eq!(h.list(), list_before);
    assert!(h.lb.dataplane().ops.is_empty());
    fs::remove_file(&state_dir).unwrap();
}
