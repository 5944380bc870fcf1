//! A dual-stack virtual server (`vip: [v4, v6]`, docs/configuration.md) through the control logic: names
//! resolve to the service of the backend's family, IPv6 clients are counted, looked up and
//! hold a drain open exactly like IPv4 ones.

use std::{fs, net::IpAddr, path::PathBuf};

use lb_common::{PersistKeyV6, PersistValue};

use super::*;
use crate::{
    api::{Reply, Request, Response},
    config,
    dataplane::{addr_words, fake::FakeDataplane},
    health::{Probe, ProbeKind, ProbeOutcome, Report},
    state::{Balancer, IfaceInfo, NextHop},
};

const CONFIG: &str = "interfaces: [ext, int]
maglev_table_size: 251
persistence_timeout: 10s
virtual_servers:
  - name: aovpn
    vip: [203.0.113.10, 2001:db8:ffff::10]
    tcp_ports: [443]
    backends:
      - address: 10.0.0.11
      - address: 2001:db8:1::11
      - address: 2001:db8:1::12
  - name: v4only
    vip: 203.0.113.11
    backends:
      - address: 10.0.1.11
health_check: {interval: 1s, timeout: 500ms, fall: 3, rise: 2, probes: [icmp]}
";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Dual {
    lb: Balancer<FakeDataplane>,
    c: Controller,
    now: Clock,
    dir: PathBuf,
}

impl Drop for Dual {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Dual {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ikelb-rt6-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let text = format!("{CONFIG}state_dir: {}\n", dir.display());
        let cfg = config::parse("t.yaml", &text).expect("valid config");
        let ifaces = ["ext", "int"]
            .iter()
            .enumerate()
            .map(|(i, n)| IfaceInfo {
                name: (*n).into(),
                ifindex: 10 + i as u32,
                mac: [2, 0, 0, 0, 0, i as u8],
            })
            .collect();
        let lb = Balancer::new(FakeDataplane::default(), &cfg, ifaces, 64).unwrap();
        let c = Controller::new(cfg.clone(), Store::new(&cfg.state_dir));
        let mut d = Self {
            lb,
            c,
            now: Clock {
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
                tick: 100,
            },
            dir,
        };
        d.bring_up();
        d
    }

    /// Every backend resolved and answering its health checks.
    fn bring_up(&mut self) {
        let ids: Vec<u32> = self.lb.backends().map(|b| b.id).collect();
        for id in ids {
            let hop = NextHop {
                port: 1,
                mac: [0xaa, 0, 0, 0, 0, id as u8],
            };
            self.lb.set_next_hop(id, Some(hop)).unwrap();
        }
        let reports: Vec<Report> = self
            .c
            .targets(&self.lb)
            .into_iter()
            .map(|t| Report {
                id: t.id,
                addr: t.addr,
                kind: ProbeKind::Icmp,
                probe: Probe {
                    outcome: ProbeOutcome::Success,
                    duration: Duration::from_millis(1),
                    error: None,
                },
            })
            .collect();
        self.c.on_health(&mut self.lb, &reports);
        apply_and_log(&mut self.lb).unwrap();
    }

    fn request(&mut self, r: Request) -> Response {
        let (resp, _) = self.c.handle(&mut self.lb, r, self.now);
        if matches!(resp, Response::Ok(_)) {
            apply_and_log(&mut self.lb).unwrap();
        }
        resp
    }

    fn service_of(&self, addr: &str) -> u32 {
        self.lb.backend_by_address(ip(addr)).unwrap().service
    }

    /// What the data path writes when IPv6 `client` of service `svc` is sent to `backend`.
    fn persist6(&mut self, svc: u32, client: &str, backend: u32, atime: u32) {
        let key = PersistKeyV6 {
            service: svc,
            client: addr_words(ip(client)),
        };
        let value = PersistValue {
            backend,
            atime,
            ..PersistValue::default()
        };
        let dp = self.lb.dataplane_mut();
        dp.persist_v6.retain(|(k, _)| *k != key);
        dp.persist_v6.push((key, value));
    }
}

#[test]
fn names_resolve_to_the_service_of_the_address_family() {
    let mut d = Dual::new("names");
    // One service per VIP, same name; each holds its family's backends.
    let services: Vec<(String, u32)> =
        d.lb.services()
            .iter()
            .map(|s| (s.name.clone(), s.value.family))
            .collect();
    assert_eq!(
        services,
        [
            ("aovpn".to_owned(), lb_common::FAMILY_V4),
            ("aovpn".to_owned(), lb_common::FAMILY_V6),
            ("v4only".to_owned(), lb_common::FAMILY_V4),
        ]
    );
    assert_eq!(d.service_of("10.0.0.11"), 0);
    assert_eq!(d.service_of("2001:db8:1::11"), 1);

    for addr in ["2001:db8:1::13", "10.0.0.13"] {
        let r = d.request(Request::BackendAdd {
            virtual_server: "aovpn".into(),
            address: ip(addr),
            weight: 1,
            dry_run: false,
        });
        assert!(matches!(r, Response::Ok(_)), "{addr}: {r:?}");
    }
    assert_eq!(d.service_of("2001:db8:1::13"), 1);
    assert_eq!(d.service_of("10.0.0.13"), 0);
    // By the IPv6 VIP, too.
    let r = d.request(Request::BackendRemove {
        virtual_server: "2001:db8:ffff::10".into(),
        address: ip("2001:db8:1::13"),
        drain: None,
        dry_run: false,
    });
    assert!(matches!(r, Response::Ok(_)), "{r:?}");
    assert!(d.lb.backend_by_address(ip("2001:db8:1::13")).is_none());

    let refused = |r: Response| match r {
        Response::Error(e) => e.message,
        Response::Ok(r) => panic!("accepted: {r:?}"),
    };
    let msg = refused(d.request(Request::BackendAdd {
        virtual_server: "v4only".into(),
        address: ip("2001:db8:1::14"),
        weight: 1,
        dry_run: false,
    }));
    assert!(msg.contains("not of the address family of v4only"), "{msg}");
    let msg = refused(d.request(Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: ip("::ffff:10.0.0.14"),
        weight: 1,
        dry_run: false,
    }));
    assert!(msg.contains("::/32"), "{msg}");
}

#[test]
fn ipv6_clients_are_counted_looked_up_and_hold_a_drain() {
    let mut d = Dual::new("drain");
    let b = d.lb.backend_by_address(ip("2001:db8:1::12")).unwrap().id;
    let tick = d.now.tick;
    d.persist6(1, "2001:db8:c::7", b, tick);

    let Response::Ok(Reply::Backends { backends }) = d.request(Request::BackendList) else {
        panic!("backend list refused")
    };
    let listed = backends.iter().find(|x| x.id == b).unwrap();
    assert_eq!(
        (listed.virtual_server.as_str(), listed.clients),
        ("aovpn", 1)
    );

    let Response::Ok(Reply::Lookup { results, .. }) = d.request(Request::Lookup {
        client: ip("2001:db8:c::7"),
    }) else {
        panic!("lookup refused")
    };
    assert_eq!(
        results.len(),
        1,
        "only the IPv6 service answers an IPv6 client"
    );
    assert_eq!(results[0].vip, ip("2001:db8:ffff::10"));
    assert_eq!(
        (results[0].source.as_str(), results[0].backend),
        ("persistence", Some(ip("2001:db8:1::12")))
    );
    let Response::Ok(Reply::Lookup { results, .. }) = d.request(Request::Lookup {
        client: ip("2001:db8:c::8"),
    }) else {
        panic!("lookup refused")
    };
    assert_eq!(
        results[0].source, "maglev",
        "a new IPv6 client gets its ring slot"
    );

    let r = d.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("2001:db8:1::12"),
        drain: Some(Duration::from_secs(3600)),
        dry_run: false,
    });
    assert!(matches!(r, Response::Ok(_)), "{r:?}");
    // The IPv6 client is active: the drain goes on.
    d.now.tick += 5;
    d.persist6(1, "2001:db8:c::7", b, d.now.tick);
    assert_eq!(
        d.c.check_drains(&mut d.lb, d.now).unwrap(),
        Effects::default()
    );
    assert!(d.lb.backend(b).is_some());
    // Idle longer than persistence_timeout (10 ticks): drained and removed.
    d.now.tick += 11;
    assert!(d.c.check_drains(&mut d.lb, d.now).unwrap().targets_changed);
    assert!(d.lb.backend(b).is_none());
}
