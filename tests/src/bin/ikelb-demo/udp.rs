//! The UDP-responder demo (`--udp`, or the fallback without strongSwan).
//!
//! Builds the standard lab (`ikelb_tests::lab`: clients, the ikelb gateway, VPN servers
//! running `ikelb-responder`) under its own namespace prefix (`ikd…`), starts
//! `lb-ctl daemon` on the gateway, and from every client sends IKE (UDP 500) and NAT-T
//! (UDP 4500) datagrams to the VIP once a second. Every few seconds it prints which backend
//! the clients landed on, whether any client was split between backends or moved, and
//! per-backend packet counts as the responders and the daemon count them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ikelb_tests::lab::{self, Lab, LabSpec, UdpProbe, BACKEND_PORTS, VIP};

use crate::{sleep_until, stopping, Args, DaemonView};

const ROUND: Duration = Duration::from_secs(1);
/// Clients whose datagrams are in flight together.
const BATCH: usize = 50;

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

/// Where a table print stands: the round, the time since the start, datagrams lost this round.
#[derive(Clone, Copy)]
struct Progress {
    round: u64,
    elapsed: Duration,
    lost_now: u64,
}

pub fn run(args: &Args, lb_ctl: &Path) -> Result<()> {
    let responder = lab::sibling_binary("ikelb-responder")
        .context("ikelb-responder is not next to ikelb-demo: cargo build -p ikelb-tests --bins")?;

    let t0 = Instant::now();
    let mut lab = Lab::build(&LabSpec {
        role: 'd',
        clients: args.clients.unwrap_or(250),
        backends: args.backends,
        ..LabSpec::default()
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
    if let Err(e) = lab.start_daemon(lb_ctl) {
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

    let result = drive(&mut lab, lb_ctl, args.every);
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
            let progress = Progress {
                round,
                elapsed: start.elapsed(),
                lost_now,
            };
            print_table(lab, lb_ctl, &clients, &views, &totals, &progress);
            last_print = Instant::now();
        }
        sleep_until(round_start + ROUND);
    }
    Ok(())
}

fn print_table(
    lab: &Lab,
    lb_ctl: &Path,
    clients: &[Ipv4Addr],
    views: &[ClientView],
    totals: &Totals,
    progress: &Progress,
) {
    let Progress {
        round,
        elapsed,
        lost_now,
    } = *progress;
    let mut per_backend: BTreeMap<&str, usize> =
        lab.backends.iter().map(|b| (b.name.as_str(), 0)).collect();
    for v in views {
        if let Some(b) = &v.backend {
            *per_backend.entry(b.as_str()).or_default() += 1;
        }
    }
    let stats = lab.responder_stats().unwrap_or_default();
    let daemon = DaemonView::get(lab, lb_ctl);
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
        "{:<8}{:<12}{:>8}{:>8}{:>14}{:>14}{:>14}  health",
        "backend", "address", "clients", "share", "resp.dgrams", "ikelb fwd", "ikelb rev"
    );
    let n_clients = clients.len().max(1) as f64;
    for (i, b) in lab.backends.iter().enumerate() {
        let n = per_backend.get(b.name.as_str()).copied().unwrap_or(0);
        let dgrams = stats
            .get(i)
            .and_then(|s| s.as_ref())
            .map_or("-".into(), |s| s.datagrams.to_string());
        println!(
            "{:<8}{:<12}{:>8}{:>7.1}%{:>14}{:>14}{:>14}  {}",
            b.name,
            b.addr.to_string(),
            n,
            100.0 * n as f64 / n_clients,
            dgrams,
            daemon.packets(b.addr, "forward"),
            daemon.packets(b.addr, "reverse"),
            daemon.field(b.addr, "health"),
        );
    }
    let sample: Vec<String> = clients
        .iter()
        .zip(views)
        .take(10)
        .map(|(c, v)| format!("{c}→{}", v.backend.as_deref().unwrap_or("?")))
        .collect();
    println!("sample: {}", sample.join("  "));
    println!("{}", daemon.verdicts_line());
    println!();
}
