//! What a node publishes and what it takes, over a balancer on the in-memory dataplane.

use std::net::IpAddr;

use lb_common::RING_F_CHANGED;

use lb_common::PersistValue;

use super::*;
use crate::{
    dataplane::fake::FakeDataplane,
    scan::Scanned,
    state::{test_support, Balancer},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const B1: &str = "10.0.0.11";
const B2: &str = "10.0.0.12";
const B6: &str = "2001:db8:1::11";
const B6B: &str = "2001:db8:1::12";
const TIMEOUT: u32 = 100;

fn balancer() -> Balancer<FakeDataplane> {
    let cfg = test_support::config(
        "interfaces: [ext, int]\nmaglev_table_size: 251
virtual_servers:
  - name: aovpn
    vip: [203.0.113.10, 2001:db8:ffff::10]
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 2001:db8:1::11
      - address: 2001:db8:1::12
",
    );
    let mut lb = test_support::balancer(&cfg, 64);
    test_support::all_usable(&mut lb);
    lb.apply().unwrap();
    lb
}

fn id(lb: &Balancer<FakeDataplane>, addr: &str) -> u32 {
    lb.backend_by_address(ip(addr)).unwrap().id
}

/// The service of `client`'s family, its ring slot, and the backend the slot names.
fn ring_of(lb: &Balancer<FakeDataplane>, client: IpAddr) -> (u32, u32, u32) {
    let (seed, m) = (lb.seed(), lb.ring_size());
    let (family, slot) = match client {
        IpAddr::V4(c) => (FAMILY_V4, ring_slot(client_hash_v4(v4_words(c), seed), m)),
        IpAddr::V6(c) => (FAMILY_V6, ring_slot(client_hash_v6(&v6_words(c), seed), m)),
    };
    let svc = lb
        .services()
        .iter()
        .find(|s| s.value.family == family)
        .unwrap();
    (svc.value.id, slot, svc.active_backend(slot as usize))
}

/// A client of family `v6` whose slot names backend `want`.
fn client_on(lb: &Balancer<FakeDataplane>, want: u32, v6: bool, skip: usize) -> IpAddr {
    clients_on(lb, want, v6).nth(skip).unwrap()
}

/// The clients of family `v6` whose slot names backend `want`, always in the same order.
fn clients_on(
    lb: &Balancer<FakeDataplane>,
    want: u32,
    v6: bool,
) -> impl Iterator<Item = IpAddr> + '_ {
    (1u32..)
        .map(move |i| {
            if v6 {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0xc,
                    0,
                    0,
                    0,
                    (i >> 16) as u16,
                    i as u16,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i))
            }
        })
        .filter(move |&c| ring_of(lb, c).2 == want)
}

fn entry(backend: u32, atime: u32) -> PersistValue {
    PersistValue {
        backend,
        atime,
        client_mac: [2, 0, 0, 0, 0, 9],
        port: 0,
        flags: 0,
    }
}

fn key4(lb: &Balancer<FakeDataplane>, c: IpAddr) -> PersistKeyV4 {
    let IpAddr::V4(a) = c else { panic!() };
    PersistKeyV4 {
        service: ring_of(lb, c).0,
        client: v4_words(a),
    }
}

fn key6(lb: &Balancer<FakeDataplane>, c: IpAddr) -> PersistKeyV6 {
    let IpAddr::V6(a) = c else { panic!() };
    PersistKeyV6 {
        service: ring_of(lb, c).0,
        client: v6_words(a),
    }
}

/// Published: live entries of either tier on another backend than the slot's, of both
/// families, one route per client (its established entry's when it has both). Not: a client
/// on its slot's backend, an idle one, another node's client taken here and not used yet
/// (that node publishes it).
#[test]
fn a_node_publishes_its_live_clients_off_their_ring_slot() {
    let lb = balancer();
    let now = 1000;
    let (b1, b2, b6, b6b) = (id(&lb, B1), id(&lb, B2), id(&lb, B6), id(&lb, B6B));
    let on_ring = client_on(&lb, b1, false, 0);
    let moved = client_on(&lb, b1, false, 1);
    let idle = client_on(&lb, b1, false, 2);
    let probation = client_on(&lb, b1, false, 3);
    let imported = client_on(&lb, b1, false, 4);
    let idle_probation = client_on(&lb, b1, false, 5);
    let both = client_on(&lb, b1, false, 6);
    let mut taken = entry(b2, now);
    taken.port = PORT_SHARED;
    let moved6 = client_on(&lb, b6, true, 0);
    let on_ring6 = client_on(&lb, b6, true, 1);
    let probation6 = client_on(&lb, b6, true, 2);
    let scanned = Scanned {
        v4: vec![
            (key4(&lb, on_ring), entry(b1, now)),
            (key4(&lb, moved), entry(b2, now - 5)),
            (key4(&lb, idle), entry(b2, now - TIMEOUT - 1)),
            (key4(&lb, imported), taken),
            (key4(&lb, both), entry(b2, now)),
            (key4(&lb, probation), entry(b2, now)),
            (key4(&lb, imported), taken),
            (key4(&lb, idle_probation), entry(b2, now - TIMEOUT - 1)),
            (key4(&lb, on_ring), entry(b1, now)),
            (key4(&lb, both), entry(b2, now)),
        ],
        established_v4: 5,
        v6: vec![
            (key6(&lb, moved6), entry(b6b, now)),
            (key6(&lb, on_ring6), entry(b6, now)),
            (key6(&lb, probation6), entry(b6b, now)),
        ],
        established_v6: 2,
        ..Scanned::default()
    };
    let shared = divergent(&lb, &scanned, now, TIMEOUT);
    assert_eq!(shared.over_limit, 0);
    assert_eq!(
        shared.clients,
        BTreeSet::from([
            Shared::established(moved, ip(B2)),
            Shared::established(both, ip(B2)),
            Shared::probation(probation, ip(B2)),
            Shared::established(moved6, ip(B6B)),
            Shared::probation(probation6, ip(B6B)),
        ])
    );
}

/// A node publishes at most `PROBATION_LIMIT` probation clients, the most recently active;
/// its established clients are never left out.
#[test]
fn probation_clients_over_the_limit_are_the_least_recently_active() {
    let lb = balancer();
    let now = 1000;
    let (b1, b2) = (id(&lb, B1), id(&lb, B2));
    let extra = 3;
    let clients: Vec<IpAddr> = clients_on(&lb, b1, false)
        .take(PROBATION_LIMIT + extra + 1)
        .collect();
    let (established, probation) = clients.split_at(1);
    // The first `extra` probation clients idle longest.
    let mut v4 = vec![(key4(&lb, established[0]), entry(b2, now - 50))];
    v4.extend(probation.iter().enumerate().map(|(i, &c)| {
        let idle = if i < extra { 20 } else { 1 };
        (key4(&lb, c), entry(b2, now - idle))
    }));
    let scanned = Scanned {
        v4,
        established_v4: 1,
        ..Scanned::default()
    };
    let shared = divergent(&lb, &scanned, now, TIMEOUT);
    assert_eq!(shared.over_limit, extra);
    assert_eq!(shared.clients.len(), PROBATION_LIMIT + 1);
    assert!(shared
        .clients
        .contains(&Shared::established(established[0], ip(B2))));
    for &c in &probation[..extra] {
        assert!(
            !shared.clients.contains(&Shared::probation(c, ip(B2))),
            "{c} is the oldest"
        );
    }
}

/// A shared client gets an established entry here, marked `PORT_SHARED`, on our backend of
/// that address, its slot flagged first; a client known here keeps its own entry; a route to
/// an address that is no usable backend of ours, or of the other family, is ignored.
#[test]
fn a_node_takes_what_it_does_not_know_and_flags_the_slot_first() {
    let mut lb = balancer();
    let tick = 2000;
    let (b1, b2) = (id(&lb, B1), id(&lb, B2));
    let new = client_on(&lb, b1, false, 0);
    let known = client_on(&lb, b1, false, 1);
    let same = client_on(&lb, b2, false, 0);
    let own = entry(b1, tick - 3);
    let known_key = key4(&lb, known);
    lb.dataplane_mut().persist_v4.push((known_key, own));
    let report = import(
        &mut lb,
        &[
            Shared::established(new, ip(B2)),
            Shared::established(known, ip(B2)),
            Shared::established(same, ip(B2)),
            Shared::established(new, ip("10.9.9.9")),
            Shared::established(ip("2001:db8:c::1"), ip(B2)),
        ],
        tick,
    )
    .unwrap();
    assert_eq!(
        report,
        ImportReport {
            inserted: 2,
            refreshed: 0,
            present: 1,
            ignored: 2
        }
    );
    let got =
        |lb: &Balancer<FakeDataplane>, c| lb.dataplane().persistence_v4_get(&key4(lb, c)).unwrap();
    assert_eq!(
        got(&lb, new),
        Some(PersistValue {
            backend: b2,
            atime: tick,
            client_mac: [0; 6],
            port: PORT_SHARED,
            flags: 0
        })
    );
    assert_eq!(got(&lb, known), Some(own), "this node's own entry wins");
    let (svc, slot, _) = ring_of(&lb, new);
    let base = lb.service(svc).value.ring_base;
    let flagged = |lb: &Balancer<FakeDataplane>, slot: u32| {
        lb.service(svc).active_table()[slot as usize] & RING_F_CHANGED != 0
            && lb.dataplane().rings[&(base + slot)] & RING_F_CHANGED != 0
    };
    assert!(
        flagged(&lb, slot),
        "the disagreeing entry's slot is flagged, in the map too"
    );
    let (_, same_slot, _) = ring_of(&lb, same);
    assert!(
        !flagged(&lb, same_slot) || same_slot == slot,
        "an entry on the slot's own backend needs no flag"
    );
    // The next round, a tick later: the shared entries are kept alive, not duplicated.
    let again = import(&mut lb, &[Shared::established(new, ip(B2))], tick + 1).unwrap();
    assert_eq!((again.inserted, again.refreshed), (0, 1));
    assert_eq!(
        lb.dataplane()
            .persistence_v4_get(&key4(&lb, new))
            .unwrap()
            .map(|e| e.atime),
        Some(tick + 1)
    );
}

/// A shared probation client goes into this node's probation map, never into persistence,
/// marked `PORT_SHARED`, its slot flagged; the next round keeps the proof a reply recorded
/// here meanwhile; an entry of ours in either map wins; once the other node promotes the
/// client, its established entry is taken.
#[test]
fn a_shared_probation_client_is_taken_into_probation_only() {
    let mut lb = balancer();
    let tick = 4000;
    let (b1, b2) = (id(&lb, B1), id(&lb, B2));
    let new = client_on(&lb, b1, false, 0);
    let established_here = client_on(&lb, b1, false, 1);
    let in_probation_here = client_on(&lb, b1, false, 2);
    let ours = entry(b1, tick - 2);
    let k_established = key4(&lb, established_here);
    lb.dataplane_mut().persist_v4.push((k_established, ours));
    let own = ProbationValue {
        backend: b1,
        atime: tick - 2,
        client_mac: ours.client_mac,
        port: 0,
        flags: 0,
        proof: 0,
    };
    let k_probation = key4(&lb, in_probation_here);
    lb.dataplane_mut().probation_v4.push((k_probation, own));
    let report = import(
        &mut lb,
        &[
            Shared::probation(new, ip(B2)),
            Shared::probation(established_here, ip(B2)),
            Shared::probation(in_probation_here, ip(B2)),
        ],
        tick,
    )
    .unwrap();
    assert_eq!((report.inserted, report.present), (1, 2));
    let k = key4(&lb, new);
    let probation = |lb: &Balancer<FakeDataplane>| lb.dataplane().probation_v4_get(&k).unwrap();
    assert_eq!(
        lb.dataplane().persistence_v4_get(&k).unwrap(),
        None,
        "never into persistence"
    );
    let p = probation(&lb).expect("taken into probation");
    assert_eq!(
        (p.backend, p.atime, p.port, p.proof, p.client_mac),
        (b2, tick, PORT_SHARED, 0, [0; 6])
    );
    assert_eq!(
        lb.dataplane().persistence_v4_get(&k_established).unwrap(),
        Some(ours)
    );
    assert_eq!(
        lb.dataplane().probation_v4_get(&k_probation).unwrap(),
        Some(own)
    );
    let (svc, slot, _) = ring_of(&lb, new);
    assert!(
        lb.service(svc).active_table()[slot as usize] & RING_F_CHANGED != 0,
        "the slot is flagged"
    );
    // The backend's reply through this node recorded a proof (the data path).
    let recorded = 0x77;
    lb.dataplane_mut()
        .probation_v4
        .iter_mut()
        .find(|(key, _)| *key == k)
        .unwrap()
        .1
        .proof = recorded;
    let again = import(&mut lb, &[Shared::probation(new, ip(B2))], tick + 1).unwrap();
    assert_eq!((again.inserted, again.refreshed), (0, 1));
    assert_eq!(
        probation(&lb).map(|p| (p.atime, p.proof)),
        Some((tick + 1, recorded)),
        "kept alive, proof kept"
    );
    let promoted = import(&mut lb, &[Shared::established(new, ip(B2))], tick + 2).unwrap();
    assert_eq!(promoted.inserted, 1);
    assert_eq!(
        lb.dataplane()
            .persistence_v4_get(&k)
            .unwrap()
            .map(|e| (e.backend, e.port)),
        Some((b2, PORT_SHARED))
    );
}

/// A sweep that began before the import, and whose read missed the imported entry, does not
/// clear the flag the import set (the flag is a change after the sweep's ticket); the next
/// sweep, which reads the entry, keeps it.
#[test]
fn a_sweep_older_than_the_import_keeps_its_flag() {
    let mut lb = balancer();
    let tick = 3000;
    let (b1, b2) = (id(&lb, B1), id(&lb, B2));
    let c = client_on(&lb, b1, false, 0);
    let (svc, slot, _) = ring_of(&lb, c);
    let ticket = lb.sweep_ticket(tick);
    import(&mut lb, &[Shared::established(c, ip(B2))], tick).unwrap();
    let flagged = |lb: &Balancer<FakeDataplane>| {
        lb.service(svc).active_table()[slot as usize] & RING_F_CHANGED != 0
    };
    assert!(flagged(&lb));
    lb.clear_flags(ticket, &[], TIMEOUT).unwrap();
    assert!(
        flagged(&lb),
        "an older sweep that missed the entry cleared the flag"
    );
    let later = lb.sweep_ticket(tick + 1);
    let read = lb.dataplane().persist_v4.clone();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].1.backend, b2);
    lb.clear_flags(later, &read, TIMEOUT).unwrap();
    assert!(
        flagged(&lb),
        "a sweep that read the live entry kept the flag"
    );
}

/// The kernel's side of "never overwrite": `BPF_NOEXIST` on the real `PERSIST_*` maps.
#[test]
fn root_a_shared_entry_never_replaces_one_in_the_kernel_map() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (loads the object's maps)");
        return;
    }
    let ebpf = aya::EbpfLoader::new()
        .load(crate::EBPF_OBJECT)
        .expect("load the object's maps");
    let mut dp = crate::dataplane::AyaDataplane::new(ebpf);
    let k4 = PersistKeyV4 {
        service: 1,
        client: 7,
    };
    let k6 = PersistKeyV6 {
        service: 2,
        client: [1, 2, 3, 4],
    };
    let (first, second) = (entry(3, 10), entry(4, 11));
    assert!(dp.persistence_v4_write(&k4, &first, true).unwrap());
    assert!(!dp.persistence_v4_write(&k4, &second, true).unwrap());
    assert_eq!(dp.persistence_v4_get(&k4).unwrap(), Some(first));
    assert!(dp.persistence_v6_write(&k6, &first, true).unwrap());
    assert!(!dp.persistence_v6_write(&k6, &second, true).unwrap());
    assert_eq!(dp.persistence_v6_get(&k6).unwrap(), Some(first));
    let k4b = PersistKeyV4 {
        service: 1,
        client: 8,
    };
    assert!(
        !dp.persistence_v4_write(&k4b, &second, false).unwrap(),
        "BPF_EXIST on no entry"
    );
    assert!(dp.persistence_v4_write(&k4, &second, false).unwrap());
    assert_eq!(dp.persistence_v4_get(&k4).unwrap(), Some(second));
    assert_eq!(dp.persistence_v4_get(&k4b).unwrap(), None);
    // The probation maps, for another node's unproven clients.
    let p = |backend, atime| ProbationValue {
        backend,
        atime,
        client_mac: [0; 6],
        port: PORT_SHARED,
        flags: 0,
        proof: 0,
    };
    assert!(dp.probation_v4_write(&k4, &p(3, 10), true).unwrap());
    assert!(!dp.probation_v4_write(&k4, &p(4, 11), true).unwrap());
    assert!(dp.probation_v6_write(&k6, &p(3, 10), true).unwrap());
    assert!(dp.probation_v6_write(&k6, &p(4, 11), false).unwrap());
    assert!(!dp.probation_v4_write(&k4b, &p(4, 11), false).unwrap());
    assert_eq!(dp.probation_v4_get(&k4).unwrap(), Some(p(3, 10)));
    assert_eq!(dp.probation_v6_get(&k6).unwrap(), Some(p(4, 11)));
}

/// A client whose entry names a backend that is not usable here is not published: its next
/// packet re-selects it, and what another node took of it would outlive the failover.
#[test]
fn a_client_of_an_unusable_backend_is_not_published() {
    let mut lb = balancer();
    let now = 1000;
    let (b1, b2) = (id(&lb, B1), id(&lb, B2));
    let c = client_on(&lb, b1, false, 0);
    let scanned = Scanned {
        v4: vec![(key4(&lb, c), entry(b2, now))],
        established_v4: 1,
        ..Scanned::default()
    };
    assert_eq!(
        divergent(&lb, &scanned, now, TIMEOUT).clients,
        BTreeSet::from([Shared::established(c, ip(B2))])
    );
    lb.set_next_hop(b2, None).unwrap();
    lb.apply().unwrap();
    assert!(divergent(&lb, &scanned, now, TIMEOUT).clients.is_empty());
}

/// A shared entry the client has not used here follows the other node's latest backend for
/// it (the client moved there: a failover, a re-establishment); an entry of this node's own
/// never does.
#[test]
fn a_shared_entry_follows_the_other_nodes_latest_backend() {
    let mut lb = balancer();
    let tick = 5000;
    let (b1, b2) = (id(&lb, B1), id(&lb, B2));
    let c = client_on(&lb, b1, false, 0);
    import(&mut lb, &[Shared::established(c, ip(B2))], tick).unwrap();
    let k = key4(&lb, c);
    let got = |lb: &Balancer<FakeDataplane>| {
        lb.dataplane()
            .persistence_v4_get(&k)
            .unwrap()
            .map(|e| (e.backend, e.port))
    };
    assert_eq!(got(&lb), Some((b2, PORT_SHARED)));
    let moved = import(&mut lb, &[Shared::established(c, ip(B1))], tick + 1).unwrap();
    assert_eq!(moved.inserted, 1);
    assert_eq!(got(&lb), Some((b1, PORT_SHARED)), "the latest word wins");
    // Once the client came here (its MAC and port learned), its entry is this node's own.
    lb.dataplane_mut()
        .persist_v4
        .iter_mut()
        .find(|(key, _)| *key == k)
        .unwrap()
        .1
        .port = 0;
    let again = import(&mut lb, &[Shared::established(c, ip(B2))], tick + 2).unwrap();
    assert_eq!((again.inserted, again.present), (0, 1));
    assert_eq!(got(&lb), Some((b1, 0)));
}
