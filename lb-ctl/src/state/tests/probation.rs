//! Slot flags and the probation map: a new client's probation entry names the backend the
//! data path sends it to exactly like an established entry does, so the sweep's invariant is
//! over both maps ("Slot flags" in state.rs).

use lb_common::{PersistKeyV4, ProbationValue};

use super::*;

/// Clients (of `clients(n)`) in `slots`, one per slot, at most `n` tried.
fn clients_in(lb: &Balancer<FakeDataplane>, slots: &[usize], n: u32) -> Vec<(u32, usize)> {
    let mut seen = std::collections::BTreeSet::new();
    clients(n)
        .into_iter()
        .map(|c| {
            (
                c,
                lb_common::hash::ring_slot(lb_common::hash::client_hash_v4(c, lb.seed()), M)
                    as usize,
            )
        })
        .filter(|(_, s)| slots.contains(s) && seen.insert(*s))
        .collect()
}

#[test]
fn a_live_probation_entry_that_disagrees_with_the_ring_keeps_its_slot_flagged() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let t0 = lb.services()[0].active_table().to_vec();
    let old = t0[0] & RING_BACKEND_MASK;
    // Backend `old` drains: out of the ring, still usable for the clients it has.
    lb.set_drain(old, Some(std::time::SystemTime::now()))
        .unwrap();
    lb.apply().unwrap();
    let t1 = lb.services()[0].active_table().to_vec();
    let changed = moved(&t0, &t1);
    assert!(changed.contains(&0));
    let found = clients_in(&lb, &changed, 20_000);
    assert!(found.len() >= 2, "clients in two changed slots");
    let (held, held_slot) = found[0];
    let (agrees, agrees_slot) = found[1];
    let now = 1000;
    let entry = |client, backend| {
        (
            PersistKeyV4 { service: 0, client },
            ProbationValue {
                backend,
                atime: now,
                proof: 7,
                ..ProbationValue::default()
            },
        )
    };
    // A new client that arrived before the change: its entry names the draining backend,
    // where the data path keeps sending it; another arrived after and agrees with the ring.
    lb.dataplane_mut().probation_v4 = vec![
        entry(held, old),
        entry(agrees, t1[agrees_slot] & RING_BACKEND_MASK),
    ];
    let r = sweep(&mut lb, now);
    let t = lb.services()[0].active_table();
    assert!(
        t[held_slot] & RING_F_CHANGED != 0,
        "the fast path would move it"
    );
    assert!(t[agrees_slot] & RING_F_CHANGED == 0);
    assert_eq!((r.kept, r.cleared), (1, changed.len() - 1));
    // Idle past the timeout (and the tick of margin): it holds nothing any more.
    let r = sweep(&mut lb, now + TIMEOUT + 2);
    assert_eq!((r.kept, r.cleared), (0, 1));
    assert_eq!(lb.flagged_slots(), 0);
}

#[test]
fn the_sweep_reads_both_maps() {
    let mut dp = FakeDataplane::default();
    let key = PersistKeyV4 {
        service: 0,
        client: 1,
    };
    dp.persist_v4.push((key, PersistValue::default()));
    dp.probation_v4.push((
        PersistKeyV4 {
            service: 0,
            client: 2,
        },
        ProbationValue {
            backend: 3,
            atime: 4,
            client_mac: [1, 2, 3, 4, 5, 6],
            port: 1,
            proof: 99,
            ..ProbationValue::default()
        },
    ));
    let read = dp.persistence_v4_reader().unwrap()().unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(
        read[1].1,
        PersistValue {
            backend: 3,
            atime: 4,
            client_mac: [1, 2, 3, 4, 5, 6],
            port: 1,
            flags: 0
        },
        "the PersistValue part of the probation value"
    );
}
