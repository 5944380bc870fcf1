//! Issue 6 with real traffic through a real XDP attachment and the real daemon, in the
//! protocol lab (`ikelb_tests::lab::dual`: the standard lab with IPv6, a dual-stack virtual
//! server with UDP 500/4500, TCP 443 and ESP). Namespaces are `ik6<pid>n<k>-…`. Root only:
//! without root each test says why and returns.
//!
//! * `ipv6_clients_keep_udp_fragments_esp_and_tcp_on_one_backend`: 120 IPv6 client addresses
//!   send UDP 500, UDP 4500, a 4,000-byte UDP datagram their stack fragments, ESP from a raw
//!   socket and a TCP 443 exchange to the IPv6 VIP; one backend answers each client, from
//!   the VIP, having seen the client's own address; no receiver counts a checksum error (and
//!   one does count a corrupted datagram: the control); `lb-ctl lookup` agrees.
//! * `ipv4_sstp_lands_on_the_backend_of_the_clients_ike`: 100 IPv4 clients do IKE (UDP
//!   500/4500), then ESP and a real TCP connection to VIP:443: the same backend every time.
//! * `dsr_backends_answer_clients_directly`: `mode: dsr`, backends own both VIPs on `lo`;
//!   UDP, ESP and TCP over both families are answered from the VIP by the client's backend,
//!   the replies arrive on the client side's direct link and never cross the gateway (the
//!   reverse path counts nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ikelb_tests::lab::{
    self,
    dual::{DualLab, Mode, TCP_PORT, VIP6},
    metrics,
    traffic6::{send_bad_checksum6, tcp_ask, Esp6Probe, Reply6, Udp6Probe},
    EspProbe, LabSpec, UdpProbe, VIP,
};

const BIG: usize = 4000;
const ESP_LEN: usize = 120;
const TRIES: u32 = 3;
const TIMEOUT: Duration = Duration::from_millis(500);
const ENOUGH_FAILURES: usize = 10;

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

/// What one answer must look like; `Ok(backend name)` or how it differed.
fn check(
    what: &str,
    reply: Option<Reply6>,
    client: IpAddr,
    from: SocketAddr,
    len: Option<usize>,
    backend: Option<&str>,
) -> Result<String, String> {
    let Some(r) = reply else {
        return Err(format!("{client} {what} → {from}: no answer"));
    };
    let mut bad = Vec::new();
    if r.from != from {
        bad.push(format!("answer came from {} (want {from})", r.from));
    }
    if r.echo.seen != client {
        bad.push(format!(
            "backend saw {} (want the client's own address)",
            r.echo.seen
        ));
    }
    if let Some(len) = len {
        if r.echo.len != len {
            bad.push(format!("backend got {} bytes (want {len})", r.echo.len));
        }
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
            bad.push(format!(
                "answered by {} (want {b}, the client's backend)",
                r.echo.backend
            ));
        }
    }
    if bad.is_empty() {
        Ok(r.echo.backend)
    } else {
        Err(format!("{client} {what} → {from}: {}", bad.join("; ")))
    }
}

/// Records `result` for `client`: the first answer fixes its backend.
fn note(result: Result<String, String>, backend: &mut Option<String>, failures: &mut Vec<String>) {
    match result {
        Ok(b) => *backend = Some(b),
        Err(e) => failures.push(e),
    }
}

fn assert_no_failures(what: &str, failures: &[String], lab: &DualLab) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures, first ones:\n  {}\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  "),
        lab.lab.daemon_output_tail(30)
    );
}

fn as_v4(r: Option<lab::Reply>) -> Option<Reply6> {
    r.map(|r| Reply6 {
        from: r.from.into(),
        echo: r.echo,
    })
}

/// Wait until `ask` gets an answer through the VIP (attachment comes before the maps and
/// the health checks settle); on timeout, fail with the daemon's output.
fn wait_first_answer<T: Send>(
    lab: &DualLab,
    what: &str,
    ask: impl FnMut() -> anyhow::Result<Option<T>> + Send,
) {
    let first = lab
        .lab
        .client_ns
        .run(|| lab::wait_for(what, Duration::from_secs(30), Duration::ZERO, ask))
        .expect("client namespace");
    if let Err(e) = first {
        panic!("{e:#}\n{}", lab.lab.daemon_output_tail(40));
    }
}

/// The XDP verdict counters from `/metrics`: (action/reason → packets).
fn xdp_counters(lab: &DualLab) -> BTreeMap<String, f64> {
    let text = lab.lab.metrics().expect("scrape /metrics");
    metrics::samples(&text, "ikelb_xdp_packets_total")
        .into_iter()
        .map(|s| {
            (
                format!("{}/{}", s.label("action"), s.label("reason")),
                s.value,
            )
        })
        .collect()
}

fn assert_no_csum_errors(lab: &DualLab) {
    let v4 = lab.lab.udp_csum_errors().expect("snmp");
    let v6 = lab.udp6_csum_errors().expect("snmp6");
    let bad: Vec<_> = v4.iter().chain(&v6).filter(|(_, n)| *n != 0).collect();
    assert!(
        bad.is_empty(),
        "UDP checksum errors must stay 0 everywhere: {bad:?}"
    );
}

#[test]
fn ipv6_clients_keep_udp_fragments_esp_and_tcp_on_one_backend() {
    if skip_unless_root("ipv6_clients_keep_udp_fragments_esp_and_tcp_on_one_backend") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let spec = LabSpec {
        clients: 120,
        ..LabSpec::default()
    };
    let mut lab = DualLab::build(&spec, Mode::Nat).expect("build the protocol lab");
    lab.start_responders(&responder())
        .expect("start responders");
    lab.start_daemon(&lb_ctl).expect("start lb-ctl daemon");
    let first = lab.clients6[0];
    wait_first_answer(&lab, "the first IPv6 answer through the VIP", || {
        let probe = Udp6Probe::bind(first)?;
        probe.ask(
            SocketAddrV6::new(VIP6, 500, 0, 0),
            64,
            1,
            Duration::from_millis(200),
        )
    });

    let t0 = Instant::now();
    let clients = lab.clients6.clone();
    let (failures, chosen) = lab
        .lab
        .client_ns
        .run(|| {
            let mut failures = Vec::new();
            let mut chosen = BTreeMap::new();
            for &c in &clients {
                if failures.len() >= ENOUGH_FAILURES {
                    break;
                }
                let client = IpAddr::V6(c);
                let probe = Udp6Probe::bind(c).expect("bind client");
                let mut backend: Option<String> = None;
                for (port, len) in [(500, 64), (4500, 64), (4500, BIG)] {
                    let to = SocketAddrV6::new(VIP6, port, 0, 0);
                    let r = probe.ask(to, len, TRIES, TIMEOUT).expect("ask");
                    let what = format!("UDP {len} B");
                    note(
                        check(&what, r, client, to.into(), Some(len), backend.as_deref()),
                        &mut backend,
                        &mut failures,
                    );
                }
                let esp = Esp6Probe::bind(c).expect("bind ESP");
                let r = esp.ask(VIP6, ESP_LEN, TRIES, TIMEOUT).expect("ask ESP");
                let to = SocketAddr::new(VIP6.into(), 0);
                note(
                    check("ESP", r, client, to, Some(ESP_LEN), backend.as_deref()),
                    &mut backend,
                    &mut failures,
                );
                let to = SocketAddr::new(VIP6.into(), TCP_PORT);
                let r = tcp_ask(client, to, TRIES, TIMEOUT).expect("TCP");
                note(
                    check("TCP 443", r, client, to, None, backend.as_deref()),
                    &mut backend,
                    &mut failures,
                );
                if let Some(b) = backend {
                    chosen.insert(c, b);
                }
            }
            (failures, chosen)
        })
        .expect("client namespace");
    let took = t0.elapsed();
    assert_no_failures("IPv6 clients through the VIP", &failures, &lab);
    assert_eq!(chosen.len(), clients.len());
    let used: BTreeSet<&String> = chosen.values().collect();
    assert_eq!(
        used.len(),
        lab.lab.backends.len(),
        "every backend takes clients: {used:?}"
    );
    assert_no_csum_errors(&lab);

    // The control plane sees the IPv6 clients: lookup names the backend that answered.
    let c = clients[7];
    let out = lab
        .lab
        .lb_ctl(&lb_ctl, &["lookup", &c.to_string(), "--json"])
        .expect("lookup");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let r = &v["results"][0];
    let i = lab
        .lab
        .backends
        .iter()
        .position(|b| b.name == chosen[&c])
        .unwrap();
    assert_eq!(r["source"], "persistence", "{r}");
    assert_eq!(r["vip"], VIP6.to_string(), "{r}");
    assert_eq!(r["backend"], lab.backends6[i].to_string(), "{r}");
    let list = lab
        .lab
        .lb_ctl(&lb_ctl, &["backend", "list", "--json"])
        .expect("list");
    let list: serde_json::Value = serde_json::from_str(&list).expect("JSON");
    let clients_of_v6: u64 = list["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["address"].as_str().is_some_and(|a| a.contains(':')))
        .map(|b| b["clients"].as_u64().unwrap())
        .sum();
    assert_eq!(clients_of_v6, clients.len() as u64, "{list}");

    // The data path's own account: every exchange forwarded and reversed, NDP passed, nothing
    // malformed.
    let counters = xdp_counters(&lab);
    let exchanges = clients.len() as f64 * 5.0;
    assert!(counters["redirect/forward"] >= exchanges, "{counters:?}");
    assert!(counters["redirect/reverse"] >= exchanges, "{counters:?}");
    assert!(
        counters["pass/icmpv6"] > 0.0,
        "NDP crosses the program: {counters:?}"
    );
    assert_eq!(counters["drop/malformed"], 0.0, "{counters:?}");
    assert_eq!(counters["pass/ipv6_ext_header"], 0.0, "{counters:?}");

    // Receivers really verify IPv6 UDP checksums: a corrupted datagram is counted.
    let b1 = lab.backends6[0];
    lab.lab
        .client_ns
        .run(|| {
            send_bad_checksum6(
                SocketAddrV6::new(clients[0], 40_000, 0, 0),
                SocketAddrV6::new(b1, 9, 0, 0),
            )
        })
        .expect("client namespace")
        .expect("send a corrupted datagram");
    lab::wait_for(
        "b1 to count it",
        Duration::from_secs(2),
        Duration::from_millis(10),
        || {
            let errors = lab.udp6_csum_errors()?;
            Ok((errors.iter().any(|(r, n)| r == "b1" && *n == 1)).then_some(()))
        },
    )
    .expect("Udp6InCsumErrors counts a corrupted datagram");
    eprintln!(
        "{} IPv6 clients × (UDP 500, 4500, {BIG} B fragmented, ESP, TCP 443) in {took:.2?}; \
         spread {:?}",
        clients.len(),
        spread(&chosen)
    );
}

fn spread<K>(chosen: &BTreeMap<K, String>) -> BTreeMap<&str, usize> {
    let mut s = BTreeMap::new();
    for b in chosen.values() {
        *s.entry(b.as_str()).or_default() += 1;
    }
    s
}

#[test]
fn ipv4_sstp_lands_on_the_backend_of_the_clients_ike() {
    if skip_unless_root("ipv4_sstp_lands_on_the_backend_of_the_clients_ike") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let spec = LabSpec {
        clients: 100,
        ..LabSpec::default()
    };
    let mut lab = DualLab::build(&spec, Mode::Nat).expect("build the protocol lab");
    lab.start_responders(&responder())
        .expect("start responders");
    lab.start_daemon(&lb_ctl).expect("start lb-ctl daemon");
    let first = lab.lab.clients[0];
    wait_first_answer(&lab, "the first IPv4 answer through the VIP", || {
        UdpProbe::bind(first)?.ask(
            SocketAddrV4::new(VIP, 500),
            64,
            1,
            Duration::from_millis(200),
        )
    });

    let clients = lab.lab.clients.clone();
    let (failures, chosen) = lab
        .lab
        .client_ns
        .run(|| {
            let mut failures = Vec::new();
            let mut chosen = BTreeMap::new();
            for &c in &clients {
                if failures.len() >= ENOUGH_FAILURES {
                    break;
                }
                let client = IpAddr::V4(c);
                let probe = UdpProbe::bind(c).expect("bind client");
                let mut backend: Option<String> = None;
                for port in [500, 4500] {
                    let to = SocketAddrV4::new(VIP, port);
                    let r = as_v4(probe.ask(to, 64, TRIES, TIMEOUT).expect("ask"));
                    note(
                        check("UDP", r, client, to.into(), Some(64), backend.as_deref()),
                        &mut backend,
                        &mut failures,
                    );
                }
                // Windows falls back to SSTP when UDP is blocked: a fresh TCP connection to
                // VIP:443 must reach the server that already knows the client.
                let to = SocketAddr::new(VIP.into(), TCP_PORT);
                let r = tcp_ask(client, to, TRIES, TIMEOUT).expect("TCP");
                note(
                    check("TCP 443", r, client, to, None, backend.as_deref()),
                    &mut backend,
                    &mut failures,
                );
                let esp = EspProbe::bind(c).expect("bind ESP");
                let r = as_v4(esp.ask(VIP, ESP_LEN, TRIES, TIMEOUT).expect("ask ESP"));
                let to = SocketAddr::new(VIP.into(), 0);
                note(
                    check("ESP", r, client, to, Some(ESP_LEN), backend.as_deref()),
                    &mut backend,
                    &mut failures,
                );
                if let Some(b) = backend {
                    chosen.insert(c, b);
                }
            }
            (failures, chosen)
        })
        .expect("client namespace");
    assert_no_failures("IPv4 clients: IKE, SSTP, ESP", &failures, &lab);
    assert_eq!(chosen.len(), clients.len());
    assert_eq!(
        chosen.values().collect::<BTreeSet<_>>().len(),
        lab.lab.backends.len(),
        "every backend takes clients"
    );
    assert_no_csum_errors(&lab);
    let counters = xdp_counters(&lab);
    assert_eq!(counters["drop/malformed"], 0.0, "{counters:?}");
    eprintln!(
        "{} IPv4 clients, IKE + SSTP + ESP on one backend each; spread {:?}",
        clients.len(),
        spread(&chosen)
    );
}

#[test]
fn dsr_backends_answer_clients_directly() {
    if skip_unless_root("dsr_backends_answer_clients_directly") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let spec = LabSpec {
        clients: 40,
        ..LabSpec::default()
    };
    let mut lab = DualLab::build(&spec, Mode::Dsr).expect("build the DSR lab");
    lab.start_responders(&responder())
        .expect("start responders");
    lab.start_daemon(&lb_ctl).expect("start lb-ctl daemon");
    let (first4, first6) = (lab.lab.clients[0], lab.clients6[0]);
    wait_first_answer(&lab, "the first DSR answers", || {
        let a = UdpProbe::bind(first4)?.ask(
            SocketAddrV4::new(VIP, 500),
            64,
            1,
            Duration::from_millis(200),
        )?;
        let b = Udp6Probe::bind(first6)?.ask(
            SocketAddrV6::new(VIP6, 500, 0, 0),
            64,
            1,
            Duration::from_millis(200),
        )?;
        Ok(a.zip(b))
    });

    let direct_before = DualLab::link_packets(&lab.lab.client_ns, "bk").expect("bk counters");
    let via_gw_before = DualLab::link_packets(&lab.lab.client_ns, "eth0").expect("eth0 counters");
    let before = xdp_counters(&lab);
    let clients: Vec<(IpAddr, IpAddr)> = lab
        .lab
        .clients
        .iter()
        .map(|&c| (IpAddr::V4(c), IpAddr::V4(VIP)))
        .chain(
            lab.clients6
                .iter()
                .map(|&c| (IpAddr::V6(c), IpAddr::V6(VIP6))),
        )
        .collect();
    let (failures, chosen, replies) = lab
        .lab
        .client_ns
        .run(|| {
            let mut failures = Vec::new();
            let mut chosen = BTreeMap::new();
            let mut replies = 0u64;
            for &(client, vip) in &clients {
                if failures.len() >= ENOUGH_FAILURES {
                    break;
                }
                let mut backend: Option<String> = None;
                for port in [500, 4500] {
                    let to = SocketAddr::new(vip, port);
                    let r = match (client, vip) {
                        (IpAddr::V4(c), IpAddr::V4(v)) => as_v4(
                            UdpProbe::bind(c)
                                .unwrap()
                                .ask(SocketAddrV4::new(v, port), 64, TRIES, TIMEOUT)
                                .unwrap(),
                        ),
                        (IpAddr::V6(c), IpAddr::V6(v)) => Udp6Probe::bind(c)
                            .unwrap()
                            .ask(SocketAddrV6::new(v, port, 0, 0), 64, TRIES, TIMEOUT)
                            .unwrap(),
                        _ => unreachable!(),
                    };
                    note(
                        check("UDP", r, client, to, Some(64), backend.as_deref()),
                        &mut backend,
                        &mut failures,
                    );
                }
                let r = match (client, vip) {
                    (IpAddr::V4(c), IpAddr::V4(v)) => as_v4(
                        EspProbe::bind(c)
                            .unwrap()
                            .ask(v, ESP_LEN, TRIES, TIMEOUT)
                            .unwrap(),
                    ),
                    (IpAddr::V6(c), IpAddr::V6(v)) => Esp6Probe::bind(c)
                        .unwrap()
                        .ask(v, ESP_LEN, TRIES, TIMEOUT)
                        .unwrap(),
                    _ => unreachable!(),
                };
                note(
                    check(
                        "ESP",
                        r,
                        client,
                        SocketAddr::new(vip, 0),
                        Some(ESP_LEN),
                        backend.as_deref(),
                    ),
                    &mut backend,
                    &mut failures,
                );
                let to = SocketAddr::new(vip, TCP_PORT);
                let r = tcp_ask(client, to, TRIES, TIMEOUT).unwrap();
                note(
                    check("TCP 443", r, client, to, None, backend.as_deref()),
                    &mut backend,
                    &mut failures,
                );
                replies += 4;
                if let Some(b) = backend {
                    chosen.insert(client, b);
                }
            }
            (failures, chosen, replies)
        })
        .expect("client namespace");
    assert_no_failures("DSR clients", &failures, &lab);
    assert_eq!(chosen.len(), clients.len());
    assert_eq!(
        chosen.values().collect::<BTreeSet<_>>().len(),
        lab.lab.backends.len(),
        "every backend takes clients"
    );
    let after = xdp_counters(&lab);
    let delta = |k: &str| after[k] - before[k];
    // Requests crossed the program (MAC rewrite only); replies never came back through it.
    assert!(delta("redirect/forward") >= replies as f64, "{after:?}");
    assert_eq!(
        after["redirect/reverse"], 0.0,
        "DSR has no reverse path: {after:?}"
    );
    let direct = DualLab::link_packets(&lab.lab.client_ns, "bk").unwrap();
    let via_gw = DualLab::link_packets(&lab.lab.client_ns, "eth0").unwrap();
    let direct_rx = direct.0 - direct_before.0;
    let via_gw_rx = via_gw.0 - via_gw_before.0;
    assert!(
        direct_rx >= replies,
        "replies arrive on the backends' segment: {direct_rx} packets for {replies} replies"
    );
    // What still reaches the clients through the gateway: TCP handshakes' ACKs do not come
    // back that way, only the gateway's own neighbour traffic.
    assert!(
        via_gw_rx < replies / 10,
        "{via_gw_rx} packets reached the clients through the gateway for {replies} replies"
    );
    assert_no_csum_errors(&lab);
    eprintln!(
        "DSR: {} clients (IPv4 and IPv6) × (UDP 500, 4500, ESP, TCP 443): {replies} replies, \
         {direct_rx} packets on the direct link, {via_gw_rx} through the gateway; spread {:?}",
        clients.len(),
        spread(&chosen)
    );
}
