//! Tests of adoption: restarts over the same pinned maps, config changes while the daemon
//! was down, ring flags read back, migrations, and ids over many add/remove/restart cycles.

use lb_common::{Service, BACKEND_F_USABLE};

use super::*;
use crate::{
    config,
    dataplane::fake::{FakeDataplane, Op},
    state::{IfaceInfo, NextHop},
};

const M: u32 = 251;

fn config(backends: &[&str]) -> config::Config {
    let list: String = backends
        .iter()
        .map(|b| format!("      - address: {b}\n"))
        .collect();
    config::parse(
        "t.yaml",
        &format!(
            "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\nslot_move_delay: 0s\nvirtual_servers:
  - name: a
    vip: 203.0.113.10
    backends:
{list}"
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

/// A balancer run to a steady state, and what its maps hold, as a restart finds them.
fn running(backends: &[&str]) -> (Balancer<FakeDataplane>, PinnedState) {
    let mut lb =
        Balancer::new(FakeDataplane::default(), &config(backends), ifaces(), 1024).unwrap();
    let ids: Vec<u32> = lb.backends().map(|b| b.id).collect();
    for id in ids {
        lb.set_next_hop(
            id,
            Some(NextHop {
                port: 1,
                mac: [0xaa, 0, 0, 0, 0, id as u8],
            }),
        )
        .unwrap();
        lb.backends.get_mut(&id).unwrap().health = HealthState::Up;
    }
    lb.apply().unwrap();
    let state = pinned_of(lb.dataplane());
    (lb, state)
}

fn pinned_of(dp: &FakeDataplane) -> PinnedState {
    let services: Vec<Service> = dp.services.values().copied().collect();
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

/// A restarted daemon's balancer over the same (pinned) maps.
fn restarted(backends: &[&str], before: &Balancer<FakeDataplane>) -> Balancer<FakeDataplane> {
    let dp = FakeDataplane {
        backends: before.dataplane().backends.clone(),
        backend_ids: before.dataplane().backend_ids.clone(),
        rings: before.dataplane().rings.clone(),
        services: before.dataplane().services.clone(),
        vips: before.dataplane().vips.clone(),
        ..FakeDataplane::default()
    };
    Balancer::new(dp, &config(backends), ifaces(), 1024).unwrap()
}

#[test]
fn a_restart_over_the_same_maps_writes_no_backend_and_flips_nothing() {
    let (before, pinned) = running(&["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
    let mut after = restarted(&["10.0.0.11", "10.0.0.12", "10.0.0.13"], &before);
    let r = after.adopt(&pinned, true).unwrap();
    assert_eq!(
        r,
        AdoptReport {
            kept_ids: 3,
            usable: 3,
            new: 0,
            stale: 0,
            tables: 1,
            stale_services: 0,
        }
    );
    let report = after.apply().unwrap();
    assert!(report.flips.is_empty(), "{report:?}");
    assert_eq!(report.backends_written, 0);
    let ops = &after.dataplane().ops;
    assert!(
        ops.iter().all(|o| matches!(o, Op::SetIface { .. })),
        "only the (idempotent) interface entries are rewritten: {ops:?}"
    );
    assert_eq!(
        after.services()[0].value.ring_base,
        before.services()[0].value.ring_base
    );
    assert_eq!(
        after.services()[0].active_table(),
        before.services()[0].active_table()
    );
}

#[test]
fn ids_follow_addresses_not_config_order_and_stale_ones_are_forgotten_after_the_flip() {
    let (before, pinned) = running(&["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
    let id_of = |lb: &Balancer<FakeDataplane>, a: &str| {
        lb.backend_by_address(a.parse().unwrap()).unwrap().id
    };
    // .11 removed from the file, .14 added in front while the daemon was down.
    let mut after = restarted(&["10.0.0.14", "10.0.0.13", "10.0.0.12"], &before);
    let r = after.adopt(&pinned, true).unwrap();
    assert_eq!((r.kept_ids, r.new, r.stale, r.usable), (2, 1, 1, 2));
    assert_eq!(id_of(&after, "10.0.0.12"), id_of(&before, "10.0.0.12"));
    assert_eq!(id_of(&after, "10.0.0.13"), id_of(&before, "10.0.0.13"));
    assert_eq!(id_of(&after, "10.0.0.14"), 4, "above every pinned id");
    assert!(
        !after.backend(4).unwrap().usable(),
        "new: unknown until checked"
    );

    after.dataplane_mut().ops.clear();
    let report = after.apply().unwrap();
    assert_eq!(
        report.flips.len(),
        1,
        "backend 1's slots move to the survivors"
    );
    let ops = &after.dataplane().ops;
    let flip = ops
        .iter()
        .position(|o| matches!(o, Op::Flip { .. }))
        .unwrap();
    let forget = ops
        .iter()
        .position(|o| *o == Op::RemoveBackend { id: 1, index: true })
        .expect("stale backend 1 forgotten");
    assert!(
        forget > flip,
        "forgotten only after no table names it: {ops:?}"
    );
    let table: Vec<u32> = after.services()[0]
        .active_table()
        .iter()
        .map(|&v| v & lb_common::RING_BACKEND_MASK)
        .collect();
    assert!(
        table.iter().all(|&b| b == 2 || b == 3),
        "the new backend is not usable yet"
    );
    // Backend 1 leaves the member list: a plain Maglev recompute moves its slots and
    // only a few others (the persistence map keeps those clients where they are anyway).
    let old = before.services()[0].active_table();
    let of_1 = old.iter().filter(|&&b| b == 1).count();
    let moved = old.iter().zip(&table).filter(|(a, b)| a != b).count();
    // Exactly the moved slots are flagged (the pinned table had none).
    let flagged = after.services()[0]
        .active_table()
        .iter()
        .filter(|&&v| v & lb_common::RING_F_CHANGED != 0)
        .count();
    assert_eq!(flagged, moved);
    assert!(
        moved >= of_1 && moved < of_1 + of_1 / 5,
        "{moved} moved, {of_1} were backend 1's"
    );
}

#[test]
fn ring_flags_survive_a_restart_and_stay_in_later_tables() {
    let flag = lb_common::RING_F_CHANGED;
    let (mut before, _) = running(&["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
    before.set_next_hop(2, None).unwrap();
    before.apply().unwrap();
    let flagged = before.flagged_slots();
    assert!(flagged > 0);
    let pinned = pinned_of(before.dataplane());
    let mut after = restarted(&["10.0.0.11", "10.0.0.12", "10.0.0.13"], &before);
    after.adopt(&pinned, true).unwrap();
    // Backend 2 is down in the pinned maps: adopted as unusable, nothing changes.
    let report = after.apply().unwrap();
    assert!(report.flips.is_empty(), "{report:?}");
    assert_eq!(
        after.flagged_slots(),
        flagged,
        "flags read back from the pinned rings"
    );
    assert_eq!(
        after.services()[0].active_table(),
        before.services()[0].active_table()
    );
    // Backend 2 back after the restart: its slots keep their flags in the new table.
    after
        .set_next_hop(
            2,
            Some(NextHop {
                port: 1,
                mac: [0xaa, 0, 0, 0, 0, 2],
            }),
        )
        .unwrap();
    after.backends.get_mut(&2).unwrap().health = HealthState::Up;
    after.apply().unwrap();
    let t = after.services()[0].active_table();
    assert_eq!(t.iter().filter(|&&v| v & flag != 0).count(), flagged);
    assert!(t
        .iter()
        .zip(before.services()[0].active_table())
        .all(|(&n, &o)| (o & flag != 0) == (n & flag != 0)));
}

#[test]
fn after_a_migration_everything_is_written_into_the_new_maps() {
    let (before, mut pinned) = running(&["10.0.0.11", "10.0.0.12"]);
    pinned.rings.clear(); // a migration does not adopt rings
    let mut after = Balancer::new(
        FakeDataplane::default(),
        &config(&["10.0.0.12", "10.0.0.11"]),
        ifaces(),
        1024,
    )
    .unwrap();
    let r = after.adopt(&pinned, false).unwrap();
    assert_eq!((r.kept_ids, r.usable, r.tables, r.stale), (2, 2, 0, 0));
    let report = after.apply().unwrap();
    assert_eq!(report.backends_written, 2);
    assert_eq!(report.flips.len(), 1);
    let dp = after.dataplane();
    assert_eq!(dp.backends[&1].addr, before.dataplane().backends[&1].addr);
    assert_eq!(dp.backends[&1].flags, BACKEND_F_USABLE);
    let flags = lb_common::RING_F_CHANGED;
    assert!(
        after.services()[0]
            .active_table()
            .iter()
            .all(|&v| v & flags != 0),
        "the carried-over entries may disagree with the new maps: every slot flagged"
    );
    let unflagged: Vec<u32> = after.services()[0]
        .active_table()
        .iter()
        .map(|&v| v & !flags)
        .collect();
    assert_eq!(
        unflagged,
        before.services()[0].active_table(),
        "same backends, same seed, same M: the same table"
    );
}

#[test]
fn a_backend_pinned_on_another_interface_is_adopted_but_not_usable() {
    let (before, mut pinned) = running(&["10.0.0.11"]);
    pinned.backends.get_mut(&1).unwrap().ifindex = 99; // the interface was re-created
    let mut after = restarted(&["10.0.0.11"], &before);
    let r = after.adopt(&pinned, true).unwrap();
    assert_eq!((r.kept_ids, r.usable), (1, 0));
    assert_eq!(after.backend(1).unwrap().health, HealthState::Unknown);
}

/// Every backend resolved and healthy (in the table).
fn all_up(lb: &mut Balancer<FakeDataplane>) {
    let ids: Vec<u32> = lb.backends().map(|b| b.id).collect();
    for id in ids {
        lb.set_next_hop(
            id,
            Some(NextHop {
                port: 1,
                mac: [0xaa, 0, 0, 0, 0, id as u8],
            }),
        )
        .unwrap();
        lb.set_health(id, HealthState::Up).unwrap();
    }
}

#[test]
fn ids_never_run_out_over_more_add_remove_restart_cycles_than_the_capacity() {
    // Ids 1..=7; 2 config backends and at most 4 runtime ones live at any time.
    const CAP: u32 = 8;
    let cfg = ["10.0.0.11", "10.0.0.12"];
    let mut lb = Balancer::new(FakeDataplane::default(), &config(&cfg), ifaces(), CAP).unwrap();
    all_up(&mut lb);
    lb.apply().unwrap();
    // Runtime additions, oldest first: what backends.json replays at a restart.
    let mut runtime: Vec<std::net::IpAddr> = Vec::new();
    let cycles = 5 * CAP;
    for cycle in 0..cycles {
        let address = format!("10.0.1.{}", cycle + 1).parse().unwrap();
        let id = lb
            .add_backend(0, address, 1)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert!(id > 0 && id < CAP, "cycle {cycle}: id {id}");
        runtime.push(address);
        all_up(&mut lb);
        lb.apply().unwrap();
        if runtime.len() > 4 {
            let gone = runtime.remove(0);
            let id = lb.backend_by_address(gone).unwrap().id;
            lb.remove_backend(id).unwrap();
            lb.apply().unwrap();
        }
        // Every other cycle a restart: a new balancer from the config, the runtime
        // additions replayed, then adoption of the maps the previous one left.
        if cycle % 2 == 1 {
            let pinned = pinned_of(lb.dataplane());
            let dp = FakeDataplane {
                backends: lb.dataplane().backends.clone(),
                backend_ids: lb.dataplane().backend_ids.clone(),
                rings: lb.dataplane().rings.clone(),
                services: lb.dataplane().services.clone(),
                vips: lb.dataplane().vips.clone(),
                ..FakeDataplane::default()
            };
            let mut next = Balancer::new(dp, &config(&cfg), ifaces(), CAP).unwrap();
            for &a in &runtime {
                next.add_backend(0, a, 1).unwrap();
            }
            let r = next
                .adopt(&pinned, true)
                .unwrap_or_else(|e| panic!("restart after cycle {cycle}: {e}"));
            assert_eq!((r.kept_ids, r.new, r.stale), (2 + runtime.len(), 0, 0));
            let report = next.apply().unwrap();
            assert!(report.flips.is_empty(), "cycle {cycle}: {report:?}");
            for b in lb.backends() {
                assert_eq!(next.backend_by_address(b.address).unwrap().id, b.id);
            }
            lb = next;
        }
    }
    assert_eq!(lb.backends().count(), 2 + 4);
    assert!(cycles > CAP, "more ids handed out than the capacity holds");
}

#[test]
fn a_newcomer_at_a_restart_takes_a_free_id_once_fresh_ones_run_out() {
    const CAP: u32 = 5; // ids 1..=4
    let mut lb = Balancer::new(
        FakeDataplane::default(),
        &config(&["10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"]),
        ifaces(),
        CAP,
    )
    .unwrap();
    all_up(&mut lb);
    lb.apply().unwrap();
    lb.remove_backend(2).unwrap();
    lb.apply().unwrap();
    let pinned = pinned_of(lb.dataplane());
    // .12 left the config while the daemon was down; .15 is new: only id 2 is free.
    let dp = FakeDataplane {
        backends: lb.dataplane().backends.clone(),
        backend_ids: lb.dataplane().backend_ids.clone(),
        rings: lb.dataplane().rings.clone(),
        services: lb.dataplane().services.clone(),
        vips: lb.dataplane().vips.clone(),
        ..FakeDataplane::default()
    };
    let mut after = Balancer::new(
        dp,
        &config(&["10.0.0.11", "10.0.0.15", "10.0.0.13", "10.0.0.14"]),
        ifaces(),
        CAP,
    )
    .unwrap();
    let r = after.adopt(&pinned, true).unwrap();
    assert_eq!((r.kept_ids, r.new, r.stale), (3, 1, 0));
    assert_eq!(
        after
            .backend_by_address("10.0.0.15".parse().unwrap())
            .unwrap()
            .id,
        2
    );
    after.apply().unwrap();
    // Full: the next add is refused with a clear error, and a removal frees an id again.
    assert!(matches!(
        after.add_backend(0, "10.0.0.16".parse().unwrap(), 1),
        Err(StateError::IdsExhausted { capacity: CAP, .. })
    ));
    after.remove_backend(3).unwrap();
    after.apply().unwrap();
    assert_eq!(
        after
            .add_backend(0, "10.0.0.16".parse().unwrap(), 1)
            .unwrap(),
        3
    );
}

#[test]
fn a_cancelled_add_gives_its_id_back() {
    let mut lb = Balancer::new(
        FakeDataplane::default(),
        &config(&["10.0.0.11"]),
        ifaces(),
        3,
    )
    .unwrap();
    let id = lb.add_backend(0, "10.0.0.12".parse().unwrap(), 1).unwrap();
    assert_eq!(id, 2);
    lb.cancel_add(id).unwrap();
    assert!(lb.backend(id).is_none());
    assert_eq!(lb.services()[0].members, [1]);
    assert_eq!(
        lb.add_backend(0, "10.0.0.13".parse().unwrap(), 1).unwrap(),
        2
    );
    lb.apply().unwrap();
    // Written to the maps: no longer cancellable (it must be removed, then forgotten).
    assert!(lb.cancel_add(2).is_err());
}
