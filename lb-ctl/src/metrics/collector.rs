//! [`DataplaneCollector`]: the metric families read from the data path when scraped —
//! packet verdicts, events, per-backend traffic, backend up, clients and persistence and
//! probation entries — built fresh for each scrape and filled from the [`StatsSource`], the
//! published backend list and the shared persistence scan.

use std::sync::{Arc, RwLock};

use aya::maps::MapError;
use lb_common::{counter, event, ike, maps, DIR_FORWARD, DIR_REVERSE};
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounterVec, IntGauge, IntGaugeVec,
};
use tracing::warn;

use super::{
    counter_vec, gauge, gauge_vec, now_ticks, Capacity, StatsSource, View, SCRAPE_MAX_AGE,
};
use crate::{
    dataplane::{DataplaneError, PersistEntry, Tier},
    scan::Scanner,
};

/// The metrics read from the data path at scrape time.
pub struct DataplaneCollector {
    source: Arc<dyn StatsSource>,
    view: Arc<RwLock<View>>,
    scans: Arc<RwLock<Arc<Scanner>>>,
    persist_timeout_ticks: u32,
    capacity: Capacity,
    descs: Vec<Desc>,
}

/// Fresh (empty) metrics of every family the collector exports; one set per scrape.
struct Families {
    xdp: IntCounterVec,
    events: IntCounterVec,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    up: IntGaugeVec,
    clients: IntGaugeVec,
    entries: IntGauge,
    capacity: IntGauge,
    probation: IntGauge,
    probation_capacity: IntGauge,
    ike_messages: IntCounterVec,
    ike_auth_fragmented: IntCounterVec,
    ike_fragments_no_entry: IntCounterVec,
    ike_steered: IntCounterVec,
    ike_clients: IntGaugeVec,
}

impl Families {
    fn new() -> Self {
        Self {
            xdp: counter_vec(
                "ikelb_xdp_packets_total",
                "Packets the XDP program handled, by verdict (action) and why (reason).",
                &["action", "reason"],
            ),
            events: counter_vec(
                "ikelb_xdp_events_total",
                "Things the XDP program did on the way to a verdict (probation inserts, \
                 promotions, throttled new clients, lost clients, MAC moves, ...).",
                &["event"],
            ),
            packets: counter_vec(
                "ikelb_backend_packets_total",
                "Packets forwarded to (forward) or from (reverse) a backend.",
                &["vs", "backend", "direction"],
            ),
            bytes: counter_vec(
                "ikelb_backend_bytes_total",
                "Bytes (Ethernet frames) forwarded to (forward) or from (reverse) a backend.",
                &["vs", "backend", "direction"],
            ),
            up: gauge_vec(
                "ikelb_backend_up",
                "1 when the backend may receive packets (health checks Up, next hop known).",
                &["vs", "backend"],
            ),
            clients: gauge_vec(
                "ikelb_backend_clients",
                "Clients persisted to the backend and seen within persistence_timeout.",
                &["vs", "backend"],
            ),
            entries: gauge(
                "ikelb_persistence_entries",
                "Persistence entries still holding a client (seen within persistence_timeout).",
            ),
            capacity: gauge(
                "ikelb_persistence_capacity",
                "Capacity of the persistence map (persistence_entries).",
            ),
            probation: gauge(
                "ikelb_probation_entries",
                "Probation entries (new clients not yet proven) seen within persistence_timeout.",
            ),
            probation_capacity: gauge(
                "ikelb_probation_capacity",
                "Capacity of the probation map (probation_entries).",
            ),
            ike_messages: counter_vec(
                "ikelb_ike_messages_total",
                "IKE_SA_INIT requests of clients and responses of backends, IKE_AUTH requests \
                 of clients, forwarded (clients throttled by new_client_rate not counted).",
                &["exchange", "direction"],
            ),
            ike_auth_fragmented: counter_vec(
                "ikelb_ike_auth_fragmented_total",
                "IKE_AUTH requests that arrived as IP fragments (no IKEv2 fragmentation).",
                &[],
            ),
            ike_fragments_no_entry: counter_vec(
                "ikelb_ike_fragments_no_entry_total",
                "Non-first IP fragments from a client without any entry (they follow the ring).",
                &[],
            ),
            ike_steered: counter_vec(
                "ikelb_ike_steered_total",
                "Packets from an address without an entry steered by their SA's SPI, by SA.",
                &["sa"],
            ),
            ike_clients: gauge_vec(
                "ikelb_ike_clients",
                "Clients seen within persistence_timeout, by the last IKE stage seen of them.",
                &["stage"],
            ),
        }
    }

    fn all(&self) -> [&dyn Collector; 15] {
        [
            &self.xdp,
            &self.events,
            &self.packets,
            &self.bytes,
            &self.up,
            &self.clients,
            &self.entries,
            &self.capacity,
            &self.probation,
            &self.probation_capacity,
            &self.ike_messages,
            &self.ike_auth_fragmented,
            &self.ike_fragments_no_entry,
            &self.ike_steered,
            &self.ike_clients,
        ]
    }

    fn descs(&self) -> Vec<Desc> {
        let mut d = Vec::new();
        for c in self.all() {
            d.extend(c.desc().into_iter().cloned());
        }
        d
    }
}

impl Families {
    /// The `ikelb_ike_*` counters from `IKE_STAGES` (`lb_common::ike`), every series present
    /// (zeros included) so alerts need no `absent()`.
    fn ike_counters(&self, stages: &[u64]) {
        let n = |i: u32| stages.get(i as usize).copied().unwrap_or(0);
        // IKE_AUTH requests: whole, and as IP fragments (counted apart in the data path).
        let auth = n(ike::AUTH_REQUEST) + n(ike::AUTH_FRAGMENTED);
        for (count, exchange, direction) in [
            (n(ike::SA_INIT_REQUEST), "ike_sa_init", "request"),
            (n(ike::SA_INIT_RESPONSE), "ike_sa_init", "response"),
            (auth, "ike_auth", "request"),
        ] {
            self.ike_messages
                .with_label_values(&[exchange, direction])
                .inc_by(count);
        }
        self.ike_auth_fragmented
            .with_label_values::<&str>(&[])
            .inc_by(n(ike::AUTH_FRAGMENTED));
        self.ike_fragments_no_entry
            .with_label_values::<&str>(&[])
            .inc_by(n(ike::FRAGMENT_NO_ENTRY));
        for (i, sa) in [(ike::STEERED_IKE, "ike"), (ike::STEERED_ESP, "esp")] {
            self.ike_steered.with_label_values(&[sa]).inc_by(n(i));
        }
    }
}

impl DataplaneCollector {
    pub(super) fn new(
        source: Arc<dyn StatsSource>,
        view: Arc<RwLock<View>>,
        scans: Arc<RwLock<Arc<Scanner>>>,
        persist_timeout_ticks: u32,
        capacity: Capacity,
    ) -> Self {
        Self {
            source,
            view,
            scans,
            persist_timeout_ticks,
            capacity,
            descs: Families::new().descs(),
        }
    }

    fn fill(&self, f: &Families) -> Result<(), DataplaneError> {
        let counters = self.source.counters()?;
        for ((action, reason), n) in counter::LABELS.iter().zip(&counters) {
            f.xdp.with_label_values(&[*action, *reason]).inc_by(*n);
        }
        // Events before anything that may fail late (a map walk): each scrape exports what
        // it could read.
        let events = self.source.events()?;
        for (label, n) in event::LABELS.iter().zip(&events) {
            f.events.with_label_values(&[*label]).inc_by(*n);
        }
        let stages = self.source.ike_stages()?;
        f.ike_counters(&stages);
        f.capacity.set(i64::from(self.capacity.persistence));
        f.probation_capacity.set(i64::from(self.capacity.probation));
        let (backends, timeout) = {
            let view = self.view.read().expect("not poisoned");
            let timeout = view
                .persist_timeout_ticks
                .unwrap_or(self.persist_timeout_ticks);
            (view.backends.clone(), timeout)
        };
        for b in &backends {
            let addr = b.address.to_string();
            f.up.with_label_values(&[b.vs.as_str(), &addr])
                .set(i64::from(b.up));
            let t = self.source.backend_traffic(b.id)?;
            for (dir, name) in [(DIR_FORWARD, "forward"), (DIR_REVERSE, "reverse")] {
                let t = t[dir as usize];
                let labels = [b.vs.as_str(), &addr, name];
                f.packets.with_label_values(&labels).inc_by(t.packets);
                f.bytes.with_label_values(&labels).inc_by(t.bytes);
            }
            // Present (0) for every backend, also before it has a client.
            f.clients.with_label_values(&[b.vs.as_str(), &addr]).set(0);
        }
        let scanner = Arc::clone(&self.scans.read().expect("not poisoned"));
        let max_age = scanner
            .latest()
            .map_or(SCRAPE_MAX_AGE, |o| SCRAPE_MAX_AGE.max(o.took * 10));
        let scanned =
            scanner
                .within_blocking(max_age)
                .result
                .map_err(|e| DataplaneError::Read {
                    map: maps::PERSIST_V4,
                    source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
                        call: "persistence scan",
                        io_error: std::io::Error::other(crate::error_chain(&*e)),
                    })),
                })?;
        let now = now_ticks();
        let (mut live, mut probation) = (0, 0);
        // Per backend position in `backends` (a million entries: no label lookup per entry).
        let by_id: std::collections::HashMap<(u32, u32), usize> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| ((b.id, b.service), i))
            .collect();
        let mut clients = vec![0u64; backends.len()];
        let mut by_stage = [0i64; ike::STAGES.len()];
        for &PersistEntry {
            service,
            value,
            tier,
        } in &scanned.entries
        {
            if !lb_common::is_live(now, value.atime, timeout) {
                continue;
            }
            match tier {
                Tier::Established => live += 1,
                Tier::Probation => probation += 1,
            }
            if let Some(&i) = by_id.get(&(value.backend, service)) {
                clients[i] += 1;
            }
            if let Some(n) = by_stage.get_mut(usize::from(ike::stage(value.flags))) {
                *n += 1;
            }
        }
        for (stage, n) in ike::STAGES.iter().zip(by_stage) {
            f.ike_clients
                .with_label_values(&[ike::stage_name(*stage)])
                .set(n);
        }
        for (b, n) in backends.iter().zip(clients) {
            f.clients
                .with_label_values(&[b.vs.as_str(), &b.address.to_string()])
                .set(n as i64);
        }
        f.entries.set(live);
        f.probation.set(probation);
        Ok(())
    }
}

impl Collector for DataplaneCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = Families::new();
        if let Err(e) = self.fill(&f) {
            // Whatever was read is still exported; the rest is missing from this scrape.
            warn!("scrape: reading the data path: {}", crate::error_chain(&e));
        }
        let mut out = Vec::new();
        for c in f.all() {
            out.extend(c.collect());
        }
        out
    }
}
