//! Services and their Maglev tables: [`ServiceState`] mirrors each service's two buffers in
//! `RINGS`; [`Balancer::apply`] writes interfaces, backends and tables in the order of the
//! module doc of [`super`], building each service's table and flipping it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Instant,
};

use lb_common::{
    maglev::{self, Member},
    Iface, Service, BACKEND_NONE, RING_BACKEND_MASK, RING_F_CHANGED,
};

use super::{BackendState, Balancer, StateError};
use crate::dataplane::Dataplane;

/// A service (one VIP) and the mirror of its two ring buffers.
#[derive(Clone, Debug)]
pub struct ServiceState {
    pub name: String,
    /// The value last written to `VIPS_V4`/`SERVICES` (or to be written).
    pub value: Service,
    /// Backend ids, in config order.
    pub members: Vec<u32>,
    /// What each buffer in `RINGS` holds (a fresh array is all zeros).
    pub(super) buffers: [Vec<u32>; 2],
    /// Which buffer `value.ring_base` points at.
    pub(super) active: usize,
    pub(super) written: bool,
    /// Per slot: the [`Balancer`] epoch (flip count) of the flip that last changed the slot's
    /// backend in the active table (0: before this balancer). The sweep clears a flag only on
    /// slots unchanged since its ticket (see "Slot flags").
    pub(super) changed_at: Vec<u32>,
    /// Flag every slot of the next table (after a map migration, or when the pinned program
    /// was another build or had other globals: the pinned flags may not describe the pinned
    /// persistence entries).
    pub(super) flag_all: bool,
    /// The members the active table was last built from (`None`: not built yet, or the last
    /// attempt failed). Events that change no member (most health reports) skip the build.
    pub(super) built_from: Option<Vec<Member>>,
    /// Slots held on their old backend ("Slot moves" in the module doc of [`super`]).
    pub(super) hold: Option<Hold>,
}

/// A service's slot moves in waiting: until `until`, every slot whose active backend differs
/// from `target` (the last table built) keeps the active one, flagged.
#[derive(Clone, Debug)]
pub(super) struct Hold {
    pub(super) until: Instant,
    pub(super) target: Vec<u32>,
}

impl Hold {
    /// Whether `slot` waits to move (its active backend is `active`).
    pub(super) fn holds(&self, slot: usize, active: u32) -> bool {
        self.target[slot] & RING_BACKEND_MASK != active
    }
}

impl ServiceState {
    /// The table the data path reads now (backend id | `RING_F_*` per slot).
    pub fn active_table(&self) -> &[u32] {
        &self.buffers[self.active]
    }

    /// Slots that keep their old backend until their move is due ("Slot moves").
    pub fn held_slots(&self) -> usize {
        match &self.hold {
            Some(h) => (0..self.active_table().len())
                .filter(|&i| h.holds(i, self.active_backend(i)))
                .count(),
            None => 0,
        }
    }

    /// The backend of `slot` in the active table (flags stripped).
    pub fn active_backend(&self, slot: usize) -> u32 {
        self.buffers[self.active][slot] & RING_BACKEND_MASK
    }
}

/// What one [`Balancer::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Backend entries rewritten.
    pub backends_written: usize,
    /// (service id, ring slots written) for every service whose table was flipped.
    pub flips: Vec<(u32, usize)>,
    /// Removed backends forgotten in the maps.
    pub backends_removed: usize,
}

impl<D: Dataplane> Balancer<D> {
    /// Every service, in config order (the order of `config.virtual_servers`; the service
    /// id is `value.id`).
    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// The backend slot `slot` of service `service` names once every pending move is done:
    /// the held table's target for a held slot ("Slot moves"), else the active table's.
    /// `None` for an unknown service or slot.
    pub fn converged_backend(&self, service: u32, slot: u32) -> Option<u32> {
        let svc = &self.services[self.service_index(service)?];
        let slot = slot as usize;
        let active = svc.active_table().get(slot)? & RING_BACKEND_MASK;
        Some(match &svc.hold {
            Some(h) if h.holds(slot, active) => h.target[slot] & RING_BACKEND_MASK,
            _ => active,
        })
    }

    /// Index in [`services`](Balancer::services) (and `config.virtual_servers`) of service
    /// `id`.
    pub fn service_index(&self, id: u32) -> Option<usize> {
        self.service_pos.get(&id).copied()
    }

    /// Service `id` (a backend's `service`, a persistence key's). Panics on an id no
    /// configured service has, as indexing would: every backend's service is configured.
    pub fn service(&self, id: u32) -> &ServiceState {
        &self.services[self.service_pos[&id]]
    }

    /// Brings the maps to the desired state (see the module doc for the write order).
    pub fn apply(&mut self) -> Result<ApplyReport, StateError> {
        self.apply_at(Instant::now())
    }

    /// [`apply`](Balancer::apply) at time `now` (held slot moves whose delay ended by `now`
    /// are made).
    pub fn apply_at(&mut self, now: Instant) -> Result<ApplyReport, StateError> {
        let mut report = ApplyReport::default();
        if !self.ifaces_written {
            for ((i, &roles), &port) in self.ifaces.iter().zip(&self.roles).zip(&self.ports) {
                self.dp.set_iface(
                    port,
                    &Iface {
                        ifindex: i.ifindex,
                        mac: i.mac,
                        _pad: [0; 2],
                    },
                    roles,
                )?;
            }
            // Interfaces a previous daemon attached that left the config: their port may
            // now be another interface's.
            let keep: Vec<u32> = self.ifaces.iter().map(|i| i.ifindex).collect();
            self.dp.forget_other_ifaces(&keep)?;
            self.ifaces_written = true;
        }
        // VIPs a previous daemon served and the config no longer has: not balanced any more,
        // and their id's `SERVICES` slot cleared unless a configured service holds it.
        while let Some(stale) = self.stale_services.first().copied() {
            let slot = !self.service_pos.contains_key(&stale.id);
            self.dp.forget_service(&stale, slot)?;
            self.stale_services.remove(0);
        }
        report.backends_written += self.write_backends(true)?;
        for idx in 0..self.services.len() {
            if let Some(flip) = self.rebuild(idx, now)? {
                report.flips.push(flip);
            }
        }
        report.backends_written += self.write_backends(false)?;
        report.backends_removed = self.forget_removed()?;
        Ok(report)
    }

    /// When held slot moves are due: the earliest end of a service's hold (`None`: none held).
    /// The daemon applies at least once a second, so a due move is made within a second.
    pub fn next_move(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| s.hold.as_ref().map(|h| h.until))
            .min()
    }

    /// Slots held on their old backend now, all services.
    pub fn held_slots(&self) -> usize {
        self.services.iter().map(ServiceState::held_slots).sum()
    }

    /// Rebuilds one service's table; writes and flips it if it differs from the active one.
    /// Returns (service id, slots written) when it flipped.
    fn rebuild(&mut self, idx: usize, now: Instant) -> Result<Option<(u32, usize)>, StateError> {
        let members = members_of(&self.backends, &self.services[idx].members);
        let keepers = self.keepers(&self.backends);
        let delay = self.slot_move_delay;
        let svc = &mut self.services[idx];
        let due = svc.hold.as_ref().is_some_and(|h| now >= h.until);
        // Same members, written, nothing to flag, no held move due: the build would give the
        // active table again (its flags are kept or cleared by the sweep, never set by a
        // rebuild of the same members). A Maglev build is O(M × backends): not on every
        // health report.
        if svc.written && !svc.flag_all && !due && svc.built_from.as_ref() == Some(&members) {
            return Ok(None);
        }
        svc.built_from = None;
        self.builds += 1;
        let built = maglev::build(&members, self.ring_size, self.seed);
        let m = self.ring_size;
        let Next {
            table,
            held,
            newly_held,
        } = next_table(svc, &built, &keepers, now);
        svc.hold = held.then(|| Hold {
            until: match &svc.hold {
                Some(h) if !newly_held && !due => h.until,
                _ => now + delay,
            },
            target: built,
        });
        if table == svc.buffers[svc.active] {
            svc.flag_all = false;
            if !svc.written {
                self.dp.set_service(&svc.value)?;
                svc.written = true;
            }
            svc.built_from = Some(members);
            return Ok(None);
        }
        let inactive = 1 - svc.active;
        let base = (svc.value.id * 2 + inactive as u32) * m;
        let slots: Vec<(u32, u32)> = table
            .iter()
            .zip(&svc.buffers[inactive])
            .enumerate()
            .filter(|(_, (new, old))| new != old)
            .map(|(i, (&new, _))| (base + i as u32, new))
            .collect();
        if let Err(e) = self.dp.write_ring_slots(&slots) {
            // Some slots may have been written: the mirror of this buffer is no longer
            // known, so the next attempt rewrites every slot (no table holds u32::MAX).
            svc.buffers[inactive].fill(u32::MAX);
            return Err(e.into());
        }
        svc.buffers[inactive] = table;
        let mut value = svc.value;
        value.ring_base = base;
        // A service's first table is its first write (`set_service`: the VIP index too).
        if svc.written {
            self.dp.flip(&value)?;
        } else {
            self.dp.set_service(&value)?;
        }
        self.epoch = self.epoch.wrapping_add(1).max(1);
        let epoch = self.epoch;
        for ((at, &new), &old) in svc
            .changed_at
            .iter_mut()
            .zip(&svc.buffers[inactive])
            .zip(&svc.buffers[svc.active])
        {
            if (new ^ old) & RING_BACKEND_MASK != 0 {
                *at = epoch;
            }
        }
        svc.value = value;
        svc.active = inactive;
        svc.written = true;
        svc.flag_all = false;
        svc.built_from = Some(members);
        self.flips += 1;
        Ok(Some((value.id, slots.len())))
    }
}

/// The Maglev members of a service: its backends `ids` in member order, each usable for new
/// clients while it is in the ring (usable and not draining).
pub(super) fn members_of(backends: &BTreeMap<u32, BackendState>, ids: &[u32]) -> Vec<Member> {
    ids.iter()
        .map(|id| {
            let b = &backends[id];
            Member {
                id: b.id,
                key: key_bytes(b.address),
                weight: b.weight,
                usable: b.in_ring(),
            }
        })
        .collect()
}

/// The table a service writes next, given the Maglev build `built`: flags and held slot
/// moves applied ("Slot flags", "Slot moves" in the module doc of [`super`]).
pub(super) struct Next {
    pub(super) table: Vec<u32>,
    /// Some slot keeps its old backend, flagged.
    pub(super) held: bool,
    /// Some slot is held that was not held before (the delay starts over).
    pub(super) newly_held: bool,
}

/// [`Next`] for service `svc` at `now`: `keepers` are the backends a held slot may keep.
/// Shared by the apply and by [`Balancer::preview`], so a prediction is the table written.
pub(super) fn next_table(
    svc: &ServiceState,
    built: &[u32],
    keepers: &BTreeSet<u32>,
    now: Instant,
) -> Next {
    let due = svc.hold.as_ref().is_some_and(|h| now >= h.until);
    // Slot flags (module doc, "Slot flags"): set where the backend changes against the
    // active table (a slot that had none holds no session), kept where already set.
    // Slot moves ("Slot moves"): a slot whose backend changes while the old one is
    // usable keeps it, flagged, until the delay ends; a slot held since an earlier build
    // moves once its hold is due, a newly held one restarts the delay.
    let flag_all = svc.flag_all;
    let mut held = false;
    let mut newly_held = false;
    let table: Vec<u32> = built
        .iter()
        .zip(&svc.buffers[svc.active])
        .enumerate()
        .map(|(slot, (&new, &old))| {
            let was = old & RING_BACKEND_MASK;
            let changed = was != BACKEND_NONE && was != new;
            if changed && keepers.contains(&was) {
                let before = svc.hold.as_ref().is_some_and(|h| h.holds(slot, was));
                if !(before && due) {
                    held = true;
                    newly_held |= !before;
                    return was | RING_F_CHANGED;
                }
            }
            if flag_all || changed || old & RING_F_CHANGED != 0 {
                new | RING_F_CHANGED
            } else {
                new
            }
        })
        .collect();
    Next {
        table,
        held,
        newly_held,
    }
}

impl<D: Dataplane> Balancer<D> {
    /// Backends a held slot may keep: in the ring (usable and not draining — a drain takes
    /// no new client from its start, so its slots move at once); none without a move delay.
    pub(super) fn keepers(&self, backends: &BTreeMap<u32, BackendState>) -> BTreeSet<u32> {
        if self.slot_move_delay.is_zero() {
            return BTreeSet::new();
        }
        backends
            .values()
            .filter(|b| b.in_ring())
            .map(|b| b.id)
            .collect()
    }
}

/// The Maglev permutation key of a backend: its address bytes (stable across restarts and
/// nodes, independent of ids).
fn key_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
