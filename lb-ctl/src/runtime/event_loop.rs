//! The daemon's side ([`Runtime`]): the controller wired to tokio — the health monitor and
//! control socket tasks, the drain timer, the shared persistence scans waited for off the
//! loop, the slot flag sweep, shared persistence between cluster nodes — and the maps
//! applied after every event.

use std::{sync::Arc, time::SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::{share, sweep, Clock, Controller, Effects, Store, StoreError};
use crate::{
    api::{ApiError, ControlSocket, ErrorCode, Request, Response, SocketError},
    config::Config,
    dataplane::Dataplane,
    health::{HealthError, Monitor, ProbeObserver, Probers, Report, Target},
    state::{ApplyReport, Balancer, StateError},
};

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
            let held = svc.held_slots();
            info!(virtual_server = %svc.name, slots_written = slots, active, held, "Maglev table rebuilt and flipped");
        }
    }
    Ok(report)
}

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
    /// Shared persistence between cluster nodes (`share.rs`).
    Share(share::ShareEvent),
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
    /// Shared persistence, when `share` is configured.
    sharer: Option<share::Sharer>,
    /// The probe observer, for a monitor restarted by a reload of `health_check`.
    observer: Option<ProbeObserver>,
    reports_tx: mpsc::Sender<Vec<Report>>,
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
    /// Reports every shared-persistence round to `observer` (no-op without `share`).
    pub fn observe_shares(&mut self, observer: share::ShareObserver) {
        if let Some(s) = self.sharer.as_mut() {
            s.set_observer(observer);
        }
    }

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
        let prober = Arc::new(Probers::new(config.health_check.probes)?);
        let monitor = Monitor::new(prober, config.health_check, observer.clone());
        let targets = controller.targets(lb);
        let first = monitor.round(&targets).await;
        controller.on_health(lb, &first);
        let (targets_tx, targets_rx) = watch::channel(targets);
        let (reports_tx, reports_rx) = mpsc::channel(16);
        let (requests_tx, requests_rx) = mpsc::channel(16);
        let tasks = vec![
            tokio::spawn(monitor.run(targets_rx, reports_tx.clone())),
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
            sharer: share::Sharer::new(&config, Arc::clone(&scanner)),
            scanner,
            scan: None,
            last_scan: None,
            queries: Vec::new(),
            tasks,
            observer,
            reports_tx,
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
            ev = async { self.sharer.as_mut().expect("guarded by the condition").next().await },
                if self.sharer.is_some() => Event::Share(ev),
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
            Event::Share(ev) => {
                if let Some(s) = self.sharer.as_mut() {
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
                    Request::BackendAdd { dry_run: false, .. }
                        | Request::BackendRemove { dry_run: false, .. }
                        | Request::Reload { dry_run: false }
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
                if effects.health {
                    self.restart_monitor();
                }
                if effects.persistence {
                    if let Some(s) = self.sweeper.as_mut() {
                        s.retime(self.controller.config().persistence_timeout);
                    }
                }
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
    /// Replaces the health monitor (task 0) by one with the controller's `health_check`
    /// (a reload changed it); the trackers keep their counts. A monitor that cannot start
    /// (no probe socket) leaves the old one running, with a warning.
    fn restart_monitor(&mut self) {
        let hc = self.controller.config().health_check;
        let prober = match Probers::new(hc.probes) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                warn!(
                    "reload: the health monitor keeps its old parameters: {}",
                    crate::error_chain(&e)
                );
                return;
            }
        };
        let monitor = Monitor::new(prober, hc, self.observer.clone());
        let task = tokio::spawn(monitor.run(self.targets.subscribe(), self.reports_tx.clone()));
        std::mem::replace(&mut self.tasks[0], task).abort();
        info!(interval = %humantime::format_duration(hc.interval), "health monitor restarted with the reloaded health_check");
    }

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
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.queries.drain(..).partition(|q| outcome.started >= q.2);
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
