//! The runtime changes file (`runtime/store.rs`) and the requests that write it: ids across
//! add/remove/restart cycles, allocate-then-save, changes kept through a config that does
//! not allow them for now, durability errors, versions and corrupt files.

use super::*;
use crate::pin::PinnedState;

/// `config(state_dir)` of the parent module, optionally without virtual server `other`.
fn config_with(state_dir: &Path, other: bool) -> Config {
    let full = config(state_dir);
    if other {
        return full;
    }
    config::parse(
        "t.yaml",
        &format!(
            "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\npersistence_timeout: 10s
virtual_servers:
  - name: aovpn
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 10.0.0.13
health_check: {{interval: 1s, timeout: 500ms, fall: 3, rise: 2, probes: [icmp]}}
state_dir: {}
",
            state_dir.display()
        ),
    )
    .expect("valid config")
}

/// What the fake's maps hold, as a restarting daemon finds them pinned.
fn pinned_of(dp: &FakeDataplane) -> PinnedState {
    let services: Vec<lb_common::Service> = dp.services.values().copied().collect();
    PinnedState {
        backends: dp
            .backends
            .iter()
            .filter(|(_, b)| b.addr != [0; 4])
            .map(|(&id, b)| (id, *b))
            .collect(),
        rings: services
            .iter()
            .map(|s| [dp.table(s.id * 2 * M, M), dp.table((s.id * 2 + 1) * M, M)])
            .collect(),
        services,
    }
}

/// A daemon start over `dir` with BACKENDS of `capacity`: config, replay, and (given the
/// previous daemon's maps) adoption, then the first health round and apply. Returns the
/// replay's warnings too.
fn start(
    dir: TempDir,
    capacity: u32,
    other: bool,
    before: Option<&FakeDataplane>,
) -> (Harness, Vec<String>) {
    let cfg = config_with(&dir.0, other);
    let dp = match before {
        Some(d) => FakeDataplane {
            backends: d.backends.clone(),
            backend_ids: d.backend_ids.clone(),
            rings: d.rings.clone(),
            services: d.services.clone(),
            vips: d.vips.clone(),
            ..FakeDataplane::default()
        },
        None => FakeDataplane::default(),
    };
    let mut lb = Balancer::new(dp, &cfg, ifaces(), capacity).unwrap();
    let mut c = Controller::new(cfg.clone(), Store::new(&cfg.state_dir));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let warnings = c.replay(&mut lb, now).unwrap();
    if let Some(d) = before {
        lb.adopt(&pinned_of(d), true).unwrap();
    }
    let mut h = Harness {
        lb,
        c,
        now: Clock {
            wall: now,
            tick: 100,
        },
        _dir: dir,
    };
    h.resolve();
    h.health_round(|_| true);
    h.apply();
    (h, warnings)
}

/// Stops `h` (its maps stay, as pinned) and starts again over the same directory.
fn restart(mut h: Harness, capacity: u32, other: bool) -> (Harness, Vec<String>) {
    let dir = std::mem::replace(&mut h._dir, TempDir(PathBuf::new()));
    let dp = std::mem::take(h.lb.dataplane_mut());
    start(dir, capacity, other, Some(&dp))
}

fn add(h: &mut Harness, vs: &str, address: IpAddr) -> Response {
    h.request(Request::BackendAdd {
        virtual_server: vs.into(),
        address,
        weight: 1,
        dry_run: false,
    })
}

fn remove(h: &mut Harness, vs: &str, address: IpAddr) -> Response {
    h.request(Request::BackendRemove {
        virtual_server: vs.into(),
        address,
        drain: None,
        dry_run: false,
    })
}

#[test]
fn ids_never_run_out_over_more_api_add_remove_restart_cycles_than_the_capacity() {
    // Ids 1..=15: 4 config backends, at most 8 runtime ones live.
    const CAP: u32 = 16;
    let (mut h, w) = start(TempDir::new("cycles"), CAP, true, None);
    assert!(w.is_empty(), "{w:?}");
    let mut live: Vec<IpAddr> = Vec::new();
    let cycles = 4 * CAP;
    for cycle in 0..cycles {
        let address = IpAddr::from([10, 0, 2, cycle as u8 + 1]);
        let reply = ok(add(&mut h, "aovpn", address));
        let Reply::BackendAdded { backend, .. } = reply else {
            panic!("{reply:?}")
        };
        assert!(backend.id < CAP, "cycle {cycle}: {backend:?}");
        live.push(address);
        if live.len() > 7 {
            let gone = live.remove(0);
            ok(remove(&mut h, "aovpn", gone));
        }
        if cycle % 3 == 2 {
            let ids: Vec<(IpAddr, u32)> = h.lb.backends().map(|b| (b.address, b.id)).collect();
            let (h2, w) = restart(h, CAP, true);
            h = h2;
            assert!(w.is_empty(), "cycle {cycle}: {w:?}");
            let after: Vec<(IpAddr, u32)> = h.lb.backends().map(|b| (b.address, b.id)).collect();
            assert_eq!(after, ids, "cycle {cycle}: every backend keeps its id");
        }
    }
    assert_eq!(h.lb.backends().count(), 4 + 7);
    let file = h.state_file().unwrap();
    for a in &live {
        assert!(file.contains(&a.to_string()), "{a} in {file}");
    }
}

#[test]
fn an_add_that_gets_no_id_saves_nothing() {
    // Ids 1..=5: 4 config backends and one runtime addition.
    const CAP: u32 = 6;
    let (mut h, _) = start(TempDir::new("noid"), CAP, true, None);
    ok(add(&mut h, "aovpn", ip("10.0.0.14")));
    let file = h.state_file().unwrap();
    let e = err(add(&mut h, "aovpn", ip("10.0.0.15")));
    assert_eq!(e.code, ErrorCode::CapacityExhausted, "{e:?}");
    assert!(e.message.contains("nothing was changed"), "{e:?}");
    assert_eq!(h.state_file().unwrap(), file);
    // A removal whose map writes have not happened yet (they failed, retried with the next
    // update) holds its id until the maps forget it: the add is still refused, and the file
    // keeps only the removal.
    let (resp, _) = h.c.handle(
        &mut h.lb,
        Request::BackendRemove {
            virtual_server: "aovpn".into(),
            address: ip("10.0.0.14"),
            drain: None,
            dry_run: false,
        },
        h.now,
    );
    ok(resp);
    let file = h.state_file().unwrap();
    assert!(!file.contains("10.0.0.14"), "{file}");
    let (resp, _) = h.c.handle(
        &mut h.lb,
        Request::BackendAdd {
            virtual_server: "aovpn".into(),
            address: ip("10.0.0.15"),
            weight: 1,
            dry_run: false,
        },
        h.now,
    );
    assert_eq!(err(resp).code, ErrorCode::CapacityExhausted);
    assert_eq!(
        h.state_file().unwrap(),
        file,
        "a failed add leaves the file unchanged"
    );
    assert!(h.lb.backend_by_address(ip("10.0.0.15")).is_none());
    assert_eq!(h.c.changes(), &h.c.store.load().unwrap());
    // Once applied, the id is free again.
    h.apply();
    ok(add(&mut h, "aovpn", ip("10.0.0.15")));
    assert!(h.state_file().unwrap().contains("10.0.0.15"));
}

#[test]
fn an_add_whose_change_cannot_be_saved_gives_its_id_back() {
    let (mut h, _) = start(TempDir::new("noid2"), 64, true, None);
    let state_dir = h.c.store.path().parent().unwrap().to_owned();
    let _ = fs::remove_dir_all(&state_dir);
    fs::write(&state_dir, "not a directory").unwrap();
    let e = err(add(&mut h, "aovpn", ip("10.0.0.14")));
    assert!(e.message.contains("nothing was changed"), "{e:?}");
    assert!(h.lb.backend_by_address(ip("10.0.0.14")).is_none());
    fs::remove_file(&state_dir).unwrap();
    let Reply::BackendAdded { backend, .. } = ok(add(&mut h, "aovpn", ip("10.0.0.15"))) else {
        panic!()
    };
    assert_eq!(
        backend.id, 5,
        "the id the failed add took is handed out again"
    );
}

#[test]
fn changes_of_a_virtual_server_missing_from_the_config_are_kept_and_come_back() {
    let (mut h, _) = start(TempDir::new("keep"), 64, true, None);
    ok(add(&mut h, "other", ip("10.0.1.12")));
    ok(remove(&mut h, "other", ip("10.0.1.11")));
    ok(add(&mut h, "aovpn", ip("10.0.0.14")));
    let file = h.state_file().unwrap();
    assert!(file.contains("\"other\""), "{file}");

    // `other` is missing from the config (an edit gone wrong): not applied, kept, warned.
    let (mut h, w) = restart(h, 64, false);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("other") && w[0].contains("kept in") && w[0].contains("backends.json"),
        "{w:?}"
    );
    assert!(!w[0].contains('\n'));
    assert_eq!(h.state_file().unwrap(), file, "the file is not rewritten");
    assert!(h.lb.backend_by_address(ip("10.0.0.14")).is_some());
    // An operator change meanwhile keeps them too.
    ok(add(&mut h, "aovpn", ip("10.0.0.15")));
    let file = h.state_file().unwrap();
    assert!(
        file.contains("10.0.1.12") && file.contains("10.0.1.11"),
        "{file}"
    );

    // The config is fixed: the changes apply again.
    let (h, w) = restart(h, 64, true);
    assert!(w.is_empty(), "{w:?}");
    assert!(h.lb.backend_by_address(ip("10.0.1.12")).is_some());
    assert!(h.lb.backend_by_address(ip("10.0.1.11")).is_none());
    assert!(h.lb.backend_by_address(ip("10.0.0.15")).is_some());
    assert_eq!(h.state_file().unwrap(), file);
}

#[test]
fn entries_the_config_does_not_allow_now_are_kept_with_a_warning() {
    let dir = TempDir::new("stale2");
    fs::create_dir_all(&dir.0).unwrap();
    let text = r#"{"version":1,"virtual_servers":{
            "gone":{"added":[{"address":"10.0.9.1","weight":1}]},
            "aovpn":{"added":[{"address":"203.0.113.11","weight":1},{"address":"10.0.1.11","weight":1},{"address":"10.0.0.20","weight":1}],
                     "removed":["10.0.0.99"],
                     "draining":[{"address":"10.0.0.98","until":"2100-01-01T00:00:00Z"}]}}}"#;
    fs::write(dir.0.join(STATE_FILE), text).unwrap();
    let (h, w) = start(dir, 64, true, None);
    assert_eq!(w.len(), 5, "{w:#?}");
    assert!(w.iter().all(|w| w.contains("kept in")), "{w:#?}");
    assert!(
        w.iter()
            .any(|w| w.contains("203.0.113.11") && w.contains("VIP")),
        "{w:#?}"
    );
    assert!(h.lb.backend_by_address(ip("10.0.0.20")).is_some());
    assert_eq!(
        h.lb.backend_by_address(ip("10.0.1.11")).unwrap().service,
        1,
        "the config's owner keeps it"
    );
    assert_eq!(
        h.state_file().unwrap(),
        text,
        "nothing dropped, file untouched"
    );
}

#[test]
fn a_failed_directory_fsync_is_an_error_and_the_change_is_made() {
    let (mut h, _) = start(TempDir::new("fsync"), 64, true, None);
    h.c.store
        .set_sync_dir(|_| Err(std::io::Error::other("injected fsync failure")));
    let e = err(add(&mut h, "aovpn", ip("10.0.0.14")));
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(
        e.message.contains("may not survive a power loss")
            && e.message.contains("injected fsync failure")
            && e.message.contains("backends.json")
            && !e.message.contains("nothing was changed"),
        "{e:?}"
    );
    // Made, in the running state and in the file a restart reads.
    assert!(h.lb.backend_by_address(ip("10.0.0.14")).is_some());
    assert!(h.state_file().unwrap().contains("10.0.0.14"));
    assert_eq!(h.c.changes(), &h.c.store.load().unwrap());
    let e = err(remove(&mut h, "aovpn", ip("10.0.0.11")));
    assert!(e.message.contains("may not survive"), "{e:?}");
    assert!(h.lb.backend_by_address(ip("10.0.0.11")).is_none());
    assert!(h.state_file().unwrap().contains("10.0.0.11"));
    h.apply();
    assert_eq!(
        h.lb.dataplane().backends[&1].addr,
        [0; 4],
        "forgotten in the maps"
    );
}

#[test]
fn a_file_without_a_version_is_read_as_the_current_format() {
    let dir = TempDir::new("nover");
    fs::create_dir_all(&dir.0).unwrap();
    let text = r#"{"virtual_servers":{"aovpn":{"added":[{"address":"10.0.0.14","weight":2}]}}}"#;
    fs::write(dir.0.join(STATE_FILE), text).unwrap();
    let (mut h, w) = start(dir, 64, true, None);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(h.lb.backend_by_address(ip("10.0.0.14")).unwrap().weight, 2);
    assert_eq!(h.state_file().unwrap(), text, "read as it is");
    // The next save writes the version.
    ok(add(&mut h, "aovpn", ip("10.0.0.15")));
    assert!(h.state_file().unwrap().contains("\"version\": 1"));
}

/// The error `replay` stops the start with for a file holding `text`.
fn start_error(name: &str, text: &str) -> String {
    let dir = TempDir::new(name);
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(dir.0.join(STATE_FILE), text).unwrap();
    let cfg = config(&dir.0);
    let mut lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces(), 64).unwrap();
    let e = Controller::new(cfg.clone(), Store::new(&cfg.state_dir))
        .replay(&mut lb, SystemTime::now())
        .unwrap_err();
    let msg = e.to_string();
    let file = dir.0.join(STATE_FILE).display().to_string();
    assert!(msg.contains(&file), "names the file: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert_eq!(
        fs::read_to_string(dir.0.join(STATE_FILE)).unwrap(),
        text,
        "left as it is"
    );
    msg
}

#[test]
fn an_unknown_version_is_refused_with_one_line_naming_the_file() {
    for (name, text, found) in [
        (
            "v2",
            r#"{"version":2,"virtual_servers":{},"new_field":[]}"#,
            "version 2",
        ),
        ("v0", r#"{"version":0}"#, "version 0"),
        (
            "vs",
            r#"{"version":"1"}"#,
            "version \"1\" (not a whole number)",
        ),
    ] {
        let msg = start_error(name, text);
        assert!(
            msg.contains(found) && msg.contains("reads version 1") && msg.contains(".bad"),
            "{msg}"
        );
    }
}

#[test]
fn a_corrupt_file_gives_one_line_with_the_file_and_the_recovery() {
    for (name, text, line) in [
        (
            "trunc",
            "{\"version\":1,\n\"virtual_servers\": {\"aovpn\": {\"add",
            "line 2",
        ),
        ("empty", "", "line 1"),
        ("array", "[1, 2]", "line 1"),
        (
            "badip",
            "{\"virtual_servers\": {\"a\": {\"removed\": [\"10.0.0.300\"]}}}",
            "line 1",
        ),
    ] {
        let msg = start_error(name, text);
        assert!(
            msg.contains("is corrupt")
                && msg.contains(line)
                && msg.contains("move it aside to start from the config alone: mv ")
                && msg.contains("backends.json.bad"),
            "{name}: {msg}"
        );
    }
}
