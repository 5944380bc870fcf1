//! Backends and their ids: [`BackendState`], the id allocator, adding and removing backends,
//! their health, drain and weight, and the `BACKENDS` writes that [`Balancer::apply`] orders
//! around a flip (usable ones first, unusable ones after, removed ones last).

use std::{collections::VecDeque, net::IpAddr, time::SystemTime};

use lb_common::{Backend, BACKEND_F_USABLE, BACKEND_NONE};

use super::{Balancer, IfaceInfo, NextHop, StateError};
use crate::{
    dataplane::{addr_words, Dataplane},
    health::HealthState,
};

/// Smallest `BACKENDS` capacity. The map is sized with headroom over the configured
/// backends so runtime `backend add` needs no reload.
pub const MIN_BACKEND_CAPACITY: u32 = 1024;

/// `BACKENDS` capacity for `configured` backends: id 0 plus the backends, doubled for
/// runtime additions, at least [`MIN_BACKEND_CAPACITY`], within the 24-bit id space.
pub fn backend_capacity(configured: usize) -> u32 {
    let want = (configured as u64 + 1).saturating_mul(2);
    want.clamp(
        u64::from(MIN_BACKEND_CAPACITY),
        u64::from(lb_common::RING_BACKEND_MASK),
    ) as u32
}

/// A backend as the control plane tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub id: u32,
    /// Id of the service it belongs to.
    pub service: u32,
    pub address: IpAddr,
    pub weight: u32,
    /// Resolved next hop; `None` until the neighbour is known (the backend is unusable).
    pub next_hop: Option<NextHop>,
    /// The health checks' verdict; only `Up` is usable.
    pub health: HealthState,
    /// Drain deadline while draining (`lb-ctl backend remove --drain`): out of the ring,
    /// still usable for its persisted clients.
    pub drain_until: Option<SystemTime>,
    /// What `BACKENDS[id]` holds now, `None` before the first write.
    pub(super) written: Option<Backend>,
}

impl BackendState {
    /// May the data path send to it (persisted clients included)? Next hop resolved and
    /// health Up.
    pub fn usable(&self) -> bool {
        self.next_hop.is_some() && self.health == HealthState::Up
    }

    /// Does it take new clients (hold ring slots)? Usable and not draining.
    pub fn in_ring(&self) -> bool {
        self.usable() && self.drain_until.is_none()
    }

    pub fn draining(&self) -> bool {
        self.drain_until.is_some()
    }

    fn value(&self, ifaces: &[IfaceInfo], ports: &[u32]) -> Backend {
        let mut b = Backend {
            addr: addr_words(self.address),
            service: self.service,
            ..Backend::default()
        };
        let iface = |port: u32| ports.iter().position(|&p| p == port).map(|i| &ifaces[i]);
        if let (true, Some(nh)) = (self.usable(), self.next_hop) {
            // `set_next_hop` refuses a port no interface has.
            let iface = iface(nh.port).expect("the next hop's port is an interface's");
            b.flags = BACKEND_F_USABLE;
            b.tx_port = nh.port;
            b.ifindex = iface.ifindex;
            b.dmac = nh.mac;
            b.smac = iface.mac;
        }
        b
    }
}

/// Hands out backend ids: fresh ones first, freed ones only when fresh ones run out and then
/// oldest-freed first, so a persisted client of a removed backend is unlikely to land on
/// a newcomer under the same id.
#[derive(Clone, Debug)]
pub(super) struct IdAllocator {
    pub(super) next: u32,
    pub(super) capacity: u32,
    pub(super) free: VecDeque<u32>,
}

impl IdAllocator {
    pub(super) fn alloc(&mut self) -> Option<u32> {
        if self.next < self.capacity {
            self.next += 1;
            Some(self.next - 1)
        } else {
            self.free.pop_front()
        }
    }

    fn release(&mut self, id: u32) {
        self.free.push_back(id);
    }

    /// Takes back an id [`alloc`](IdAllocator::alloc) just handed out and that was never
    /// written to the maps: the allocator is as it was before.
    fn unalloc(&mut self, id: u32) {
        if id + 1 == self.next {
            self.next -= 1;
        } else {
            self.free.push_front(id);
        }
    }

    /// Rebuilds the free list from what is actually in use (after an adoption renumbered
    /// every backend): every id below `next` and the capacity that `in_use` does not hold is
    /// free, lowest first. Without this, ids that were free when the previous daemon stopped
    /// would be lost at every restart.
    pub(super) fn rebuild_free(&mut self, in_use: &std::collections::BTreeSet<u32>) {
        let end = self.next.min(self.capacity);
        self.free = (BACKEND_NONE + 1..end)
            .filter(|id| !in_use.contains(id))
            .collect();
    }
}

impl<D: Dataplane> Balancer<D> {
    pub fn backends(&self) -> impl Iterator<Item = &BackendState> {
        self.backends.values()
    }

    pub fn backend(&self, id: u32) -> Option<&BackendState> {
        self.backends.get(&id)
    }

    /// Size of `BACKENDS`: ids 1 to `capacity - 1` can be handed out.
    pub fn capacity(&self) -> u32 {
        self.ids.capacity
    }

    /// The backend with `address` (any service; an address serves one service).
    pub fn backend_by_address(&self, address: IpAddr) -> Option<&BackendState> {
        self.backends.values().find(|b| b.address == address)
    }

    /// Adds a backend to the service at index `service` of [`services`](Balancer::services)
    /// (config order, not the service id) (health Unknown, next hop unresolved: unusable
    /// until both are known). Returns its id. The caller has validated the address.
    pub fn add_backend(
        &mut self,
        service: u32,
        address: IpAddr,
        weight: u32,
    ) -> Result<u32, StateError> {
        let pos = service as usize;
        let svc = self
            .services
            .get(pos)
            .ok_or(StateError::UnknownService { service })?;
        let service = svc.value.id;
        let id = self.ids.alloc().ok_or_else(|| StateError::IdsExhausted {
            service: svc.name.clone(),
            address,
            capacity: self.ids.capacity,
        })?;
        self.services[pos].members.push(id);
        self.backends.insert(
            id,
            BackendState {
                id,
                service,
                address,
                weight,
                next_hop: None,
                health: HealthState::Unknown,
                drain_until: None,
                written: None,
            },
        );
        Ok(id)
    }

    /// Takes back a backend [`add_backend`](Balancer::add_backend) just added, before any
    /// [`apply`](Balancer::apply) wrote it (a request whose change could not be saved): the
    /// model and the id allocator are as they were before the add.
    pub fn cancel_add(&mut self, id: u32) -> Result<(), StateError> {
        match self.backends.get(&id) {
            Some(b) if b.written.is_none() => {}
            _ => return Err(StateError::UnknownBackend { id }),
        }
        let b = self.backends.remove(&id).expect("checked above");
        let pos = self.service_pos[&b.service];
        self.services[pos].members.retain(|&m| m != id);
        self.ids.unalloc(id);
        Ok(())
    }

    /// Removes a backend: it leaves its service's table at the next [`apply`], which then
    /// forgets it in the maps and frees its id.
    ///
    /// [`apply`]: Balancer::apply
    pub fn remove_backend(&mut self, id: u32) -> Result<BackendState, StateError> {
        let b = self
            .backends
            .remove(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let pos = self.service_pos[&b.service];
        self.services[pos].members.retain(|&m| m != id);
        self.removed.push((id, b.address));
        Ok(b)
    }

    /// Records a health verdict; returns whether it changed.
    pub fn set_health(&mut self, id: u32, health: HealthState) -> Result<bool, StateError> {
        let b = self
            .backends
            .get_mut(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let changed = b.health != health;
        b.health = health;
        Ok(changed)
    }

    /// Starts (`Some(deadline)`), moves or cancels (`None`) a drain; returns whether it
    /// changed.
    pub fn set_drain(&mut self, id: u32, until: Option<SystemTime>) -> Result<bool, StateError> {
        let b = self
            .backends
            .get_mut(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let changed = b.drain_until != until;
        b.drain_until = until;
        Ok(changed)
    }

    /// Changes a backend's weight; returns whether it changed.
    pub fn set_weight(&mut self, id: u32, weight: u32) -> Result<bool, StateError> {
        let b = self
            .backends
            .get_mut(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let changed = b.weight != weight;
        b.weight = weight;
        Ok(changed)
    }

    /// Zeroes `BACKENDS[id]` of every removed backend (the data path then treats the id as
    /// missing: a persisted client naming it is re-selected) and deletes its reverse index
    /// entry unless a live backend has taken the address again; then frees the id.
    pub(super) fn forget_removed(&mut self) -> Result<usize, StateError> {
        let mut n = 0;
        while let Some(&(id, address)) = self.removed.first() {
            let readded = self.backends.values().any(|b| b.address == address);
            let index = (!readded).then(|| addr_words(address));
            self.dp.remove_backend(id, index)?;
            self.removed.remove(0);
            self.ids.release(id);
            n += 1;
        }
        Ok(n)
    }

    /// Writes the backends whose value changed and that are (`usable`) or are not usable.
    pub(super) fn write_backends(&mut self, usable: bool) -> Result<usize, StateError> {
        let mut n = 0;
        for b in self.backends.values_mut() {
            if b.usable() != usable {
                continue;
            }
            let value = b.value(&self.ifaces, &self.ports);
            if b.written != Some(value) {
                self.dp.set_backend(b.id, &value)?;
                b.written = Some(value);
                n += 1;
            }
        }
        Ok(n)
    }
}
