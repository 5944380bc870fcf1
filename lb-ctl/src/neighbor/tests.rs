use std::{collections::HashMap, time::Instant};

use super::*;
use super::{
    ip::{ip_binary, parse_neigh, parse_route, Neigh, NeighTable},
    resolve::{look_up, route_ttl, CachedRoute, RouteCache},
};
use crate::paths;

#[test]
fn route_direct_and_via_gateway() {
    let addr: IpAddr = "10.0.0.11".parse().unwrap();
    let direct =
        r#"[{"dst":"10.0.0.11","dev":"int0","prefsrc":"10.0.0.1","flags":[],"uid":0,"cache":[]}]"#;
    assert_eq!(
        parse_route(addr, direct).unwrap().unwrap(),
        ("int0".to_owned(), addr)
    );
    let gw = r#"[{"dst":"10.0.0.11","gateway":"10.9.0.1","dev":"eth1","prefsrc":"10.9.0.2","flags":[],"uid":0,"cache":[]}]"#;
    assert_eq!(
        parse_route(addr, gw).unwrap().unwrap(),
        ("eth1".to_owned(), "10.9.0.1".parse().unwrap())
    );
    let local = r#"[{"type":"local","dst":"10.0.0.11","dev":"lo","prefsrc":"10.0.0.11","flags":[],"uid":0,"cache":["local"]}]"#;
    assert!(matches!(
        parse_route(addr, local).unwrap(),
        Err(ResolveError::NotUnicast { .. })
    ));
    assert!(matches!(
        parse_route(addr, "[]").unwrap(),
        Err(ResolveError::NoRoute { .. })
    ));
    assert!(parse_route(addr, "not json").is_err());
}

#[test]
fn neighbour_states() {
    let ok = r#"[{"dst":"10.0.0.11","lladdr":"02:00:00:00:00:0b","state":["STALE"]}]"#;
    assert_eq!(
        parse_neigh(ok).unwrap(),
        Ok(Neigh {
            mac: [2, 0, 0, 0, 0, 0x0b],
            stale: true
        })
    );
    let reachable = r#"[{"dst":"10.0.0.11","lladdr":"02:00:00:00:00:0b","state":["REACHABLE"]}]"#;
    assert_eq!(
        parse_neigh(reachable).unwrap(),
        Ok(Neigh {
            mac: [2, 0, 0, 0, 0, 0x0b],
            stale: false
        })
    );
    let incomplete = r#"[{"dst":"10.0.0.11","state":["INCOMPLETE"]}]"#;
    assert_eq!(
        parse_neigh(incomplete).unwrap(),
        Err("INCOMPLETE".to_owned())
    );
    let failed = r#"[{"dst":"10.0.0.11","lladdr":"02:00:00:00:00:0b","state":["FAILED"]}]"#;
    assert_eq!(parse_neigh(failed).unwrap(), Err("FAILED".to_owned()));
    assert_eq!(parse_neigh("[]").unwrap(), Err("none".to_owned()));
}

/// IPv6 backends: `ip -j route get` and `ip -j neigh show` as iproute2 prints them (taken
/// from a namespace pair): a backend on the link, one behind a link-local gateway (which
/// is resolved on the egress device, where alone it means something), and its neighbour.
#[test]
fn ipv6_routes_and_neighbours() {
    let addr: IpAddr = "2001:db8:1::11".parse().unwrap();
    let direct = r#"[{"dst":"2001:db8:1::11","from":"::","dev":"v0","protocol":"kernel","prefsrc":"2001:db8:1::1","metric":256,"flags":[],"pref":"medium"}]"#;
    assert_eq!(
        parse_route(addr, direct).unwrap().unwrap(),
        ("v0".to_owned(), addr)
    );
    let far: IpAddr = "2001:db8:9::5".parse().unwrap();
    let via = r#"[{"dst":"2001:db8:9::5","from":"::","gateway":"fe80::1","dev":"v0","prefsrc":"2001:db8:1::1","metric":1024,"flags":[],"pref":"medium"}]"#;
    assert_eq!(
        parse_route(far, via).unwrap().unwrap(),
        ("v0".to_owned(), "fe80::1".parse().unwrap())
    );
    let neigh = r#"[{"dst":"2001:db8:1::11","lladdr":"2a:81:3c:9a:a4:ef","state":["REACHABLE"]}]"#;
    assert_eq!(
        parse_neigh(neigh).unwrap(),
        Ok(Neigh {
            mac: [0x2a, 0x81, 0x3c, 0x9a, 0xa4, 0xef],
            stale: false
        })
    );
}

/// The unfiltered dump as iproute2 prints it (taken from a namespace): both families,
/// every entry naming its device.
const DUMP: &str = r#"[{"dst":"10.9.9.5","dev":"va","lladdr":"02:00:00:00:00:06","state":["STALE"]},{"dst":"10.9.9.6","dev":"va","state":["INCOMPLETE"]},{"dst":"10.9.9.7","dev":"va","lladdr":"02:00:00:00:00:07","state":["FAILED"]},{"dst":"10.9.9.8","dev":"vb","lladdr":"02:00:00:00:00:08","state":["REACHABLE"]},{"dst":"2001:db8::5","dev":"va","lladdr":"02:00:00:00:00:05","state":["PERMANENT"]},{"dst":"fe80::1","dev":"vb","lladdr":"02:00:00:00:00:fe","router":null,"state":["DELAY"]}]"#;

#[test]
fn neighbour_dump() {
    let t = NeighTable::parse(DUMP).unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    assert_eq!(
        t.get(ip("10.9.9.5"), "va"),
        Ok(Neigh {
            mac: [2, 0, 0, 0, 0, 6],
            stale: true
        })
    );
    assert_eq!(t.get(ip("10.9.9.6"), "va"), Err("INCOMPLETE".to_owned()));
    assert_eq!(t.get(ip("10.9.9.7"), "va"), Err("FAILED".to_owned()));
    // Keyed by device: the same address elsewhere is another neighbour.
    assert_eq!(t.get(ip("10.9.9.8"), "va"), Err("none".to_owned()));
    assert_eq!(
        t.get(ip("10.9.9.8"), "vb"),
        Ok(Neigh {
            mac: [2, 0, 0, 0, 0, 8],
            stale: false
        })
    );
    assert_eq!(
        t.get(ip("2001:db8::5"), "va"),
        Ok(Neigh {
            mac: [2, 0, 0, 0, 0, 5],
            stale: false
        })
    );
    assert_eq!(
        t.get(ip("fe80::1"), "vb").map(|n| n.mac),
        Ok([2, 0, 0, 0, 0, 0xfe])
    );
    assert_eq!(t.get(ip("fe80::1"), "va"), Err("none".to_owned()));
    assert!(NeighTable::parse("[]").unwrap().0.is_empty());
    assert!(NeighTable::parse("not json").is_err());
    // An entry without a device (a filtered dump) cannot be keyed: skipped.
    let t = NeighTable::parse(
        r#"[{"dst":"10.9.9.5","lladdr":"02:00:00:00:00:06","state":["REACHABLE"]}]"#,
    )
    .unwrap();
    assert!(t.0.is_empty());
}

#[test]
fn look_up_in_dump() {
    let t = NeighTable::parse(DUMP).unwrap();
    let ifs = vec!["va".to_owned(), "vb".to_owned()];
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    // On-link and STALE: resolved, flagged for a probe.
    let (r, stale) = look_up(ip("10.9.9.5"), &ifs, &t, || {
        Ok(("va".to_owned(), ip("10.9.9.5")))
    })
    .unwrap()
    .ok()
    .unwrap();
    assert!(stale);
    assert_eq!(r.mac, [2, 0, 0, 0, 0, 6]);
    // Behind a link-local IPv6 gateway.
    let (r, stale) = look_up(ip("2001:db8:9::1"), &ifs, &t, || {
        Ok(("vb".to_owned(), ip("fe80::1")))
    })
    .unwrap()
    .ok()
    .unwrap();
    assert!(!stale);
    assert_eq!((r.dev.as_str(), r.via), ("vb", ip("fe80::1")));
    // Incomplete and absent: pending with the state.
    let p = look_up(ip("10.9.9.6"), &ifs, &t, || {
        Ok(("va".to_owned(), ip("10.9.9.6")))
    })
    .unwrap()
    .err()
    .unwrap();
    assert_eq!(p.state, "INCOMPLETE");
    let p = look_up(ip("10.9.9.99"), &ifs, &t, || {
        Ok(("va".to_owned(), ip("10.9.9.99")))
    })
    .unwrap()
    .err()
    .unwrap();
    assert_eq!(p.state, "none");
    // Routed out of an interface that is not configured.
    assert!(matches!(
        look_up(ip("10.9.9.5"), &ifs, &t, || Ok((
            "eth9".to_owned(),
            ip("10.9.9.5")
        ))),
        Err(ResolveError::ForeignInterface { .. })
    ));
    // No route.
    assert!(matches!(
        look_up(ip("10.9.9.5"), &ifs, &t, || Err(ResolveError::NoRoute {
            addr: ip("10.9.9.5")
        })),
        Err(ResolveError::NoRoute { .. })
    ));
}

/// A cached route younger than its [`route_ttl`] is used as is, without running `ip` (the
/// answer is the cached device, not whatever the host routes the address through).
#[test]
fn route_cache_hit() {
    let addr: IpAddr = "192.0.2.77".parse().unwrap();
    let now = Instant::now();
    let mut cache = RouteCache::new();
    cache.insert(
        addr,
        CachedRoute {
            dev: "int0".to_owned(),
            via: "192.0.2.1".parse().unwrap(),
            at: now,
        },
    );
    let got = IpCommand::default()
        .cached_route(&mut cache, addr, false, now + ROUTE_TTL / 2 - PROBE_POLL)
        .unwrap();
    assert_eq!(got, ("int0".to_owned(), "192.0.2.1".parse().unwrap()));
    // Spread over the second half of ROUTE_TTL, the same for one address every time.
    for a in ["10.0.0.1", "10.0.0.2", "2001:db8::1", "fe80::1"] {
        let a: IpAddr = a.parse().unwrap();
        let ttl = route_ttl(a);
        assert!(ttl >= ROUTE_TTL / 2 && ttl < ROUTE_TTL);
        assert_eq!(ttl, route_ttl(a));
    }
}

#[test]
fn macs() {
    assert_eq!(
        parse_mac("aa:BB:0c:00:00:01"),
        Some([0xaa, 0xbb, 0x0c, 0, 0, 1])
    );
    assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
    assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
    assert_eq!(parse_mac("zz:bb:cc:dd:ee:ff"), None);
}

/// What the fake `ip` answers.
#[derive(Debug, Clone)]
enum Answer {
    Json(String),
    /// The process could not be started (e.g. EMFILE).
    SpawnFails,
    /// `ip` exited non-zero with this stderr.
    Fails(&'static str),
}

#[derive(Debug)]
struct FakeState {
    routes: HashMap<IpAddr, Answer>,
    neigh: Answer,
    probe_fails: bool,
}

/// A kernel that answers from [`FakeState`], changeable between refreshes.
#[derive(Debug)]
struct Fake(Mutex<FakeState>);

impl Kernel for Fake {
    fn ip(&self, args: &[&str]) -> Result<String, ResolveError> {
        let st = self.0.lock().unwrap();
        let answer = match args {
            ["-j", "neigh", "show"] => st.neigh.clone(),
            ["-j", "route", "get", a] => st
                .routes
                .get(&a.parse::<IpAddr>().unwrap())
                .cloned()
                .unwrap_or(Answer::Fails("RTNETLINK answers: Network is unreachable")),
            _ => panic!("unexpected ip {args:?}"),
        };
        let command = format!("/usr/sbin/ip {}", args.join(" "));
        match answer {
            Answer::Json(j) => Ok(j),
            Answer::SpawnFails => Err(ResolveError::Spawn {
                command,
                source: std::io::Error::from_raw_os_error(libc::EMFILE),
            }),
            Answer::Fails(stderr) => Err(ResolveError::Command {
                command,
                stderr: stderr.to_owned(),
            }),
        }
    }

    fn probe(&self, addr: IpAddr) -> Result<(), ResolveError> {
        if self.0.lock().unwrap().probe_fails {
            return Err(ResolveError::Probe {
                addr,
                source: std::io::Error::from_raw_os_error(libc::EMFILE),
            });
        }
        Ok(())
    }
}

const B1: &str = "10.9.9.5";
const B2: &str = "10.9.9.6";
const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 5];

fn on_link(addr: &str) -> Answer {
    Answer::Json(format!(r#"[{{"dst":"{addr}","dev":"int","flags":[]}}]"#))
}

fn dump(state: &str) -> Answer {
    Answer::Json(format!(
        r#"[{{"dst":"{B1}","dev":"int","lladdr":"02:00:00:00:00:05","state":["{state}"]}}]"#
    ))
}

/// An [`IpCommand`] over a fake with B1 and B2 on-link, B1's neighbour REACHABLE; no
/// waiting for probed neighbours.
fn fake() -> (Arc<Fake>, IpCommand) {
    let fake = Arc::new(Fake(Mutex::new(FakeState {
        routes: [(B1, on_link(B1)), (B2, on_link(B2))]
            .into_iter()
            .map(|(a, r)| (a.parse().unwrap(), r))
            .collect(),
        neigh: dump("REACHABLE"),
        probe_fails: false,
    })));
    let mut ip = IpCommand::with_kernel(Arc::clone(&fake) as Arc<dyn Kernel>);
    ip.polls = 0;
    (fake, ip)
}

fn refresh(ip: &IpCommand) -> Vec<Result<[u8; 6], String>> {
    let addrs: Vec<IpAddr> = [B1, B2].iter().map(|a| a.parse().unwrap()).collect();
    ip.resolve_all(&addrs, &["int".to_owned()])
        .into_iter()
        .map(|r| r.map(|r| r.mac).map_err(|e| e.to_string()))
        .collect()
}

/// Log lines written while `f` runs on this thread.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

/// `ip` that cannot start (EMFILE), a failed dump and a garbled one keep B1's next hop;
/// B2, never resolved, stays unresolved with the fault as the reason. One warning for
/// the whole run of faulty refreshes, one line when it ends; every fault counted.
#[test]
fn gateway_faults_keep_the_last_next_hop_and_log_once() {
    let (fake, ip) = fake();
    let first = refresh(&ip);
    assert_eq!(first[0], Ok(MAC1));
    assert!(first[1].is_err(), "B2 has no neighbour: {first:?}");
    let faults_before = FAULTS.get();
    let (rounds, log) = logged(|| {
        let mut rounds = Vec::new();
        for neigh in [
            Answer::SpawnFails,
            Answer::Fails("Cannot open netlink socket: Too many open files"),
            Answer::Json("[{\"dst\":".to_owned()),
            Answer::Json("garbage".to_owned()),
        ] {
            fake.0.lock().unwrap().neigh = neigh;
            rounds.push(refresh(&ip));
        }
        fake.0.lock().unwrap().neigh = dump("REACHABLE");
        rounds.push(refresh(&ip));
        rounds
    });
    for r in &rounds {
        assert_eq!(r[0], Ok(MAC1), "B1 keeps its next hop: {rounds:?}");
    }
    assert!(
        rounds[0][1]
            .as_ref()
            .unwrap_err()
            .contains("Too many open files"),
        "{:?}",
        rounds[0][1]
    );
    assert!(
        rounds[2][1]
            .as_ref()
            .unwrap_err()
            .contains("parsing the output"),
        "{:?}",
        rounds[2][1]
    );
    // 4 faulty refreshes × 2 backends.
    assert!(FAULTS.get() >= faults_before + 8);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "logged once:\n{log}");
    assert!(warnings[0].contains("Too many open files"), "{log}");
    assert!(
        warnings[0].contains("1 backends keep their last known next hop"),
        "{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("next-hop look-ups work again after 4 refreshes"))
            .count(),
        1,
        "{log}"
    );
}

/// The kernel saying the neighbour is gone clears the next hop only on the
/// ABSENT_TO_CLEAR-th refresh in a row; a refresh that sees it again, or a fault in
/// between, does not count toward it.
#[test]
fn a_next_hop_is_cleared_after_consecutive_absences_only() {
    let (fake, ip) = fake();
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    let set = |a: Answer| fake.0.lock().unwrap().neigh = a;
    // Absent, absent, seen again: the count starts over.
    set(dump("FAILED"));
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    set(Answer::Json("[]".to_owned()));
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    set(dump("STALE"));
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    // Absent, fault (not an observation), absent, absent: cleared on the third absence.
    set(dump("INCOMPLETE"));
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    set(Answer::SpawnFails);
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    set(dump("INCOMPLETE"));
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    // The sequence above is written for three.
    const { assert!(ABSENT_TO_CLEAR == 3) };
    set(dump("FAILED"));
    let cleared = refresh(&ip);
    let e = cleared[0].as_ref().unwrap_err();
    assert!(e.contains("did not resolve (state FAILED)"), "{e}");
    // Gone: a fault now has nothing to keep.
    set(Answer::SpawnFails);
    assert!(refresh(&ip)[0].is_err());
    // A route the kernel refuses is an observation too (not a fault).
    set(dump("REACHABLE"));
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    fake.0.lock().unwrap().routes.remove(&B1.parse().unwrap());
    ip.routes.lock().unwrap().clear();
    let mut last = Vec::new();
    for _ in 0..ABSENT_TO_CLEAR {
        last = refresh(&ip);
    }
    assert!(
        last[0]
            .as_ref()
            .unwrap_err()
            .contains("RTNETLINK answers: Network is unreachable"),
        "{last:?}"
    );
}

/// A STALE neighbour whose re-verifying probe cannot be sent (no descriptor) is still
/// used; the failed probe is counted.
#[test]
fn a_failed_probe_of_a_stale_neighbour_keeps_it() {
    let (fake, ip) = fake();
    {
        let mut st = fake.0.lock().unwrap();
        st.neigh = dump("STALE");
        st.probe_fails = true;
    }
    let before = FAULTS.get();
    assert_eq!(refresh(&ip)[0], Ok(MAC1));
    assert!(FAULTS.get() > before);
}

#[test]
fn faults_and_answers() {
    let cmd = |stderr: &str| ResolveError::Command {
        command: "ip -j route get 10.0.0.1".into(),
        stderr: stderr.into(),
    };
    assert!(!cmd("RTNETLINK answers: Network is unreachable").is_fault());
    assert!(cmd("Cannot open netlink socket: Too many open files").is_fault());
    assert!(cmd("signal: 9 (SIGKILL)").is_fault());
    assert!(ResolveError::Neighbours {
        message: "x".into()
    }
    .is_fault());
    assert!(!ResolveError::NoRoute {
        addr: "10.0.0.1".parse().unwrap()
    }
    .is_fault());
}

/// `ip` is found by absolute path among the known places (this host has iproute2).
#[test]
fn ip_is_found_by_absolute_path() {
    let Some(p) = ip_binary() else {
        eprintln!("SKIP ip_is_found_by_absolute_path: iproute2 is not installed");
        return;
    };
    assert!(p.is_absolute());
    assert!(paths::IP_COMMANDS.contains(&p.to_str().unwrap()));
}
