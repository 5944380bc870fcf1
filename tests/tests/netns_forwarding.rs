//! Network tests: real UDP and ESP through the standard lab (`ikelb_tests::lab`), with and without
//! the ikelb daemon on the gateway. Root only: without root each test says why and returns.
//!
//! * `lab_forwards_client_addresses_without_ikelb` checks the lab itself with plain kernel
//!   routing: every client reaches the backends directly (UDP and ESP) and is seen with its
//!   own address, fragments reassemble, the VIP belongs to the gateway, and a corrupted UDP checksum is
//!   counted — so the zero checksum-error counts asserted later mean something.
//! * `daemon_balances_clients_and_keeps_ike_and_nat_t_together` runs `lb-ctl daemon` on the
//!   gateway (`$IKELB_LB_CTL`, or the `lb-ctl` built next to this test) and sends, from each
//!   of 250 client addresses, IKE (500), NAT-T (4500), a 4,000-byte fragmented NAT-T
//!   datagram and an ESP packet to the VIP: one backend answers them all, from the VIP.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ikelb_tests::lab::{
    self, metrics, send_bad_checksum, EspProbe, Lab, LabSpec, Reply, UdpProbe, BACKEND_PORTS, VIP,
};

const BIG: usize = 4000;
/// ESP packet size (header included), a typical small tunnelled packet.
const ESP_LEN: usize = 120;
const TRIES: u32 = 3;
const TIMEOUT: Duration = Duration::from_millis(300);
/// Stop sending after this many failures: the first ones say what is wrong, and a broken
/// data path must not cost a timeout per remaining datagram.
const ENOUGH_FAILURES: usize = 10;

/// Root is needed for namespaces, veth and XDP; say so and skip otherwise.
fn skip_unless_root(test: &str) -> bool {
    if lab::is_root() {
        return false;
    }
    eprintln!(
        "SKIP {test}: needs root (CAP_SYS_ADMIN for network namespaces, CAP_NET_ADMIN and \
         CAP_BPF for veth and XDP); run `cargo xtask test` as root"
    );
    true
}

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

/// What a reply must look like; `Err` says how it differed.
fn check(
    reply: Option<Reply>,
    client: Ipv4Addr,
    from: SocketAddrV4,
    len: usize,
    backend: Option<&str>,
) -> Result<String, String> {
    let Some(r) = reply else {
        return Err(format!("{client} → {from}: no answer"));
    };
    let mut bad = Vec::new();
    if r.from != from {
        bad.push(format!("answer came from {} (want {from})", r.from));
    }
    if r.echo.seen != IpAddr::V4(client) {
        bad.push(format!(
            "backend saw {} (want the client's own address)",
            r.echo.seen
        ));
    }
    if r.echo.len != len {
        bad.push(format!("backend got {} bytes (want {len})", r.echo.len));
    }
    if r.echo.port != from.port() {
        bad.push(format!(
            "backend got it on port {} (want {})",
            r.echo.port,
            from.port()
        ));
    }
    if let Some(b) = backend {
        if r.echo.backend != b {
            bad.push(format!("answered by {} (want {b})", r.echo.backend));
        }
    }
    if bad.is_empty() {
        Ok(r.echo.backend)
    } else {
        Err(format!("{client} → {from} ({len} B): {}", bad.join("; ")))
    }
}

fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures, first ones:\n  {}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

fn assert_no_csum_errors(lab: &Lab) {
    let errors = lab.udp_csum_errors().expect("read /proc/net/snmp");
    let nonzero: Vec<_> = errors.iter().filter(|(_, n)| *n != 0).collect();
    assert!(
        nonzero.is_empty(),
        "Udp InCsumErrors must stay 0 everywhere: {nonzero:?}"
    );
}

/// Ask the VIP from `client` on both ports once; returns any answers (there must be none while
/// nothing balances) and how many datagrams the gateway's own stack refused meanwhile.
fn vip_answers_without_balancer(lab: &Lab, client: Ipv4Addr) -> (Vec<Reply>, i64) {
    let no_ports = || lab.gateway.snmp().expect("gateway snmp").get("Udp.NoPorts");
    let before = no_ports();
    let answers = lab
        .client_ns
        .run(|| {
            let probe = UdpProbe::bind(client).expect("bind client");
            BACKEND_PORTS
                .iter()
                .filter_map(|&p| {
                    probe
                        .ask(SocketAddrV4::new(VIP, p), 64, 1, TIMEOUT)
                        .expect("ask")
                })
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    (answers, no_ports() - before)
}

/// Wait until the VIP answers the first client (attachment comes before the maps and the
/// health checks settle); on timeout, fail with the daemon's output.
fn wait_first_answer(lab: &Lab) {
    let client = lab.clients[0];
    let first = lab
        .client_ns
        .run(|| {
            let probe = UdpProbe::bind(client).expect("bind client");
            let to = SocketAddrV4::new(VIP, 500);
            lab::wait_for(
                "the first answer through the VIP",
                Duration::from_secs(20),
                Duration::ZERO,
                || probe.ask(to, 64, 1, Duration::from_millis(100)),
            )
        })
        .expect("client namespace");
    if let Err(e) = first {
        panic!("{e:#}\n{}", lab.daemon_output_tail(40));
    }
}

/// Waits until every backend holds ring slots. A backend that fails the daemon's first health
/// round (a slow emulated guest) comes up later, and its slots then move to it only after
/// `slot_move_delay` (`lb-ctl/src/state.rs`, "Slot moves"): the tests' clients must not
/// start before.
fn wait_every_backend_in_ring(lab: &Lab) {
    for b in &lab.backends {
        if let Err(e) = lab::control::wait_ring_slots(lab, b.addr, Duration::from_secs(20)) {
            panic!("{e:#}\n{}", lab.daemon_output_tail(40));
        }
    }
}

/// What each client sends to the VIP in [`ask_via_vip`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// UDP 500 and UDP 4500.
    Ike,
    /// UDP 500, UDP 4500, a fragmented 4,000-byte datagram to 4500, and ESP.
    Everything,
}

/// From each of `clients`, ask the VIP (see [`Ask`]); every answer must come from the VIP,
/// from one backend per client, which saw the client's own address. Returns the failures
/// (at most about [`ENOUGH_FAILURES`]) and each answered client's backend.
fn ask_via_vip(
    lab: &Lab,
    clients: &[Ipv4Addr],
    what: Ask,
) -> (Vec<String>, BTreeMap<Ipv4Addr, String>) {
    let udp: &[(u16, usize)] = match what {
        Ask::Ike => &[(500, 64), (4500, 64)],
        Ask::Everything => &[(500, 64), (4500, 64), (4500, BIG)],
    };
    let (failures, chosen) = lab
        .client_ns
        .run(|| {
            let mut failures = Vec::new();
            let mut chosen = BTreeMap::new();
            for &client in clients {
                if failures.len() >= ENOUGH_FAILURES {
                    break;
                }
                let probe = UdpProbe::bind(client).expect("bind client");
                let mut backend: Option<String> = None;
                for &(port, len) in udp {
                    let to = SocketAddrV4::new(VIP, port);
                    let reply = probe.ask(to, len, TRIES, TIMEOUT).expect("ask");
                    match check(reply, client, to, len, backend.as_deref()) {
                        Ok(b) => backend = Some(b),
                        Err(e) => failures.push(e),
                    }
                }
                if what == Ask::Everything {
                    // ESP follows the client's UDP: same backend, replies from the VIP.
                    let esp = EspProbe::bind(client).expect("bind ESP");
                    let reply = esp.ask(VIP, ESP_LEN, TRIES, TIMEOUT).expect("ask ESP");
                    let to = SocketAddrV4::new(VIP, 0);
                    match check(reply, client, to, ESP_LEN, backend.as_deref()) {
                        Ok(b) => backend = Some(b),
                        Err(e) => failures.push(format!("ESP: {e}")),
                    }
                }
                if let Some(b) = backend {
                    chosen.insert(client, b);
                }
            }
            (failures, chosen)
        })
        .expect("client namespace");
    if !failures.is_empty() {
        eprintln!("{}", lab.daemon_output_tail(40));
    }
    (failures, chosen)
}

#[test]
fn lab_forwards_client_addresses_without_ikelb() {
    if skip_unless_root("lab_forwards_client_addresses_without_ikelb") {
        return;
    }
    let t0 = Instant::now();
    let mut lab = Lab::build(&LabSpec::default()).expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let built = t0.elapsed();

    // Every client reaches a backend directly (round robin), which sees the client's own
    // address and answers from its own: plain routing, both ways, through the gateway.
    let backends: Vec<(String, Ipv4Addr)> = lab
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.addr))
        .collect();
    let t1 = Instant::now();
    let failures = lab
        .client_ns
        .run(|| {
            let mut failures = Vec::new();
            for (i, &client) in lab.clients.iter().enumerate() {
                if failures.len() >= ENOUGH_FAILURES {
                    break;
                }
                let (name, addr) = &backends[i % backends.len()];
                let probe = UdpProbe::bind(client).expect("bind client");
                for (port, len) in [(500, 64), (4500, 64), (4500, BIG)] {
                    let to = SocketAddrV4::new(*addr, port);
                    let reply = probe.ask(to, len, TRIES, TIMEOUT).expect("ask");
                    if let Err(e) = check(reply, client, to, len, Some(name)) {
                        failures.push(e);
                    }
                }
                let esp = EspProbe::bind(client).expect("bind ESP");
                let reply = esp.ask(*addr, ESP_LEN, TRIES, TIMEOUT).expect("ask ESP");
                let to = SocketAddrV4::new(*addr, 0);
                if let Err(e) = check(reply, client, to, ESP_LEN, Some(name)) {
                    failures.push(format!("ESP: {e}"));
                }
            }
            failures
        })
        .expect("client namespace");
    let traffic = t1.elapsed();
    assert_no_failures("direct client → backend traffic", &failures);

    // The VIP is the gateway's own: without ikelb nobody behind it answers, and the gateway's
    // stack refuses both datagrams (no socket on 500/4500 there).
    let (answers, refused) = vip_answers_without_balancer(&lab, lab.clients[0]);
    assert!(
        answers.is_empty(),
        "VIP answered without ikelb: {answers:?}"
    );
    assert_eq!(
        refused, 2,
        "the gateway's own stack should have refused both datagrams"
    );

    // Receivers verify UDP checksums: a corrupted one is counted where it lands.
    assert_no_csum_errors(&lab);
    let (client, b1) = (lab.clients[0], lab.backends[0].addr);
    lab.client_ns
        .run(|| send_bad_checksum(SocketAddrV4::new(client, 40_000), SocketAddrV4::new(b1, 9)))
        .expect("client namespace")
        .expect("send a corrupted datagram");
    let counted = lab::wait_for(
        "b1 to count the corrupted datagram",
        Duration::from_secs(2),
        Duration::from_millis(10),
        || Ok((lab.backends[0].ns.snmp()?.get("Udp.InCsumErrors") == 1).then_some(())),
    );
    counted.expect("checksum errors are counted by the receiver");

    eprintln!(
        "lab: {} clients, {} backends built in {built:.2?}; {} direct round trips in \
         {traffic:.2?}",
        lab.clients.len(),
        lab.backends.len(),
        lab.clients.len() * 4
    );
}

#[test]
fn daemon_balances_clients_and_keeps_ike_and_nat_t_together() {
    if skip_unless_root("daemon_balances_clients_and_keeps_ike_and_nat_t_together") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let t0 = Instant::now();
    let mut lab = Lab::build(&LabSpec::default()).expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let built = t0.elapsed();

    // Negative control: the kernel alone never takes a client to a backend through the VIP.
    let (answers, _) = vip_answers_without_balancer(&lab, lab.clients[0]);
    assert!(
        answers.is_empty(),
        "VIP answered before the daemon ran: {answers:?}"
    );

    let t1 = Instant::now();
    lab.start_daemon(&lb_ctl).expect("start lb-ctl daemon");
    let attached = t1.elapsed();
    wait_first_answer(&lab);
    let ready = t1.elapsed();
    wait_every_backend_in_ring(&lab);

    let t2 = Instant::now();
    let (failures, chosen) = ask_via_vip(&lab, &lab.clients, Ask::Everything);
    let traffic = t2.elapsed();
    assert_no_failures("client → VIP traffic", &failures);

    // Spread: each backend within ±30 % of an even share.
    let mut per_backend: BTreeMap<&str, usize> =
        lab.backends.iter().map(|b| (b.name.as_str(), 0)).collect();
    for b in chosen.values() {
        *per_backend.get_mut(b.as_str()).expect("known backend") += 1;
    }
    let even = lab.clients.len() as f64 / lab.backends.len() as f64;
    for (b, n) in &per_backend {
        let dev = (*n as f64 - even) / even;
        assert!(
            dev.abs() <= 0.30,
            "{b} got {n} clients, {:+.0} % off even ({even:.1}): {per_backend:?}",
            dev * 100.0
        );
    }

    assert_no_csum_errors(&lab);
    corrupted_checksums_survive_ikelb(&lab, &chosen);

    // The daemon's own account agrees: per client 6 frames went through the XDP forward path
    // (500, 4500, 3 fragments, ESP) and 4 replies through the reverse path; the probes above
    // add a few, and retries would add more ("at least").
    let clients = lab.clients.len() as f64;
    let text = lab
        .metrics()
        .unwrap_or_else(|e| panic!("daemon /metrics: {e:#}"));
    let count = |reason| {
        metrics::sum(
            &text,
            "ikelb_xdp_packets_total",
            &[("action", "redirect"), ("reason", reason)],
        )
    };
    let (fwd, rev) = (count("forward"), count("reverse"));
    assert!(
        fwd >= 6.0 * clients,
        "ikelb_xdp_packets_total forward {fwd} < 6 × {clients}"
    );
    assert!(
        rev >= 4.0 * clients,
        "ikelb_xdp_packets_total reverse {rev} < 4 × {clients}"
    );

    eprintln!(
        "ikelb: {} clients over {} backends {per_backend:?}; lab built in {built:.2?}, XDP \
         attached {attached:.2?} and answering {ready:.2?} after start; {} round trips via \
         the VIP in {traffic:.2?}; XDP redirect/forward {fwd}, redirect/reverse {rev}",
        lab.clients.len(),
        lab.backends.len(),
        lab.clients.len() * 4
    );
    let status = lab.stop_daemon().expect("stop the daemon");
    assert!(
        status.success(),
        "daemon exited with {status} on SIGTERM\n{}",
        lab.daemon_output_tail(20)
    );
}

#[test]
fn daemon_leaves_everything_else_to_the_kernel() {
    if skip_unless_root("daemon_leaves_everything_else_to_the_kernel") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        clients: 8,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    lab.start_daemon(&lb_ctl).expect("start lb-ctl daemon");
    wait_first_answer(&lab);
    wait_every_backend_in_ring(&lab);
    let client = lab.clients[0];

    let backend_datagrams = |lab: &Lab| -> u64 {
        let stats = lab.responder_stats().expect("responder stats");
        stats
            .iter()
            .map(|s| s.as_ref().expect("every responder answers").datagrams)
            .sum()
    };
    let before = backend_datagrams(&lab);
    let no_ports = || lab.gateway.snmp().expect("gateway snmp").get("Udp.NoPorts");
    let refused_before = no_ports();

    // A port outside the persistency group is the gateway's own business: its stack refuses
    // it, no backend sees it.
    let answer = lab
        .client_ns
        .run(|| {
            let probe = UdpProbe::bind(client).expect("bind client");
            probe
                .ask(SocketAddrV4::new(VIP, 80), 64, 1, TIMEOUT)
                .expect("ask")
        })
        .expect("client namespace");
    assert!(answer.is_none(), "VIP:80 answered: {answer:?}");
    assert_eq!(
        no_ports() - refused_before,
        1,
        "the gateway should refuse VIP:80 itself"
    );

    // ICMP to the VIP is answered by the gateway; the gateway reaches its backends (what
    // health checks need) and their replies to it are not taken for client traffic.
    let ping = |ns: &lab::NetNs, from: &str, to: &str| {
        ns.exec("ping", &["-c", "1", "-W", "2", "-I", from, to])
            .unwrap_or_else(|e| panic!("ping {to} from {from} in {}: {e:#}", ns.name()))
    };
    ping(&lab.client_ns, &client.to_string(), &VIP.to_string());
    for b in &lab.backends {
        ping(&lab.gateway, "int", &b.addr.to_string());
    }

    assert_eq!(
        backend_datagrams(&lab),
        before,
        "a backend got traffic that was not its own"
    );
    assert_no_csum_errors(&lab);
}

/// The health of backend `addr` as `lb-ctl backend list --json` reports it (`up`, `down`,
/// `unknown`).
fn backend_health(lab: &Lab, lb_ctl: &Path, addr: Ipv4Addr) -> anyhow::Result<String> {
    let out = lab.lb_ctl(lb_ctl, &["backend", "list", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let addr = addr.to_string();
    let backend = v["backends"]
        .as_array()
        .and_then(|list| list.iter().find(|b| b["address"] == addr.as_str()))
        .ok_or_else(|| anyhow::anyhow!("{addr} not in `backend list --json`: {out}"))?;
    Ok(backend["health"].as_str().unwrap_or_default().to_string())
}

fn wait_backend_health(lab: &Lab, lb_ctl: &Path, addr: Ipv4Addr, health: &str) {
    let what = format!("lb-ctl backend list to say {addr} is {health}");
    let waited = lab::wait_for(
        &what,
        Duration::from_secs(15),
        Duration::from_millis(50),
        || Ok((backend_health(lab, lb_ctl, addr)? == health).then_some(())),
    );
    if let Err(e) = waited {
        panic!("{e:#}\n{}", lab.daemon_output_tail(30));
    }
}

/// Health checks and persistence together (docs/operations.md, "Health checks"): when a backend stops
/// answering its ICMP health checks, exactly its clients move (each keeping IKE and NAT-T
/// together), the others stay; when it comes back, nobody moves back, and only clients the
/// balancer has not seen yet are given to it. Health is read with `lb-ctl backend list
/// --json`, so nothing waits on a guessed delay.
#[test]
fn failed_backend_loses_only_its_clients_and_takes_none_back() {
    if skip_unless_root("failed_backend_loses_only_its_clients_and_takes_none_back") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec::default()).expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    lab.start_daemon(&lb_ctl).expect("start lb-ctl daemon");
    wait_first_answer(&lab);
    wait_every_backend_in_ring(&lab);
    // 200 clients go through all three phases; 50 stay unseen until b1 is back.
    let (known, unseen) = lab.clients.split_at(200);
    let (b1_name, b1) = (lab.backends[0].name.clone(), lab.backends[0].addr);

    let (failures, before) = ask_via_vip(&lab, known, Ask::Ike);
    assert_no_failures("before the failure", &failures);
    let on_b1 = before.values().filter(|b| **b == b1_name).count();
    assert!(
        on_b1 > 0,
        "no client on {b1_name} to begin with: {before:?}"
    );

    // b1 stops answering pings but would still answer IKE: any move is ikelb's decision.
    lab.backends[0]
        .ns
        .sysctl("net/ipv4/icmp_echo_ignore_all", "1")
        .expect("sysctl");
    wait_backend_health(&lab, &lb_ctl, b1, "down");
    let (failures, during) = ask_via_vip(&lab, known, Ask::Ike);
    assert_no_failures("while b1 is down", &failures);
    let mut wrong = Vec::new();
    for (client, was) in &before {
        let now = &during[client];
        if (*was == b1_name && *now == b1_name) || (*was != b1_name && now != was) {
            wrong.push(format!("{client}: {was} → {now}"));
        }
    }
    assert_no_failures("only b1's clients move, all of them", &wrong);

    lab.backends[0]
        .ns
        .sysctl("net/ipv4/icmp_echo_ignore_all", "0")
        .expect("sysctl");
    wait_backend_health(&lab, &lb_ctl, b1, "up");
    // b1's slots come back `slot_move_delay` later (lb-ctl/src/state.rs, "Slot moves").
    if let Err(e) = lab::control::wait_ring_slots(&lab, b1, Duration::from_secs(15)) {
        panic!("{e:#}\n{}", lab.daemon_output_tail(30));
    }
    let (failures, after) = ask_via_vip(&lab, known, Ask::Ike);
    assert_no_failures("after b1 is back", &failures);
    let moved: Vec<String> = during
        .iter()
        .filter(|(c, b)| after[*c] != **b)
        .map(|(c, b)| format!("{c}: {b} → {}", after[c]))
        .collect();
    assert_no_failures("nobody moves back (persistence)", &moved);

    let (failures, fresh) = ask_via_vip(&lab, unseen, Ask::Ike);
    assert_no_failures("new clients after b1 is back", &failures);
    let fresh_on_b1 = fresh.values().filter(|b| **b == b1_name).count();
    assert!(
        fresh_on_b1 > 0,
        "no new client went to the recovered {b1_name}: {fresh:?}"
    );
    assert_no_csum_errors(&lab);
    eprintln!(
        "failover: {on_b1} of {} clients moved off {b1_name} and stayed moved; {fresh_on_b1} \
         of {} new clients went to it after it came back",
        known.len(),
        unseen.len()
    );
}

/// The zero `InCsumErrors` above mean something only if the receivers verify the frames ikelb
/// rewrote and redirected: a corrupted datagram sent through the VIP (forward) and one sent
/// back from the backend's service port (reverse) must each be counted by its receiver — the
/// incremental update keeps a bad checksum bad.
fn corrupted_checksums_survive_ikelb(lab: &Lab, chosen: &BTreeMap<Ipv4Addr, String>) {
    let client = lab.clients[0];
    let backend = lab
        .backends
        .iter()
        .find(|b| b.name == chosen[&client])
        .expect("the client's backend");
    let csum_errors = |ns: &lab::NetNs| ns.snmp().expect("snmp").get("Udp.InCsumErrors");
    let wait_count = |what: &str, ns: &lab::NetNs| {
        lab::wait_for(
            what,
            Duration::from_secs(2),
            Duration::from_millis(10),
            || Ok((csum_errors(ns) == 1).then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    };
    let from_client = SocketAddrV4::new(client, 40_000);
    lab.client_ns
        .run(|| send_bad_checksum(from_client, SocketAddrV4::new(VIP, 500)))
        .expect("client namespace")
        .expect("send a corrupted datagram to the VIP");
    wait_count(
        &format!(
            "{} to count the corrupted datagram from the VIP",
            backend.name
        ),
        &backend.ns,
    );
    let from_backend = SocketAddrV4::new(backend.addr, 500);
    backend
        .ns
        .run(|| send_bad_checksum(from_backend, from_client))
        .expect("backend namespace")
        .expect("send a corrupted reply");
    wait_count("the client to count the corrupted reply", &lab.client_ns);
    let elsewhere: Vec<_> = lab
        .udp_csum_errors()
        .expect("snmp")
        .into_iter()
        .filter(|(role, n)| *n != 0 && role != "client" && *role != backend.name)
        .collect();
    assert!(
        elsewhere.is_empty(),
        "checksum errors where none were sent: {elsewhere:?}"
    );
}
