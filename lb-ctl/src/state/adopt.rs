//! Adoption of a data path a previous daemon left pinned (`crate::pin`): the restart that
//! loses no packet and moves no client.
//!
//! [`Balancer::new`] assumes empty maps: ids 1, 2, … in config order, every backend unusable
//! until its next hop and health are known, both ring buffers zero. Applied as such to pinned
//! maps, its first [`Balancer::apply`] would flip every table to "no backend" and renumber
//! backends under the persisted clients. [`Balancer::adopt`], called once after `new` (and
//! after runtime state is re-applied) and before the first `apply`, makes the model match the
//! maps instead:
//!
//! * **ids**: a backend keeps the id the maps give its address in its service (persisted
//!   clients name backends by id). Others get ids above every pinned one, so an id whose
//!   persisted clients may still exist is not handed to a newcomer while fresh ids remain.
//!   The free list is rebuilt from the ids actually in use (adopted, and stale pinned ones
//!   until the first apply forgets them): every other id below the highest pinned one is
//!   free again, so ids never run out over any number of add/remove/restart cycles.
//! * **usable backends stay usable**: a pinned `BACKEND_F_USABLE` entry gives the backend its
//!   next hop back and health `Up`; re-resolution and health checks then change it only on a
//!   real transition.
//! * **tables**: when the maps are reused as they are, each service adopts its active half
//!   (from `ring_base`) and the contents of both halves, so the next rebuild writes only the
//!   slots that differ and flips as usual — and writes nothing when nothing changed.
//! * **stale backends** (pinned, no longer configured) are forgotten by the first `apply`,
//!   after the flip (step 4 of the write order).
//! * **services** are matched by id (ids follow names: `crate::identity`, which takes them
//!   from the pins) and VIP: a pinned `SERVICES[id]` with the configured service's VIP is the
//!   same service. A pinned VIP the config no longer has is deleted from `VIPS_V4`/`VIPS_V6`
//!   by the first `apply` (and its `SERVICES` slot cleared unless a configured service holds
//!   the id), so a newcomer given a released id never serves the old VIP.
//!
//! After a map migration (`pin::MapPlan::Migrate`) the maps the balancer writes are new and
//! empty: ids and health are still adopted from the old set, but nothing counts as written.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{Backend, BACKEND_F_USABLE};

use super::{Balancer, NextHop, StateError};
use crate::{
    dataplane::{addr_words, words_addr, Dataplane},
    health::HealthState,
    pin::PinnedState,
};

/// What [`Balancer::adopt`] took over, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Backends that kept their pinned id.
    pub kept_ids: usize,
    /// Of those, the ones that were usable and stay so.
    pub usable: usize,
    /// Backends with no pinned entry (new in the config), given fresh ids.
    pub new: usize,
    /// Pinned backends no longer configured, forgotten by the next apply.
    pub stale: usize,
    /// Services whose active table half was adopted.
    pub tables: usize,
    /// Pinned services whose VIP is no longer configured, forgotten by the next apply.
    pub stale_services: usize,
}

impl<D: Dataplane> Balancer<D> {
    /// Takes over the ids, next hops, health and tables `pinned` records (see the module
    /// doc). `maps_reused`: the maps this balancer writes are the pinned ones (not a new set
    /// after a migration).
    pub fn adopt(
        &mut self,
        pinned: &PinnedState,
        maps_reused: bool,
    ) -> Result<AdoptReport, StateError> {
        let mut report = AdoptReport::default();
        let m = self.ring_size;
        // A pinned service is the same one when its id's slot holds the same VIP (ids follow
        // names and VIPs: `crate::identity`). Indexed like `self.services`.
        let same_service: Vec<bool> = self
            .services
            .iter()
            .map(|s| {
                pinned
                    .services
                    .get(s.value.id as usize)
                    .is_some_and(|p| p.vip == s.value.vip && p.family == s.value.family)
            })
            .collect();
        let service_pos = self.service_pos.clone();
        let same = |service: u32| {
            service_pos
                .get(&service)
                .is_some_and(|&pos| same_service[pos])
        };
        let mut pinned_by_key: HashMap<(u32, [u32; 4]), (u32, Backend)> = pinned
            .backends
            .iter()
            .filter(|(_, b)| same(b.service))
            .map(|(&id, b)| ((b.service, b.addr), (id, *b)))
            .collect();

        // New id of every backend: its pinned one, else one above everything pinned.
        let mut renumber: BTreeMap<u32, u32> = BTreeMap::new();
        let mut adopted: BTreeMap<u32, Backend> = BTreeMap::new();
        let capacity = self.ids.capacity;
        for b in self.backends.values() {
            if let Some((id, value)) = pinned_by_key.remove(&(b.service, addr_words(b.address))) {
                // Beyond a (smaller, migrated) BACKENDS: a new id, as for a newcomer.
                if id < capacity {
                    renumber.insert(b.id, id);
                    adopted.insert(id, value);
                }
            }
        }
        let taken: BTreeSet<u32> = adopted.keys().copied().collect();
        // Ids `new` handed out are all re-assigned here, so counting restarts above the pins;
        // the free list is rebuilt from what is in use: adopted ids, and the stale pinned
        // entries the first apply forgets (and only then frees). Newcomers take fresh ids
        // first, free ones only when those run out (`IdAllocator`).
        self.ids.next = pinned.backends.keys().max().map_or(1, |&max| max + 1);
        let mut in_use = taken.clone();
        if maps_reused {
            in_use.extend(pinned.backends.keys().copied());
        }
        self.ids.rebuild_free(&in_use);
        let unmatched: Vec<(u32, String, std::net::IpAddr)> = self
            .backends
            .values()
            .filter(|b| !renumber.contains_key(&b.id))
            .map(|b| (b.id, self.service(b.service).name.clone(), b.address))
            .collect();
        for (old, service, address) in unmatched {
            let id = self.ids.alloc().ok_or(StateError::IdsExhausted {
                service,
                address,
                capacity,
            })?;
            renumber.insert(old, id);
            report.new += 1;
        }

        let old = std::mem::take(&mut self.backends);
        for (old_id, mut b) in old {
            b.id = renumber[&old_id];
            if let Some(v) = adopted.get(&b.id) {
                report.kept_ids += 1;
                let port = v.tx_port as usize;
                let same_iface = self
                    .iface(port as u32)
                    .is_some_and(|i| i.ifindex == v.ifindex && i.mac == v.smac);
                if v.flags & BACKEND_F_USABLE != 0 && same_iface {
                    b.next_hop = Some(NextHop {
                        port: v.tx_port,
                        mac: v.dmac,
                    });
                    b.health = HealthState::Up;
                    report.usable += 1;
                }
                b.written = maps_reused.then_some(*v);
            }
            self.backends.insert(b.id, b);
        }
        for s in &mut self.services {
            for id in &mut s.members {
                *id = renumber[id];
            }
        }

        // Stale entries: pinned but not configured any more (or moved to another service).
        self.removed.clear();
        if maps_reused {
            for (&id, b) in &pinned.backends {
                if !taken.contains(&id) {
                    let family = if b.addr[1..] == [0, 0, 0] {
                        lb_common::FAMILY_V4
                    } else {
                        lb_common::FAMILY_V6
                    };
                    self.removed.push((id, words_addr(family, &b.addr)));
                    report.stale += 1;
                }
            }
        }

        // Pinned VIPs no longer configured: the next apply deletes them (a VIP entry left
        // behind would keep balancing its traffic over whatever its id's tables become).
        self.stale_services.clear();
        if maps_reused {
            for (id, p) in pinned.services.iter().enumerate() {
                let configured = self
                    .services
                    .iter()
                    .any(|s| s.value.vip == p.vip && s.value.family == p.family);
                if p.family != 0 && !configured {
                    self.stale_services.push(lb_common::Service {
                        id: id as u32,
                        ..*p
                    });
                    report.stale_services += 1;
                }
            }
        }

        // After a migration the new tables start empty while the persistence entries are
        // carried over: the first table of each service flags every slot (state.rs, "Slot
        // flags").
        if !maps_reused && !pinned.services.is_empty() {
            self.flag_all_slots();
        }
        // Tables: the active half and what both halves hold (their flags included).
        if maps_reused {
            for (i, s) in self.services.iter_mut().enumerate() {
                let id = s.value.id;
                let (Some(p), Some(rings)) = (
                    pinned.services.get(id as usize),
                    pinned.rings.get(id as usize),
                ) else {
                    continue;
                };
                if !same_service[i] || rings[0].len() != m as usize || rings[1].len() != m as usize
                {
                    continue;
                }
                let base = |b: u32| (id * 2 + b) * m;
                let active = if p.ring_base == base(0) {
                    0
                } else if p.ring_base == base(1) {
                    1
                } else {
                    continue;
                };
                s.buffers = rings.clone();
                s.active = active;
                s.value.ring_base = p.ring_base;
                s.written = *p == s.value;
                report.tables += 1;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
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
                "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\nvirtual_servers:
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
}
