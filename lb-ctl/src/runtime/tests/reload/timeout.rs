//! A reload of `persistence_timeout` (`state/timeout.rs`): the program is swapped, nobody
//! moves, every place that tests liveness follows, and a slot flag sweep that began under the
//! old timeout clears nothing.

use lb_common::{hash::ring_slot, RING_F_CHANGED};

use super::*;
use crate::state::StateError;

/// The harness's file with `persistence_timeout: to` (the harness starts with 10s).
fn write_timeout(h: &Harness, file: &Path, to: &str) {
    let text = yaml(&h._dir.0, "", THREE, 7).replace(
        "persistence_timeout: 10s",
        &format!("persistence_timeout: {to}"),
    );
    fs::write(file, text).unwrap();
}

fn ticks(d: &str) -> u32 {
    let text = format!(
        "interfaces: [ext]\npersistence_timeout: {d}\nvirtual_servers:\n  - name: a\n    vip: 192.0.2.1\n    backends:\n      - address: 10.0.0.11\n"
    );
    config::parse("t.yaml", &text)
        .unwrap()
        .persist_timeout_ticks()
}

/// Ring slots of service 0's active table flagged `RING_F_CHANGED`.
fn flagged(h: &Harness) -> Vec<u32> {
    let dp = h.lb.dataplane();
    let base = dp.services[&0].ring_base;
    (0..M)
        .filter(|s| {
            dp.rings
                .get(&(base + s))
                .is_some_and(|v| v & RING_F_CHANGED != 0)
        })
        .collect()
}

fn swaps(h: &Harness) -> Vec<u32> {
    h.lb.dataplane()
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::SwapProgram {
                persist_timeout_ticks,
            } => Some(*persist_timeout_ticks),
            _ => None,
        })
        .collect()
}

#[test]
fn a_reload_of_persistence_timeout_swaps_the_program_and_moves_nobody() {
    let (mut h, file) = harness("");
    let before = h.traffic(300);
    write_timeout(&h, &file, "30s");
    let maps = format!("{:?}", h.lb.dataplane());
    let dry = plan(reload(&mut h, true));
    assert_eq!(format!("{:?}", h.lb.dataplane()), maps, "a dry run swapped");
    assert_eq!(dry.changes.len(), 1, "{:?}", dry.changes);
    let line = &dry.changes[0];
    for want in [
        "persistence_timeout: 10s → 30s",
        "BPF_LINK_UPDATE",
        "moves no client",
        "idle between 10s and 30s",
    ] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    assert!(dry.virtual_servers.iter().all(|v| v.moving == 0), "{dry:?}");
    assert!(flagged(&h).is_empty(), "no slot flagged before");

    let done = plan(reload(&mut h, false));
    assert_eq!(done.changes, dry.changes);
    assert_eq!(swaps(&h), [ticks("30s")]);
    assert_eq!(h.lb.persist_timeout_ticks(), ticks("30s"));
    assert_eq!(h.lb.timeout_generation(), 1);
    assert_eq!(h.c.config().persistence_timeout, Duration::from_secs(30));
    // Longer: every slot flagged before the new program ran (entries live again).
    assert_eq!(flagged(&h).len() as u32, M);
    assert_eq!(h.traffic(300), before, "a client moved");
    let Reply::Status(s) = ok(h.request(Request::Status)) else {
        panic!()
    };
    assert_eq!(s.persistence.timeout, "30s");

    // Shorter: swapped again, no flag needed; the line says who is no longer live.
    write_timeout(&h, &file, "5s");
    let back = plan(reload(&mut h, false));
    assert!(
        back.changes[0].contains("idle longer than 5s at the change are no longer live"),
        "{:?}",
        back.changes
    );
    assert_eq!(swaps(&h), [ticks("30s"), ticks("5s")]);
    assert_eq!(h.lb.timeout_generation(), 2);
    assert_eq!(h.traffic(300), before, "a client moved");
    // The same file again: nothing to swap.
    assert!(plan(reload(&mut h, false)).changes.is_empty());
    assert_eq!(swaps(&h).len(), 2);
}

#[test]
fn a_swap_that_fails_changes_nothing() {
    let (mut h, file) = harness("");
    // A backend change beside the timeout: refused whole.
    let text = yaml(&h._dir.0, "reload_drain: 0s", &[("10.0.0.11", 4)], 7)
        .replace("persistence_timeout: 10s", "persistence_timeout: 5s");
    fs::write(&file, text).unwrap();
    h.lb.dataplane_mut().fail_swap = true;
    let e = err(reload(&mut h, false));
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("nothing was changed"), "{}", e.message);
    assert!(swaps(&h).is_empty());
    assert_eq!(h.lb.persist_timeout_ticks(), ticks("10s"));
    assert_eq!(h.lb.timeout_generation(), 0);
    assert_eq!(h.c.config().persistence_timeout, Duration::from_secs(10));
    assert_eq!(h.lb.backend(h.id("10.0.0.11")).unwrap().weight, 1);
    assert!(h.lb.backend_by_address(ip("10.0.0.12")).is_some());
}

/// The hazard: a sweep that began before the timeout grew decides with the old, shorter
/// timeout that an entry is idle and would clear its slot's flag — though the entry is live
/// under the new one, and the slot fast path would then send its client to the ring's backend.
/// Its result is discarded; a sweep begun after the change keeps the flag.
#[test]
fn a_sweep_begun_before_a_persistence_timeout_change_clears_nothing() {
    let (mut h, file) = harness("");
    let now = h.now.tick;
    let old = h.lb.persist_timeout_ticks();
    // Client 7's entry names another backend than its slot's, idle 15 ticks: dead under
    // 10s (10 ticks), live under 30s (28 ticks).
    let c = client(7);
    let slot = ring_slot(client_hash_v4(c, h.lb.seed()), M);
    let base = h.lb.dataplane().services[&0].ring_base;
    let ring = h.lb.dataplane().rings[&(base + slot)] & RING_BACKEND_MASK;
    let other = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
        .iter()
        .map(|a| h.id(a))
        .find(|id| *id != ring)
        .unwrap();
    let entry = (
        PersistKeyV4 {
            service: 0,
            client: c,
        },
        PersistValue {
            backend: other,
            atime: now - 15,
            ..PersistValue::default()
        },
    );
    h.lb.dataplane_mut().persist_v4.push(entry);
    // Every slot flagged (as after a restart with other globals).
    h.lb.flag_all_slots();
    h.apply();
    assert_eq!(flagged(&h).len() as u32, M);

    // The sweep begins: its ticket and its read, under 10s.
    let ticket = h.lb.sweep_ticket(now);
    let read = vec![entry];
    // The reload lands while it is in flight.
    write_timeout(&h, &file, "30s");
    plan(reload(&mut h, false));
    let flags = flagged(&h);
    assert!(flags.contains(&slot));
    // Its result, computed with the timeout it began with, is not applied …
    let r = h.lb.clear_flags(ticket, &read, old);
    assert!(matches!(r, Err(StateError::SweepOutdated)), "{r:?}");
    // … nor with the new one.
    let r =
        h.lb.clear_flags(ticket, &read, h.lb.persist_timeout_ticks());
    assert!(matches!(r, Err(StateError::SweepOutdated)), "{r:?}");
    assert_eq!(flagged(&h), flags, "an outdated sweep cleared flags");

    // A sweep begun after the change: the entry is live again, its slot stays flagged; the
    // others are cleared.
    let ticket = h.lb.sweep_ticket(now);
    let r =
        h.lb.clear_flags(ticket, &read, h.lb.persist_timeout_ticks())
            .unwrap();
    assert_eq!(flagged(&h), [slot]);
    // Both services' tables, all but that slot.
    assert_eq!(r.cleared as u32, 2 * M - 1);

    // The same sweep under the old timeout would have cleared it: what the generation
    // prevents (a longer timeout's flags aside).
    let (mut g, _file) = harness("");
    g.lb.dataplane_mut().persist_v4.push(entry);
    g.lb.flag_all_slots();
    g.apply();
    let t = g.lb.sweep_ticket(now);
    g.lb.clear_flags(t, &read, old).unwrap();
    assert!(flagged(&g).is_empty());
}
