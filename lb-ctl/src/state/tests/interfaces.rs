//! Interfaces and next hops: interfaces a previous daemon left are forgotten, a next hop
//! change rewrites the backend only, unknown ports and ids are refused.

use super::*;

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
