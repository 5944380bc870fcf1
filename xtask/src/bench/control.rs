//! Control-plane costs: Maglev table builds, the CPU the daemon spends keeping 1,000
//! backends health-checked (ICMP every 5 s) and their next hops current, and what reading
//! the persistence map costs at 1M clients (`scans`: a scrape, `backend list`, a full walk),
//! idle and under insert churn. Both run `lb-ctl daemon` in a [`Lab`].

mod scans;

use std::{
    fs,
    mem::size_of,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use lb_common::maglev::{self, Member};

pub use scans::{scans, DaemonScans, Scans, SCAN_CLIENTS, SCAN_TIMEOUT};

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

/// A gateway namespace whose `int` veth reaches a namespace holding the backends' addresses
/// (10.1.0.1 …; its kernel answers ARP and ping), and `lb-ctl daemon` in the gateway with
/// those backends and the benchmark's virtual server. Torn down in field order: the daemon,
/// the bpffs mount, the run directory, the link, the namespaces.
struct Lab {
    daemon: Option<Child>,
    bpffs: BpfFs,
    dir: TempDir,
    _link: Veth,
    be: NetNs,
    gw: NetNs,
    addrs: Vec<Ipv4Addr>,
    what: String,
}

impl Lab {
    /// Namespaces `<what>gw` and `<what>be`, `backends` addresses, run directory `<what>`.
    fn new(prefix: &RunPrefix, what: &str, backends: u32) -> Result<Self> {
        let gw = NetNs::new(prefix.name(&format!("{what}gw")))?;
        let be = NetNs::new(prefix.name(&format!("{what}be")))?;
        let link = Veth::new((&gw, "int"), (&be, "be"))?;
        gw.ip(&["addr", "add", "10.1.255.254/16", "dev", "int"])?;
        let addrs: Vec<Ipv4Addr> = (0..backends)
            .map(|i| Ipv4Addr::from(u32::from_be_bytes([10, 1, 0, 1]) + i))
            .collect();
        let mut cmds = String::new();
        for a in &addrs {
            cmds.push_str(&format!("addr add {a}/16 dev be\n"));
        }
        be.ip_batch(&cmds)?;
        let dir = TempDir::named(prefix, what)?;
        let bpffs = BpfFs::mount_in(&dir)?;
        Ok(Self {
            daemon: None,
            bpffs,
            dir,
            _link: link,
            be,
            gw,
            addrs,
            what: what.to_owned(),
        })
    }

    /// Starts `lb_ctl daemon` (pinned to `cpu`, when given) and waits until its program is
    /// attached.
    fn start(&mut self, lb_ctl: &Path, cpu: Option<usize>) -> Result<()> {
        let yaml = lb::config_yaml(
            &["int"],
            Ipv4Addr::VIP,
            &self.addrs,
            Some(&DaemonPaths {
                dir: self.dir.path(),
                bpffs: self.bpffs.path(),
            }),
            "",
        );
        let cfg = self.dir.path().join("ikelb.yaml");
        fs::write(&cfg, yaml)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.gw.name()]);
        if let Some(cpu) = cpu {
            cmd.args(["taskset", "-c", &cpu.to_string()]);
        }
        cmd.arg(lb_ctl).args(["daemon", "--config"]).arg(&cfg);
        let name = format!(
            "lb-ctl daemon ({}, {} backends)",
            self.what,
            self.addrs.len()
        );
        let mut daemon = Child::spawn(&name, cmd, self.dir.path().join("daemon.log"))?;
        let (within, every) = (Duration::from_secs(90), Duration::from_millis(200));
        let gw = &self.gw;
        sys::wait_ready(&mut daemon, "attach", within, every, || {
            Ok(gw.ip(&["link", "show", "dev", "int"])?.contains("xdp"))
        })?;
        self.daemon = Some(daemon);
        Ok(())
    }

    fn daemon(&mut self) -> Result<&mut Child> {
        self.daemon.as_mut().context("the daemon is not started")
    }

    /// An error if the daemon exited (`during`: while what).
    fn running(&mut self, during: &str) -> Result<()> {
        let d = self.daemon()?;
        ensure!(
            d.exit_status().is_none(),
            "{} exited during {during}",
            d.name()
        );
        Ok(())
    }
}

/// Runs `lb-ctl daemon` with 1,000 backends in a namespace whose peer holds all 1,000
/// addresses (the kernel answers ARP and ping), and measures its CPU over three intervals.
pub fn health(prefix: &RunPrefix, lb_ctl: &Path, daemon_cpu: usize) -> Result<Health> {
    // One neighbour entry per backend: 1,000 stays under the neighbour table's default hard
    // limit (gc_thresh3 = 1024, global).
    let mut lab = Lab::new(prefix, "hc", HC_BACKENDS)?;
    let floor_cpu_pct = icmp_floor(&lab.gw, &lab.addrs)?;
    // Running = the program is attached; then let one interval pass.
    lab.start(lb_ctl, Some(daemon_cpu))?;
    sys::sleep(HC_INTERVAL)?;
    let pid = lab.daemon()?.pid();
    let echoes = |be: &NetNs| -> Result<f64> { snmp(be, "Icmp.InEchos") };
    let (c0, k0, e0, t0) = (
        sys::process_cpu_seconds(pid, false)?,
        sys::process_cpu_seconds(pid, true)?,
        echoes(&lab.be)?,
        Instant::now(),
    );
    sys::sleep(HC_INTERVAL * HC_INTERVALS)?;
    let (c1, k1, e1) = (
        sys::process_cpu_seconds(pid, false)?,
        sys::process_cpu_seconds(pid, true)?,
        echoes(&lab.be)?,
    );
    let secs = t0.elapsed().as_secs_f64();
    lab.running("the measurement")?;
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
        ensure!(
            fd >= 0,
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        );
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
