//! Backend ids: stable across identical builds, 0 reserved, running out with a clear error,
//! and the headroom of `BACKENDS`.

use super::*;

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
fn ids_run_out_with_a_clear_error() {
    let err = Balancer::new(FakeDataplane::default(), &config(), ifaces(), 3)
        .err()
        .unwrap();
    assert!(
        matches!(err, StateError::IdsExhausted { capacity: 3, .. }),
        "{err}"
    );
}

#[test]
fn capacity_has_headroom() {
    assert_eq!(backend_capacity(3), MIN_BACKEND_CAPACITY);
    assert_eq!(backend_capacity(5000), 10_002);
}
