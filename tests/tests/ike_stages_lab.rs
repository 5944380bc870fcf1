//! Where an IKE client stopped, on real traffic (docs/metrics.md, "IKE stages"): a VPN server
//! that never answers IKE_SA_INIT (nothing listens on UDP 500; its health checks are ICMP only,
//! so it stays in the ring) leaves the client's IKE_SA_INIT counted as a request without a
//! response, the client counted in `ikelb_ike_clients{stage="ike_sa_init_sent"}`, and `lb-ctl
//! lookup` says so.
//!
//! Needs root (network namespaces, XDP); without it the test says so and returns.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use ikelb_tests::{
    lab::{self, control, metrics, Lab, LabSpec, VIP},
    packet::ike_message,
};

#[test]
fn an_unanswered_ike_sa_init_shows_in_the_metrics_and_in_lookup() {
    if !lab::is_root() {
        eprintln!("SKIP: needs root (network namespaces, XDP); run `cargo xtask test` as root");
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        clients: 2,
        backends: 1,
        ..LabSpec::default()
    })
    .expect("build the lab");
    let config = control::with_probes(&lab.daemon_config(), "[icmp]");
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon");
    let metric = |lab: &Lab, name: &str, labels: &[(&str, &str)]| {
        metrics::sum(&lab.metrics().unwrap_or_default(), name, labels)
    };
    lab::wait_for(
        "the backend up",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || Ok((metric(&lab, "ikelb_backend_up", &[]) >= 1.0).then_some(())),
    )
    .expect("backend up");
    let request = [("exchange", "ike_sa_init"), ("direction", "request")];
    let response = [("exchange", "ike_sa_init"), ("direction", "response")];
    assert_eq!(metric(&lab, "ikelb_ike_messages_total", &request), 0.0);

    let client = lab.clients[0];
    let init = ike_message(0x0102_0304_0506_0708, 0, 34, 0x08, 200);
    lab.client_ns
        .run(|| -> anyhow::Result<()> {
            let s = lab::sock::udp_bind(SocketAddr::V4(SocketAddrV4::new(client, 500)))?;
            s.send_to(&init, SocketAddrV4::new(VIP, 500))?;
            Ok(())
        })
        .expect("enter the clients' namespace")
        .expect("send IKE_SA_INIT");

    lab::wait_for(
        "the request counted and the client at stage ike_sa_init_sent",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let requests = metric(&lab, "ikelb_ike_messages_total", &request);
            let waiting = metric(&lab, "ikelb_ike_clients", &[("stage", "ike_sa_init_sent")]);
            Ok((requests == 1.0 && waiting == 1.0).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.metrics().unwrap_or_default()));
    assert_eq!(
        metric(&lab, "ikelb_ike_messages_total", &response),
        0.0,
        "the server never answered"
    );

    let json = lab
        .lb_ctl(&lb_ctl, &["lookup", &client.to_string(), "--json"])
        .expect("lookup --json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("lookup JSON");
    let entry = &v["results"][0]["persisted"];
    assert_eq!(entry["tier"], "probation", "{json}");
    assert_eq!(entry["ike_stage"], "ike_sa_init_sent", "{json}");
    let text = lab
        .lb_ctl(&lb_ctl, &["lookup", &client.to_string()])
        .expect("lookup");
    assert!(
        text.contains("ike: IKE_SA_INIT sent, no response from the backend"),
        "{text}"
    );
    // The other client sent nothing: no entry, no stage.
    let other: Ipv4Addr = lab.clients[1];
    let json = lab
        .lb_ctl(&lb_ctl, &["lookup", &other.to_string(), "--json"])
        .expect("lookup --json");
    assert!(!json.contains("ike_stage"), "{json}");
}
