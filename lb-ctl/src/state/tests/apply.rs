//! `Balancer::apply`: the order of writes around a flip, only changed slots of the inactive
//! buffer written, nothing written when nothing changed, a failed ring write retried.

use super::*;

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
fn an_apply_that_changes_no_member_computes_no_table() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let (builds, flips) = (lb.builds(), lb.flips());
    assert!(builds > 0 && flips > 0);
    // Health reports that change nothing (the usual case: every interval, every backend).
    let ids: Vec<u32> = lb.backends().map(|b| b.id).collect();
    for &id in &ids {
        let health = lb.backend(id).unwrap().health;
        lb.set_health(id, health).unwrap();
    }
    lb.dataplane_mut().ops.clear();
    lb.apply().unwrap();
    assert_eq!(lb.builds(), builds, "no member changed: no Maglev build");
    assert!(lb.dataplane().ops.is_empty(), "nothing written");
    // One backend down: its service's table is built and flipped again.
    lb.set_health(ids[0], HealthState::Down).unwrap();
    lb.apply().unwrap();
    assert_eq!(lb.builds(), builds + 1, "one service changed: one build");
    assert_eq!(lb.flips(), flips + 1);
    // And back up: built again.
    lb.set_health(ids[0], HealthState::Up).unwrap();
    lb.apply().unwrap();
    assert_eq!(lb.builds(), builds + 2);
}
