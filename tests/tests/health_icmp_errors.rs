//! Health checks count only our own echo reply: an ICMP error about the probe is a failure
//! (docs/operations.md, "What counts as alive"). Root only: without root the test says why
//! and returns.
//!
//! The standard lab with one backend (b1, 10.0.0.11, on the gateway's segment) plus a second
//! one in another subnet behind a router on that segment:
//!
//! ```text
//!  ns gw ── int 10.0.0.1 ── bridge ──┬── b1 10.0.0.11
//!   10.9.0.0/24 via 10.0.0.254       └── rtr eth0 10.0.0.254 ── eth1 10.9.0.1 ── far eth0 10.9.0.20
//!                                        unreachable 10.9.0.20/32            default via 10.9.0.1
//! ```
//!
//! The router's `unreachable` route answers the probes of `far` with ICMP host unreachable.
//! `far` must be down — no probe counted as `success`, the first ones as `error` with the
//! router's reason in the log — while b1 stays up. (Before the fix, the first error counted
//! as a success and brought `far` up.) Negative control:
//! once the route is deleted, `far` answers and comes up.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ikelb_tests::lab::{self, control, metrics, Lab, LabSpec, NetNs, Veth};

const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const ROUTER_FAR: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const FAR: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 20);
/// What the daemon's probe of FAR reports (health/packet.rs), in its log line.
const REASON: &str = "ICMP destination unreachable (host unreachable) from 10.0.0.254";

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

/// `ikelb_health_checks_total{backend=FAR,result}`.
fn far_checks(lab: &Lab, result: &str) -> f64 {
    let text = or_log(lab, lab.metrics(), "metrics");
    metrics::sum(
        &text,
        "ikelb_health_checks_total",
        &[("backend", &FAR.to_string()), ("result", result)],
    ) + 0.0 // an empty sum is -0
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
    })
    .expect("build the lab");
    let b1 = lab.backends[0].addr;

    // The router and the far backend; dropped (links with them) before the lab.
    let router = NetNs::new(lab.prefix().name("rtr")).expect("router namespace");
    let far = NetNs::new(lab.prefix().name("far")).expect("far namespace");
    let _links = [
        Veth::new((&router, "eth0"), (&lab.bridge, "rtr")).expect("router–bridge link"),
        Veth::new((&router, "eth1"), (&far, "eth0")).expect("router–far link"),
    ];
    lab.bridge
        .ip(&["link", "set", "rtr", "master", "br0"])
        .expect("router port on the bridge");
    router
        .ip_batch(&format!(
            "addr add {ROUTER}/24 dev eth0\n\
             addr add {ROUTER_FAR}/24 dev eth1\n\
             route add unreachable {FAR}/32\n"
        ))
        .expect("router addresses");
    router
        .sysctl("net/ipv4/ip_forward", "1")
        .expect("router forwards");
    // No ICMP rate limit of the namespace on top of the router's own limit for unreachable
    // routes (net.ipv4.route.error_cost / error_burst, host-wide sysctls left alone): about
    // five errors, then one a second; the probes in between time out.
    router
        .sysctl("net/ipv4/icmp_ratelimit", "0")
        .expect("no ICMP rate limit");
    far.ip_batch(&format!(
        "addr add {FAR}/24 dev eth0\nroute add default via {ROUTER_FAR}\n"
    ))
    .expect("far addresses");
    lab.gateway
        .ip(&["route", "add", "10.9.0.0/24", "via", &ROUTER.to_string()])
        .expect("gateway route to the far subnet");

    // The topology itself: ping from the gateway gets host unreachable from the router.
    let ping = lab
        .gateway
        .command("ping")
        .args(["-c", "1", "-W", "1", &FAR.to_string()])
        .output()
        .expect("run ping");
    let said = String::from_utf8_lossy(&ping.stdout);
    assert!(
        !ping.status.success()
            && said.contains(&format!("From {ROUTER}"))
            && said.contains("Destination Host Unreachable"),
        "ping {FAR} from the gateway should get host unreachable from {ROUTER}: {said}"
    );

    let config = lab.daemon_config().replace(
        &format!("      - address: {b1}\n"),
        &format!("      - address: {b1}\n      - address: {FAR}\n"),
    );
    assert!(config.contains(&format!("address: {FAR}")), "{config}");
    let t0 = Instant::now();
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon");

    // 200 ms interval, fall 3 (the lab's health_check).
    let settled = control::wait_backends(
        &lab,
        &lb_ctl,
        "b1 active and the far backend down",
        Duration::from_secs(15),
        |l| {
            control::has_state(l, b1, "active")
                && l.iter()
                    .any(|b| b["address"] == FAR.to_string() && b["health"] == "down")
        },
    );
    or_log(&lab, settled, "b1 up, far down");
    eprintln!("far down {:.2?} after the daemon started", t0.elapsed());
    let down = control::backend(&lab, &lb_ctl, FAR).unwrap().unwrap();
    assert_eq!(down["health"], "down", "{down}");
    assert_ne!(down["state"], "active", "{down}");
    assert_eq!(down["ring_slots"], 0, "{down}");
    let up = control::backend(&lab, &lb_ctl, b1).unwrap().unwrap();
    assert_eq!(up["health"], "up", "{up}");

    // No probe of far counted as alive; the first ones failed on the router's error, and the
    // reason is in the daemon's log.
    let counts = |lab: &Lab| ["success", "error", "timeout"].map(|r| (r, far_checks(lab, r)));
    assert_eq!(
        far_checks(&lab, "success"),
        0.0,
        "a probe of {FAR} counted as alive: {:?}\n{}",
        counts(&lab),
        lab.daemon_output_tail(20)
    );
    let errors = far_checks(&lab, "error");
    assert!(
        errors >= 3.0,
        "only {errors} probes of {FAR} failed on an ICMP error: {:?}\n{}",
        counts(&lab),
        lab.daemon_output_tail(20)
    );
    let log = lab.daemon_output_tail(200);
    assert!(log.contains(REASON), "no `{REASON}` in the log\n{log}");
    eprintln!("far: probes {:?}, failing with `{REASON}`", counts(&lab));

    // Still down a few intervals later, b1 still up.
    std::thread::sleep(Duration::from_millis(600));
    let list = or_log(&lab, control::backends(&lab, &lb_ctl), "backend list");
    assert!(control::has_state(&list, b1, "active"), "{list:?}");
    assert!(
        list.iter()
            .any(|b| b["address"] == FAR.to_string() && b["health"] == "down"),
        "{list:?}"
    );
    assert_eq!(
        far_checks(&lab, "success"),
        0.0,
        "a probe of {FAR} succeeded"
    );

    // Negative control: the router forwards to far, far answers, far comes up (rise 1).
    router
        .ip(&["route", "del", "unreachable", &format!("{FAR}/32")])
        .expect("delete the unreachable route");
    let t1 = Instant::now();
    let recovered = control::wait_backends(
        &lab,
        &lb_ctl,
        "the far backend active",
        Duration::from_secs(15),
        |l| control::has_state(l, FAR, "active") && control::has_state(l, b1, "active"),
    );
    or_log(&lab, recovered, "far up once it answers");
    eprintln!(
        "far active {:.2?} after the route was deleted",
        t1.elapsed()
    );
    let far_up = control::backend(&lab, &lb_ctl, FAR).unwrap().unwrap();
    assert_eq!(far_up["health"], "up", "{far_up}");
    assert!(far_checks(&lab, "success") >= 1.0);

    let stopped = lab.stop_daemon().expect("stop the daemon");
    assert!(
        stopped.success(),
        "daemon exited with {stopped}\n{}",
        lab.daemon_output_tail(20)
    );
}
