//! Spoofed frames against a running daemon (`docs/security.md`, "A host on an attached L2
//! segment"), through the standard lab with real UDP clients and responders:
//!
//! * from an **L2 neighbour on the external segment** (a macvlan host of its own on the
//!   clients' link): a frame with a client's source address and the neighbour's MAC does not
//!   move the client's replies (`mac_move_rejected`; the client's next round is answered at
//!   once). The negative control makes the gateway's neighbour table agree with the attacker
//!   — the kernel's own view, the evidence ikelb trusts — and then the move happens and the
//!   client's replies go astray: the test can see a hijack.
//! * from the **internal segment** (a backend's namespace): a frame to the VIP is dropped as
//!   `not_client_interface` and changes nothing.
//! * **reverse-path leaks**: a backend's service-port traffic to an address that is not its
//!   client, or to another backend's client, is dropped (`reverse_not_client`); a frame with
//!   a backend's address from another MAC (`reverse_wrong_mac`) or arriving on the external
//!   interface (`reverse_wrong_interface`) too.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use ikelb_tests::lab::{
    self,
    control::{Clients, Round},
    flood::{attach_macvlan, link_mac, send_frames},
    lb_ctl_path, metrics, Lab, LabSpec, NetNs, GW_EXT, GW_INT, VIP,
};
use ikelb_tests::packet::{IpFrame, Ipv4Frame};

const WAIT: Duration = Duration::from_millis(400);

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

/// `ikelb_xdp_events_total{event}` or `ikelb_xdp_packets_total{reason}` now.
fn event(lab: &Lab, name: &str) -> f64 {
    let text = lab.metrics().expect("metrics");
    metrics::sum(&text, "ikelb_xdp_events_total", &[("event", name)])
}

fn dropped(lab: &Lab, reason: &str) -> f64 {
    let text = lab.metrics().expect("metrics");
    metrics::sum(
        &text,
        "ikelb_xdp_packets_total",
        &[("action", "drop"), ("reason", reason)],
    )
}

/// Waits (the metrics are read from per-CPU maps at scrape time) until `read` has grown by
/// `by` over `before`; returns the last value read.
fn grown(read: impl Fn() -> f64, before: f64, by: f64) -> f64 {
    let mut now = read();
    for _ in 0..20 {
        if now >= before + by {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = read();
    }
    now
}

/// Every client answered in one round, by the backend it had.
fn all_answered_by(
    round: &Round,
    had: &std::collections::BTreeMap<Ipv4Addr, String>,
) -> Vec<String> {
    had.iter()
        .filter_map(|(c, b)| match round.get(c) {
            Some(Some(now)) if now == b => None,
            Some(Some(now)) => Some(format!("{c}: answered by {now}, had {b}")),
            _ => Some(format!("{c}: no answer in the first round")),
        })
        .collect()
}

/// A UDP frame `src:port → dst:port` with the given MACs (real checksums).
fn frame(smac: [u8; 6], dmac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    Ipv4Frame::udp(
        smac,
        dmac,
        (src, port),
        (dst, port),
        b"spoofed by edge_spoof.rs",
    )
    .bytes()
}

/// The backend `lb-ctl lookup` names for `client`.
fn looked_up(lab: &Lab, lb_ctl: &std::path::Path, client: Ipv4Addr) -> Option<IpAddr> {
    let out = lab
        .lb_ctl(lb_ctl, &["lookup", &client.to_string(), "--json"])
        .expect("lb-ctl lookup");
    let v: serde_json::Value = serde_json::from_str(&out).expect("lookup JSON");
    v["results"][0]["backend"]
        .as_str()
        .and_then(|s| s.parse().ok())
}

#[test]
fn spoofed_frames_move_no_client_and_backends_leak_nothing() {
    if !lab::is_root() {
        eprintln!(
            "SKIP: needs root (network namespaces, veth, XDP); run `cargo xtask test` as root"
        );
        return;
    }
    let lb_ctl = lb_ctl_path().expect("lb-ctl");
    let mut lab = Lab::build(&LabSpec {
        clients: 12,
        ..LabSpec::default()
    })
    .expect("lab");
    lab.start_responders(&responder()).expect("responders");
    lab.start_daemon(&lb_ctl).expect("daemon");
    let clients = Clients::bind(&lab, &lab.clients.clone(), 4500).expect("client sockets");
    let had = clients
        .all_answered(3, WAIT)
        .expect("every client answered");
    let victim = lab.clients[0];

    let ext_mac = link_mac(&lab.gateway, GW_EXT).expect("ext MAC");
    let int_mac = link_mac(&lab.gateway, GW_INT).expect("int MAC");
    let attacker = NetNs::new(lab.prefix().name("atk")).expect("attacker namespace");
    let atk_mac = attach_macvlan(&lab.client_ns, "eth0", &attacker, "atk0").expect("macvlan");

    // 1. An L2 neighbour on the clients' segment claims the victim's address. (To port 500:
    // IKE never takes the slot fast path, which skips the entry — and any learning — for
    // bulk packets of clients refreshed this tick.)
    let before = event(&lab, "mac_move_rejected");
    send_frames(
        &attacker,
        "atk0",
        &[frame(atk_mac, ext_mac, victim, VIP, 500)],
    )
    .expect("send");
    let after = grown(|| event(&lab, "mac_move_rejected"), before, 1.0);
    assert_eq!(
        after - before,
        1.0,
        "the spoofed frame's move was not rejected"
    );
    let round = clients.round(WAIT).expect("round");
    let wrong = all_answered_by(&round, &had);
    assert!(
        wrong.is_empty(),
        "after a spoofed frame from an external neighbour: {wrong:?}"
    );

    // Negative control: when the kernel's neighbour table says the clients' router is the
    // attacker, the move is the kernel's truth and ikelb follows it — so a hijack is visible
    // to this test (the victim's replies go to the attacker's MAC).
    let router = "192.0.2.2";
    let real = lab
        .gateway
        .ip(&["-j", "neigh", "show", router, "dev", GW_EXT])
        .expect("neigh");
    lab.gateway
        .ip(&[
            "neigh",
            "replace",
            router,
            "lladdr",
            &mac_text(atk_mac),
            "dev",
            GW_EXT,
            "nud",
            "permanent",
        ])
        .expect("poison the gateway's own neighbour table");
    let before = event(&lab, "mac_move_accepted");
    send_frames(
        &attacker,
        "atk0",
        &[frame(atk_mac, ext_mac, victim, VIP, 500)],
    )
    .expect("send");
    let after = grown(|| event(&lab, "mac_move_accepted"), before, 1.0);
    assert_eq!(
        after - before,
        1.0,
        "with the FIB agreeing, the move must be accepted (rejected: {}; neighbours: {}; routes: {})",
        event(&lab, "mac_move_rejected"),
        lab.gateway.ip(&["neigh", "show"]).unwrap_or_default(),
        lab.gateway.ip(&["route", "get", &victim.to_string(), "from", &VIP.to_string(), "iif", GW_EXT]).unwrap_or_else(|e| e.to_string()),
    );
    let round = clients.round(WAIT).expect("round");
    assert!(
        matches!(round.get(&victim), Some(None)),
        "control: the victim's reply should have gone to the attacker's MAC, got {:?} ({real})",
        round.get(&victim)
    );
    // Back to the truth; the victim's own frames are confirmed and move it back. Its bulk
    // packets (these probes look like ESP on 4500) may take the slot fast path, which skips the
    // entry — and any learning — until the slot's first packet of the next tick (≈ 1.07 s):
    // allow three ticks.
    lab.gateway
        .ip(&["neigh", "del", router, "dev", GW_EXT])
        .expect("neigh del");
    lab.client_ns
        .exec("ping", &["-c", "1", "-W", "1", "192.0.2.1"])
        .expect("re-resolve the router");
    let mut wrong = Vec::new();
    for _ in 0..8 {
        wrong = all_answered_by(&clients.round(WAIT).expect("round"), &had);
        if wrong.is_empty() {
            break;
        }
    }
    assert!(
        wrong.is_empty(),
        "after the control, three ticks on: {wrong:?}"
    );

    // 2. The internal segment claims the victim's address toward the VIP.
    let b1 = &lab.backends[0];
    let b1_mac = link_mac(&b1.ns, "eth0").expect("b1 MAC");
    let before = dropped(&lab, "not_client_interface");
    send_frames(&b1.ns, "eth0", &[frame(b1_mac, int_mac, victim, VIP, 4500)]).expect("send");
    let after = grown(|| dropped(&lab, "not_client_interface"), before, 1.0);
    assert_eq!(
        after - before,
        1.0,
        "VIP traffic from the backends' side was not dropped"
    );
    let wrong = all_answered_by(&clients.round(WAIT).expect("round"), &had);
    assert!(
        wrong.is_empty(),
        "after a spoofed frame from the internal segment: {wrong:?}"
    );

    // 3. Reverse-path leaks. A client of another backend, and an address nobody sent from
    // whose ring slot names another backend.
    let b1_ip = IpAddr::V4(b1.addr);
    let others_client = *had
        .iter()
        .find(|(_, b)| **b != b1.name)
        .expect("a client of another backend")
        .0;
    let stranger = (1..=250)
        .map(|i| Ipv4Addr::new(100, 64, 200, i))
        .find(|&a| looked_up(&lab, &lb_ctl, a).is_some_and(|b| b != b1_ip))
        .expect("an address the ring gives to another backend");
    let before = dropped(&lab, "reverse_not_client");
    send_frames(
        &b1.ns,
        "eth0",
        &[
            frame(b1_mac, int_mac, b1.addr, others_client, 4500),
            frame(b1_mac, int_mac, b1.addr, stranger, 500),
        ],
    )
    .expect("send");
    let after = grown(|| dropped(&lab, "reverse_not_client"), before, 2.0);
    assert_eq!(
        after - before,
        2.0,
        "backend traffic to non-clients was not dropped"
    );

    // b1's address from b2's MAC, and from the external side.
    let b2 = &lab.backends[1];
    let b2_mac = link_mac(&b2.ns, "eth0").expect("b2 MAC");
    let mine = *had
        .iter()
        .find(|(_, b)| **b == b1.name)
        .expect("a client of b1")
        .0;
    let before = dropped(&lab, "reverse_wrong_mac");
    send_frames(
        &b2.ns,
        "eth0",
        &[frame(b2_mac, int_mac, b1.addr, mine, 4500)],
    )
    .expect("send");
    let after = grown(|| dropped(&lab, "reverse_wrong_mac"), before, 1.0);
    assert_eq!(
        after - before,
        1.0,
        "a backend's address from another MAC was not dropped"
    );
    let before = dropped(&lab, "reverse_wrong_interface");
    send_frames(
        &attacker,
        "atk0",
        &[frame(atk_mac, ext_mac, b1.addr, mine, 4500)],
    )
    .expect("send");
    let after = grown(|| dropped(&lab, "reverse_wrong_interface"), before, 1.0);
    assert_eq!(
        after - before,
        1.0,
        "a backend's address from the external side was not dropped"
    );

    // Nobody moved through all of it.
    let wrong = all_answered_by(&clients.round(WAIT).expect("round"), &had);
    assert!(wrong.is_empty(), "at the end: {wrong:?}");
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
