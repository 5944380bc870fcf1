//! Root-only smoke test: `lb-ctl daemon` under `ip netns exec` attaches XDP to a veth,
//! resolves a backend's MAC, and detaches on SIGTERM.
//!
//! Skips (saying why) when not root or when lb-ctl was built without its XDP object. Every
//! namespace and child process is owned by a guard, so a failure leaves nothing behind.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

const LB_CTL: &str = env!("CARGO_BIN_EXE_lb-ctl");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespace on drop (its veth ends go with it).
struct NetNs(String);

impl NetNs {
    fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        NetNs(name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Kills the child on drop if it is still running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The `xdp` object of `ip -j link show dev DEV` in namespace `ns`, if any.
fn xdp_of(ns: &str, dev: &str) -> Option<serde_json::Value> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", dev])
        .output()
        .unwrap();
    assert!(out.status.success());
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    links[0].get("xdp").cloned()
}

fn wait_for(log: &Mutex<String>, needle: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if log.lock().unwrap().contains(needle) {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn daemon_attaches_in_a_netns_and_detaches_on_sigterm() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: needs root (network namespaces, XDP attach); `cargo xtask test` runs it"
        );
        return;
    }
    if lb_ctl::EBPF_OBJECT.is_empty() {
        eprintln!("SKIPPED: lb-ctl was built with AYA_BUILD_SKIP=1 and carries no XDP object");
        return;
    }
    let pid = std::process::id();
    let lb = NetNs::new(format!("ikc-{pid}"));
    let be = NetNs::new(format!("ikc-{pid}-be"));
    ip(&[
        "-n", &lb.0, "link", "add", "lb0", "type", "veth", "peer", "name", "be0", "netns", &be.0,
    ]);
    ip(&["-n", &lb.0, "addr", "add", "10.99.0.1/24", "dev", "lb0"]);
    ip(&["-n", &be.0, "addr", "add", "10.99.0.2/24", "dev", "be0"]);
    ip(&["-n", &lb.0, "link", "set", "lb0", "up"]);
    // Loopback carries the daemon's /metrics listener (127.0.0.1:9435 by default).
    ip(&["-n", &lb.0, "link", "set", "lo", "up"]);
    ip(&["-n", &be.0, "link", "set", "be0", "up"]);

    let dir = std::env::temp_dir().join(format!("ikc-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ikelb.yaml");
    std::fs::write(
        &config,
        "interfaces: [lb0]\npersistence_entries: 4096\nmaglev_table_size: 251\nvirtual_servers:
  - name: smoke
    vip: 203.0.113.10
    backends:
      - address: 10.99.0.2
      - address: 10.99.0.3   # nobody there: stays unusable
",
    )
    .unwrap();

    let mut child = Command::new("ip")
        .args(["netns", "exec", &lb.0, LB_CTL, "daemon", "--detach-on-exit", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning lb-ctl daemon");
    let stderr = child.stderr.take().unwrap();
    let mut child = ChildGuard(child);
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let log = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };

    let ready = wait_for(&log, "ikelb running", Duration::from_secs(30));
    let so_far = log.lock().unwrap().clone();
    assert!(ready, "daemon did not come up:\n{so_far}");
    assert!(
        so_far.contains("backend usable") && so_far.contains("10.99.0.2"),
        "{so_far}"
    );
    assert!(
        so_far.contains("backend unusable") && so_far.contains("10.99.0.3"),
        "{so_far}"
    );
    let xdp =
        xdp_of(&lb.0, "lb0").unwrap_or_else(|| panic!("no XDP on lb0 after start:\n{so_far}"));
    assert_eq!(xdp["prog"]["name"], "ikelb", "{xdp}");

    // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs lb-ctl in place).
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon ignored SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let full = log.lock().unwrap().clone();
    assert!(status.success(), "daemon exited with {status}:\n{full}");
    assert!(full.contains("XDP detached"), "{full}");
    assert!(
        xdp_of(&lb.0, "lb0").is_none(),
        "XDP still attached after SIGTERM"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_refuses_a_missing_interface_before_touching_anything() {
    let dir = std::env::temp_dir().join(format!("ikc-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ikelb.yaml");
    std::fs::write(
        &config,
        "interfaces: [ikc-nosuch0]\nvirtual_servers:\n  - name: a\n    vip: 203.0.113.10\n",
    )
    .unwrap();
    let out = Command::new(LB_CTL)
        .args(["daemon", "--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ikelb.yaml:1: interfaces[0]: interface \"ikc-nosuch0\" does not exist"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn operator_commands_without_a_daemon_exit_non_zero_with_one_line() {
    let sock = std::env::temp_dir().join(format!("ikelb-smoke-{}.sock", std::process::id()));
    let out = Command::new(LB_CTL)
        .arg("--socket")
        .arg(&sock)
        .args(["status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to the daemon's control socket"), "{stderr}");
}
