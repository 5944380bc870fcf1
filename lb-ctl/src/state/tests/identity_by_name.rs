//! Identity by name (`crate::identity`): a restart with virtual servers and interfaces
//! reordered and a newcomer inserted in front, as the daemon does it.

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
        Balancer::with_identity(FakeDataplane::default(), &config, infos, 1024, &first).unwrap();
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
