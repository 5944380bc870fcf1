//! The decision (which VIPs can be served) over a balancer on the in-memory dataplane, and
//! the announcer over an in-memory route table that can be made to fail.

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use super::*;
use crate::{
    config,
    dataplane::fake::FakeDataplane,
    state::{test_support, Balancer},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn balancer() -> Balancer<FakeDataplane> {
    let cfg = config::parse(
        "t.yaml",
        "interfaces: [ext, int]\nmaglev_table_size: 251
virtual_servers:
  - name: aovpn
    vip: [203.0.113.10, 2001:db8:ffff::10]
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 2001:db8:1::11
  - name: other
    vip: 203.0.113.11
    backends:
      - address: 10.0.1.11
  - name: empty
    vip: 203.0.113.12
announce: {table: 100}
",
    )
    .expect("valid config");
    test_support::balancer(&cfg, 64)
}

/// Backend `addr` health Up and next hop resolved (usable), or Down.
fn set(lb: &mut Balancer<FakeDataplane>, addr: &str, up: bool) {
    let id = lb.backend_by_address(ip(addr)).unwrap().id;
    test_support::set_usable(lb, id, up);
}

fn served(lb: &Balancer<FakeDataplane>) -> Vec<String> {
    decide(lb)
        .into_iter()
        .filter(|v| v.can_serve)
        .map(|v| prefix(v.vip))
        .collect()
}

#[test]
fn a_vip_is_served_while_one_backend_of_its_family_is_usable() {
    let mut lb = balancer();
    let all = decide(&lb);
    assert_eq!(
        all.iter()
            .map(|v| (v.vs.as_str(), v.vip.to_string()))
            .collect::<Vec<_>>(),
        [
            ("aovpn", "203.0.113.10".to_owned()),
            ("aovpn", "2001:db8:ffff::10".to_owned()),
            ("other", "203.0.113.11".to_owned()),
            ("empty", "203.0.113.12".to_owned()),
        ],
        "every VIP, in config order, one per family"
    );
    assert!(served(&lb).is_empty(), "health unknown: nothing served");

    set(&mut lb, "10.0.0.11", true);
    assert_eq!(served(&lb), ["203.0.113.10/32"], "only the IPv4 service");
    set(&mut lb, "2001:db8:1::11", true);
    set(&mut lb, "10.0.1.11", true);
    assert_eq!(
        served(&lb),
        [
            "203.0.113.10/32",
            "2001:db8:ffff::10/128",
            "203.0.113.11/32"
        ]
    );

    // Health Up without a next hop is not usable.
    let id = lb.backend_by_address(ip("10.0.1.11")).unwrap().id;
    lb.set_next_hop(id, None).unwrap();
    assert!(!served(&lb).contains(&"203.0.113.11/32".to_owned()));
    set(&mut lb, "10.0.1.11", true);

    // One of two down: still served; both down: not.
    set(&mut lb, "10.0.0.12", false);
    assert!(served(&lb).contains(&"203.0.113.10/32".to_owned()));
    set(&mut lb, "10.0.0.11", false);
    assert_eq!(served(&lb), ["2001:db8:ffff::10/128", "203.0.113.11/32"]);

    // A draining backend still serves its clients: the VIP stays.
    set(&mut lb, "10.0.0.11", true);
    let id = lb.backend_by_address(ip("10.0.0.11")).unwrap().id;
    lb.set_drain(id, Some(SystemTime::now() + Duration::from_secs(600)))
        .unwrap();
    assert!(served(&lb).contains(&"203.0.113.10/32".to_owned()));
    // Removed: gone.
    lb.remove_backend(id).unwrap();
    assert!(!served(&lb).contains(&"203.0.113.10/32".to_owned()));
    // A new backend of the service, once usable, brings it back.
    lb.add_backend(lb.services()[0].value.id, ip("10.0.0.14"), 1)
        .unwrap();
    assert!(!served(&lb).contains(&"203.0.113.10/32".to_owned()));
    set(&mut lb, "10.0.0.14", true);
    assert!(served(&lb).contains(&"203.0.113.10/32".to_owned()));
}

/// An in-memory table of ikelb's routes; `fail` makes every call fail until cleared.
#[derive(Default)]
struct FakeRoutes {
    routes: BTreeSet<(u32, IpAddr)>,
    fail: bool,
    calls: Vec<String>,
}

impl RouteTable for &mut FakeRoutes {
    fn list(&mut self, table: u32) -> Result<BTreeSet<IpAddr>, RouteError> {
        self.calls.push(format!("list {table}"));
        if self.fail {
            return Err(RouteError::List {
                table,
                source: io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        Ok(self
            .routes
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, v)| *v)
            .collect())
    }

    fn add(&mut self, table: u32, vip: IpAddr) -> Result<(), RouteError> {
        self.calls.push(format!("add {}", prefix(vip)));
        if self.fail {
            return Err(RouteError::Write {
                op: "adding",
                prefix: prefix(vip),
                table,
                source: io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        self.routes.insert((table, vip));
        Ok(())
    }

    fn remove(&mut self, table: u32, vip: IpAddr) -> Result<(), RouteError> {
        self.calls.push(format!("remove {}", prefix(vip)));
        if self.fail {
            return Err(RouteError::Write {
                op: "removing",
                prefix: prefix(vip),
                table,
                source: io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        self.routes.remove(&(table, vip));
        Ok(())
    }
}

fn vips(serve: &[(&str, bool)]) -> Vec<VipState> {
    serve
        .iter()
        .map(|(vip, can_serve)| VipState {
            vs: "aovpn".into(),
            vip: ip(vip),
            can_serve: *can_serve,
        })
        .collect()
}

fn table(routes: &FakeRoutes, t: u32) -> Vec<String> {
    routes
        .routes
        .iter()
        .filter(|(tt, _)| *tt == t)
        .map(|(_, v)| prefix(*v))
        .collect()
}

#[test]
fn start_reconciles_the_table_and_changes_write_only_the_difference() {
    let mut routes = FakeRoutes::default();
    // Left by an earlier daemon: a VIP this config no longer has, one it has, and another
    // table's route (not ours to touch).
    routes.routes.insert((100, ip("203.0.113.99")));
    routes.routes.insert((100, ip("203.0.113.10")));
    routes.routes.insert((101, ip("203.0.113.98")));
    let mut a = Announcer::new(100, &mut routes);
    let now = vips(&[("203.0.113.10", true), ("2001:db8:ffff::10", false)]);
    a.sync(&now, Trigger::Recheck);
    let v = a.view();
    assert_eq!(v.prefixes(), ["203.0.113.10/32"]);
    assert_eq!((v.changes, v.errors), (1, 0), "one stale route removed");
    a.sync(&now, Trigger::Change);
    a.sync(&now, Trigger::Round);
    drop(a);
    assert_eq!(table(&routes, 100), ["203.0.113.10/32"]);
    assert_eq!(table(&routes, 101), ["203.0.113.98/32"]);
    assert_eq!(
        routes.calls,
        ["list 100", "remove 203.0.113.99/32"],
        "nothing changed after the start: no call"
    );

    routes.calls.clear();
    let mut a = Announcer::new(100, &mut routes);
    a.sync(&now, Trigger::Recheck);
    let flipped = vips(&[("203.0.113.10", false), ("2001:db8:ffff::10", true)]);
    a.sync(&flipped, Trigger::Change);
    assert_eq!(a.view().prefixes(), ["2001:db8:ffff::10/128"]);
    drop(a);
    assert_eq!(
        routes.calls,
        [
            "list 100",
            "remove 203.0.113.10/32",
            "add 2001:db8:ffff::10/128"
        ]
    );
}

#[test]
fn a_failed_write_is_counted_and_retried_on_the_next_round_after_reading_the_table() {
    let mut routes = FakeRoutes::default();
    let serve = vips(&[("203.0.113.10", true)]);
    let mut a = Announcer::new(100, &mut routes);
    a.routes.fail = true;
    a.sync(&serve, Trigger::Recheck);
    assert_eq!((a.view().errors, a.view().prefixes().len()), (1, 0));
    // A change waits for the next round; a round retries (and fails again).
    a.sync(&serve, Trigger::Change);
    assert_eq!(a.view().errors, 1, "no attempt outside a round");
    a.sync(&serve, Trigger::Round);
    assert_eq!(a.view().errors, 2);
    // Writes work again: the round reads the table, then adds.
    a.routes.fail = false;
    a.routes.calls.clear();
    a.sync(&serve, Trigger::Round);
    let v = a.view();
    assert_eq!(v.prefixes(), ["203.0.113.10/32"]);
    assert_eq!((v.changes, v.errors), (1, 2));
    assert_eq!(a.routes.calls, ["list 100", "add 203.0.113.10/32"]);
    // A route removed by hand comes back at the next recheck (not before).
    a.routes.routes.clear();
    a.sync(&serve, Trigger::Round);
    assert!(a.routes.routes.is_empty());
    a.sync(&serve, Trigger::Recheck);
    assert_eq!(table(a.routes, 100), ["203.0.113.10/32"]);
}

#[test]
fn withdraw_all_removes_every_route_of_ours_in_the_table() {
    let mut routes = FakeRoutes::default();
    routes.routes.insert((100, ip("203.0.113.99")));
    routes.routes.insert((101, ip("203.0.113.98")));
    let serve = vips(&[("203.0.113.10", true), ("2001:db8:ffff::10", true)]);
    let mut a = Announcer::new(100, &mut routes);
    a.sync(&serve, Trigger::Recheck);
    assert_eq!(a.view().prefixes().len(), 2);
    let mut removed = a.withdraw_all(&serve).unwrap();
    removed.sort();
    assert_eq!(removed, ["2001:db8:ffff::10/128", "203.0.113.10/32"]);
    assert!(a.view().prefixes().is_empty());
    // A fresh announcer (`--unload`) removes what a killed daemon left.
    a.routes.routes.insert((100, ip("203.0.113.10")));
    let mut b = Announcer::new(100, &mut *a.routes);
    assert_eq!(b.withdraw_all(&serve).unwrap(), ["203.0.113.10/32"]);
    b.routes.fail = true;
    assert!(b.withdraw_all(&serve).is_err());
    assert_eq!(b.view().errors, 1);
    drop(b);
    drop(a);
    assert_eq!(table(&routes, 101), ["203.0.113.98/32"], "another table's");
    assert!(table(&routes, 100).is_empty());
}
