//! What a node publishes and what it takes, over a balancer on the in-memory dataplane.

use std::net::IpAddr;

use lb_common::RING_F_CHANGED;

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
    (1u32..)
        .map(|i| {
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
        .filter(|&c| ring_of(lb, c).2 == want)
        .nth(skip)
        .unwrap()
}

fn entry(backend: u32, atime: u32) -> PersistValue {
    PersistValue {
        backend,
        atime,
        client_mac: [2, 0, 0, 0, 0, 9],
        port: 0,
        _pad: 0,
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

/// Published: established, live, on another backend than the slot's — of both families.
/// Not: a client on its slot's backend, an idle one, a probation entry (a spoofer can make
/// those), another node's client taken here and not used yet (that node publishes it).
#[test]
fn a_node_publishes_its_live_established_clients_off_their_ring_slot() {
    let lb = balancer();
    let now = 1000;
    let (b1, b2, b6, b6b) = (id(&lb, B1), id(&lb, B2), id(&lb, B6), id(&lb, B6B));
    let on_ring = client_on(&lb, b1, false, 0);
    let moved = client_on(&lb, b1, false, 1);
    let idle = client_on(&lb, b1, false, 2);
    let probation = client_on(&lb, b1, false, 3);
    let imported = client_on(&lb, b1, false, 4);
    let mut taken = entry(b2, now);
    taken.port = PORT_SHARED;
    let moved6 = client_on(&lb, b6, true, 0);
    let on_ring6 = client_on(&lb, b6, true, 1);
    let scanned = Scanned {
        v4: vec![
            (key4(&lb, on_ring), entry(b1, now)),
            (key4(&lb, moved), entry(b2, now - 5)),
            (key4(&lb, idle), entry(b2, now - TIMEOUT - 1)),
            (key4(&lb, imported), taken),
            (key4(&lb, probation), entry(b2, now)),
        ],
        established_v4: 4,
        v6: vec![
            (key6(&lb, moved6), entry(b6b, now)),
            (key6(&lb, on_ring6), entry(b6, now)),
        ],
        established_v6: 2,
        ..Scanned::default()
    };
    let shared = divergent(&lb, &scanned, now, TIMEOUT);
    assert_eq!(
        shared.into_iter().collect::<Vec<_>>(),
        vec![
            Shared {
                client: moved,
                backend: ip(B2)
            },
            Shared {
                client: moved6,
                backend: ip(B6B)
            },
        ]
    );
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
            Shared {
                client: new,
                backend: ip(B2),
            },
            Shared {
                client: known,
                backend: ip(B2),
            },
            Shared {
                client: same,
                backend: ip(B2),
            },
            Shared {
                client: new,
                backend: ip("10.9.9.9"),
            },
            Shared {
                client: ip("2001:db8:c::1"),
                backend: ip(B2),
            },
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
            _pad: 0
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
    let again = import(
        &mut lb,
        &[Shared {
            client: new,
            backend: ip(B2),
        }],
        tick + 1,
    )
    .unwrap();
    assert_eq!((again.inserted, again.refreshed), (0, 1));
    assert_eq!(
        lb.dataplane()
            .persistence_v4_get(&key4(&lb, new))
            .unwrap()
            .map(|e| e.atime),
        Some(tick + 1)
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
    import(
        &mut lb,
        &[Shared {
            client: c,
            backend: ip(B2),
        }],
        tick,
    )
    .unwrap();
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
}
