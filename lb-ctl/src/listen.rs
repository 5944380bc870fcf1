//! Bounds shared by the daemon's two listeners, the control socket ([`crate::api`]) and
//! `/metrics` ([`crate::metrics::http`]): a fixed number of connection slots, accept errors
//! that back off instead of spinning, and the descriptor limit raised at start.
//!
//! **Over the cap** a new connection is still accepted (the listen queue never fills, the
//! daemon keeps answering) and takes the slot of the connection that has waited longest for
//! a request (idle, or still sending one): that one is closed. Only when every slot is in
//! the middle of a request is the new connection told "busy" and closed at once. A real
//! client (lb-ctl, a Prometheus scrape) sends its request as soon as it connects, so a pile
//! of idle connections cannot lock it out; idle ones are also closed by the listeners' own
//! timeouts. A listener out of descriptors (`EMFILE`) closes the connection idle longest
//! to free one, and otherwise backs off. docs/operations.md, "Limits and faults".

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use prometheus::{IntCounterVec, Opts};
use tokio::sync::Notify;
use tracing::{info, warn};

fn counter_vec(name: &str, help: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &["listener"]).expect("valid metric definition")
}

/// `ikelb_accept_errors_total{listener}`: failed `accept` calls (EMFILE, ENFILE, ENOBUFS, …).
pub static ACCEPT_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ikelb_accept_errors_total",
        "Failed accepts on a listener (control, metrics), e.g. out of file descriptors; the listener backs off and retries.",
    )
});

/// `ikelb_connections_evicted_total{listener}`: connections closed to make room for a newer
/// one while every slot was taken.
pub static EVICTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ikelb_connections_evicted_total",
        "Connections closed because every slot was taken and they had waited longest without a complete request.",
    )
});

/// `ikelb_connections_refused_total{listener}`: connections closed at once because every
/// slot was busy with a request.
pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ikelb_connections_refused_total",
        "Connections answered busy and closed because every slot was serving a request.",
    )
});

/// `ikelb_connections_timed_out_total{listener}`: connections closed by the idle or
/// header-read timeout.
pub static TIMED_OUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ikelb_connections_timed_out_total",
        "Connections closed because no complete request arrived in time (idle or slow clients).",
    )
});

/// Every counter of this module, for the metrics registry.
pub fn counters() -> [IntCounterVec; 4] {
    [
        ACCEPT_ERRORS.clone(),
        EVICTED.clone(),
        REFUSED.clone(),
        TIMED_OUT.clone(),
    ]
}

/// A fixed number of connection slots for one listener.
#[derive(Clone, Debug)]
pub struct Slots {
    listener: &'static str,
    cap: usize,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ids are handed out in accept order: the first idle entry is the one idle longest
    /// among those admitted earliest.
    next: u64,
    conns: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Requests in progress; 0 = waiting for one.
    busy: u32,
    evict: Arc<Notify>,
}

/// What [`Slots::admit`] decided for a new connection.
#[derive(Debug)]
pub enum Admit {
    /// Serve it; the slot is freed when this is dropped.
    Slot(Slot),
    /// Every slot is serving a request: close the new connection.
    Busy,
}

impl Slots {
    /// `cap` slots for `listener` (`control`, `metrics`: the metrics label).
    pub fn new(listener: &'static str, cap: usize) -> Self {
        assert!(cap > 0, "at least one connection slot");
        Self {
            listener,
            cap,
            inner: Arc::default(),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections holding a slot.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the connection that has waited longest without a request, to free its
    /// descriptor (the listener is out of them); false when every connection is busy.
    pub fn evict_idle(&self) -> bool {
        let mut inner = self.lock();
        let Some(victim) = inner
            .conns
            .iter()
            .find(|(_, e)| e.busy == 0)
            .map(|(&id, _)| id)
        else {
            return false;
        };
        let e = inner.conns.remove(&victim).expect("just found");
        e.evict.notify_one();
        EVICTED.with_label_values(&[self.listener]).inc();
        true
    }

    /// A slot for a just-accepted connection: a free one, else the one of the oldest
    /// connection without a request in progress (which is told to close), else none.
    pub fn admit(&self) -> Admit {
        if self.len() >= self.cap && !self.evict_idle() {
            REFUSED.with_label_values(&[self.listener]).inc();
            return Admit::Busy;
        }
        // notify_one (in evict_idle) keeps the permit if the evicted connection is not
        // waiting right now.
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        let evict = Arc::new(Notify::new());
        inner.conns.insert(
            id,
            Entry {
                busy: 0,
                evict: Arc::clone(&evict),
            },
        );
        Admit::Slot(Slot {
            id,
            listener: self.listener,
            inner: Arc::clone(&self.inner),
            evict,
        })
    }
}

/// One connection's slot; freed on drop.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    listener: &'static str,
    inner: Arc<Mutex<Inner>>,
    evict: Arc<Notify>,
}

impl Slot {
    /// Marks a request in progress until the guard is dropped: the connection is not
    /// evicted meanwhile.
    pub fn busy(&self) -> Busy {
        self.adjust(|b| *b += 1);
        Busy {
            id: self.id,
            inner: Arc::clone(&self.inner),
        }
    }

    fn adjust(&self, f: impl FnOnce(&mut u32)) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = inner.conns.get_mut(&self.id) {
            f(&mut e.busy);
        }
    }

    /// Completes when the connection must close to make room for a newer one.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// The listener's metrics label.
    pub fn listener(&self) -> &'static str {
        self.listener
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .conns
            .remove(&self.id);
    }
}

/// A request in progress ([`Slot::busy`]).
#[derive(Debug)]
pub struct Busy {
    id: u64,
    inner: Arc<Mutex<Inner>>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = inner.conns.get_mut(&self.id) {
            e.busy = e.busy.saturating_sub(1);
        }
    }
}

/// First back-off after a failed accept; doubled on each further failure up to
/// [`ACCEPT_BACKOFF_MAX`], back to the minimum after an accept succeeds.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// After closing an idle connection for its descriptor ([`Slots::evict_idle`]): a moment
/// for its task to close it before the next accept.
pub const EVICT_PAUSE: Duration = Duration::from_millis(1);

/// A burst of failed accepts ends after this long without one.
pub const ACCEPT_QUIET: Duration = Duration::from_secs(10);

/// Whether a failed accept means this process (or the system) is out of descriptors.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Failed accepts of one listener: counted, logged once per burst (the first failure of a
/// burst, and the burst's count at the first accept after [`ACCEPT_QUIET`] without a
/// failure), with an exponential back-off so a listener out of descriptors neither spins
/// nor floods the log.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    /// Failures in the current burst, its first and its last.
    burst: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    delay: Duration,
}

impl AcceptErrors {
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            burst: 0,
            first: None,
            last: None,
            delay: ACCEPT_BACKOFF_MIN,
        }
    }

    /// Records a failed accept; returns how long to wait before the next one.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        self.failed_at(e, Instant::now())
    }

    fn failed_at(&mut self, e: &io::Error, now: Instant) -> Duration {
        ACCEPT_ERRORS.with_label_values(&[self.listener]).inc();
        let new_burst = self
            .last
            .is_none_or(|l| now.saturating_duration_since(l) >= ACCEPT_QUIET);
        if new_burst {
            self.end_burst();
            self.first = Some(now);
            self.delay = ACCEPT_BACKOFF_MIN;
            warn!(
                listener = self.listener,
                "{} listener: accept failed: {e}; backing off up to {}s, further failures are counted in ikelb_accept_errors_total{{listener=\"{}\"}} and logged again after {}s without one",
                self.listener,
                ACCEPT_BACKOFF_MAX.as_secs(),
                self.listener,
                ACCEPT_QUIET.as_secs()
            );
        } else {
            self.delay = (self.delay * 2).min(ACCEPT_BACKOFF_MAX);
        }
        self.burst += 1;
        self.last = Some(now);
        self.delay
    }

    /// Records a successful accept: the back-off starts over; a burst older than
    /// [`ACCEPT_QUIET`] is summed up.
    pub fn accepted(&mut self) {
        self.accepted_at(Instant::now());
    }

    fn accepted_at(&mut self, now: Instant) {
        self.delay = ACCEPT_BACKOFF_MIN;
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) >= ACCEPT_QUIET)
        {
            self.end_burst();
        }
    }

    fn end_burst(&mut self) {
        if self.burst > 0 {
            let took = match (self.first, self.last) {
                (Some(f), Some(l)) => l.saturating_duration_since(f),
                _ => Duration::ZERO,
            };
            info!(
                listener = self.listener,
                "{} listener: accepting again after {} failed accepts in {:.1}s",
                self.listener,
                self.burst,
                took.as_secs_f64()
            );
        }
        self.burst = 0;
        self.first = None;
        self.last = None;
    }

    /// Failures in the current burst.
    pub fn burst(&self) -> u64 {
        self.burst
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a systemd unit without `LimitNOFILE=`
/// starts services at 1024) and logs the figure. Connection slots bound the listeners'
/// share; the rest is for maps, health-check sockets and `ip` look-ups.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        warn!("reading RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            warn!(
                "raising RLIMIT_NOFILE from {before} to {}: {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
            return;
        }
    }
    info!(
        soft = lim.rlim_cur,
        hard = lim.rlim_max,
        "file descriptor limit {} (RLIMIT_NOFILE, was {before})",
        lim.rlim_cur
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: Admit) -> Slot {
        match a {
            Admit::Slot(s) => s,
            Admit::Busy => panic!("expected a slot"),
        }
    }

    #[tokio::test]
    async fn the_oldest_idle_connection_makes_room_and_busy_ones_are_kept() {
        let slots = Slots::new("test-slots", 3);
        let a = slot(slots.admit());
        let b = slot(slots.admit());
        let c = slot(slots.admit());
        assert_eq!(slots.len(), 3);
        // a is serving a request: b, the oldest idle one, goes.
        let busy_a = a.busy();
        let d = slot(slots.admit());
        assert_eq!(slots.len(), 3);
        tokio::time::timeout(Duration::from_secs(5), b.evicted())
            .await
            .expect("b was told to close");
        drop(b); // its task ends: the slot was already handed over
        assert_eq!(slots.len(), 3);
        // Everyone busy: the new connection is refused, nobody evicted.
        let (_bc, _bd) = (c.busy(), d.busy());
        let refused_before = REFUSED.with_label_values(&["test-slots"]).get();
        assert!(matches!(slots.admit(), Admit::Busy));
        assert_eq!(
            REFUSED.with_label_values(&["test-slots"]).get(),
            refused_before + 1
        );
        // a's request done: it is the oldest idle one now.
        drop(busy_a);
        let e = slot(slots.admit());
        tokio::time::timeout(Duration::from_secs(5), a.evicted())
            .await
            .expect("a was told to close");
        assert!(EVICTED.with_label_values(&["test-slots"]).get() >= 2);
        drop((a, c, d, e));
        assert!(slots.is_empty());
    }

    #[test]
    fn accept_errors_back_off_and_count_once_per_burst() {
        let mut errs = AcceptErrors::new("test-accept");
        let before = ACCEPT_ERRORS.with_label_values(&["test-accept"]).get();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(out_of_descriptors(&emfile));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let delays: Vec<Duration> = (0..10).map(|i| errs.failed_at(&emfile, ms(i))).collect();
        assert_eq!(delays[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(delays[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), ACCEPT_BACKOFF_MAX);
        assert_eq!(errs.burst(), 10);
        assert_eq!(
            ACCEPT_ERRORS.with_label_values(&["test-accept"]).get(),
            before + 10
        );
        // An accept in between (a freed descriptor) resets the back-off, not the burst.
        errs.accepted_at(ms(20));
        assert_eq!(errs.burst(), 10);
        assert_eq!(errs.failed_at(&emfile, ms(30)), ACCEPT_BACKOFF_MIN * 2);
        assert_eq!(errs.burst(), 11);
        // Quiet for ACCEPT_QUIET: the burst ends; the next failure starts a new one.
        errs.accepted_at(ms(30) + ACCEPT_QUIET);
        assert_eq!(errs.burst(), 0);
        assert_eq!(
            errs.failed_at(&emfile, ms(40) + ACCEPT_QUIET),
            ACCEPT_BACKOFF_MIN,
            "a new burst starts over"
        );
        assert_eq!(errs.burst(), 1);
    }

    /// Logged: one warning per burst however many failures, one summary when it ends.
    #[test]
    fn a_burst_of_accept_errors_is_logged_once() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let mut errs = AcceptErrors::new("test-log");
            let emfile = io::Error::from_raw_os_error(libc::EMFILE);
            let t0 = Instant::now();
            for i in 0..1000 {
                errs.failed_at(&emfile, t0 + Duration::from_millis(i));
                if i % 10 == 0 {
                    errs.accepted_at(t0 + Duration::from_millis(i));
                }
            }
            errs.accepted_at(t0 + Duration::from_millis(999) + ACCEPT_QUIET);
        });
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(
            log.contains("WARN") && log.contains("Too many open files"),
            "{log}"
        );
        assert!(
            log.contains("accepting again after 1000 failed accepts in 1.0s"),
            "{log}"
        );
    }
}
