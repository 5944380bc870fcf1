//! `ikelb-demo [--lb-ctl PATH] [--clients N] [--every SECONDS]`: what `cargo xtask run` shows
//! with no arguments.
//!
//! Builds the standard lab (`ikelb_tests::lab`: clients, the ikelb gateway, three VPN servers
//! running `ikelb-responder`) under its own namespace prefix (`ikd…`), starts
//! `lb-ctl daemon` on the gateway, and from every client sends IKE (UDP 500) and NAT-T
//! (UDP 4500) datagrams to the VIP once a second. Every few seconds it prints which backend
//! the clients landed on, whether any client was split between backends or moved, and
//! per-backend packet counts as the responders and the daemon count them. Ctrl-C (SIGINT) or
//! SIGTERM stops the daemon and removes every namespace, process and mount it made.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ikelb_tests::lab::{self, metrics, Lab, LabSpec, UdpProbe, BACKEND_PORTS, VIP};

const USAGE: &str = "usage: ikelb-demo [--lb-ctl PATH] [--clients N] [--every SECONDS]";
const ROUND: Duration = Duration::from_secs(1);
/// Clients whose datagrams are in flight together.
const BATCH: usize = 50;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
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

struct Args {
    lb_ctl: Option<PathBuf>,
    clients: usize,
    every: Duration,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        lb_ctl: None,
        clients: 250,
        every: Duration::from_secs(3),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--lb-ctl" => a.lb_ctl = Some(value()?.into()),
            "--clients" => a.clients = value()?.parse().context("--clients")?,
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

/// What the demo knows about one client.
#[derive(Default)]
struct ClientView {
    /// Backend of the last answered datagram.
    backend: Option<String>,
    /// Times an answer came from a different backend than the previous one.
    moved: u32,
    /// Answers that did not come from the VIP or did not show the client's own address.
    wrong: u32,
}

#[derive(Default)]
struct Totals {
    sent: u64,
    answered: u64,
    lost: u64,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !lab::is_root() {
        bail!("the demo builds network namespaces and attaches XDP: run it as root");
    }
    let lb_ctl = match args.lb_ctl {
        Some(p) => p,
        None => lab::lb_ctl_path()?,
    };
    let responder = lab::sibling_binary("ikelb-responder")
        .context("ikelb-responder is not next to ikelb-demo: cargo build -p ikelb-tests --bins")?;
    install_signal_handlers()?;

    let t0 = Instant::now();
    let mut lab = Lab::build(&LabSpec {
        role: 'd',
        clients: args.clients,
        backends: 3,
    })?;
    lab.start_responders(&responder)?;
    println!(
        "lab {}: {} clients (100.64.1.1…) → VIP {VIP} ports {BACKEND_PORTS:?} → backends {} \
         (built in {:.1?})",
        lab.prefix().as_str(),
        lab.clients.len(),
        lab.backends
            .iter()
            .map(|b| format!("{} {}", b.name, b.addr))
            .collect::<Vec<_>>()
            .join(", "),
        t0.elapsed(),
    );
    println!(
        "namespaces: {}",
        lab.namespaces()
            .iter()
            .map(|(_, ns)| ns.name())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "config: {}   daemon log: {}",
        lab.dir().join("ikelb.yaml").display(),
        lab.dir().join("daemon.log").display()
    );
    println!(
        "starting {} daemon in {} …",
        lb_ctl.display(),
        lab.gateway.name()
    );
    if let Err(e) = lab.start_daemon(&lb_ctl) {
        bail!("{e:#}\n{}", lab.daemon_output_tail(30));
    }
    println!("XDP attached to ext and int; sending (Ctrl-C to stop)");
    let b2 = lab
        .backends
        .get(1)
        .map_or(lab.backends[0].ns.name(), |b| b.ns.name());
    println!(
        "try, from another shell: fail a backend's health checks with\n  ip netns exec {b2} \
         sysctl -w net.ipv4.icmp_echo_ignore_all=1\nwatch its clients move (and stay moved when \
         you set it back to 0)\n"
    );

    let result = drive(&mut lab, &lb_ctl, args.every);
    println!("\nstopping: daemon, responders, namespaces …");
    match lab.stop_daemon() {
        Ok(status) => println!("daemon exited: {status}"),
        Err(e) => println!("daemon: {e:#}"),
    }
    let prefix = lab.prefix().as_str().to_string();
    drop(lab);
    println!("cleaned up everything under {prefix}");
    result
}

fn drive(lab: &mut Lab, lb_ctl: &Path, every: Duration) -> Result<()> {
    let clients = lab.clients.clone();
    let probes: Vec<UdpProbe> = lab.client_ns.run(|| {
        clients
            .iter()
            .map(|&c| UdpProbe::bind(c))
            .collect::<Result<Vec<_>>>()
    })??;
    let mut views: Vec<ClientView> = clients.iter().map(|_| ClientView::default()).collect();
    let mut totals = Totals::default();
    let (start, mut last_print, mut round) = (Instant::now(), Instant::now(), 0u64);

    while !stopping() {
        let round_start = Instant::now();
        round += 1;
        let mut lost_now = 0;
        // Batches keep each burst well inside a veth ring (256 frames); within a batch every
        // client's questions are in flight at once, so a broken data path costs one timeout
        // per batch, not per datagram.
        for batch in (0..probes.len()).collect::<Vec<_>>().chunks(BATCH) {
            if stopping() {
                break;
            }
            let mut asked = Vec::with_capacity(batch.len() * BACKEND_PORTS.len());
            for &i in batch {
                for &port in &BACKEND_PORTS {
                    let to = SocketAddrV4::new(VIP, port);
                    asked.push((i, to, probes[i].send(to, 200)?));
                    totals.sent += 1;
                }
            }
            let deadline = Instant::now() + Duration::from_millis(300);
            for (i, to, tag) in asked {
                let Some(reply) = probes[i].collect(&tag, deadline)? else {
                    totals.lost += 1;
                    lost_now += 1;
                    continue;
                };
                totals.answered += 1;
                let view = &mut views[i];
                if reply.from != to || reply.echo.seen != IpAddr::V4(clients[i]) {
                    view.wrong += 1;
                }
                if view
                    .backend
                    .as_ref()
                    .is_some_and(|b| *b != reply.echo.backend)
                {
                    view.moved += 1;
                }
                view.backend = Some(reply.echo.backend);
            }
        }
        if let Some(d) = lab.daemon() {
            if let Some(status) = d.exit_status() {
                bail!("lb-ctl daemon exited ({status}):\n{}", d.output_tail(30));
            }
        }
        if last_print.elapsed() >= every && !stopping() {
            print_table(
                lab,
                lb_ctl,
                &clients,
                &views,
                &totals,
                round,
                start.elapsed(),
                lost_now,
            );
            last_print = Instant::now();
        }
        while !stopping() && round_start.elapsed() < ROUND {
            thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Each backend's health (`up`, `down`, `unknown`) by address, from `lb-ctl backend list
/// --json`; empty if the daemon does not answer.
fn backend_health(lab: &Lab, lb_ctl: &Path) -> BTreeMap<String, String> {
    let Ok(out) = lab.lb_ctl(lb_ctl, &["backend", "list", "--json"]) else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            Some((
                b["address"].as_str()?.to_string(),
                b["health"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn print_table(
    lab: &Lab,
    lb_ctl: &Path,
    clients: &[Ipv4Addr],
    views: &[ClientView],
    totals: &Totals,
    round: u64,
    elapsed: Duration,
    lost_now: u64,
) {
    let mut per_backend: BTreeMap<&str, usize> =
        lab.backends.iter().map(|b| (b.name.as_str(), 0)).collect();
    for v in views {
        if let Some(b) = &v.backend {
            *per_backend.entry(b.as_str()).or_default() += 1;
        }
    }
    let stats = lab.responder_stats().unwrap_or_default();
    let metrics = lab.metrics().ok();
    let health = backend_health(lab, lb_ctl);
    let moved: u32 = views.iter().map(|v| v.moved).sum();
    let wrong: u32 = views.iter().map(|v| v.wrong).sum();

    println!(
        "── t={:>4}s round {round} ── datagrams sent {} answered {} lost {} (this round {lost_now}) \
         ── clients moved {moved}, wrong answers {wrong}",
        elapsed.as_secs(),
        totals.sent,
        totals.answered,
        totals.lost
    );
    println!(
        "{:<8}{:<12}{:>8}{:>8}{:>14}{:>14}{:>14}  {}",
        "backend", "address", "clients", "share", "resp.dgrams", "ikelb fwd", "ikelb rev", "health"
    );
    let n_clients = clients.len().max(1) as f64;
    for (i, b) in lab.backends.iter().enumerate() {
        let n = per_backend.get(b.name.as_str()).copied().unwrap_or(0);
        let dgrams = stats
            .get(i)
            .and_then(|s| s.as_ref())
            .map_or("-".into(), |s| s.datagrams.to_string());
        let addr = b.addr.to_string();
        let metric = |name: &str, extra: &[(&str, &str)]| -> String {
            let Some(text) = &metrics else {
                return "-".into();
            };
            let mut m = vec![("backend", addr.as_str())];
            m.extend_from_slice(extra);
            if metrics::samples(text, name)
                .iter()
                .any(|s| s.label("backend") == addr)
            {
                format!("{}", metrics::sum(text, name, &m))
            } else {
                "-".into()
            }
        };
        println!(
            "{:<8}{:<12}{:>8}{:>7.1}%{:>14}{:>14}{:>14}  {}",
            b.name,
            addr,
            n,
            100.0 * n as f64 / n_clients,
            dgrams,
            metric("ikelb_backend_packets_total", &[("direction", "forward")]),
            metric("ikelb_backend_packets_total", &[("direction", "reverse")]),
            health.get(&addr).map_or("-", String::as_str),
        );
    }
    let sample: Vec<String> = clients
        .iter()
        .zip(views)
        .take(10)
        .map(|(c, v)| format!("{c}→{}", v.backend.as_deref().unwrap_or("?")))
        .collect();
    println!("sample: {}", sample.join("  "));
    match &metrics {
        Some(text) => {
            let verdicts: Vec<String> = metrics::samples(text, "ikelb_xdp_packets_total")
                .iter()
                .filter(|s| s.value > 0.0)
                .map(|s| format!("{}/{} {}", s.label("action"), s.label("reason"), s.value))
                .collect();
            println!("xdp verdicts: {}", verdicts.join("  "));
        }
        None => println!("(daemon metrics not reachable on the gateway's 127.0.0.1:9435)"),
    }
    println!();
}
