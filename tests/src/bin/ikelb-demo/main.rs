//! `ikelb-demo [--udp | --ike | --cluster] [--lb-ctl PATH] [--clients N] [--backends N]
//! [--every SECONDS]`: what `cargo xtask run` shows with no arguments (and `cargo xtask run --
//! --cluster` with `--cluster`).
//!
//! Two modes around the real `lb-ctl daemon` on an ikelb gateway namespace, and a third with a
//! cluster of them, all under their own namespace prefix (`ikd…`, never the tests'):
//!
//! * **IKE** (the default when strongSwan is installed, as `cargo xtask bootstrap` does; see
//!   `ike.rs`): strongSwan initiators behind a NAT router establish IKEv2 SAs through the VIP
//!   with strongSwan responders and ping a host behind them through their tunnels. Every few
//!   seconds: VPN sessions per server, where each client landed, pings, the daemon's view.
//! * **UDP** (`--udp`, or the fallback when strongSwan is missing, saying why; see `udp.rs`):
//!   250 client addresses send IKE and NAT-T datagrams to `ikelb-responder` backends.
//! * **Cluster** (`--cluster`; see `cluster.rs`): three ikelb nodes behind a BIRD router's
//!   ECMP with BFD, keepalived VRRP for the backends' gateway, strongSwan peers on both sides
//!   (docs/cluster.md); every client establishes, the VRRP master is cut off, and every
//!   session must survive. Runs once and exits: non-zero if any session did not survive.
//!
//! `IKELB_DEMO=udp` (or `ike`, `cluster`) selects the mode when the demo is started by `cargo xtask run`.
//! Ctrl-C (SIGINT) or SIGTERM stops every process the demo started, by PID, and removes every
//! namespace and mount it made.

mod cluster;
mod ike;
mod udp;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ikelb_tests::lab::{self, metrics, Lab};

const USAGE: &str = "usage: ikelb-demo [--udp | --ike | --cluster] [--lb-ctl PATH] \
                     [--clients N] [--backends N] [--every SECONDS]\n\
                     \x20 --udp      UDP-responder backends instead of strongSwan (also: IKELB_DEMO=udp)\n\
                     \x20 --ike      real IKEv2 peers, and fail rather than fall back without strongSwan\n\
                     \x20 --cluster  3 ikelb nodes behind a BGP router's ECMP; one is cut off and every\n\
                     \x20            VPN session must survive (docs/cluster.md; also: IKELB_DEMO=cluster)\n\
                     \x20 --clients  VPN clients (IKE, cluster: default 24, at most 200; UDP: default 250)\n\
                     \x20 --backends servers behind the gateway (default 3; IKE, cluster: at most 9)\n\
                     \x20 --every    seconds between reports (default 3)";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// True once SIGINT or SIGTERM arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleep until `until` or a stop request, whichever comes first.
pub fn sleep_until(until: std::time::Instant) {
    while !stopping() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic is valid
        // and async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("sigaction");
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// IKE when strongSwan is usable, else UDP.
    Auto,
    Ike,
    Udp,
    Cluster,
}

pub struct Args {
    mode: Mode,
    lb_ctl: Option<PathBuf>,
    /// `None`: the mode's default.
    pub clients: Option<usize>,
    pub backends: usize,
    pub every: Duration,
}

fn parse_args() -> Result<Args> {
    let mode = match std::env::var("IKELB_DEMO").as_deref() {
        Ok("udp") => Mode::Udp,
        Ok("ike") => Mode::Ike,
        Ok("cluster") => Mode::Cluster,
        Ok("") | Err(_) => Mode::Auto,
        Ok(other) => bail!("IKELB_DEMO={other:?}: want `udp`, `ike` or `cluster`"),
    };
    let mut a = Args {
        mode,
        lb_ctl: None,
        clients: None,
        backends: 3,
        every: Duration::from_secs(3),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--udp" => a.mode = Mode::Udp,
            "--ike" => a.mode = Mode::Ike,
            "--cluster" => a.mode = Mode::Cluster,
            "--lb-ctl" => a.lb_ctl = Some(value()?.into()),
            "--clients" => a.clients = Some(value()?.parse().context("--clients")?),
            "--backends" => a.backends = value()?.parse().context("--backends")?,
            "--every" => a.every = Duration::from_secs_f64(value()?.parse().context("--every")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !lab::is_root() {
        bail!("the demo builds network namespaces and attaches XDP: run it as root");
    }
    let lb_ctl = match &args.lb_ctl {
        Some(p) => p.clone(),
        None => lab::lb_ctl_path()?,
    };
    install_signal_handlers()?;
    match (args.mode, ikelb_tests::ike::unavailable()) {
        (Mode::Udp, _) => udp::run(&args, &lb_ctl),
        (Mode::Cluster, _) => cluster::run(&args, &lb_ctl),
        (Mode::Ike | Mode::Auto, None) => ike::run(&args, &lb_ctl),
        (Mode::Ike, Some(why)) => bail!("--ike: {why}"),
        (Mode::Auto, Some(why)) => {
            println!(
                "real IKEv2 peers are not available: {why}\n\
                 → falling back to the UDP-responder demo (`cargo xtask bootstrap` installs \
                 strongSwan; `--udp` picks this demo on purpose)\n"
            );
            udp::run(&args, &lb_ctl)
        }
    }
}

/// What the daemon says about each backend, from `lb-ctl backend list --json` (health,
/// state, persisted clients) and its `/metrics` page (packet counters, XDP verdicts). Either
/// part is empty when the daemon does not answer; every accessor then returns `-`.
pub struct DaemonView {
    backends: BTreeMap<String, serde_json::Value>,
    metrics: Option<String>,
}

impl DaemonView {
    pub fn get(lab: &Lab, lb_ctl: &Path) -> Self {
        let backends = lab
            .lb_ctl(lb_ctl, &["backend", "list", "--json"])
            .ok()
            .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
            .and_then(|v| v["backends"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| Some((b["address"].as_str()?.to_string(), b)))
            .collect();
        Self {
            backends,
            metrics: lab.metrics().ok(),
        }
    }

    /// A string field of the backend's `backend list` object (`health`, `state`, …).
    pub fn field(&self, addr: Ipv4Addr, key: &str) -> String {
        match self.backends.get(&addr.to_string()).map(|b| &b[key]) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => "-".into(),
        }
    }

    /// `ikelb_backend_packets_total{backend=addr, direction}`.
    pub fn packets(&self, addr: Ipv4Addr, direction: &str) -> String {
        let Some(text) = &self.metrics else {
            return "-".into();
        };
        let addr = addr.to_string();
        let name = "ikelb_backend_packets_total";
        if !metrics::samples(text, name)
            .iter()
            .any(|s| s.label("backend") == addr)
        {
            return "-".into();
        }
        let n = metrics::sum(text, name, &[("backend", &addr), ("direction", direction)]);
        format!("{n}")
    }

    /// `xdp verdicts: redirect/forward N  pass/… M …` and the events line (`probation_insert
    /// N  promoted M …`), or why there are none.
    pub fn verdicts_line(&self) -> String {
        match &self.metrics {
            Some(text) => {
                let verdicts: Vec<String> = metrics::samples(text, "ikelb_xdp_packets_total")
                    .iter()
                    .filter(|s| s.value > 0.0)
                    .map(|s| format!("{}/{} {}", s.label("action"), s.label("reason"), s.value))
                    .collect();
                // What the edge protections did (docs/security.md): new clients on probation,
                // promoted once they echoed their server's SPI, the fast path, …
                let events: Vec<String> = metrics::samples(text, "ikelb_xdp_events_total")
                    .iter()
                    .filter(|s| s.value > 0.0)
                    .map(|s| format!("{} {}", s.label("event"), s.value))
                    .collect();
                format!(
                    "ikelb xdp verdicts: {}\nikelb xdp events:   {}",
                    verdicts.join("  "),
                    events.join("  ")
                )
            }
            None => "(daemon metrics not reachable on the gateway's 127.0.0.1:9435)".into(),
        }
    }
}
