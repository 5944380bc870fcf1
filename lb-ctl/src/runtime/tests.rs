//! The control logic against the in-memory dataplane, with a model of the XDP program's
//! selection (`lb-ebpf/src/select.rs`) so "who moves" is checked on the maps the daemon
//! wrote, not on its intentions.
//!
//! This file is the harness; the tests are in `tests/`, by topic: `health_verdicts.rs`,
//! `requests.rs`, `drain.rs`, `changes.rs` (replay and saving), `store.rs` (the file),
//! `probation.rs` (new clients), `reload.rs` (reload and dry runs).

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use lb_common::{
    hash::client_hash_v4, Backend, PersistKeyV4, PersistValue, BACKEND_F_USABLE, BACKEND_NONE,
    RING_BACKEND_MASK,
};

use super::*;
use crate::{
    api::{ApiError, BackendInfo, ErrorCode, Reply, Request, Response},
    config::{self, Config},
    dataplane::fake::{FakeDataplane, Op},
    health::{HealthState, Probe, ProbeKind, ProbeOutcome, Report},
    state::{ApplyReport, Balancer, IfaceInfo, NextHop},
};

const M: u32 = 251;

fn config(state_dir: &Path) -> Config {
    config::parse(
        "t.yaml",
        &format!(
            "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\npersistence_timeout: 10s\nslot_move_delay: 0s
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
health_check: {{interval: 1s, timeout: 500ms, fall: 3, rise: 2, probes: [icmp]}}
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
        Self::start_with(dir, cfg)
    }

    /// [`start`](Harness::start) with `cfg` (its `state_dir` in `dir`).
    fn start_with(dir: TempDir, cfg: Config) -> Self {
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
                kind: ProbeKind::Icmp,
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

    /// The data path's choice for `client` of service `svc` (model of `select::forward`,
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
        let slot = lb_common::hash::ring_slot(client_hash_v4(client, seed), M);
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

// Health verdicts: failover and recovery.
mod health_verdicts;

// Requests: add, remove, refusals, lookup.
mod requests;

// Drains.
mod drain;

// Runtime changes replayed at start and saved before they take effect.
mod changes;

// New clients in probation: a file of its own.
mod probation;

// The runtime changes file and the requests that write it: a file of its own.
mod store;

// Reload and the blast radius of dry runs.
mod reload;
