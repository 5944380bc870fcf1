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
