//! Slot flags (`RING_F_CHANGED`) and the sweep, checked against the data path's fast and
//! persistence paths modelled over the fake's maps (in `tests.rs`).

use lb_common::{PersistKeyV6, ProbationValue, FAMILY_V6};

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
    let slot = |c: u32| lb_common::hash::ring_slot(lb_common::hash::client_hash_v4(c, lb.seed()), M) as usize;
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

// ---- IPv6 services ----

/// An IPv4 service `a` (as in `config()`) and an IPv6 service `c` of three backends.
fn balancer_v6() -> Balancer<FakeDataplane> {
    let cfg = config::parse(
        "t.yaml",
        &format!(
            "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\nvirtual_servers:
  - name: a
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
  - name: c
    vip: 2001:db8:ffff::10
    backends:
      - address: 2001:db8:1::11
      - address: 2001:db8:1::12
      - address: 2001:db8:1::13
"
        ),
    )
    .expect("valid config");
    let mut lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces(), 1024).unwrap();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    lb
}

/// Index of the IPv6 service in `services()`.
fn v6_service(lb: &Balancer<FakeDataplane>) -> usize {
    let i = lb
        .services()
        .iter()
        .position(|s| s.value.family == FAMILY_V6);
    i.expect("an IPv6 service")
}

/// Flags slots of both services (one backend of each loses its next hop): the IPv6
/// service's flagged slots, and its backend that lost them.
fn flag_both(lb: &mut Balancer<FakeDataplane>) -> (Vec<usize>, u32) {
    let i6 = v6_service(lb);
    let t0 = lb.services()[i6].active_table().to_vec();
    let gone6 = lb.services()[i6].members[0];
    let gone4 = lb.services()[1 - i6].members[0];
    lb.set_next_hop(gone6, None).unwrap();
    lb.set_next_hop(gone4, None).unwrap();
    lb.apply().unwrap();
    let flagged = moved(&t0, lb.services()[i6].active_table());
    assert!(flagged.len() > 4);
    for (i, &v) in lb.services()[i6].active_table().iter().enumerate() {
        assert_eq!(v & RING_F_CHANGED != 0, flagged.contains(&i), "slot {i}");
    }
    (flagged, gone6)
}

/// The IPv6 flag sweep over the fake's maps, read as the daemon reads them (the shared
/// scan's keyed IPv6 entries).
fn sweep_v6(lb: &mut Balancer<FakeDataplane>, now: u32) -> SweepReport {
    let t = lb.sweep_ticket(now);
    let scanned = lb.dataplane().scan_now().unwrap();
    lb.clear_flags_v6(t, &scanned.v6, TIMEOUT).unwrap()
}

/// A client of `2001:db8:100::/64` (wire-order words) whose ring slot is `slot`.
fn v6_client_in(lb: &Balancer<FakeDataplane>, slot: usize) -> [u32; 4] {
    (1..100_000u32)
        .map(|i| {
            let ip =
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, (i >> 16) as u16, i as u16);
            crate::dataplane::addr_words(ip.into())
        })
        .find(|w| lb_common::hash::ring_slot(lb_common::hash::client_hash_v6(w, lb.seed()), M) as usize == slot)
        .expect("a client in every slot")
}

#[test]
fn an_ipv6_services_flags_are_cleared_when_no_live_entry_names_another_backend() {
    let mut lb = balancer_v6();
    let (flagged, _) = flag_both(&mut lb);
    let i6 = v6_service(&lb);
    let flagged4 = lb.flagged_slots() - flagged.len();
    assert!(flagged4 > 0);
    let id = lb.services()[i6].value.id;
    // Live entries that agree with the ring, in flagged slots (established and probation),
    // and an IPv4 entry of the IPv6 service's id naming another backend: the data path never
    // reads it for an IPv6 client.
    let now = 1000;
    let (s1, s2) = (flagged[0], flagged[1]);
    let agree = |lb: &Balancer<FakeDataplane>, s: usize| PersistValue {
        backend: lb.services()[i6].active_backend(s),
        atime: now,
        ..PersistValue::default()
    };
    let (c1, c2) = (v6_client_in(&lb, s1), v6_client_in(&lb, s2));
    let (v1, v2) = (agree(&lb, s1), agree(&lb, s2));
    let dp = lb.dataplane_mut();
    dp.persist_v6.push((
        PersistKeyV6 {
            service: id,
            client: c1,
        },
        v1,
    ));
    dp.probation_v6.push((
        PersistKeyV6 {
            service: id,
            client: c2,
        },
        ProbationValue {
            backend: v2.backend,
            atime: now,
            ..ProbationValue::default()
        },
    ));
    dp.persist_v4.push((
        PersistKeyV4 {
            service: id,
            client: c1[0],
        },
        PersistValue {
            backend: 1,
            atime: now,
            ..PersistValue::default()
        },
    ));
    let r = sweep_v6(&mut lb, now);
    assert_eq!((r.cleared, r.kept), (flagged.len(), 0));
    let s = &lb.services()[i6];
    assert!(s.active_table().iter().all(|&v| v & RING_F_CHANGED == 0));
    assert_eq!(
        lb.dataplane().table(s.value.ring_base, M),
        s.active_table(),
        "active table written in place"
    );
    assert_eq!(
        lb.flagged_slots(),
        flagged4,
        "the IPv4 service's flags are left"
    );
    // And the IPv4 sweep leaves the IPv6 service's flags (none left here) and clears its own.
    lb.flag_all_slots();
    lb.apply().unwrap();
    assert_eq!(sweep(&mut lb, now).cleared, M as usize);
    assert_eq!(
        lb.flagged_slots(),
        M as usize,
        "the IPv6 service's, all flagged"
    );
    assert_eq!(sweep_v6(&mut lb, now).cleared, M as usize);
}

#[test]
fn an_ipv6_services_flag_is_kept_while_a_live_entry_names_another_backend() {
    let mut lb = balancer_v6();
    let (flagged, gone) = flag_both(&mut lb);
    let i6 = v6_service(&lb);
    let id = lb.services()[i6].value.id;
    let mut now = 1000;
    // An established client and a new one (probation) still on the backend that lost the
    // slot, and an idle established one on another slot.
    let (s1, s2, s3) = (flagged[0], flagged[1], flagged[2]);
    let (c1, c2, c3) = (
        v6_client_in(&lb, s1),
        v6_client_in(&lb, s2),
        v6_client_in(&lb, s3),
    );
    let dp = lb.dataplane_mut();
    let on_gone = |atime| PersistValue {
        backend: gone,
        atime,
        ..PersistValue::default()
    };
    dp.persist_v6.push((
        PersistKeyV6 {
            service: id,
            client: c1,
        },
        on_gone(now),
    ));
    dp.probation_v6.push((
        PersistKeyV6 {
            service: id,
            client: c2,
        },
        ProbationValue {
            backend: gone,
            atime: now,
            ..ProbationValue::default()
        },
    ));
    dp.persist_v6.push((
        PersistKeyV6 {
            service: id,
            client: c3,
        },
        on_gone(now - TIMEOUT - 2),
    ));
    let r = sweep_v6(&mut lb, now);
    assert_eq!((r.cleared, r.kept), (flagged.len() - 2, 2));
    let t = lb.services()[i6].active_table().to_vec();
    for &i in &flagged {
        assert_eq!(t[i] & RING_F_CHANGED != 0, i == s1 || i == s2, "slot {i}");
    }
    assert_eq!(
        lb.dataplane().table(lb.services()[i6].value.ring_base, M),
        t
    );
    // Live one tick past the timeout (margin), idle after: then they clear too.
    now += TIMEOUT + 1;
    assert_eq!(sweep_v6(&mut lb, now).cleared, 0);
    now += 1;
    assert_eq!(sweep_v6(&mut lb, now).cleared, 2);
    assert!(lb.services()[i6]
        .active_table()
        .iter()
        .all(|&v| v & RING_F_CHANGED == 0));
}

/// A live entry that disagrees with its unflagged slot — a client the data path steered by
/// its SA to another backend (`lb-ebpf/src/steer.rs`), which flags the slot in the map only,
/// or whose flag a table flip lost — makes the sweep flag the slot in the mirror and the map;
/// the next sweep after the entry idled out clears it again.
#[test]
fn the_sweep_adopts_a_flag_for_a_disagreeing_entry_in_an_unflagged_slot() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    assert_eq!(lb.flagged_slots(), 0);
    let c = clients(1)[0];
    let ring = fast(&lb, c).expect("an unflagged slot");
    let other = lb
        .backends()
        .find(|b| b.service == 0 && b.id != ring)
        .expect("another backend")
        .id;
    let now = 1000;
    lb.dataplane_mut().probation_v4.push((
        PersistKeyV4 {
            service: 0,
            client: c,
        },
        ProbationValue {
            backend: other,
            atime: now,
            ..ProbationValue::default()
        },
    ));
    let report = sweep(&mut lb, now);
    assert_eq!((report.adopted, report.cleared), (1, 0));
    assert_eq!(lb.flagged_slots(), 1);
    assert_eq!(fast(&lb, c), None, "the map's slot is flagged: no fast path");
    let report = sweep(&mut lb, now + TIMEOUT + 5);
    assert_eq!((report.adopted, report.cleared), (0, 1), "idle: cleared");
    assert_eq!(fast(&lb, c), Some(ring));
}
