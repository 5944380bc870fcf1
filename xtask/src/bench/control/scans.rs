//! What reading the persistence map costs at 1M clients: scrapes of `/metrics`, `lb-ctl
//! backend list` and full walks of the daemon's pinned `PERSIST_V4`, idle and under insert
//! churn, for this build's daemon and, when given, another build's.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use lb_common::{PersistKeyV4, PersistValue};

use super::Lab;
use crate::{
    stats::median,
    sys::{self, NetNs, RunPrefix},
};

/// Clients in `PERSIST_V4` for the scan figures (the default `persistence_entries` is 2^20).
pub const SCAN_CLIENTS: u32 = 1_000_000;
/// Insert churn: fresh clients written to `PERSIST_V4` per second (each evicts the least
/// recently used entry: the map is nearly full).
pub const CHURN_PER_S: u32 = 200_000;
/// A scrape, a `backend list` or a walk that takes longer is reported as not finished.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
const SCAN_BACKENDS: u32 = 10;

/// What one daemon build answered with 1M clients (milliseconds; `None`: not within
/// [`SCAN_TIMEOUT`]).
#[derive(Clone, Debug, Default)]
pub struct DaemonScans {
    /// Which `lb-ctl`.
    pub binary: String,
    /// The first scrape (no recent scan to share).
    pub scrape_first_ms: Option<f64>,
    /// Median of the next 5 scrapes, back to back.
    pub scrape_ms: Option<f64>,
    /// Median of 5 `lb-ctl backend list --json` (process start included).
    pub list_ms: Option<f64>,
    /// Under insert churn: the first scrape (the last scan is older than any sharing
    /// window), the median of the next 3, then of 3 lists.
    pub churn_scrape_first_ms: Option<f64>,
    pub churn_scrape_ms: Option<f64>,
    pub churn_list_ms: Option<f64>,
    /// `ikelb_persistence_entries` of the first scrape.
    pub entries_scraped: Option<f64>,
}

/// Full walks of the daemon's pinned `PERSIST_V4` with 1M entries, from the benchmark.
#[derive(Clone, Debug, Default)]
pub struct WalkTimes {
    /// `BPF_MAP_LOOKUP_BATCH` (`lb_ctl::scan::walk`), median of 3.
    pub batch_ms: f64,
    /// Today's walk before this change: aya's `GET_NEXT_KEY` + `LOOKUP_ELEM` iterator, no
    /// cap (median of 3).
    pub next_key_ms: f64,
    /// Under churn: one batch walk, its entries and whether it was truncated.
    pub churn_batch_ms: f64,
    pub churn_batch_entries: u64,
    pub churn_batch_truncated: bool,
    /// Under churn: the uncapped `GET_NEXT_KEY` walk (`None`: not within SCAN_TIMEOUT) and
    /// the keys it read more than once by then.
    pub churn_next_key_ms: Option<f64>,
    pub churn_next_key_duplicates: u64,
    /// Inserts per second the churn thread achieved.
    pub churn_inserts_per_s: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Scans {
    pub clients: u32,
    pub walks: WalkTimes,
    /// This build's daemon.
    pub after: DaemonScans,
    /// `--lb-ctl-before`'s daemon, when given.
    pub before: Option<DaemonScans>,
}

/// Runs this build's daemon (and `before`'s, when given) with [`SCAN_CLIENTS`] established
/// clients and times scrapes, `backend list` and full walks, idle and under insert churn.
pub fn scans(prefix: &RunPrefix, lb_ctl: &PathBuf, before: Option<&PathBuf>) -> Result<Scans> {
    let (after, walks) = daemon_scans(prefix, "scan", lb_ctl, true)?;
    let before = match before {
        Some(b) => Some(daemon_scans(prefix, "scanb", b, false)?.0),
        None => None,
    };
    Ok(Scans {
        clients: SCAN_CLIENTS,
        walks: walks.unwrap_or_default(),
        after,
        before,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_opt(v: &[Option<f64>]) -> Option<f64> {
    let all: Option<Vec<f64>> = v.iter().copied().collect();
    all.map(|a| median(&a))
}

/// One `GET /metrics` from inside `ns`: its duration and body (`None`: timed out).
fn scrape(ns: &NetNs) -> Result<Option<(f64, String)>> {
    use std::io::{Read, Write};
    ns.run(|| -> Result<Option<(f64, String)>> {
        let start = Instant::now();
        let mut s =
            std::net::TcpStream::connect("127.0.0.1:9435").context("connecting to /metrics")?;
        s.set_read_timeout(Some(SCAN_TIMEOUT))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        let mut body = Vec::new();
        match s.read_to_end(&mut body) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
        let t = ms(start.elapsed());
        let text = String::from_utf8_lossy(&body).into_owned();
        ensure!(
            text.starts_with("HTTP/1.1 200"),
            "scrape: {}",
            text.lines().next().unwrap_or("")
        );
        Ok(Some((t, text)))
    })?
}

/// `lb-ctl --socket SOCK backend list --json`: its duration (`None`: timed out, killed).
fn list(lb_ctl: &PathBuf, socket: &Path) -> Result<Option<f64>> {
    let start = Instant::now();
    let mut child = Command::new(lb_ctl)
        .arg("--socket")
        .arg(socket)
        .args(["backend", "list", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running lb-ctl backend list")?;
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "lb-ctl backend list failed: {status}");
            return Ok(Some(ms(start.elapsed())));
        }
        if start.elapsed() > SCAN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        sys::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn persist_map(bpffs: &Path) -> Result<MapData> {
    let path = lb_ctl::pin::Pins::new(bpffs, lb_ctl::paths::INSTANCE).map("PERSIST_V4");
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

/// The daemon's `PERSIST_V4`, opened from its pin.
type PersistMap = AyaHashMap<MapData, PersistKeyV4, PersistValue>;

fn persist_hash(bpffs: &Path) -> Result<PersistMap> {
    Ok(AyaHashMap::try_from(Map::LruHashMap(persist_map(bpffs)?))?)
}

/// An established entry of client `client` (host order) on backend id `backend`, last seen
/// at tick `now`.
fn insert(m: &mut PersistMap, client: u32, backend: u32, now: u32) -> Result<()> {
    let key = PersistKeyV4 {
        service: 0,
        client: client.to_be(),
    };
    let v = PersistValue {
        backend,
        atime: now,
        ..PersistValue::default()
    };
    m.insert(&key, &v, 0).context("PERSIST_V4 insert")
}

/// Today's walk before the shared scan: every key by `GET_NEXT_KEY`, each looked up, no cap;
/// stops at `deadline` (`None`). Returns the time and the keys read more than once.
fn next_key_walk(m: &PersistMap, deadline: Duration) -> Option<(f64, u64)> {
    let start = Instant::now();
    let mut seen = std::collections::HashSet::new();
    let mut dups = 0u64;
    for (i, r) in m.iter().enumerate() {
        if let Ok((k, _)) = r {
            if !seen.insert(k) {
                dups += 1;
            }
        }
        if i % 4096 == 0 && start.elapsed() > deadline {
            return None;
        }
    }
    Some((ms(start.elapsed()), dups))
}

fn batch_walk(bpffs: &Path) -> Result<(f64, lb_ctl::scan::WalkStats)> {
    use std::os::fd::AsFd;
    let data = persist_map(bpffs)?;
    let fd = data.fd().as_fd().try_clone_to_owned()?;
    let m = lb_ctl::scan::BpfMap::<PersistKeyV4, PersistValue>::from_fd(fd, "PERSIST_V4")
        .map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))?;
    let start = Instant::now();
    let w = lb_ctl::scan::walk(&m).map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))?;
    Ok((ms(start.elapsed()), w.stats))
}

/// Inserts fresh clients into `PERSIST_V4` at [`CHURN_PER_S`] until dropped.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(u64, f64)>>>,
}

impl Churn {
    fn start(bpffs: &Path) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut m = persist_hash(bpffs)?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || -> Result<(u64, f64)> {
            let start = Instant::now();
            let mut n = 0u64;
            let now = crate::lb::now_ticks();
            while !flag.load(Ordering::Relaxed) {
                // Keep to the rate: write what is due, then sleep a millisecond.
                let due = (start.elapsed().as_secs_f64() * f64::from(CHURN_PER_S)) as u64;
                while n < due {
                    let client = u32::from_be_bytes([100, 64, 0, 0]).wrapping_add(n as u32);
                    let backend = 1 + (n % u64::from(SCAN_BACKENDS)) as u32;
                    insert(&mut m, client, backend, now)?;
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok((n, start.elapsed().as_secs_f64()))
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops; inserts per second achieved.
    fn finish(mut self) -> Result<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (n, secs) = self
            .thread
            .take()
            .expect("running")
            .join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
        Ok(n as f64 / secs)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn daemon_scans(
    prefix: &RunPrefix,
    what: &str,
    lb_ctl: &PathBuf,
    walks: bool,
) -> Result<(DaemonScans, Option<WalkTimes>)> {
    let mut lab = Lab::new(prefix, what, SCAN_BACKENDS)?;
    lab.start(lb_ctl, None)?;
    let (gw, bpffs) = (&lab.gw, lab.bpffs.path());
    // 1M established clients, spread over the backends (ids 1 … 10 in config order).
    {
        let mut m = persist_hash(bpffs)?;
        let now = crate::lb::now_ticks();
        for i in 0..SCAN_CLIENTS {
            if i % 65_536 == 0 {
                sys::check_interrupted()?;
            }
            let client = u32::from_be_bytes([100, 0, 0, 0]) + i;
            insert(&mut m, client, 1 + i % SCAN_BACKENDS, now)?;
        }
    }
    let socket = lab.dir.path().join("ctl.sock");
    let mut out = DaemonScans {
        binary: lb_ctl.display().to_string(),
        ..DaemonScans::default()
    };
    // Whatever the daemon scanned at start is older than any sharing window by now.
    sys::sleep(Duration::from_secs(6))?;
    let first = scrape(gw)?;
    out.scrape_first_ms = first.as_ref().map(|f| f.0);
    out.entries_scraped = first.as_ref().and_then(|(_, text)| {
        text.lines()
            .find(|l| l.starts_with("ikelb_persistence_entries "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    });
    let mut s = Vec::new();
    for _ in 0..5 {
        s.push(scrape(gw)?.map(|x| x.0));
    }
    out.scrape_ms = median_opt(&s);
    let mut l = Vec::new();
    for _ in 0..5 {
        l.push(list(lb_ctl, &socket)?);
    }
    out.list_ms = median_opt(&l);

    let mut times = None;
    if walks {
        let m = persist_hash(bpffs)?;
        let mut b = Vec::new();
        let mut n = Vec::new();
        for _ in 0..3 {
            b.push(batch_walk(bpffs)?.0);
            n.push(next_key_walk(&m, SCAN_TIMEOUT).map_or(f64::NAN, |x| x.0));
        }
        times = Some(WalkTimes {
            batch_ms: median(&b),
            next_key_ms: median(&n),
            ..WalkTimes::default()
        });
    }

    // Insert churn.
    let churn = Churn::start(bpffs)?;
    // As before the first idle scrape: no scan to share.
    sys::sleep(Duration::from_secs(6))?;
    out.churn_scrape_first_ms = scrape(gw)?.map(|x| x.0);
    let mut s = Vec::new();
    for _ in 0..3 {
        let r = scrape(gw)?.map(|x| x.0);
        s.push(r);
        if r.is_none() {
            break;
        }
    }
    out.churn_scrape_ms = median_opt(&s);
    let mut l = Vec::new();
    for _ in 0..3 {
        let r = list(lb_ctl, &socket)?;
        l.push(r);
        if r.is_none() {
            break;
        }
    }
    out.churn_list_ms = median_opt(&l);
    if let Some(t) = times.as_mut() {
        let (ms, stats) = batch_walk(bpffs)?;
        t.churn_batch_ms = ms;
        t.churn_batch_entries = stats.visited - stats.duplicates;
        t.churn_batch_truncated = stats.truncated;
        let m = persist_hash(bpffs)?;
        let start = Instant::now();
        match next_key_walk(&m, SCAN_TIMEOUT) {
            Some((ms, dups)) => {
                t.churn_next_key_ms = Some(ms);
                t.churn_next_key_duplicates = dups;
            }
            None => {
                t.churn_next_key_ms = None;
                eprintln!(
                    "  GET_NEXT_KEY walk under churn: not done after {:.0} s",
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    let rate = churn.finish()?;
    if let Some(t) = times.as_mut() {
        t.churn_inserts_per_s = rate;
    }
    lab.running("the scan figures")?;
    Ok((out, times))
}
