//! The slot flag sweep (`state.rs`, "Slot flags"): while `slot_fast_path` is on, every
//! `persistence_timeout`/4 (at least a second; the first right after start) the daemon takes
//! a ticket on its loop, waits [`SWEEP_GRACE`], takes the keyed entries of `PERSIST_V4`,
//! `PROBATION_V4`, `PERSIST_V6` and `PROBATION_V6` from the daemon's shared persistence scan
//! (one that started after the grace: the scanner runs it, or it is already running or done
//! for a scrape or a query), and clears, back on the loop, the `RING_F_CHANGED` flags no
//! live entry needs any more: the IPv4 services' by the IPv4 maps, then the IPv6 services'
//! by the IPv6 maps, with the same ticket. A truncated scan (stopped at `max_entries` visits
//! under churn) may miss a live entry: the sweep fails and the next one retries. A sweep
//! that began before a reload changed `persistence_timeout` clears nothing
//! (`state/timeout.rs`). Nothing of it blocks the loop.

use std::{sync::Arc, time::Duration};

use tracing::{debug, info, warn};

use super::Clock;
use crate::{
    config::Config,
    dataplane::Dataplane,
    scan::{Outcome, Scanner},
    state::{Balancer, StateError, SweepReport, SweepTicket, SWEEP_GRACE},
};

/// Why a sweep was discarded: it began before a reload changed `persistence_timeout`.
const OUTDATED: &str = "it began under another persistence_timeout (changed by a reload)";

type Read = Outcome;

/// Told of every finished sweep: `Ok(flags cleared)` or `Err(())` when it failed (for
/// `ikelb_slot_sweeps_total{result}` and `ikelb_slot_flags_cleared_total`).
pub type SweepObserver = std::sync::Arc<dyn Fn(Result<u64, ()>) + Send + Sync>;

/// A sweep event for the daemon's loop.
pub enum SweepEvent {
    /// Time to start a sweep.
    Due,
    /// The persistence read of the sweep in flight finished.
    Read(Read),
}

/// Schedules sweeps and holds the one in flight.
pub struct Sweeper {
    tick: tokio::time::Interval,
    running: Option<(SweepTicket, tokio::task::JoinHandle<Read>)>,
    observer: Option<SweepObserver>,
    scanner: Arc<Scanner>,
}

/// How often flags are swept: a quarter of the persistence timeout, at least a second.
pub fn sweep_interval(config: &Config) -> Duration {
    interval_for(config.persistence_timeout)
}

fn interval_for(persistence_timeout: Duration) -> Duration {
    (persistence_timeout / 4).max(Duration::from_secs(1))
}

impl Sweeper {
    /// A sweeper when the fast path is on (flags only matter then; without sweeps they only
    /// accumulate, which is safe).
    pub fn new(config: &Config, scanner: Arc<Scanner>) -> Option<Self> {
        if !config.slot_fast_path {
            return None;
        }
        let mut tick = tokio::time::interval(sweep_interval(config));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(Self {
            tick,
            running: None,
            observer: None,
            scanner,
        })
    }

    /// A reload changed `persistence_timeout`: sweeps every quarter of the new one from now
    /// on, the next one at once (the one in flight, if any, is discarded when it ends: its
    /// ticket is of the old timeout, `state/timeout.rs`).
    pub fn retime(&mut self, persistence_timeout: Duration) {
        let mut tick = tokio::time::interval(interval_for(persistence_timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.tick = tick;
    }

    /// Reports every finished sweep to `observer`.
    pub fn set_observer(&mut self, observer: SweepObserver) {
        self.observer = Some(observer);
    }

    /// The next event (cancel-safe).
    pub async fn next(&mut self) -> SweepEvent {
        match &mut self.running {
            Some((_, read)) => {
                let done = read.await;
                SweepEvent::Read(done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
            }
            None => {
                self.tick.tick().await;
                SweepEvent::Due
            }
        }
    }

    /// Handles an event: starts a sweep, or finishes the one in flight.
    pub fn handle<D: Dataplane>(&mut self, lb: &mut Balancer<D>, event: SweepEvent) {
        match event {
            SweepEvent::Due => {
                if lb.flagged_slots() == 0 {
                    return;
                }
                let ticket = lb.sweep_ticket(Clock::now().tick);
                let scanner = Arc::clone(&self.scanner);
                let task = tokio::spawn(async move {
                    tokio::time::sleep(SWEEP_GRACE).await;
                    scanner.get(std::time::Instant::now()).await
                });
                self.running = Some((ticket, task));
            }
            SweepEvent::Read(read) => {
                let Some((ticket, _)) = self.running.take() else {
                    return;
                };
                match read
                    .result
                    .map_err(|e| crate::error_chain(&*e))
                    .and_then(|scanned| {
                        if scanned.truncated() {
                            return Err("the persistence scan was truncated".to_owned());
                        }
                        // The program's timeout now; a ticket of another one is refused.
                        let t = lb.persist_timeout_ticks();
                        let v4 = lb.clear_flags(ticket, &scanned.v4, t);
                        let v6 = v4.and_then(|v4| {
                            let v6 = lb.clear_flags_v6(ticket, &scanned.v6, t)?;
                            Ok(SweepReport {
                                cleared: v4.cleared + v6.cleared,
                                kept: v4.kept + v6.kept,
                                adopted: v4.adopted + v6.adopted,
                            })
                        });
                        v6.map_err(|e| match e {
                            StateError::SweepOutdated => OUTDATED.to_owned(),
                            e => crate::error_chain(&e),
                        })
                    }) {
                    Ok(r) => {
                        debug!(
                            cleared = r.cleared,
                            kept = r.kept,
                            adopted = r.adopted,
                            "slot flag sweep"
                        );
                        if let Some(o) = &self.observer {
                            o(Ok(r.cleared as u64));
                        }
                    }
                    Err(e) if e == OUTDATED => {
                        info!("slot flag sweep discarded, nothing cleared: {e}");
                    }
                    Err(e) => {
                        warn!("slot flag sweep failed (retried at the next one): {e}");
                        if let Some(o) = &self.observer {
                            o(Err(()));
                        }
                    }
                }
            }
        }
    }
}
