//! Runtime management: what `lb-ctl backend add/remove/list`, `status` and `lookup` do to a
//! running daemon, the runtime changes persisted under `state_dir`, drains, and the health
//! verdicts applied to the balancer.
//!
//! [`Controller`] holds the logic and is generic over the [`Dataplane`], so all of it is
//! unit-tested against the in-memory fake; [`Runtime`] wires it to the real world for the
//! daemon (health monitor task, control socket, drain timer).
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
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
// For the test modules (`use super::*`).
#[cfg(test)]
use std::{
    fs,
    path::{Path, PathBuf},
};

use lb_common::TICK_SHIFT;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::{
    api::{
        ApiError, BackendInfo, ControlSocket, ErrorCode, HealthCheckInfo, PersistenceInfo, Reply,
        Request, Response, SocketError, Status, VirtualServerStatus,
    },
    config::{self, Config, Mode, MAX_WEIGHT},
    dataplane::{Dataplane, DataplaneError, PersistEntry, Tier},
    health::{
        HealthError, HealthState, IcmpProber, Monitor, ProbeObserver, Report, Target, Tracker,
    },
    state::{ApplyReport, BackendState, Balancer, StateError},
};

/// Longest accepted drain.
pub const MAX_DRAIN: Duration = Duration::from_secs(30 * 24 * 3600);
/// Drains are checked at least this often.
const DRAIN_CHECK_MAX: Duration = Duration::from_secs(1);

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
pub use store::{AddedBackend, Draining, RuntimeChanges, Store, StoreError, VsChanges, STATE_FILE};
pub(crate) use store::{sync_dir_default, write_atomic, AtomicWriteError};

// ---------------------------------------------------------------------------------------
// The controller

/// What the daemon should do after an event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Resolve next hops now (a backend came up, or was added, and may need its MAC).
    pub resolve: bool,
    /// The health targets changed (backends added or removed).
    pub targets_changed: bool,
}

/// The control logic: requests, health verdicts, drains, runtime changes.
pub struct Controller {
    config: Config,
    store: Store,
    changes: RuntimeChanges,
    trackers: HashMap<u32, Tracker>,
    started: Instant,
    /// The daemon's shared persistence scans: `backend add/remove` read their last result
    /// instead of scanning on the loop. None (unit tests): they read the data path.
    scans: Option<Arc<crate::scan::Scanner>>,
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
        }
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

    /// Loads the saved runtime changes and applies them to `lb` (built from the config, not
    /// yet applied to the maps). Returns one warning per change that could not be applied.
    /// Such a change is *kept* in the file as it is — the config may be wrong only for now
    /// (a virtual server missing or renamed, an address given another role) — and is applied
    /// again at a start whose config allows it. The file is rewritten only when a drain whose
    /// deadline passed while the daemon was down becomes a removal.
    pub fn replay<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let saved = self.store.load()?;
        let file = self.store.path().display().to_string();
        let keep = |what: String| {
            format!("{what}: not applied, kept in {file} for a start whose config allows it (delete it from the file to forget it)")
        };
        let mut warnings = Vec::new();
        let mut kept = saved.clone();
        for (vs, changes) in &saved.virtual_servers {
            if !lb.services().iter().any(|s| s.name == *vs) {
                warnings.push(keep(format!(
                    "runtime changes of virtual server {vs}, which is not in the config"
                )));
                continue;
            }
            // A dual-stack virtual server is a service per family: each address goes to its own.
            let service_of = |lb: &Balancer<D>, address| {
                service_by_name(lb, &self.config, vs, address).expect("the name exists")
            };
            for &address in &changes.removed {
                let service = service_of(lb, address);
                match self.member(lb, service, address) {
                    Some(id) => {
                        lb.remove_backend(id).expect("member exists");
                    }
                    None => warnings.push(keep(format!(
                        "runtime removal of {address} from {vs}, which the config does not list there"
                    ))),
                }
            }
            for added in &changes.added {
                let address = added.address;
                let service = service_of(lb, address);
                if let Err(e) = self.check_new_backend(lb, service, address, added.weight) {
                    // A duplicate in this virtual server is a weight override of a config
                    // backend; anything else (another virtual server's backend too) waits.
                    let own = e.code == ErrorCode::DuplicateBackend
                        && self.member(lb, service, address).is_some();
                    if !own {
                        warnings.push(keep(format!(
                            "runtime backend {address} of {vs} ({})",
                            e.message
                        )));
                        continue;
                    }
                }
                match self.member(lb, service, address) {
                    Some(id) => {
                        lb.set_weight(id, added.weight).expect("member exists");
                    }
                    None => {
                        if let Err(e) = lb.add_backend(service as u32, address, added.weight) {
                            warnings.push(keep(format!("runtime backend {address} of {vs} ({e})")));
                            continue;
                        }
                    }
                }
            }
            for d in &changes.draining {
                let service = service_of(lb, d.address);
                let Some(id) = self.member(lb, service, d.address) else {
                    warnings.push(keep(format!(
                        "drain of {} in {vs}, which is not one of its backends",
                        d.address
                    )));
                    continue;
                };
                let until = match humantime::parse_rfc3339_weak(&d.until) {
                    Ok(t) => t,
                    Err(e) => {
                        warnings.push(format!(
                            "drain of {} in {vs}: bad deadline {:?} ({e}): it ends now",
                            d.address, d.until
                        ));
                        now
                    }
                };
                if until <= now {
                    info!(virtual_server = %vs, backend = %d.address, "drain deadline passed while the daemon was down: removed");
                    lb.remove_backend(id).expect("member exists");
                    kept.record_remove(
                        vs,
                        d.address,
                        self.config_weight(service, d.address).is_some(),
                    );
                } else {
                    lb.set_drain(id, Some(until)).expect("member exists");
                }
            }
        }
        kept.tidy();
        let mut normalized = saved.clone();
        normalized.tidy();
        if kept != normalized {
            match self.store.save(&kept) {
                Ok(()) => {}
                // The new file is in place: what this start did is what a restart replays.
                Err(e @ StoreError::NotDurable { .. }) => warnings.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        self.changes = kept;
        Ok(warnings)
    }

    /// The health-check targets: every backend.
    pub fn targets<D: Dataplane>(&self, lb: &Balancer<D>) -> Vec<Target> {
        lb.backends()
            .map(|b| Target {
                id: b.id,
                addr: b.address,
            })
            .collect()
    }

    /// Feeds one round of probe results to the trackers and records every flip in `lb`
    /// (transitions only; the caller applies). Reports of backends removed meanwhile are
    /// ignored.
    pub fn on_health<D: Dataplane>(&mut self, lb: &mut Balancer<D>, reports: &[Report]) -> Effects {
        let hc = self.config.health_check;
        let mut effects = Effects::default();
        for r in reports {
            let Some(b) = lb.backend(r.id).filter(|b| b.address == r.addr) else {
                continue;
            };
            let vs = lb.service(b.service).name.clone();
            let tracker = self.trackers.entry(r.id).or_default();
            let before = tracker.state();
            if !tracker.observe(r.probe.outcome.is_success(), hc.rise, hc.fall) {
                continue;
            }
            let after = tracker.state();
            lb.set_health(r.id, after).expect("backend exists");
            let why = match &r.probe.error {
                Some(e) => format!("{} ({e})", r.probe.outcome.label()),
                None => r.probe.outcome.label().to_owned(),
            };
            match after {
                HealthState::Up => {
                    info!(virtual_server = %vs, backend = %r.addr, id = r.id, "health: {before} → up (last probe {why} in {:.1?})", r.probe.duration);
                    effects.resolve = true;
                }
                _ => {
                    warn!(virtual_server = %vs, backend = %r.addr, id = r.id, "health: {before} → {after} after {} failed probes (last: {why})", hc.fall)
                }
            }
        }
        effects
    }

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
            let in_config = lb.service_index(b.service).is_some_and(|i| self.config_weight(i, b.address).is_some());
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

    /// Handles one API request. Mutations are validated completely, a new backend gets its
    /// id, then the change is saved, then applied to `lb`; an error at any step up to the
    /// save leaves everything unchanged (a new backend's id is given back). A save that
    /// may not be durable (runtime/store.rs) makes the change and answers with that error.
    pub fn handle<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        request: Request,
        now: Clock,
    ) -> (Response, Effects) {
        let mut effects = Effects::default();
        let result = match request {
            Request::BackendAdd {
                virtual_server,
                address,
                weight,
            } => self.add(lb, &virtual_server, address, weight, &mut effects, now),
            Request::BackendRemove {
                virtual_server,
                address,
                drain,
            } => self.remove(lb, &virtual_server, address, drain, &mut effects, now),
            Request::BackendList | Request::Status => {
                let response = lb
                    .dataplane()
                    .persistence()
                    .map_err(dp_error)
                    .map(|entries| self.answer_with(lb, &request, &entries, now));
                return (response.unwrap_or_else(Response::Error), effects);
            }
            Request::Lookup { client } => self.lookup(lb, client, now),
        };
        (result.into(), effects)
    }

    /// Whether `request` reads the whole persistence map (the daemon answers it with
    /// [`answer_with`](Controller::answer_with) once a scan off the loop is done).
    pub fn needs_scan(request: &Request) -> bool {
        matches!(request, Request::BackendList | Request::Status)
    }

    /// Answers a read-only request with `entries`, a read of the persistence maps.
    pub fn answer_with<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        request: &Request,
        entries: &[PersistEntry],
        now: Clock,
    ) -> Response {
        match request {
            Request::BackendList => Response::Ok(Reply::Backends {
                backends: self.list(lb, entries, now),
            }),
            Request::Status => Response::Ok(Reply::Status(self.status(lb, entries, now))),
            other => Response::Error(ApiError::new(
                ErrorCode::Internal,
                format!("{other:?} is not answered from a persistence scan"),
            )),
        }
    }

    fn add<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        vs: &str,
        address: IpAddr,
        weight: u32,
        effects: &mut Effects,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        let service = self.service(lb, vs, address)?;
        let name = lb.services()[service].name.clone();
        let existing = self.member(lb, service, address);
        let draining = existing
            .and_then(|id| lb.backend(id))
            .is_some_and(BackendState::draining);
        if !draining {
            self.check_new_backend(lb, service, address, weight)?;
        } else {
            check_weight(weight)?;
        }
        let mut next = self.changes.clone();
        next.record_add(&name, address, weight, self.config_weight(service, address));
        // Allocate, then save, then apply: an add that gets no id saves nothing, and one
        // whose change cannot be saved gives its id back.
        let (id, not_durable) = match existing {
            Some(id) => {
                let not_durable = self.save(next)?;
                lb.set_drain(id, None).expect("member");
                lb.set_weight(id, weight).expect("member");
                info!(virtual_server = %name, backend = %address, id, weight, "drain cancelled: back in the table");
                (id, not_durable)
            }
            None => {
                let id = lb
                    .add_backend(service as u32, address, weight)
                    .map_err(|e| match e {
                        StateError::IdsExhausted { .. } => ApiError::new(
                            ErrorCode::CapacityExhausted,
                            format!(
                                "no backend id left for {address} (the BACKENDS map holds {} backends; a removed backend's id is free once the maps have forgotten it); nothing was changed",
                                lb_capacity(lb)
                            ),
                        ),
                        e => internal(e),
                    })?;
                let not_durable = match self.save(next) {
                    Ok(n) => n,
                    Err(e) => {
                        lb.cancel_add(id).expect("added just now, never applied");
                        return Err(e);
                    }
                };
                info!(virtual_server = %name, backend = %address, id, weight, "backend added; it takes clients after its first successful health check");
                effects.targets_changed = true;
                effects.resolve = true;
                (id, not_durable)
            }
        };
        if let Some(e) = not_durable {
            return Err(e);
        }
        let clients = self.active_clients(lb, now).unwrap_or_default();
        let b = lb.backend(id).expect("just added");
        Ok(Reply::BackendAdded {
            backend: self.info(lb, b, &clients),
            drain_cancelled: draining,
        })
    }

    fn remove<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        vs: &str,
        address: IpAddr,
        drain: Option<Duration>,
        effects: &mut Effects,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        let service = self.service(lb, vs, address)?;
        let name = lb.services()[service].name.clone();
        let id = self.member(lb, service, address).ok_or_else(|| {
            let elsewhere = lb
                .backend_by_address(address)
                .map(|b| {
                    format!(
                        " (it is a backend of {})",
                        lb.service(b.service).name
                    )
                })
                .unwrap_or_default();
            ApiError::new(
                ErrorCode::UnknownBackend,
                format!("{address} is not a backend of {name}{elsewhere}"),
            )
        })?;
        if let Some(d) = drain {
            if d > MAX_DRAIN {
                return Err(ApiError::new(
                    ErrorCode::InvalidDrain,
                    format!(
                        "drain {} is longer than the maximum {}",
                        humantime::format_duration(d),
                        humantime::format_duration(MAX_DRAIN)
                    ),
                ));
            }
        }
        let clients = self.active_clients(lb, now).unwrap_or_default();
        let before = self.info(lb, lb.backend(id).expect("member"), &clients);
        let in_config = self.config_weight(service, address).is_some();
        let mut next = self.changes.clone();
        match drain.filter(|d| !d.is_zero()) {
            Some(d) => {
                let until = now.wall + d;
                next.record_drain(&name, address, until);
                let not_durable = self.save(next)?;
                lb.set_drain(id, Some(until)).expect("member");
                let rfc = humantime::format_rfc3339_seconds(until).to_string();
                info!(virtual_server = %name, backend = %address, id, until = %rfc, "draining: no new clients; removed when its clients are idle or at the deadline");
                if let Some(e) = not_durable {
                    return Err(e);
                }
                Ok(Reply::BackendRemoved {
                    backend: before,
                    draining_until: Some(rfc),
                })
            }
            None => {
                next.record_remove(&name, address, in_config);
                let not_durable = self.save(next)?;
                lb.remove_backend(id).expect("member");
                self.trackers.remove(&id);
                effects.targets_changed = true;
                info!(virtual_server = %name, backend = %address, id, "backend removed");
                if let Some(e) = not_durable {
                    return Err(e);
                }
                Ok(Reply::BackendRemoved {
                    backend: before,
                    draining_until: None,
                })
            }
        }
    }

    fn list<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        entries: &[PersistEntry],
        now: Clock,
    ) -> Vec<BackendInfo> {
        let clients = count_active(lb, entries, now.tick, self.config.persist_timeout_ticks());
        lb.services()
            .iter()
            .flat_map(|s| s.members.iter())
            .filter_map(|id| lb.backend(*id))
            .map(|b| self.info(lb, b, &clients))
            .collect()
    }

    fn status<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        entries: &[PersistEntry],
        now: Clock,
    ) -> Status {
        let backends = self.list(lb, entries, now);
        let c = &self.config;
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            config: c.file().to_owned(),
            interfaces: c.interface_names(),
            mode: match c.mode {
                Mode::Nat => "nat",
                Mode::Dsr => "dsr",
            }
            .to_owned(),
            health_check: HealthCheckInfo {
                interval: fmt(c.health_check.interval),
                timeout: fmt(c.health_check.timeout),
                fall: c.health_check.fall,
                rise: c.health_check.rise,
            },
            persistence: PersistenceInfo {
                entries: tier_count(entries, Tier::Established),
                capacity: c.persistence_entries,
                timeout: fmt(c.persistence_timeout),
                probation_entries: tier_count(entries, Tier::Probation),
                probation_capacity: c.probation_entries,
                new_client_rate: c.new_client_rate,
            },
            virtual_servers: lb
                .services()
                .iter()
                .zip(&c.virtual_servers)
                .map(|(s, vs)| {
                    // A dual-stack virtual server is one service per family.
                    let mine: Vec<BackendInfo> = backends
                        .iter()
                        .filter(|b| {
                            b.virtual_server == s.name && b.address.is_ipv4() == vs.vip.is_ipv4()
                        })
                        .cloned()
                        .collect();
                    VirtualServerStatus {
                        name: s.name.clone(),
                        vip: vs.vip,
                        ports: vs.ports.clone(),
                        tcp_ports: vs.tcp_ports.clone(),
                        esp: vs.esp,
                        active: mine.iter().filter(|b| b.ring_slots > 0).count(),
                        backends: mine,
                    }
                })
                .collect(),
        }
    }

    fn lookup<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        client: IpAddr,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        lookup::lookup(&self.config, lb, client, now)
    }

    // -- helpers -----------------------------------------------------------------------

    /// Saves `next` as the runtime changes (the store's write order: runtime/store.rs).
    /// `Err`: nothing was saved, the caller changes nothing. `Ok(None)`: saved.
    /// `Ok(Some(e))`: the file is replaced but may not be durable (the directory fsync
    /// failed): the caller makes the change — the file a restart reads has it — and answers
    /// with `e`.
    fn save(&mut self, next: RuntimeChanges) -> Result<Option<ApiError>, ApiError> {
        if next == self.changes {
            return Ok(None);
        }
        match self.store.save(&next) {
            Ok(()) => {
                self.changes = next;
                Ok(None)
            }
            Err(e @ StoreError::NotDurable { .. }) => {
                warn!("{e}");
                self.changes = next;
                Ok(Some(ApiError::new(ErrorCode::Internal, e.to_string())))
            }
            Err(e) => Err(ApiError::new(
                ErrorCode::Internal,
                format!("{e}; nothing was changed"),
            )),
        }
    }

    /// Service index of `vs`, a name or a VIP, for a backend at `address` (see
    /// [`service_by_name`]).
    fn service<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        vs: &str,
        address: IpAddr,
    ) -> Result<usize, ApiError> {
        let by_name = service_by_name(lb, &self.config, vs, address);
        let by_vip = || {
            let ip: IpAddr = vs.parse().ok()?;
            self.config.virtual_servers.iter().position(|v| v.vip == ip)
        };
        by_name.or_else(by_vip).ok_or_else(|| {
            let known: Vec<String> = self
                .config
                .virtual_servers
                .iter()
                .map(|v| format!("{} {}", v.name, v.vip))
                .collect();
            ApiError::new(
                ErrorCode::UnknownVirtualServer,
                format!("no virtual server {vs:?} (known: {})", known.join(", ")),
            )
        })
    }

    /// Id of `address` among `service`'s backends.
    fn member<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        service: usize,
        address: IpAddr,
    ) -> Option<u32> {
        lb.services()[service]
            .members
            .iter()
            .copied()
            .find(|id| lb.backend(*id).is_some_and(|b| b.address == address))
    }

    fn config_weight(&self, service: usize, address: IpAddr) -> Option<u32> {
        self.config.virtual_servers[service]
            .backends
            .iter()
            .find(|b| b.address == address)
            .map(|b| b.weight)
    }

    /// The config's rules for a backend (`config::validate`), against the running state.
    fn check_new_backend<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        service: usize,
        address: IpAddr,
        weight: u32,
    ) -> Result<(), ApiError> {
        let vs = &self.config.virtual_servers[service];
        let invalid = |why: String| Err(ApiError::new(ErrorCode::InvalidAddress, why));
        if let Some(why) = config::address_problem(address) {
            return invalid(why);
        }
        if address.is_ipv4() != vs.vip.is_ipv4() {
            return invalid(format!(
                "{address} is not of the address family of {} ({})",
                vs.name, vs.vip
            ));
        }
        if let Some(owner) = self
            .config
            .virtual_servers
            .iter()
            .find(|v| v.vip == address)
        {
            return invalid(format!(
                "{address} is the VIP of virtual server {}",
                owner.name
            ));
        }
        if let Some(b) = lb.backend_by_address(address) {
            let owner = &lb.service(b.service).name;
            let msg = if lb.service_index(b.service) == Some(service) {
                format!("{address} is already a backend of {owner} (id {})", b.id)
            } else {
                format!(
                    "{address} is already a backend of {owner}; a backend address may serve one virtual server"
                )
            };
            return Err(ApiError::new(ErrorCode::DuplicateBackend, msg));
        }
        check_weight(weight)
    }

    /// Active persisted clients per backend id (entries of the backend's own service that
    /// the data path would still honour). In the daemon: from the last shared scan, however
    /// old (none yet: no count) — `backend add/remove` never scan on the event loop.
    fn active_clients<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        now: Clock,
    ) -> Result<HashMap<u32, u64>, ApiError> {
        let timeout = self.config.persist_timeout_ticks();
        if let Some(scans) = &self.scans {
            let last = scans.latest().and_then(|o| o.result.ok());
            return Ok(last.map_or_else(HashMap::new, |s| {
                count_active(lb, &s.entries, now.tick, timeout)
            }));
        }
        let entries = lb.dataplane().persistence().map_err(dp_error)?;
        Ok(count_active(lb, &entries, now.tick, timeout))
    }

    fn info<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        b: &BackendState,
        clients: &HashMap<u32, u64>,
    ) -> BackendInfo {
        let svc = lb.service(b.service);
        let state = if b.in_ring() {
            "active"
        } else if b.draining() && b.usable() {
            "draining"
        } else {
            "unusable"
        };
        let in_config = lb.service_index(b.service).is_some_and(|i| self.config_weight(i, b.address).is_some());
        BackendInfo {
            virtual_server: svc.name.clone(),
            address: b.address,
            id: b.id,
            weight: b.weight,
            state: state.to_owned(),
            health: b.health,
            next_hop: b.next_hop.map(|nh| {
                let m = nh.mac;
                let dev = lb
                    .iface(nh.port)
                    .map_or("?", |i| i.name.as_str());
                format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} on {dev}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )
            }),
            drain_until: b
                .drain_until
                .map(|u| humantime::format_rfc3339_seconds(u).to_string()),
            ring_slots: svc
                .active_table()
                .iter()
                .filter(|&&v| v & lb_common::RING_BACKEND_MASK == b.id)
                .count() as u32,
            clients: clients.get(&b.id).copied().unwrap_or(0),
            origin: if in_config { "config" } else { "runtime" }.to_owned(),
        }
    }
}

/// The service named `name` for a backend at `address`: of a dual-stack virtual server, the
/// one of `address`'s family (the first of that name when there is none, so the family check
/// reports the mismatch).
fn service_by_name<D: Dataplane>(
    lb: &Balancer<D>,
    config: &Config,
    name: &str,
    address: IpAddr,
) -> Option<usize> {
    let named = |i: &usize| lb.services()[*i].name == name;
    (0..lb.services().len())
        .filter(named)
        .find(|&i| config.virtual_servers[i].vip.is_ipv4() == address.is_ipv4())
        .or_else(|| (0..lb.services().len()).find(named))
}

/// Entries (persistence and probation) per backend id that name a backend of their own
/// service and are not idle.
fn count_active<D: Dataplane>(
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

/// Entries of `tier` (idle ones included, until the LRU recycles them).
fn tier_count(entries: &[PersistEntry], tier: Tier) -> u64 {
    entries.iter().filter(|e| e.tier == tier).count() as u64
}

fn lb_capacity<D: Dataplane>(lb: &Balancer<D>) -> usize {
    lb.capacity() as usize - 1
}

fn check_weight(weight: u32) -> Result<(), ApiError> {
    if weight == 0 || weight > MAX_WEIGHT {
        return Err(ApiError::new(
            ErrorCode::InvalidWeight,
            format!("weight {weight} is outside 1..={MAX_WEIGHT}"),
        ));
    }
    Ok(())
}

fn internal(e: StateError) -> ApiError {
    ApiError::new(ErrorCode::Internal, crate::error_chain(&e))
}

fn dp_error(e: DataplaneError) -> ApiError {
    ApiError::new(ErrorCode::Internal, crate::error_chain(&e))
}

/// Applies `lb` to the maps and logs every flip.
pub fn apply_and_log<D: Dataplane>(lb: &mut Balancer<D>) -> Result<ApplyReport, StateError> {
    let report = lb.apply()?;
    for (service, slots) in &report.flips {
        let svc = lb.service(*service);
        let active = lb
            .backends()
            .filter(|b| b.service == *service && b.in_ring())
            .count();
        if active == 0 {
            warn!(virtual_server = %svc.name, slots_written = slots, "Maglev table flipped with no usable backend: packets to this virtual server are dropped (no_backend)");
        } else {
            info!(virtual_server = %svc.name, slots_written = slots, active, "Maglev table rebuilt and flipped");
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// The daemon's side: tasks and channels

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("applying the runtime changes: {0}")]
    State(Box<StateError>),
}

/// Something for the daemon's loop.
pub enum Event {
    Health(Vec<Report>),
    Request(Request, oneshot::Sender<Response>),
    /// Time to check drain deadlines (and maybe to start a persistence scan).
    DrainCheck,
    /// A shared persistence scan (for drains, `backend list`, `status`) is at hand.
    Scanned(crate::scan::Outcome),
    /// The slot flag sweep (`sweep.rs`).
    Sweep(sweep::SweepEvent),
}

/// A wait for the shared scanner's result (`crate::scan::Scanner::get`).
type Scan = tokio::task::JoinHandle<crate::scan::Outcome>;

/// The controller plus its tasks: the health monitor and the control socket.
pub struct Runtime {
    pub controller: Controller,
    targets: watch::Sender<Vec<Target>>,
    reports: mpsc::Receiver<Vec<Report>>,
    requests: mpsc::Receiver<(Request, oneshot::Sender<Response>)>,
    drain_tick: tokio::time::Interval,
    /// The shared persistence scanner (also the metrics', the sweep's and the controller's).
    scanner: Arc<crate::scan::Scanner>,
    /// The wait for a scan in flight, and when the last one for drains was asked for.
    /// Scans run off the loop: for drains at most once per health interval, and for
    /// `backend list`/`status`, which wait in `queries` (with the oldest scan start they
    /// accept) for one that started after they arrived.
    scan: Option<Scan>,
    last_scan: Option<tokio::time::Instant>,
    queries: Vec<(Request, oneshot::Sender<Response>, std::time::Instant)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The slot flag sweep, when `slot_fast_path` is on.
    sweeper: Option<sweep::Sweeper>,
}

impl Controller {
    /// The daemon's controller: replays the runtime changes saved under `state_dir` into
    /// `lb` (just built from the config, nothing applied yet). Call before
    /// `Balancer::adopt`, so adopted ids follow the replayed backends' addresses; no health
    /// tracker exists yet, so renumbering is harmless.
    pub fn for_daemon<D: Dataplane>(
        config: &Config,
        lb: &mut Balancer<D>,
    ) -> Result<Self, RuntimeError> {
        let mut controller = Controller::new(config.clone(), Store::new(&config.state_dir));
        for w in controller.replay(lb, SystemTime::now())? {
            warn!("{w}");
        }
        if !controller.changes().virtual_servers.is_empty() {
            info!(file = %controller.store.path().display(), "runtime backend changes re-applied");
        }
        Ok(controller)
    }
}

impl Runtime {
    /// Reports every slot flag sweep to `observer` (no-op when the fast path is off).
    pub fn observe_sweeps(&mut self, observer: sweep::SweepObserver) {
        if let Some(s) = self.sweeper.as_mut() {
            s.set_observer(observer);
        }
    }

    /// The shared persistence scanner, for the metrics (`Metrics::share_scans`).
    pub fn scanner(&self) -> Arc<crate::scan::Scanner> {
        Arc::clone(&self.scanner)
    }

    /// Runs one health round over every backend and records the verdicts in `lb` (the
    /// caller applies), binds the control socket and starts the monitor and the socket
    /// server. Call before the maps are first applied and the program attached, so the first
    /// packet meets checked backends: start-up costs at most one probe timeout.
    ///
    /// `observer` receives every probe (for the metrics endpoint).
    pub async fn start<D: Dataplane>(
        mut controller: Controller,
        lb: &mut Balancer<D>,
        observer: Option<ProbeObserver>,
    ) -> Result<Self, RuntimeError> {
        let config = controller.config().clone();
        // The socket first: a second daemon with the same socket stops here, before it
        // probes or writes anything.
        let mut socket = ControlSocket::bind(&config.control_socket)?;
        let scanner = crate::scan::Scanner::new(
            lb.dataplane()
                .persistence_scan()
                .map_err(|e| RuntimeError::State(Box::new(StateError::Dataplane(e))))?,
        );
        controller.share_scans(Arc::clone(&scanner));
        info!(socket = %socket.path().display(), "control socket ready");
        let prober = Arc::new(IcmpProber::new()?);
        let monitor = Monitor::new(prober, config.health_check, observer);
        let targets = controller.targets(lb);
        let first = monitor.round(&targets).await;
        controller.on_health(lb, &first);
        let (targets_tx, targets_rx) = watch::channel(targets);
        let (reports_tx, reports_rx) = mpsc::channel(16);
        let (requests_tx, requests_rx) = mpsc::channel(16);
        let tasks = vec![
            tokio::spawn(monitor.run(targets_rx, reports_tx)),
            tokio::spawn(async move { socket.serve(requests_tx).await }),
        ];
        let mut drain_tick = tokio::time::interval(controller.drain_check_interval());
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            controller,
            targets: targets_tx,
            reports: reports_rx,
            requests: requests_rx,
            drain_tick,
            sweeper: sweep::Sweeper::new(&config, Arc::clone(&scanner)),
            scanner,
            scan: None,
            last_scan: None,
            queries: Vec::new(),
            tasks,
        })
    }

    /// The next thing to handle (cancel-safe: use in `select!`).
    pub async fn next_event(&mut self) -> Event {
        // The drain timer never ends, so a closed channel (its branch disabled) cannot leave
        // the select without a branch.
        tokio::select! {
            Some(r) = self.reports.recv() => Event::Health(r),
            Some((req, reply)) = self.requests.recv() => Event::Request(req, reply),
            _ = self.drain_tick.tick() => Event::DrainCheck,
            ev = async { self.sweeper.as_mut().expect("guarded by the condition").next().await },
                if self.sweeper.is_some() => Event::Sweep(ev),
            done = async { self.scan.as_mut().expect("guarded by the condition").await },
                if self.scan.is_some() =>
            {
                self.scan = None;
                Event::Scanned(
                    done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
                )
            }
        }
    }

    /// Handles an event: records it in `lb`, applies the maps, answers requests. Returns
    /// whether next hops should be resolved now.
    pub fn handle<D: Dataplane>(&mut self, lb: &mut Balancer<D>, event: Event) -> bool {
        let effects = match event {
            Event::Health(reports) => self.controller.on_health(lb, &reports),
            Event::Sweep(ev) => {
                if let Some(s) = self.sweeper.as_mut() {
                    s.handle(lb, ev);
                }
                return false;
            }
            Event::DrainCheck => {
                let effects = self
                    .controller
                    .end_drains(lb, Clock::now(), None)
                    .unwrap_or_else(|e| {
                        warn!("ending drains: {e}");
                        Effects::default()
                    });
                self.maybe_scan(lb);
                effects
            }
            Event::Scanned(outcome) => self.scanned(lb, outcome),
            Event::Request(request, reply) if Controller::needs_scan(&request) => {
                // A scan that started after the request: what it answers includes every
                // client seen before the operator asked (the next scan, shared by every
                // request waiting meanwhile).
                let not_before = std::time::Instant::now();
                self.queries.push((request, reply, not_before));
                if self.scan.is_none() {
                    self.start_scan(not_before);
                }
                return false;
            }
            Event::Request(request, reply) => {
                let mutating = matches!(
                    request,
                    Request::BackendAdd { .. } | Request::BackendRemove { .. }
                );
                let (mut response, effects) = self.controller.handle(lb, request, Clock::now());
                // Applied after a refusal too (nothing changed: nothing is written), so that a
                // change made but answered with an error (saved, not durable) is not left
                // waiting for the next update.
                if mutating {
                    if let Err(e) = apply_and_log(lb) {
                        let e = crate::error_chain(&e);
                        if matches!(response, Response::Ok(_)) {
                            response = Response::Error(ApiError::new(
                                ErrorCode::Internal,
                                format!(
                                    "the change is saved but writing the maps failed (retried with the next update): {e}"
                                ),
                            ));
                        } else {
                            warn!("updating the maps failed (retried with the next update): {e}");
                        }
                    }
                }
                let _ = reply.send(response);
                if effects.targets_changed {
                    self.targets.send_replace(self.controller.targets(lb));
                }
                return effects.resolve;
            }
        };
        if effects.targets_changed {
            self.targets.send_replace(self.controller.targets(lb));
        }
        if let Err(e) = apply_and_log(lb) {
            warn!(
                "updating the maps failed (retried with the next update): {}",
                crate::error_chain(&e)
            );
        }
        effects.resolve
    }
}

impl Runtime {
    /// Starts a persistence scan when something drains, none is running, and the last one
    /// started at least a health interval ago.
    fn maybe_scan<D: Dataplane>(&mut self, lb: &Balancer<D>) {
        let every = self.controller.config().health_check.interval;
        let due = self.last_scan.is_none_or(|t| t.elapsed() >= every);
        if self.scan.is_some() || !due || !self.controller.draining(lb) {
            return;
        }
        self.last_scan = Some(tokio::time::Instant::now());
        self.start_scan(crate::scan::ago(every));
    }

    /// Waits (off the loop) for a shared scan started at or after `not_before`.
    fn start_scan(&mut self, not_before: std::time::Instant) {
        let scanner = Arc::clone(&self.scanner);
        self.scan = Some(tokio::spawn(async move { scanner.get(not_before).await }));
    }

    /// A shared scan is at hand: answers the queries it is recent enough for (asks again
    /// for the others), and ends drains.
    fn scanned<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        outcome: crate::scan::Outcome,
    ) -> Effects {
        let now = Clock::now();
        let scanned = match outcome.result {
            Ok(s) => s,
            Err(e) => {
                let message = crate::error_chain(&*e);
                warn!("reading the persistence map: {message}");
                for (_, reply, _) in self.queries.drain(..) {
                    let _ = reply.send(Response::Error(ApiError::new(
                        ErrorCode::Internal,
                        message.clone(),
                    )));
                }
                return Effects::default();
            }
        };
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .queries
            .drain(..)
            .partition(|q| outcome.started >= q.2);
        for (request, reply, _) in ready {
            let _ = reply.send(
                self.controller
                    .answer_with(lb, &request, &scanned.entries, now),
            );
        }
        self.queries = waiting;
        if let Some(oldest) = self.queries.iter().map(|q| q.2).min() {
            self.start_scan(oldest);
        }
        // A truncated scan may have missed a live client: only deadlines end drains then.
        let entries = (!scanned.truncated()).then_some(scanned.entries.as_slice());
        self.controller
            .end_drains(lb, now, entries)
            .unwrap_or_else(|e| {
                warn!("ending drains: {e}");
                Effects::default()
            })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod dual_stack_tests;
mod lookup;
mod sweep;
pub use sweep::SweepObserver;
#[cfg(test)]
mod tests;
