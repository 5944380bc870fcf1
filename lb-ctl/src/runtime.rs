//! Runtime management: what `lb-ctl backend add/remove/list`, `status` and `lookup` do to a
//! running daemon, the runtime changes persisted under `state_dir`, drains, and the health
//! verdicts applied to the balancer.
//!
//! [`Controller`] holds the logic and is generic over the
//! [`Dataplane`](crate::dataplane::Dataplane), so all of it is unit-tested against the
//! in-memory fake; [`Runtime`] wires it to the real world for the daemon (health monitor
//! task, control socket, drain timer).
//!
//! ## Modules
//!
//! * `runtime.rs` (this file): [`Clock`], [`Effects`] and the [`Controller`] itself.
//! * `runtime/requests.rs`: the requests — `backend add/remove/list`, `status`, `lookup`.
//! * `runtime/changes.rs`: the runtime changes replayed at start and saved before a
//!   request's change takes effect, and the checks of what a change names.
//! * `runtime/health_verdicts.rs`: health verdicts applied to the balancer.
//! * `runtime/drain.rs`: drains — start limits, deadlines, idle-client counting, the end.
//! * `runtime/event_loop.rs`: [`Runtime`], the daemon's side — tokio tasks, the control
//!   socket, the drain timer, persistence scans off the loop.
//! * `runtime/reload.rs`: `reload` and SIGHUP — the config file read again, the difference
//!   applied; `runtime/restart_only.rs`: the keys it refuses; `runtime/blast.rs`: the blast
//!   radius of a change (dry runs).
//! * `runtime/store.rs`: the runtime changes file; `runtime/lookup.rs`: `lookup`'s answer;
//!   `runtime/sweep.rs`: the slot flag sweep.
//!
//! ## Runtime changes (`state_dir/backends.json`)
//!
//! The config file stays the operator's: runtime changes are kept beside it as a difference,
//! per virtual server *name*: backends `added` (address, weight — an address the config
//! already lists is a weight override), config backends `removed`, and backends `draining`
//! (address, RFC 3339 deadline). The file, its versions and its writing are in
//! `runtime/store.rs` ([`Store`]). Every change is written before it takes effect, atomically
//! (temporary file, fsync, rename, fsync of the directory): a crash leaves the old or the new
//! file, never a mix; a request whose change cannot be saved fails and changes nothing (an
//! added backend's id is allocated first and given back); a failed fsync of the directory
//! after the rename is answered as an error saying the change is made but may not be durable.
//!
//! At start the config is loaded as usual (backend ids 1, 2, … in file order), then the file
//! is replayed: removals, then additions, then drains (a drain whose deadline passed while
//! the daemon was down completes at once). Entries the config does not allow now (virtual
//! server missing, address now a VIP or another virtual server's backend, removed backend not
//! in the config) are not applied but *kept* in the file, with a warning at every start: the
//! config may be wrong only for now, and an operator's change is never dropped on the
//! daemon's own. A corrupt or unreadable file, or one of an unknown version, stops the daemon
//! with its path and the reason — it is never silently discarded.
//!
//! ## Drain
//!
//! `backend remove --drain D` takes the backend out of the Maglev table (no new client lands
//! there) but leaves it usable, so the data path keeps sending its persisted clients to it.
//! Every health interval the daemon reads `PERSIST_V4` and `PERSIST_V6` and counts,
//! per draining backend, the entries that still name it and are not idle — exactly the
//! data path's own test: `now − atime ≤ persistence_timeout` in 2^30 ns ticks of
//! `CLOCK_MONOTONIC_COARSE` (what `bpf_ktime_get_coarse_ns` reads). When none is left, or
//! the deadline has passed, the backend is removed (usable flag cleared, id freed): any
//! client still sending is re-balanced on its next packet. An IKEv2 client that is connected
//! sends at least NAT-T keepalives or DPD, so "idle for `persistence_timeout`" means gone.
//! The entries come from the daemon's shared persistence scan ([`crate::scan::Scanner`]: one
//! bounded batch walk at a time on a thread of its own, shared with scrapes, `backend list`,
//! `status` and the slot flag sweep), at most one health interval old; the loop only waits
//! for it as an event, so it keeps serving health reports and requests meanwhile. A
//! truncated scan (stopped at `max_entries` visits under heavy churn) ends no drain by idle
//! clients. Deadlines are checked every second without a scan.
//!
//! `backend add` of a draining backend cancels the drain (it rejoins the table).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use lb_common::TICK_SHIFT;

use crate::{
    api::{ApiError, ErrorCode},
    config::Config,
    dataplane::DataplaneError,
    health::Trackers,
};

/// Now, as both clocks that matter see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Wall clock: drain deadlines (persisted, so they survive a restart).
    pub wall: SystemTime,
    /// `CLOCK_MONOTONIC_COARSE >> TICK_SHIFT`: the data path's persistence clock.
    pub tick: u32,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC_COARSE exists on
        // every kernel with BPF (it is what bpf_ktime_get_coarse_ns reads).
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        Self {
            wall: SystemTime::now(),
            tick: (ns >> TICK_SHIFT) as u32,
        }
    }
}

/// Length of a tick.
const TICK: Duration = Duration::from_nanos(1 << TICK_SHIFT);

// ---------------------------------------------------------------------------------------
// Persisted runtime changes: `runtime/store.rs`

mod store;
pub(crate) use store::{sync_dir_default, write_atomic, AtomicWriteError};
pub use store::{AddedBackend, Draining, RuntimeChanges, Store, StoreError, VsChanges, STATE_FILE};

// ---------------------------------------------------------------------------------------
// The controller

/// What the daemon should do after an event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Resolve next hops now (a backend came up, or was added, and may need its MAC).
    pub resolve: bool,
    /// The health targets changed (backends added or removed).
    pub targets_changed: bool,
    /// `health_check` changed (a reload): the monitor restarts with the controller's config.
    pub health: bool,
    /// `persistence_timeout` changed (a reload swapped the program): the sweep follows it.
    pub persistence: bool,
}

/// The control logic: requests, health verdicts, drains, runtime changes.
pub struct Controller {
    config: Config,
    store: Store,
    changes: RuntimeChanges,
    trackers: HashMap<u32, Trackers>,
    started: Instant,
    /// The daemon's shared persistence scans: `backend add/remove` read their last result
    /// instead of scanning on the loop. None (unit tests): they read the data path.
    scans: Option<Arc<crate::scan::Scanner>>,
    /// The announced routes (`announce`), for `status`; None without it.
    announced: Option<crate::announce::Shared>,
}

impl Controller {
    /// A controller for `config` with runtime changes saved in `store`. Nothing is read or
    /// written until [`replay`](Controller::replay).
    pub fn new(config: Config, store: Store) -> Self {
        Self {
            config,
            store,
            changes: RuntimeChanges::default(),
            trackers: HashMap::new(),
            started: Instant::now(),
            scans: None,
            announced: None,
        }
    }

    /// `status` reports the routes of `view` from now on (`crate::announce`).
    pub fn share_announcements(&mut self, view: crate::announce::Shared) {
        self.announced = Some(view);
    }

    /// `backend add/remove` count clients from `scanner`'s last result from now on.
    pub fn share_scans(&mut self, scanner: Arc<crate::scan::Scanner>) {
        self.scans = Some(scanner);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn changes(&self) -> &RuntimeChanges {
        &self.changes
    }
}

fn dp_error(e: DataplaneError) -> ApiError {
    ApiError::new(ErrorCode::Internal, crate::error_chain(&e))
}

// ---------------------------------------------------------------------------------------
// The controller's parts and the daemon's side (see "Modules" above)

mod blast;
mod changes;
mod drain;
mod event_loop;
mod health_verdicts;
mod reload;
mod requests;
mod restart_only;
pub mod share;
pub use drain::MAX_DRAIN;
pub use event_loop::{apply_and_log, Event, Runtime, RuntimeError};
pub use restart_only::restart_only;

#[cfg(test)]
mod dual_stack_tests;
mod lookup;
mod sweep;
pub use sweep::SweepObserver;
#[cfg(test)]
mod tests;
