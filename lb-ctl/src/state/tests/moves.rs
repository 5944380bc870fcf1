//! Slot moves ("Slot moves" in the module doc of `state`): a slot whose backend changes while
//! the old one is usable keeps it, flagged, for `slot_move_delay`, so that every client of the
//! slot that sends anything meanwhile refreshes its entry on the old backend before the move —
//! also a client the slot fast path had not refreshed for longer than the persistence timeout.

use std::time::{Duration, Instant};

use super::*;

const DELAY: Duration = Duration::from_secs(10);

fn with_delay(fast_path: bool) -> Balancer<FakeDataplane> {
    let yaml = format!(
        "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\nslot_move_delay: 10s
slot_fast_path: {fast_path}
virtual_servers:
  - name: a
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 10.0.0.13
"
    );
    let config = config::parse("t.yaml", &yaml).expect("valid config");
    Balancer::new(FakeDataplane::default(), &config, ifaces(), 1024).unwrap()
}

fn flagged(t: &[u32]) -> Vec<usize> {
    (0..t.len())
        .filter(|&i| t[i] & RING_F_CHANGED != 0)
        .collect()
}

/// A client of service 0 whose slot is `slot`.
fn client_in(lb: &Balancer<FakeDataplane>, slot: usize) -> u32 {
    (0..u32::MAX)
        .map(|i| 0x0a64_0000u32.wrapping_add(i).to_be())
        .find(|&c| {
            lb_common::hash::ring_slot(lb_common::hash::client_hash_v4(c, lb.seed()), M) as usize
                == slot
        })
        .unwrap()
}

/// An entry of `client` on `backend`, idle past the timeout at `now` (a client in a shared
/// slot the fast path did not refresh).
fn stale_entry(lb: &mut Balancer<FakeDataplane>, client: u32, backend: u32, now: u32) {
    let key = PersistKeyV4 { service: 0, client };
    lb.dataplane_mut().persist_v4.push((
        key,
        PersistValue {
            backend,
            atime: now - TIMEOUT - 5,
            ..PersistValue::default()
        },
    ));
}

#[test]
fn a_moving_slot_keeps_its_usable_backend_flagged_until_the_delay_ends() {
    let t0 = Instant::now();
    let mut lb = with_delay(true);
    resolve_all(&mut lb);
    lb.apply_at(t0).unwrap();
    let before = lb.services()[0].active_table().to_vec();
    assert!(flagged(&before).is_empty());

    // A backend added: the slots it takes keep their backends, flagged, and nothing else
    // changes.
    lb.add_backend(0, "10.0.0.14".parse().unwrap(), 1).unwrap();
    resolve_all(&mut lb);
    let t1 = t0 + Duration::from_secs(1);
    lb.apply_at(t1).unwrap();
    let held = lb.services()[0].active_table().to_vec();
    let moving = flagged(&held);
    assert!(!moving.is_empty());
    assert_eq!(
        moved(&before, &held),
        Vec::<usize>::new(),
        "no backend changes yet"
    );
    assert_eq!(lb.held_slots(), moving.len());
    assert_eq!(lb.next_move(), Some(t1 + DELAY));
    assert_eq!(lb.dataplane().table(0, M), held, "the map holds the flags");

    // A client of a moving slot whose entry idled out while it was active (the fast path,
    // in a shared slot, did not refresh it) sends a packet: flagged, it takes the
    // persistence path, and the ring still names its backend.
    let slot = moving[0];
    let old = held[slot] & RING_BACKEND_MASK;
    let c = client_in(&lb, slot);
    let now = 1000;
    stale_entry(&mut lb, c, old, now);
    assert_eq!(fast(&lb, c), None, "a flagged slot takes no fast path");
    assert_eq!(slow(&mut lb, c, now, true), Some(old));

    // The sweep leaves held slots flagged: no entry disagrees with them, but their clients
    // must go on refreshing.
    let r = sweep(&mut lb, now);
    assert_eq!(r.cleared, 0);
    assert_eq!(flagged(lb.services()[0].active_table()), moving);

    // Before the delay ends, nothing is rebuilt or flipped.
    let flips = lb.flips();
    let r = lb.apply_at(t1 + DELAY - Duration::from_millis(1)).unwrap();
    assert!(r.flips.is_empty());
    assert_eq!(lb.flips(), flips);

    // Then the slots move, flagged; the refreshed client keeps its backend.
    let r = lb.apply_at(t1 + DELAY).unwrap();
    assert_eq!(r.flips.len(), 1);
    let after = lb.services()[0].active_table().to_vec();
    assert_eq!(moved(&before, &after), moving);
    assert_eq!(flagged(&after), moving);
    assert_eq!(lb.held_slots(), 0);
    assert_eq!(lb.next_move(), None);
    assert_ne!(after[slot] & RING_BACKEND_MASK, old);
    assert_eq!(
        slow(&mut lb, c, now + 3, false),
        Some(old),
        "kept by its entry"
    );
    check_invariant(&mut lb, &[c], now + 3);
}

/// The negative control of the test above: without the delay the same client, whose entry
/// had idled out, moves with its slot.
#[test]
fn without_the_delay_an_idled_out_client_moves_with_its_slot() {
    let mut lb = balancer();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let before = lb.services()[0].active_table().to_vec();
    lb.add_backend(0, "10.0.0.14".parse().unwrap(), 1).unwrap();
    resolve_all(&mut lb);
    lb.apply().unwrap();
    let after = lb.services()[0].active_table().to_vec();
    let slot = moved(&before, &after)[0];
    let old = before[slot] & RING_BACKEND_MASK;
    let c = client_in(&lb, slot);
    let now = 1000;
    stale_entry(&mut lb, c, old, now);
    assert_eq!(
        slow(&mut lb, c, now, true),
        Some(after[slot] & RING_BACKEND_MASK)
    );
    assert_eq!(lb.held_slots(), 0);
}

#[test]
fn slots_of_a_backend_that_is_no_longer_usable_move_at_once() {
    let t0 = Instant::now();
    let mut lb = with_delay(true);
    resolve_all(&mut lb);
    lb.apply_at(t0).unwrap();
    let before = lb.services()[0].active_table().to_vec();
    let dead = before[0] & RING_BACKEND_MASK;
    lb.set_next_hop(dead, None).unwrap();
    lb.apply_at(t0 + Duration::from_secs(1)).unwrap();
    let after = lb.services()[0].active_table().to_vec();
    let gone: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] & RING_BACKEND_MASK == dead)
        .collect();
    assert_eq!(
        moved(&before, &after),
        gone,
        "its slots, and only those, move"
    );
    assert_eq!(lb.held_slots(), 0, "nothing to keep on a dead backend");
    // It recovers: its slots would go back to it, from backends that are usable, so they
    // wait (the clients that moved in the meantime refresh first).
    resolve_all(&mut lb);
    let t2 = t0 + Duration::from_secs(2);
    lb.apply_at(t2).unwrap();
    assert_eq!(lb.services()[0].active_table(), after.as_slice());
    assert_eq!(lb.held_slots(), gone.len());
    lb.apply_at(t2 + DELAY).unwrap();
    let back = lb.services()[0].active_table().to_vec();
    assert_eq!(moved(&before, &back), Vec::<usize>::new());
}

#[test]
fn slots_of_a_draining_backend_move_at_once_and_a_weight_change_waits() {
    let t0 = Instant::now();
    let mut lb = with_delay(true);
    resolve_all(&mut lb);
    lb.apply_at(t0).unwrap();
    let before = lb.services()[0].active_table().to_vec();
    let draining = before[0] & RING_BACKEND_MASK;
    lb.set_drain(
        draining,
        Some(std::time::SystemTime::now() + Duration::from_secs(600)),
    )
    .unwrap();
    lb.apply_at(t0 + Duration::from_secs(1)).unwrap();
    let after = lb.services()[0].active_table().to_vec();
    assert!(
        after.iter().all(|&v| v & RING_BACKEND_MASK != draining),
        "a drain takes no new client at once"
    );
    assert_eq!(lb.held_slots(), 0);
    // A weight change of a backend in the ring: the slots it loses wait.
    let other = (0..after.len())
        .map(|i| after[i] & RING_BACKEND_MASK)
        .find(|&id| id != draining)
        .unwrap();
    lb.set_weight(other, 5).unwrap();
    let t2 = t0 + Duration::from_secs(2);
    lb.apply_at(t2).unwrap();
    let held = lb.services()[0].active_table().to_vec();
    assert_eq!(
        moved(&after, &held),
        Vec::<usize>::new(),
        "only flags change"
    );
    let n = lb.held_slots();
    assert!(n > 0);
    lb.apply_at(t2 + DELAY).unwrap();
    assert_eq!(lb.held_slots(), 0);
    let fin = lb.services()[0].active_table().to_vec();
    assert_eq!(
        moved(&held, &fin).len(),
        n,
        "the held slots move, and only they"
    );
    assert!(moved(&held, &fin)
        .iter()
        .all(|&i| held[i] & RING_F_CHANGED != 0));
}

#[test]
fn a_change_during_a_hold_restarts_the_delay_and_a_held_slot_moves_to_its_latest_target() {
    let t0 = Instant::now();
    let mut lb = with_delay(true);
    resolve_all(&mut lb);
    lb.apply_at(t0).unwrap();
    let before = lb.services()[0].active_table().to_vec();
    let t1 = t0 + Duration::from_secs(1);
    lb.add_backend(0, "10.0.0.14".parse().unwrap(), 1).unwrap();
    resolve_all(&mut lb);
    lb.apply_at(t1).unwrap();
    let first = lb.held_slots();
    // Five seconds later another backend: new slots are held, and the delay starts again.
    let t2 = t1 + Duration::from_secs(5);
    lb.add_backend(0, "10.0.0.15".parse().unwrap(), 1).unwrap();
    resolve_all(&mut lb);
    lb.apply_at(t2).unwrap();
    assert!(lb.held_slots() > first);
    assert_eq!(lb.next_move(), Some(t2 + DELAY));
    lb.apply_at(t1 + DELAY).unwrap();
    assert_eq!(
        moved(&before, lb.services()[0].active_table()),
        Vec::<usize>::new(),
        "the first hold's end moves nothing"
    );
    lb.apply_at(t2 + DELAY).unwrap();
    assert_eq!(lb.held_slots(), 0);
    // Every slot ends where a fresh build of the five backends puts it.
    let mut fresh = with_delay(true);
    fresh
        .add_backend(0, "10.0.0.14".parse().unwrap(), 1)
        .unwrap();
    fresh
        .add_backend(0, "10.0.0.15".parse().unwrap(), 1)
        .unwrap();
    resolve_all(&mut fresh);
    fresh.apply_at(t0).unwrap();
    assert_eq!(
        moved(
            fresh.services()[0].active_table(),
            lb.services()[0].active_table()
        ),
        Vec::<usize>::new()
    );
}

#[test]
fn with_the_fast_path_off_slots_move_at_once() {
    let t0 = Instant::now();
    let mut lb = with_delay(false);
    resolve_all(&mut lb);
    lb.apply_at(t0).unwrap();
    let before = lb.services()[0].active_table().to_vec();
    lb.add_backend(0, "10.0.0.14".parse().unwrap(), 1).unwrap();
    resolve_all(&mut lb);
    lb.apply_at(t0 + Duration::from_secs(1)).unwrap();
    assert!(!moved(&before, lb.services()[0].active_table()).is_empty());
    assert_eq!(lb.held_slots(), 0);
}

#[test]
fn a_delay_longer_than_the_persistence_timeout_is_refused() {
    let err = config::parse(
        "t.yaml",
        "interfaces: [ext]\npersistence_timeout: 30s\nslot_move_delay: 1m\nvirtual_servers:
  - name: a
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("slot_move_delay") && err.contains("longer than persistence_timeout"),
        "{err}"
    );
}

#[test]
fn the_default_delay_is_five_seconds_or_the_persistence_timeout_if_shorter() {
    let parse = |timeout: &str| {
        config::parse(
            "t.yaml",
            &format!(
                "interfaces: [ext]\npersistence_timeout: {timeout}\nvirtual_servers:
  - name: a
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
"
            ),
        )
        .unwrap()
        .slot_move_delay
    };
    assert_eq!(parse("30m"), Duration::from_secs(5));
    assert_eq!(parse("3s"), Duration::from_secs(3));
}
