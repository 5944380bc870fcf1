//! The cluster lab (`ikelb_tests::cluster`, docs/cluster.md "The cluster lab"): ikelb nodes
//! active-active behind a BIRD router's ECMP, 24 real strongSwan clients behind NAT (one
//! public address each), 3 real strongSwan responders on one segment whose default gateway
//! is a VRRP address among the nodes.
//!
//! Every test checks, per client, that its IKE SA and CHILD_SA keep their SPIs on the same
//! responder (nobody re-established, nobody moved) and that its tunnel answers pings:
//! 1. `every_client_establishes_through_every_node`: every client comes up, every node
//!    carries some clients (the router's FIB, each node's entries and counters agree), every
//!    node would send every client to the responder that holds its SA, and the VRRP master
//!    returns the replies of clients other nodes forwarded (`reverse_stateless`), from its
//!    interface's real MAC;
//! 2. `losing_a_node_keeps_every_ike_sa`: a backup node's links are cut, then the VRRP
//!    master's; each time BFD takes it out of the router's route (and VRRP moves the
//!    gateway), every tunnel carries pings again and no client re-established;
//! 3. `adding_a_node_moves_nobody`: a fourth node starts and announces; the router spreads
//!    clients over it, and no client changes responder or SA;
//! 4. `a_planned_drain_loses_no_ping`: the VRRP master's daemon stops cleanly (its routes
//!    are withdrawn), the router drops it, keepalived hands the gateway over, then the node
//!    is cut: not one ping is lost.
//!
//! Packets lost and convergence times are printed (`CLUSTER:` lines) and written down in
//! docs/cluster.md, never asserted. The tests need root, BIRD, keepalived and strongSwan;
//! without them each says why and returns. One lab at a time (~30 charons each).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ikelb_tests::cluster::{
    self, epoch, ClusterLab, ClusterSpec, Failover, LossSummary, Pings, Session, GATEWAY, INT,
    VRRP_VMAC,
};
use ikelb_tests::lab;

const CLIENTS: usize = 24;
const RESPONDERS: usize = 3;
/// A setup takes tens of milliseconds; retransmits finish within charon's ~7 s budget.
const INITIATE_TIMEOUT: Duration = Duration::from_secs(15);
/// The continuous pings' interval: the resolution of every outage measured.
const PING_EVERY: Duration = Duration::from_millis(100);

static SERIAL: Mutex<()> = Mutex::new(());

/// Say that `test` did not run, and why, on the process's stderr itself (libtest captures
/// `eprintln!` of passing tests, and a skip must never look like a pass).
fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The `lb-ctl` to test, or `None` after saying why the test cannot run here.
fn runnable(test: &str) -> Option<PathBuf> {
    if let Some(why) = cluster::unavailable() {
        skipped(test, &why);
        return None;
    }
    match lab::lb_ctl_path() {
        Ok(p) => Some(p),
        Err(e) => {
            skipped(test, &format!("{e:#}"));
            None
        }
    }
}

/// A running lab with every client established (test 1's checks passed), and what each
/// client's session was then.
struct Up {
    test: &'static str,
    lab: ClusterLab,
    lb_ctl: PathBuf,
    before: Vec<Session>,
    started: Instant,
    _serial: MutexGuard<'static, ()>,
}

impl Up {
    /// Build the lab (`nodes` built, `started` of them running), bring every client up and
    /// check test 1's assertions; `None` when the machine cannot run it.
    fn start(test: &'static str, nodes: usize, started: usize) -> Option<Self> {
        Self::start_with(
            test,
            ClusterSpec {
                clients: CLIENTS,
                nodes,
                started,
                responders: RESPONDERS,
                listed: RESPONDERS,
                share: true,
            },
        )
    }

    /// [`Up::start`] of any lab.
    fn start_with(test: &'static str, spec: ClusterSpec) -> Option<Self> {
        let started = spec.started;
        let lb_ctl = runnable(test)?;
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let t0 = Instant::now();
        let lab = ClusterLab::build(&spec, &lb_ctl)
            .unwrap_or_else(|e| panic!("{test}: building the lab: {e:#}"));
        eprintln!("{test}: lab up in {:.1?}", t0.elapsed());
        let t1 = Instant::now();
        let initiations = lab.initiate_all(INITIATE_TIMEOUT);
        let failed: Vec<String> = initiations
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.ok)
            .map(|(c, i)| {
                format!(
                    "  {}: {}",
                    lab.clients[c].id,
                    i.output.lines().last().unwrap_or("")
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{test}: {} clients did not come up:\n{}\n{}",
            failed.len(),
            failed.join("\n"),
            lab.log_tails(20)
        );
        eprintln!("{test}: {CLIENTS} clients up in {:.1?}", t1.elapsed());
        let mut up = Self {
            test,
            lab,
            lb_ctl,
            before: Vec::new(),
            started: t0,
            _serial: serial,
        };
        up.check_pings("after setup");
        up.before = up.healthy_sessions("after setup");
        up.check_spread(&(0..started).collect::<Vec<_>>());
        Some(up)
    }

    /// Every tunnel answers 3 pings out of 3.
    fn check_pings(&self, when: &str) {
        let pings = self.lab.ping_all(3);
        let bad: Vec<String> = pings
            .iter()
            .enumerate()
            .filter(|(_, &(sent, got))| sent == 0 || got < sent)
            .map(|(i, (sent, got))| format!("{} {got}/{sent}", self.lab.clients[i].id))
            .collect();
        assert!(
            bad.is_empty(),
            "{}: {when}: tunnels not answering pings: {bad:?}\n{}",
            self.test,
            self.lab.log_tails(15)
        );
    }

    /// Every client's session, each one IKE SA with an installed CHILD_SA, established at
    /// exactly one responder.
    fn healthy_sessions(&self, when: &str) -> Vec<Session> {
        let sessions = self
            .lab
            .sessions()
            .unwrap_or_else(|e| panic!("{}: {when}: listing SAs: {e:#}", self.test));
        let bad: Vec<String> = sessions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.problem()
                    .map(|p| format!("  {}: {p}", self.lab.clients[i].id))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{}: {when}: sessions not healthy:\n{}",
            self.test,
            bad.join("\n")
        );
        sessions
    }

    /// Test 1's spread: the router's FIB sends every client to one of `started` and each
    /// of them gets some; the node a client is routed to holds an entry for it (it forwarded
    /// it), the other nodes none (nothing has moved yet); every node would send every client
    /// to the responder that holds its SA; the VRRP master returned the other nodes'
    /// clients' replies statelessly, from its own MAC.
    fn check_spread(&self, started: &[usize]) {
        let test = self.test;
        let lab = &self.lab;
        let of = lab
            .nodes_of_clients()
            .unwrap_or_else(|e| panic!("{test}: the router's FIB: {e:#}"));
        let per_node: Vec<usize> = (0..lab.nodes.len())
            .map(|k| of.iter().filter(|&&n| n == k).count())
            .collect();
        let counters = lab.counters();
        let route = lab
            .router
            .ip(&["-d", "route", "show", &format!("{}/32", lab::VIP)])
            .unwrap_or_else(|e| format!("{e:#}"));
        eprintln!(
            "CLUSTER: {test}: the router's route: {}; clients per node (router FIB) \
             {per_node:?}; node counters {counters:?}",
            route.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        for &k in started {
            assert!(
                per_node[k] > 0,
                "{test}: the router sends no client to {}: clients per node {per_node:?}",
                lab.nodes[k].name
            );
        }
        let mut wrong = Vec::new();
        for (i, c) in lab.clients.iter().enumerate() {
            let backend = self.before[i].backend.map(|r| lab.responders[r].addr);
            for &k in started {
                let l = lab.nodes[k]
                    .lookup(&self.lb_ctl, c.public)
                    .unwrap_or_else(|e| panic!("{test}: lookup: {e:#}"));
                if l.backend != backend {
                    wrong.push(format!(
                        "  {}: {} would send it to {:?}, its SA is at {backend:?}",
                        c.id, lab.nodes[k].name, l.backend
                    ));
                }
                if l.entry != (of[i] == k) {
                    wrong.push(format!(
                        "  {}: routed to {}, yet {} {} an entry ({})",
                        c.id,
                        lab.nodes[of[i]].name,
                        lab.nodes[k].name,
                        if l.entry { "holds" } else { "lacks" },
                        l.source
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{test}: the nodes disagree with the router or the responders:\n{}",
            wrong.join("\n")
        );
        let masters = lab.vrrp_masters().expect("VRRP masters");
        assert_eq!(
            masters.len(),
            1,
            "{test}: VRRP masters {masters:?}\n{}",
            lab.log_tails(10)
        );
        let m = masters[0];
        for &k in started {
            let c = counters[k].unwrap_or_else(|| panic!("{test}: no metrics from node {k}"));
            assert!(
                c.forward > 0,
                "{test}: {} forwarded nothing: {c:?}",
                lab.nodes[k].name
            );
            if k == m {
                assert!(
                    c.reverse > 0 && c.reverse_stateless > 0,
                    "{test}: the VRRP master {} returned no reply for the other nodes' \
                     clients: {c:?}",
                    lab.nodes[k].name
                );
            } else {
                assert_eq!(
                    c.reverse, 0,
                    "{test}: {} is no VRRP master, yet rewrote replies",
                    lab.nodes[k].name
                );
            }
        }
        let mac = lab.nodes[m].ns.mac(INT).expect("master's MAC");
        let macs = lab.gateway_macs().expect("backends' neighbours");
        assert!(
            macs.iter().all(|x| *x == Some(mac)) && mac != VRRP_VMAC,
            "{test}: the backends reach their gateway {GATEWAY} at {macs:?}; the master {}'s \
             own MAC is {mac:02x?} (keepalived without use_vmac)",
            lab.nodes[m].name
        );
    }

    /// Every client's session is the one it had after setup (same SPIs, same responder,
    /// no second IKE SA), and its tunnel answers pings.
    fn check_kept(&self, when: &str) {
        self.check_pings(when);
        let after = self.healthy_sessions(when);
        let moved: Vec<String> = self
            .before
            .iter()
            .zip(&after)
            .enumerate()
            .filter(|(_, (b, a))| b != a)
            .map(|(i, (b, a))| format!("  {}: {b:?}\n   → {a:?}", self.lab.clients[i].id))
            .collect();
        assert!(
            moved.is_empty(),
            "{}: {when}: {} clients' sessions changed:\n{}",
            self.test,
            moved.len(),
            moved.join("\n")
        );
    }

    /// Runs `event` while every tunnel is pinged every [`PING_EVERY`]: a second of pings
    /// before it, `settle` after it returns. Every tunnel must answer at the end. Returns
    /// what `event` returned, each client's pings and when the event began (epoch s).
    fn across<T>(
        &mut self,
        tag: &str,
        settle: Duration,
        event: impl FnOnce(&mut ClusterLab) -> T,
    ) -> (T, Vec<Pings>, f64) {
        let (out, pings, at) = self.across_unchecked(tag, settle, event);
        assert_answering_at_end(self.test, &self.lab, &pings);
        (out, pings, at)
    }

    /// [`Up::across`] without the check that every tunnel answers at the end.
    fn across_unchecked<T>(
        &mut self,
        tag: &str,
        settle: Duration,
        event: impl FnOnce(&mut ClusterLab) -> T,
    ) -> (T, Vec<Pings>, f64) {
        let test = self.test;
        let run = self
            .lab
            .start_pings(PING_EVERY, tag)
            .unwrap_or_else(|e| panic!("{test}: starting pings: {e:#}"));
        std::thread::sleep(Duration::from_secs(1));
        let at = epoch(SystemTime::now());
        let out = event(&mut self.lab);
        std::thread::sleep(settle);
        let pings = run
            .stop()
            .unwrap_or_else(|e| panic!("{test}: stopping pings: {e:#}"));
        (out, pings, at)
    }

    fn finish(self) {
        let Self {
            test, lab, started, ..
        } = self;
        drop(lab);
        eprintln!("{test}: {:.1?} in all", started.elapsed());
    }
}

/// The clients whose tunnel did not answer to the end of the run (its last reply a second
/// or more before the stop, or more than 3 requests in flight then), described.
fn silent(lab: &ClusterLab, pings: &[Pings]) -> Vec<(usize, String)> {
    pings
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.unanswered_tail() > 3 || p.last_reply_at().is_none_or(|t| p.stopped_at - t > 1.0)
        })
        .map(|(i, p)| {
            let what = format!(
                "  {}: {} sent, last answered #{} ({:?} s before the stop)",
                lab.clients[i].id,
                p.transmitted,
                p.last_answered(),
                p.last_reply_at().map(|t| p.stopped_at - t)
            );
            (i, what)
        })
        .collect()
}

/// Every client's pings after the run: each tunnel answered to the end ([`silent`]).
fn assert_answering_at_end(test: &str, lab: &ClusterLab, pings: &[Pings]) {
    let bad: Vec<String> = silent(lab, pings).into_iter().map(|(_, w)| w).collect();
    assert!(
        bad.is_empty(),
        "{test}: tunnels not answering at the end:\n{}\n{}",
        bad.join("\n"),
        lab.log_tails(15)
    );
}

#[test]
fn every_client_establishes_through_every_node() {
    let Some(up) = Up::start("every_client_establishes_through_every_node", 3, 3) else {
        return;
    };
    up.check_kept("at the end");
    up.finish();
}

/// The node that takes the VRRP address over when `gone` leaves ([`ClusterLab::next_master`]).
fn next_master(lab: &ClusterLab, started: &[usize], gone: usize) -> usize {
    lab.next_master(started, gone).expect("a surviving node")
}

/// Clients the router sends to another node than before, leaving out those of `gone` (whose
/// node left): with the kernel's hash-threshold ECMP a change of the set of next hops moves
/// some clients between nodes that stayed. They keep their backend (every node selects
/// alike); a client whose entry differs from the ring would not (docs/cluster.md).
fn moved_between(before: &[usize], after: &[usize], gone: Option<usize>) -> usize {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| Some(**b) != gone && b != a)
        .count()
}

/// Cuts node `lost` (one of `alive`) while every tunnel is pinged, and waits until the
/// router's route leaves it out and, if it held the gateway, `heir` holds it and every
/// backend's gateway entry names `heir`'s MAC. Prints what it measured; returns the nodes
/// left.
fn lose(up: &mut Up, alive: &[usize], lost: usize, heir: usize) -> Vec<usize> {
    let test = up.test;
    let survivors: Vec<usize> = alive.iter().copied().filter(|&k| k != lost).collect();
    let master = up.lab.vrrp_masters().expect("VRRP masters") == [lost];
    let of = up.lab.nodes_of_clients().expect("the router's FIB");
    let on_lost = of.iter().filter(|&&k| k == lost).count();
    let name = up.lab.nodes[lost].name.clone();
    let tag = format!("loss-{name}");
    let (Failover { route, gateway }, pings, at) = up.across(&tag, Duration::from_secs(2), |lab| {
        lab.lose_node(lost, &survivors, master.then_some(heir))
            .unwrap_or_else(|e| panic!("{test}: {e:#}\n{}", lab.log_tails(15)))
    });
    let summary = LossSummary::of(&pings, at);
    let after = up.lab.nodes_of_clients().expect("the router's FIB");
    assert!(
        after.iter().all(|k| survivors.contains(k)),
        "{test}: clients still routed to the lost node: {after:?}"
    );
    let gateway = match gateway {
        Some((held, arp)) => format!(
            "{} holds the gateway after {held:.2?}, every backend's gateway entry on its MAC \
             after {arp:.2?}",
            up.lab.nodes[heir].name
        ),
        None => "the gateway stays where it was".into(),
    };
    eprintln!(
        "CLUSTER: {test}: cut {name}{} ({on_lost} of {CLIENTS} clients routed to it; {} \
         others moved between the remaining nodes): out of the router's route after \
         {route:.2?} (BFD 100 ms x 5), {gateway}; {summary}",
        if master { ", the VRRP master" } else { "" },
        moved_between(&of, &after, Some(lost)),
    );
    up.check_kept(&format!("after losing {name}"));
    survivors
}

#[test]
fn losing_a_node_keeps_every_ike_sa() {
    let test = "losing_a_node_keeps_every_ike_sa";
    let Some(mut up) = Up::start(test, 3, 3) else {
        return;
    };
    let started = [0, 1, 2];
    let master = up.lab.vrrp_masters().expect("VRRP masters")[0];
    let backup = *started
        .iter()
        .filter(|&&k| k != master)
        .min_by_key(|&&k| up.lab.nodes[k].priority)
        .expect("a backup node");
    // A backup node first (its clients' requests only), then the VRRP master (every reply
    // and its own clients' requests).
    let alive = lose(&mut up, &started, backup, master);
    let heir = next_master(&up.lab, &alive, master);
    lose(&mut up, &alive, master, heir);
    up.finish();
}

#[test]
fn adding_a_node_moves_nobody() {
    let test = "adding_a_node_moves_nobody";
    let Some(mut up) = Up::start(test, 4, 3) else {
        return;
    };
    let master = up.lab.vrrp_masters().expect("VRRP masters");
    let before = up.lab.counters();
    let of_before = up.lab.nodes_of_clients().expect("the router's FIB");
    let ((started, route), pings, at) = up.across("add", Duration::from_secs(2), |lab| {
        let t0 = Instant::now();
        lab.start_node(3)
            .unwrap_or_else(|e| panic!("{test}: starting n4: {e:#}\n{}", lab.log_tails(15)));
        let started = t0.elapsed();
        lab.wait_nexthops(&[0, 1, 2, 3], Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{test}: {e:#}\n{}", lab.log_tails(15)));
        (started, t0.elapsed())
    });
    let summary = LossSummary::of(&pings, at);
    let of = up.lab.nodes_of_clients().expect("the router's FIB");
    let on_new = of.iter().filter(|&&k| k == 3).count();
    let between = moved_between(&of_before, &of, None) - on_new;
    let after = up.lab.counters();
    eprintln!(
        "CLUSTER: {test}: n4 started (daemon attached, BGP up) in {started:.2?}, in the \
         router's route after {route:.2?}; {on_new} of {CLIENTS} clients now routed to it, \
         {between} others moved between the old nodes; {summary}"
    );
    assert!(
        on_new > 0,
        "{test}: the router sends no client to the new node: {of:?}"
    );
    let n4 = after[3].unwrap_or_else(|| panic!("{test}: no metrics from n4"));
    assert!(
        n4.forward > 0,
        "{test}: the new node forwarded nothing: {n4:?} (before {:?})",
        before[3]
    );
    assert_eq!(
        up.lab.vrrp_masters().expect("VRRP masters"),
        master,
        "{test}: the lowest-priority newcomer moved the gateway"
    );
    up.check_kept("after adding a node");
    up.finish();
}

#[test]
fn a_planned_drain_loses_no_ping() {
    let test = "a_planned_drain_loses_no_ping";
    let Some(mut up) = Up::start(test, 3, 3) else {
        return;
    };
    let started = [0, 1, 2];
    let drained = up.lab.vrrp_masters().expect("VRRP masters")[0];
    let others: Vec<usize> = started.iter().copied().filter(|&k| k != drained).collect();
    let heir = next_master(&up.lab, &started, drained);
    let of = up.lab.nodes_of_clients().expect("the router's FIB");
    let ((withdrawn, handed), pings, at) = up.across("drain", Duration::from_secs(2), |lab| {
        let t0 = Instant::now();
        let node = &mut lab.nodes[drained];
        let status = node.stop_daemon().expect("SIGTERM the daemon");
        assert!(
            status.success(),
            "{test}: the daemon exited with {status}\n{}",
            node.daemon_tail(20)
        );
        assert_eq!(
            node.announced().expect("table 100"),
            Vec::<String>::new(),
            "{test}: routes left after a clean stop"
        );
        lab.wait_nexthops(&others, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{test}: {e:#}\n{}", lab.log_tails(15)));
        let withdrawn = t0.elapsed();
        let t1 = Instant::now();
        lab.nodes[drained]
            .terminate_keepalived()
            .expect("SIGTERM keepalived");
        lab.wait_vrrp_master(heir, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let held = t1.elapsed();
        lab.wait_gateway_mac(heir, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let arp = t1.elapsed();
        let status = lab.nodes[drained]
            .stop_keepalived()
            .expect("stop keepalived");
        assert!(status.success(), "{test}: keepalived exited with {status}");
        let handed = (held, arp);
        lab.nodes[drained].stop_bird();
        lab.cut_node(drained).expect("cut the drained node");
        (withdrawn, handed)
    });
    let (held, arp) = handed;
    let after = up.lab.nodes_of_clients().expect("the router's FIB");
    let summary = LossSummary::of(&pings, at);
    eprintln!(
        "CLUSTER: {test}: SIGTERM to {name}'s daemon ({} of {CLIENTS} clients routed to \
         it; {} others moved between the remaining nodes): out of the router's route after \
         {withdrawn:.2?}; SIGTERM to its keepalived: {heir_name} holds the gateway after \
         {held:.2?}, every backend's gateway entry on its MAC after {arp:.2?}; then BIRD \
         stopped and the node cut, 2 s before the pings stopped; {summary}",
        of.iter().filter(|&&k| k == drained).count(),
        moved_between(&of, &after, Some(drained)),
        name = up.lab.nodes[drained].name,
        heir_name = up.lab.nodes[heir].name,
    );
    let lossy: Vec<String> = pings
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.lost().is_empty())
        .map(|(i, p)| format!("  {}: lost {:?}", up.lab.clients[i].id, p.lost()))
        .collect();
    assert!(
        lossy.is_empty(),
        "{test}: pings lost during a planned drain:\n{}",
        lossy.join("\n")
    );
    up.check_kept("after the drain");
    up.finish();
}

/// A lab for the shared persistence tests: 3 nodes, 4 responders of which the daemons list
/// 3 (the 4th is added at runtime), shared persistence on or off.
fn share_spec(share: bool) -> ClusterSpec {
    ClusterSpec {
        clients: CLIENTS,
        nodes: 3,
        started: 3,
        responders: RESPONDERS + 1,
        listed: RESPONDERS,
        share,
    }
}

/// The clients whose ring slot converges to another responder than the one holding their
/// SA (`backends` in every node's ring, all usable): the divergent ones.
fn divergent(up: &Up, backends: &[usize]) -> Vec<usize> {
    (0..up.lab.clients.len())
        .filter(|&i| Some(up.lab.ring_backend(i, backends).0) != up.before[i].backend)
        .collect()
}

/// Waits until every node's ring has moved (no slot held) and `responder`'s state is
/// `state` on every node, with ring slots when `active`; how long it took.
fn wait_ring(up: &Up, responder: usize, state: &str, timeout: Duration) -> Duration {
    let test = up.test;
    let lab = &up.lab;
    let addr = lab.responders[responder].addr;
    let t0 = Instant::now();
    lab::wait_for(
        &format!("every node's ring settled with {addr} {state}"),
        timeout,
        Duration::from_millis(20),
        || {
            for k in 0..3 {
                if lab.held_slots(k)? != 0 {
                    return Ok(None);
                }
                let list = lab.backend_list(k)?;
                let Some((_, st, slots)) = list.iter().find(|(a, _, _)| *a == addr) else {
                    return Ok(None);
                };
                if st != state || (state == "active") != (*slots > 0) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{test}: {e:#}\n{}", lab.log_tails(15)));
    t0.elapsed()
}

/// Waits until shared persistence has converged for the divergent clients `div`: each node
/// publishes exactly its own (the clients the router sends it, `CLIENT/32 via RESPONDER` in
/// table 101), and has learned every other node's (table 102, `ikelb_share_clients`); then
/// every node would send every client to the responder holding its SA. How long it took.
fn wait_shared(up: &Up, div: &[usize], timeout: Duration) -> Duration {
    let test = up.test;
    let lab = &up.lab;
    let of = lab.nodes_of_clients().expect("the router's FIB");
    let route = |i: usize| {
        let r = up.before[i].backend.expect("established");
        (lab.clients[i].public, lab.responders[r].addr)
    };
    let want_own: Vec<Vec<_>> = (0..3)
        .map(|k| {
            let mut v: Vec<_> = div
                .iter()
                .filter(|&&i| of[i] == k)
                .map(|&i| route(i))
                .collect();
            v.sort();
            v
        })
        .collect();
    let t0 = Instant::now();
    let mut last = String::new();
    let got = lab::wait_for(
        "every node to publish its divergent clients and learn the others'",
        timeout,
        Duration::from_millis(20),
        || {
            last.clear();
            let mut ok = true;
            for k in 0..3 {
                let n = &lab.nodes[k];
                let own = n.share_routes(cluster::SHARE_EXPORT)?;
                let mut learned = n.share_routes(cluster::SHARE_IMPORT)?;
                learned.sort();
                let mut want_learned: Vec<_> = (0..3)
                    .filter(|&j| j != k)
                    .flat_map(|j| want_own[j].clone())
                    .collect();
                want_learned.sort();
                let exported = n.share_clients("exported")?;
                let learned_n = n.share_clients("learned")?;
                ok &= own == want_own[k]
                    && learned == want_learned
                    && exported == Some(want_own[k].len() as u64)
                    && learned_n == Some(want_learned.len() as u64);
                last.push_str(&format!(
                    "\n  {}: table 101 {own:?} (want {:?}), table 102 {learned:?} (want \
                     {want_learned:?}), exported {exported:?}, learned {learned_n:?}",
                    n.name, want_own[k]
                ));
            }
            Ok(ok.then_some(()))
        },
    );
    if let Err(e) = got {
        let birds: String = lab
            .nodes
            .iter()
            .filter_map(|n| n.bird().map(|b| (n, b)))
            .map(|(n, b)| {
                format!(
                    "\n--- {} birdc show route:\n{}\n{}",
                    n.name,
                    b.birdc(&["show", "route", "table", "share4"])
                        .unwrap_or_default(),
                    b.birdc(&["show", "protocols"]).unwrap_or_default()
                )
            })
            .collect();
        let mut lookups = String::new();
        for &i in div {
            for n in &lab.nodes {
                let l = n.lookup(&up.lb_ctl, lab.clients[i].public);
                lookups.push_str(&format!("\n  {} at {}: {l:?}", lab.clients[i].id, n.name));
            }
        }
        panic!(
            "{test}: {e:#}{last}\nlookups:{lookups}{birds}\n{}",
            lab.log_tails(15)
        );
    }
    let took = t0.elapsed();
    // Every node sends the client where its SA is; the other nodes hold it in the map the
    // forwarding node has it in: persistence for the VRRP master's clients (it sees their
    // backends' replies and promotes them), probation for a backup node's (the tier travels
    // as route metric 1 and BGP community (65001, 1)).
    let master = lab.vrrp_masters().expect("VRRP masters")[0];
    let mut wrong = Vec::new();
    for &i in div {
        let (client, backend) = route(i);
        let tier = if of[i] == master {
            "persistence"
        } else {
            "probation"
        };
        for k in 0..3 {
            let l = lab.nodes[k]
                .lookup(&up.lb_ctl, client)
                .unwrap_or_else(|e| panic!("{test}: lookup: {e:#}"));
            if l.backend != Some(backend) || (k != of[i] && l.source != tier) {
                wrong.push(format!(
                    "  {}: {} would send it to {:?} ({}), its SA is at {backend}, {} holds \
                     it in {tier}",
                    lab.clients[i].id,
                    lab.nodes[k].name,
                    l.backend,
                    l.source,
                    lab.nodes[of[i]].name
                ));
            }
        }
    }
    if !wrong.is_empty() {
        let tables: String = lab
            .nodes
            .iter()
            .take(3)
            .map(|n| {
                let show = |t: &str| n.ns.ip(&["route", "show", "table", t]).unwrap_or_default();
                let bird = n
                    .bird()
                    .and_then(|b| b.birdc(&["show", "route", "all", "table", "share4"]).ok())
                    .unwrap_or_default();
                format!(
                    "\n--- {}: table 101\n{}--- table 102\n{}--- BIRD share4\n{bird}",
                    n.name,
                    show("101"),
                    show("102")
                )
            })
            .collect();
        panic!(
            "{test}: shared, yet not where the SA is or not in its tier:\n{}{tables}",
            wrong.join("\n")
        );
    }
    took
}

/// `lb-ctl backend add aovpn ADDR` of the spare responder on every node; then waits until
/// every ring moved (`slot_move_delay`). Returns the divergent clients, checked to exist
/// and to include some a backup node forwards (their replies reach the VRRP master, which
/// did not forward them), and when the add was done.
fn add_spare_backend(up: &Up) -> (Vec<usize>, Instant) {
    let test = up.test;
    let lab = &up.lab;
    let spare = RESPONDERS;
    let old: Vec<usize> = (0..RESPONDERS).collect();
    let off: Vec<String> = (0..CLIENTS)
        .filter_map(|i| {
            let (r, _) = lab.ring_backend(i, &old);
            (Some(r) != up.before[i].backend).then(|| {
                format!(
                    "  {}: ring {r}, SA at {:?}",
                    lab.clients[i].id, up.before[i].backend
                )
            })
        })
        .collect();
    assert!(
        off.is_empty(),
        "{test}: the computed ring disagrees with where clients went:\n{}",
        off.join("\n")
    );
    let addr = lab.responders[spare].addr.to_string();
    let t0 = Instant::now();
    for n in &lab.nodes {
        n.lb_ctl(&up.lb_ctl, &["backend", "add", "aovpn", &addr])
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    }
    let moved = wait_ring(up, spare, "active", Duration::from_secs(20));
    let all: Vec<usize> = (0..=RESPONDERS).collect();
    let div = divergent(up, &all);
    let of = lab.nodes_of_clients().expect("the router's FIB");
    let master = lab.vrrp_masters().expect("VRRP masters")[0];
    let on_backups = div.iter().filter(|&&i| of[i] != master).count();
    eprintln!(
        "CLUSTER: {test}: {addr} added on every node; every ring moved after {moved:.2?} \
         (slot_move_delay 1 s); {} of {CLIENTS} clients divergent, per node {:?}, {on_backups} \
         of them forwarded by a backup node",
        div.len(),
        (0..3)
            .map(|k| div.iter().filter(|&&i| of[i] == k).count())
            .collect::<Vec<_>>()
    );
    assert!(
        !div.is_empty() && on_backups > 0,
        "{test}: no divergent client forwarded by a backup node ({div:?}): the test would not \
         show anything"
    );
    (div, t0)
}

/// The node carrying the most of `clients` (by the router's FIB) among those that do not
/// hold the backends' gateway: the clients of such a node are in probation there (their
/// backends' replies, which carry the proof, go through the VRRP master), so losing it shows
/// that probation clients are shared too.
fn backup_with_most(up: &Up, clients: &[usize]) -> usize {
    let of = up.lab.nodes_of_clients().expect("the router's FIB");
    let master = up.lab.vrrp_masters().expect("VRRP masters")[0];
    (0..3)
        .filter(|&k| k != master)
        .max_by_key(|&k| clients.iter().filter(|&&i| of[i] == k).count())
        .expect("nodes")
}

#[test]
fn a_backend_added_at_runtime_keeps_its_clients_across_a_node_loss() {
    let test = "a_backend_added_at_runtime_keeps_its_clients_across_a_node_loss";
    let Some(mut up) = Up::start_with(test, share_spec(true)) else {
        return;
    };
    let (div, added) = add_spare_backend(&up);
    let shared = wait_shared(&up, &div, Duration::from_secs(20));
    eprintln!(
        "CLUSTER: {test}: every node published its divergent clients and learned the \
         others' {shared:.2?} after the rings moved ({:.2?} after the add; rounds every 2 s)",
        added.elapsed()
    );
    // Case (b): the divergent clients a backup node forwards get their replies through
    // the VRRP master; and nobody moved to the new responder.
    up.check_kept("after the backend add, before any cut");
    let cut = backup_with_most(&up, &div);
    let started = [0, 1, 2];
    let heir = next_master(&up.lab, &started, cut);
    lose(&mut up, &started, cut, heir);
    up.finish();
}

/// The control for the test above: without `share`, the divergent clients a backup node
/// forwards lose their tunnel as soon as the rings move, before any node is lost — their
/// backend's replies reach the VRRP master, which has no entry for them and whose ring
/// names another backend, so it drops them (`drop/reverse_not_client`).
#[test]
fn without_sharing_a_backup_nodes_divergent_clients_lose_their_replies() {
    let test = "without_sharing_a_backup_nodes_divergent_clients_lose_their_replies";
    let Some(mut up) = Up::start_with(test, share_spec(false)) else {
        return;
    };
    let (div, _) = add_spare_backend(&up);
    let of = up.lab.nodes_of_clients().expect("the router's FIB");
    let master = up.lab.vrrp_masters().expect("VRRP masters")[0];
    let on_backups: Vec<usize> = div.iter().copied().filter(|&i| of[i] != master).collect();
    let (_, pings, _) = up.across_unchecked("control", Duration::from_secs(2), |_| ());
    let silent = silent(&up.lab, &pings);
    let silent_ids: Vec<usize> = silent.iter().map(|(i, _)| *i).collect();
    eprintln!(
        "CLUSTER: {test}: divergent clients on backup nodes {on_backups:?}, tunnels not \
         answering {silent_ids:?}"
    );
    assert!(
        on_backups.iter().all(|i| silent_ids.contains(i)),
        "{test}: a backup node's divergent client still gets its replies without sharing, so \
         the test with sharing shows nothing: silent {silent_ids:?}, on backups {on_backups:?}"
    );
    assert!(
        silent_ids.iter().all(|i| on_backups.contains(i)),
        "{test}: tunnels lost that are no backup node's divergent clients:\n{}",
        silent
            .iter()
            .map(|(_, w)| w.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    up.finish();
}

/// A failover and recovery makes clients divergent as an add does: the clients of the
/// responder with the most are moved by its failure (its link cut: every node's health checks
/// take it out, and the clients re-establish on the others); once it is back, its slots move
/// back to it, and those clients — on another backend than their slot's now, forwarded by
/// every node — must keep their IKE SA across the loss of a node (a backup node, whose
/// clients are in probation there).
#[test]
fn a_failover_and_recovery_keeps_its_clients_across_a_node_loss() {
    let test = "a_failover_and_recovery_keeps_its_clients_across_a_node_loss";
    let Some(mut up) = Up::start_with(test, share_spec(true)) else {
        return;
    };
    let listed: Vec<usize> = (0..RESPONDERS).collect();
    let on = |up: &Up, r: usize| -> Vec<usize> {
        (0..CLIENTS)
            .filter(|&i| up.before[i].backend == Some(r))
            .collect()
    };
    let dead = (0..RESPONDERS)
        .max_by_key(|&r| on(&up, r).len())
        .expect("responders");
    let moved = on(&up, dead);
    up.lab
        .set_responder_link(dead, false)
        .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let down = wait_ring(&up, dead, "unusable", Duration::from_secs(20));
    let t0 = Instant::now();
    for &i in &moved {
        let c = &up.lab.clients[i];
        c.charon
            .terminate_ike("vpn")
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let init = c.charon.initiate("vpn", INITIATE_TIMEOUT);
        assert!(
            init.ok,
            "{test}: {} did not re-establish:\n{}",
            c.id, init.output
        );
    }
    let reestablished = t0.elapsed();
    up.before = up.healthy_sessions("after the failover");
    let back_on_dead: Vec<usize> = on(&up, dead);
    assert!(
        back_on_dead.is_empty(),
        "{test}: clients {back_on_dead:?} re-established on the dead responder"
    );
    up.lab
        .set_responder_link(dead, true)
        .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let recovered = wait_ring(&up, dead, "active", Duration::from_secs(30));
    let div = divergent(&up, &listed);
    let of = up.lab.nodes_of_clients().expect("the router's FIB");
    let master = up.lab.vrrp_masters().expect("VRRP masters")[0];
    let on_backups = div.iter().filter(|&&i| of[i] != master).count();
    eprintln!(
        "CLUSTER: {test}: {} ({} clients) cut: out of every ring after {down:.2?}; its \
         clients re-established on the others in {reestablished:.2?}; back in every ring \
         {recovered:.2?} after its link came back; {} of {CLIENTS} clients divergent, {on_backups} \
         of them forwarded by a backup node",
        up.lab.responders[dead].addr,
        moved.len(),
        div.len(),
    );
    assert!(
        div.iter().all(|i| moved.contains(i)) && on_backups > 0,
        "{test}: divergent {div:?}, want the failed responder's clients {moved:?}, some on a \
         backup node"
    );
    let shared = wait_shared(&up, &div, Duration::from_secs(20));
    eprintln!(
        "CLUSTER: {test}: every node published its divergent clients and learned the \
         others' {shared:.2?} after the rings moved back"
    );
    up.check_kept("after the recovery, before any cut");
    let cut = backup_with_most(&up, &div);
    let started = [0, 1, 2];
    let heir = next_master(&up.lab, &started, cut);
    lose(&mut up, &started, cut, heir);
    up.finish();
}
