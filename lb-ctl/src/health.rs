//! Health checks: every backend is probed with every configured probe type
//! (`health_check.probes`, default `[icmp, ike]`) every `health_check.interval`, each probe
//! bounded by `health_check.timeout`:
//!
//! * **icmp** — ICMP echo (ICMPv6 for IPv6 backends): the server's stack is up;
//! * **ike** — an IKE_SA_INIT request to UDP 500 (`health/ike.rs`): its IKE service answers.
//!   A ping alone says a server is up while its charon or RRAS is dead, and clients sent there
//!   fail (Windows error 809).
//!
//! ## Verdicts (NetScaler PING monitor semantics)
//!
//! A [`Tracker`] per backend *and probe type* turns that type's results into a
//! [`HealthState`] with consecutive counts, as pingora's `observe_health`:
//! [`Tracker::observe`] returns `true` only when the state flips. A backend's [`Trackers`]
//! combine them: it is **Up** only while every configured type is Up, **Down** as soon as
//! one is Down, **Unknown** otherwise. The daemon acts on flips of the combined state only
//! (one table rebuild per transition, one log line naming the probe type that decided it).
//!
//! * **Unknown** — a backend nobody has probed yet (daemon start, `lb-ctl backend add`).
//!   It is *not* usable: no packet goes to a server ikelb has not seen alive. The first
//!   successful probe makes it **Up** at once (NetScaler and F5 bring a new service/pool
//!   member up on the first successful probe; `rise` damps a server that *was* failing, it is
//!   not a warm-up). `fall` consecutive failures make it **Down**.
//! * **Up** → **Down** after `fall` consecutive failures.
//! * **Down** → **Up** after `rise` consecutive successes.
//!
//! The daemon probes every backend once *before* it attaches the program, and probes a
//! backend added at runtime at once (not at the next interval), so start-up and `backend
//! add` cost one round trip, not one interval. A backend is usable by the data path when it
//! is Up *and* its next hop (MAC) is resolved (see `state::BackendState::usable`).
//!
//! ## What counts as alive
//!
//! For `ike`, a well-formed IKE_SA_INIT response to our request, or its N(INVALID_KE_PAYLOAD),
//! N(NO_PROPOSAL_CHOSEN) or N(COOKIE) (`health/ike/message.rs`); an ICMP port unreachable
//! (`ECONNREFUSED` on the probe's connected socket) or any other datagram fails it at once.
//!
//! For `icmp`, only an ICMP **Echo Reply** (type 0; ICMPv6 type 129) *from the probed
//! address* carrying our random identifier, our sequence number and the random token of that
//! very request is a success ([`packet::classify`]). An ICMP error quoting the request (destination
//! unreachable from a router, time exceeded, …) fails the probe at once, with the reason in
//! [`Probe::error`] (`ICMP destination unreachable (host unreachable) from 10.0.0.254`) and
//! the `error` result. Anything else is ignored and the probe waits on: a forged or stale
//! reply neither brings a backend up nor cuts a live backend's probe short. A probe also fails
//! on timeout or when it cannot be sent. Health-check traffic runs between the gateway's own
//! address and the backend: the XDP program passes it untouched both ways (ICMP is no
//! service protocol, and the IKE probe's UDP is not addressed to a VIP nor answered to a
//! client; replies come back as `pass/not_vip`-or-`pass/not_client`, never rewritten).
//!
//! ## Pieces
//!
//! * [`Prober`]: one probe of one type of one address; [`Probers`] (`kind.rs`) dispatches to
//!   [`IcmpProber`] (`icmp.rs`: own raw or ping sockets, one per family) and [`IkeProber`]
//!   (`ike.rs`: a connected UDP socket per probe); tests use scripted fakes.
//! * [`packet`]: the echo request and the classification of what comes back;
//!   `ike/message.rs` the same for IKE.
//! * [`Monitor`]: probes a set of [`Target`]s every interval (and new targets at once) and
//!   sends each round's [`Report`]s to the daemon's loop, which owns the trackers and the
//!   balancer (`runtime::Controller::on_health`).
//!
//! ## For the metrics endpoint (`ikelb_health_check_duration_seconds{backend,probe}`,
//! `ikelb_health_checks_total{backend,probe,result}`)
//!
//! Every probe the monitor completes is handed to the optional [`ProbeObserver`] given to
//! [`Monitor::new`] — `observer(backend_address, kind, &probe)` — *as it completes*, from the
//! monitor task. Use `probe.duration.as_secs_f64()` for the histogram, `kind.label()`
//! (`icmp` | `ike`) for the probe label and `probe.outcome.label()` (`success` | `timeout` |
//! `error`) for the result label; the `backend` label is the address
//! (`backend.to_string()`). The observer must not block.
//! Current up/down state for `ikelb_backend_up{vs,backend}` is
//! `BackendState::health` / `BackendState::usable()` in the balancer.

use std::{collections::HashSet, future::Future, net::IpAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::MissedTickBehavior,
};

use crate::config::HealthCheck;

mod icmp;
mod ike;
mod kind;
pub mod packet;

pub use icmp::IcmpProber;
pub use ike::{IkeProber, IKE_PORT};
pub use kind::{ProbeKind, ProbeKinds, Probers};

/// What the health checks say about a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not probed successfully yet, and not `fall` failures either: not usable.
    #[default]
    Unknown,
    Up,
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Consecutive-result counter of one backend (see the module doc for the transitions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    state: HealthState,
    /// Consecutive results that argue for leaving `state` (failures while Up/Unknown,
    /// successes while Down).
    consecutive: u32,
}

impl Tracker {
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Records one probe result; `true` when the state flipped (pingora `observe_health`).
    pub fn observe(&mut self, success: bool, rise: u32, fall: u32) -> bool {
        let next = match (self.state, success) {
            (HealthState::Unknown, true) => Some(HealthState::Up),
            (HealthState::Up, true) | (HealthState::Down, false) => {
                self.consecutive = 0;
                None
            }
            (HealthState::Unknown | HealthState::Up, false) => {
                self.consecutive += 1;
                (self.consecutive >= fall).then_some(HealthState::Down)
            }
            (HealthState::Down, true) => {
                self.consecutive += 1;
                (self.consecutive >= rise).then_some(HealthState::Up)
            }
        };
        match next {
            Some(state) => {
                self.state = state;
                self.consecutive = 0;
                true
            }
            None => false,
        }
    }
}

/// One backend's trackers, one per probe type, with their own `rise`/`fall` counts, and the
/// verdict they make together: **Up** only while every enabled type is Up, **Down** as soon
/// as one is Down, **Unknown** otherwise. A server that answers ping while its IKE service is
/// dead is Down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trackers {
    by_kind: [Tracker; ProbeKind::ALL.len()],
}

impl Trackers {
    /// The state of probe type `kind` alone.
    pub fn of(&self, kind: ProbeKind) -> HealthState {
        self.by_kind[kind.index()].state()
    }

    /// The backend's state under the enabled `kinds`.
    pub fn state(&self, kinds: ProbeKinds) -> HealthState {
        let mut all_up = true;
        for k in kinds.iter() {
            match self.of(k) {
                HealthState::Down => return HealthState::Down,
                HealthState::Unknown => all_up = false,
                HealthState::Up => {}
            }
        }
        if all_up && !kinds.is_empty() {
            HealthState::Up
        } else {
            HealthState::Unknown
        }
    }

    /// Records one probe of type `kind`; the backend's new state under `kinds` when it
    /// changed.
    pub fn observe(
        &mut self,
        kinds: ProbeKinds,
        kind: ProbeKind,
        success: bool,
        rise: u32,
        fall: u32,
    ) -> Option<HealthState> {
        let before = self.state(kinds);
        if !self.by_kind[kind.index()].observe(success, rise, fall) {
            return None;
        }
        let after = self.state(kinds);
        (after != before).then_some(after)
    }
}

/// How one probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeOutcome {
    /// Our echo reply came back within the timeout: ICMP type 0 (ICMPv6 129) from the probed
    /// address with our identifier, sequence number and payload (see [`packet`]).
    Success,
    /// Nothing of ours came back within the timeout.
    Timeout,
    /// The probe could not be sent, or an ICMP error about it came back (destination
    /// unreachable, time exceeded, …): [`Probe::error`] says which, and from where.
    Error,
}

impl ProbeOutcome {
    /// Value of the `result` label of `ikelb_health_checks_total`.
    pub fn label(self) -> &'static str {
        match self {
            ProbeOutcome::Success => "success",
            ProbeOutcome::Timeout => "timeout",
            ProbeOutcome::Error => "error",
        }
    }

    pub fn is_success(self) -> bool {
        self == ProbeOutcome::Success
    }
}

/// One completed probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub outcome: ProbeOutcome,
    /// From sending the echo request to the reply, the timeout or the error.
    pub duration: Duration,
    /// What went wrong, for the log (`None` on success and timeout).
    pub error: Option<String>,
}

/// Sends one probe. `Send + Sync` so the monitor can run probes concurrently.
pub trait Prober: Send + Sync + 'static {
    /// Probes `addr` with a probe of type `kind`, giving up after `timeout`. A prober of one
    /// type ([`IcmpProber`], [`IkeProber`]) ignores `kind`; [`Probers`] dispatches on it.
    fn probe(
        &self,
        kind: ProbeKind,
        addr: IpAddr,
        timeout: Duration,
    ) -> impl Future<Output = Probe> + Send;
}

/// Why the ICMP prober could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("opening the {kind} socket for health checks (needs CAP_NET_RAW, or a ping_group_range that includes our group): {source}")]
    Socket {
        kind: &'static str,
        source: std::io::Error,
    },
    #[error("drawing a random ICMP identifier for health checks (getrandom): {source}")]
    Random { source: std::io::Error },
}

/// A backend to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub id: u32,
    pub addr: IpAddr,
}

/// The result of probing one target with one type of probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub id: u32,
    pub addr: IpAddr,
    pub kind: ProbeKind,
    pub probe: Probe,
}

/// Called with every completed probe (backend address, probe type, probe), from the monitor
/// task: the hook for `ikelb_health_check_duration_seconds` and `ikelb_health_checks_total`.
/// Must not block.
pub type ProbeObserver = Arc<dyn Fn(IpAddr, ProbeKind, &Probe) + Send + Sync>;

/// Probes targets every interval and reports each round.
pub struct Monitor<P> {
    prober: Arc<P>,
    check: HealthCheck,
    observer: Option<ProbeObserver>,
}

impl<P: Prober> Monitor<P> {
    pub fn new(prober: Arc<P>, check: HealthCheck, observer: Option<ProbeObserver>) -> Self {
        Self {
            prober,
            check,
            observer,
        }
    }

    /// Probes every target with every configured probe type, all concurrently, each bounded
    /// by the timeout; reports come back in target order, then [`ProbeKind::ALL`] order.
    pub async fn round(&self, targets: &[Target]) -> Vec<Report> {
        let mut set = JoinSet::new();
        let kinds: Vec<ProbeKind> = self.check.probes.iter().collect();
        for (i, t) in targets.iter().enumerate() {
            for (k, &kind) in kinds.iter().enumerate() {
                let prober = Arc::clone(&self.prober);
                let t = t.clone();
                let timeout = self.check.timeout;
                set.spawn(async move {
                    let probe = prober.probe(kind, t.addr, timeout).await;
                    (
                        (i, k),
                        Report {
                            id: t.id,
                            addr: t.addr,
                            kind,
                            probe,
                        },
                    )
                });
            }
        }
        let mut out: Vec<((usize, usize), Report)> =
            Vec::with_capacity(targets.len() * kinds.len());
        while let Some(joined) = set.join_next().await {
            let (i, report) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            if let Some(observe) = &self.observer {
                observe(report.addr, report.kind, &report.probe);
            }
            out.push((i, report));
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// Runs until `reports` is closed or `targets`' sender is dropped: a round of every
    /// target each interval (the first one interval from now — the daemon runs the first
    /// round itself before attaching), and a round of just the new targets as soon as
    /// `targets` gains some.
    pub async fn run(
        self,
        mut targets: watch::Receiver<Vec<Target>>,
        reports: mpsc::Sender<Vec<Report>>,
    ) {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.check.interval,
            self.check.interval,
        );
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut known: HashSet<Target> = targets.borrow_and_update().iter().cloned().collect();
        loop {
            let batch: Vec<Target> = tokio::select! {
                _ = tick.tick() => {
                    let all = targets.borrow_and_update().clone();
                    known = all.iter().cloned().collect();
                    all
                }
                changed = targets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let all = targets.borrow_and_update().clone();
                    let new: Vec<Target> =
                        all.iter().filter(|t| !known.contains(*t)).cloned().collect();
                    known = all.into_iter().collect();
                    new
                }
            };
            if batch.is_empty() {
                continue;
            }
            let round = self.round(&batch).await;
            if reports.send(round).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
