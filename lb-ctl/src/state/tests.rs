use super::*;
use crate::{
    config,
    dataplane::fake::{FakeDataplane, Op},
};

const M: u32 = 251;

fn config() -> Config {
    config::parse(
        "t.yaml",
        &format!(
            "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\nvirtual_servers:
  - name: a
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
        weight: 2
      - address: 10.0.0.13
  - name: b
    vip: 203.0.113.11
    ports: [4500]
    esp: false
    backends:
      - address: 10.0.1.11
"
        ),
    )
    .expect("valid config")
}

fn ifaces() -> Vec<IfaceInfo> {
    vec![
        IfaceInfo {
            name: "ext".into(),
            ifindex: 10,
            mac: [2, 0, 0, 0, 0, 10],
        },
        IfaceInfo {
            name: "int".into(),
            ifindex: 20,
            mac: [2, 0, 0, 0, 0, 20],
        },
    ]
}

fn balancer() -> Balancer<FakeDataplane> {
    Balancer::new(FakeDataplane::default(), &config(), ifaces(), 1024).unwrap()
}

/// Resolves every backend's next hop and marks it healthy.
fn resolve_all(lb: &mut Balancer<FakeDataplane>) {
    let ids: Vec<u32> = lb.backends().map(|b| b.id).collect();
    for id in ids {
        lb.set_health(id, HealthState::Up).unwrap();
        lb.set_next_hop(
            id,
            Some(NextHop {
                port: 1,
                mac: [0xaa, 0, 0, 0, 0, id as u8],
            }),
        )
        .unwrap();
    }
}

#[test]
fn ids_are_stable_and_zero_is_reserved() {
    let a = balancer();
    let b = balancer();
    let ids =
        |lb: &Balancer<FakeDataplane>| lb.backends().map(|b| (b.id, b.address)).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(
        ids(&a).iter().map(|x| x.0).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(a.services()[0].members, [1, 2, 3]);
    assert_eq!(a.services()[1].members, [4]);
}

#[test]
fn interfaces_that_left_the_config_are_forgotten_and_large_ifindexes_skip_the_array() {
    let mut dp = FakeDataplane::default();
    // A previous daemon's interfaces: 10 stays, 30 left the config.
    dp.ifindex_ports.insert(10, 0);
    dp.ifindex_ports
        .insert(30, 1 | lb_common::INGRESS_F_ATTACHED);
    dp.ingress.insert(30, 1 | lb_common::INGRESS_F_ATTACHED);
    let mut ifaces = ifaces();
    ifaces[1].ifindex = lb_common::INGRESS_SLOTS + 5;
    let mut lb = Balancer::new(dp, &config(), ifaces, 1024).unwrap();
    lb.apply().unwrap();
    let dp = lb.dataplane();
    assert_eq!(
        dp.ifindex_ports.keys().copied().collect::<Vec<_>>(),
        [10, lb_common::INGRESS_SLOTS + 5]
    );
    assert_eq!(dp.ingress.keys().copied().collect::<Vec<_>>(), [10]);
}

#[test]
fn first_apply_writes_interfaces_services_and_unusable_backends() {
    let mut lb = balancer();
    let r = lb.apply().unwrap();
    assert!(
        r.flips.is_empty(),
        "no usable backend: the all-zero table stays"
    );
    let dp = lb.dataplane();
    assert_eq!(
        dp.ops[..2],
        [
            Op::SetIface {
                port: 0,
                ifindex: 10
            },
            Op::SetIface {
                port: 1,
                ifindex: 20
            }
        ]
    );
    // Port, role flags (a plain [ext, int]: clients, then backends) and ATTACHED, in the
    // per-packet array and the fallback hash alike.
    use lb_common::{INGRESS_F_ATTACHED, INGRESS_F_BACKENDS, INGRESS_F_CLIENTS};
    assert_eq!(
        dp.ifindex_ports[&10],
        INGRESS_F_CLIENTS | INGRESS_F_ATTACHED
    );
    assert_eq!(
        dp.ifindex_ports[&20],
        1 | INGRESS_F_BACKENDS | INGRESS_F_ATTACHED
    );
    assert_eq!(dp.ingress, dp.ifindex_ports);
    let s = dp.services[&1];
    assert_eq!(s.ring_base, 2 * M);
    assert_eq!(s.flags, 0);
    assert_eq!(s.udp_ports[..2], [port_wire(4500), 0]);
    assert_eq!(dp.services[&0].flags, SVC_F_ESP);
    assert_eq!(
        dp.services[&0].udp_ports[..3],
        [port_wire(500), port_wire(4500), 0]
    );
    assert_eq!(dp.vips[&addr_words("203.0.113.11".parse().unwrap())], s);
    assert_eq!(dp.backends.len(), 4);
    assert!(dp.backends.values().all(|b| b.flags == 0));
    assert_eq!(dp.backend_ids[&addr_words("10.0.1.11".parse().unwrap())], 4);
}

#[test]
fn resolved_backends_are_written_before_the_table_and_the_flip_comes_last() {
    let mut lb = balancer();
    lb.apply().unwrap();
    lb.dataplane_mut().ops.clear();
    resolve_all(&mut lb);
    let r = lb.apply().unwrap();
    assert_eq!(r.backends_written, 4);
    assert_eq!(r.flips, [(0, M as usize), (1, M as usize)]);
    let ops = &lb.dataplane().ops;
    assert!(
        ops[..4].iter().all(|o| matches!(
            o,
            Op::SetBackend {
                flags: BACKEND_F_USABLE,
                ..
            }
        )),
        "{ops:?}"
    );
    assert_eq!(
        ops[4],
        Op::RingSlots {
            count: M as usize,
            first: M,
            last: 2 * M - 1
        }
    );
    assert_eq!(
        ops[5],
        Op::Flip {
            id: 0,
            ring_base: M
        }
    );
    assert_eq!(
        ops[6],
        Op::RingSlots {
            count: M as usize,
            first: 3 * M,
            last: 4 * M - 1
        }
    );
    assert_eq!(
        ops[7],
        Op::Flip {
            id: 1,
            ring_base: 3 * M
        }
    );
    assert_eq!(ops.len(), 8);

    let dp = lb.dataplane();
    let table = dp.table(M, M);
    assert_eq!(table, lb.services()[0].active_table());
    assert!(table.iter().all(|&b| (1..=3).contains(&b)));
    assert!(dp.table(3 * M, M).iter().all(|&b| b == 4));
    let b = dp.backends[&4];
    assert_eq!(
        (b.tx_port, b.ifindex, b.smac, b.dmac),
        (1, 20, [2, 0, 0, 0, 0, 20], [0xaa, 0, 0, 0, 0, 4])
    );
    assert_eq!(b.addr[0].to_ne_bytes(), [10, 0, 1, 11]);
    assert_eq!(b.service, 1);
}

#[test]
fn nothing_is_written_when_nothing_changed() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    lb.dataplane_mut().ops.clear();
    assert_eq!(lb.apply().unwrap(), ApplyReport::default());
    assert!(lb.dataplane().ops.is_empty());
}

#[test]
fn second_change_writes_only_the_changed_slots_of_the_inactive_buffer() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap(); // buffer 1 of service 0 active, buffer 0 still all zeros
    let full = lb.services()[0].active_table().to_vec();

    // Backend 2 lost: its slots move, into buffer 0, which held zeros: every slot differs.
    lb.set_next_hop(2, None).unwrap();
    lb.dataplane_mut().ops.clear();
    let r = lb.apply().unwrap();
    assert_eq!(r.flips, [(0, M as usize)]);
    let without2 = lb.services()[0].active_table().to_vec();
    let moved = full
        .iter()
        .zip(&without2)
        .filter(|(a, b)| **a != **b & RING_BACKEND_MASK)
        .count();
    let of_2 = full.iter().filter(|&&b| b == 2).count();
    assert_eq!(moved, of_2, "only backend 2's slots move");
    assert!(
        full.iter()
            .zip(&without2)
            .all(|(&a, &b)| (b & RING_F_CHANGED != 0) == (a == 2)),
        "exactly the moved slots are flagged"
    );
    let ops = &lb.dataplane().ops;
    assert_eq!(
        ops[1],
        Op::Flip {
            id: 0,
            ring_base: 0
        }
    );
    assert_eq!(
        ops[2],
        Op::SetBackend { id: 2, flags: 0 },
        "unusable backend written after the flip"
    );

    // Backend 2 back: buffer 1 holds `full`; the new table is `full` with backend 2's
    // slots flagged (flags stay): only those slots are written.
    resolve_all(&mut lb);
    lb.dataplane_mut().ops.clear();
    let r = lb.apply().unwrap();
    assert_eq!(r.flips, [(0, of_2)], "only the flags are written");
    let back: Vec<u32> = full
        .iter()
        .map(|&b| if b == 2 { b | RING_F_CHANGED } else { b })
        .collect();
    assert_eq!(lb.services()[0].active_table(), back);
    assert_eq!(lb.dataplane().table(M, M), back);

    // Lost again: buffer 0 holds `without2` (flags included) from before: no slot written.
    lb.set_next_hop(2, None).unwrap();
    let r = lb.apply().unwrap();
    assert_eq!(r.flips, [(0, 0)]);
    assert_eq!(lb.dataplane().table(0, M), without2);

    // Backend 3 lost too: only the slots that differ from `back` (buffer 1) are written.
    lb.set_next_hop(3, None).unwrap();
    let r = lb.apply().unwrap();
    let without23 = lb.services()[0].active_table().to_vec();
    let differs = without23.iter().zip(&back).filter(|(a, b)| a != b).count();
    assert_eq!(r.flips, [(0, differs)]);
    assert!(differs < M as usize);
    assert_eq!(lb.dataplane().table(M, M), without23);
    assert!(without23.iter().all(|&b| b & RING_BACKEND_MASK == 1));
    assert!(
        without23
            .iter()
            .zip(&full)
            .all(|(&v, &f)| (v & RING_F_CHANGED != 0) == (f != 1)),
        "every slot that ever left backend 1's neighbours is flagged, no other"
    );
}

#[test]
fn a_backend_changing_next_hop_is_rewritten_without_a_flip() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    lb.dataplane_mut().ops.clear();
    assert!(lb
        .set_next_hop(
            4,
            Some(NextHop {
                port: 0,
                mac: [0xbb; 6]
            })
        )
        .unwrap());
    let r = lb.apply().unwrap();
    assert_eq!(
        r,
        ApplyReport {
            backends_written: 1,
            ..ApplyReport::default()
        }
    );
    assert_eq!(lb.dataplane().backends[&4].ifindex, 10);
    assert_eq!(lb.dataplane().backends[&4].smac, [2, 0, 0, 0, 0, 10]);
}

#[test]
fn a_failed_ring_write_is_retried_in_full_and_nothing_flips() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap(); // service 0: buffer 1 active
    let full = lb.services()[0].active_table().to_vec();
    lb.set_next_hop(1, None).unwrap();
    lb.apply().unwrap(); // buffer 0 active (without backend 1)
    lb.set_next_hop(
        1,
        Some(NextHop {
            port: 1,
            mac: [0xaa, 0, 0, 0, 0, 1],
        }),
    )
    .unwrap();
    lb.set_next_hop(2, None).unwrap();
    lb.dataplane_mut().fail_ring_write_after = Some(10);
    lb.dataplane_mut().ops.clear();
    assert!(lb.apply().is_err());
    assert!(
        !lb.dataplane()
            .ops
            .iter()
            .any(|o| matches!(o, Op::Flip { .. })),
        "no flip after a failed write"
    );
    assert_eq!(lb.services()[0].value.ring_base, 0);
    assert_eq!(lb.dataplane().services[&0].ring_base, 0);

    // Some slots of buffer 1 now hold an unknown mix: the retry rewrites all of them.
    let r = lb.apply().unwrap();
    assert_eq!(r.flips, [(0, M as usize)]);
    let want = lb.services()[0].active_table().to_vec();
    assert_ne!(want, full);
    assert_eq!(lb.dataplane().table(M, M), want);
}

#[test]
fn unknown_ports_and_ids_are_refused() {
    let mut lb = balancer();
    assert!(matches!(
        lb.set_next_hop(
            1,
            Some(NextHop {
                port: 2,
                mac: [0; 6]
            })
        ),
        Err(StateError::UnknownPort { id: 1, port: 2 })
    ));
    assert!(matches!(
        lb.set_next_hop(99, None),
        Err(StateError::UnknownBackend { id: 99 })
    ));
}

#[test]
fn ids_run_out_with_a_clear_error() {
    let err = Balancer::new(FakeDataplane::default(), &config(), ifaces(), 3)
        .err()
        .unwrap();
    assert!(
        matches!(err, StateError::IdsExhausted { capacity: 3, .. }),
        "{err}"
    );
}

// ---- Slot flags (RING_F_CHANGED) and the sweep ----

const TIMEOUT: u32 = 100;

/// The data path's persistence path over the fake's maps (select.rs `forward_v4`
/// without the fast path): a live entry naming a usable backend of the service wins,
/// otherwise the ring picks and the entry is (re)written when `write`.
fn slow(lb: &mut Balancer<FakeDataplane>, client: u32, now: u32, write: bool) -> Option<u32> {
    let seed = lb.seed();
    let dp = lb.dataplane_mut();
    let s = dp.services[&0];
    let key = PersistKeyV4 { service: 0, client };
    let pos = dp.persist_v4.iter().position(|(k, _)| *k == key);
    if let Some(i) = pos {
        let e = dp.persist_v4[i].1;
        if let Some(b) = dp.backends.get(&e.backend) {
            if b.flags & BACKEND_F_USABLE != 0
                && b.service == 0
                && lb_common::is_live(now, e.atime, TIMEOUT)
            {
                if write {
                    dp.persist_v4[i].1.atime = now;
                }
                return Some(e.backend);
            }
        }
    }
    let slot = lb_common::hash::client_hash_v4(client, seed) % M;
    let id = dp.rings.get(&(s.ring_base + slot)).copied().unwrap_or(0) & RING_BACKEND_MASK;
    if id == BACKEND_NONE {
        return None;
    }
    if write {
        let v = PersistValue {
            backend: id,
            atime: now,
            ..PersistValue::default()
        };
        match pos {
            Some(i) => dp.persist_v4[i].1 = v,
            None => dp.persist_v4.push((key, v)),
        }
    }
    Some(id)
}

/// The fast path's choice for a bulk packet, when it takes it (unflagged slot, usable
/// backend of the service).
fn fast(lb: &Balancer<FakeDataplane>, client: u32) -> Option<u32> {
    let dp = lb.dataplane();
    let s = dp.services[&0];
    let slot = lb_common::hash::client_hash_v4(client, lb.seed()) % M;
    let v = dp.rings.get(&(s.ring_base + slot)).copied().unwrap_or(0);
    let b = dp.backends.get(&(v & RING_BACKEND_MASK))?;
    (v & RING_F_CHANGED == 0 && b.flags & BACKEND_F_USABLE != 0 && b.service == 0)
        .then_some(v & RING_BACKEND_MASK)
}

/// The invariant: wherever the fast path would take a client's bulk packet, it sends it
/// where the persistence path would.
fn check_invariant(lb: &mut Balancer<FakeDataplane>, clients: &[u32], now: u32) {
    for &c in clients {
        if let Some(f) = fast(lb, c) {
            assert_eq!(Some(f), slow(lb, c, now, false), "client {c:#x} would move");
        }
    }
}

fn sweep(lb: &mut Balancer<FakeDataplane>, now: u32) -> SweepReport {
    let t = lb.sweep_ticket(now);
    let entries = lb.dataplane().persistence_v4_reader().unwrap()().unwrap();
    lb.clear_flags(t, &entries, TIMEOUT).unwrap()
}

fn clients(n: u32) -> Vec<u32> {
    (0..n)
        .map(|i| 0x0a64_0000u32.wrapping_add(i * 7919).to_be())
        .collect()
}

/// Maglev slots of service 0 that differ between two tables (backends only).
fn moved(a: &[u32], b: &[u32]) -> Vec<usize> {
    (0..a.len())
        .filter(|&i| (a[i] ^ b[i]) & RING_BACKEND_MASK != 0)
        .collect()
}

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

#[test]
fn capacity_has_headroom() {
    assert_eq!(backend_capacity(3), MIN_BACKEND_CAPACITY);
    assert_eq!(backend_capacity(5000), 10_002);
}

// Probation entries and the slot flag sweep: a file of its own.
mod probation;

/// Identity by name (`crate::identity`): a restart with virtual servers and interfaces
/// reordered and a newcomer inserted in front, as the daemon does it.
mod identity_by_name {
    use super::*;
    use crate::{
        identity::{self, Identity, PinnedIds},
        pin::PinnedState,
    };

    fn config_of(ifaces: &[&str], servers: &[&str]) -> Config {
        // Roles spelled out: a plain list's roles follow positions.
        let ifaces: Vec<String> = ifaces
            .iter()
            .map(|&n| {
                let role = if n == "ext" { "clients" } else { "backends" };
                format!("{{name: {n}, role: {role}}}")
            })
            .collect();
        let mut text = format!(
            "interfaces: [{}]\nmaglev_table_size: {M}\nhash_seed: 7\nvirtual_servers:\n",
            ifaces.join(", ")
        );
        for s in servers {
            let (vip, backends) = match *s {
                "a" => ("203.0.113.10", ["10.0.0.11", "10.0.0.12", "10.0.0.13"]),
                "b" => ("203.0.113.11", ["10.0.1.11", "10.0.1.12", "10.0.1.13"]),
                "c" => ("203.0.113.12", ["10.0.2.11", "10.0.2.12", "10.0.2.13"]),
                _ => unreachable!(),
            };
            text.push_str(&format!("  - name: {s}\n    vip: {vip}\n    backends:\n"));
            for b in backends {
                text.push_str(&format!("      - address: {b}\n"));
            }
        }
        config::parse("t.yaml", &text).expect("valid config")
    }

    fn iface(name: &str) -> IfaceInfo {
        let ifindex = if name == "ext" { 10 } else { 20 };
        IfaceInfo {
            name: name.into(),
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
        }
    }

    /// Every backend healthy behind interface `int`, whatever its port.
    fn up(lb: &mut Balancer<FakeDataplane>) {
        let port = lb.port_of("int").unwrap();
        let ids: Vec<u32> = lb.backends().map(|b| b.id).collect();
        for id in ids {
            lb.set_health(id, HealthState::Up).unwrap();
            lb.set_next_hop(
                id,
                Some(NextHop {
                    port,
                    mac: [0xaa, 0, 0, 0, 0, id as u8],
                }),
            )
            .unwrap();
        }
    }

    /// What a restart reads from the pins: the maps' state and the identities.
    fn pins_of(dp: &FakeDataplane) -> (PinnedState, PinnedIds) {
        let slots = dp.services.keys().max().map_or(0, |&m| m + 1);
        let mut services = vec![lb_common::Service::default(); slots as usize];
        for (&id, s) in &dp.services {
            services[id as usize] = *s;
        }
        let state = PinnedState {
            backends: dp
                .backends
                .iter()
                .filter(|(_, b)| b.addr != [0; 4])
                .map(|(&id, b)| (id, *b))
                .collect(),
            rings: (0..slots)
                .map(|id| [dp.table(id * 2 * M, M), dp.table((id * 2 + 1) * M, M)])
                .collect(),
            services: services.clone(),
        };
        let ids = PinnedIds {
            services: PinnedIds::from_services(&services),
            ports: dp
                .ifindex_ports
                .iter()
                .map(|(&i, &v)| (i, v & lb_common::INGRESS_PORT_MASK))
                .collect(),
        };
        (state, ids)
    }

    /// The daemon's restart over `before`'s maps with `config`: identities assigned from
    /// `saved` and the pins, a balancer built with them, adoption, one apply.
    fn restart(
        before: &Balancer<FakeDataplane>,
        saved: &Identity,
        ifaces: &[&str],
        servers: &[&str],
        positional: bool,
    ) -> (Balancer<FakeDataplane>, Identity, ApplyReport) {
        let config = config_of(ifaces, servers);
        let (state, pinned) = pins_of(before.dataplane());
        let infos: Vec<IfaceInfo> = ifaces.iter().map(|n| iface(n)).collect();
        let ifindexes: Vec<u32> = infos.iter().map(|i| i.ifindex).collect();
        let identity = if positional {
            Identity::positional(&config, ifaces.iter().copied())
        } else {
            identity::assign(&config, &ifindexes, saved, &pinned).identity
        };
        let d = before.dataplane();
        let dp = FakeDataplane {
            backends: d.backends.clone(),
            backend_ids: d.backend_ids.clone(),
            rings: d.rings.clone(),
            services: d.services.clone(),
            vips: d.vips.clone(),
            ifaces: d.ifaces.clone(),
            ifindex_ports: d.ifindex_ports.clone(),
            ingress: d.ingress.clone(),
            ..FakeDataplane::default()
        };
        let mut lb = Balancer::with_identity(dp, &config, infos, 1024, &identity).unwrap();
        lb.adopt(&state, true).unwrap();
        let report = lb.apply().unwrap();
        (lb, identity, report)
    }

    /// (service name, id, ring_base, active table) and (address, backend id), sorted.
    #[allow(clippy::type_complexity)]
    fn picture(
        lb: &Balancer<FakeDataplane>,
    ) -> (Vec<(String, u32, u32, Vec<u32>)>, Vec<(IpAddr, u32)>) {
        let mut s: Vec<_> = lb
            .services()
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.value.id,
                    s.value.ring_base,
                    s.active_table().to_vec(),
                )
            })
            .collect();
        s.sort();
        let mut b: Vec<_> = lb.backends().map(|b| (b.address, b.id)).collect();
        b.sort();
        (s, b)
    }

    #[test]
    fn reordering_and_inserting_virtual_servers_and_interfaces_moves_nothing() {
        let config = config_of(&["ext", "int"], &["a", "b"]);
        let first = identity::assign(
            &config,
            &[10, 20],
            &Identity::default(),
            &PinnedIds::default(),
        )
        .identity;
        let infos = vec![iface("ext"), iface("int")];
        let mut lb =
            Balancer::with_identity(FakeDataplane::default(), &config, infos, 1024, &first)
                .unwrap();
        up(&mut lb);
        lb.apply().unwrap();
        let (services, backends) = picture(&lb);

        // (1) The two virtual servers swapped.
        let (mut lb2, id2, report) = restart(&lb, &first, &["ext", "int"], &["b", "a"], false);
        assert!(report.flips.is_empty(), "{report:?}");
        assert_eq!(report.backends_written, 0, "{report:?}");
        assert_eq!(picture(&lb2), (services.clone(), backends.clone()));
        assert_eq!(
            lb2.services()[0].name,
            "b",
            "config order kept for the operator"
        );
        assert_eq!(lb2.services()[0].value.id, 1);

        // (2) A third inserted in front: it takes id 2; a and b keep theirs, their tables
        // and their backends' ids.
        up(&mut lb2);
        lb2.apply().unwrap();
        let (mut lb3, id3, report) = restart(&lb2, &id2, &["ext", "int"], &["c", "b", "a"], false);
        assert_eq!(lb3.services()[0].value.id, 2);
        assert_eq!(lb3.services()[0].value.ring_base, 2 * 2 * M);
        assert!(
            report.flips.iter().all(|&(id, _)| id == 2),
            "only the newcomer's table is written: {report:?}"
        );
        let (s3, b3) = picture(&lb3);
        assert_eq!(&s3[..2], &services[..]);
        assert!(backends.iter().all(|b| b3.contains(b)), "{b3:?}");

        // (3) The interfaces swapped: each keeps its port; no backend entry is rewritten
        // (their tx_port and ifindex stand), and the interface entries are the same.
        up(&mut lb3);
        lb3.apply().unwrap();
        let ports_before = lb3.dataplane().ifindex_ports.clone();
        let (s_before, b_before) = picture(&lb3);
        let (lb4, _, report) = restart(&lb3, &id3, &["int", "ext"], &["c", "b", "a"], false);
        assert!(report.flips.is_empty(), "{report:?}");
        assert_eq!(report.backends_written, 0, "{report:?}");
        assert_eq!(lb4.dataplane().ifindex_ports, ports_before);
        assert_eq!(lb4.port_of("ext"), Some(0));
        assert_eq!(lb4.port_of("int"), Some(1));
        assert!(lb4
            .dataplane()
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::SetIface { port, ifindex } => Some((*port, *ifindex)),
                _ => None,
            })
            .all(|p| p == (0, 10) || p == (1, 20)));
        assert_eq!(picture(&lb4), (s_before, b_before));
    }

    #[test]
    fn by_position_the_same_restart_would_move_clients() {
        // The negative control: ids by position (before identity by name) re-key both
        // services when the two swap.
        let config = config_of(&["ext", "int"], &["a", "b"]);
        let mut lb = Balancer::new(
            FakeDataplane::default(),
            &config,
            vec![iface("ext"), iface("int")],
            1024,
        )
        .unwrap();
        up(&mut lb);
        lb.apply().unwrap();
        let first = Identity::positional(&config, ["ext", "int"]);
        let (lb2, _, report) = restart(&lb, &first, &["ext", "int"], &["b", "a"], true);
        assert_eq!(
            (report.backends_removed, report.backends_written),
            (6, 6),
            "every backend renumbered: {report:?}"
        );
        assert_ne!(picture(&lb2).0, picture(&lb).0);
    }

    #[test]
    fn a_removed_virtual_server_leaves_the_vip_map_and_its_id_is_taken_by_a_newcomer() {
        let config = config_of(&["ext", "int"], &["a", "b"]);
        let first = Identity::positional(&config, ["ext", "int"]);
        let mut lb = Balancer::with_identity(
            FakeDataplane::default(),
            &config,
            vec![iface("ext"), iface("int")],
            1024,
            &first,
        )
        .unwrap();
        up(&mut lb);
        lb.apply().unwrap();
        let vip = |s: &str| addr_words(s.parse().unwrap());
        assert!(lb.dataplane().vips.contains_key(&vip("203.0.113.10")));
        let (_, b_before) = picture(&lb);

        // a removed: its VIP is no longer balanced, its SERVICES slot cleared; b untouched.
        let (mut lb2, id2, report) = restart(&lb, &first, &["ext", "int"], &["b"], false);
        assert!(report.flips.is_empty(), "{report:?}");
        assert_eq!(report.backends_removed, 3, "a's backends forgotten");
        let dp = lb2.dataplane();
        assert!(!dp.vips.contains_key(&vip("203.0.113.10")), "{:?}", dp.vips);
        assert!(!dp.services.contains_key(&0));
        assert_eq!(dp.vips[&vip("203.0.113.11")].id, 1);
        assert!(b_before
            .iter()
            .filter(|(a, _)| a.to_string().starts_with("10.0.1."))
            .all(|x| picture(&lb2).1.contains(x)));

        // c arrives: it takes the released 0; a's VIP stays gone.
        up(&mut lb2);
        lb2.apply().unwrap();
        let (lb3, _, _) = restart(&lb2, &id2, &["ext", "int"], &["c", "b"], false);
        let dp = lb3.dataplane();
        assert_eq!(dp.vips[&vip("203.0.113.12")].id, 0);
        assert_eq!(dp.vips[&vip("203.0.113.11")].id, 1);
        assert!(!dp.vips.contains_key(&vip("203.0.113.10")));
    }

    #[test]
    fn a_service_id_beyond_the_count_works_and_ring_bases_follow_ids() {
        // a (0) removed: b keeps 1 and c takes 0, the lowest free.
        let mut saved = Identity::default();
        saved.services.insert("a/ipv4".into(), 0);
        saved.services.insert("b/ipv4".into(), 1);
        saved.ports.insert("ext".into(), 0);
        saved.ports.insert("int".into(), 1);
        let config = config_of(&["ext", "int"], &["b"]);
        let id = identity::assign(&config, &[10, 20], &saved, &PinnedIds::default()).identity;
        assert_eq!(id.service_slots(), 2);
        let mut lb = Balancer::with_identity(
            FakeDataplane::default(),
            &config,
            vec![iface("ext"), iface("int")],
            1024,
            &id,
        )
        .unwrap();
        up(&mut lb);
        let report = lb.apply().unwrap();
        assert_eq!(report.flips.len(), 1);
        let svc = lb.dataplane().services[&1];
        assert_eq!(svc.id, 1);
        assert!(svc.ring_base == 2 * M || svc.ring_base == 3 * M);
        assert_eq!(lb.service(1).name, "b");
        assert_eq!(lb.service_index(1), Some(0));
        assert!(lb.backends().all(|b| b.service == 1));
        // Clients of service 1 are counted against its table by the sweep.
        assert!(lb.dataplane().backends.values().all(|b| b.service == 1));
    }
}
