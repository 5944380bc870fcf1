//! Rounds of the sharer over an in-memory route table and a scanner of fixed entries.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use lb_common::{
    hash::{client_hash_v4, ring_slot},
    PersistKeyV4, PersistValue, PORT_SHARED,
};

use super::*;
use crate::{
    dataplane::fake::FakeDataplane,
    scan::{Scanned, Scanner},
    state::test_support,
};

type Tables = Arc<Mutex<(BTreeSet<Shared>, BTreeSet<Shared>)>>;

/// The export table (ours) and the import table (BIRD's), in memory.
struct FakeRoutes(Tables);

impl ShareRoutes for FakeRoutes {
    fn list_ours(&mut self, table: u32) -> Result<BTreeSet<Shared>, RouteError> {
        assert_eq!(table, 101);
        Ok(self.0.lock().unwrap().0.clone())
    }
    fn list_learned(&mut self, table: u32) -> Result<BTreeSet<Shared>, RouteError> {
        assert_eq!(table, 102);
        Ok(self.0.lock().unwrap().1.clone())
    }
    /// As the kernel: a route's key is its client and metric (tier), a replace keeps the key.
    fn add(&mut self, _: u32, client: &Shared) -> Result<(), RouteError> {
        let mut t = self.0.lock().unwrap();
        t.0.retain(|s| (s.client, s.tier) != (client.client, client.tier));
        t.0.insert(*client);
        Ok(())
    }
    /// As the kernel: one route of the client, whatever its metric.
    fn remove(&mut self, _: u32, client: IpAddr) -> Result<(), RouteError> {
        let mut t = self.0.lock().unwrap();
        if let Some(s) = t.0.iter().find(|s| s.client == client).copied() {
            t.0.remove(&s);
        }
        Ok(())
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn setup() -> (Config, Balancer<FakeDataplane>) {
    let cfg = test_support::config(
        "interfaces: [ext, int]\nmaglev_table_size: 251
share: {export_table: 101, import_table: 102}
virtual_servers:
  - name: aovpn
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
",
    );
    let mut lb = test_support::balancer(&cfg, 64);
    test_support::all_usable(&mut lb);
    lb.apply().unwrap();
    (cfg, lb)
}

/// Waits for the sharer's next event (the round's scan runs on the scanner's thread).
fn next_event(sharer: &mut Sharer) -> ShareEvent {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), sharer.next())
                .await
                .expect("the round's scan finished")
        })
    })
}

fn round(sharer: &mut Sharer, lb: &mut Balancer<FakeDataplane>) {
    sharer.handle(lb, ShareEvent::Due);
    let ev = next_event(sharer);
    assert!(matches!(ev, ShareEvent::Read(_)), "the round's read");
    sharer.handle(lb, ev);
}

/// Rounds: the first publishes this node's divergent client, in probation, and takes the
/// other node's; once the client is established here its route is replaced by an
/// established one (not added next to it); after its entry names its ring backend again, it
/// is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_publishes_divergent_clients_and_takes_the_learned_ones() {
    let (cfg, mut lb) = setup();
    let (seed, m) = (lb.seed(), lb.ring_size());
    let b1 = lb.backend_by_address(ip("10.0.0.11")).unwrap().id;
    let b2 = lb.backend_by_address(ip("10.0.0.12")).unwrap().id;
    let svc = lb.services()[0].value.id;
    let words = |a: u32| u32::from_ne_bytes(a.to_be_bytes());
    let addr = |a: u32| IpAddr::V4(std::net::Ipv4Addr::from(a));
    // Two clients (host-order addresses) whose ring slot names b1.
    let on_b1: Vec<u32> = (1u32..)
        .map(|i| 0xc633_6400 + i)
        .filter(|&a| {
            let slot = ring_slot(client_hash_v4(words(a), seed), m);
            lb.services()[0].active_backend(slot as usize) == b1
        })
        .take(2)
        .collect();
    let (mine, theirs) = (on_b1[0], on_b1[1]);
    let now = Clock::now().tick;
    let promoted = Arc::new(Mutex::new(0));
    let entries = Arc::new(Mutex::new(vec![(
        PersistKeyV4 {
            service: svc,
            client: words(mine),
        },
        PersistValue {
            backend: b2,
            atime: now,
            client_mac: [2; 6],
            port: 0,
            flags: 0,
        },
    )]));
    let (source, tier) = (Arc::clone(&entries), Arc::clone(&promoted));
    let scanner = Scanner::new(Box::new(move || {
        let v4 = source.lock().unwrap().clone();
        Ok(Scanned {
            established_v4: *tier.lock().unwrap(),
            v4,
            ..Scanned::default()
        })
    }));
    let tables: Tables = Arc::default();
    tables
        .lock()
        .unwrap()
        .1
        .insert(Shared::established(addr(theirs), ip("10.0.0.12")));
    let routes = Box::new(FakeRoutes(Arc::clone(&tables)));
    let mut sharer = Sharer::with_routes(&cfg, scanner, routes).expect("share is configured");
    let stats = Arc::new(Mutex::new(ShareStats::default()));
    let seen = Arc::clone(&stats);
    sharer.set_observer(Arc::new(move |s| *seen.lock().unwrap() = s));

    round(&mut sharer, &mut lb);
    assert_eq!(
        tables.lock().unwrap().0,
        BTreeSet::from([Shared::probation(addr(mine), ip("10.0.0.12"))]),
        "the divergent client is published, in probation"
    );
    let key = PersistKeyV4 {
        service: svc,
        client: words(theirs),
    };
    let taken = lb
        .dataplane()
        .persistence_v4_get(&key)
        .unwrap()
        .expect("the other node's client is taken");
    assert_eq!((taken.backend, taken.port), (b2, PORT_SHARED));
    assert_eq!(
        *stats.lock().unwrap(),
        ShareStats {
            exported: Tiers {
                established: 0,
                probation: 1
            },
            over_limit: 0,
            learned: Tiers {
                established: 1,
                probation: 0
            },
            imported: 1,
            errors: 0
        }
    );

    // The client names its ring backend again: withdrawn at the next round.
    *promoted.lock().unwrap() = 1;
    round(&mut sharer, &mut lb);
    assert_eq!(
        tables.lock().unwrap().0,
        BTreeSet::from([Shared::established(addr(mine), ip("10.0.0.12"))]),
        "promoted: one route, established"
    );

    entries.lock().unwrap()[0].1.backend = b1;
    round(&mut sharer, &mut lb);
    assert!(tables.lock().unwrap().0.is_empty(), "withdrawn");
    assert_eq!(stats.lock().unwrap().imported, 1, "nothing taken twice");
}
