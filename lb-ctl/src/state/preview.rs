//! What an edit of the backends would make of every service's table, without touching the
//! maps or the model: the input of a dry run's blast radius (`crate::runtime::blast`).
//!
//! [`Balancer::preview`] applies the [`Edit`] to a copy of the backends and computes each
//! service's next table with the apply's own code (`apply::members_of`, `Balancer::keepers`,
//! `apply::next_table`), so the prediction is the table the apply then writes — held slot
//! moves and new backends that wait for their first health check included.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Instant, SystemTime},
};

use lb_common::{maglev, RING_BACKEND_MASK};

use super::{
    apply::{members_of, next_table},
    BackendState, Balancer,
};
use crate::{dataplane::Dataplane, health::HealthState};

/// A change of backends, by id (existing) or by service index and address (new).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edit {
    /// Removed at once.
    pub remove: Vec<u32>,
    /// Start (or move) a drain until the deadline.
    pub drain: Vec<(u32, SystemTime)>,
    /// Drains cancelled (back in the ring).
    pub undrain: Vec<u32>,
    /// New weights.
    pub weight: Vec<(u32, u32)>,
    /// New backends: (index in [`Balancer::services`], address, weight). Health unknown
    /// until their first probe, so they hold no slot in the next table.
    pub add: Vec<(usize, IpAddr, u32)>,
    /// Services removed with their backends (index in [`Balancer::services`]): their
    /// clients have no backend left.
    pub remove_services: Vec<usize>,
}

impl Edit {
    pub fn is_empty(&self) -> bool {
        *self == Edit::default()
    }
}

/// Each service's next table and the backends usable after an [`Edit`].
#[derive(Clone, Debug)]
pub struct Preview {
    /// Per service (index in [`Balancer::services`]): the backend id of every slot in the
    /// table the next apply writes (flags stripped).
    pub tables: Vec<Vec<u32>>,
    /// Backends the data path may send persisted clients to afterwards (usable, not removed).
    pub usable: BTreeSet<u32>,
}

impl<D: Dataplane> Balancer<D> {
    /// The tables an apply at `now` would write after `edit` (see the module doc). Nothing
    /// is changed.
    pub fn preview(&self, edit: &Edit, now: Instant) -> Preview {
        let mut backends: BTreeMap<u32, BackendState> = self.backends.clone();
        let mut members: Vec<Vec<u32>> = self.services.iter().map(|s| s.members.clone()).collect();
        for &idx in &edit.remove_services {
            if let Some(m) = members.get_mut(idx) {
                for id in m.drain(..) {
                    backends.remove(&id);
                }
            }
        }
        for id in &edit.remove {
            backends.remove(id);
            for m in &mut members {
                m.retain(|x| x != id);
            }
        }
        for &(id, until) in &edit.drain {
            if let Some(b) = backends.get_mut(&id) {
                b.drain_until = Some(until);
            }
        }
        for id in &edit.undrain {
            if let Some(b) = backends.get_mut(id) {
                b.drain_until = None;
            }
        }
        for &(id, w) in &edit.weight {
            if let Some(b) = backends.get_mut(&id) {
                b.weight = w;
            }
        }
        // New backends get ids no backend has (never in a table: they are not usable yet).
        let mut fresh = RING_BACKEND_MASK;
        for &(idx, address, weight) in &edit.add {
            let Some(svc) = self.services.get(idx) else {
                continue;
            };
            backends.insert(
                fresh,
                BackendState {
                    id: fresh,
                    service: svc.value.id,
                    address,
                    weight,
                    next_hop: None,
                    health: HealthState::Unknown,
                    drain_until: None,
                    written: None,
                },
            );
            members[idx].push(fresh);
            fresh -= 1;
        }
        let keepers = self.keepers(&backends);
        let tables = self
            .services
            .iter()
            .zip(&members)
            .map(|(svc, ids)| {
                let built = maglev::build(&members_of(&backends, ids), self.ring_size, self.seed);
                next_table(svc, &built, &keepers, now)
                    .table
                    .iter()
                    .map(|v| v & RING_BACKEND_MASK)
                    .collect()
            })
            .collect();
        let usable = backends
            .values()
            .filter(|b| b.usable())
            .map(|b| b.id)
            .collect();
        Preview { tables, usable }
    }
}
