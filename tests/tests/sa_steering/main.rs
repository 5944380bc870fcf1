//! SA steering with real strongSwan peers ([docs/security.md](../../docs/security.md), "SA
//! steering"; `lb-ebpf/src/steer.rs`): clients behind the lab's NAT router, with dead peer
//! detection every second, are established through ikelb; then the router rebinds every
//! client to a fresh public address whose Maglev slot names another responder than the one
//! holding its SA — a NAT that lost its mappings. The client notices nothing; its next ESP
//! and its next DPD request arrive from the new address. With `sa_steering` they reach the
//! responder holding the SA, which then answers at the new address (RFC 7296 §2.23): every IKE
//! SA survives with the same SPIs on the same responder, and the tunnels carry pings again.
//! The control, with `sa_steering: false`, sends the same packets to the ring's responder,
//! which knows nothing of them: every moved client loses its SA.
//!
//! Those responders run with MOBIKE off. The MOBIKE tests (`mobike.rs`) turn it on at both
//! ends ([`IkeLabSpec::mobike`]; the responders announce no address of their own) and move
//! each client itself to a new address ([`IkeLab::roam`], a laptop going from Wi-Fi to LTE),
//! which the router NATs to a fresh public address: charon probes the new path with an
//! INFORMATIONAL of its SA and then sends UPDATE_SA_ADDRESSES from it (RFC 4555 §3.5), both
//! steered to the SA's responder. Without steering the probes reach a responder without the
//! SA and the client gives up. (A NAT rebinding with MOBIKE on is not repaired by strongSwan
//! 5.9.8 at all: see docs/security.md, "SA steering".)
//!
//! Needs root and strongSwan (`cargo xtask bootstrap`); says why when it cannot run.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ikelb_tests::{
    fixture::interop::{Balancer, InteropLab},
    ike::{Fragmentation, IkeLab, IkeLabSpec, Snapshot},
    lab::{self, metrics},
};

mod mobike;

const CLIENTS: usize = 6;
const NAT_ADDRS: usize = 2;
const RESPONDERS: usize = 3;
const INITIATE_TIMEOUT: Duration = Duration::from_secs(15);
const DPD: Duration = Duration::from_secs(1);

fn spec(gateway: ikelb_tests::ike::Gateway) -> IkeLabSpec {
    IkeLabSpec {
        clients: CLIENTS,
        nat_addrs: NAT_ADDRS,
        responders: RESPONDERS,
        fragmentation: Fragmentation::Ip,
        gateway,
        client_dpd: Some(DPD),
        mobike: false,
    }
}

/// One client's SA: (responder, initiator SPI, responder SPI).
type Sa = (Option<usize>, String, String);

fn sa_of(snap: &Snapshot, i: usize) -> Sa {
    let c = &snap.clients[i];
    let sa = c.sa.as_ref();
    (
        c.established_at,
        sa.map(|s| s.initiator_spi.clone()).unwrap_or_default(),
        sa.map(|s| s.responder_spi.clone()).unwrap_or_default(),
    )
}

/// Every client up, with a tunnel that answers; their SAs.
fn establish(test: &str, lab: &IkeLab) -> Vec<Sa> {
    let initiations = lab.initiate_all(INITIATE_TIMEOUT);
    let pings = lab.ping_all(3);
    let snap = lab
        .snapshot(Some(&initiations), Some(&pings))
        .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let problems = snap.connectivity_problems();
    assert!(
        problems.is_empty(),
        "{test}: clients not connected before the move: {problems:?}"
    );
    (0..CLIENTS).map(|i| sa_of(&snap, i)).collect()
}

/// For every client, a fresh public address (100.64.9.x) whose ring slot names another
/// responder than its SA's (`lb-ctl lookup` of the address, which has no entry yet).
fn fresh_publics(test: &str, lab: &IkeLab, sas: &[Sa]) -> Vec<Ipv4Addr> {
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl");
    let mut next = 1u8;
    let mut publics = Vec::with_capacity(CLIENTS);
    for (at, _, _) in sas {
        let holder = lab.responders[at.expect("established")].addr;
        let public = loop {
            let candidate = Ipv4Addr::new(100, 64, 9, next);
            next += 1;
            let out = lab
                .lab
                .lb_ctl(&lb_ctl, &["lookup", &candidate.to_string(), "--json"])
                .unwrap_or_else(|e| panic!("{test}: lookup: {e:#}"));
            let v: serde_json::Value = serde_json::from_str(&out).expect("lookup JSON");
            let ring: Option<Ipv4Addr> = v["results"][0]["backend"]
                .as_str()
                .and_then(|b| b.parse().ok());
            if ring.is_some_and(|r| r != holder) {
                break candidate;
            }
        };
        publics.push(public);
    }
    publics
}

/// Rebinds every client to its [`fresh_publics`] address; those addresses, by client.
fn rebind_all(test: &str, lab: &IkeLab, sas: &[Sa]) -> Vec<Ipv4Addr> {
    let moved = fresh_publics(test, lab, sas);
    for (i, public) in moved.iter().enumerate() {
        lab.rebind(i, *public)
            .unwrap_or_else(|e| panic!("{test}: rebinding client {i}: {e:#}"));
    }
    moved
}

/// `ikelb_xdp_events_total{event}` of the lab's daemon.
fn event(lab: &IkeLab, name: &str) -> f64 {
    let text = lab.lab.metrics().expect("metrics");
    metrics::samples(&text, "ikelb_xdp_events_total")
        .iter()
        .find(|s| s.label("event") == name)
        .map_or(0.0, |s| s.value)
}

/// Every `ikelb_xdp_events_total{event}` of the lab's daemon, for a failure's message.
fn events(lab: &IkeLab) -> String {
    let text = lab.lab.metrics().unwrap_or_default();
    metrics::samples(&text, "ikelb_xdp_events_total")
        .iter()
        .map(|s| format!("{}={}", s.label("event"), s.value))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The client's public address as its SA's responder sees it now.
fn seen_at(snap: &Snapshot, i: usize) -> Option<Ipv4Addr> {
    snap.clients[i].public.map(|p| *p.ip())
}

/// After every client moved (`what`) from its SA `before` to the public address `moved`, from
/// `t0`: pings every tunnel at once, waits until every responder sees its client at the new
/// address, and asserts that each client kept its SA (the same SPIs on the same responder), is
/// up, answers pings, is seen at its new address and has no `extra` complaint, and that every
/// moved client was steered. Returns what happened, for the test's summary line.
fn assert_every_sa_kept(
    test: &str,
    lab: &IkeLab,
    before: &[Sa],
    moved: &[Ipv4Addr],
    t0: Instant,
    what: &str,
    extra: impl Fn(usize) -> Option<String>,
) -> String {
    // Pings during the move: each tunnel's packets leave from the new address at once.
    let during = lab.ping_all(5);
    let arrived = lab::wait_for(
        "every responder to see its client at the new address",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let snap = lab.snapshot(None, None)?;
            Ok((0..CLIENTS)
                .all(|i| seen_at(&snap, i) == Some(moved[i]))
                .then_some(()))
        },
    );
    let took = t0.elapsed();
    let pings = lab.ping_all(3);
    let after = lab
        .snapshot(None, Some(&pings))
        .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let steered = event(lab, "sa_steered");
    let mut wrong = Vec::new();
    for i in 0..CLIENTS {
        let now = sa_of(&after, i);
        let c = &after.clients[i];
        let answered = c.ping.as_ref().is_some_and(|p| p.received == p.sent);
        let complaint = extra(i);
        if now != before[i]
            || !c.up()
            || !answered
            || seen_at(&after, i) != Some(moved[i])
            || complaint.is_some()
        {
            wrong.push(format!(
                "  {}: SA {:?} → {now:?}, up {}, pings {:?}, seen at {:?} (moved to {}){}",
                c.id,
                before[i],
                c.up(),
                c.ping,
                seen_at(&after, i),
                moved[i],
                complaint.map(|w| format!(", {w}")).unwrap_or_default()
            ));
        }
    }
    assert!(
        arrived.is_ok() && wrong.is_empty(),
        "{test}: after the {what} ({took:?}; events {}):\n{}\n{}",
        events(lab),
        wrong.join("\n"),
        lab.responder_log_tails(20)
    );
    assert!(
        steered >= CLIENTS as f64,
        "{test}: every moved client's packets were steered: sa_steered {steered}"
    );
    let lost: u32 = during.iter().map(|p| p.sent - p.received).sum();
    format!(
        "every responder saw its client at the new address {took:.2?} after the {what}; {lost} \
         of {} pings sent meanwhile lost; sa_steered {steered}; the same IKE SA SPIs on the same \
         responder for all",
        during.iter().map(|p| p.sent).sum::<u32>()
    )
}

/// Waits up to `timeout` until every client is down or holds another SA than `before` (the
/// controls without steering).
fn wait_all_lost(lab: &IkeLab, before: &[Sa], timeout: Duration) -> anyhow::Result<()> {
    lab::wait_for(
        "every moved client to lose its SA",
        timeout,
        Duration::from_millis(250),
        || {
            let snap = lab.snapshot(None, None)?;
            Ok((0..CLIENTS)
                .all(|i| !snap.clients[i].up() || sa_of(&snap, i) != before[i])
                .then_some(()))
        },
    )
}

#[test]
fn a_nat_rebinding_keeps_every_ike_sa_on_its_responder() {
    const TEST: &str = "a_nat_rebinding_keeps_every_ike_sa_on_its_responder";
    let Some(fx) = InteropLab::start(TEST, Balancer::Ikelb, spec) else {
        return;
    };
    let lab = &fx.lab;
    let before = establish(TEST, lab);
    let t0 = Instant::now();
    let moved = rebind_all(TEST, lab, &before);
    let summary = assert_every_sa_kept(TEST, lab, &before, &moved, t0, "rebinding", |_| None);
    eprintln!(
        "{TEST}: {CLIENTS} clients rebound to addresses whose slot names another responder; \
         {summary} (DPD every {DPD:?})"
    );
    fx.finish();
}

/// The control: the same rebinding with `sa_steering: false`. Every moved client's packets
/// follow the ring to a responder that knows nothing of its SA: none of them is seen at its
/// new address by its responder, and each loses its SA (its DPD goes unanswered).
#[test]
fn without_sa_steering_a_nat_rebinding_loses_the_moved_sas() {
    const TEST: &str = "without_sa_steering_a_nat_rebinding_loses_the_moved_sas";
    let Some(fx) = InteropLab::start_with_config(TEST, Balancer::Ikelb, spec, |config| {
        format!("{config}sa_steering: false\n")
    }) else {
        return;
    };
    let lab = &fx.lab;
    let before = establish(TEST, lab);
    let moved = rebind_all(TEST, lab, &before);
    // DPD every second; charon gives up after ~7 s of retransmits (1 + 1.4 + 1.96 + 2.74 s).
    let gone = wait_all_lost(lab, &before, Duration::from_secs(30));
    let after = lab
        .snapshot(None, None)
        .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    let seen: Vec<usize> = (0..CLIENTS)
        .filter(|&i| seen_at(&after, i) == Some(moved[i]))
        .collect();
    assert!(
        gone.is_ok() && seen.is_empty(),
        "{TEST}: without SA steering, moved clients kept their SA ({gone:?}) or were seen at \
         their new address by their responder ({seen:?}): the test with steering shows nothing"
    );
    assert_eq!(event(lab, "sa_steered"), 0.0, "{TEST}: nothing is steered");
    eprintln!("{TEST}: every one of {CLIENTS} rebound clients lost its SA");
    fx.finish();
}
