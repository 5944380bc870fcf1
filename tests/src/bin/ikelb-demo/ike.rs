//! The demo with real IKEv2 peers (the default when strongSwan is installed).
//!
//! Builds the interop lab (`ikelb_tests::ike::IkeLab`, prefix `ikd…`): strongSwan initiators,
//! each in its own namespace behind a NAT router that masquerades them onto public addresses;
//! the ikelb gateway running `lb-ctl daemon --config` as an operator would; strongSwan
//! responders behind it, each handing out virtual IPs from its own pool; a host behind the
//! responders. Every client then initiates at once (certificates from a throwaway CA, so
//! IKE_AUTH crosses ikelb as IP fragments; ESP travels in UDP 4500, done by kernel-libipsec).
//!
//! Every few seconds each client pings the host through its tunnel and the demo prints, per
//! server: the IKE SAs and CHILD_SAs it holds, the clients established there and whether their
//! pings came back, its ESP packet counts, and what the daemon says (health, state, persisted
//! client addresses, forwarded and returned packets); then a sample of clients and where they
//! landed. A client whose tunnel stays silent for [`FAILS_BEFORE_RESTART`] reports in a row is
//! started over (what its dead-peer detection would do): after a server is cut off, ikelb's
//! health checks mark it down and its clients land on the others.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ikelb_tests::ike::{
    ClientReport, Fragmentation, Gateway, IkeLab, IkeLabSpec, Snapshot, HOST_ADDR, HOST_NET,
};
use ikelb_tests::lab::VIP;

use crate::{sleep_until, stopping, Args, DaemonView};

/// Initiators by default: enough to see a spread, few enough for 2 cores (each is a charon).
const DEFAULT_CLIENTS: usize = 24;
/// A setup takes tens of milliseconds; one that needs retransmits still ends within charon's
/// ~7 s retransmit budget (the lab's strongswan.conf).
const INITIATE_TIMEOUT: Duration = Duration::from_secs(15);
/// Reports in a row with no answer through a client's tunnel before the demo starts it over.
const FAILS_BEFORE_RESTART: u32 = 2;
/// Clients shown in each report's sample.
const SAMPLE: usize = 6;

/// What the demo remembers about one client between reports.
#[derive(Clone, Default)]
struct Track {
    /// Reports in a row where it was not up or its ping went unanswered.
    fails: u32,
    /// The server it was last seen established at.
    server: Option<usize>,
    /// Times it came up on another server than before.
    moved: u32,
}

#[derive(Default)]
struct Totals {
    pings_sent: u64,
    pings_answered: u64,
    started_over: u64,
}

pub fn run(args: &Args, lb_ctl: &Path) -> Result<()> {
    let clients = args.clients.unwrap_or(DEFAULT_CLIENTS);
    let spec = IkeLabSpec {
        clients,
        // One public address per client: `snat … persistent` still puts several clients on
        // some addresses (ikelb keys on the public address) and leaves others unused.
        nat_addrs: clients.clamp(2, 250),
        responders: args.backends,
        fragmentation: Fragmentation::Ip,
        gateway: Gateway::Ikelb(lb_ctl.to_path_buf()),
        client_dpd: None,
        mobike: false,
    };
    println!(
        "IKE demo: {clients} strongSwan initiators → NAT router ({} public addresses) → VIP \
         {VIP} on the ikelb gateway (lb-ctl daemon, XDP) → {} strongSwan responders → host \
         {HOST_ADDR}",
        spec.nat_addrs, spec.responders
    );
    println!(
        "building: throwaway CA (RSA-3072), namespaces, the daemon, {} charons …",
        clients + spec.responders
    );
    let t0 = Instant::now();
    // A Ctrl-C at the terminal reaches the whole foreground process group, so a helper the
    // demo is running (`ip`, `swanctl`, `ping`) may die with it: an error after a stop
    // request is that stop, not a failure.
    let mut lab = match IkeLab::build_as('d', spec) {
        Ok(lab) => lab,
        Err(_) if stopping() => {
            println!("stopped during setup; everything built so far is removed");
            return Ok(());
        }
        Err(e) => {
            return Err(e)
                .context("building the IKE lab (`--udp` runs the demo without strongSwan)")
        }
    };
    let built = t0.elapsed();
    print_intro(&lab, built);

    let result = drive(&mut lab, lb_ctl, args.every, t0);
    stop(lab);
    match result {
        Err(_) if stopping() => Ok(()),
        result => result,
    }
}

fn print_intro(lab: &IkeLab, built: Duration) {
    let l = &lab.lab;
    println!("lab {} up in {built:.1?}", l.prefix().as_str());
    for r in &lab.responders {
        println!(
            "  server {}  {}  hands out {}/{}  vici {}",
            r.name,
            r.addr,
            r.pool.0,
            r.pool.1,
            r.charon.vici_uri()
        );
    }
    println!(
        "  clients c00…c{:02} (10.1.0.10…) in namespaces {}-c00…, tunnels to {HOST_NET}",
        lab.clients.len() - 1,
        l.prefix().as_str()
    );
    println!(
        "  daemon config {}  log {}",
        l.dir().join("ikelb.yaml").display(),
        l.dir().join("daemon.log").display()
    );
    let victim = lab.responders.get(1).unwrap_or(&lab.responders[0]);
    println!(
        "try, from another shell:\n\
         \x20 swanctl --list-sas --uri {vici}\n\
         \x20 ip netns exec {c00} ping {HOST_ADDR}                    # through client00's tunnel\n\
         \x20 ip -n {bridge} link set {b} down    # cut server {b}: ikelb marks it down, its clients start over elsewhere\n\
         \x20 ip -n {bridge} link set {b} up      # back: nobody moves back, newcomers may land there\n",
        vici = victim.charon.vici_uri(),
        c00 = l.prefix().name("c00"),
        bridge = l.bridge.name(),
        b = victim.name,
    );
}

fn drive(lab: &mut IkeLab, lb_ctl: &Path, every: Duration, t0: Instant) -> Result<()> {
    if stopping() {
        return Ok(());
    }
    let n = lab.clients.len();
    println!("establishing {n} IKEv2 clients at once (swanctl --initiate) …");
    let t1 = Instant::now();
    let initiations = lab.initiate_all(INITIATE_TIMEOUT);
    let took = t1.elapsed();
    if stopping() {
        return Ok(());
    }
    let pings = lab.ping_all(1);
    let snap = lab
        .snapshot(Some(&initiations), Some(&pings))
        .context("collecting SAs")?;
    let up = snap.clients.iter().filter(|c| c.up()).count();
    let times = snap.setup_times();
    let setup = match (times.first(), times.get(times.len() / 2), times.last()) {
        (Some(min), Some(median), Some(max)) => format!(
            "; IKE SA + CHILD_SA per client (client logs): min {} ms, median {} ms, max {} ms",
            min.as_millis(),
            median.as_millis(),
            max.as_millis()
        ),
        _ => String::new(),
    };
    println!("{up} of {n} clients established in {took:.1?}{setup}");
    println!(
        "setup in all: {:.1?} (lab {:.1?}, clients {took:.1?})",
        t0.elapsed(),
        t0.elapsed() - took
    );
    println!("{}", landed_by_server(&snap));
    let publics = snap.public_addrs_per_responder();
    println!(
        "ikelb balances public (NAT) addresses, not clients: {} addresses in use, per server {}",
        publics.iter().map(Vec::len).sum::<usize>(),
        publics
            .iter()
            .map(|a| a.len().to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    );
    for (id, why) in snap.connectivity_problems().iter().take(5) {
        println!("  not connected: {id}: {why}");
    }
    println!();

    let start = Instant::now();
    let mut tracks = vec![Track::default(); n];
    let mut totals = Totals::default();
    let mut snap = Some(snap);
    let mut pings = Some(pings);
    while !stopping() {
        let next = Instant::now() + every;
        let pings = match pings.take() {
            Some(p) => p,
            None => lab.ping_all(1),
        };
        if stopping() {
            break;
        }
        let snap = match snap.take() {
            Some(s) => s,
            None => lab.snapshot(None, Some(&pings)).context("collecting SAs")?,
        };
        let daemon = DaemonView::get(&lab.lab, lb_ctl);
        update(&mut tracks, &mut totals, &snap);
        print_report(lab, &snap, &daemon, &tracks, &totals, start.elapsed());
        if let Some(d) = lab.lab.daemon() {
            if let Some(status) = d.exit_status() {
                bail!("lb-ctl daemon exited ({status}):\n{}", d.output_tail(30));
            }
        }
        let silent: Vec<usize> = (0..n)
            .filter(|&i| tracks[i].fails >= FAILS_BEFORE_RESTART)
            .collect();
        if !silent.is_empty() && !stopping() {
            start_over(lab, &silent);
            totals.started_over += silent.len() as u64;
            for &i in &silent {
                tracks[i].fails = 0;
            }
        }
        sleep_until(next);
    }
    Ok(())
}

/// A client is healthy when its SA is up and its ping came back.
fn healthy(c: &ClientReport) -> bool {
    c.up() && c.ping.is_some_and(|p| p.sent > 0 && p.received == p.sent)
}

fn update(tracks: &mut [Track], totals: &mut Totals, snap: &Snapshot) {
    for (t, c) in tracks.iter_mut().zip(&snap.clients) {
        if let Some(p) = c.ping {
            totals.pings_sent += u64::from(p.sent);
            totals.pings_answered += u64::from(p.received);
        }
        t.fails = if healthy(c) { 0 } else { t.fails + 1 };
        if let Some(now) = c.established_at {
            if t.server.is_some_and(|was| was != now) {
                t.moved += 1;
            }
            t.server = Some(now);
        }
    }
}

/// `swanctl --terminate --force` and `--initiate` again, all at once: what a client whose
/// dead-peer detection gave up on its server does.
fn start_over(lab: &IkeLab, which: &[usize]) {
    let names: Vec<String> = which.iter().map(|&i| format!("c{i:02}")).collect();
    println!(
        "starting over {} (no answer through the tunnel for {FAILS_BEFORE_RESTART} reports) …",
        names.join(" ")
    );
    for &i in which {
        // Fails when the client holds no SA: nothing to terminate then.
        let _ = lab.clients[i].charon.terminate_ike("vpn");
    }
    let t = Instant::now();
    let results = lab.initiate(which, INITIATE_TIMEOUT);
    let ok = results.iter().filter(|r| r.ok).count();
    println!(
        "  {ok} of {} up again after {:.1?}\n",
        which.len(),
        t.elapsed()
    );
}

fn print_report(
    lab: &IkeLab,
    snap: &Snapshot,
    daemon: &DaemonView,
    tracks: &[Track],
    totals: &Totals,
    elapsed: Duration,
) {
    let n = snap.clients.len();
    let up = snap.clients.iter().filter(|c| c.up()).count();
    let pinged = snap.clients.iter().filter(|c| healthy(c)).count();
    let moved: u32 = tracks.iter().map(|t| t.moved).sum();
    println!(
        "── t={:>4}s ── VPN clients up {up}/{n} · pings through the tunnels {pinged}/{n} (all \
         reports {}/{}) · clients moved {moved} · started over {}",
        elapsed.as_secs(),
        totals.pings_answered,
        totals.pings_sent,
        totals.started_over,
    );
    println!(
        "{:<7}{:>7}{:>10}{:>10}{:>8}{:>7}{:>12}  │ ikelb {:<7}{:<9}{:>7}{:>9}{:>9}",
        "server",
        "IKE SAs",
        "CHILD_SAs",
        "half-open",
        "clients",
        "pings",
        "ESP in/out",
        "health",
        "state",
        "NAT IPs",
        "fwd pkts",
        "rev pkts"
    );
    let per = snap.clients_per_responder();
    for (r, resp) in lab.responders.iter().enumerate() {
        let sas = &snap.responder_sas[r];
        let established = sas.iter().filter(|s| s.established()).count();
        let children = sas
            .iter()
            .filter(|s| s.established())
            .filter_map(|s| s.installed_child())
            .collect::<Vec<_>>();
        let (esp_in, esp_out) = children
            .iter()
            .fold((0, 0), |(i, o), c| (i + c.packets_in, o + c.packets_out));
        let pings_ok = snap
            .clients
            .iter()
            .filter(|c| c.established_at == Some(r) && healthy(c))
            .count();
        println!(
            "{:<7}{:>7}{:>10}{:>10}{:>8}{:>7}{:>12}  │       {:<7}{:<9}{:>7}{:>9}{:>9}",
            resp.name,
            established,
            children.len(),
            sas.len() - established,
            per[r],
            format!("{pings_ok}/{}", per[r]),
            format!("{esp_in}/{esp_out}"),
            daemon.field(resp.addr, "health"),
            daemon.field(resp.addr, "state"),
            daemon.field(resp.addr, "clients"),
            daemon.packets(resp.addr, "forward"),
            daemon.packets(resp.addr, "reverse"),
        );
    }
    let sample: Vec<String> = snap
        .clients
        .iter()
        .take(SAMPLE)
        .map(|c| landed(snap, c))
        .collect();
    for (k, chunk) in sample.chunks(3).enumerate() {
        let head = if k == 0 { "sample:" } else { "" };
        println!("{head:<8}{}", chunk.join("   "));
    }
    // Clients not through their tunnel, grouped by why.
    let mut why: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in snap.clients.iter().filter(|c| !healthy(c)) {
        let reason = c
            .connectivity_problem()
            .unwrap_or_else(|| "no answer".into());
        why.entry(reason)
            .or_default()
            .push(format!("c{:02}", c.index));
    }
    for (reason, who) in &why {
        println!("not through ({}): {} — {reason}", who.len(), who.join(" "));
    }
    for (r, resp) in lab.responders.iter().enumerate() {
        let established = snap.responder_sas[r]
            .iter()
            .filter(|s| s.established())
            .count();
        if established > per[r] {
            println!(
                "note: {} still holds {} IKE SAs of clients that started over elsewhere (without \
                 DPD a server keeps them until they expire)",
                resp.name,
                established - per[r]
            );
        }
    }
    println!("{}", daemon.verdicts_line());
    println!();
}

/// `c03→b2 10.100.2.1 from 100.64.1.7`: the server, the virtual IP it handed out, and the
/// public (NAT) address it saw.
fn landed(snap: &Snapshot, c: &ClientReport) -> String {
    let server = c
        .established_at
        .map_or("?", |r| snap.responders[r].as_str());
    let mut s = format!("c{:02}→{server}", c.index);
    if let Some(vip) = c.vip {
        write!(s, " {vip}").expect("write to String");
    }
    if let Some(public) = c.public {
        write!(s, " from {}", public.ip()).expect("write to String");
    }
    s
}

/// One line per server: the clients established there.
fn landed_by_server(snap: &Snapshot) -> String {
    let mut s = String::from("where they landed:");
    for (r, name) in snap.responders.iter().enumerate() {
        let on: Vec<String> = snap
            .clients
            .iter()
            .filter(|c| c.established_at == Some(r))
            .map(|c| format!("c{:02}", c.index))
            .collect();
        write!(s, "\n  {name} ({:>2}): {}", on.len(), on.join(" ")).expect("write to String");
    }
    s
}

/// Stop every charon (SIGTERM to each PID at once, then each guard waits for its own), then
/// the daemon, then remove the namespaces, links, mounts and directory.
fn stop(mut lab: IkeLab) {
    let t = Instant::now();
    let charons = lab.clients.len() + lab.responders.len();
    println!("\nstopping: {charons} charons, the daemon, namespaces …");
    for c in &mut lab.clients {
        c.charon.request_stop();
    }
    for r in &mut lab.responders {
        r.charon.request_stop();
    }
    lab.clients.clear();
    lab.responders.clear();
    match lab.lab.stop_daemon() {
        Ok(status) => println!("daemon exited: {status}"),
        Err(e) => println!("daemon: {e:#}"),
    }
    let prefix = lab.lab.prefix().as_str().to_string();
    drop(lab);
    println!(
        "cleaned up everything under {prefix} in {:.1?}",
        t.elapsed()
    );
}
