//! The gateway's own addresses as sources (`docs/security.md`, "What a router checks"): the
//! daemon lists every local address of its namespace in `BACKEND_IDS_V4/V6` with
//! `lb_common::OWN_ADDRESS_ID` (`lb-ctl/src/own_addresses.rs`), and the data path drops a
//! frame to a VIP from one of them as `drop/source_own_address` before it gets an entry.
//!
//! From the clients' segment, frames to the VIP on UDP 500 whose source is the gateway's
//! external address and its internal one (spoofed: the gateway never sends to its own VIP
//! through the wire) are dropped and counted, and `lookup` shows no entry for either. A frame
//! from a lab client's address, sent the same way, gets an entry: the lookup can see one.

use std::net::Ipv4Addr;
use std::time::Duration;

use ikelb_tests::lab::{
    self,
    flood::{link_mac, send_frames},
    lb_ctl_path, metrics, Lab, LabSpec, GW_EXT, VIP,
};
use ikelb_tests::packet::{IpFrame, Ipv4Frame};

/// The gateway's addresses on `ext` and `int` (`tests/src/lab/topology.rs`).
const GW_EXT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const GW_INT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn dropped_own(lab: &Lab) -> f64 {
    let text = lab.metrics().expect("metrics");
    metrics::sum(
        &text,
        "ikelb_xdp_packets_total",
        &[("action", "drop"), ("reason", "source_own_address")],
    )
}

/// The control socket's `lookup` of `client`: its first result.
fn lookup(lab: &Lab, client: Ipv4Addr) -> serde_json::Value {
    let v = lab
        .request(&serde_json::json!({"command": "lookup", "client": client.to_string()}))
        .expect("lookup");
    v["results"][0].clone()
}

#[test]
fn frames_from_the_gateways_own_addresses_are_dropped_without_an_entry() {
    if !lab::is_root() {
        eprintln!("SKIP: needs root (network namespaces, veth, XDP)");
        return;
    }
    let lb_ctl = lb_ctl_path().expect("lb-ctl");
    let mut lab = Lab::build(&LabSpec {
        role: 'o',
        clients: 1,
        backends: 2,
        ..LabSpec::default()
    })
    .expect("lab");
    lab.start_daemon(&lb_ctl).expect("daemon");
    let ext_mac = link_mac(&lab.gateway, GW_EXT).expect("ext MAC");
    let client_mac = link_mac(&lab.client_ns, "eth0").expect("client MAC");
    let frame = |src: Ipv4Addr| {
        Ipv4Frame::udp(
            client_mac,
            ext_mac,
            (src, 500),
            (VIP, 500),
            b"spoofed by own_address.rs",
        )
        .bytes()
    };

    let before = dropped_own(&lab);
    send_frames(
        &lab.client_ns,
        "eth0",
        &[frame(GW_EXT_ADDR), frame(GW_INT_ADDR)],
    )
    .expect("send");
    let mut now = dropped_own(&lab);
    for _ in 0..40 {
        if now >= before + 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = dropped_own(&lab);
    }
    assert_eq!(
        now - before,
        2.0,
        "frames from the gateway's own addresses: drop/source_own_address\n{}",
        lab.daemon_output_tail(30)
    );
    for own in [GW_EXT_ADDR, GW_INT_ADDR] {
        let r = lookup(&lab, own);
        assert!(r.is_object(), "lookup {own}: no result: {r}");
        assert!(
            r.get("persisted").is_none(),
            "lookup {own}: the gateway's own address got an entry: {r}"
        );
    }

    // Control: the same frame from a client's address gets an entry the lookup shows.
    let client = lab.clients[0];
    send_frames(&lab.client_ns, "eth0", &[frame(client)]).expect("send");
    let mut r = lookup(&lab, client);
    for _ in 0..40 {
        if r.get("persisted").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        r = lookup(&lab, client);
    }
    assert!(
        r["persisted"].is_object(),
        "control: a client's frame got no entry: {r}"
    );
    assert_eq!(dropped_own(&lab), now, "a client's frame is no own address");
}
