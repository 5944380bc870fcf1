//! Slot flags (`RING_F_CHANGED`) and the sweep, checked against the data path's fast and
//! persistence paths modelled over the fake's maps (in `tests.rs`).

use super::*;

#[test]
fn flags_are_set_exactly_on_changed_slots_and_never_on_a_fresh_table() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    assert_eq!(lb.flagged_slots(), 0, "the first table of a fresh service");
    let t0 = lb.services()[0].active_table().to_vec();
    // A backend added: plain Maglev recompute, some slots of every backend move.
    let id = lb.add_backend(0, "10.0.0.14".parse().unwrap(), 1).unwrap();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let t1 = lb.services()[0].active_table().to_vec();
    let m1 = moved(&t0, &t1);
    assert!(!m1.is_empty());
    for (i, &v) in t1.iter().enumerate() {
        assert_eq!(v & RING_F_CHANGED != 0, m1.contains(&i), "slot {i}");
    }
    assert!(
        m1.iter()
            .filter(|&&i| t1[i] & RING_BACKEND_MASK == id)
            .count()
            * 5
            > m1.len() * 4
    );
    assert_eq!(lb.dataplane().table(0, M), t1, "the map holds the flags");
    // It fails: its slots go back to where they were, and stay flagged (flips back and
    // forth keep every flag, in both buffers).
    lb.set_next_hop(id, None).unwrap();
    lb.apply().unwrap();
    let t2 = lb.services()[0].active_table().to_vec();
    assert!(m1.iter().all(|&i| t2[i] & RING_F_CHANGED != 0));
    assert_eq!(
        t2.iter().filter(|&&v| v & RING_F_CHANGED != 0).count(),
        m1.len()
    );
    resolve_all(&mut lb);
    lb.apply().unwrap();
    assert_eq!(lb.services()[0].active_table(), t1);
    // Service b (one backend, never changed) has none.
    assert!(lb.services()[1]
        .active_table()
        .iter()
        .all(|&v| v & RING_F_CHANGED == 0));
}

#[test]
fn the_sweep_clears_only_slots_no_live_entry_disagrees_with() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let cs = clients(120);
    let mut now = 1000;
    for &c in &cs {
        slow(&mut lb, c, now, true);
    }
    let t0 = lb.services()[0].active_table().to_vec();
    lb.add_backend(0, "10.0.0.14".parse().unwrap(), 1).unwrap();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let t1 = lb.services()[0].active_table().to_vec();
    let flagged = moved(&t0, &t1);
    check_invariant(&mut lb, &cs, now);
    // Slots with an established client keep their flag; the others lose it.
    let slot = |c: u32| (lb_common::hash::client_hash_v4(c, lb.seed()) % M) as usize;
    let busy: std::collections::BTreeSet<usize> = cs
        .iter()
        .map(|&c| slot(c))
        .filter(|s| flagged.contains(s))
        .collect();
    assert!(!busy.is_empty() && busy.len() < flagged.len());
    let r = sweep(&mut lb, now);
    assert_eq!(
        (r.cleared, r.kept),
        (flagged.len() - busy.len(), busy.len())
    );
    check_invariant(&mut lb, &cs, now);
    let t = lb.services()[0].active_table().to_vec();
    assert_eq!(
        lb.dataplane().table(0, M),
        t,
        "active table written in place"
    );
    for &i in &flagged {
        assert_eq!(t[i] & RING_F_CHANGED != 0, busy.contains(&i));
    }
    // Still live one tick past the timeout (margin), idle after: then all clear.
    now += TIMEOUT + 1;
    assert_eq!(sweep(&mut lb, now).cleared, 0);
    now += 1;
    assert_eq!(sweep(&mut lb, now).cleared, busy.len());
    assert_eq!(lb.flagged_slots(), 0);
    // Entries that agree with the ring do not hold a flag: clients that re-connect
    // after their entry idled out land on the ring's backend.
    for &c in &cs {
        slow(&mut lb, c, now, true);
    }
    check_invariant(&mut lb, &cs, now);
}

#[test]
fn a_slot_changed_after_the_ticket_is_not_cleared_even_if_changed_back() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let t0 = lb.services()[0].active_table().to_vec();
    lb.set_next_hop(2, None).unwrap();
    lb.apply().unwrap();
    let of_2 = moved(&t0, lb.services()[0].active_table());
    // No entry at all: every flag may go — but a flip after the ticket changes backend
    // 2's slots (back to 2), and entries naming the in-between backends may have been
    // written after the scan passed them.
    let now = 50;
    let ticket = lb.sweep_ticket(now);
    let entries = lb.dataplane().persist_v4.clone();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let r = lb.clear_flags(ticket, &entries, TIMEOUT).unwrap();
    assert_eq!((r.cleared, r.kept), (0, of_2.len()));
    // A later sweep clears them.
    assert_eq!(sweep(&mut lb, now).cleared, of_2.len());
    assert_eq!(lb.flagged_slots(), 0);
}

#[test]
fn a_failed_clear_leaves_map_and_mirror_equal() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    lb.set_next_hop(3, None).unwrap();
    lb.apply().unwrap();
    let n = lb.flagged_slots();
    assert!(n > 0);
    let t = lb.sweep_ticket(10);
    lb.dataplane_mut().fail_ring_write_after = Some(0);
    assert!(lb.clear_flags(t, &[], TIMEOUT).is_err());
    let base = lb.services()[0].value.ring_base;
    assert_eq!(
        lb.dataplane().table(base, M),
        lb.services()[0].active_table()
    );
    assert_eq!(lb.flagged_slots(), n);
}

#[test]
fn flag_all_flags_every_slot_of_the_next_table_once() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    lb.flag_all_slots();
    let r = lb.apply().unwrap();
    assert_eq!(
        r.flips.len(),
        2,
        "same backends, new flags: written and flipped"
    );
    assert_eq!(lb.flagged_slots(), 2 * M as usize);
    assert_eq!(
        sweep(&mut lb, 5).cleared,
        2 * M as usize,
        "no entry: all cleared"
    );
}

/// Random backend churn, traffic, idling and sweeps (some with a flip between ticket
/// and clear): the fast path never sends a client elsewhere than its entry.
#[test]
fn random_churn_never_moves_a_client_through_the_fast_path() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let cs = clients(600);
    let mut now = 7u32;
    let mut extra = 0u32;
    let mut pending: Option<SweepTicket> = None;
    for step in 0..400 {
        match next(8) {
            0 | 1 => {
                for _ in 0..80 {
                    let c = cs[next(cs.len() as u64) as usize];
                    // A bulk packet takes the fast path when it can; else persistence.
                    if fast(&lb, c).is_none() || next(64) == 0 {
                        slow(&mut lb, c, now, true);
                    }
                }
            }
            2 => {
                let ids: Vec<u32> = lb.services()[0].members.clone();
                let id = ids[next(ids.len() as u64) as usize];
                if next(2) == 0 {
                    lb.set_next_hop(id, None).unwrap();
                } else {
                    resolve_all(&mut lb);
                }
            }
            3 => {
                let ids: Vec<u32> = lb.services()[0].members.clone();
                if ids.len() > 2 && next(2) == 0 {
                    lb.remove_backend(ids[next(ids.len() as u64) as usize])
                        .unwrap();
                } else if ids.len() < 6 {
                    extra += 1;
                    lb.add_backend(0, format!("10.0.2.{extra}").parse().unwrap(), 1)
                        .unwrap();
                    resolve_all(&mut lb);
                }
            }
            4 => now += next(TIMEOUT as u64 * 2) as u32,
            5 => pending = Some(lb.sweep_ticket(now)),
            _ => {
                if let Some(t) = pending.take() {
                    let entries = lb.dataplane().persist_v4.clone();
                    lb.clear_flags(t, &entries, TIMEOUT).unwrap();
                }
            }
        }
        lb.apply().unwrap();
        check_invariant(&mut lb, &cs, now);
        let _ = step;
    }
}
