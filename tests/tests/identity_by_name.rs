//! Identity by name under traffic (docs/restart-and-upgrade.md, "Identity: services and
//! ports by name"): service ids and interface ports follow names, so editing the order of
//! `virtual_servers` or `interfaces` and restarting moves no client and loses no reply.
//!
//! `reordering_and_inserting_moves_no_client` builds the standard lab under the `iki<pid>`
//! prefix with five backends and two virtual servers on the standard topology: `one`
//! (VIP 203.0.113.10, backends b1 b2) and `two` (VIP 203.0.113.20, b3 b4); interfaces with
//! their roles spelled out (a plain list gives roles by position). 40 clients, half on each
//! VIP, send 1,000 datagrams a second (IKE 500 and NAT-T 4500), each answered by a backend's
//! responder, while the daemon (`detach_on_exit: false`) is stopped and restarted with:
//!
//! 1. the two virtual servers swapped (`two`, `one`): same map sizes, maps reused;
//! 2. a third, `three` (VIP 203.0.113.30, b5), inserted in front: it takes service id 2, the
//!    maps indexed by service id grow and are migrated with their persistence entries;
//! 3. `interfaces` swapped (`int` first): each keeps its port;
//! 4. `state_dir/identity.json` deleted and the order changed once more (`two`, `one`,
//!    `three`): the pinned `SERVICES` and `IFINDEX_PORTS` give every number back.
//!
//! With `IKELB_LB_CTL` pointing at an lb-ctl from before identity by name, the test fails:
//! thousands of datagrams lost, answers from the wrong VIP (docs/restart-and-upgrade.md).
//!
//! Every datagram must be answered, from the VIP it was sent to and showing the client's own
//! address, every client by one backend throughout; the daemon must log the ids recovered
//! from the pins; `state_dir/identity.json` must hold
//! `one/ipv4` 0, `two/ipv4` 1, `three/ipv4` 2, `ext` 0, `int` 1. Root only; otherwise the test
//! says why and returns.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ikelb_tests::lab::{
    self, responder::Answer, Lab, LabSpec, UdpProbe, BACKEND_PORTS, GW_EXT, GW_INT, VIP,
};

/// Client addresses sending at once (half to each of the first two VIPs).
const CLIENTS: usize = 40;
/// Datagrams per second over all clients.
const RATE: u64 = 1000;
/// How long a reply may take before its datagram counts as lost.
const REPLY_GRACE: Duration = Duration::from_secs(2);
const VIP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const VIP3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);

fn skip_unless_root(test: &str) -> bool {
    if lab::is_root() {
        return false;
    }
    eprintln!(
        "SKIP {test}: needs root (network namespaces, veth, XDP, bpffs); run `cargo xtask test` \
         as root"
    );
    true
}

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

/// What the sender saw.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    answered: u64,
    /// Answers not from the VIP or not showing the client's own address.
    wrong: u64,
    /// Clients answered by more than one backend.
    moved: Vec<(Ipv4Addr, Vec<String>)>,
    /// Datagrams never answered: (sequence number, seconds since start).
    lost: Vec<(u64, f64)>,
    per_backend: BTreeMap<String, u64>,
}

/// Joins the network namespace `name` (this thread only).
fn enter_netns(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).expect("open the namespace handle");
    // SAFETY: setns on a valid fd; CLONE_NEWNET moves only the calling thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
}

/// Sends `RATE` datagrams a second round-robin from `clients` (address, the VIP it talks to) until `stop`, then waits
/// [`REPLY_GRACE`] for the last answers. Runs in the client namespace.
fn send_until(netns: String, clients: Vec<(Ipv4Addr, Ipv4Addr)>, stop: Arc<AtomicBool>) -> Tally {
    enter_netns(&netns);
    let socks: Vec<UdpSocket> = clients
        .iter()
        .map(|&(c, _)| {
            let s = UdpSocket::bind((c, 0)).expect("bind client");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut tally = Tally::default();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); clients.len()];
    // seq → (client index, sent at)
    let mut outstanding: BTreeMap<u64, (usize, Instant)> = BTreeMap::new();
    let start = Instant::now();
    let period = Duration::from_nanos(1_000_000_000 / RATE);
    let mut next_send = start;
    let mut stopped_at: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(now);
        }
        match stopped_at {
            Some(t) if outstanding.is_empty() || now - t > REPLY_GRACE => break,
            Some(_) => {}
            None => {
                while next_send <= now {
                    let seq = tally.sent;
                    let i = (seq % clients.len() as u64) as usize;
                    let port = BACKEND_PORTS[(seq / clients.len() as u64 % 2) as usize];
                    let mut payload = format!("r{seq} ").into_bytes();
                    payload.resize(120, b'x');
                    socks[i]
                        .send_to(&payload, SocketAddrV4::new(clients[i].1, port))
                        .expect("send");
                    outstanding.insert(seq, (i, now));
                    tally.sent += 1;
                    next_send += period;
                }
            }
        }
        // Wait for answers until the next send is due.
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(200));
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().max(1) as libc::c_int,
            )
        };
        for (i, s) in socks.iter().enumerate() {
            loop {
                let (n, from) = match s.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                    Err(e) => panic!("recv: {e}"),
                };
                let Ok(Answer::Echo(echo)) = Answer::parse(&String::from_utf8_lossy(&buf[..n]))
                else {
                    continue;
                };
                let Some(seq) = echo
                    .tag
                    .strip_prefix('r')
                    .and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                if outstanding.remove(&seq).is_none() {
                    continue; // a duplicate
                }
                tally.answered += 1;
                let from_vip = matches!(from, SocketAddr::V4(a) if *a.ip() == clients[i].1);
                if !from_vip || echo.seen != IpAddr::V4(clients[i].0) {
                    tally.wrong += 1;
                }
                *tally.per_backend.entry(echo.backend.clone()).or_default() += 1;
                if !seen[i].contains(&echo.backend) {
                    seen[i].push(echo.backend);
                }
            }
        }
    }
    tally.lost = outstanding
        .iter()
        .map(|(&seq, &(_, at))| (seq, (at - start).as_secs_f64()))
        .collect();
    tally.moved = clients
        .iter()
        .zip(seen)
        .filter(|(_, b)| b.len() > 1)
        .map(|(&(c, _), b)| (c, b))
        .collect();
    tally
}

/// Waits until the daemon log holds `n` occurrences of `needle`.
fn wait_log(lab: &mut Lab, needle: &str, n: usize) {
    let waited = lab::wait_for(
        &format!("{n}× {needle:?} in the daemon log"),
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let d = lab.daemon().expect("daemon started");
            if let Some(status) = d.exit_status() {
                anyhow::bail!("daemon exited ({status}):\n{}", d.output_tail(40));
            }
            Ok((d.output().matches(needle).count() >= n).then_some(()))
        },
    );
    if let Err(e) = waited {
        panic!("{e:#}\n{}", lab.daemon_output_tail(40));
    }
}

fn kill_daemon(lab: &mut Lab, signal: libc::c_int) {
    let d = lab.daemon().expect("daemon started");
    // SAFETY: kill(2) on our own unreaped child (`ip netns exec` execs lb-ctl in place).
    assert_eq!(unsafe { libc::kill(d.pid() as libc::pid_t, signal) }, 0);
    let status = lab::wait_for(
        "the daemon to exit",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || Ok(d.exit_status()),
    )
    .expect("daemon exit");
    eprintln!("identity: daemon ended by signal {signal}: {status}");
}

/// The lab's config with `servers` (in this order) and the interfaces in this order (roles
/// spelled out), leaving the data path attached on exit.
fn config(lab: &Lab, servers: &[&str], ifaces: [&str; 2]) -> String {
    let base = lab
        .daemon_config()
        .replace("detach_on_exit: true", "detach_on_exit: false");
    let b = |i: usize| lab.backends[i].addr;
    let mut vs = String::from("virtual_servers:\n");
    for s in servers {
        let (vip, backends) = match *s {
            "one" => (VIP, vec![b(0), b(1)]),
            "two" => (VIP2, vec![b(2), b(3)]),
            "three" => (VIP3, vec![b(4)]),
            _ => unreachable!(),
        };
        vs.push_str(&format!(
            "  - name: {s}\n    vip: {vip}\n    ports: [{}, {}]\n    backends:\n",
            BACKEND_PORTS[0], BACKEND_PORTS[1]
        ));
        for a in backends {
            vs.push_str(&format!("      - address: {a}\n"));
        }
    }
    let role = |n: &str| if n == GW_EXT { "clients" } else { "backends" };
    let interfaces = format!(
        "interfaces: [{{name: {}, role: {}}}, {{name: {}, role: {}}}]\n",
        ifaces[0],
        role(ifaces[0]),
        ifaces[1],
        role(ifaces[1])
    );
    // Replace the lab's interfaces line and its virtual_servers block.
    let mut out = String::new();
    let mut in_vs = false;
    for line in base.lines() {
        if line.starts_with("interfaces:") {
            out.push_str(&interfaces);
            continue;
        }
        if line.starts_with("virtual_servers:") {
            in_vs = true;
            out.push_str(&vs);
            continue;
        }
        if in_vs && line.starts_with(' ') {
            continue;
        }
        in_vs = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn reordering_and_inserting_moves_no_client() {
    if skip_unless_root("reordering_and_inserting_moves_no_client") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'i',
        clients: CLIENTS,
        backends: 5,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let first = config(&lab, &["one", "two"], [GW_EXT, GW_INT]);
    lab.start_daemon_with_config(&lb_ctl, &first)
        .expect("start lb-ctl daemon");
    wait_log(&mut lab, "ikelb running", 1);
    let clients: Vec<(Ipv4Addr, Ipv4Addr)> = lab
        .clients
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, if i % 2 == 0 { VIP } else { VIP2 }))
        .collect();
    // Every client answered once before the clock starts.
    let warm = clients.clone();
    lab.client_ns
        .run(|| {
            for &(c, vip) in &warm {
                let probe = UdpProbe::bind(c).unwrap();
                let r = probe
                    .ask(
                        SocketAddrV4::new(vip, 500),
                        64,
                        20,
                        Duration::from_millis(200),
                    )
                    .unwrap();
                assert!(r.is_some(), "{c} got no answer through {vip}");
            }
        })
        .expect("client namespace");

    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (ns, clients, stop) = (
            lab.client_ns.name().to_string(),
            clients.clone(),
            Arc::clone(&stop),
        );
        thread::spawn(move || send_until(ns, clients, stop))
    };
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(2));

    let identity_file = lab.dir().join("state/identity.json");
    let steps: [(&str, Vec<&str>, [&str; 2], usize); 4] = [
        (
            "virtual servers swapped",
            vec!["two", "one"],
            [GW_EXT, GW_INT],
            2,
        ),
        (
            "a third inserted in front",
            vec!["three", "two", "one"],
            [GW_EXT, GW_INT],
            3,
        ),
        (
            "interfaces swapped",
            vec!["three", "two", "one"],
            [GW_INT, GW_EXT],
            4,
        ),
        (
            "identity.json lost and the order changed again",
            vec!["two", "one", "three"],
            [GW_INT, GW_EXT],
            5,
        ),
    ];
    let mut at = Vec::new();
    for (what, servers, ifaces, n) in &steps {
        kill_daemon(&mut lab, libc::SIGTERM);
        if *n == 5 {
            // The pins alone give the identities back.
            match std::fs::remove_file(&identity_file) {
                Ok(()) => {}
                // A daemon without identity.json (IKELB_LB_CTL of an older build, the
                // negative control) wrote none; the assertions below say so.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => panic!("remove identity.json: {e}"),
            }
        }
        let text = config(&lab, servers, *ifaces);
        lab.start_daemon_with_config(&lb_ctl, &text)
            .unwrap_or_else(|e| panic!("{what}: start the daemon: {e:#}"));
        wait_log(&mut lab, "ikelb running", *n);
        at.push(format!("{what} at {:.1} s", t0.elapsed().as_secs_f64()));
        thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, Ordering::Relaxed);
    let tally = sender.join().expect("sender thread");
    eprintln!(
        "identity: {} datagrams sent at {RATE}/s from {CLIENTS} clients to 2 VIPs over {:.1} s, \
         {} answered, {} lost, {} wrong, {} clients moved; per backend {:?}; restarts: {}",
        tally.sent,
        t0.elapsed().as_secs_f64(),
        tally.answered,
        tally.lost.len(),
        tally.wrong,
        tally.moved.len(),
        tally.per_backend,
        at.join(", "),
    );
    let out = lab.daemon().expect("daemon").output();
    for line in out.lines().filter(|l| {
        ["identity:", "adopted", "migration", "ikelb running"]
            .iter()
            .any(|k| l.contains(k))
    }) {
        eprintln!(
            "identity: daemon: {}",
            line.split_once("  ").map_or(line, |x| x.1)
        );
    }
    let log = lab.daemon_output_tail(60);
    assert!(
        out.contains("identity: service three/ipv4: new, takes 2"),
        "the newcomer takes the next id:\n{log}"
    );
    assert!(
        out.contains("identity: service two/ipv4: 1 from the pinned maps")
            && out.contains("identity: interface int: 1 from the pinned maps"),
        "after identity.json was lost, the pins gave two/ipv4 its id 1 back:\n{log}"
    );
    let saved = std::fs::read_to_string(&identity_file).expect("state_dir/identity.json");
    let saved: serde_json::Value = serde_json::from_str(&saved).expect("identity.json is JSON");
    assert_eq!(
        saved,
        serde_json::json!({
            "version": 1,
            "services": {"one/ipv4": 0, "two/ipv4": 1, "three/ipv4": 2},
            "ports": {"ext": 0, "int": 1},
        }),
    );
    assert!(tally.sent >= 6 * RATE, "the sender fell behind: {tally:?}");
    assert!(
        tally.lost.is_empty(),
        "{} datagrams lost (seq, s): {:?}\n{log}",
        tally.lost.len(),
        &tally.lost[..tally.lost.len().min(20)]
    );
    assert_eq!(tally.answered, tally.sent);
    assert_eq!(
        tally.wrong, 0,
        "answers not from the VIP sent to or not to the client's address"
    );
    assert!(tally.moved.is_empty(), "clients moved: {:?}", tally.moved);
    assert_eq!(
        tally.per_backend.len(),
        4,
        "the four backends of one and two served clients: {:?}",
        tally.per_backend
    );
    kill_daemon(&mut lab, libc::SIGTERM);
}
