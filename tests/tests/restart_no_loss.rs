//! Restart and upgrade without loss (docs/restart-and-upgrade.md): the data path is pinned, so the
//! daemon can die and come back — or be replaced by one running a different program — while
//! clients keep sending, and not a single packet is lost nor a single client moved.
//!
//! `kill_9_and_upgrade_lose_no_packet_and_move_no_client` builds the standard lab under the
//! `ikr<pid>` prefix with a config that leaves the data path attached on exit
//! (`detach_on_exit: false`), and from 50 client addresses sends 1,000 datagrams a second
//! (IKE 500 and NAT-T 4500 alternately) to the VIP, each answered by the backend's responder.
//! Meanwhile:
//!
//! 1. `kill -9` the daemon; XDP stays attached (same program id), the data path forwards
//!    alone for a second; a new daemon starts over the pins and keeps the running program
//!    (its fingerprint is unchanged): same program id afterwards.
//! 2. SIGTERM the daemon; start one whose config changes a load-time global
//!    (`persistence_timeout` 30m → 31m, so `PERSIST_TIMEOUT_TICKS` differs): it loads the new
//!    program and swaps it in with `BPF_LINK_UPDATE` — a new program id on both interfaces,
//!    never a moment without one.
//! 3. `kill -9` again; start one whose maps cannot be reused (`maglev_table_size` 65537 →
//!    65521 and `persistence_entries` 65536 → 131072): it builds a new map set, copies the
//!    persistence entries, swaps the program in, and commits the new maps — the clients stay
//!    on their backends although the Maglev table itself changed.
//!
//! Finally `lb-ctl daemon --unload` (daemon stopped) detaches both interfaces and removes
//! the pins.
//!
//! Every datagram must be answered (a reply is awaited up to 2 s after the last one), every
//! client must be answered by one backend throughout, and the counts are printed. Root only;
//! otherwise the test says why and returns.

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
    self, responder::Answer, Lab, LabSpec, UdpProbe, XdpAttachment, BACKEND_PORTS, GW_EXT, GW_INT,
    VIP,
};

/// Client addresses sending at once.
const CLIENTS: usize = 50;
/// Datagrams per second over all clients.
const RATE: u64 = 1000;

/// The rate this run sends at: [`RATE`], divided by `$IKELB_TEST_TIME_SCALE` on an emulated
/// kernel of the matrix (a guest too slow to answer 1000/s drops datagrams in socket buffers,
/// not in ikelb). The claim is the same at any rate: none is lost.
fn rate() -> u64 {
    let slow = lab::patience(Duration::from_secs(1)).as_secs().max(1);
    RATE / slow
}
/// How long a reply may take before its datagram counts as lost.
const REPLY_GRACE: Duration = Duration::from_secs(2);

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

/// Sends `RATE` datagrams a second round-robin from `clients` until `stop`, then waits
/// [`REPLY_GRACE`] for the last answers. Runs in the client namespace.
fn send_until(netns: String, clients: Vec<Ipv4Addr>, stop: Arc<AtomicBool>) -> Tally {
    enter_netns(&netns);
    let socks: Vec<UdpSocket> = clients
        .iter()
        .map(|&c| {
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
    let period = Duration::from_nanos(1_000_000_000 / rate());
    let mut next_send = start;
    let mut stopped_at: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(now);
        }
        match stopped_at {
            Some(t) if outstanding.is_empty() || now - t > lab::patience(REPLY_GRACE) => break,
            Some(_) => {}
            None => {
                while next_send <= now {
                    let seq = tally.sent;
                    let i = (seq % clients.len() as u64) as usize;
                    let port = BACKEND_PORTS[(seq / clients.len() as u64 % 2) as usize];
                    let mut payload = format!("r{seq} ").into_bytes();
                    payload.resize(120, b'x');
                    socks[i]
                        .send_to(&payload, SocketAddrV4::new(VIP, port))
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
                let from_vip = matches!(from, SocketAddr::V4(a) if *a.ip() == VIP);
                if !from_vip || echo.seen != IpAddr::V4(clients[i]) {
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
        .map(|(&c, b)| (c, b))
        .collect();
    tally
}

/// Program ids attached to ext and int (native mode), panicking if either has none.
fn prog_ids(lab: &Lab) -> (u64, u64) {
    let get = |ifname| {
        let a: XdpAttachment = lab
            .gateway
            .xdp(ifname)
            .expect("ip link")
            .unwrap_or_else(|| panic!("no XDP program on {ifname}"));
        assert_eq!(a.mode, XdpAttachment::MODE_NATIVE, "{ifname}: {a:?}");
        a.prog_id
    };
    (get(GW_EXT), get(GW_INT))
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
    eprintln!("restart: daemon ended by signal {signal}: {status}");
}

#[test]
fn kill_9_and_upgrade_lose_no_packet_and_move_no_client() {
    if skip_unless_root("kill_9_and_upgrade_lose_no_packet_and_move_no_client") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'r',
        clients: CLIENTS,
        backends: 3,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let config = lab
        .daemon_config()
        .replace("detach_on_exit: true", "detach_on_exit: false")
        + "maglev_table_size: 65537\npersistence_entries: 65536\n";
    assert!(config.contains("detach_on_exit: false"), "{config}");
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon");
    wait_log(&mut lab, "ikelb running", 1);
    // Every client answered once before the clock starts.
    let clients = lab.clients.clone();
    lab.client_ns
        .run(|| {
            for &c in &clients {
                let probe = UdpProbe::bind(c).unwrap();
                let r = probe
                    .ask(
                        SocketAddrV4::new(VIP, 500),
                        64,
                        20,
                        Duration::from_millis(200),
                    )
                    .unwrap();
                assert!(r.is_some(), "{c} got no answer through the VIP");
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

    // 1. kill -9: the pinned link keeps the program attached; the next daemon keeps it.
    let before = prog_ids(&lab);
    kill_daemon(&mut lab, libc::SIGKILL);
    let killed_at = t0.elapsed();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        prog_ids(&lab),
        before,
        "the program changed while no daemon ran"
    );
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("restart lb-ctl daemon");
    wait_log(&mut lab, "ikelb running", 2);
    let restarted_at = t0.elapsed();
    wait_log(&mut lab, "XDP program unchanged", 1);
    assert_eq!(
        prog_ids(&lab),
        before,
        "same build and config: the program is kept"
    );
    thread::sleep(Duration::from_secs(2));

    // 2. An upgrade: another load-time global → another program, swapped in atomically.
    kill_daemon(&mut lab, libc::SIGTERM);
    assert_eq!(
        prog_ids(&lab),
        before,
        "detach_on_exit: false leaves the data path attached"
    );
    let upgraded = config.replace("persistence_timeout: 30m", "persistence_timeout: 31m");
    assert_ne!(upgraded, config);
    lab.start_daemon_with_config(&lb_ctl, &upgraded)
        .expect("start the upgraded daemon");
    wait_log(&mut lab, "ikelb running", 3);
    let upgraded_at = t0.elapsed();
    wait_log(&mut lab, "XDP program replaced atomically", 2);
    let after = prog_ids(&lab);
    assert!(
        after.0 != before.0 && after.1 != before.1,
        "a new program on both interfaces: {before:?} → {after:?}"
    );
    thread::sleep(Duration::from_secs(2));

    // 3. Maps that do not fit: migrated under traffic.
    kill_daemon(&mut lab, libc::SIGKILL);
    let migrated_config = upgraded
        .replace("maglev_table_size: 65537", "maglev_table_size: 65521")
        .replace("persistence_entries: 65536", "persistence_entries: 131072");
    lab.start_daemon_with_config(&lb_ctl, &migrated_config)
        .expect("start the daemon with other map sizes");
    wait_log(&mut lab, "ikelb running", 4);
    let migrated_at = t0.elapsed();
    wait_log(&mut lab, "map migration committed", 1);
    let out = lab.daemon().expect("daemon").output();
    let copied = out
        .lines()
        .find(|l| l.contains("map migration committed"))
        .unwrap_or_default()
        .to_string();
    let migrated = prog_ids(&lab);
    assert!(
        migrated.0 != after.0 && migrated.1 != after.1,
        "the migrated maps come with a new program: {after:?} → {migrated:?}"
    );
    thread::sleep(Duration::from_secs(2));

    stop.store(true, Ordering::Relaxed);
    let tally = sender.join().expect("sender thread");
    eprintln!(
        "restart: {} datagrams sent at {}/s from {CLIENTS} clients over {:.1} s, {} answered, \
         {} lost, {} wrong, {} clients moved; per backend {:?}; kill -9 at {:.1} s, restarted \
         daemon running at {:.1} s, upgraded daemon (program {:?} → {:?}) at {:.1} s, \
         migrated maps (program {:?}) at {:.1} s: {copied}",
        tally.sent,
        rate(),
        t0.elapsed().as_secs_f64(),
        tally.answered,
        tally.lost.len(),
        tally.wrong,
        tally.moved.len(),
        tally.per_backend,
        killed_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        before,
        after,
        upgraded_at.as_secs_f64(),
        migrated,
        migrated_at.as_secs_f64(),
    );
    // What each daemon found and did, for the record.
    let out = lab.daemon().expect("daemon").output();
    for line in out.lines().filter(|l| {
        [
            "pinned",
            "adopted",
            "XDP program",
            "XDP attached",
            "migration",
            "ikelb running",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!(
            "restart: daemon: {}",
            line.split_once("  ").map_or(line, |x| x.1)
        );
    }
    let log = lab.daemon_output_tail(60);
    assert!(
        tally.sent >= 8 * rate(),
        "the sender fell behind: {tally:?}"
    );
    assert!(
        tally.lost.is_empty(),
        "{} datagrams lost (seq, s): {:?}\n{log}",
        tally.lost.len(),
        &tally.lost[..tally.lost.len().min(20)]
    );
    assert_eq!(tally.answered, tally.sent);
    assert_eq!(
        tally.wrong, 0,
        "answers not from the VIP or not to the client's address"
    );
    assert!(tally.moved.is_empty(), "clients moved: {:?}", tally.moved);
    assert!(
        tally.per_backend.len() == 3,
        "every backend served clients: {:?}",
        tally.per_backend
    );

    // Taking ikelb off for good: stop the daemon (the data path stays), then --unload.
    kill_daemon(&mut lab, libc::SIGTERM);
    prog_ids(&lab);
    let config_file = lab.dir().join("ikelb.yaml");
    let out = lab
        .gateway
        .exec(
            lb_ctl.to_str().unwrap(),
            &[
                "daemon",
                "--config",
                config_file.to_str().unwrap(),
                "--unload",
            ],
        )
        .expect("lb-ctl daemon --unload");
    eprintln!("restart: --unload: {}", out.trim());
    for ifname in [GW_EXT, GW_INT] {
        assert_eq!(
            lab.gateway.xdp(ifname).unwrap(),
            None,
            "XDP still on {ifname} after --unload"
        );
    }
    let pin_dir = lab.dir().join("bpffs/default");
    assert!(!pin_dir.exists(), "{} still there", pin_dir.display());
}
