//! What unit tests over the in-memory dataplane build again and again: the two interfaces
//! `ext` (port 0) and `int` (port 1), a balancer from config text, and backends made usable.

use crate::{
    config::{self, Config},
    dataplane::fake::FakeDataplane,
    health::HealthState,
    state::{Balancer, IfaceInfo, NextHop},
};

/// `ext` (ifindex 10) and `int` (ifindex 20), as the daemon would find them.
pub fn ifaces() -> Vec<IfaceInfo> {
    [("ext", 10), ("int", 20)]
        .into_iter()
        .map(|(name, ifindex)| IfaceInfo {
            name: name.into(),
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
        })
        .collect()
}

/// The config of `yaml` (panics on an invalid one: a test's own text).
pub fn config(yaml: &str) -> Config {
    config::parse("t.yaml", yaml).expect("valid config")
}

/// A balancer of `cfg` over the in-memory dataplane, with room for `capacity` backends.
pub fn balancer(cfg: &Config, capacity: u32) -> Balancer<FakeDataplane> {
    Balancer::new(FakeDataplane::default(), cfg, ifaces(), capacity).expect("a balancer")
}

/// Backend `id` usable (next hop on `int`, health Up) when `up`, else down.
pub fn set_usable(lb: &mut Balancer<FakeDataplane>, id: u32, up: bool) {
    let hop = NextHop {
        port: 1,
        mac: [0xaa, 0, 0, 0, 0, id as u8],
    };
    lb.set_next_hop(id, Some(hop)).expect("a known backend");
    let health = if up {
        HealthState::Up
    } else {
        HealthState::Down
    };
    lb.set_health(id, health).expect("a known backend");
}

/// Every backend usable.
pub fn all_usable(lb: &mut Balancer<FakeDataplane>) {
    let ids: Vec<u32> = lb.backends().map(|b| b.id).collect();
    for id in ids {
        set_usable(lb, id, true);
    }
}
