//! Reload and the blast radius of a dry run against the real daemon in the standard lab
//! (docs/operations.md, "Reload", "Blast radius"). Root only: without root it says why and
//! returns.
//!
//! `reload_applies_refuses_and_predicts_the_moves_it_makes`, one lab, in order:
//! 1. the file gains b4 and a second virtual server (VIP 203.0.113.20, backend b5), and b2's
//!    weight becomes 3; `lb-ctl reload --dry-run` lists the three changes and no moving
//!    client, `lb-ctl reload` applies them: b4 becomes active and takes slots, b2 weighs 3, no
//!    answered client changes backend, new clients reach b4, the new VIP is answered by b5;
//! 2. an invalid file (a bad address) is refused naming file:line: key, and nothing changes;
//! 3. a restart-only key (`hash_seed`) is refused with its line, and nothing changes;
//! 4. the file drops b1 (`reload_drain: 0s`): a dry run leaves every map the daemon reads
//!    (`RINGS`, `BACKENDS`, `SERVICES`, `PERSIST_V4`, `PROBATION_V4`) entry for entry as it
//!    was, its predicted moves per backend are the moves the clients then make when the
//!    reload is applied;
//! 5. SIGHUP reloads too: the file brings b1 back (weight 2), the daemon picks it up; an
//!    invalid file under SIGHUP is logged with its line and the daemon runs on unchanged;
//! 6. `persistence_timeout` 30m → 31m while 60 clients send 500 datagrams a second: the dry
//!    run says it moves no client, the reload swaps the program (a new program id on both
//!    interfaces, `BPF_LINK_UPDATE`), not a datagram is lost nor a client moved, and
//!    `lb-ctl status --json` shows 31m.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHash, Map, MapData};
use ikelb_tests::lab::{
    self,
    control::{self, Clients},
    stream::Stream,
    Lab, LabSpec, UdpProbe, VIP,
};
use lb_common::{Backend, PersistKeyV4, PersistValue, ProbationValue, Service};
use serde_json::Value;

const WAIT: Duration = Duration::from_millis(300);
/// The VIP of the virtual server a reload adds.
const SECOND_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

fn or_log<T>(lab: &Lab, r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", lab.daemon_output_tail(40)))
}

fn addr_of(lab: &Lab, name: &str) -> Ipv4Addr {
    lab.backends.iter().find(|b| b.name == name).unwrap().addr
}

fn name_of(lab: &Lab, addr: &str) -> String {
    let a: Ipv4Addr = addr.parse().unwrap();
    lab.backends
        .iter()
        .find(|b| b.addr == a)
        .unwrap()
        .name
        .clone()
}

fn config_path(lab: &Lab) -> PathBuf {
    lab.dir().join("ikelb.yaml")
}

/// `config` with backend `addr`'s list item given `weight`.
fn with_weight(config: &str, addr: Ipv4Addr, weight: u32) -> String {
    let line = format!("      - address: {addr}\n");
    assert!(config.contains(&line), "{addr} is not in the config");
    config.replace(&line, &format!("{line}        weight: {weight}\n"))
}

/// `config` with backend `addr` listed after `after`.
fn with_backend(config: &str, after: Ipv4Addr, addr: Ipv4Addr) -> String {
    let line = format!("      - address: {after}\n");
    assert!(config.contains(&line), "{after} is not in the config");
    config.replace(&line, &format!("{line}      - address: {addr}\n"))
}

/// `lb-ctl ARGS` → (success, stdout, stderr).
fn run(lab: &Lab, lb_ctl: &Path, args: &[&str]) -> (bool, String, String) {
    let out = control::lb_ctl_output(lab, lb_ctl, args).expect("run lb-ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (address, weight, state) of every backend: what a refused reload must leave alone.
fn backends(lab: &Lab) -> Vec<(String, u64, String)> {
    control::backend_list(lab)
        .expect("backend list")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every entry of the maps the data path selects by, as text, sorted.
fn maps(lab: &Lab) -> Vec<String> {
    let dir = lab.dir().join("bpffs/default/maps");
    let open = |name: &str| MapData::from_pin(dir.join(name)).expect(name);
    let mut out = Vec::new();
    let rings = Array::<_, u32>::try_from(Map::Array(open("RINGS"))).unwrap();
    out.extend(rings.iter().map(|v| format!("RINGS {:?}", v.unwrap())));
    let b = Array::<_, Backend>::try_from(Map::Array(open("BACKENDS"))).unwrap();
    out.extend(b.iter().map(|v| format!("BACKENDS {:?}", v.unwrap())));
    let s = Array::<_, Service>::try_from(Map::Array(open("SERVICES"))).unwrap();
    out.extend(s.iter().map(|v| format!("SERVICES {:?}", v.unwrap())));
    let p = BpfHash::<_, PersistKeyV4, PersistValue>::try_from(Map::LruHashMap(open("PERSIST_V4")))
        .unwrap();
    let mut entries: Vec<String> = p
        .iter()
        .map(|r| format!("PERSIST_V4 {:?}", r.unwrap()))
        .collect();
    let q =
        BpfHash::<_, PersistKeyV4, ProbationValue>::try_from(Map::LruHashMap(open("PROBATION_V4")))
            .unwrap();
    entries.extend(q.iter().map(|r| format!("PROBATION_V4 {:?}", r.unwrap())));
    entries.sort();
    out.extend(entries);
    out
}

/// (leaving, arriving) per backend name, from a plan's `aovpn` entry, without zeros.
fn predicted(lab: &Lab, plan: &Value) -> BTreeMap<String, (u64, u64)> {
    let vs = plan["virtual_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["virtual_server"] == "aovpn")
        .unwrap_or_else(|| panic!("aovpn in {plan}"));
    vs["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                name_of(lab, b["address"].as_str().unwrap()),
                (
                    b["leaving"].as_u64().unwrap(),
                    b["arriving"].as_u64().unwrap(),
                ),
            )
        })
        .filter(|(_, (l, a))| l + a > 0)
        .collect()
}

/// (leaving, arriving) per backend name between two answers of the same clients.
fn observed(
    before: &BTreeMap<Ipv4Addr, String>,
    after: &BTreeMap<Ipv4Addr, String>,
) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (c, b) in before {
        let a = &after[c];
        if a != b {
            out.entry(b.clone()).or_default().0 += 1;
            out.entry(a.clone()).or_default().1 += 1;
        }
    }
    out
}

fn daemon_pid(lab: &mut Lab) -> i32 {
    lab.daemon().expect("daemon").pid() as i32
}

#[test]
fn reload_applies_refuses_and_predicts_the_moves_it_makes() {
    if !lab::is_root() {
        eprintln!(
            "SKIP reload_applies_refuses_and_predicts_the_moves_it_makes: needs root \
             (network namespaces, veth, XDP); run `cargo xtask test` as root"
        );
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'e',
        clients: 120,
        backends: 5,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder")))
        .expect("start responders");
    let [b1, b2, b3, b4, b5] = ["b1", "b2", "b3", "b4", "b5"].map(|n| addr_of(&lab, n));
    let base = control::with_health(&lab.daemon_config(), "200ms", "100ms", 3, 2).replace(
        "hash_seed: 0x5eed\n",
        "hash_seed: 0x5eed\nreload_drain: 0s\n",
    );
    let start = control::without_backend(&control::without_backend(&base, b4), b5);
    lab.start_daemon_with_config(&lb_ctl, &start)
        .expect("start lb-ctl daemon");
    let up = control::wait_backends(&lab, "b1-b3 active", Duration::from_secs(20), |l| {
        [b1, b2, b3]
            .iter()
            .all(|a| control::has_state(l, *a, "active"))
    });
    or_log(&lab, up, "backends up");
    let file = config_path(&lab);
    let write = |text: &str| std::fs::write(&file, text).expect("write the config");
    let (old, new) = lab.clients.split_at(60);
    let clients = Clients::bind(&lab, old, 500).expect("bind clients");
    let before = or_log(&lab, clients.all_answered(5, WAIT), "first answers");

    // 1. b4 joins, b2 weighs 3, a second virtual server with b5.
    let second = format!(
        "  - name: second\n    vip: {SECOND_VIP}\n    ports: [500]\n    backends:\n      - address: {b5}\n"
    );
    let edited = with_weight(&with_backend(&start, b3, b4), b2, 3).replacen(
        "health_check:\n",
        &format!("{second}health_check:\n"),
        1,
    );
    write(&edited);
    let (ok, out, err) = run(&lab, &lb_ctl, &["reload", "--dry-run", "--json"]);
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    eprintln!(
        "dry run (b4 added, b2 weight 3):\n{}",
        run(&lab, &lb_ctl, &["reload", "--dry-run"]).1
    );
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["changes"].as_array().unwrap().len(), 3, "{plan}");
    assert!(predicted(&lab, &plan).is_empty(), "{plan}");
    let (ok, out, err) = run(&lab, &lb_ctl, &["reload"]);
    assert!(ok && out.starts_with("3 change(s) (applied)"), "{out}{err}");
    let joined = control::wait_backends(&lab, "b4, b5 active", Duration::from_secs(10), |l| {
        control::has_state(l, b4, "active") && control::has_state(l, b5, "active")
    });
    or_log(&lab, joined, "b4 joins");
    or_log(
        &lab,
        control::wait_ring_slots(&lab, b4, Duration::from_secs(15)),
        "b4 takes its slots",
    );
    let b2_info = control::backend(&lab, &lb_ctl, b2).unwrap().unwrap();
    assert_eq!(b2_info["weight"], 3);
    let after = or_log(&lab, clients.all_answered(5, WAIT), "answers after reload");
    assert_eq!(
        after, before,
        "a client moved on a reload that removed nobody"
    );
    let newcomers = Clients::bind(&lab, new, 500).expect("bind newcomers");
    let fresh = or_log(&lab, newcomers.all_answered(5, WAIT), "newcomers");
    assert!(
        fresh.values().any(|b| b == "b4"),
        "{:?}",
        control::spread(&fresh)
    );
    let to = SocketAddrV4::new(SECOND_VIP, 500);
    let one = lab.clients[0];
    let probe = lab
        .client_ns
        .run(move || UdpProbe::bind(one))
        .unwrap()
        .unwrap();
    let reply = probe
        .ask(to, 64, 10, WAIT)
        .unwrap()
        .expect("the new VIP answers");
    assert_eq!((reply.echo.backend.as_str(), reply.from), ("b5", to));

    // 2. An invalid file changes nothing.
    let listed = backends(&lab);
    let bad = edited.replace(&format!("address: {b3}\n"), "address: 10.0.0.300\n");
    write(&bad);
    let (ok, _, err) = run(&lab, &lb_ctl, &["reload"]);
    let line = bad.lines().position(|l| l.contains("10.0.0.300")).unwrap() + 1;
    let want = format!(
        "lb-ctl: {}:{line}: virtual_servers[0].backends[",
        file.display()
    );
    assert!(!ok && err.starts_with(&want), "want {want}…, got {err}");
    assert_eq!(backends(&lab), listed);

    // 3. A restart-only key is refused with its line; nothing changes.
    let seeded = edited.replace("hash_seed: 0x5eed", "hash_seed: 0x5eee");
    write(&seeded);
    let (ok, _, err) = run(&lab, &lb_ctl, &["reload", "--dry-run"]);
    let line = seeded
        .lines()
        .position(|l| l.starts_with("hash_seed"))
        .unwrap()
        + 1;
    let want = format!("lb-ctl: {}:{line}: hash_seed: changed;", file.display());
    assert!(!ok && err.starts_with(&want), "want {want}…, got {err}");
    let (ok, _, _) = run(&lab, &lb_ctl, &["reload"]);
    assert!(!ok);
    assert_eq!(backends(&lab), listed);

    // 4. b1 leaves at once: predicted moves = observed moves, per backend.
    let all: BTreeMap<Ipv4Addr, String> = before.clone().into_iter().chain(fresh).collect();
    let dropped = control::without_backend(&edited, b1);
    write(&dropped);
    let maps_before = maps(&lab);
    let (ok, out, err) = run(&lab, &lb_ctl, &["reload", "--dry-run", "--json"]);
    assert!(ok, "{err}");
    assert!(maps(&lab) == maps_before, "a dry run changed the maps");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let want = predicted(&lab, &plan);
    let on_b1 = all.values().filter(|b| *b == "b1").count() as u64;
    assert!(on_b1 > 0);
    assert_eq!(want["b1"], (on_b1, 0), "{plan}");
    let (ok, out, err) = run(&lab, &lb_ctl, &["reload"]);
    assert!(ok, "{err}");
    eprintln!("reload without b1:\n{out}");
    let moved_old = or_log(&lab, clients.all_answered(5, WAIT), "answers after b1 left");
    let moved_new = or_log(
        &lab,
        newcomers.all_answered(5, WAIT),
        "newcomers after b1 left",
    );
    let now: BTreeMap<Ipv4Addr, String> = moved_old.into_iter().chain(moved_new).collect();
    let seen = observed(&all, &now);
    eprintln!("predicted {want:?}\nobserved  {seen:?}");
    assert_eq!(seen, want, "predicted moves differ from the moves made");

    // 5. SIGHUP: b1 back with weight 2.
    let back = with_weight(&with_backend(&dropped, b4, b1), b1, 2);
    write(&back);
    let pid = daemon_pid(&mut lab);
    // SAFETY: kill(2) on the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let rejoined = control::wait_backends(&lab, "b1 back", Duration::from_secs(10), |l| {
        control::has_state(l, b1, "active")
    });
    or_log(&lab, rejoined, "b1 back after SIGHUP");
    assert_eq!(
        control::backend(&lab, &lb_ctl, b1).unwrap().unwrap()["weight"],
        2
    );
    let listed = backends(&lab);
    write(&back.replace(&format!("address: {b2}\n"), "address: 10.0.0.300\n"));
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let logged = lab::wait_for(
        "the refused SIGHUP reload in the log",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let tail = lab.daemon_output_tail(20);
            Ok(tail
                .lines()
                .any(|l| l.contains("SIGHUP reload refused") && l.contains("10.0.0.300"))
                .then_some(()))
        },
    );
    or_log(&lab, logged, "refused SIGHUP logged");
    assert_eq!(backends(&lab), listed);
    assert!(
        lab.daemon().unwrap().exit_status().is_none(),
        "the daemon exited"
    );

    // 6. persistence_timeout, live: the program swapped under traffic.
    write(&back);
    let (ok, out, err) = run(&lab, &lb_ctl, &["reload"]);
    assert!(ok && out.starts_with("no change (applied)"), "{out}{err}");
    let ids = lab.prog_ids();
    let senders = lab.clients[..60].iter().map(|&c| (c, VIP)).collect();
    let stream = Stream::start(&lab.client_ns, senders, 500);
    std::thread::sleep(Duration::from_secs(1));
    let longer = back.replace("persistence_timeout: 30m", "persistence_timeout: 31m");
    assert_ne!(longer, back);
    write(&longer);
    let (ok, out, err) = run(&lab, &lb_ctl, &["reload", "--dry-run", "--json"]);
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let line = plan["changes"][0].as_str().unwrap_or_default().to_owned();
    assert!(
        plan["changes"].as_array().unwrap().len() == 1
            && line.starts_with("persistence_timeout: 30m → 31m")
            && line.contains("moves no client"),
        "{plan}"
    );
    assert!(
        plan["virtual_servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["moving"] == 0),
        "{plan}"
    );
    assert_eq!(lab.prog_ids(), ids, "a dry run swapped the program");
    let (ok, out, err) = run(&lab, &lb_ctl, &["reload"]);
    assert!(ok && out.starts_with("1 change(s) (applied)"), "{out}{err}");
    let swapped = lab.prog_ids();
    std::thread::sleep(Duration::from_secs(1));
    let tally = stream.stop();
    eprintln!(
        "persistence_timeout reload: program {ids:?} → {swapped:?}; {} datagrams sent, {} \
         answered, {} lost, {} wrong, {} clients moved",
        tally.sent,
        tally.answered,
        tally.lost.len(),
        tally.wrong,
        tally.moved.len()
    );
    assert!(
        swapped.0 != ids.0 && swapped.1 != ids.1,
        "no new program on both interfaces: {ids:?} → {swapped:?}"
    );
    let (ok, out, err) = run(&lab, &lb_ctl, &["status", "--json"]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["persistence"]["timeout"], "31m", "{status}");
    assert!(tally.sent > 0 && tally.lost.is_empty(), "{tally:?}");
    assert_eq!(tally.answered, tally.sent);
    assert_eq!(tally.wrong, 0);
    assert!(tally.moved.is_empty(), "clients moved: {:?}", tally.moved);
}
