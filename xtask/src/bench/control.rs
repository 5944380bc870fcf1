//! Control-plane costs: Maglev table builds, the CPU the daemon spends keeping 1,000
//! backends health-checked (ICMP every 5 s) and their next hops current, and what reading
//! the persistence map costs at 1M clients (a scrape, `backend list`, a full walk), idle and
//! under insert churn.

use std::{
    fs,
    mem::size_of,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use lb_common::{
    maglev::{self, Member},
    PersistKeyV4, PersistValue,
};

use crate::{
    family::Family,
    lb::{self, DaemonPaths, HASH_SEED},
    stats::median,
    sys::{self, BpfFs, Child, NetNs, RunPrefix, TempDir, Veth},
};

pub const MAGLEV_M: u32 = 65_537;
pub const MAGLEV_SIZES: [u32; 3] = [10, 100, 1_000];
pub const HC_BACKENDS: u32 = 1_000;
const HC_INTERVAL: Duration = Duration::from_secs(5);
/// Intervals observed once the daemon runs.
const HC_INTERVALS: u32 = 3;

/// Milliseconds to build one table of `MAGLEV_M` slots for `n` backends (median of 7).
pub fn maglev_ms(n: u32) -> f64 {
    let members: Vec<Member> = (0..n)
        .map(|i| Member {
            id: i + 1,
            key: Ipv4Addr::from(u32::from_be_bytes([10, 0, 0, 0]) + 11 + i)
                .octets()
                .to_vec(),
            weight: 1,
            usable: true,
        })
        .collect();
    let mut t = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let table = maglev::build(&members, MAGLEV_M, HASH_SEED);
        t.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(table.len(), MAGLEV_M as usize);
    }
    median(&t)
}

/// What the daemon cost with 1,000 health-checked backends.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub backends: u32,
    pub interval_s: f64,
    /// Seconds observed.
    pub observed_s: f64,
    /// ICMP echo requests the backends received per second (1,000 / 5 s = 200 expected).
    pub echoes_per_s: f64,
    /// CPU of the daemon's own threads, % of one core.
    pub daemon_cpu_pct: f64,
    /// CPU of the processes it ran (`ip route get` / `ip neigh show` per backend per
    /// interval), % of one core.
    pub children_cpu_pct: f64,
    /// CPU of sending 1,000 echo requests and reading the replies from one socket in a
    /// tight loop, per interval, as % of one core: the floor any ICMP checker pays.
    pub floor_cpu_pct: f64,
    pub note: String,
}

/// Runs `lb-ctl daemon` with 1,000 backends in a namespace whose peer holds all 1,000
/// addresses (the kernel answers ARP and ping), and measures its CPU over three intervals.
pub fn health(prefix: &RunPrefix, lb_ctl: &PathBuf, daemon_cpu: usize) -> Result<Health> {
    let gw = NetNs::new(prefix.name("hcgw"))?;
    let be = NetNs::new(prefix.name("hcbe"))?;
    let _link = Veth::new((&gw, "int"), (&be, "be"))?;
    gw.ip(&["addr", "add", "10.1.255.254/16", "dev", "int"])?;
    let addrs: Vec<Ipv4Addr> = (0..HC_BACKENDS)
        .map(|i| Ipv4Addr::from(u32::from_be_bytes([10, 1, 0, 1]) + i))
        .collect();
    let mut cmds = String::new();
    for a in &addrs {
        cmds.push_str(&format!("addr add {a}/16 dev be\n"));
    }
    be.ip_batch(&cmds)?;
    // One neighbour entry per backend: 1,000 stays under the neighbour table's default hard
    // limit (gc_thresh3 = 1024, global).

    let floor_cpu_pct = icmp_floor(&gw, &addrs)?;

    let dir = TempDir::named(prefix, "hc")?;
    let bpffs = BpfFs::mount_in(&dir)?;
    let yaml = lb::config_yaml(
        &["int"],
        Ipv4Addr::VIP,
        &addrs,
        Some(&DaemonPaths {
            dir: dir.path(),
            bpffs: bpffs.path(),
        }),
        "",
    );
    let cfg = dir.path().join("ikelb.yaml");
    fs::write(&cfg, yaml)?;
    let log_path = dir.path().join("daemon.log");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        gw.name(),
        "taskset",
        "-c",
        &daemon_cpu.to_string(),
    ])
    .arg(lb_ctl)
    .args(["daemon", "--config"])
    .arg(&cfg);
    let mut daemon = Child::spawn("lb-ctl daemon (health)", cmd, log_path.clone())?;
    // Running = the program is attached; then let one interval pass.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        sys::check_interrupted()?;
        if daemon.exit_status().is_some() {
            bail!(
                "lb-ctl daemon with {HC_BACKENDS} backends exited: {}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if gw.ip(&["link", "show", "dev", "int"])?.contains("xdp") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "lb-ctl daemon with {HC_BACKENDS} backends did not attach within 90 s"
        );
        sys::sleep(Duration::from_millis(200))?;
    }
    sys::sleep(HC_INTERVAL)?;
    let pid = daemon.pid();
    let echoes = |be: &NetNs| -> Result<f64> { snmp(be, "Icmp.InEchos") };
    let (c0, k0, e0, t0) = (
        sys::process_cpu_seconds(pid, false)?,
        sys::process_cpu_seconds(pid, true)?,
        echoes(&be)?,
        Instant::now(),
    );
    sys::sleep(HC_INTERVAL * HC_INTERVALS)?;
    let (c1, k1, e1) = (
        sys::process_cpu_seconds(pid, false)?,
        sys::process_cpu_seconds(pid, true)?,
        echoes(&be)?,
    );
    let secs = t0.elapsed().as_secs_f64();
    ensure!(
        daemon.exit_status().is_none(),
        "lb-ctl daemon (health) exited during the measurement"
    );
    let echoes_per_s = (e1 - e0) / secs;
    let note = if echoes_per_s < 1.0 {
        "the daemon sent no ICMP echo: health checks are not active in this build; the floor \
         figure is this benchmark's own ICMP loop"
            .to_owned()
    } else {
        String::new()
    };
    Ok(Health {
        backends: HC_BACKENDS,
        interval_s: HC_INTERVAL.as_secs_f64(),
        observed_s: secs,
        echoes_per_s,
        daemon_cpu_pct: (c1 - c0) / secs * 100.0,
        children_cpu_pct: ((k1 - k0) - (c1 - c0)) / secs * 100.0,
        floor_cpu_pct,
        note,
    })
}

/// A counter of `/proc/net/snmp` in `ns` (`Icmp.InEchos`); an error when the kernel has
/// none of that name.
fn snmp(ns: &NetNs, key: &str) -> Result<f64> {
    ns.snmp()?
        .0
        .get(key)
        .map(|&n| n as f64)
        .with_context(|| format!("no {key} in /proc/net/snmp"))
}

/// CPU of one round of ICMP echoes to every address from one raw socket (send all, then
/// read replies until all came back or 2 s passed), median of 3 rounds, as % of one core
/// per health-check interval.
fn icmp_floor(ns: &NetNs, addrs: &[Ipv4Addr]) -> Result<f64> {
    ns.run(|| -> Result<f64> {
        // SAFETY: plain socket syscalls on a descriptor we own and close.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        ensure!(fd >= 0, "raw ICMP socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // Room for all 1,000 replies (they are read after every request is sent).
        let rcvbuf: libc::c_int = 8 << 20;
        // SAFETY: valid option values of the right sizes.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const rcvbuf).cast(),
                size_of::<libc::c_int>() as u32,
            );
        }
        let mut rounds = Vec::new();
        for round in 0..3u16 {
            let cpu0 = sys::thread_cpu_seconds();
            for (i, a) in addrs.iter().enumerate() {
                let mut pkt = [0u8; 16];
                pkt[0] = 8; // echo request
                pkt[4..6].copy_from_slice(&0x1bebu16.to_be_bytes());
                pkt[6..8].copy_from_slice(&((round << 12) | i as u16).to_be_bytes());
                let c = lb_common::csum::checksum(&pkt);
                pkt[2..4].copy_from_slice(&c.to_ne_bytes());
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: valid buffers and address for the call's duration.
                unsafe {
                    libc::sendto(
                        fd,
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&raw const sa).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
            }
            let mut got = 0;
            let end = Instant::now() + Duration::from_secs(2);
            let mut buf = [0u8; 256];
            while got < addrs.len() && Instant::now() < end {
                // SAFETY: a valid buffer.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n >= 28 && buf[20] == 0 {
                    got += 1;
                }
            }
            rounds.push(sys::thread_cpu_seconds() - cpu0);
            if got < addrs.len() {
                eprintln!("  health floor: {got} of {} echo replies", addrs.len());
            }
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        Ok(median(&rounds) / HC_INTERVAL.as_secs_f64() * 100.0)
    })?
}

// ---------------------------------------------------------------------------------------
// Persistence scans at 1M clients

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
        let mut s = std::net::TcpStream::connect("127.0.0.1:9435").context("connecting to /metrics")?;
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
        ensure!(text.starts_with("HTTP/1.1 200"), "scrape: {}", text.lines().next().unwrap_or(""));
        Ok(Some((t, text)))
    })?
}

/// `lb-ctl --socket SOCK backend list --json`: its duration (`None`: timed out, killed).
fn list(lb_ctl: &PathBuf, socket: &std::path::Path) -> Result<Option<f64>> {
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

fn persist_map(bpffs: &std::path::Path) -> Result<MapData> {
    let path = lb_ctl::pin::Pins::new(bpffs, lb_ctl::paths::INSTANCE).map("PERSIST_V4");
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

fn persist_hash(bpffs: &std::path::Path) -> Result<AyaHashMap<MapData, PersistKeyV4, PersistValue>> {
    Ok(AyaHashMap::try_from(Map::LruHashMap(persist_map(bpffs)?))?)
}

/// Today's walk before the shared scan: every key by `GET_NEXT_KEY`, each looked up, no cap;
/// stops at `deadline` (`None`). Returns the time and the keys read more than once.
fn next_key_walk(
    m: &AyaHashMap<MapData, PersistKeyV4, PersistValue>,
    deadline: Duration,
) -> Option<(f64, u64)> {
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

fn batch_walk(bpffs: &std::path::Path) -> Result<(f64, lb_ctl::scan::WalkStats)> {
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
    fn start(bpffs: &std::path::Path) -> Result<Self> {
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
                    let v = PersistValue {
                        backend: 1 + (n % u64::from(SCAN_BACKENDS)) as u32,
                        atime: now,
                        ..PersistValue::default()
                    };
                    m.insert(PersistKeyV4 { service: 0, client: client.to_be() }, v, 0)?;
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
    let gw = NetNs::new(prefix.name(&format!("{what}gw")))?;
    let be = NetNs::new(prefix.name(&format!("{what}be")))?;
    let _link = Veth::new((&gw, "int"), (&be, "be"))?;
    gw.ip(&["addr", "add", "10.1.255.254/16", "dev", "int"])?;
    let addrs: Vec<Ipv4Addr> = (0..SCAN_BACKENDS)
        .map(|i| Ipv4Addr::from(u32::from_be_bytes([10, 1, 0, 1]) + i))
        .collect();
    for a in &addrs {
        be.ip(&["addr", "add", &format!("{a}/16"), "dev", "be"])?;
    }
    let dir = TempDir::named(prefix, what)?;
    let bpffs = BpfFs::mount_in(&dir)?;
    let yaml = lb::config_yaml(
        &["int"],
        Ipv4Addr::VIP,
        &addrs,
        Some(&DaemonPaths {
            dir: dir.path(),
            bpffs: bpffs.path(),
        }),
        "",
    );
    let cfg = dir.path().join("ikelb.yaml");
    fs::write(&cfg, yaml)?;
    let log_path = dir.path().join("daemon.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", gw.name()])
        .arg(lb_ctl)
        .args(["daemon", "--config"])
        .arg(&cfg);
    let mut daemon = Child::spawn(&format!("lb-ctl daemon ({what})"), cmd, log_path.clone())?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        sys::check_interrupted()?;
        if daemon.exit_status().is_some() {
            bail!(
                "lb-ctl daemon ({what}) exited: {}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if gw.ip(&["link", "show", "dev", "int"])?.contains("xdp") {
            break;
        }
        ensure!(Instant::now() < deadline, "lb-ctl daemon ({what}) did not attach within 90 s");
        sys::sleep(Duration::from_millis(200))?;
    }
    // 1M established clients, spread over the backends (ids 1 … 10 in config order).
    {
        let mut m = persist_hash(bpffs.path())?;
        let now = crate::lb::now_ticks();
        for i in 0..SCAN_CLIENTS {
            if i % 65_536 == 0 {
                sys::check_interrupted()?;
            }
            let client = u32::from_be_bytes([100, 0, 0, 0]) + i;
            let v = PersistValue {
                backend: 1 + i % SCAN_BACKENDS,
                atime: now,
                ..PersistValue::default()
            };
            m.insert(PersistKeyV4 { service: 0, client: client.to_be() }, v, 0)
                .context("PERSIST_V4 insert")?;
        }
    }
    let socket = dir.path().join("ctl.sock");
    let mut out = DaemonScans {
        binary: lb_ctl.display().to_string(),
        ..DaemonScans::default()
    };
    // Whatever the daemon scanned at start is older than any sharing window by now.
    sys::sleep(Duration::from_secs(6))?;
    let first = scrape(&gw)?;
    out.scrape_first_ms = first.as_ref().map(|f| f.0);
    out.entries_scraped = first.as_ref().and_then(|(_, text)| {
        text.lines()
            .find(|l| l.starts_with("ikelb_persistence_entries "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    });
    let mut s = Vec::new();
    for _ in 0..5 {
        s.push(scrape(&gw)?.map(|x| x.0));
    }
    out.scrape_ms = median_opt(&s);
    let mut l = Vec::new();
    for _ in 0..5 {
        l.push(list(lb_ctl, &socket)?);
    }
    out.list_ms = median_opt(&l);

    let mut times = None;
    if walks {
        let m = persist_hash(bpffs.path())?;
        let mut b = Vec::new();
        let mut n = Vec::new();
        for _ in 0..3 {
            b.push(batch_walk(bpffs.path())?.0);
            n.push(next_key_walk(&m, SCAN_TIMEOUT).map_or(f64::NAN, |x| x.0));
        }
        times = Some(WalkTimes {
            batch_ms: median(&b),
            next_key_ms: median(&n),
            ..WalkTimes::default()
        });
    }

    // Insert churn.
    let churn = Churn::start(bpffs.path())?;
    // As before the first idle scrape: no scan to share.
    sys::sleep(Duration::from_secs(6))?;
    out.churn_scrape_first_ms = scrape(&gw)?.map(|x| x.0);
    let mut s = Vec::new();
    for _ in 0..3 {
        let r = scrape(&gw)?.map(|x| x.0);
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
        let (ms, stats) = batch_walk(bpffs.path())?;
        t.churn_batch_ms = ms;
        t.churn_batch_entries = stats.visited - stats.duplicates;
        t.churn_batch_truncated = stats.truncated;
        let m = persist_hash(bpffs.path())?;
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
    ensure!(
        daemon.exit_status().is_none(),
        "lb-ctl daemon ({what}) exited during the scan figures"
    );
    Ok((out, times))
}
