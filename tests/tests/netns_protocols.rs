//! IPv6, ESP, SSTP and DSR with real traffic through a real XDP attachment and the real
//! daemon, in the protocol lab (`ikelb_tests::lab::Lab` with `ipv6` and `sstp`: the standard
//! lab with IPv6, a dual-stack virtual server with UDP 500/4500, TCP 443 and ESP), set up by
//! `ikelb_tests::fixture::protocols`. Namespaces are `ik6<pid>n<k>-…`. Root only: without
//! root each test says why and returns.
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

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddrV6};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ikelb_tests::fixture::protocols::{First, Patience, ProtocolLab, Step};
use ikelb_tests::lab::{self, send_bad_checksum, Lab, Mode, TCP_PORT, VIP, VIP6};

const BIG: usize = 4000;
const ESP_LEN: usize = 120;
const PATIENCE: Patience = Patience {
    tries: 3,
    timeout: Duration::from_millis(500),
};
const ENOUGH_FAILURES: usize = 10;

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

/// Each client with its family's VIP.
fn with_vip<A: Into<IpAddr> + Copy>(clients: &[A], vip: IpAddr) -> Vec<(IpAddr, IpAddr)> {
    clients.iter().map(|&c| (c.into(), vip)).collect()
}

#[test]
fn ipv6_clients_keep_udp_fragments_esp_and_tcp_on_one_backend() {
    const TEST: &str = "ipv6_clients_keep_udp_fragments_esp_and_tcp_on_one_backend";
    let Some(fx) = ProtocolLab::start(TEST, 120, Mode::Nat, &responder(), First::V6) else {
        return;
    };
    let lab = &fx.lab;
    let t0 = Instant::now();
    let clients = lab.clients6.clone();
    let steps = [
        Step::Udp { port: 500, len: 64 },
        Step::Udp {
            port: 4500,
            len: 64,
        },
        Step::Udp {
            port: 4500,
            len: BIG,
        },
        Step::Esp { len: ESP_LEN },
        Step::Tcp { port: TCP_PORT },
    ];
    let out = fx.exchange(
        &with_vip(&clients, VIP6.into()),
        &steps,
        PATIENCE,
        ENOUGH_FAILURES,
    );
    let took = t0.elapsed();
    fx.assert_no_failures("IPv6 clients through the VIP", &out.failures);
    assert_eq!(out.chosen.len(), clients.len());
    let used: BTreeSet<&String> = out.chosen.values().collect();
    assert_eq!(
        used.len(),
        lab.backends.len(),
        "every backend takes clients: {used:?}"
    );
    fx.assert_no_csum_errors();

    // The control plane sees the IPv6 clients: lookup names the backend that answered.
    let c = clients[7];
    let out_json = lab
        .lb_ctl(&fx.lb_ctl, &["lookup", &c.to_string(), "--json"])
        .expect("lookup");
    let v: serde_json::Value = serde_json::from_str(&out_json).expect("JSON");
    let r = &v["results"][0];
    let i = lab
        .backends
        .iter()
        .position(|b| b.name == out.chosen[&IpAddr::V6(c)])
        .unwrap();
    assert_eq!(r["source"], "persistence", "{r}");
    assert_eq!(r["vip"], VIP6.to_string(), "{r}");
    assert_eq!(r["backend"], lab.backends6[i].to_string(), "{r}");
    let list = lab
        .lb_ctl(&fx.lb_ctl, &["backend", "list", "--json"])
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
    let counters = fx.xdp_counters();
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
    fx.in_clients(|| {
        send_bad_checksum(
            SocketAddrV6::new(clients[0], 40_000, 0, 0),
            SocketAddrV6::new(b1, 9, 0, 0),
        )
    })
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
        out.spread()
    );
}

#[test]
fn ipv4_sstp_lands_on_the_backend_of_the_clients_ike() {
    const TEST: &str = "ipv4_sstp_lands_on_the_backend_of_the_clients_ike";
    let Some(fx) = ProtocolLab::start(TEST, 100, Mode::Nat, &responder(), First::V4) else {
        return;
    };
    let clients = fx.lab.clients.clone();
    // Windows falls back to SSTP when UDP is blocked: a fresh TCP connection to VIP:443
    // must reach the server that already knows the client.
    let steps = [
        Step::Udp { port: 500, len: 64 },
        Step::Udp {
            port: 4500,
            len: 64,
        },
        Step::Tcp { port: TCP_PORT },
        Step::Esp { len: ESP_LEN },
    ];
    let out = fx.exchange(
        &with_vip(&clients, VIP.into()),
        &steps,
        PATIENCE,
        ENOUGH_FAILURES,
    );
    fx.assert_no_failures("IPv4 clients: IKE, SSTP, ESP", &out.failures);
    assert_eq!(out.chosen.len(), clients.len());
    assert_eq!(
        out.chosen.values().collect::<BTreeSet<_>>().len(),
        fx.lab.backends.len(),
        "every backend takes clients"
    );
    fx.assert_no_csum_errors();
    let counters = fx.xdp_counters();
    assert_eq!(counters["drop/malformed"], 0.0, "{counters:?}");
    eprintln!(
        "{} IPv4 clients, IKE + SSTP + ESP on one backend each; spread {:?}",
        clients.len(),
        out.spread()
    );
}

#[test]
fn dsr_backends_answer_clients_directly() {
    const TEST: &str = "dsr_backends_answer_clients_directly";
    let Some(fx) = ProtocolLab::start(TEST, 40, Mode::Dsr, &responder(), First::Both) else {
        return;
    };
    let lab = &fx.lab;
    let direct_before = Lab::link_packets(&lab.client_ns, "bk").expect("bk counters");
    let via_gw_before = Lab::link_packets(&lab.client_ns, "eth0").expect("eth0 counters");
    let before = fx.xdp_counters();
    let mut clients = with_vip(&lab.clients, VIP.into());
    clients.extend(with_vip(&lab.clients6, VIP6.into()));
    let steps = [
        Step::Udp { port: 500, len: 64 },
        Step::Udp {
            port: 4500,
            len: 64,
        },
        Step::Esp { len: ESP_LEN },
        Step::Tcp { port: TCP_PORT },
    ];
    let out = fx.exchange(&clients, &steps, PATIENCE, ENOUGH_FAILURES);
    fx.assert_no_failures("DSR clients", &out.failures);
    // Every client asked one question per step, each answered once.
    let replies = (clients.len() * steps.len()) as u64;
    assert_eq!(out.chosen.len(), clients.len());
    assert_eq!(
        out.chosen.values().collect::<BTreeSet<_>>().len(),
        lab.backends.len(),
        "every backend takes clients"
    );
    let after = fx.xdp_counters();
    let delta = |k: &str| after[k] - before[k];
    // Requests crossed the program (MAC rewrite only); replies never came back through it.
    assert!(delta("redirect/forward") >= replies as f64, "{after:?}");
    assert_eq!(
        after["redirect/reverse"], 0.0,
        "DSR has no reverse path: {after:?}"
    );
    let direct = Lab::link_packets(&lab.client_ns, "bk").unwrap();
    let via_gw = Lab::link_packets(&lab.client_ns, "eth0").unwrap();
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
    fx.assert_no_csum_errors();
    eprintln!(
        "DSR: {} clients (IPv4 and IPv6) × (UDP 500, 4500, ESP, TCP 443): {replies} replies, \
         {direct_rx} packets on the direct link, {via_gw_rx} through the gateway; spread {:?}",
        clients.len(),
        out.spread()
    );
}
