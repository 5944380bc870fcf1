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

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use ikelb_tests::fixture;
use ikelb_tests::lab::stream::Stream;
use ikelb_tests::lab::{self, Lab, LabSpec, UdpProbe, BACKEND_PORTS, GW_EXT, GW_INT, VIP};

/// Client addresses sending at once (half to each of the first two VIPs).
const CLIENTS: usize = 40;
/// Datagrams per second over all clients.
const RATE: u64 = 1000;
const VIP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const VIP3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
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
    if fixture::skip_unless_root("reordering_and_inserting_moves_no_client") {
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
    lab.wait_daemon_log("ikelb running", 1)
        .unwrap_or_else(|e| panic!("{e:#}"));
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

    let stream = Stream::start(&lab.client_ns, clients.clone(), RATE);
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
        let status = lab.signal_daemon(libc::SIGTERM).expect("daemon exit");
        eprintln!(
            "identity: daemon ended by signal {}: {status}",
            libc::SIGTERM
        );
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
        lab.wait_daemon_log("ikelb running", *n)
            .unwrap_or_else(|e| panic!("{e:#}"));
        at.push(format!("{what} at {:.1} s", t0.elapsed().as_secs_f64()));
        thread::sleep(Duration::from_secs(2));
    }
    let tally = stream.stop();
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
    let status = lab.signal_daemon(libc::SIGTERM).expect("daemon exit");
    eprintln!(
        "identity: daemon ended by signal {}: {status}",
        libc::SIGTERM
    );
}
