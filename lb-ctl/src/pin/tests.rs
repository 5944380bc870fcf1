//! Unit tests of the pin layout, the fingerprint and the plan on a missing pin root.

use std::path::Path;

use super::layout::iface_of_pin;
use super::*;

#[test]
fn fingerprint_changes_with_object_and_globals() {
    let a = fingerprint(b"obj", &[("RING_SIZE", 251), ("HASH_SEED", 7)]);
    assert_eq!(a.len(), 16);
    assert_eq!(
        a,
        fingerprint(b"obj", &[("RING_SIZE", 251), ("HASH_SEED", 7)])
    );
    assert_ne!(
        a,
        fingerprint(b"obk", &[("RING_SIZE", 251), ("HASH_SEED", 7)])
    );
    assert_ne!(
        a,
        fingerprint(b"obj", &[("RING_SIZE", 251), ("HASH_SEED", 8)])
    );
}

#[test]
fn layout_is_below_the_instance_directory() {
    let p = Pins::new(Path::new("/sys/fs/bpf/ikelb"), "edge-1");
    assert_eq!(p.dir(), Path::new("/sys/fs/bpf/ikelb/edge-1"));
    assert_eq!(
        p.map("RINGS"),
        Path::new("/sys/fs/bpf/ikelb/edge-1/maps/RINGS")
    );
    assert_eq!(
        p.link("ext"),
        Path::new("/sys/fs/bpf/ikelb/edge-1/links/ext")
    );
    assert_eq!(
        p.link("eth0.100"),
        Path::new("/sys/fs/bpf/ikelb/edge-1/links/eth0%2e100")
    );
    for name in ["eth0.100", "a%2eb", "x%", "plain"] {
        assert_eq!(iface_of_pin(&link_pin_name(name)), name);
        assert!(!link_pin_name(name).contains('.'));
    }
}

#[test]
fn a_missing_pin_root_is_reported_as_a_plan_not_an_error() {
    let p = Pins::new(Path::new("/nonexistent-ikelb-test"), "x");
    assert_eq!(plan(&p, &[]).unwrap(), MapPlan::Fresh);
    assert!(pinned_links(&p).is_empty());
    assert_eq!(pinned_fingerprint(&p), None);
}

/// Every size the config sets is part of the compatibility check: a pinned persistence or
/// probation map of another `max_entries` (e.g. after `persistence_entries_v6` changed) is a
/// migration, and each such map is pinned, hence checked at all.
#[test]
fn a_map_of_another_size_is_a_migration() {
    use lb_common::maps;
    let sized = [
        maps::PERSIST_V4,
        maps::PERSIST_V6,
        maps::PROBATION_V4,
        maps::PROBATION_V6,
        maps::PROOFS_V4,
        maps::PROOFS_V6,
    ];
    for name in sized {
        assert!(PINNED_MAPS.contains(&name), "{name} is not pinned");
        let want = MapSpec {
            name,
            map_type: 9, // BPF_MAP_TYPE_LRU_HASH
            key_size: 20,
            value_size: Some(16),
            max_entries: Some(1 << 20),
            flags: 0,
        };
        assert_eq!(compat::mismatch(&want, &want), None, "{name}");
        let pinned = MapSpec {
            max_entries: Some(1 << 18),
            ..want
        };
        assert_eq!(
            compat::mismatch(&want, &pinned).as_deref(),
            Some(format!("{name}: max_entries 262144 (want 1048576)").as_str())
        );
    }
}
