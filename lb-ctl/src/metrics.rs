//! Prometheus metrics (docs/metrics.md): the text exposition format at `/metrics` on
//! `metrics.listen` ([`http`]).
//!
//! Two kinds of metric, one registry:
//!
//! * **Read from the data path when scraped** ([`DataplaneCollector`], a custom
//!   `prometheus::core::Collector`; nothing polls in a loop): `ikelb_xdp_packets_total{action,
//!   reason}` (per-CPU `COUNTERS`, one label pair per `lb_common::counter::LABELS` entry),
//!   `ikelb_backend_packets_total` / `ikelb_backend_bytes_total{vs,backend,direction}`
//!   (per-CPU `BACKEND_STATS`, `direction` = `forward` client → backend | `reverse`
//!   backend → client), `ikelb_xdp_events_total{event}` (per-CPU `EVENTS`, labels
//!   `lb_common::event::LABELS`), `ikelb_backend_clients{vs,backend}` (established and
//!   probation entries), `ikelb_persistence_entries` and `ikelb_probation_entries` (walks of
//!   the persistence and probation maps), plus `ikelb_backend_up{vs,backend}`,
//!   `ikelb_persistence_capacity` and `ikelb_probation_capacity` from the control plane's
//!   view.
//! * **Kept by the daemon**: `ikelb_maglev_rebuilds_total` (one per table flip),
//!   `ikelb_health_check_duration_seconds{backend}` (histogram) and
//!   `ikelb_health_checks_total{backend,result}` (fed by the health monitor through
//!   [`Metrics::probe_observer`]), `ikelb_build_info{version}`, and with `announce`
//!   ([`Metrics::announce`]) `ikelb_vip_announced{vs,vip}`,
//!   `ikelb_announce_route_changes_total` and `ikelb_announce_route_errors_total`.
//!
//! Counters live in pinned maps, so they keep counting across daemon restarts (a map
//! migration starts them from zero, which Prometheus' `rate()` treats as a counter reset).
//!
//! A *client* is a persistence entry that still holds its client, i.e. seen within
//! `persistence_timeout`: an older entry is re-balanced on its next packet and is only
//! waiting for the LRU to recycle it. `ikelb_persistence_entries` counts those live entries,
//! so `ikelb_persistence_entries / ikelb_persistence_capacity` (the alert in
//! `deploy/prometheus/ikelb-alerts.yml`) says how close the LRU is to evicting clients that
//! are still active. The entries come from the daemon's shared persistence scan
//! ([`crate::scan::Scanner`], shared with `backend list`, `status`, drains and the slot flag
//! sweep through [`Metrics::share_scans`]): a scrape uses the last scan when it started less
//! than [`SCRAPE_MAX_AGE`] ago (or ten times the last scan's duration, if longer), else waits
//! for the scan in flight or the next one — never a scan of its own, and never on the
//! daemon's event loop.
//!
//! ## Modules
//!
//! * `metrics.rs` (this file): [`Metrics`] — the registry, the daemon's own metrics, the
//!   published backend list, rendering — and the helpers that define metric families.
//! * `metrics/source.rs`: reading the data path's maps — [`StatsSource`], [`PinnedStats`].
//! * `metrics/collector.rs`: [`DataplaneCollector`] — the families read at scrape time and
//!   how a scrape fills them.
//! * `metrics/http.rs`: the `/metrics` endpoint.

mod collector;
pub mod http;
mod source;

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
};

use prometheus::{
    core::Collector, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    dataplane::Dataplane,
    health::{Probe, ProbeKind, ProbeObserver},
    scan::{Scanned, Scanner},
    state::Balancer,
};

pub use collector::DataplaneCollector;
pub use source::{PinnedStats, StatsSource};

/// A scrape shares a persistence scan that started at most this long ago (or ten times the
/// last scan's duration, when that is longer: scrapes never keep more than a tenth of a core
/// scanning).
pub const SCRAPE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// Histogram buckets of an ICMP round trip, 0.5 ms to 5 s (timeouts end a probe at
/// `health_check.timeout`, 2 s by default).
const PROBE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A backend as the metrics label it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendLabel {
    /// Backend id (index in `BACKENDS` / `BACKEND_STATS`).
    pub id: u32,
    /// Service id (first word of its clients' persistence keys).
    pub service: u32,
    /// `vs` label: the virtual server's name.
    pub vs: String,
    /// `backend` label: its address.
    pub address: IpAddr,
    /// `ikelb_backend_up`: usable (next hop known and health checks Up).
    pub up: bool,
}

/// The control plane's side of a scrape, replaced whole on every change.
#[derive(Clone, Debug, Default)]
struct View {
    backends: Vec<BackendLabel>,
    /// The running program's `PERSIST_TIMEOUT_TICKS` (a reload may change it), once
    /// published; the config's until then.
    persist_timeout_ticks: Option<u32>,
}

/// Now in the data path's persistence ticks.
pub(crate) fn now_ticks() -> u32 {
    crate::runtime::Clock::now().tick
}

/// The sizes of the persistence and probation maps (config `persistence_entries`,
/// `probation_entries`), for the `*_capacity` gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub persistence: u32,
    pub probation: u32,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric definition")
}

/// Why the metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}: {source}")]
    Register {
        name: &'static str,
        source: prometheus::Error,
    },
    #[error("encoding the text exposition: {source}")]
    Encode { source: prometheus::Error },
}

/// The daemon's metrics: a registry with the data path collector and the daemon's own.
pub struct Metrics {
    registry: Registry,
    view: Arc<RwLock<View>>,
    scans: Arc<RwLock<Arc<Scanner>>>,
    rebuilds: IntCounter,
    /// `Balancer::flips` at the last publish.
    flips_seen: std::sync::atomic::AtomicU64,
    probe_duration: HistogramVec,
    probes: IntCounterVec,
    sweeps: IntCounterVec,
    flags_cleared: IntCounter,
    vip_announced: IntGaugeVec,
    route_changes: IntCounter,
    route_errors: IntCounter,
    share_clients: IntGaugeVec,
    share_over_limit: IntGauge,
    share_imported: IntCounter,
    share_errors: IntCounter,
}

impl Metrics {
    /// `persist_timeout_ticks` and `capacity` come from the config (a client idle longer
    /// than the former is not counted).
    pub fn new(
        source: Arc<dyn StatsSource>,
        persist_timeout_ticks: u32,
        capacity: Capacity,
    ) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let view = Arc::new(RwLock::new(View::default()));
        // Scrapes share one scan at a time even before the daemon's scanner is shared.
        let own = Arc::clone(&source);
        let scans = Arc::new(RwLock::new(Scanner::new(Box::new(move || {
            Ok(Scanned {
                entries: own.persistence()?,
                ..Scanned::default()
            })
        }))));
        let reg = |name: &'static str, c: Box<dyn Collector>| {
            registry
                .register(c)
                .map_err(|source| MetricsError::Register { name, source })
        };
        reg(
            "data path collector",
            Box::new(DataplaneCollector::new(
                source,
                Arc::clone(&view),
                Arc::clone(&scans),
                persist_timeout_ticks,
                capacity,
            )),
        )?;
        let rebuilds = IntCounter::new(
            "ikelb_maglev_rebuilds_total",
            "Maglev tables rebuilt and flipped (any virtual server).",
        )
        .expect("valid metric definition");
        reg("ikelb_maglev_rebuilds_total", Box::new(rebuilds.clone()))?;
        let probe_duration = HistogramVec::new(
            HistogramOpts::new(
                "ikelb_health_check_duration_seconds",
                "Duration of health check probes by type (icmp, ike), to the answer, timeout or error.",
            )
            .buckets(PROBE_BUCKETS.to_vec()),
            &["backend", "probe"],
        )
        .expect("valid metric definition");
        reg(
            "ikelb_health_check_duration_seconds",
            Box::new(probe_duration.clone()),
        )?;
        let probes = counter_vec(
            "ikelb_health_checks_total",
            "Health check probes by type (icmp, ike) and result (success, timeout, error).",
            &["backend", "probe", "result"],
        );
        reg("ikelb_health_checks_total", Box::new(probes.clone()))?;
        let sweeps = counter_vec(
            "ikelb_slot_sweeps_total",
            "Slot flag sweeps finished (slot fast path), by result (ok, failed).",
            &["result"],
        );
        reg("ikelb_slot_sweeps_total", Box::new(sweeps.clone()))?;
        let flags_cleared = IntCounter::new(
            "ikelb_slot_flags_cleared_total",
            "Ring slot flags (RING_F_CHANGED) cleared by sweeps: slots back on the fast path.",
        )
        .expect("valid metric definition");
        reg(
            "ikelb_slot_flags_cleared_total",
            Box::new(flags_cleared.clone()),
        )?;
        let vip_announced = gauge_vec(
            "ikelb_vip_announced",
            "1 while the VIP's host route is in announce.table (the node can serve it), else 0.",
            &["vs", "vip"],
        );
        reg("ikelb_vip_announced", Box::new(vip_announced.clone()))?;
        let route_changes = IntCounter::new(
            "ikelb_announce_route_changes_total",
            "Host routes of VIPs added to or removed from announce.table.",
        )
        .expect("valid metric definition");
        reg(
            "ikelb_announce_route_changes_total",
            Box::new(route_changes.clone()),
        )?;
        let route_errors = IntCounter::new(
            "ikelb_announce_route_errors_total",
            "Reads and writes of announce.table that failed (retried every health round).",
        )
        .expect("valid metric definition");
        reg(
            "ikelb_announce_route_errors_total",
            Box::new(route_errors.clone()),
        )?;
        let share_clients = gauge_vec(
            "ikelb_share_clients",
            "Shared persistence: this node's divergent clients in share.export_table (table=\"exported\"), the other nodes' in share.import_table (table=\"learned\"), by the tier of their entry at the node that publishes them, at the last round.",
            &["table", "tier"],
        );
        reg("ikelb_share_clients", Box::new(share_clients.clone()))?;
        let share_over_limit = IntGauge::new(
            "ikelb_share_probation_over_limit",
            "Shared persistence: divergent probation clients this node did not publish at the last round (over the per-round limit).",
        )
        .expect("valid metric definition");
        reg(
            "ikelb_share_probation_over_limit",
            Box::new(share_over_limit.clone()),
        )?;
        let share_imported = IntCounter::new(
            "ikelb_share_imported_total",
            "Persistence entries written from the other nodes' shared clients.",
        )
        .expect("valid metric definition");
        reg(
            "ikelb_share_imported_total",
            Box::new(share_imported.clone()),
        )?;
        let share_errors = IntCounter::new(
            "ikelb_share_errors_total",
            "Reads and writes of the shared persistence tables that failed (retried every round).",
        )
        .expect("valid metric definition");
        reg("ikelb_share_errors_total", Box::new(share_errors.clone()))?;
        let build = gauge_vec(
            "ikelb_build_info",
            "Always 1; the version label names the running lb-ctl.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        reg("ikelb_build_info", Box::new(build))?;
        Ok(Self {
            registry,
            view,
            scans,
            rebuilds,
            flips_seen: std::sync::atomic::AtomicU64::new(0),
            probe_duration,
            probes,
            sweeps,
            flags_cleared,
            vip_announced,
            route_changes,
            route_errors,
            share_clients,
            share_over_limit,
            share_imported,
            share_errors,
        })
    }

    /// The announce state (`crate::announce::View`): one `ikelb_vip_announced` per VIP, and
    /// the counters brought to the view's totals.
    pub fn announce(&self, view: &crate::announce::View) {
        self.vip_announced.reset();
        for v in &view.vips {
            self.vip_announced
                .with_label_values(&[v.vs.as_str(), &v.vip.to_string()])
                .set(i64::from(v.announced));
        }
        self.route_changes
            .inc_by(view.changes.saturating_sub(self.route_changes.get()));
        self.route_errors
            .inc_by(view.errors.saturating_sub(self.route_errors.get()));
    }

    /// Scrapes read the persistence maps through `scanner` (the daemon's, shared with
    /// `backend list`, `status`, drains and the sweep) from now on.
    pub fn share_scans(&self, scanner: Arc<Scanner>) {
        *self.scans.write().expect("not poisoned") = scanner;
    }

    /// Replaces the backend list (labels and up state).
    pub fn set_backends(&self, backends: Vec<BackendLabel>) {
        self.view.write().expect("not poisoned").backends = backends;
    }

    /// [`set_backends`](Self::set_backends) and the rebuild count from the balancer's
    /// current model; call after every `apply` (calling it more often is harmless).
    pub fn publish<D: Dataplane>(&self, balancer: &Balancer<D>) {
        self.view
            .write()
            .expect("not poisoned")
            .persist_timeout_ticks = Some(balancer.persist_timeout_ticks());
        let flips = balancer.flips();
        let seen = self
            .flips_seen
            .swap(flips, std::sync::atomic::Ordering::Relaxed);
        self.rebuilds.inc_by(flips.saturating_sub(seen));
        self.set_backends(
            balancer
                .backends()
                .map(|b| BackendLabel {
                    id: b.id,
                    service: b.service,
                    vs: balancer.service(b.service).name.clone(),
                    address: b.address,
                    up: b.usable(),
                })
                .collect(),
        );
    }

    /// Records one health check probe of type `kind`.
    pub fn observe_probe(&self, backend: IpAddr, kind: ProbeKind, probe: &Probe) {
        let backend = backend.to_string();
        self.probe_duration
            .with_label_values(&[backend.as_str(), kind.label()])
            .observe(probe.duration.as_secs_f64());
        self.probes
            .with_label_values(&[backend.as_str(), kind.label(), probe.outcome.label()])
            .inc();
    }

    /// The observer to give the health monitor (`health::Monitor::new`).
    pub fn probe_observer(self: &Arc<Self>) -> ProbeObserver {
        let me = Arc::clone(self);
        Arc::new(move |addr, kind, probe| me.observe_probe(addr, kind, probe))
    }

    /// The observer to give the slot flag sweeper (`Runtime::observe_sweeps`).
    pub fn sweep_observer(self: &Arc<Self>) -> crate::runtime::SweepObserver {
        let me = Arc::clone(self);
        Arc::new(move |outcome| match outcome {
            Ok(cleared) => {
                me.sweeps.with_label_values(&["ok"]).inc();
                me.flags_cleared.inc_by(cleared);
            }
            Err(()) => me.sweeps.with_label_values(&["failed"]).inc(),
        })
    }

    /// The observer to give the shared persistence rounds (`Runtime::observe_shares`).
    pub fn share_observer(self: &Arc<Self>) -> crate::runtime::share::ShareObserver {
        let me = Arc::clone(self);
        Arc::new(move |s| {
            for (table, t) in [("exported", s.exported), ("learned", s.learned)] {
                for (tier, n) in [("established", t.established), ("probation", t.probation)] {
                    me.share_clients
                        .with_label_values(&[table, tier])
                        .set(n as i64);
                }
            }
            me.share_over_limit.set(s.over_limit as i64);
            me.share_imported
                .inc_by(s.imported.saturating_sub(me.share_imported.get()));
            me.share_errors
                .inc_by(s.errors.saturating_sub(me.share_errors.get()));
        })
    }

    /// The text exposition of every metric (reads the data path: call off the event loop).
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|source| MetricsError::Encode { source })?;
        Ok(String::from_utf8(buf).expect("the text encoder writes UTF-8"))
    }
}

#[cfg(test)]
mod tests;
