//! The slot flag sweep ("Slot flags" in the module doc of [`super`]): the ticket, the grace,
//! and clearing `RING_F_CHANGED` on slots no live entry disagrees with; flagging every slot
//! when the pinned flags cannot be trusted.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{
    hash::{client_hash_v4, client_hash_v6, ring_slot},
    PersistKeyV4, PersistKeyV6, PersistValue, FAMILY_V4, FAMILY_V6, RING_F_CHANGED,
};

use super::{Balancer, StateError};
use crate::dataplane::Dataplane;

/// What a flag sweep saw when it began ([`Balancer::sweep_ticket`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepTicket {
    /// [`Balancer`] epoch (flips so far) when the sweep began.
    pub epoch: u32,
    /// Persistence tick (`CLOCK_MONOTONIC_COARSE` >> `TICK_SHIFT`) when the sweep began:
    /// entries idle by then are ignored.
    pub tick: u32,
    /// [`Balancer::timeout_generation`] when the sweep began: a sweep that ends under another
    /// `persistence_timeout` is discarded (`state/timeout.rs`).
    pub generation: u32,
}

/// How long a sweep waits between its ticket and reading the persistence map, so that every
/// packet that read a table older than the ticket has finished writing its entry (an XDP
/// program run takes microseconds; this is a wide margin).
pub const SWEEP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What one [`Balancer::clear_flags`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Slots whose flag was cleared.
    pub cleared: usize,
    /// Flagged slots left flagged (a disagreeing live entry, or changed since the ticket).
    pub kept: usize,
    /// Unflagged slots (in the mirror) flagged because a live entry disagrees: the data
    /// path's SA steering flagged them in the map.
    pub adopted: usize,
}

impl<D: Dataplane> Balancer<D> {
    /// Flags every slot of every service's next table (and forces that table to be written
    /// and flipped at the next [`apply`](Balancer::apply)): for a data path whose pinned
    /// flags may not describe its persistence entries (a map migration, another build or
    /// other globals, e.g. a new `hash_seed`).
    pub fn flag_all_slots(&mut self) {
        for s in &mut self.services {
            s.flag_all = true;
        }
    }

    /// Flags `slot` of service `service`'s active table `RING_F_CHANGED` (the map, then the
    /// mirror), before an entry that disagrees with the slot is written from outside the data
    /// path (`crate::share`): the fast path then sends the slot's clients through their
    /// entries. The flag counts as a change of its own epoch, so no sweep whose ticket is older
    /// clears it on a read that missed the entry. Nothing to do when the slot is flagged
    /// already; an unknown service or slot changes nothing.
    pub fn flag_slot(&mut self, service: u32, slot: u32) -> Result<(), StateError> {
        let Some(i) = self.service_index(service) else {
            return Ok(());
        };
        let svc = &self.services[i];
        let Some(&v) = svc.active_table().get(slot as usize) else {
            return Ok(());
        };
        if v & RING_F_CHANGED != 0 || !svc.written {
            return Ok(());
        }
        let write = (svc.value.ring_base + slot, v | RING_F_CHANGED);
        self.dp.write_ring_slots(&[write])?;
        self.epoch = self.epoch.wrapping_add(1).max(1);
        let svc = &mut self.services[i];
        let active = svc.active;
        svc.buffers[active][slot as usize] = write.1;
        svc.changed_at[slot as usize] = self.epoch;
        Ok(())
    }

    /// Slots flagged `RING_F_CHANGED` in the active tables, all services.
    pub fn flagged_slots(&self) -> usize {
        self.services
            .iter()
            .map(|s| {
                s.active_table()
                    .iter()
                    .filter(|&&v| v & RING_F_CHANGED != 0)
                    .count()
            })
            .sum()
    }

    /// Begins a flag sweep: records the epoch and `tick` (now). The caller then waits
    /// [`SWEEP_GRACE`], reads the persistence and probation maps and hands their entries to
    /// [`clear_flags`](Balancer::clear_flags) (IPv4) and
    /// [`clear_flags_v6`](Balancer::clear_flags_v6) (IPv6), both with this ticket (see
    /// "Slot flags" in the module doc).
    pub fn sweep_ticket(&self, tick: u32) -> SweepTicket {
        SweepTicket {
            epoch: self.epoch,
            tick,
            generation: self.timeout_generation,
        }
    }

    /// Ends a flag sweep of the IPv4 services: clears `RING_F_CHANGED` on every slot of an
    /// IPv4 service's active table that is flagged, whose backend has not changed since
    /// `ticket`, and that no entry of `entries` (a read of `PERSIST_V4` and `PROBATION_V4`,
    /// the latter as their `PersistValue` part, begun at least [`SWEEP_GRACE`] after the
    /// ticket) disagrees with while live. Live: `ticket.tick − atime ≤ timeout + 1` ticks (the
    /// data path's own idle test, one tick more; an atime after the ticket is live). A ticket
    /// taken before a reload changed `persistence_timeout` is refused
    /// ([`StateError::SweepOutdated`]) and nothing is cleared. The
    /// active table's slots and the mirror are written in place. IPv6 services are left as
    /// they are: [`clear_flags_v6`](Balancer::clear_flags_v6) sweeps them.
    pub fn clear_flags(
        &mut self,
        ticket: SweepTicket,
        entries: &[(PersistKeyV4, PersistValue)],
        timeout_ticks: u32,
    ) -> Result<SweepReport, StateError> {
        let (seed, m) = (self.seed, self.ring_size);
        let keyed = entries
            .iter()
            .map(|(k, v)| (k.service, ring_slot(client_hash_v4(k.client, seed), m), v));
        self.clear_family(FAMILY_V4, ticket, keyed, timeout_ticks)
    }

    /// As [`clear_flags`](Balancer::clear_flags), for the IPv6 services, from a read of
    /// `PERSIST_V6` and `PROBATION_V6` (the client's slot: `client_hash_v6` with the seed,
    /// modulo the ring size, as the data path computes it). IPv4 services are left as they
    /// are.
    pub fn clear_flags_v6(
        &mut self,
        ticket: SweepTicket,
        entries: &[(PersistKeyV6, PersistValue)],
        timeout_ticks: u32,
    ) -> Result<SweepReport, StateError> {
        let (seed, m) = (self.seed, self.ring_size);
        let keyed = entries
            .iter()
            .map(|(k, v)| (k.service, ring_slot(client_hash_v6(&k.client, seed), m), v));
        self.clear_family(FAMILY_V6, ticket, keyed, timeout_ticks)
    }

    /// The sweep of the services of `family`, over `(service, slot, value)` of the entries of
    /// that family's maps (only those maps are read by the data path for its clients: an
    /// entry naming a service of the other family is never looked up, and is ignored).
    fn clear_family<'a>(
        &mut self,
        family: u32,
        ticket: SweepTicket,
        entries: impl Iterator<Item = (u32, u32, &'a PersistValue)>,
        timeout_ticks: u32,
    ) -> Result<SweepReport, StateError> {
        // Liveness decided under another timeout than the program's: nothing is cleared.
        if ticket.generation != self.timeout_generation {
            return Err(StateError::SweepOutdated);
        }
        let mut report = SweepReport::default();
        // Per service: slots with a live entry that disagrees with the active table.
        let mut keep: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (service, slot, v) in entries {
            let Some(svc) = self.service_index(service).map(|i| &self.services[i]) else {
                continue;
            };
            if svc.value.family != family {
                continue;
            }
            // One tick of grace: the ticket's tick was read before the scan began.
            let live = lb_common::is_live(ticket.tick, v.atime, timeout_ticks.saturating_add(1));
            if live && v.backend != svc.active_backend(slot as usize) {
                keep.entry(service).or_default().insert(slot);
            }
        }
        let none = BTreeSet::new();
        for svc in &mut self.services {
            if svc.value.family != family || !svc.written {
                continue;
            }
            let keep = keep.get(&svc.value.id).unwrap_or(&none);
            let base = svc.value.ring_base;
            let active = svc.active;
            let mut writes = Vec::new();
            let mut adopt = Vec::new();
            for (slot, &v) in svc.buffers[active].iter().enumerate() {
                if v & RING_F_CHANGED == 0 {
                    // A live entry that disagrees in a slot the mirror has unflagged: the
                    // data path flagged it in the map when it steered a client by its SA
                    // (`lb-ebpf/src/steer.rs`), or a table flip since lost that flag. The
                    // mirror takes the flag, and the map has it again.
                    if keep.contains(&(slot as u32)) {
                        adopt.push((base + slot as u32, v | RING_F_CHANGED));
                    }
                    continue;
                }
                let since = svc.changed_at[slot];
                // Changed after the ticket (epochs wrap after 2^32 flips; not a concern), or
                // held to move ("Slot moves": its flag makes its clients refresh their
                // entries before the move).
                let held = svc
                    .hold
                    .as_ref()
                    .is_some_and(|h| h.holds(slot, v & lb_common::RING_BACKEND_MASK));
                if since > ticket.epoch || keep.contains(&(slot as u32)) || held {
                    report.kept += 1;
                    continue;
                }
                writes.push((base + slot as u32, v & !RING_F_CHANGED));
            }
            for w in adopt {
                self.dp.write_ring_slots(&[w])?;
                svc.buffers[active][(w.0 - base) as usize] = w.1;
                report.adopted += 1;
            }
            // One slot at a time, the mirror following each write: after a failure the
            // mirror still matches the map exactly.
            for w in writes {
                self.dp.write_ring_slots(&[w])?;
                svc.buffers[active][(w.0 - base) as usize] = w.1;
                report.cleared += 1;
            }
        }
        Ok(report)
    }
}
