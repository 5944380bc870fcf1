//! Drains: the longest accepted, how often they are checked, the count of each draining
//! backend's active (not idle) clients, and the end of a drain at its deadline or when no
//! active client is left.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use tracing::info;

use super::{dp_error, Clock, Controller, Effects};
use crate::{
    api::ApiError,
    dataplane::{Dataplane, PersistEntry},
    state::{BackendState, Balancer},
};

/// Longest accepted drain.
pub const MAX_DRAIN: Duration = Duration::from_secs(30 * 24 * 3600);
/// Drains are checked at least this often.
const DRAIN_CHECK_MAX: Duration = Duration::from_secs(1);

impl Controller {
    /// Ends drains whose deadline passed or whose clients are all idle, reading the
    /// persistence maps on the spot. Returns whether anything was removed (the caller applies).
    pub fn check_drains<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        now: Clock,
    ) -> Result<Effects, ApiError> {
        if !self.draining(lb) {
            return Ok(Effects::default());
        }
        let entries = lb.dataplane().persistence().map_err(dp_error)?;
        self.end_drains(lb, now, Some(&entries))
    }

    /// Whether some backend drains.
    pub fn draining<D: Dataplane>(&self, lb: &Balancer<D>) -> bool {
        lb.backends().any(BackendState::draining)
    }

    /// Ends drains whose deadline passed and, given `entries` (a read of the persistence
    /// maps), drains that have no active client left.
    pub fn end_drains<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        now: Clock,
        entries: Option<&[PersistEntry]>,
    ) -> Result<Effects, ApiError> {
        let draining: Vec<(u32, SystemTime)> = lb
            .backends()
            .filter_map(|b| b.drain_until.map(|u| (b.id, u)))
            .collect();
        if draining.is_empty() {
            return Ok(Effects::default());
        }
        let timeout = self.config.persist_timeout_ticks();
        let clients = entries.map(|e| count_active(lb, e, now.tick, timeout));
        let mut done = Vec::new();
        for (id, until) in draining {
            let n = clients.as_ref().map(|c| c.get(&id).copied().unwrap_or(0));
            if now.wall >= until {
                let left = n.map_or_else(String::new, |n| format!(" with {n} active clients left"));
                done.push((
                    id,
                    format!("drain deadline reached{left} (re-balanced on their next packet)"),
                ));
            } else if n == Some(0) {
                done.push((id, "drained: no active client left".to_owned()));
            }
        }
        let mut effects = Effects::default();
        for (id, why) in done {
            let b = lb.backend(id).expect("listed above").clone();
            let vs = lb.service(b.service).name.clone();
            let in_config = lb
                .service_index(b.service)
                .is_some_and(|i| self.config_weight(i, b.address).is_some());
            let mut next = self.changes.clone();
            next.record_remove(&vs, b.address, in_config);
            // Saved but perhaps not durable: logged by `save`, the drain still ends.
            let _not_durable = self.save(next)?;
            lb.remove_backend(id).expect("exists");
            self.trackers.remove(&id);
            info!(virtual_server = %vs, backend = %b.address, id, "{why}: removed");
            effects.targets_changed = true;
        }
        Ok(effects)
    }

    /// How often drain deadlines are checked (idle clients: every health interval).
    pub fn drain_check_interval(&self) -> Duration {
        self.config.health_check.interval.min(DRAIN_CHECK_MAX)
    }
}

/// Entries (persistence and probation) per backend id that name a backend of their own
/// service and are not idle.
pub(super) fn count_active<D: Dataplane>(
    lb: &Balancer<D>,
    entries: &[PersistEntry],
    now: u32,
    timeout: u32,
) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    // Established and probation entries alike: the data path sends both to their backend.
    for PersistEntry {
        service, value: v, ..
    } in entries
    {
        let Some(b) = lb.backend(v.backend) else {
            continue;
        };
        if b.service == *service && lb_common::is_live(now, v.atime, timeout) {
            *out.entry(v.backend).or_default() += 1;
        }
    }
    out
}
