//! New clients in the probation maps (`PROBATION_V4`): the data path sends them to their
//! entry's backend like established ones, so `lookup`, client counts and drains see them.

use lb_common::ProbationValue;

use super::*;
use crate::api::LookupResult;

/// Puts client `c` of service 0 in probation on `backend`, last seen at `atime`.
fn probation(h: &mut Harness, c: u32, backend: u32, atime: u32, proof: u64) {
    let key = PersistKeyV4 {
        service: 0,
        client: c,
    };
    let value = ProbationValue {
        backend,
        atime,
        proof,
        ..ProbationValue::default()
    };
    let dp = h.lb.dataplane_mut();
    dp.probation_v4.retain(|(k, _)| *k != key);
    dp.probation_v4.push((key, value));
}

fn lookup(h: &mut Harness, c: u32) -> LookupResult {
    let addr = IpAddr::from(c.to_ne_bytes());
    let Reply::Lookup { mut results, .. } = ok(h.request(Request::Lookup { client: addr })) else {
        panic!()
    };
    results.remove(0)
}

#[test]
fn lookup_names_the_probation_entry_and_an_established_one_wins_over_it() {
    let mut h = Harness::new();
    let c = client(7);
    let ring = lookup(&mut h, c).backend_id.unwrap();
    let other = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
        .map(|a| h.id(a))
        .into_iter()
        .find(|&id| id != ring)
        .unwrap();

    let now = h.now.tick;
    probation(&mut h, c, other, now, 0);
    let r = lookup(&mut h, c);
    assert_eq!(r.source, "probation");
    assert_eq!(r.backend_id, Some(other));
    let p = r.persisted.unwrap();
    assert_eq!(p.tier, "probation");
    assert_eq!(p.proof_recorded, Some(false));

    probation(&mut h, c, other, now, 0xfeed);
    let p = lookup(&mut h, c).persisted.unwrap();
    assert_eq!(p.proof_recorded, Some(true), "the backend has answered");

    // Idle: the ring decides again, and says why.
    probation(&mut h, c, other, now - 11, 0);
    let r = lookup(&mut h, c);
    assert_eq!((r.source.as_str(), r.backend_id), ("maglev", Some(ring)));
    assert_eq!(
        r.persisted.unwrap().ignored_because.as_deref(),
        Some("idle")
    );

    // The data path reads the persistence map first: an established entry decides.
    probation(&mut h, c, other, now, 0);
    assert_eq!(h.route(0, c), Some(ring));
    let r = lookup(&mut h, c);
    assert_eq!(
        (r.source.as_str(), r.backend_id),
        ("persistence", Some(ring))
    );
    let p = r.persisted.unwrap();
    assert_eq!((p.tier.as_str(), p.proof_recorded), ("persistence", None));
}

#[test]
fn clients_in_probation_are_counted_and_hold_a_drain_open() {
    let mut h = Harness::new();
    let d = h.id("10.0.0.13");
    let now = h.now.tick;
    // Three new clients on the backend about to drain, one of them idle.
    for (c, atime) in [(1, now), (2, now), (3, now - 11)] {
        probation(&mut h, client(c), d, atime, 0);
    }
    let listed = h.list().into_iter().find(|b| b.id == d).unwrap();
    assert_eq!(listed.clients, 2, "live probation entries are its clients");

    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        drain: Some(Duration::from_secs(3600)),
        dry_run: false,
    }));
    assert_eq!(
        h.c.check_drains(&mut h.lb, h.now).unwrap(),
        Effects::default(),
        "new clients mid-handshake keep the drain open"
    );
    h.now.tick += 11;
    let e = h.c.check_drains(&mut h.lb, h.now).unwrap();
    assert!(e.targets_changed, "all idle: the drain ends");
}

#[test]
fn status_counts_the_two_tiers_apart() {
    let mut h = Harness::new();
    h.traffic(5);
    let now = h.now.tick;
    let d = h.id("10.0.0.11");
    for c in 100..103 {
        probation(&mut h, client(c), d, now, 0);
    }
    let Reply::Status(s) = ok(h.request(Request::Status)) else {
        panic!()
    };
    assert_eq!(s.persistence.entries, 5);
    assert_eq!(s.persistence.probation_entries, 3);
    assert_eq!(s.persistence.probation_capacity, 1 << 18);
    assert_eq!(s.persistence.new_client_rate, 20_000);
}

/// `lookup` reports the client's last IKE stage from its entry's flags (`lb_common::ike`),
/// without the probation-only guess bit, and whether SA steering made the entry; an entry
/// without a stage (or of an older build) reports none.
#[test]
fn lookup_reports_the_ike_stage_and_steering() {
    use lb_common::{ike, PROBATION_F_GUESS};
    let mut h = Harness::new();
    let c = client(9);
    let ring = lookup(&mut h, c).backend_id.unwrap();
    let now = h.now.tick;
    probation(&mut h, c, ring, now, 0);
    let p = lookup(&mut h, c).persisted.unwrap();
    assert_eq!((p.ike_stage, p.steered), (None, false));
    for (flags, stage, steered) in [
        (
            ike::with_stage(0, ike::STAGE_SA_INIT_SENT),
            "ike_sa_init_sent",
            false,
        ),
        (
            ike::with_stage(PROBATION_F_GUESS, ike::STAGE_SA_INIT_ANSWERED),
            "ike_sa_init_answered",
            false,
        ),
        (
            ike::with_stage(ike::CLIENT_F_STEERED, ike::STAGE_ESP),
            "established",
            true,
        ),
    ] {
        let dp = h.lb.dataplane_mut();
        dp.probation_v4[0].1.flags = flags;
        let p = lookup(&mut h, c).persisted.unwrap();
        assert_eq!(
            (p.ike_stage.as_deref(), p.steered),
            (Some(stage), steered),
            "flags {flags:#x}"
        );
    }
}
