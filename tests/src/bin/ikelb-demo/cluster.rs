//! The cluster demo (`--cluster`, `cargo xtask run -- --cluster`): docs/cluster.md's
//! active-active cluster from real parts, once through, then cleaned up.
//!
//! Builds the cluster lab (`ikelb_tests::cluster::ClusterLab`, prefix `ikd…`, the same lab
//! `tests/tests/cluster.rs` runs): a router running BIRD with eBGP and BFD to every node and
//! the VIP as one ECMP route over them; three ikelb nodes, each with `lb-ctl daemon`
//! (`announce`), BIRD and keepalived (VRRP for the backends' gateway); strongSwan responders
//! behind them; strongSwan clients behind NAT, one public address each. Then:
//!
//! 1. every client establishes at once; the demo prints the topology as the control plane
//!    reports it (BGP and BFD at the router, what each node announces, the VRRP master) and,
//!    per client, the node the router's FIB sends it to, what that node's daemon holds for
//!    it (`lb-ctl lookup`), the responder holding its IKE SA and the SPIs;
//! 2. the VRRP master's links are cut at both switches while every tunnel is pinged every
//!    100 ms; the demo waits until BFD has taken it out of the router's route and VRRP has
//!    moved the gateway, and prints how long each took and what the pings lost;
//! 3. it checks every session again: the same IKE SA and CHILD_SA SPIs on the same responder,
//!    and the tunnel answering pings. Any client that fails that makes the demo exit non-zero,
//!    after cleaning up.
//!
//! What `tests/tests/cluster.rs` asserts (`every_client_establishes_through_every_node`,
//! `losing_a_node_keeps_every_ike_sa`), shown instead of asserted.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use ikelb_tests::cluster::{
    self, epoch, ClusterLab, ClusterSpec, Failover, LossSummary, Pings, Session, GATEWAY,
    ROUTER_ISP, ROUTER_NODES_ADDR,
};
use ikelb_tests::ike::HOST_ADDR;
use ikelb_tests::lab::VIP;

use crate::{stopping, Args};

/// Initiators by default, as in the cluster tests.
const DEFAULT_CLIENTS: usize = 24;
/// ikelb nodes: enough for a node's loss to leave a choice of VRRP heir.
const NODES: usize = 3;
/// A setup takes tens of milliseconds; retransmits finish within charon's ~7 s budget.
const INITIATE_TIMEOUT: Duration = Duration::from_secs(15);
/// The continuous pings' interval: the resolution of the outage measured.
const PING_EVERY: Duration = Duration::from_millis(100);
/// Pings before the cut, and after the cluster has converged.
const PINGS_BEFORE: Duration = Duration::from_secs(1);
const PINGS_AFTER: Duration = Duration::from_secs(2);

pub fn run(args: &Args, lb_ctl: &Path) -> Result<()> {
    if let Some(why) = cluster::unavailable() {
        bail!("the cluster demo cannot run here: {why} (`cargo xtask bootstrap` installs it)");
    }
    let clients = args.clients.unwrap_or(DEFAULT_CLIENTS);
    let spec = ClusterSpec {
        clients,
        nodes: NODES,
        started: NODES,
        responders: args.backends,
        listed: args.backends,
        share: true,
    };
    println!(
        "cluster demo: {clients} strongSwan clients → NAT → router (BIRD, ECMP) → {NODES} ikelb \
         nodes (lb-ctl daemon, BIRD, keepalived) → {} strongSwan responders → host {HOST_ADDR}",
        spec.responders
    );
    println!(
        "building: namespaces, the router's BIRD, {NODES} nodes, {} charons …",
        clients + spec.responders
    );
    let t0 = Instant::now();
    // A Ctrl-C at the terminal reaches the whole foreground process group, so a helper the
    // demo is running (`ip`, `birdc`, `swanctl`) may die with it: an error after a stop
    // request is that stop, not a failure.
    let lab = match ClusterLab::build_as('d', &spec, lb_ctl) {
        Ok(lab) => lab,
        Err(_) if stopping() => {
            println!("stopped during setup; everything built so far is removed");
            return Ok(());
        }
        Err(e) => return Err(e).context("building the cluster lab"),
    };
    println!("lab {} up in {:.1?}", lab.prefix().as_str(), t0.elapsed());
    let result = drive(&lab, lb_ctl);
    let prefix = lab.prefix().as_str().to_string();
    let t = Instant::now();
    if stopping() {
        println!("\nstopped by a signal before the end");
    }
    println!("\nstopping: charons, keepalived, BIRD, daemons, namespaces …");
    drop(lab);
    println!(
        "cleaned up everything under {prefix} in {:.1?}",
        t.elapsed()
    );
    match result {
        Err(_) if stopping() => Ok(()),
        result => result,
    }
}

/// Every client's session and the node the router's FIB sends it to, at one moment.
struct Seen {
    sessions: Vec<Session>,
    nodes: Vec<usize>,
}

impl Seen {
    fn now(lab: &ClusterLab) -> Result<Self> {
        Ok(Self {
            sessions: lab.sessions().context("listing the SAs (vici)")?,
            nodes: lab.nodes_of_clients().context("the router's FIB")?,
        })
    }
}

/// Establish, show, cut, check. `Ok` also when stopped by a signal.
fn drive(lab: &ClusterLab, lb_ctl: &Path) -> Result<()> {
    if stopping() {
        return Ok(());
    }
    let n = lab.clients.len();
    println!("establishing {n} IKEv2 clients at once (swanctl --initiate) …");
    let t = Instant::now();
    let initiations = lab.initiate_all(INITIATE_TIMEOUT);
    let failed: Vec<String> = initiations
        .iter()
        .enumerate()
        .filter(|(_, i)| !i.ok)
        .map(|(c, i)| format!("c{c:02}: {}", i.output.lines().last().unwrap_or("")))
        .collect();
    if stopping() {
        return Ok(());
    }
    if !failed.is_empty() {
        bail!(
            "{} of {n} clients did not establish:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    println!("{n} of {n} clients established in {:.1?}\n", t.elapsed());

    print_topology(lab)?;
    let before = Seen::now(lab)?;
    let of_before = &before.nodes;
    print_clients(lab, lb_ctl, &before.sessions, of_before)?;
    print_nodes(lab, of_before, None);

    let started: Vec<usize> = (0..lab.nodes.len()).collect();
    let lost = match lab.vrrp_masters()?.as_slice() {
        [m] => *m,
        other => bail!("want one VRRP master before the cut, found nodes {other:?}"),
    };
    let heir = lab
        .next_master(&started, lost)
        .context("no node left to take the gateway over")?;
    let survivors: Vec<usize> = started.iter().copied().filter(|&k| k != lost).collect();
    let name = &lab.nodes[lost].name;
    println!(
        "\ncutting {name} (the VRRP master, {} of {n} clients routed to it) off at both \
         switches, as a node losing power; every tunnel pinged every {PING_EVERY:?} …",
        of_before.iter().filter(|&&k| k == lost).count()
    );
    let run = lab.start_pings(PING_EVERY, "cut")?;
    crate::sleep_until(Instant::now() + PINGS_BEFORE);
    let at = epoch(SystemTime::now());
    let failover = lab.lose_node(lost, &survivors, Some(heir));
    crate::sleep_until(Instant::now() + PINGS_AFTER);
    let pings = run.stop()?;
    // A cluster that did not converge is reported with the sessions, not instead of them.
    let mut failures = Vec::new();
    match failover {
        Ok(Failover { route, gateway }) => {
            println!("  {name} out of the router's route after {route:.2?} (BFD, 100 ms × 5)");
            if let Some((held, arp)) = gateway {
                println!(
                    "  {heir} holds the gateway {GATEWAY} after {held:.2?}, every backend's \
                     gateway entry on its MAC after {arp:.2?} (VRRP)",
                    heir = lab.nodes[heir].name
                );
            }
        }
        Err(e) => {
            println!("  NOT CONVERGED: {e:#}");
            failures.push(format!(
                "the cluster did not converge after cutting {name}: {e:#}"
            ));
        }
    }
    println!("  pings across the cut: {}", LossSummary::of(&pings, at));
    print_router(lab)?;
    if stopping() {
        return Ok(());
    }

    let check = lab.ping_all(3);
    let after = Seen::now(lab)?;
    let broken = print_survival(lab, &before, &after, lost, &pings, at, &check);
    print_nodes(lab, &after.nodes, Some(lost));
    if !broken.is_empty() {
        failures.push(format!(
            "{} of {n} sessions did not survive losing {name}:\n  {}",
            broken.len(),
            broken.join("\n  ")
        ));
    }
    if !failures.is_empty() {
        bail!(
            "{}\n(IKELB_INTEROP_LOGS=DIR keeps every log of a run: charons, daemons, BIRDs, \
             keepalived)",
            failures.join("\n")
        );
    }
    println!(
        "\nevery one of {n} sessions survived losing {name}: the same IKE SA and CHILD_SA \
         SPIs on the same responder, every tunnel answering pings"
    );
    Ok(())
}

/// The router, each node (addresses, BGP and BFD as the router sees them, what it
/// announces, VRRP), the backends and the clients.
fn print_topology(lab: &ClusterLab) -> Result<()> {
    let bird = lab.router_bird();
    let hops: Vec<String> = lab
        .nexthop_nodes()?
        .iter()
        .map(|&k| lab.nodes[k].name.clone())
        .collect();
    let bfd = bird.birdc(&["show", "bfd", "sessions"]).unwrap_or_default();
    let masters = lab.vrrp_masters()?;
    println!("topology ({})", lab.prefix().as_str());
    println!(
        "  router  {ROUTER_ISP} toward the clients' NAT, {ROUTER_NODES_ADDR}/24 on the nodes' \
         bridge; BIRD (deploy/bird/router.conf)"
    );
    println!(
        "          VIP {VIP}/32 → one ECMP route over {} (hashed on addresses only)",
        hops.join(" ")
    );
    println!(
        "  {:<5} {:<13} {:<15} {:<12} {:<5} {:<17} VRRP for {GATEWAY}",
        "node", "to router", "to backends", "BGP", "BFD", "announces"
    );
    for (k, node) in lab.nodes.iter().enumerate() {
        let session = format!("node{}", k + 1);
        let bgp = match bird.established(&session) {
            Ok(true) => "Established".to_string(),
            Ok(false) => protocol_state(&bird.birdc(&["show", "protocols", &session])?, &session),
            Err(e) => format!("? ({e:#})"),
        };
        let announced = node.announced().map_or_else(
            |e| format!("? ({e:#})"),
            |a| {
                if a.is_empty() {
                    "nothing".into()
                } else {
                    a.join(" ")
                }
            },
        );
        println!(
            "  {:<5} {:<13} {:<15} {:<12} {:<5} {:<17} {} (priority {})",
            node.name,
            node.ext_addr.to_string(),
            node.int_addr.to_string(),
            bgp,
            bfd_state(&bfd, node.ext_addr),
            announced,
            if masters.contains(&k) {
                "MASTER"
            } else {
                "backup"
            },
            node.priority
        );
    }
    println!("  backends: strongSwan responders, default gateway {GATEWAY} (the VRRP master)");
    for (r, b) in lab.responders.iter().enumerate() {
        println!(
            "  {:<5} {:<13} virtual IPs {}/24",
            b.name,
            b.addr.to_string(),
            cluster::pool(r)
        );
    }
    let last = lab.clients.len() - 1;
    println!(
        "  clients c00…c{last:02} ({}…) behind NAT as {}…{}, pinging {HOST_ADDR} through \
         their tunnels",
        cluster::client_addr(0),
        cluster::public(0),
        cluster::public(last)
    );
    println!(
        "  every node: the same backends, hash_seed and Maglev table (any node picks the same \
         responder for a client); shared persistence over iBGP among the nodes"
    );
    Ok(())
}

/// The router's view after a change: the VIP route's next hops, and BGP and BFD per node.
fn print_router(lab: &ClusterLab) -> Result<()> {
    let bird = lab.router_bird();
    let bfd = bird.birdc(&["show", "bfd", "sessions"]).unwrap_or_default();
    let hops: Vec<String> = lab
        .nexthop_nodes()?
        .iter()
        .map(|&k| lab.nodes[k].name.clone())
        .collect();
    let mut peers = Vec::new();
    for (k, node) in lab.nodes.iter().enumerate() {
        let session = format!("node{}", k + 1);
        let state = bird.birdc(&["show", "protocols", &session])?;
        peers.push(format!(
            "{} BGP {}, BFD {}",
            node.name,
            protocol_info(&state, &session),
            bfd_state(&bfd, node.ext_addr)
        ));
    }
    println!(
        "  the router now: VIP {VIP}/32 over {}\n    {}",
        hops.join(" "),
        peers.join("; ")
    );
    Ok(())
}

/// `Established`, or the state and why (`start`, `Active Socket: Connection refused`, …)
/// of BGP protocol `name` in `birdc show protocols NAME`.
fn protocol_info(text: &str, name: &str) -> String {
    let Some(line) = text.lines().find(|l| l.starts_with(name)) else {
        return "?".into();
    };
    if line.contains("Established") {
        return "Established".into();
    }
    protocol_state(text, name)
}

/// `State` of BGP protocol `name` in `birdc show protocols NAME` (`start`, `down`, …).
fn protocol_state(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("?")
        .to_string()
}

/// The state of the router's BFD session with `peer` in `birdc show bfd sessions`
/// (`Up`, `Down`, `Init`), or `-` without one.
fn bfd_state(text: &str, peer: Ipv4Addr) -> String {
    let peer = peer.to_string();
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&peer.as_str()))
        .and_then(|w| w.get(2).map(|s| s.to_string()))
        .unwrap_or_else(|| "-".into())
}

/// `b2 10.0.0.12`, or `?` for no responder.
fn responder(lab: &ClusterLab, r: Option<usize>) -> String {
    r.map_or("?".into(), |r| {
        format!("{} {}", lab.responders[r].name, lab.responders[r].addr)
    })
}

/// `1a2b…/9c8d…`: the IKE SA's initiator and responder SPIs.
fn ike_spis(s: &Session) -> String {
    format!("{}/{}", s.initiator_spi, s.responder_spi)
}

/// Per client: the node the router's FIB sends it to, what that node's daemon holds for it,
/// whether every node would send it to the responder holding its SA, and its SPIs.
fn print_clients(
    lab: &ClusterLab,
    lb_ctl: &Path,
    sessions: &[Session],
    of: &[usize],
) -> Result<()> {
    println!(
        "\nclients: the node the router sends each to (its FIB: `ip route get`), that node's \
         entry (`lb-ctl lookup`), the responder holding its IKE SA"
    );
    println!(
        "  client public       node  its entry    IKE SA at        IKE SA SPIs \
         (initiator/responder)  CHILD_SA SPIs in/out"
    );
    let mut disagree = Vec::new();
    for (i, (c, s)) in lab.clients.iter().zip(sessions).enumerate() {
        let node = &lab.nodes[of[i]];
        let own = node.lookup(lb_ctl, c.public)?;
        let want = s.backend.map(|r| lab.responders[r].addr);
        for other in &lab.nodes {
            let l = other.lookup(lb_ctl, c.public)?;
            if l.backend != want {
                disagree.push(format!(
                    "c{i:02}: {} would send it to {:?}, its SA is at {want:?}",
                    other.name, l.backend
                ));
            }
        }
        let mut line = format!(
            "  c{i:02}    {:<12} {:<5} {:<12} {:<16} {:<34} {}/{}",
            c.public.to_string(),
            node.name,
            own.source,
            responder(lab, s.backend),
            ike_spis(s),
            s.child_spi_in,
            s.child_spi_out
        );
        if let Some(p) = s.problem() {
            write!(line, "  ({p})").expect("write to String");
        }
        println!("{line}");
    }
    println!(
        "  its entry on that node: persistence (established), or probation (not yet proven: \
         the proof is in\n  the server's reply, and replies pass the VRRP master only; \
         docs/security.md, docs/cluster.md)"
    );
    if disagree.is_empty() {
        println!(
            "  every node would send every client to the responder holding its SA (`lb-ctl \
             lookup` on each):\n  whichever node the router picks, the session stays"
        );
    } else {
        println!("  nodes that disagree:\n    {}", disagree.join("\n    "));
    }
    Ok(())
}

/// Per node: clients the router sends it, and its data path's counters; `cut` marks the
/// node cut off (its daemon still answers on its own loopback).
fn print_nodes(lab: &ClusterLab, of: &[usize], cut: Option<usize>) {
    let masters = lab.vrrp_masters().unwrap_or_default();
    println!(
        "  per node: clients routed to it; packets forwarded to backends; replies rewritten \
         (stateless: clients another node forwarded)"
    );
    for (k, node) in lab.nodes.iter().enumerate() {
        let clients = of.iter().filter(|&&n| n == k).count();
        let counters = node.counters().map_or_else(
            |_| "no answer (cut off)".to_string(),
            |c| {
                format!(
                    "forwarded {:>5}  rewrote {:>5} ({} stateless)",
                    c.forward, c.reverse, c.reverse_stateless
                )
            },
        );
        println!(
            "  {:<5} {:>2} clients  {counters}{}",
            node.name,
            clients,
            if cut == Some(k) {
                "  (cut off)"
            } else if masters.contains(&k) {
                "  (VRRP master: every reply)"
            } else {
                ""
            }
        );
    }
}

/// Per client after node `cut` was cut off: its node before and after, whether its session is
/// the same, what its pings lost; returns why each broken one is broken.
fn print_survival(
    lab: &ClusterLab,
    before: &Seen,
    after: &Seen,
    cut: usize,
    pings: &[Pings],
    at: f64,
    check: &[(u32, u32)],
) -> Vec<String> {
    println!(
        "\nafter the cut: each client's node (router FIB), its session against before, its \
         pings (every {PING_EVERY:?} across the cut; then 3 more)"
    );
    println!("  client node      IKE SA at        SPIs     pings lost  outage   back after  now");
    let mut broken = Vec::new();
    for i in 0..lab.clients.len() {
        let (b, a) = (&before.sessions[i], &after.sessions[i]);
        let mut why = Vec::new();
        if let Some(p) = a.problem() {
            why.push(p);
        }
        if a.backend != b.backend {
            why.push(format!(
                "IKE SA at {} (was {})",
                responder(lab, a.backend),
                responder(lab, b.backend)
            ));
        }
        let spis = |s: &Session| {
            (
                s.initiator_spi.clone(),
                s.responder_spi.clone(),
                s.child_spi_in.clone(),
                s.child_spi_out.clone(),
            )
        };
        if spis(a) != spis(b) {
            why.push(format!(
                "SPIs {} CHILD {}/{} (were {} CHILD {}/{})",
                ike_spis(a),
                a.child_spi_in,
                a.child_spi_out,
                ike_spis(b),
                b.child_spi_in,
                b.child_spi_out
            ));
        } else if a != b {
            why.push(format!("session {a:?} (was {b:?})"));
        }
        let (sent, got) = check[i];
        if sent == 0 || got < sent {
            why.push(format!("tunnel answered {got} of {sent} pings"));
        }
        let node = |k: usize| lab.nodes[k].name.as_str();
        let (was, now) = (before.nodes[i], after.nodes[i]);
        let moved = if was == now {
            node(now).to_string()
        } else {
            format!("{}→{}", node(was), node(now))
        };
        let back = pings[i]
            .recovered_at()
            .map_or("-".into(), |t| format!("{:.2}s", t - at));
        println!(
            "  c{i:02}    {:<9} {:<16} {:<8} {:<11} {:<8} {:<11} {}",
            moved,
            responder(lab, a.backend),
            if a == b { "same" } else { "CHANGED" },
            format!("{} of {}", pings[i].lost().len(), pings[i].last_answered()),
            format!("{:.1}s", pings[i].longest_outage().as_secs_f64()),
            back,
            if why.is_empty() {
                format!("{got}/{sent} answered")
            } else {
                why.join("; ")
            }
        );
        if !why.is_empty() {
            broken.push(format!("c{i:02}: {}", why.join("; ")));
        }
    }
    let between = (0..lab.clients.len())
        .filter(|&i| before.nodes[i] != after.nodes[i] && before.nodes[i] != cut)
        .count();
    if between > 0 {
        println!(
            "  {between} of the others moved between the nodes that stayed: the router picks among \
             its next hops by\n  hash threshold, so a change of the set moves some (docs/cluster.md); \
             every node selects alike"
        );
    }
    broken
}
