//! The control plane under socket exhaustion (docs/operations.md, "Limits and faults").
//! Root only: without root each test says why and returns.
//!
//! * `daemon_answers_everyone_while_thousands_of_idle_connections_are_held`: the standard
//!   lab with the daemon started under `RLIMIT_NOFILE` 1024 soft and hard (what a unit
//!   without `LimitNOFILE=` gave it; the daemon raises soft to hard, so hard is 1024 too).
//!   The test holds 2,048 idle TCP connections to `/metrics` and 2,048 idle connections to
//!   the control socket — four times the descriptors the daemon has — and then, while
//!   holding them: every lab client is answered through the data path, every backend is
//!   still `up` and `active` in `lb-ctl backend list --json`, `lb-ctl status` answers, a
//!   `/metrics` scrape answers 200 and shows the evictions, the daemon stays below its
//!   descriptor limit and did not flood its log with accept errors.
//! * `out_of_descriptors_the_daemon_keeps_its_backends_and_answers`: the same with a limit
//!   of 128, below what the connection slots could take: the daemon runs out of
//!   descriptors for real. Its `ip` look-ups then fail (`EMFILE`): every backend keeps its
//!   next hop and stays up, the fault is logged once and counted; failed accepts are
//!   counted, not logged each; `lb-ctl` and a scrape are still answered (an idle connection
//!   gives its descriptor up).
//! * `a_peer_that_is_not_root_is_refused_by_its_credentials`: with the socket's mode opened
//!   up so only `SO_PEERCRED` stands in the way, `lb-ctl status` as uid 65534 exits 1 with
//!   one line naming the uid.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ikelb_tests::lab::{
    self,
    control::{self, Clients},
    Lab, LabSpec,
};
use serde_json::Value;

/// Idle connections held to each listener.
const HELD: usize = 2048;
/// The daemon's descriptor limit, soft and hard.
const DAEMON_NOFILE: u64 = 1024;
/// Where the lab's daemon serves `/metrics` (gateway namespace).
const METRICS: &str = "127.0.0.1:9435";
const WAIT: Duration = Duration::from_millis(300);

fn skip_unless_root(test: &str) -> bool {
    if lab::is_root() {
        return false;
    }
    eprintln!(
        "SKIP {test}: needs root (network namespaces, veth, XDP); run `cargo xtask test` as root"
    );
    true
}

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

fn or_log<T>(lab: &Lab, r: Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", lab.daemon_output_tail(40)))
}

/// This process needs descriptors for 4,096 held connections and the lab's clients.
fn raise_own_nofile(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct we pass.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            lim.rlim_max = lim.rlim_max.max(want);
            ensure!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0,
                "setrlimit NOFILE {want}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// A wrapper that starts `lb-ctl` with soft and hard `RLIMIT_NOFILE` at `nofile`.
fn limited_lb_ctl(dir: &Path, lb_ctl: &Path, nofile: u64) -> Result<PathBuf> {
    let path = dir.join("lb-ctl-nofile");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n# ikelb-tests control_bounds: the daemon as under a unit without LimitNOFILE=\n\
             ulimit -S -n {nofile} && ulimit -H -n {nofile} || exit 97\nexec '{}' \"$@\"\n",
            lb_ctl.display()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Soft and hard "Max open files" of process `pid`.
fn nofile_of(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no Max open files line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    ensure!(v.len() >= 2, "{line}");
    Ok((v[0], v[1]))
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Whether the daemon has closed `s` already (without waiting).
fn closed_tcp(s: &TcpStream) -> bool {
    s.set_nonblocking(true).ok();
    let mut b = [0u8; 512];
    let closed = match (&*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).ok();
    closed
}

fn closed_unix(s: &UnixStream) -> bool {
    s.set_nonblocking(true).ok();
    let mut b = [0u8; 512];
    let closed = match (&*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).ok();
    closed
}

/// `GET /metrics` on the gateway: the body of a 200 answer.
fn scrape(lab: &Lab) -> Result<String> {
    lab.gateway.run(|| -> Result<String> {
        let addr: SocketAddr = METRICS.parse()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {METRICS}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
        ensure!(head.contains(" 200"), "GET /metrics: {head}");
        Ok(body.to_string())
    })?
}

/// Every backend `up` and `active`.
fn all_up(list: &[Value]) -> bool {
    !list.is_empty()
        && list
            .iter()
            .all(|b| b["health"] == "up" && b["state"] == "active")
}

#[test]
fn daemon_answers_everyone_while_thousands_of_idle_connections_are_held() {
    const TEST: &str = "daemon_answers_everyone_while_thousands_of_idle_connections_are_held";
    if skip_unless_root(TEST) {
        return;
    }
    raise_own_nofile(3 * HELD as u64 + 2048).expect("raise this test's RLIMIT_NOFILE");
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'b',
        clients: 250,
        backends: 3,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let limited = limited_lb_ctl(lab.dir(), &lb_ctl, DAEMON_NOFILE).expect("wrapper");
    let config = lab.daemon_config();
    lab.start_daemon_with_config(&limited, &config)
        .expect("start the daemon");
    let pid = lab.daemon().expect("started").pid();
    let (soft, hard) = or_log(&lab, nofile_of(pid), "daemon limits");
    assert_eq!(
        (soft, hard),
        (DAEMON_NOFILE, DAEMON_NOFILE),
        "the daemon runs with RLIMIT_NOFILE {DAEMON_NOFILE}"
    );
    or_log(
        &lab,
        control::wait_backends(&lab, "every backend up", Duration::from_secs(20), all_up).map(drop),
        "backends up",
    );
    let log = lab.daemon().expect("started").output();
    assert!(
        log.contains(&format!(
            "file descriptor limit {DAEMON_NOFILE} (RLIMIT_NOFILE, was {DAEMON_NOFILE})"
        )),
        "the daemon logs its descriptor limit:\n{log}"
    );
    let clients = Clients::bind(&lab, &lab.clients, 500).expect("client sockets");
    let before = or_log(&lab, clients.all_answered(5, WAIT), "clients before");
    let fds_before = open_fds(pid).expect("daemon fds");

    // Hold the connections: /metrics first (from inside the gateway namespace), then the
    // control socket (a path: reachable from any namespace).
    let t0 = Instant::now();
    let tcp = or_log(&lab, hold_metrics(&lab, HELD), "hold /metrics connections");
    let unix = or_log(&lab, hold_control(&lab, HELD), "hold control connections");
    let held_in = t0.elapsed();

    // While they are held: the data path, the control socket, the metrics.
    let t1 = Instant::now();
    let during = or_log(&lab, clients.all_answered(5, WAIT), "clients while held");
    let moved: Vec<_> = before
        .iter()
        .filter(|(c, b)| during.get(c) != Some(b))
        .collect();
    assert!(moved.is_empty(), "clients changed backend: {moved:?}");
    let list = or_log(
        &lab,
        control::backends(&lab, &lb_ctl),
        "backend list while held",
    );
    assert!(all_up(&list), "every backend up and active: {list:?}");
    assert_eq!(list.len(), lab.backends.len());
    let status = or_log(&lab, lab.lb_ctl(&lb_ctl, &["status"]), "status while held");
    assert!(status.starts_with("ikelb "), "{status}");
    assert!(status.contains("3 of 3 backends active"), "{status}");
    let body = or_log(&lab, scrape(&lab), "scrape while held");
    let evicted = |listener: &str| {
        lab::metrics::sum(
            &body,
            "ikelb_connections_evicted_total",
            &[("listener", listener)],
        )
    };
    assert_eq!(
        lab::metrics::sum(&body, "ikelb_backend_up", &[]),
        3.0,
        "ikelb_backend_up"
    );
    // Each listener has 64 slots: all but the last 64 held connections (and the scrape's
    // and the commands' room) were evicted.
    assert!(
        evicted("metrics") >= (HELD - 64) as f64,
        "metrics evictions {}",
        evicted("metrics")
    );
    assert!(
        evicted("control") >= (HELD - 64) as f64,
        "control evictions {}",
        evicted("control")
    );
    let answered_in = t1.elapsed();
    let fds_during = open_fds(pid).expect("daemon fds");
    assert!(
        (fds_during as u64) < DAEMON_NOFILE - 64,
        "the daemon keeps descriptors to spare: {fds_during} open of {DAEMON_NOFILE}"
    );
    let closed_tcp_n = tcp.iter().filter(|s| closed_tcp(s)).count();
    let closed_unix_n = unix.iter().filter(|s| closed_unix(s)).count();
    assert!(
        closed_tcp_n >= HELD - 64,
        "metrics connections closed by the daemon: {closed_tcp_n}"
    );
    assert!(
        closed_unix_n >= HELD - 64,
        "control connections closed by the daemon: {closed_unix_n}"
    );
    let log = lab.daemon().expect("started").output();
    let accept_lines = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        accept_lines <= 2,
        "accept errors logged once per burst:\n{log}"
    );
    eprintln!(
        "{TEST}: held {HELD} + {HELD} connections in {held_in:?}; daemon fds {fds_before} before, \
         {fds_during} while held (limit {DAEMON_NOFILE}); closed by the daemon: {closed_tcp_n} metrics, \
         {closed_unix_n} control; evicted (metrics/control) {}/{}; clients, backend list, status \
         and a scrape answered in {answered_in:?}",
        evicted("metrics"),
        evicted("control")
    );
    drop(tcp);
    drop(unix);
    let status = lab.stop_daemon().expect("stop the daemon");
    assert!(
        status.success(),
        "daemon exit {status}\n{}",
        lab.daemon_output_tail(40)
    );
}

/// Opens `n` connections to `/metrics` in the gateway namespace.
fn hold_metrics(lab: &Lab, n: usize) -> Result<Vec<TcpStream>> {
    lab.gateway
        .run(|| -> Result<Vec<TcpStream>> {
            let addr: SocketAddr = METRICS.parse()?;
            (0..n)
                .map(|i| {
                    TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                        .with_context(|| format!("metrics connection {i} of {n}"))
                })
                .collect()
        })
        .and_then(|r| r)
}

/// Opens `n` connections to the control socket.
fn hold_control(lab: &Lab, n: usize) -> Result<Vec<UnixStream>> {
    let sock = lab.control_socket();
    (0..n)
        .map(|i| {
            UnixStream::connect(&sock).with_context(|| format!("control connection {i} of {n}"))
        })
        .collect()
}

#[test]
fn out_of_descriptors_the_daemon_keeps_its_backends_and_answers() {
    const TEST: &str = "out_of_descriptors_the_daemon_keeps_its_backends_and_answers";
    const NOFILE: u64 = 128;
    const HOLD: usize = 512;
    if skip_unless_root(TEST) {
        return;
    }
    raise_own_nofile(2 * HOLD as u64 + 2048).expect("raise this test's RLIMIT_NOFILE");
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'b',
        clients: 100,
        backends: 3,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let limited = limited_lb_ctl(lab.dir(), &lb_ctl, NOFILE).expect("wrapper");
    let config = lab.daemon_config();
    lab.start_daemon_with_config(&limited, &config)
        .expect("start the daemon");
    let pid = lab.daemon().expect("started").pid();
    assert_eq!(
        or_log(&lab, nofile_of(pid), "daemon limits"),
        (NOFILE, NOFILE)
    );
    or_log(
        &lab,
        control::wait_backends(&lab, "every backend up", Duration::from_secs(20), all_up).map(drop),
        "backends up",
    );
    let clients = Clients::bind(&lab, &lab.clients, 500).expect("client sockets");
    let before = or_log(&lab, clients.all_answered(5, WAIT), "clients before");
    let fds_before = open_fds(pid).expect("daemon fds");

    // 2 × 64 slots do not fit in 128 descriptors: the daemon runs out.
    let t0 = Instant::now();
    let tcp = or_log(&lab, hold_metrics(&lab, HOLD), "hold /metrics connections");
    let unix = or_log(&lab, hold_control(&lab, HOLD), "hold control connections");
    let held_in = t0.elapsed();
    let fds_full = open_fds(pid).expect("daemon fds");
    // The next refresh of next hops (every 5 s) cannot start `ip`.
    let fault_line = "next-hop look-up failed on the gateway";
    let waited = lab::wait_for(
        "the daemon to log a next-hop fault",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            Ok(lab
                .daemon()
                .expect("started")
                .output()
                .contains(fault_line)
                .then_some(()))
        },
    );
    or_log(&lab, waited, "next-hop fault while out of descriptors");
    let t1 = Instant::now();
    let during = or_log(
        &lab,
        clients.all_answered(5, WAIT),
        "clients while out of fds",
    );
    let moved: Vec<_> = before
        .iter()
        .filter(|(c, b)| during.get(c) != Some(b))
        .collect();
    assert!(moved.is_empty(), "clients changed backend: {moved:?}");
    let list = or_log(
        &lab,
        control::backends(&lab, &lb_ctl),
        "backend list while out of fds",
    );
    assert!(
        all_up(&list),
        "every backend keeps its next hop and stays up: {list:?}"
    );
    let status = or_log(
        &lab,
        lab.lb_ctl(&lb_ctl, &["status"]),
        "status while out of fds",
    );
    assert!(status.contains("3 of 3 backends active"), "{status}");
    let body = or_log(&lab, scrape(&lab), "scrape while out of fds");
    let answered_in = t1.elapsed();
    let faults = lab::metrics::sum(&body, "ikelb_next_hop_faults_total", &[]);
    let accept_errors = lab::metrics::sum(&body, "ikelb_accept_errors_total", &[]);
    assert!(faults >= 1.0, "next-hop faults counted: {faults}");
    assert!(
        accept_errors >= 1.0,
        "accept errors counted: {accept_errors}"
    );
    assert_eq!(lab::metrics::sum(&body, "ikelb_backend_up", &[]), 3.0);
    let log = lab.daemon().expect("started").output();
    let accept_warnings = log.lines().filter(|l| l.contains("accept failed")).count();
    let fault_warnings = log.lines().filter(|l| l.contains(fault_line)).count();
    // One per burst: a burst per listener for the flood, maybe another for the commands.
    assert!(
        accept_warnings <= 4,
        "{accept_warnings} accept warnings for {accept_errors} failures:\n{log}"
    );
    assert!(
        fault_warnings <= 2,
        "{fault_warnings} fault warnings:\n{log}"
    );
    drop(tcp);
    drop(unix);
    let after = or_log(&lab, lab.lb_ctl(&lb_ctl, &["status"]), "status after");
    assert!(after.contains("3 of 3 backends active"), "{after}");
    eprintln!(
        "{TEST}: limit {NOFILE}; daemon fds {fds_before} before, {fds_full} after {HOLD} + {HOLD} \
         connections (held in {held_in:?}); {accept_errors} failed accepts logged in \
         {accept_warnings} lines; {faults} next-hop faults logged in {fault_warnings} lines; \
         clients, backend list, status and a scrape answered in {answered_in:?}"
    );
    let status = lab.stop_daemon().expect("stop the daemon");
    assert!(
        status.success(),
        "daemon exit {status}\n{}",
        lab.daemon_output_tail(40)
    );
}

#[test]
fn a_peer_that_is_not_root_is_refused_by_its_credentials() {
    const TEST: &str = "a_peer_that_is_not_root_is_refused_by_its_credentials";
    if skip_unless_root(TEST) {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'b',
        clients: 1,
        backends: 1,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    lab.start_daemon(&lb_ctl).expect("start the daemon");
    let sock = lab.control_socket();
    // The mode would refuse uid 65534 before the daemon sees it: open it up so the
    // credential check is what refuses. The lab directory is 0755 already.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let reachable = lb_ctl
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if !reachable {
        eprintln!(
            "SKIP {TEST}: uid 65534 cannot reach {} (a directory on the way is not searchable by others)",
            lb_ctl.display()
        );
        return;
    }
    let out = Command::new(&lb_ctl)
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .env("NO_COLOR", "1")
        // std drops the supplementary groups when a root parent sets the uid.
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run lb-ctl as uid 65534");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
    assert_eq!(
        stderr, "lb-ctl: uid 65534 may not use this socket (only root and uid 0)\n",
        "one line naming the uid"
    );
    // Root is still served.
    let status = or_log(&lab, lab.lb_ctl(&lb_ctl, &["status"]), "status as root");
    assert!(status.starts_with("ikelb "), "{status}");
}
