//! Runtime backend management through `lb-ctl` against the real daemon in the standard lab
//! (docs/operations.md, "Add, remove, drain"). Root only: without root each test says why and returns.
//!
//! * `backend_add_under_traffic_moves_nobody_and_remove_stops_every_packet`: b4 exists but is
//!   not in the config. It is added while 60 clients keep asking the VIP: no client ever gets
//!   an answer from another backend than its first; new clients land on b4. b1 is removed:
//!   its responder receives no datagram afterwards, its clients are answered by others, the
//!   others do not move. A daemon restart keeps both changes (and the ids).
//! * `drain_keeps_clients_until_the_deadline_and_takes_no_new_one`: b2 drains for 4 s under
//!   traffic: its clients stay on it, new clients never land there; at the deadline it is
//!   removed and its clients move.
//! * `bad_requests_and_arguments_change_nothing`: every refused request exits non-zero with
//!   one line on stderr, every bad argument is a clap error, and `backend list` and the state
//!   directory are the same afterwards. The socket is mode 0600 and refuses other users.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ikelb_tests::lab::{
    self,
    control::{self, Clients},
    responder::Stats,
    Lab, LabSpec,
};
use serde_json::Value;

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

fn or_log<T>(lab: &Lab, r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", lab.daemon_output_tail(40)))
}

/// A lab with `backends` backends, responders running, and a daemon whose config lists the
/// backends in `configured` (by name), health checks every 200 ms. Waits until those are
/// active.
fn lab_with(backends: usize, configured: &[&str], lb_ctl: &Path) -> Lab {
    lab_with_config(backends, configured, lb_ctl, |c| c)
}

/// [`lab_with`], the config text passed through `edit` first.
fn lab_with_config(
    backends: usize,
    configured: &[&str],
    lb_ctl: &Path,
    edit: impl Fn(String) -> String,
) -> Lab {
    let mut lab = Lab::build(&LabSpec {
        role: 'h',
        clients: 120,
        backends,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let mut config = edit(control::with_health(
        &lab.daemon_config(),
        "200ms",
        "100ms",
        3,
        2,
    ));
    for b in &lab.backends {
        if !configured.contains(&b.name.as_str()) {
            config = control::without_backend(&config, b.addr);
        }
    }
    lab.start_daemon_with_config(lb_ctl, &config)
        .expect("start lb-ctl daemon");
    let want: Vec<Ipv4Addr> = lab
        .backends
        .iter()
        .filter(|b| configured.contains(&b.name.as_str()))
        .map(|b| b.addr)
        .collect();
    let ready = control::wait_backends(
        &lab,
        "configured backends active",
        Duration::from_secs(20),
        |l| l.len() == want.len() && want.iter().all(|a| control::has_state(l, *a, "active")),
    );
    or_log(&lab, ready, "backends up");
    lab
}

fn addr_of(lab: &Lab, name: &str) -> Ipv4Addr {
    lab.backends.iter().find(|b| b.name == name).unwrap().addr
}

fn stats(lab: &Lab, name: &str) -> Stats {
    let i = lab.backends.iter().position(|b| b.name == name).unwrap();
    lab.responder_stats().expect("responder stats")[i]
        .clone()
        .unwrap_or_else(|| panic!("{name}'s responder does not answer"))
}

/// Every answered client of every round was answered by `expect[client]`.
fn assert_nobody_moved(
    rounds: &[(Instant, control::Round)],
    expect: &BTreeMap<Ipv4Addr, String>,
    what: &str,
) {
    let mut answered = 0;
    for (_, round) in rounds {
        for (c, b) in round {
            if let Some(b) = b {
                answered += 1;
                assert_eq!(
                    b, &expect[c],
                    "{what}: {c} answered by {b}, was {}",
                    expect[c]
                );
            }
        }
    }
    assert!(answered > 0, "{what}: no answer at all");
}

#[test]
fn backend_add_under_traffic_moves_nobody_and_remove_stops_every_packet() {
    if skip_unless_root("backend_add_under_traffic_moves_nobody_and_remove_stops_every_packet") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = lab_with(4, &["b1", "b2", "b3"], &lb_ctl);
    let (old, new) = lab.clients.split_at(60);
    let clients = Clients::bind(&lab, old, 500).expect("bind clients");
    let before = or_log(&lab, clients.all_answered(5, WAIT), "first answers");
    assert!(!before.values().any(|b| b == "b4"));
    eprintln!("before: {:?}", control::spread(&before));

    // `lookup` reads the per-client maps for a known client, and for an unseen one predicts
    // the data path's Maglev choice (same hash, seed and table in user space). The lab's UDP
    // clients never echo an IKE responder SPI, so they stay on probation (`docs/security.md`).
    let known = old[0];
    let lookup = |client: Ipv4Addr| -> Value {
        let out = lab
            .lb_ctl(&lb_ctl, &["lookup", &client.to_string(), "--json"])
            .expect("lookup");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["results"][0].clone()
    };
    let r = lookup(known);
    assert_eq!(r["source"], "probation", "{r}");
    assert_eq!(
        r["backend"],
        addr_of(&lab, &before[&known]).to_string(),
        "{r}"
    );
    let unseen = new[0];
    let predicted = lookup(unseen);
    assert_eq!(predicted["source"], "maglev", "{predicted}");
    eprintln!(
        "lookup {known}:\n{}lookup {unseen}:\n{}",
        lab.lb_ctl(&lb_ctl, &["lookup", &known.to_string()])
            .unwrap(),
        lab.lb_ctl(&lb_ctl, &["lookup", &unseen.to_string()])
            .unwrap()
    );

    // Add b4 while the clients keep talking.
    let traffic = clients.background(Duration::from_millis(50), Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(300));
    let b4 = addr_of(&lab, "b4");
    let out = lab
        .lb_ctl(&lb_ctl, &["backend", "add", "aovpn", &b4.to_string()])
        .expect("backend add");
    assert!(out.starts_with(&format!("added {b4} to aovpn")), "{out}");
    let joined = control::wait_backends(&lab, "b4 active", Duration::from_secs(10), |l| {
        control::has_state(l, b4, "active")
    });
    let joined = or_log(&lab, joined, "b4 joins");
    // Its slots move to it `slot_move_delay` later (lb-ctl/src/state.rs, "Slot moves"): the
    // traffic runs through the hold and the move.
    let moved = control::wait_ring_slots(&lab, b4, Duration::from_secs(15));
    or_log(&lab, moved, "b4 takes its slots");
    std::thread::sleep(Duration::from_millis(500));
    let (clients, rounds) = traffic.stop().expect("traffic");
    eprintln!(
        "b4 active {joined:.2?} after `backend add`; {} rounds of 60 clients meanwhile",
        rounds.len()
    );
    assert_nobody_moved(&rounds, &before, "during backend add");
    let newcomers = Clients::bind(&lab, new, 500).expect("bind newcomers");
    // b4 joined since the prediction: look again, then compare with the data path.
    let predicted = lookup(unseen);
    let fresh = or_log(&lab, newcomers.all_answered(5, WAIT), "newcomers");
    assert_eq!(
        predicted["backend"],
        addr_of(&lab, &fresh[&unseen]).to_string(),
        "lookup's Maglev prediction differs from the data path's choice"
    );
    assert!(
        fresh.values().any(|b| b == "b4"),
        "no new client on b4: {:?}",
        control::spread(&fresh)
    );
    eprintln!(
        "{}\n{}",
        lab.lb_ctl(&lb_ctl, &["status"]).unwrap(),
        lab.lb_ctl(&lb_ctl, &["backend", "list"]).unwrap()
    );
    let listed = control::backend(&lab, &lb_ctl, b4).unwrap().unwrap();
    assert_eq!(listed["origin"], "runtime");
    assert!(listed["ring_slots"].as_u64().unwrap() > 0);

    // Remove b1 at once: not one more datagram reaches it.
    let b1 = addr_of(&lab, "b1");
    let b1_clients: Vec<Ipv4Addr> = before
        .iter()
        .filter(|(_, b)| *b == "b1")
        .map(|(c, _)| *c)
        .collect();
    assert!(!b1_clients.is_empty());
    let out = lab
        .lb_ctl(
            &lb_ctl,
            &["backend", "remove", "203.0.113.10", &b1.to_string()],
        )
        .expect("backend remove");
    assert!(
        out.starts_with(&format!("removed {b1} from aovpn")),
        "{out}"
    );
    let seen = stats(&lab, "b1").datagrams;
    let after = or_log(&lab, clients.all_answered(5, WAIT), "answers after remove");
    let later = or_log(
        &lab,
        newcomers.all_answered(5, WAIT),
        "newcomers after remove",
    );
    assert_eq!(
        stats(&lab, "b1").datagrams,
        seen,
        "b1 received datagrams after its removal"
    );
    for (c, b) in &after {
        assert_ne!(b, "b1");
        if before[c] != "b1" {
            assert_eq!(*b, before[c], "{c} moved although its backend stayed");
        }
    }
    assert!(later.values().all(|b| b != "b1"));
    assert!(control::backend(&lab, &lb_ctl, b1).unwrap().is_none());

    // A restart keeps the runtime changes and their ids.
    let ids = |l: &[Value]| -> Vec<(String, u64, String)> {
        l.iter()
            .map(|b| {
                (
                    b["address"].as_str().unwrap().to_owned(),
                    b["id"].as_u64().unwrap(),
                    b["origin"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let list = ids(&control::backends(&lab, &lb_ctl).unwrap());
    let state = std::fs::read_to_string(lab.dir().join("state/backends.json")).expect("state file");
    assert!(
        state.contains(&b4.to_string()) && state.contains(&b1.to_string()),
        "{state}"
    );
    let status = lab.stop_daemon().expect("stop");
    assert!(status.success(), "{}", lab.daemon_output_tail(20));
    let config = std::fs::read_to_string(lab.dir().join("ikelb.yaml")).unwrap();
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("restart");
    let back = control::wait_backends(
        &lab,
        "the same backends after a restart",
        Duration::from_secs(20),
        |l| ids(l) == list && l.iter().all(|b| b["state"] == "active"),
    );
    or_log(&lab, back, "restart");
    let again = or_log(
        &lab,
        newcomers.all_answered(5, WAIT),
        "answers after restart",
    );
    assert!(again.values().all(|b| b != "b1"));
    let status = lab.stop_daemon().expect("stop");
    assert!(status.success(), "{}", lab.daemon_output_tail(20));
}

#[test]
fn drain_keeps_clients_until_the_deadline_and_takes_no_new_one() {
    if skip_unless_root("drain_keeps_clients_until_the_deadline_and_takes_no_new_one") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    // Persistence timeout 3 s: short enough to see a drain end because its clients went
    // idle, long enough for the 100 ms rounds below to keep entries fresh.
    let mut lab = lab_with_config(3, &["b1", "b2", "b3"], &lb_ctl, |c| {
        c.replace("persistence_timeout: 30m\n", "persistence_timeout: 3s\n")
    });
    let (old, new) = lab.clients.split_at(60);
    let clients = Clients::bind(&lab, old, 500).expect("bind clients");
    let before = or_log(&lab, clients.all_answered(5, WAIT), "first answers");
    let b2 = addr_of(&lab, "b2");
    let drained: Vec<Ipv4Addr> = before
        .iter()
        .filter(|(_, b)| *b == "b2")
        .map(|(c, _)| *c)
        .collect();
    assert!(!drained.is_empty());

    let drain = Duration::from_secs(4);
    let t0 = Instant::now();
    let out = lab
        .lb_ctl(
            &lb_ctl,
            &[
                "backend",
                "remove",
                "aovpn",
                &b2.to_string(),
                "--drain",
                "4s",
            ],
        )
        .expect("backend remove --drain");
    assert!(
        out.starts_with(&format!("draining {b2} of aovpn until ")),
        "{out}"
    );
    let listed = control::backend(&lab, &lb_ctl, b2).unwrap().unwrap();
    assert_eq!(listed["state"], "draining", "{listed}");
    assert_eq!(listed["ring_slots"], 0);
    assert_eq!(listed["clients"].as_u64().unwrap(), drained.len() as u64);

    // During the drain: everyone stays, newcomers never land on b2.
    let newcomers = Clients::bind(&lab, new, 500).expect("bind newcomers");
    let fresh = or_log(&lab, newcomers.all_answered(5, WAIT), "newcomers");
    assert!(
        fresh.values().all(|b| b != "b2"),
        "a new client landed on draining b2"
    );
    let traffic = clients.background(Duration::from_millis(100), Duration::from_millis(200));
    std::thread::sleep(
        drain
            .saturating_sub(t0.elapsed())
            .saturating_sub(Duration::from_millis(500)),
    );
    let (clients, rounds) = traffic.stop().expect("traffic");
    assert!(
        t0.elapsed() < drain,
        "the drain phase overran; rounds are not all before the deadline"
    );
    assert_nobody_moved(&rounds, &before, "during the drain");

    // At the deadline b2 goes; its clients move, nobody else does, b2 sees nothing more.
    let gone = control::wait_backends(&lab, "b2 removed", Duration::from_secs(10), |l| {
        !l.iter().any(|b| b["address"] == b2.to_string())
    });
    or_log(&lab, gone, "drain end");
    let ended = t0.elapsed();
    eprintln!("DRAIN: b2 removed {ended:.2?} after `remove --drain 4s`");
    assert!(
        ended >= drain,
        "removed before the deadline although its clients were active"
    );
    let seen = stats(&lab, "b2").datagrams;
    let after = or_log(
        &lab,
        clients.all_answered(5, WAIT),
        "answers after the drain",
    );
    for (c, b) in &after {
        assert_ne!(b, "b2");
        if before[c] != "b2" {
            assert_eq!(*b, before[c], "{c} moved");
        }
    }
    assert_eq!(
        stats(&lab, "b2").datagrams,
        seen,
        "b2 received datagrams after the drain"
    );

    // A drain whose clients go quiet ends when they are idle (persistence_timeout), long
    // before its deadline: the daemon reads the persistence map for it.
    let b3 = addr_of(&lab, "b3");
    let quiet = after.values().filter(|b| *b == "b3").count() as u64;
    let t1 = Instant::now();
    lab.lb_ctl(
        &lb_ctl,
        &[
            "backend",
            "remove",
            "aovpn",
            &b3.to_string(),
            "--drain",
            "1h",
        ],
    )
    .expect("backend remove --drain 1h");
    let listed = control::backend(&lab, &lb_ctl, b3).unwrap().unwrap();
    assert_eq!(listed["state"], "draining", "{listed}");
    // Its clients among the 60 asked last, plus the newcomers it took earlier.
    assert!(listed["clients"].as_u64().unwrap() >= quiet, "{listed}");
    assert!(quiet > 0);
    let idle = control::wait_backends(
        &lab,
        "b3 removed once its clients are idle",
        Duration::from_secs(15),
        |l| !l.iter().any(|b| b["address"] == b3.to_string()),
    );
    or_log(&lab, idle, "idle drain end");
    eprintln!("DRAIN (idle): b3 removed {:.2?} after `remove --drain 1h`, its {quiet} clients silent (persistence_timeout 3s)", t1.elapsed());
    assert!(
        t1.elapsed() >= Duration::from_secs(2),
        "removed before its clients could be idle"
    );
    let status = lab.stop_daemon().expect("stop");
    assert!(status.success(), "{}", lab.daemon_output_tail(20));
}

#[test]
fn bad_requests_and_arguments_change_nothing() {
    if skip_unless_root("bad_requests_and_arguments_change_nothing") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = lab_with(3, &["b1", "b2"], &lb_ctl);
    let sock = lab.control_socket();
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    let list_before = control::backends(&lab, &lb_ctl).unwrap();
    let state_dir = lab.dir().join("state");
    let files = |dir: &Path| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read_to_string(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    // One accepted change first, so the state file exists and must stay as it is.
    let out = lab
        .lb_ctl(
            &lb_ctl,
            &["backend", "add", "aovpn", "10.0.0.13", "--weight", "3"],
        )
        .expect("add b3");
    assert!(
        out.starts_with("added 10.0.0.13 to aovpn (id 3, weight 3)"),
        "{out}"
    );
    let ready = control::wait_backends(&lab, "b3 active", Duration::from_secs(10), |l| {
        control::has_state(l, "10.0.0.13".parse().unwrap(), "active")
    });
    or_log(&lab, ready, "b3 joins");
    let list_before = {
        let l = control::backends(&lab, &lb_ctl).unwrap();
        assert_ne!(l, list_before);
        l
    };
    let state_before = files(&state_dir);
    // backends.json, and identity.json (service ids and ports by name, written at start).
    assert_eq!(state_before.len(), 2, "{state_before:?}");

    // Refused by the daemon: exit 1, one line naming the problem.
    let refused: &[(&[&str], &str)] = &[
        (
            &["backend", "add", "vpn", "10.0.0.14"],
            "no virtual server \"vpn\"",
        ),
        (
            &["backend", "add", "198.51.100.1", "10.0.0.14"],
            "no virtual server \"198.51.100.1\"",
        ),
        (
            &["backend", "add", "aovpn", "10.0.0.11"],
            "10.0.0.11 is already a backend of aovpn",
        ),
        (
            &["backend", "add", "aovpn", "203.0.113.10"],
            "is the VIP of virtual server aovpn",
        ),
        (
            &["backend", "add", "aovpn", "2001:db8::1"],
            "address family",
        ),
        (
            &["backend", "add", "aovpn", "0.0.0.0"],
            "not a unicast address",
        ),
        (
            &["backend", "add", "aovpn", "224.0.0.5"],
            "not a unicast address",
        ),
        (
            &["backend", "add", "aovpn", "127.0.0.1"],
            "not a unicast address",
        ),
        (
            &["backend", "add", "aovpn", "10.0.0.13", "--weight", "2"],
            "10.0.0.13 is already a backend of aovpn",
        ),
        (
            &["backend", "remove", "aovpn", "10.0.0.14"],
            "10.0.0.14 is not a backend of aovpn",
        ),
        (
            &["backend", "remove", "nope", "10.0.0.11"],
            "no virtual server \"nope\"",
        ),
        (
            &[
                "backend",
                "remove",
                "aovpn",
                "10.0.0.11",
                "--drain",
                "365days",
            ],
            "longer than the maximum",
        ),
        (
            &["lookup", "2001:db8::7"],
            "no virtual server has an IPv6 VIP",
        ),
    ];
    for (args, text) in refused {
        let out = control::lb_ctl_output(&lab, &lb_ctl, args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line wanted: {stderr}"
        );
        assert!(
            stderr.starts_with("lb-ctl: ") && stderr.contains(text),
            "{args:?}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Refused by the parser (clap): exit 2 with usage.
    let bad_args: &[&[&str]] = &[
        &["backend", "add", "aovpn", "10.0.0.300"],
        &["backend", "add", "aovpn", "10.0.0.13", "--weight", "0"],
        &["backend", "add", "aovpn", "10.0.0.13", "--weight", "1001"],
        &["backend", "add", "aovpn", "10.0.0.13", "--weight", "heavy"],
        &["backend", "add", "aovpn", "10.0.0.13", "--force"],
        &["backend", "add", "aovpn"],
        &["backend", "remove", "aovpn", "10.0.0.11", "--drain", "soon"],
        &["backend", "remove", "aovpn", "10.0.0.11", "--drain"],
        &["backend", "list", "--yaml"],
        &["backend", "move", "aovpn", "10.0.0.11"],
        &["lookup", "somebody"],
        &["status", "--verbose"],
    ];
    for args in bad_args {
        let out = control::lb_ctl_output(&lab, &lb_ctl, args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    // Raw protocol abuse is answered with bad_request and changes nothing either.
    let raw = lab
        .gateway
        .run(|| {
            use std::io::{BufRead, BufReader, Write};
            let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            (&s).write_all(b"{\"command\":\"backend_add\",\"virtual_server\":\"aovpn\",\"address\":\"10.0.0.13\",\"force\":true}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            line
        })
        .unwrap();
    assert!(
        raw.contains("\"bad_request\"") && raw.contains("force"),
        "{raw}"
    );

    // A second daemon on the same socket refuses to start and leaves the first alone.
    let second = lab
        .gateway
        .command(&lb_ctl)
        .arg("daemon")
        .arg("--config")
        .arg(lab.dir().join("ikelb.yaml"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run a second daemon");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "a second daemon started: {stderr}"
    );
    // Refused on the first endpoint it finds taken (metrics listener or control socket).
    assert!(
        stderr.contains("another daemon is serving the control socket")
            || stderr.contains("Address already in use"),
        "{stderr}"
    );
    assert!(
        sock.exists(),
        "the second daemon removed the first one's socket"
    );
    assert!(
        lab.gateway.xdp("ext").unwrap().is_some() && lab.gateway.xdp("int").unwrap().is_some(),
        "the second daemon detached the first one's program"
    );

    // Another user may not even connect (mode 0600).
    let other = lab.gateway.exec(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            lb_ctl.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "status",
        ],
    );
    let e = other.expect_err("nobody must not reach the daemon");
    assert!(format!("{e:#}").contains("Permission denied"), "{e:#}");

    assert_eq!(
        control::backends(&lab, &lb_ctl).unwrap(),
        list_before,
        "backend list changed"
    );
    assert_eq!(files(&state_dir), state_before, "state directory changed");
    let status = lab.stop_daemon().expect("stop");
    assert!(status.success(), "{}", lab.daemon_output_tail(20));
}
