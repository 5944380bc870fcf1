//! Tests of the balancer: the fixtures every topic shares (a two-service config over a fake
//! data path, and a model of the data path's two paths for the slot flag tests); the tests
//! themselves are in `tests/`, one file per topic.

use lb_common::{
    PersistKeyV4, PersistValue, BACKEND_F_USABLE, RING_BACKEND_MASK, RING_F_CHANGED, SVC_F_ESP,
};

use super::*;
use crate::{
    config,
    dataplane::{
        addr_words,
        fake::{FakeDataplane, Op},
        port_wire,
    },
};

const M: u32 = 251;

fn config() -> Config {
    config::parse(
        "t.yaml",
        &format!(
            "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\nslot_move_delay: 0s\nvirtual_servers:
  - name: a
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
        weight: 2
      - address: 10.0.0.13
  - name: b
    vip: 203.0.113.11
    ports: [4500]
    esp: false
    backends:
      - address: 10.0.1.11
"
        ),
    )
    .expect("valid config")
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

fn balancer() -> Balancer<FakeDataplane> {
    Balancer::new(FakeDataplane::default(), &config(), ifaces(), 1024).unwrap()
}

/// Resolves every backend's next hop and marks it healthy.
fn resolve_all(lb: &mut Balancer<FakeDataplane>) {
    let ids: Vec<u32> = lb.backends().map(|b| b.id).collect();
    for id in ids {
        lb.set_health(id, HealthState::Up).unwrap();
        lb.set_next_hop(
            id,
            Some(NextHop {
                port: 1,
                mac: [0xaa, 0, 0, 0, 0, id as u8],
            }),
        )
        .unwrap();
    }
}

// ---- Slot flags (RING_F_CHANGED) and the sweep ----

const TIMEOUT: u32 = 100;

/// The data path's persistence path over the fake's maps (select.rs `forward`
/// without the fast path): a live entry naming a usable backend of the service wins,
/// otherwise the ring picks and the entry is (re)written when `write`.
fn slow(lb: &mut Balancer<FakeDataplane>, client: u32, now: u32, write: bool) -> Option<u32> {
    let seed = lb.seed();
    let dp = lb.dataplane_mut();
    let s = dp.services[&0];
    let key = PersistKeyV4 { service: 0, client };
    let pos = dp.persist_v4.iter().position(|(k, _)| *k == key);
    if let Some(i) = pos {
        let e = dp.persist_v4[i].1;
        if let Some(b) = dp.backends.get(&e.backend) {
            if b.flags & BACKEND_F_USABLE != 0
                && b.service == 0
                && lb_common::is_live(now, e.atime, TIMEOUT)
            {
                if write {
                    dp.persist_v4[i].1.atime = now;
                }
                return Some(e.backend);
            }
        }
    }
    let slot = lb_common::hash::ring_slot(lb_common::hash::client_hash_v4(client, seed), M);
    let id = dp.rings.get(&(s.ring_base + slot)).copied().unwrap_or(0) & RING_BACKEND_MASK;
    if id == BACKEND_NONE {
        return None;
    }
    if write {
        let v = PersistValue {
            backend: id,
            atime: now,
            ..PersistValue::default()
        };
        match pos {
            Some(i) => dp.persist_v4[i].1 = v,
            None => dp.persist_v4.push((key, v)),
        }
    }
    Some(id)
}

/// The fast path's choice for a bulk packet, when it takes it (unflagged slot, usable
/// backend of the service).
fn fast(lb: &Balancer<FakeDataplane>, client: u32) -> Option<u32> {
    let dp = lb.dataplane();
    let s = dp.services[&0];
    let slot = lb_common::hash::ring_slot(lb_common::hash::client_hash_v4(client, lb.seed()), M);
    let v = dp.rings.get(&(s.ring_base + slot)).copied().unwrap_or(0);
    let b = dp.backends.get(&(v & RING_BACKEND_MASK))?;
    (v & RING_F_CHANGED == 0 && b.flags & BACKEND_F_USABLE != 0 && b.service == 0)
        .then_some(v & RING_BACKEND_MASK)
}

/// The invariant: wherever the fast path would take a client's bulk packet, it sends it
/// where the persistence path would.
fn check_invariant(lb: &mut Balancer<FakeDataplane>, clients: &[u32], now: u32) {
    for &c in clients {
        if let Some(f) = fast(lb, c) {
            assert_eq!(Some(f), slow(lb, c, now, false), "client {c:#x} would move");
        }
    }
}

fn sweep(lb: &mut Balancer<FakeDataplane>, now: u32) -> SweepReport {
    let t = lb.sweep_ticket(now);
    let entries = lb.dataplane().persistence_v4_reader().unwrap()().unwrap();
    lb.clear_flags(t, &entries, TIMEOUT).unwrap()
}

fn clients(n: u32) -> Vec<u32> {
    (0..n)
        .map(|i| 0x0a64_0000u32.wrapping_add(i * 7919).to_be())
        .collect()
}

/// Maglev slots of service 0 that differ between two tables (backends only).
fn moved(a: &[u32], b: &[u32]) -> Vec<usize> {
    (0..a.len())
        .filter(|&i| (a[i] ^ b[i]) & RING_BACKEND_MASK != 0)
        .collect()
}

mod apply;
mod backends;
mod interfaces;
mod moves;
mod sweep;

// Probation entries and the slot flag sweep: a file of its own.
mod probation;

mod identity_by_name;
