//! The route announcement contract (docs/cluster.md) end to end: `lb-ctl daemon` with
//! `announce: {table: 100}` on the lab's gateway, BIRD 2 on the gateway exporting table 100
//! over BGP (deploy/bird/ikelb-node.conf), and BIRD 2 on the upstream router — the lab's
//! client namespace, one veth away, over the interface the XDP program is attached to —
//! installing what it learns into its kernel (deploy/bird/router.conf). The lab is dual
//! stack: one virtual server with an IPv4 and an IPv6 VIP, IPv4 and IPv6 backends in the
//! same namespaces; the IPv6 route travels over the IPv4 session with the node's IPv6
//! address as next hop. Root and BIRD only: without either the test says why and returns.
//!
//! `the_router_learns_the_vip_while_the_node_can_serve_it`, in order:
//! 1. before the daemon runs, a stale route of ikelb's protocol in table 100 (a VIP the
//!    config does not have) reaches the router — the pipeline itself works — and the VIP
//!    does not;
//! 2. the daemon starts: the router gets `VIP/32 via 192.0.2.1` and `VIP6/128 via
//!    2001:db8:e::1` (`proto bird`), the stale route is reconciled away (on the node and on
//!    the router); `lb-ctl status` (text and `--json`) and `ikelb_vip_announced` say both
//!    are announced;
//! 3. every backend cut at the switch: once health checks take them out the router loses
//!    both routes, status and metrics say so; one namespace's backends back: the routes come
//!    back;
//! 4. SIGTERM (default `withdraw_on_stop`): the routes leave the router;
//! 5. a new daemon announces them again; `kill -9`: the routes stay on the node and on the
//!    router past a BGP hold time, and a client is still answered through the VIP (the
//!    pinned XDP program forwards without its daemon);
//! 6. `lb-ctl daemon --unload`: the routes leave the node and the router.
//!
//! Timers: health checks every 200 ms (timeout 150 ms, fall 3, rise 1, the lab's); BGP hold
//! time 3 s, keepalive 1 s, connect retry 1 s (the shipped files say 9 s / 3 s / 10 s). The
//! times from a backend change or SIGTERM to the router's table are printed (`ANNOUNCE:`
//! lines), never asserted.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ikelb_tests::bird::{self, Bird};
use ikelb_tests::lab::{
    self,
    control::{self, Clients},
    metrics, Lab, LabSpec, VIP, VIP6,
};
use serde_json::Value;

/// `announce.table` of the test (the shipped configs' example).
const TABLE: &str = "100";
/// ikelb's route protocol (lb-ctl/src/announce.rs).
const PROTO: &str = "75";
/// The gateway's addresses on the router link (the lab's `ext`): the next hops of its routes.
const NODE: &str = "192.0.2.1";
const NODE6: &str = "2001:db8:e::1";
/// A VIP the config does not have, left in the table "by an earlier daemon".
const STALE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
/// BGP hold time in the test's BIRD configs.
const HOLD: Duration = Duration::from_secs(3);

fn skip(test: &str) -> bool {
    if !lab::is_root() {
        eprintln!("SKIP {test}: needs root (network namespaces, veth, XDP, routes); run `cargo xtask test` as root");
        return true;
    }
    if !bird::available() {
        eprintln!(
            "SKIP {test}: needs BIRD 2 ({}, Debian package bird2); `cargo xtask bootstrap` installs it",
            bird::BIRD
        );
        return true;
    }
    false
}

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

/// The shipped BIRD configs with the test's log target and short timers (and, on the node,
/// its IPv6 address on the router link as the IPv6 routes' next hop).
fn bird_config(name: &str) -> String {
    let mut edits = vec![
        ("log syslog all;", "log stderr all;"),
        ("hold time 9;", "hold time 3;"),
        ("keepalive time 3;", "keepalive time 1;"),
        ("connect retry time 10;", "connect retry time 1;"),
        ("error wait time 5, 30;", "error wait time 1, 5;"),
    ];
    if name == "ikelb-node.conf" {
        edits.push((
            "next hop address 2001:db8:ff::1;",
            "next hop address 2001:db8:e::1;",
        ));
    }
    bird::deploy_config(name, &edits).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The router's (client namespace's) BGP route to `dst`: its gateway, if any.
fn router_route(lab: &Lab, dst: impl Into<IpAddr>) -> Option<String> {
    let dst = dst.into();
    let (family, len) = if dst.is_ipv4() {
        ("-4", 32)
    } else {
        ("-6", 128)
    };
    let routes = lab
        .client_ns
        .ip_json(&[
            family,
            "route",
            "show",
            &format!("{dst}/{len}"),
            "proto",
            "bird",
        ])
        .expect("ip route show on the router");
    routes.as_array()?.first().map(|r| {
        r["gateway"]
            .as_str()
            .map_or_else(|| r.to_string(), str::to_owned)
    })
}

/// The node's routes of ikelb's protocol in table 100, as `dst dev`, IPv4 first.
fn node_routes(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let routes = lab
            .gateway
            .ip_json(&[family, "route", "show", "table", TABLE, "proto", PROTO])
            .expect("ip route show table 100");
        out.extend(routes.as_array().into_iter().flatten().map(|r| {
            format!(
                "{} {}",
                r["dst"].as_str().unwrap_or("?"),
                r["dev"].as_str().unwrap_or("?")
            )
        }));
    }
    out
}

/// What the node's table 100 holds while it serves both VIPs.
fn both_routes() -> Vec<String> {
    vec![format!("{VIP} lo"), format!("{VIP6} lo")]
}

/// Waits until the router has both VIPs via the node (`true`) or neither (`false`); returns
/// how long it took.
fn wait_vips(lab: &Lab, announced: bool, what: &str) -> Duration {
    let t0 = Instant::now();
    wait_router(lab, VIP, announced.then_some(NODE), what);
    wait_router(lab, VIP6, announced.then_some(NODE6), what);
    t0.elapsed()
}

/// Waits until the router has (`Some(NODE)`) or lacks (`None`) a route to `dst`; returns
/// how long it took.
fn wait_router(lab: &Lab, dst: impl Into<IpAddr>, want: Option<&str>, what: &str) -> Duration {
    let dst = dst.into();
    let t0 = Instant::now();
    let got = lab::wait_for(
        what,
        Duration::from_secs(20),
        Duration::from_millis(20),
        || Ok((router_route(lab, dst).as_deref() == want).then_some(())),
    );
    got.unwrap_or_else(|e| {
        panic!(
            "{e:#}: the router has {:?}, the node's table 100 {:?}\n{}",
            router_route(lab, dst),
            node_routes(lab),
            lab.daemon_output_tail(30)
        )
    });
    t0.elapsed()
}

fn status_json(lab: &Lab, lb_ctl: &Path) -> Value {
    let out = lab
        .lb_ctl(lb_ctl, &["status", "--json"])
        .expect("lb-ctl status --json");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `ikelb_vip_announced` of the IPv4 and the IPv6 VIP.
fn announced_gauges(lab: &Lab) -> [f64; 2] {
    let text = lab.metrics().expect("metrics");
    [VIP.to_string(), VIP6.to_string()].map(|vip| {
        metrics::sum(
            &text,
            "ikelb_vip_announced",
            &[("vs", "aovpn"), ("vip", &vip)],
        )
    })
}

#[test]
fn the_router_learns_the_vip_while_the_node_can_serve_it() {
    let test = "the_router_learns_the_vip_while_the_node_can_serve_it";
    if skip(test) {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'c',
        clients: 1,
        backends: 2,
        ipv6: true,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let dir = lab.dir().to_path_buf();
    let router = Bird::start(&lab.client_ns, "router", &bird_config("router.conf"), &dir)
        .expect("start BIRD on the router");
    let node = Bird::start(&lab.gateway, "node", &bird_config("ikelb-node.conf"), &dir)
        .expect("start BIRD on the node");
    lab::wait_for(
        "the BGP session between node and router",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || Ok(router.established("node1")?.then_some(())),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nrouter:\n{}\nnode:\n{}",
            router.log_tail(20),
            node.log_tail(20)
        )
    });

    // 1. The pipeline before the daemon: a route of ikelb's protocol is announced, the VIP is
    // not.
    lab.gateway
        .ip(&[
            "route",
            "add",
            &format!("{STALE}/32"),
            "dev",
            "lo",
            "table",
            TABLE,
            "proto",
            PROTO,
        ])
        .expect("add a stale route");
    wait_router(&lab, STALE, Some(NODE), "the stale route on the router");
    assert_eq!(router_route(&lab, VIP), None, "the VIP before any daemon");
    assert_eq!(
        router_route(&lab, VIP6),
        None,
        "the IPv6 VIP before any daemon"
    );

    // 2. The daemon announces the VIP once a backend is usable, and reconciles the table.
    let config = lab.daemon_config().replace("detach_on_exit: true\n", "")
        + &format!("announce:\n  table: {TABLE}\n");
    let t0 = Instant::now();
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon");
    wait_vips(&lab, true, "both VIPs on the router");
    eprintln!(
        "ANNOUNCE: VIPs on the router {:.2?} after the daemon started",
        t0.elapsed()
    );
    wait_router(&lab, STALE, None, "the stale route reconciled away");
    assert_eq!(node_routes(&lab), both_routes());
    let s = status_json(&lab, &lb_ctl);
    assert_eq!(
        s["announced"],
        serde_json::json!([format!("{VIP}/32"), format!("{VIP6}/128")]),
        "{s}"
    );
    assert_eq!(s["announce_table"], 100, "{s}");
    let text = lab.lb_ctl(&lb_ctl, &["status"]).expect("lb-ctl status");
    assert!(
        text.contains(&format!(
            "announced (routing table {TABLE}): {VIP}/32, {VIP6}/128"
        )),
        "{text}"
    );
    assert_eq!(announced_gauges(&lab), [1.0, 1.0]);

    // 3. No usable backend: withdrawn; one back: announced again.
    let names: Vec<String> = lab.backends.iter().map(|b| b.name.clone()).collect();
    let t1 = Instant::now();
    for b in &names {
        lab.bridge
            .ip(&["link", "set", b, "down"])
            .expect("cut a backend");
    }
    wait_vips(&lab, false, "the VIPs withdrawn with every backend down");
    eprintln!(
        "ANNOUNCE: VIPs gone from the router {:.2?} after the last backends were cut \
         (health checks: interval 200 ms × fall 3)",
        t1.elapsed()
    );
    let list = control::backend_list(&lab).expect("backend list");
    assert!(list.iter().all(|b| b["state"] != "active"), "{list:?}");
    assert!(node_routes(&lab).is_empty(), "{:?}", node_routes(&lab));
    let s = status_json(&lab, &lb_ctl);
    assert_eq!(s["announced"], serde_json::json!([]), "{s}");
    let text = lab.lb_ctl(&lb_ctl, &["status"]).expect("lb-ctl status");
    assert!(
        text.contains(&format!("announced (routing table {TABLE}): nothing")),
        "{text}"
    );
    assert_eq!(announced_gauges(&lab), [0.0, 0.0]);
    let t2 = Instant::now();
    lab.bridge
        .ip(&["link", "set", &names[0], "up"])
        .expect("restore a backend");
    wait_vips(&lab, true, "the VIPs back with one backend");
    eprintln!(
        "ANNOUNCE: VIPs back on the router {:.2?} after a backend's link came up (rise 1)",
        t2.elapsed()
    );
    let text = lab.metrics().expect("metrics");
    assert!(
        metrics::sum(&text, "ikelb_announce_route_changes_total", &[]) >= 7.0,
        "stale removed, each VIP added, removed, added"
    );
    assert_eq!(
        metrics::sum(&text, "ikelb_announce_route_errors_total", &[]),
        0.0
    );

    // 4. A clean stop withdraws (withdraw_on_stop defaults to true).
    let t3 = Instant::now();
    let stopped = lab.stop_daemon().expect("SIGTERM the daemon");
    assert!(
        stopped.success(),
        "daemon exited with {stopped}\n{}",
        lab.daemon_output_tail(20)
    );
    wait_vips(&lab, false, "the VIPs withdrawn on SIGTERM");
    eprintln!(
        "ANNOUNCE: VIPs gone from the router {:.2?} after SIGTERM",
        t3.elapsed()
    );
    assert!(node_routes(&lab).is_empty());
    assert!(
        lab.daemon_output_tail(20)
            .contains("routes withdrawn on stop"),
        "{}",
        lab.daemon_output_tail(20)
    );

    // 5. kill -9 leaves the data path and the route: the node still forwards.
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon again");
    wait_vips(&lab, true, "the VIPs announced by the new daemon");
    let pid = lab.daemon().expect("started").pid();
    // SAFETY: kill(2) on the lab's own unreaped child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    lab::wait_for(
        "the killed daemon to exit",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || Ok(lab.daemon().expect("started").exit_status()),
    )
    .expect("kill -9");
    // Longer than a BGP hold time: had the session or the route gone, it would show.
    std::thread::sleep(HOLD + Duration::from_secs(1));
    assert_eq!(
        router_route(&lab, VIP).as_deref(),
        Some(NODE),
        "the route left the router after kill -9"
    );
    assert_eq!(
        router_route(&lab, VIP6).as_deref(),
        Some(NODE6),
        "the IPv6 route left the router after kill -9"
    );
    assert_eq!(node_routes(&lab), both_routes());
    assert!(router.established("node1").expect("birdc"));
    let clients = Clients::bind(&lab, &lab.clients[..1], 500).expect("bind a client");
    let answered = clients
        .all_answered(5, Duration::from_millis(300))
        .expect("a client answered through the VIP after kill -9");
    eprintln!("ANNOUNCE: after kill -9 the route stays and {answered:?} is answered");

    // 6. --unload withdraws too.
    let unload = lab
        .gateway
        .exec(
            lb_ctl.to_str().expect("UTF-8 path"),
            &[
                "daemon",
                "--config",
                dir.join("ikelb.yaml").to_str().expect("UTF-8 path"),
                "--unload",
            ],
        )
        .expect("lb-ctl daemon --unload");
    eprintln!("unload: {}", unload.trim());
    assert!(node_routes(&lab).is_empty(), "{:?}", node_routes(&lab));
    wait_vips(&lab, false, "the VIPs withdrawn by --unload");
}
