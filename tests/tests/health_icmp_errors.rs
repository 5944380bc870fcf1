//! Health checks count only our own echo reply: an ICMP error about the probe is a failure
//! (docs/operations.md, "What counts as alive"). Root only: without root each test says why
//! and returns.
//!
//! The standard lab with one backend (b1, on the gateway's segment) plus a second one, `far`,
//! in another subnet behind a router on that segment:
//!
//! ```text
//!  ns gw ── int 10.0.0.1 ─── bridge ──┬── b1 10.0.0.11
//!   10.9.0.0/24 via 10.0.0.254        └── rtr eth0 10.0.0.254 ── eth1 10.9.0.1 ── far 10.9.0.20
//!                                          unreachable 10.9.0.20/32          default via 10.9.0.1
//! ```
//!
//! IPv6 (the lab with `ipv6`, `src/lab/topology.rs`): the same with `2001:db8:1::1` (int),
//! `2001:db8:1::11` (b1), `2001:db8:1::fe` / `2001:db8:9::1` (router), `2001:db8:9::20` (far).
//!
//! The router's `unreachable` route answers the probes of `far` with ICMP host unreachable
//! (ICMPv6: no route to destination). `far` must be down — no probe counted as `success`, the
//! first ones as `error`, the router's reason in the log — while b1 stays up. Before the fix
//! the error counted as a success and brought `far` up. Negative control: once the route is
//! deleted, `far` answers and comes up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use ikelb_tests::lab::{self, control, metrics, Lab, LabSpec, NetNs, Veth};
use serde_json::Value;

fn skip_unless_root(test: &str) -> bool {
    if lab::is_root() {
        return false;
    }
    eprintln!(
        "SKIP {test}: needs root (network namespaces, veth, XDP); run `cargo xtask test` as root"
    );
    true
}

/// Fails with the daemon's log tail.
fn or_log<T>(lab: &Lab, r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", lab.daemon_output_tail(40)))
}

/// `ikelb_health_checks_total{backend=addr,result}`.
fn checks(lab: &Lab, addr: IpAddr, result: &str) -> f64 {
    let text = or_log(lab, lab.metrics(), "metrics");
    metrics::sum(
        &text,
        "ikelb_health_checks_total",
        &[("backend", &addr.to_string()), ("result", result)],
    ) + 0.0 // an empty sum is -0
}

/// `(health, state)` of `addr` in a `backend list --json`.
fn health(list: &[Value], addr: IpAddr) -> Option<(String, String)> {
    list.iter()
        .find(|b| b["address"] == addr.to_string())
        .map(|b| {
            (
                b["health"].as_str().unwrap_or_default().to_owned(),
                b["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

fn is(list: &[Value], addr: IpAddr, want_health: &str, want_state: &str) -> bool {
    health(list, addr).is_some_and(|(h, s)| h == want_health && s == want_state)
}

/// The router and `far`, attached to the lab's bridge. Drop before the lab.
struct Far {
    router: NetNs,
    _far: NetNs,
    _links: [Veth; 2],
}

impl Far {
    fn build(lab: &Lab, ipv6: bool) -> Far {
        let router = NetNs::new(lab.prefix().name("rtr")).expect("router namespace");
        let far = NetNs::new(lab.prefix().name("far")).expect("far namespace");
        let links = [
            Veth::new((&router, "eth0"), (&lab.bridge, "rtr")).expect("router–bridge link"),
            Veth::new((&router, "eth1"), (&far, "eth0")).expect("router–far link"),
        ];
        lab.bridge
            .ip(&["link", "set", "rtr", "master", "br0"])
            .expect("router port on the bridge");
        if ipv6 {
            // As the lab's IPv6 layer: on without DAD or RS/RA, also for the links made
            // while it was off.
            for (ns, ifaces) in [
                (&router, &["lo", "eth0", "eth1"][..]),
                (&far, &["lo", "eth0"][..]),
                (&lab.bridge, &["rtr"][..]),
            ] {
                ns.enable_ipv6(ifaces).expect("IPv6 on");
            }
        }
        router
            .ip_batch(
                "addr add 10.0.0.254/24 dev eth0\n\
                 addr add 10.9.0.1/24 dev eth1\n\
                 route add unreachable 10.9.0.20/32\n",
            )
            .expect("router addresses");
        router
            .sysctl("net/ipv4/ip_forward", "1")
            .expect("router forwards");
        // No ICMP rate limit of the namespace. IPv4 errors for unreachable routes have a
        // limit of their own (net.ipv4.route.error_cost / error_burst, host-wide sysctls left
        // alone): about five errors, then one a second; the probes in between time out.
        router
            .sysctl("net/ipv4/icmp_ratelimit", "0")
            .expect("no ICMP rate limit");
        far.ip_batch("addr add 10.9.0.20/24 dev eth0\nroute add default via 10.9.0.1\n")
            .expect("far addresses");
        lab.gateway
            .ip(&["route", "add", "10.9.0.0/24", "via", "10.0.0.254"])
            .expect("gateway route to the far subnet");
        if ipv6 {
            router
                .ip_batch(
                    "addr add 2001:db8:1::fe/64 dev eth0 nodad\n\
                     addr add 2001:db8:9::1/64 dev eth1 nodad\n\
                     route add unreachable 2001:db8:9::20/128\n",
                )
                .expect("router IPv6 addresses");
            router
                .sysctl("net/ipv6/conf/all/forwarding", "1")
                .expect("router forwards IPv6");
            router
                .sysctl("net/ipv6/icmp/ratelimit", "0")
                .expect("no ICMPv6 rate limit");
            far.ip_batch(
                "addr add 2001:db8:9::20/64 dev eth0 nodad\nroute add default via 2001:db8:9::1\n",
            )
            .expect("far IPv6 addresses");
            lab.gateway
                .ip(&["route", "add", "2001:db8:9::/64", "via", "2001:db8:1::fe"])
                .expect("gateway route to the far IPv6 subnet");
        }
        Far {
            router,
            _far: far,
            _links: links,
        }
    }
}

/// The gateway's `ping` of `far` gets `expect` from the router: the topology does what the
/// test needs before the daemon runs.
fn ping_says(lab: &Lab, far: IpAddr, expect: &str) {
    let ping = lab
        .gateway
        .command("ping")
        .args(["-c", "1", "-W", "1", &far.to_string()])
        .output()
        .expect("run ping");
    let said = String::from_utf8_lossy(&ping.stdout);
    assert!(
        !ping.status.success() && said.contains(expect),
        "ping {far} from the gateway should get `{expect}`: {said}"
    );
}

/// Starts the daemon with `config` (b1 `near` and `far` in one virtual server) and checks:
/// `far` down with no success and ≥ 3 errors, `reason` in the log, `near` up; then, with
/// `unreachable` deleted from the router, `far` up.
fn far_is_down_until_it_answers(
    lab: &mut Lab,
    lb_ctl: &Path,
    config: &str,
    router: &NetNs,
    (near, far): (IpAddr, IpAddr),
    reason: &str,
) {
    let t0 = Instant::now();
    lab.start_daemon_with_config(lb_ctl, config)
        .expect("start lb-ctl daemon");
    // 200 ms interval, fall 3, rise 1 (the lab's health_check).
    let settled = control::wait_backends(
        lab,
        "b1 active and the far backend down",
        Duration::from_secs(15),
        |l| is(l, near, "up", "active") && health(l, far).is_some_and(|(h, _)| h == "down"),
    );
    or_log(lab, settled, "b1 up, far down");
    eprintln!("{far} down {:.2?} after the daemon started", t0.elapsed());
    let list = or_log(lab, control::backends(lab, lb_ctl), "backend list");
    let (_, state) = health(&list, far).unwrap();
    assert_eq!(state, "unusable", "{list:?}");

    // No probe of far counted as alive; the first ones failed on the router's error, and the
    // reason is in the daemon's log.
    let counts = |lab: &Lab| ["success", "error", "timeout"].map(|r| (r, checks(lab, far, r)));
    assert_eq!(
        checks(lab, far, "success"),
        0.0,
        "a probe of {far} counted as alive: {:?}\n{}",
        counts(lab),
        lab.daemon_output_tail(20)
    );
    let errors = checks(lab, far, "error");
    assert!(
        errors >= 3.0,
        "only {errors} probes of {far} failed on an ICMP error: {:?}\n{}",
        counts(lab),
        lab.daemon_output_tail(20)
    );
    let log = lab.daemon_output_tail(200);
    assert!(log.contains(reason), "no `{reason}` in the log\n{log}");
    eprintln!("{far}: probes {:?}, failing with `{reason}`", counts(lab));

    // Still down a few intervals later, b1 still up.
    std::thread::sleep(Duration::from_millis(600));
    let list = or_log(lab, control::backends(lab, lb_ctl), "backend list");
    assert!(is(&list, near, "up", "active"), "{list:?}");
    assert!(is(&list, far, "down", "unusable"), "{list:?}");
    assert_eq!(checks(lab, far, "success"), 0.0, "{:?}", counts(lab));

    // Negative control: the router forwards to far, far answers, far comes up (rise 1).
    let prefix = if far.is_ipv4() { "/32" } else { "/128" };
    router
        .ip(&["route", "del", "unreachable", &format!("{far}{prefix}")])
        .expect("delete the unreachable route");
    let t1 = Instant::now();
    let recovered = control::wait_backends(
        lab,
        "the far backend active",
        Duration::from_secs(15),
        |l| is(l, far, "up", "active") && is(l, near, "up", "active"),
    );
    or_log(lab, recovered, "far up once it answers");
    eprintln!(
        "{far} active {:.2?} after the route was deleted",
        t1.elapsed()
    );
    assert!(checks(lab, far, "success") >= 1.0, "{:?}", counts(lab));

    let stopped = lab.stop_daemon().expect("stop the daemon");
    assert!(
        stopped.success(),
        "daemon exited with {stopped}\n{}",
        lab.daemon_output_tail(20)
    );
}

#[test]
fn a_backend_behind_a_router_that_answers_unreachable_is_down_until_it_answers() {
    if skip_unless_root(
        "a_backend_behind_a_router_that_answers_unreachable_is_down_until_it_answers",
    ) {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'i',
        clients: 1,
        backends: 1,
        ..LabSpec::default()
    })
    .expect("build the lab");
    let far_net = Far::build(&lab, false);
    let b1 = lab.backends[0].addr;
    let far = Ipv4Addr::new(10, 9, 0, 20);
    ping_says(
        &lab,
        far.into(),
        "From 10.0.0.254 icmp_seq=1 Destination Host Unreachable",
    );

    let config = lab.daemon_config().replace(
        &format!("      - address: {b1}\n"),
        &format!("      - address: {b1}\n      - address: {far}\n"),
    );
    assert!(config.contains(&format!("address: {far}")), "{config}");
    far_is_down_until_it_answers(
        &mut lab,
        &lb_ctl,
        &config,
        &far_net.router,
        (b1.into(), far.into()),
        "ICMP destination unreachable (host unreachable) from 10.0.0.254",
    );
    drop(far_net);
}

#[test]
fn an_ipv6_backend_behind_a_router_that_answers_unreachable_is_down_until_it_answers() {
    if skip_unless_root(
        "an_ipv6_backend_behind_a_router_that_answers_unreachable_is_down_until_it_answers",
    ) {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: '6',
        clients: 1,
        backends: 1,
        ipv6: true,
        sstp: true,
        ..LabSpec::default()
    })
    .expect("build the protocol lab");
    let far_net = Far::build(&lab, true);
    let b1 = lab.backends6[0];
    let far: Ipv6Addr = "2001:db8:9::20".parse().unwrap();
    ping_says(
        &lab,
        far.into(),
        "From 2001:db8:1::fe icmp_seq=1 Destination unreachable: No route",
    );

    let config = lab.daemon_config().replace(
        &format!("      - address: {b1}\n"),
        &format!("      - address: {b1}\n      - address: {far}\n"),
    );
    assert!(config.contains(&format!("address: {far}")), "{config}");
    far_is_down_until_it_answers(
        &mut lab,
        &lb_ctl,
        &config,
        &far_net.router,
        (b1.into(), far.into()),
        "ICMPv6 destination unreachable (no route to destination) from 2001:db8:1::fe",
    );
    drop(far_net);
}
