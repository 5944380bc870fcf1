//! One scan of the four persistence and probation maps ([`Scanned`], read by
//! [`PersistMaps`] or any [`ScanSource`]), and the [`Scanner`] that runs them one at a time on
//! a thread of its own and shares each result among the callers waiting for it.

use std::{
    io,
    path::Path,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use aya::maps::MapError;
use lb_common::{maps, PersistKeyV4, PersistKeyV6, PersistValue, ProbationValue};
use tokio::sync::watch;
use tracing::warn;

use super::{walk, BpfMap, WalkStats, Walked};
use crate::dataplane::{probation_as_persist, DataplaneError, PersistEntry};

// ---------------------------------------------------------------------------------------
// One scan of the four maps

/// What one scan of the four maps read.
#[derive(Clone, Debug, Default)]
pub struct Scanned {
    /// Every entry, as the control plane counts clients and drains ([`PersistEntry::all`]).
    pub entries: Vec<PersistEntry>,
    /// `PERSIST_V4` then `PROBATION_V4` (its values as their `PersistValue` part), with
    /// keys: what the slot flag sweep reads for the IPv4 services. Empty from a source that
    /// does not keep keys.
    pub v4: Vec<(PersistKeyV4, PersistValue)>,
    /// The same of `PERSIST_V6` then `PROBATION_V6`, for the IPv6 services. The walks'
    /// own vectors, kept rather than dropped: 36 bytes an entry (20 of key, 16 of value)
    /// beside the 24 of its [`PersistEntry`], until the next scan replaces this one.
    pub v6: Vec<(PersistKeyV6, PersistValue)>,
    /// How many of `v4`, from the start, are `PERSIST_V4`'s (established clients); the rest
    /// are `PROBATION_V4`'s.
    pub established_v4: usize,
    /// The same of `v6`.
    pub established_v6: usize,
    /// One per map walked.
    pub maps: Vec<WalkStats>,
}

impl Scanned {
    /// From the four walks.
    pub fn from_walks(
        v4: Walked<PersistKeyV4, PersistValue>,
        v6: Walked<PersistKeyV6, PersistValue>,
        p4: Walked<PersistKeyV4, ProbationValue>,
        p6: Walked<PersistKeyV6, ProbationValue>,
    ) -> Self {
        let entries = PersistEntry::all(&v4.entries, &v6.entries, &p4.entries, &p6.entries);
        let maps = vec![v4.stats, v6.stats, p4.stats, p6.stats];
        Self {
            entries,
            established_v4: v4.entries.len(),
            established_v6: v6.entries.len(),
            v4: keyed(v4.entries, &p4.entries),
            v6: keyed(v6.entries, &p6.entries),
            maps,
        }
    }

    /// Some walk stopped at its map's `max_entries` before the end.
    pub fn truncated(&self) -> bool {
        self.maps.iter().any(|m| m.truncated)
    }
}

/// A persistence map's entries then its probation map's, as their `PersistValue` part.
fn keyed<K: Copy>(
    mut persist: Vec<(K, PersistValue)>,
    probation: &[(K, ProbationValue)],
) -> Vec<(K, PersistValue)> {
    persist.extend(probation.iter().map(|(k, v)| (*k, probation_as_persist(v))));
    persist
}

/// Reads the four maps (its own descriptors; called on the scanner's thread).
pub type ScanSource = Box<dyn Fn() -> Result<Scanned, DataplaneError> + Send + Sync>;

/// The four maps of the kernel, by descriptors of their own.
pub struct PersistMaps {
    pub v4: BpfMap<PersistKeyV4, PersistValue>,
    pub v6: BpfMap<PersistKeyV6, PersistValue>,
    pub p4: BpfMap<PersistKeyV4, ProbationValue>,
    pub p6: BpfMap<PersistKeyV6, ProbationValue>,
}

impl PersistMaps {
    /// The maps pinned in `maps_dir` (`pin::Pins::maps_dir`).
    pub fn from_pins(maps_dir: &Path) -> Result<Self, DataplaneError> {
        Ok(Self {
            v4: BpfMap::from_pin(&maps_dir.join(maps::PERSIST_V4), maps::PERSIST_V4)?,
            v6: BpfMap::from_pin(&maps_dir.join(maps::PERSIST_V6), maps::PERSIST_V6)?,
            p4: BpfMap::from_pin(&maps_dir.join(maps::PROBATION_V4), maps::PROBATION_V4)?,
            p6: BpfMap::from_pin(&maps_dir.join(maps::PROBATION_V6), maps::PROBATION_V6)?,
        })
    }

    /// One scan of the four maps.
    pub fn scan(&self) -> Result<Scanned, DataplaneError> {
        Ok(Scanned::from_walks(
            walk(&self.v4)?,
            walk(&self.v6)?,
            walk(&self.p4)?,
            walk(&self.p6)?,
        ))
    }

    /// A [`ScanSource`] over these maps.
    pub fn into_source(self) -> ScanSource {
        Box::new(move || self.scan())
    }
}

// ---------------------------------------------------------------------------------------
// The shared scanner

/// A finished scan: when it started, and what it read or why it failed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Scans finished before this one (0 for the first).
    pub seq: u64,
    /// When the scan started: every entry present from then to its end was read.
    pub started: Instant,
    pub took: Duration,
    pub result: Result<Arc<Scanned>, Arc<DataplaneError>>,
}

impl Outcome {
    /// Age of the data (since the scan started).
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

#[derive(Default)]
struct State {
    latest: Option<Outcome>,
    /// Start of the scan in flight.
    running: Option<Instant>,
    /// Somebody waits for a scan newer than the last one and the one in flight.
    wanted: bool,
    closed: bool,
}

struct Inner {
    source: ScanSource,
    state: Mutex<State>,
    changed: Condvar,
    published: watch::Sender<Option<Outcome>>,
}

/// Runs the scans of the persistence and probation maps, one at a time, and shares them.
pub struct Scanner {
    inner: Arc<Inner>,
}

impl Scanner {
    /// A scanner reading through `source`, with its thread (which ends when the scanner is
    /// dropped, after the scan in flight).
    pub fn new(source: ScanSource) -> Arc<Self> {
        let inner = Arc::new(Inner {
            source,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            published: watch::channel(None).0,
        });
        let thread = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("ikelb-scan".into())
            .spawn(move || thread.run())
            .expect("spawning the persistence scan thread");
        Arc::new(Self { inner })
    }

    /// The last finished scan, however old (never waits, never scans).
    pub fn latest(&self) -> Option<Outcome> {
        self.inner.lock().latest.clone()
    }

    /// A scan started at or after `not_before` (at most now): the last one, the one in
    /// flight, or the next one. Blocks; call off the event loop.
    pub fn get_blocking(&self, not_before: Instant) -> Outcome {
        let not_before = not_before.min(Instant::now());
        let mut s = self.inner.lock();
        loop {
            if let Some(o) = self.inner.ask(&mut s, not_before) {
                return o;
            }
            s = self.inner.changed.wait(s).expect("scan state not poisoned");
        }
    }

    /// As [`get_blocking`](Self::get_blocking), without blocking the caller's thread.
    pub async fn get(&self, not_before: Instant) -> Outcome {
        let not_before = not_before.min(Instant::now());
        let mut rx = self.inner.published.subscribe();
        let ready = {
            let mut s = self.inner.lock();
            self.inner.ask(&mut s, not_before)
        };
        if let Some(o) = ready {
            return o;
        }
        let o = rx
            .wait_for(|o| o.as_ref().is_some_and(|o| o.started >= not_before))
            .await
            .expect("the sender lives as long as the scanner");
        o.clone().expect("checked by wait_for")
    }

    /// A scan no older than `max_age` (see [`get_blocking`](Self::get_blocking)).
    pub fn within_blocking(&self, max_age: Duration) -> Outcome {
        self.get_blocking(ago(max_age))
    }
}

/// `now − d` (now when the monotonic clock is younger than `d`).
pub fn ago(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(d).unwrap_or(now)
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.changed.notify_all();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("scan state not poisoned")
    }

    /// The last scan if it started at or after `not_before`; else asks for one (unless the
    /// one in flight started late enough) and returns None.
    fn ask(&self, s: &mut State, not_before: Instant) -> Option<Outcome> {
        if let Some(o) = s.latest.as_ref().filter(|o| o.started >= not_before) {
            return Some(o.clone());
        }
        if s.running.is_none_or(|t| t < not_before) && !s.wanted {
            s.wanted = true;
            self.changed.notify_all();
        }
        None
    }

    fn run(&self) {
        let mut seq = 0;
        loop {
            let started = {
                let mut s = self.lock();
                while !s.wanted && !s.closed {
                    s = self.changed.wait(s).expect("scan state not poisoned");
                }
                if s.closed {
                    return;
                }
                s.wanted = false;
                let now = Instant::now();
                s.running = Some(now);
                now
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.source)()))
                .unwrap_or_else(|_| {
                    Err(DataplaneError::Read {
                        map: maps::PERSIST_V4,
                        source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
                            call: "persistence scan",
                            io_error: io::Error::other("the scan panicked"),
                        })),
                    })
                });
            if let Ok(scanned) = &result {
                for m in scanned.maps.iter().filter(|m| m.truncated) {
                    warn!(
                        map = m.map,
                        max_entries = m.max_entries,
                        "persistence scan stopped at max_entries visits before the end of the map \
                         (heavy insert churn): counts are a lower bound; drains and the slot \
                         flag sweep wait for a complete scan"
                    );
                }
            }
            let outcome = Outcome {
                seq,
                started,
                took: started.elapsed(),
                result: result.map(Arc::new).map_err(Arc::new),
            };
            seq += 1;
            let mut s = self.lock();
            s.latest = Some(outcome.clone());
            s.running = None;
            self.published.send_replace(Some(outcome));
            self.changed.notify_all();
        }
    }
}
