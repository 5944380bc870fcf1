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
                s.built_from = None;
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
mod tests;
