//! Drains: persisted clients kept until idle, the deadline, a drain cancelled by `backend
//! add`, and drains without a persistence scan.

use super::*;
use crate::dataplane::Dataplane;

#[test]
fn drain_keeps_persisted_clients_takes_no_new_ones_and_ends_when_they_are_idle() {
    let mut h = Harness::new();
    let before = h.traffic(600);
    let d = h.id("10.0.0.13");
    let ok_reply = ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        drain: Some(Duration::from_secs(3600)),
        dry_run: false,
    }));
    assert!(matches!(
        ok_reply,
        Reply::BackendRemoved {
            draining_until: Some(_),
            ..
        }
    ));
    let b = h.lb.backend(d).unwrap();
    assert!(b.usable() && !b.in_ring());
    assert_eq!(
        h.traffic(600),
        before,
        "persisted clients keep flowing, nobody moves"
    );
    let newcomers: Vec<Option<u32>> = (601..=900).map(|c| h.route(0, client(c))).collect();
    assert!(
        !newcomers.contains(&Some(d)),
        "no new client lands on a draining backend"
    );
    let listed = h.list().into_iter().find(|b| b.id == d).unwrap();
    assert_eq!(listed.state, "draining");
    assert_eq!(listed.ring_slots, 0);
    assert!(listed.clients > 100);

    // Active clients: the drain goes on.
    h.now.tick += 5;
    h.traffic(600);
    assert_eq!(
        h.c.check_drains(&mut h.lb, h.now).unwrap(),
        Effects::default()
    );
    // Everyone idle longer than persistence_timeout (10 s = 10 ticks): removed.
    h.now.tick += 11;
    let e = h.c.check_drains(&mut h.lb, h.now).unwrap();
    assert!(e.targets_changed);
    h.apply();
    assert!(h.lb.backend(d).is_none());
    assert_eq!(h.lb.dataplane().backends[&d], Backend::default());
    let file = h.state_file().unwrap();
    assert!(
        file.contains("\"removed\"") && !file.contains("draining"),
        "{file}"
    );
}

#[test]
fn drain_ends_at_the_deadline_with_clients_still_active() {
    let mut h = Harness::new();
    h.traffic(300);
    let d = h.id("10.0.0.12");
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: Some(Duration::from_secs(30)),
        dry_run: false,
    }));
    h.now.wall += Duration::from_secs(29);
    h.traffic(300);
    h.c.check_drains(&mut h.lb, h.now).unwrap();
    assert!(h.lb.backend(d).is_some());
    h.now.wall += Duration::from_secs(1);
    h.c.check_drains(&mut h.lb, h.now).unwrap();
    h.apply();
    assert!(h.lb.backend(d).is_none());
    assert!(h.traffic(300).values().all(|b| *b != Some(d)));
}

#[test]
fn adding_a_draining_backend_cancels_the_drain() {
    let mut h = Harness::new();
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: Some(Duration::from_secs(60)),
        dry_run: false,
    }));
    let r = ok(h.request(Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        weight: 1,
        dry_run: false,
    }));
    assert!(matches!(
        r,
        Reply::BackendAdded {
            drain_cancelled: true,
            ..
        }
    ));
    assert!(h.lb.backend(h.id("10.0.0.12")).unwrap().in_ring());
    assert!(
        h.c.changes().virtual_servers.is_empty(),
        "{:?}",
        h.c.changes()
    );
}

#[test]
fn without_a_scan_only_deadlines_end_drains() {
    let mut h = Harness::new();
    let d = h.id("10.0.0.12");
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: Some(Duration::from_secs(30)),
        dry_run: false,
    }));
    // No client at all, but no scan either: the drain goes on.
    assert_eq!(
        h.c.end_drains(&mut h.lb, h.now, None).unwrap(),
        Effects::default()
    );
    assert!(h.lb.backend(d).is_some());
    // A scan with no active client ends it.
    let e = h.c.end_drains(&mut h.lb, h.now, Some(&[])).unwrap();
    assert!(e.targets_changed);
    assert!(h.lb.backend(d).is_none());
    // The reader the daemon runs off the loop sees what the map holds.
    h.route(0, client(1));
    let read = h.lb.dataplane().persistence_reader().unwrap();
    assert_eq!(read().unwrap().len(), 1);
}
