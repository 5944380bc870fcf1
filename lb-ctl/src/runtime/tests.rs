//! The control logic against the in-memory dataplane, with a model of the XDP program's
//! selection (`lb-ebpf/src/select.rs`) so "who moves" is checked on the maps the daemon
//! wrote, not on its intentions.

use std::collections::BTreeMap;

use lb_common::{
    hash::client_hash_v4, Backend, PersistKeyV4, PersistValue, BACKEND_F_USABLE, BACKEND_NONE,
    RING_BACKEND_MASK,
};

use super::*;
use crate::{
    config,
    dataplane::fake::{FakeDataplane, Op},
    health::{Probe, ProbeOutcome},
    state::{IfaceInfo, NextHop},
};

const M: u32 = 251;

fn config(state_dir: &Path) -> Config {
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
  - name: other
    vip: 203.0.113.11
    backends:
      - address: 10.0.1.11
health_check: {{interval: 1s, timeout: 500ms, fall: 3, rise: 2}}
state_dir: {}
",
            state_dir.display()
        ),
    )
    .expect("valid config")
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ikelb-rt-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A daemon's control plane over the fake dataplane, with a model of the data path.
struct Harness {
    lb: Balancer<FakeDataplane>,
    c: Controller,
    now: Clock,
    _dir: TempDir,
}

fn ifaces() -> Vec<IfaceInfo> {
    vec![
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
    ]
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ok(r: Response) -> Reply {
    match r {
        Response::Ok(r) => r,
        Response::Error(e) => panic!("refused: {e:?}"),
    }
}

fn err(r: Response) -> ApiError {
    match r {
        Response::Error(e) => e,
        Response::Ok(r) => panic!("accepted: {r:?}"),
    }
}

impl Harness {
    fn start(dir: TempDir) -> Self {
        let cfg = config(&dir.0);
        let mut lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces(), 64).unwrap();
        let mut c = Controller::new(cfg.clone(), Store::new(&cfg.state_dir));
        let warnings = c
            .replay(&mut lb, SystemTime::UNIX_EPOCH + Duration::from_secs(1000))
            .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut h = Self {
            lb,
            c,
            now: Clock {
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
                tick: 100,
            },
            _dir: dir,
        };
        h.resolve();
        h.health_round(|_| true);
        h.apply();
        h
    }

    fn new() -> Self {
        Self::start(TempDir::new("h"))
    }

    fn resolve(&mut self) {
        let ids: Vec<u32> = self.lb.backends().map(|b| b.id).collect();
        for id in ids {
            self.lb
                .set_next_hop(
                    id,
                    Some(NextHop {
                        port: 1,
                        mac: [0xaa, 0, 0, 0, 0, id as u8],
                    }),
                )
                .unwrap();
        }
    }

    fn apply(&mut self) -> ApplyReport {
        apply_and_log(&mut self.lb).unwrap()
    }

    /// One probe per backend; `answers(address)` says whether it answered.
    fn health_round(&mut self, answers: impl Fn(IpAddr) -> bool) -> Effects {
        let reports: Vec<Report> = self
            .c
            .targets(&self.lb)
            .into_iter()
            .map(|t| Report {
                id: t.id,
                addr: t.addr,
                probe: Probe {
                    outcome: if answers(t.addr) {
                        ProbeOutcome::Success
                    } else {
                        ProbeOutcome::Timeout
                    },
                    duration: Duration::from_millis(1),
                    error: None,
                },
            })
            .collect();
        let e = self.c.on_health(&mut self.lb, &reports);
        self.apply();
        e
    }

    fn request(&mut self, r: Request) -> Response {
        let (resp, _) = self.c.handle(&mut self.lb, r, self.now);
        if matches!(resp, Response::Ok(_)) {
            self.apply();
        }
        resp
    }

    fn id(&self, addr: &str) -> u32 {
        self.lb.backend_by_address(ip(addr)).unwrap().id
    }

    fn list(&mut self) -> Vec<BackendInfo> {
        match ok(self.request(Request::BackendList)) {
            Reply::Backends { backends } => backends,
            r => panic!("{r:?}"),
        }
    }

    /// The data path's choice for `client` of service `svc` (model of `select::forward_v4`,
    /// including the persistence entry it writes).
    fn route(&mut self, svc: u32, client: u32) -> Option<u32> {
        let now = self.now.tick;
        let timeout = self.c.config().persist_timeout_ticks();
        let seed = self.lb.seed();
        let dp = self.lb.dataplane_mut();
        let s = dp.services[&svc];
        let key = PersistKeyV4 {
            service: svc,
            client,
        };
        let pos = dp.persist_v4.iter().position(|(k, _)| *k == key);
        if let Some(i) = pos {
            let e = dp.persist_v4[i].1;
            if let Some(b) = dp.backends.get(&e.backend).filter(|b| b.addr[0] != 0) {
                if b.flags & BACKEND_F_USABLE != 0
                    && b.service == svc
                    && lb_common::is_live(now, e.atime, timeout)
                {
                    dp.persist_v4[i].1.atime = now;
                    return Some(e.backend);
                }
            }
        }
        let slot = client_hash_v4(client, seed) % M;
        let id = dp.rings.get(&(s.ring_base + slot)).copied().unwrap_or(0) & RING_BACKEND_MASK;
        if id == BACKEND_NONE {
            return None;
        }
        let b: Backend = dp.backends[&id];
        assert!(b.addr[0] != 0, "ring names missing backend {id}");
        assert!(
            b.flags & BACKEND_F_USABLE != 0,
            "ring names unusable backend {id}"
        );
        let value = PersistValue {
            backend: id,
            atime: now,
            ..PersistValue::default()
        };
        match pos {
            Some(i) => dp.persist_v4[i].1 = value,
            None => dp.persist_v4.push((key, value)),
        }
        Some(id)
    }

    /// Routes clients 1..=n of service 0; returns client → backend id.
    fn traffic(&mut self, n: u32) -> BTreeMap<u32, Option<u32>> {
        (1..=n).map(|c| (c, self.route(0, client(c)))).collect()
    }

    fn state_file(&self) -> Option<String> {
        fs::read_to_string(self.c.store.path()).ok()
    }
}

fn client(i: u32) -> u32 {
    u32::from_ne_bytes([100, 64, (i >> 8) as u8, i as u8])
}

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
fn drain_keeps_persisted_clients_takes_no_new_ones_and_ends_when_they_are_idle() {
    let mut h = Harness::new();
    let before = h.traffic(600);
    let d = h.id("10.0.0.13");
    let ok_reply = ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        drain: Some(Duration::from_secs(3600)),
    }));
    assert!(matches!(
        ok_reply,
        Reply::BackendRemoved {
            draining_until: Some(_),
            ..
        }
    ));
    let b = h.lb.backend(d).unwrap();
    assert!(b.usable() && !b.in_ring());
    assert_eq!(
        h.traffic(600),
        before,
        "persisted clients keep flowing, nobody moves"
    );
    let newcomers: Vec<Option<u32>> = (601..=900).map(|c| h.route(0, client(c))).collect();
    assert!(
        !newcomers.contains(&Some(d)),
        "no new client lands on a draining backend"
    );
    let listed = h.list().into_iter().find(|b| b.id == d).unwrap();
    assert_eq!(listed.state, "draining");
    assert_eq!(listed.ring_slots, 0);
    assert!(listed.clients > 100);

    // Active clients: the drain goes on.
    h.now.tick += 5;
    h.traffic(600);
    assert_eq!(
        h.c.check_drains(&mut h.lb, h.now).unwrap(),
        Effects::default()
    );
    // Everyone idle longer than persistence_timeout (10 s = 10 ticks): removed.
    h.now.tick += 11;
    let e = h.c.check_drains(&mut h.lb, h.now).unwrap();
    assert!(e.targets_changed);
    h.apply();
    assert!(h.lb.backend(d).is_none());
    assert_eq!(h.lb.dataplane().backends[&d], Backend::default());
    let file = h.state_file().unwrap();
    assert!(
        file.contains("\"removed\"") && !file.contains("draining"),
        "{file}"
    );
}

#[test]
fn drain_ends_at_the_deadline_with_clients_still_active() {
    let mut h = Harness::new();
    h.traffic(300);
    let d = h.id("10.0.0.12");
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: Some(Duration::from_secs(30)),
    }));
    h.now.wall += Duration::from_secs(29);
    h.traffic(300);
    h.c.check_drains(&mut h.lb, h.now).unwrap();
    assert!(h.lb.backend(d).is_some());
    h.now.wall += Duration::from_secs(1);
    h.c.check_drains(&mut h.lb, h.now).unwrap();
    h.apply();
    assert!(h.lb.backend(d).is_none());
    assert!(h.traffic(300).values().all(|b| *b != Some(d)));
}

#[test]
fn adding_a_draining_backend_cancels_the_drain() {
    let mut h = Harness::new();
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: Some(Duration::from_secs(60)),
    }));
    let r = ok(h.request(Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        weight: 1,
    }));
    assert!(matches!(
        r,
        Reply::BackendAdded {
            drain_cancelled: true,
            ..
        }
    ));
    assert!(h.lb.backend(h.id("10.0.0.12")).unwrap().in_ring());
    assert!(
        h.c.changes().virtual_servers.is_empty(),
        "{:?}",
        h.c.changes()
    );
}

#[test]
fn runtime_changes_survive_a_restart_with_the_same_ids() {
    let dir = TempDir::new("restart");
    let path = dir.0.clone();
    let mut h = Harness::start(dir);
    ok(h.request(Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.14"),
        weight: 3,
    }));
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: None,
    }));
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        drain: Some(Duration::from_secs(3600)),
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
fn every_bad_request_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        drain: Some(Duration::from_secs(60)),
    }));
    let list_before = h.list();
    let file_before = h.state_file();
    let table_before = h.lb.services()[0].active_table().to_vec();
    h.lb.dataplane_mut().ops.clear();
    let add = |vs: &str, a: &str, weight: u32| Request::BackendAdd {
        virtual_server: vs.into(),
        address: ip(a),
        weight,
    };
    let remove = |vs: &str, a: &str, drain: Option<u64>| Request::BackendRemove {
        virtual_server: vs.into(),
        address: ip(a),
        drain: drain.map(Duration::from_secs),
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
    }));
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("nothing was changed"), "{e:?}");
    assert_eq!(h.list(), list_before);
    assert!(h.lb.dataplane().ops.is_empty());
    fs::remove_file(&state_dir).unwrap();
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

#[test]
fn without_a_scan_only_deadlines_end_drains() {
    let mut h = Harness::new();
    let d = h.id("10.0.0.12");
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: Some(Duration::from_secs(30)),
    }));
    // No client at all, but no scan either: the drain goes on.
    assert_eq!(
        h.c.end_drains(&mut h.lb, h.now, None).unwrap(),
        Effects::default()
    );
    assert!(h.lb.backend(d).is_some());
    // A scan with no active client ends it.
    let e = h.c.end_drains(&mut h.lb, h.now, Some(&[])).unwrap();
    assert!(e.targets_changed);
    assert!(h.lb.backend(d).is_none());
    // The reader the daemon runs off the loop sees what the map holds.
    h.route(0, client(1));
    let read = h.lb.dataplane().persistence_reader().unwrap();
    assert_eq!(read().unwrap().len(), 1);
}

// New clients in probation: a file of its own.
mod probation;

// The runtime changes file and the requests that write it: a file of its own.
mod store;
