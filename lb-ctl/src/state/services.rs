//! Services made from the config ([`ServiceState::new`]) and services a reload adds or
//! removes while the daemon runs ([`Balancer::add_service`], [`Balancer::remove_service`]).
//!
//! A service added while running needs an id whose tables fit `RINGS` and whose `SERVICES`
//! slot exists: the maps indexed by service id hold a few ids beyond the configured ones
//! (`daemon::load::service_capacity`), and an IPv6 one a free `VIPS_V6` entry. Its VIP and
//! `SERVICES` entry are written with its first table, as at start. A removed service's
//! backends are removed (forgotten in the maps after its last flip), its VIP and `SERVICES`
//! slot are cleared by the next apply, as for a VIP a previous daemon left behind, and its
//! id is not given to another service before a restart: entries keyed by it may still be in
//! the persistence maps.

use lb_common::{Service, BACKEND_NONE, FAMILY_V4, FAMILY_V6, MAX_PORTS, SVC_F_ESP};

use super::{Balancer, ServiceState, StateError};
use crate::{
    config::VirtualServer,
    dataplane::{addr_words, port_wire, Dataplane},
};

impl ServiceState {
    /// Service `id` of `vs`, tables of `m` slots, no member and nothing written yet.
    pub(super) fn new(vs: &VirtualServer, id: u32, m: u32) -> Self {
        let mut value = Service {
            id,
            flags: if vs.esp { SVC_F_ESP } else { 0 },
            ring_base: id * 2 * m,
            family: if vs.vip.is_ipv4() {
                FAMILY_V4
            } else {
                FAMILY_V6
            },
            vip: addr_words(vs.vip),
            ..Service::default()
        };
        for (slot, &p) in value
            .udp_ports
            .iter_mut()
            .zip(vs.ports.iter().take(MAX_PORTS))
        {
            *slot = port_wire(p);
        }
        for (slot, &p) in value
            .tcp_ports
            .iter_mut()
            .zip(vs.tcp_ports.iter().take(MAX_PORTS))
        {
            *slot = port_wire(p);
        }
        Self {
            name: vs.name.clone(),
            value,
            members: Vec::new(),
            buffers: [
                vec![BACKEND_NONE; m as usize],
                vec![BACKEND_NONE; m as usize],
            ],
            active: 0,
            written: false,
            changed_at: vec![0; m as usize],
            flag_all: false,
            built_from: None,
            hold: None,
        }
    }
}

impl<D: Dataplane> Balancer<D> {
    /// The maps hold service ids below `ids` and `v6` IPv6 services (`VIPS_V6`): the bounds
    /// of [`add_service`](Balancer::add_service). Unbounded until set (unit tests).
    pub fn set_service_capacity(&mut self, ids: u32, v6: u32) {
        self.service_capacity = ids;
        self.v6_capacity = v6;
    }

    /// The id [`add_service`](Balancer::add_service) would give `vs` after the services
    /// `pending` (ids given to services added before it, and whether each is IPv6), or why
    /// there is none (a one-line reason: a restart sizes the maps for it).
    pub fn free_service_id(
        &self,
        vs: &VirtualServer,
        pending: &[(u32, bool)],
    ) -> Result<u32, String> {
        let taken = |id: &u32| {
            self.service_pos.contains_key(id)
                || self.retired.contains(id)
                || self.stale_services.iter().any(|s| s.id == *id)
                || pending.iter().any(|p| p.0 == *id)
        };
        if vs.vip.is_ipv6() {
            let v6 = self
                .services
                .iter()
                .filter(|s| s.value.family == FAMILY_V6)
                .count() as u32
                + pending.iter().filter(|p| p.1).count() as u32;
            if v6 >= self.v6_capacity {
                return Err(format!(
                    "VIPS_V6 holds {} IPv6 services{}",
                    self.v6_capacity,
                    if v6 == 0 {
                        " and the IPv6 persistence maps 1 entry (no IPv6 VIP at start)"
                    } else {
                        ""
                    }
                ));
            }
        }
        (0..self.service_capacity)
            .find(|id| !taken(id))
            .ok_or_else(|| {
                format!(
                    "the maps indexed by service id hold ids 0-{} and none is free",
                    self.service_capacity.saturating_sub(1)
                )
            })
    }

    /// Adds service `vs` (no backend yet) with id `id` from
    /// [`free_service_id`](Balancer::free_service_id); returns its index in
    /// [`services`](Balancer::services). Its first table and VIP are written by the next
    /// apply.
    pub fn add_service(&mut self, vs: &VirtualServer, id: u32) -> usize {
        let pos = self.services.len();
        self.services
            .push(ServiceState::new(vs, id, self.ring_size));
        self.service_pos.insert(id, pos);
        pos
    }

    /// Removes the service at index `pos` of [`services`](Balancer::services) and its
    /// backends; the next apply forgets them in the maps (module doc). Returns the removed
    /// backends' ids.
    pub fn remove_service(&mut self, pos: usize) -> Result<Vec<u32>, StateError> {
        let members = self
            .services
            .get(pos)
            .ok_or(StateError::UnknownService {
                service: pos as u32,
            })?
            .members
            .clone();
        for &id in &members {
            self.remove_backend(id)?;
        }
        let svc = self.services.remove(pos);
        if svc.written {
            self.stale_services.push(svc.value);
        }
        self.retired.push(svc.value.id);
        self.service_pos = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.value.id, i))
            .collect();
        Ok(members)
    }
}
