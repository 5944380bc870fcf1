//! SA steering under a MOBIKE roam (RFC 4555 §3.5), with MOBIKE on both ends: see `main.rs`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ikelb_tests::{
    fixture::interop::{Balancer, InteropLab},
    ike::{IkeLab, IkeLabSpec},
};

use super::{
    assert_every_sa_kept, establish, event, fresh_publics, spec, wait_all_lost, Sa, CLIENTS,
    RESPONDERS,
};

/// The lab with MOBIKE on both ends ([`IkeLabSpec::mobike`]).
fn mobike_spec(gateway: ikelb_tests::ike::Gateway) -> IkeLabSpec {
    IkeLabSpec {
        mobike: true,
        ..spec(gateway)
    }
}

/// Lines of client `i`'s log that contain every one of `words`.
fn client_lines(lab: &IkeLab, i: usize, words: &[&str]) -> Vec<String> {
    lab.clients[i]
        .charon
        .log_text()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// Every client's IKE_AUTH response carried N(MOBIKE_SUP) and N(NO_ADD_ADDR): MOBIKE was
/// negotiated, and the responder announced no address of its own.
fn assert_mobike_negotiated(test: &str, lab: &IkeLab) {
    for i in 0..CLIENTS {
        let auth = client_lines(lab, i, &["parsed IKE_AUTH response"]);
        assert!(
            auth.iter()
                .any(|l| l.contains("N(MOBIKE_SUP)") && l.contains("N(NO_ADD_ADDR)"))
                && !auth.iter().any(|l| l.contains("ADD_4_ADDR")),
            "{test}: client {i}: MOBIKE not negotiated, or the responder announced addresses: \
             {auth:?}"
        );
    }
}

/// Every client roams ([`IkeLab::roam`]) to a new private address the router NATs to its
/// [`fresh_publics`] address; those public addresses, by client.
fn roam_all(test: &str, lab: &IkeLab, sas: &[Sa]) -> Vec<Ipv4Addr> {
    let moved = fresh_publics(test, lab, sas);
    for (i, public) in moved.iter().enumerate() {
        lab.roam(i, *public)
            .unwrap_or_else(|e| panic!("{test}: client {i} roaming: {e:#}"));
    }
    moved
}

#[test]
fn a_mobike_roam_keeps_every_ike_sa_on_its_responder() {
    const TEST: &str = "a_mobike_roam_keeps_every_ike_sa_on_its_responder";
    let Some(fx) = InteropLab::start(TEST, Balancer::Ikelb, mobike_spec) else {
        return;
    };
    let lab = &fx.lab;
    let before = establish(TEST, lab);
    assert_mobike_negotiated(TEST, lab);
    let t0 = Instant::now();
    let moved = roam_all(TEST, lab, &before);
    // RFC 4555 §3.5: the client moved its SA itself, from its new address.
    let summary = assert_every_sa_kept(TEST, lab, &before, &moved, t0, "moves", |i| {
        let updates = client_lines(lab, i, &["generating INFORMATIONAL request", "UPD_SA_ADDR"]);
        updates
            .is_empty()
            .then(|| "no UPDATE_SA_ADDRESSES sent".to_owned())
    });
    eprintln!(
        "{TEST}: {CLIENTS} clients roamed with MOBIKE to addresses whose slot names another \
         responder; {summary}"
    );
    fx.finish();
}

/// The control: the same roam with `sa_steering: false`. strongSwan's initiator first
/// probes the new path with an empty INFORMATIONAL request and sends UPDATE_SA_ADDRESSES only
/// once that is answered. Without steering the probes follow the ring to a responder that
/// knows nothing of the SA and drops them; after 10 probes 2.5 s apart the client gives up and
/// destroys its SA, and the responder holding it never hears from the new address.
#[test]
fn without_sa_steering_a_mobike_roam_loses_the_moved_sas() {
    const TEST: &str = "without_sa_steering_a_mobike_roam_loses_the_moved_sas";
    let Some(fx) = InteropLab::start_with_config(TEST, Balancer::Ikelb, mobike_spec, |config| {
        format!("{config}sa_steering: false\n")
    }) else {
        return;
    };
    let lab = &fx.lab;
    let before = establish(TEST, lab);
    assert_mobike_negotiated(TEST, lab);
    let t0 = Instant::now();
    let moved = roam_all(TEST, lab, &before);
    let gone = wait_all_lost(lab, &before, Duration::from_secs(60));
    let took = t0.elapsed();
    let after = lab
        .snapshot(None, None)
        .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    let mut wrong = Vec::new();
    for i in 0..CLIENTS {
        let (at, ispi, rspi) = &before[i];
        let at = at.expect("established");
        let spis = (ispi.clone(), rspi.clone());
        let holder = after.responder_sas[at]
            .iter()
            .find(|s| &s.initiator_spi == ispi);
        let dropped_by: Vec<usize> = (0..RESPONDERS)
            .filter(|&r| r != at && after.responder_logs[r].orphans.contains(&spis))
            .collect();
        let gave_up = client_lines(lab, i, &["giving up after", "path probings"]);
        let updates = client_lines(lab, i, &["generating INFORMATIONAL request", "UPD_SA_ADDR"]);
        let holder_at = holder.map(|s| s.remote_host.clone());
        if holder_at.is_none()
            || holder_at == Some(moved[i].to_string())
            || dropped_by.is_empty()
            || gave_up.is_empty()
            || !updates.is_empty()
        {
            wrong.push(format!(
                "  client {i}: holder {at} has it at {holder_at:?} (moved to {}); its SPIs \
                 dropped by responders {dropped_by:?}; gave up {gave_up:?}; {} \
                 UPDATE_SA_ADDRESSES sent",
                moved[i],
                updates.len()
            ));
        }
    }
    assert!(
        gone.is_ok() && wrong.is_empty(),
        "{TEST}: without SA steering ({gone:?}, {took:?}), want every roamed client's path \
         probes dropped by another responder, the client giving up without an \
         UPDATE_SA_ADDRESSES, and its responder still holding the SA at the old address:\n{}",
        wrong.join("\n")
    );
    assert_eq!(event(lab, "sa_steered"), 0.0, "{TEST}: nothing is steered");
    eprintln!(
        "{TEST}: every one of {CLIENTS} roamed clients had its path probes dropped by a \
         responder without its SA and gave up its SA {took:.2?} after the moves"
    );
    fx.finish();
}
