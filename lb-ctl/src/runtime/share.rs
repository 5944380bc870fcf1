//! Shared persistence on the daemon's loop (`crate::share`, `docs/cluster.md`, "Shared
//! persistence"): with `share` configured, every [`SHARE_INTERVAL`] the daemon takes the
//! established entries from its shared persistence scan (off the loop: the scanner runs it,
//! or shares one already running or just done), then, back on the loop:
//!
//! 1. publishes its divergent clients, established and probation: `share.export_table` is
//!    brought to exactly `crate::share::divergent` (routes added, replaced when the backend
//!    or the tier changed, removed);
//! 2. takes the other nodes' (`share.import_table`, which BIRD writes) with
//!    `crate::share::import`.
//!
//! A failed route write or read is logged once until the next success, counted, and retried
//! at the next round; it never touches the data path. A truncated scan (stopped at
//! `max_entries` under churn) publishes nothing that round: a partial read would withdraw
//! clients it missed.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use crate::dataplane::Tier;

use tracing::{debug, warn};

use super::Clock;
use crate::{
    announce::RouteError,
    config::{Config, Share},
    dataplane::Dataplane,
    scan::{Outcome, Scanner},
    share::{self, netlink::ShareRoutes, Divergent, Shared},
    state::Balancer,
};

/// How often divergent clients are published and the other nodes' taken. Slot moves wait
/// `slot_move_delay` (5 s by default) and clients are published as divergent from the moment
/// their slot is held (`Balancer::converged_backend`), so a round comes before the move.
pub const SHARE_INTERVAL: Duration = Duration::from_secs(2);

/// Clients by the tier of their entry at the node that publishes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tiers {
    pub established: u64,
    pub probation: u64,
}

impl Tiers {
    fn of<'a>(clients: impl IntoIterator<Item = &'a Shared>) -> Self {
        let mut t = Self::default();
        for c in clients {
            match c.tier {
                Tier::Established => t.established += 1,
                Tier::Probation => t.probation += 1,
            }
        }
        t
    }
}

/// What the rounds did so far (for `ikelb_share_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShareStats {
    /// Routes in the export table after the last round.
    pub exported: Tiers,
    /// Divergent probation clients not published at the last round
    /// (`crate::share::PROBATION_LIMIT`).
    pub over_limit: u64,
    /// Routes in the import table at the last round.
    pub learned: Tiers,
    /// Entries written from the import table, all rounds.
    pub imported: u64,
    /// Failed route reads or writes, all rounds.
    pub errors: u64,
}

/// Told of every finished round.
pub type ShareObserver = Arc<dyn Fn(ShareStats) + Send + Sync>;

/// A share event for the daemon's loop.
pub enum ShareEvent {
    /// Time for a round.
    Due,
    /// The persistence read of the round in flight finished.
    Read(Outcome),
}

/// Schedules rounds, holds the one in flight and the route tables.
pub struct Sharer {
    tables: Share,
    tick: tokio::time::Interval,
    running: Option<tokio::task::JoinHandle<Outcome>>,
    scanner: Arc<Scanner>,
    routes: Box<dyn ShareRoutes + Send>,
    stats: ShareStats,
    failing: bool,
    observer: Option<ShareObserver>,
}

impl Sharer {
    /// A sharer when `share` is configured.
    pub fn new(config: &Config, scanner: Arc<Scanner>) -> Option<Self> {
        Self::with_routes(
            config,
            scanner,
            Box::new(crate::netlink::Netlink::default()),
        )
    }

    /// As [`new`](Sharer::new), over `routes` (tests: an in-memory table).
    pub fn with_routes(
        config: &Config,
        scanner: Arc<Scanner>,
        routes: Box<dyn ShareRoutes + Send>,
    ) -> Option<Self> {
        let tables = config.share?;
        let mut tick = tokio::time::interval(SHARE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(Self {
            tables,
            tick,
            running: None,
            scanner,
            routes,
            stats: ShareStats::default(),
            failing: false,
            observer: None,
        })
    }

    pub fn set_observer(&mut self, observer: ShareObserver) {
        self.observer = Some(observer);
    }

    /// The next event (cancel-safe).
    pub async fn next(&mut self) -> ShareEvent {
        match &mut self.running {
            Some(read) => {
                let done = read.await;
                self.running = None;
                ShareEvent::Read(done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
            }
            None => {
                self.tick.tick().await;
                ShareEvent::Due
            }
        }
    }

    /// Handles an event: starts a round, or finishes the one in flight.
    pub fn handle<D: Dataplane>(&mut self, lb: &mut Balancer<D>, event: ShareEvent) {
        match event {
            ShareEvent::Due => {
                let scanner = Arc::clone(&self.scanner);
                let not_before = std::time::Instant::now();
                self.running = Some(tokio::spawn(async move { scanner.get(not_before).await }));
            }
            ShareEvent::Read(read) => {
                let tick = Clock::now().tick;
                match read.result {
                    Ok(scanned) if !scanned.truncated() => {
                        let mine = share::divergent(lb, &scanned, tick, lb.persist_timeout_ticks());
                        let r = self.publish(&mine);
                        self.outcome(r, "publishing divergent clients");
                    }
                    Ok(_) => debug!("shared persistence: scan truncated, nothing published"),
                    Err(e) => warn!(
                        "shared persistence: scan failed: {}",
                        crate::error_chain(&*e)
                    ),
                }
                let r = self.take(lb, tick);
                self.outcome(r, "taking the other nodes' clients");
                if let Some(o) = &self.observer {
                    o(self.stats);
                }
            }
        }
    }

    /// Brings the export table to exactly `mine` (one route per client).
    fn publish(&mut self, mine: &Divergent) -> Result<(), RouteError> {
        let table = self.tables.export_table;
        let there = self.routes.list_ours(table)?;
        let want = &mine.clients;
        let tiers: BTreeMap<IpAddr, Tier> = want.iter().map(|s| (s.client, s.tier)).collect();
        // A client gone, or whose tier changed (another metric: another route); a backend
        // change alone is a replace.
        for gone in there.difference(want) {
            if tiers.get(&gone.client) != Some(&gone.tier) {
                self.routes.remove(table, gone.client)?;
            }
        }
        for new in want.difference(&there) {
            self.routes.add(table, new)?;
        }
        self.stats.exported = Tiers::of(want);
        self.stats.over_limit = mine.over_limit as u64;
        Ok(())
    }

    /// Writes what the other nodes publish and this node lacks.
    fn take<D: Dataplane>(&mut self, lb: &mut Balancer<D>, tick: u32) -> Result<(), RouteError> {
        let learned: Vec<Shared> = self
            .routes
            .list_learned(self.tables.import_table)?
            .into_iter()
            .collect();
        self.stats.learned = Tiers::of(&learned);
        match share::import(lb, &learned, tick) {
            Ok(r) => {
                self.stats.imported += r.inserted as u64;
                if r.inserted > 0 {
                    debug!(
                        inserted = r.inserted,
                        refreshed = r.refreshed,
                        present = r.present,
                        ignored = r.ignored,
                        "shared persistence taken"
                    );
                }
            }
            Err(e) => warn!(
                "shared persistence: writing entries: {}",
                crate::error_chain(&e)
            ),
        }
        Ok(())
    }

    fn outcome(&mut self, r: Result<(), RouteError>, what: &str) {
        match r {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.stats.errors += 1;
                if !self.failing {
                    warn!("shared persistence: {what}: {} (retried every round; logged again after a success)", crate::error_chain(&e));
                }
                self.failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests;
