//! The IKE health probe against real strongSwan responders (the interop lab of
//! `tests/ikev2_interop.rs`, `ikelb_tests::ike`): a responder whose charon dies while the
//! server still answers ping.
//!
//! Assertions (numbered; the tests cite them by number):
//! 1. with `probes: [icmp, ike]` (the default) the IKE probe sees every live charon answer;
//! 2. once a responder's charon is killed, ikelb marks it down (`ikelb_backend_up` 0, status
//!    `down` with `icmp up, ike down`) while its ICMP probes keep succeeding;
//! 3. its clients, re-initiating, come up on the other responders, and every other client
//!    keeps its IKE SA (same responder, same unique id and SPIs) and its tunnel;
//! 4. once charon is started again, the responder is up again, and still nobody has moved;
//! 5. the control: with `probes: [icmp]` a dead charon does *not* take the responder out
//!    (it stays up through more than `fall` health rounds after the kill).
//!
//! The tests need root and strongSwan; without them each prints why and returns.

use std::net::Ipv4Addr;
use std::time::Duration;

use ikelb_tests::fixture::interop::{Balancer, InteropLab};
use ikelb_tests::ike::{ClientReport, Fragmentation, Gateway, IkeLab, IkeLabSpec};
use ikelb_tests::lab::{self, control};
use serde_json::json;

const CLIENTS: usize = 12;
/// One public address per client in use or so: the clients spread over every responder.
const NAT_ADDRS: usize = 12;
const RESPONDERS: usize = 3;
/// Generous: a setup takes tens of milliseconds; one that needs retransmits still finishes
/// within charon's ~7 s retransmit budget.
const INITIATE_TIMEOUT: Duration = Duration::from_secs(15);
const PINGS: u32 = 3;
/// How long the daemon may take to see a change: the lab's health checks (200 ms interval,
/// timeout 150 ms, fall 3, rise 1) need ~0.8 s; the rest is slack for a busy machine.
const NOTICE_BOUND: Duration = Duration::from_secs(10);
/// The lab's `health_check.fall`.
const FALL: f64 = 3.0;

fn spec(gateway: Gateway, clients: usize, nat_addrs: usize) -> IkeLabSpec {
    IkeLabSpec {
        clients,
        nat_addrs,
        responders: RESPONDERS,
        fragmentation: Fragmentation::Ike,
        gateway,
        client_dpd: None,
        mobike: false,
    }
}

fn metrics(lab: &IkeLab) -> String {
    lab.lab
        .metrics()
        .unwrap_or_else(|e| panic!("no /metrics: {e:#}"))
}

/// `ikelb_health_checks_total{backend=addr,probe,result}`.
fn checks(lab: &IkeLab, addr: Ipv4Addr, probe: &str, result: &str) -> f64 {
    lab::metrics::sum(
        &metrics(lab),
        "ikelb_health_checks_total",
        &[
            ("backend", &addr.to_string()),
            ("probe", probe),
            ("result", result),
        ],
    )
}

/// `ikelb_backend_up{backend=addr}`.
fn backend_up(lab: &IkeLab, addr: Ipv4Addr) -> Result<bool, String> {
    let text = lab
        .lab
        .metrics()
        .map_err(|e| format!("no /metrics: {e:#}"))?;
    let addr = addr.to_string();
    lab::metrics::samples(&text, "ikelb_backend_up")
        .iter()
        .find(|s| s.label("backend") == addr)
        .map(|s| s.value != 0.0)
        .ok_or_else(|| format!("/metrics has no ikelb_backend_up for {addr}"))
}

/// Wait until `ikelb_backend_up{backend=addr}` is `up`.
fn wait_up(test: &str, lab: &IkeLab, addr: Ipv4Addr, up: bool, what: &str) -> Duration {
    let t = std::time::Instant::now();
    lab::wait_for(
        &format!("ikelb to mark {addr} {}", if up { "up" } else { "down" }),
        NOTICE_BOUND,
        Duration::from_millis(50),
        || Ok(backend_up(lab, addr).ok().filter(|&u| u == up)),
    )
    .unwrap_or_else(|e| panic!("{test}: {what}: {e:#}\n{}", lab.lab.daemon_output_tail(30)));
    t.elapsed()
}

/// The backend `addr` as `backend_list` reports it: (health, [(probe, health)]).
fn status(lab: &IkeLab, addr: Ipv4Addr) -> (String, Vec<(String, String)>) {
    let reply = lab
        .lab
        .request(&json!({"command": "backend_list"}))
        .unwrap_or_else(|e| panic!("backend_list: {e:#}"));
    let b = reply["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("backend_list has no {addr}: {reply}"));
    let probes = b["probes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["probe"].as_str().unwrap_or("?").to_owned(),
                        p["health"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (b["health"].as_str().unwrap_or("?").to_owned(), probes)
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// What must not change for a client nobody moved: its responder and its SA's identity.
fn identity(r: &ClientReport) -> (Option<usize>, Option<(u32, String)>) {
    (
        r.established_at,
        r.sa.as_ref().map(|s| (s.uniqueid, s.initiator_spi.clone())),
    )
}

/// Assertions 1–4.
#[test]
fn ike_probe_takes_out_a_responder_whose_charon_died_and_brings_it_back() {
    const TEST: &str = "ike_probe_takes_out_a_responder_whose_charon_died_and_brings_it_back";
    let Some(mut fx) = InteropLab::start(TEST, Balancer::Ikelb, |g| spec(g, CLIENTS, NAT_ADDRS))
    else {
        return;
    };
    let lab = &mut fx.lab;

    let initiations = lab.initiate_all(INITIATE_TIMEOUT);
    let pings = lab.ping_all(PINGS);
    let before = lab
        .snapshot(Some(&initiations), Some(&pings))
        .unwrap_or_else(|e| panic!("{TEST}: collecting SAs and logs: {e:#}"));
    eprintln!("{TEST}: before\n{}", before.table());
    let problems = before.connectivity_problems();
    assert!(
        problems.is_empty(),
        "{TEST}: not every client connected before the test: {problems:?}\n{}",
        lab.responder_log_tails(20)
    );

    // Assertion 1.
    for r in &lab.responders {
        let ok = checks(lab, r.addr, "ike", "success");
        assert!(
            ok > 0.0,
            "{TEST}: assertion 1: no successful IKE probe of {} ({}): {}",
            r.name,
            r.addr,
            lab.lab.daemon_output_tail(20)
        );
    }

    let per = before.clients_per_responder();
    let dead = (0..per.len()).max_by_key(|&r| per[r]).expect("responders");
    let addr = lab.responders[dead].addr;
    let moved: Vec<usize> = before
        .clients
        .iter()
        .filter(|c| c.established_at == Some(dead))
        .map(|c| c.index)
        .collect();
    assert!(!moved.is_empty(), "{TEST}: nobody on {addr}: {per:?}");

    // Assertion 2.
    // IKE failures counted from before the kill (every one that takes it down comes after),
    // ping successes from after it (they prove the server still answers).
    let ike_failed_before = checks(lab, addr, "ike", "error") + checks(lab, addr, "ike", "timeout");
    lab.kill_responder_charon(dead)
        .unwrap_or_else(|e| panic!("{TEST}: killing charon on {addr}: {e:#}"));
    let icmp_at_kill = checks(lab, addr, "icmp", "success");
    let noticed = wait_up(TEST, lab, addr, false, "assertion 2");
    let (health, probes) = status(lab, addr);
    assert_eq!(
        (health.as_str(), probes.clone()),
        ("down", pairs(&[("icmp", "up"), ("ike", "down")])),
        "{TEST}: assertion 2: backend_list of {addr}"
    );
    let icmp_ok = checks(lab, addr, "icmp", "success") - icmp_at_kill;
    let ike_failed =
        checks(lab, addr, "ike", "error") + checks(lab, addr, "ike", "timeout") - ike_failed_before;
    assert!(
        icmp_ok > 0.0 && ike_failed >= FALL,
        "{TEST}: assertion 2: since the kill {addr} answered {icmp_ok} pings and failed {ike_failed} IKE probes"
    );
    let error = lab
        .lab
        .daemon_output_tail(200)
        .lines()
        .rev()
        .find(|l| l.contains("failed ike probes"))
        .map(str::to_owned);
    eprintln!(
        "{TEST}: charon on {addr} killed; down after {noticed:?}, {icmp_ok} pings answered \
         meanwhile, {ike_failed} IKE probes failed; daemon: {}",
        error.as_deref().unwrap_or("(no log line)")
    );

    // Assertion 3: its clients start over and come up elsewhere.
    for &i in &moved {
        lab.clients[i]
            .charon
            .terminate_ike("vpn")
            .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    }
    let again = lab.initiate(&moved, INITIATE_TIMEOUT);
    for (k, &i) in moved.iter().enumerate() {
        assert!(
            again[k].ok,
            "{TEST}: assertion 3: client{i:02} did not re-establish:\n{}",
            again[k].output
        );
    }

    // Assertion 4: charon comes back, so does the backend.
    lab.restart_responder_charon(dead)
        .unwrap_or_else(|e| panic!("{TEST}: restarting charon on {addr}: {e:#}"));
    let back = wait_up(TEST, lab, addr, true, "assertion 4");
    let (health, probes) = status(lab, addr);
    assert_eq!(
        (health.as_str(), probes),
        ("up", pairs(&[("icmp", "up"), ("ike", "up")])),
        "{TEST}: assertion 4: backend_list of {addr}"
    );

    // Assertions 3 and 4: where everyone is now.
    let pings = lab.ping_all(PINGS);
    let after = lab
        .snapshot(None, Some(&pings))
        .unwrap_or_else(|e| panic!("{TEST}: collecting SAs and logs: {e:#}"));
    eprintln!("{TEST}: after\n{}", after.table());
    let problems = after.connectivity_problems();
    assert!(
        problems.is_empty(),
        "{TEST}: assertion 3: clients not connected after the failover: {problems:?}"
    );
    for c in &after.clients {
        let was = &before.clients[c.index];
        if moved.contains(&c.index) {
            assert!(
                c.established_at.is_some() && c.established_at != Some(dead),
                "{TEST}: assertion 3: {} is on {:?}, not on a survivor",
                c.id,
                c.established_at
            );
        } else {
            assert_eq!(
                identity(c),
                identity(was),
                "{TEST}: assertions 3, 4: {} was disturbed",
                c.id
            );
        }
    }
    eprintln!(
        "{TEST}: {} clients of {addr} re-established on {:?}; {} others untouched; up again \
         {back:?} after charon was ready",
        moved.len(),
        after.clients_per_responder(),
        after.clients.len() - moved.len()
    );
    fx.finish();
}

/// Assertion 5.
#[test]
fn icmp_only_keeps_a_responder_whose_charon_died() {
    const TEST: &str = "icmp_only_keeps_a_responder_whose_charon_died";
    let Some(mut fx) = InteropLab::start_with_config(
        TEST,
        Balancer::Ikelb,
        |g| spec(g, 2, 2),
        |config| control::with_probes(&config, "[icmp]"),
    ) else {
        return;
    };
    let lab = &mut fx.lab;
    let addr = lab.responders[0].addr;
    wait_up(TEST, lab, addr, true, "before the kill");
    lab.kill_responder_charon(0)
        .unwrap_or_else(|e| panic!("{TEST}: killing charon on {addr}: {e:#}"));
    let at_kill = checks(lab, addr, "icmp", "success");
    // More health rounds than `fall` (+ 2 for a round in flight at the kill).
    lab::wait_for(
        &format!("{} more ICMP probes of {addr}", FALL + 2.0),
        NOTICE_BOUND,
        Duration::from_millis(50),
        || Ok((checks(lab, addr, "icmp", "success") - at_kill >= FALL + 2.0).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{TEST}: {e:#}\n{}", lab.lab.daemon_output_tail(20)));
    assert_eq!(
        backend_up(lab, addr),
        Ok(true),
        "{TEST}: assertion 5: with probes [icmp] a dead charon took {addr} out"
    );
    assert_eq!(
        status(lab, addr),
        ("up".to_owned(), pairs(&[("icmp", "up")])),
        "{TEST}: assertion 5: backend_list of {addr}"
    );
    let ike = lab::metrics::samples(&metrics(lab), "ikelb_health_checks_total")
        .into_iter()
        .filter(|s| s.label("probe") == "ike")
        .count();
    assert_eq!(
        ike, 0,
        "{TEST}: assertion 5: IKE probes sent with probes [icmp]"
    );
    eprintln!(
        "{TEST}: charon on {addr} dead through {} ICMP rounds; still up (ping-only cannot tell)",
        checks(lab, addr, "icmp", "success") - at_kill
    );
    fx.finish();
}
