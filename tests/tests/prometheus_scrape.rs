//! A real Prometheus scrapes the daemon (docs/metrics.md).
//!
//! `prometheus_sees_every_backend_up_then_the_failed_one_down` builds the standard lab under
//! the `ikr<pid>` prefix, runs `lb-ctl daemon` on the gateway (metrics on the gateway's
//! 127.0.0.1:9435) and the Debian `prometheus` server in the same namespace on its loopback
//! (127.0.0.1:9090, a 1 s scrape interval, a temporary storage directory, the project's alert
//! rules from `deploy/prometheus/ikelb-alerts.yml`). Through Prometheus' HTTP API it checks:
//!
//! 1. `ikelb_backend_up` has one series per backend, each 1, and the scrape target is up;
//!    the other contract metrics are there too;
//! 2. after b1's link is cut, health checks take it down: `ikelb_backend_up` is 0 for b1 and
//!    still 1 for the others, and the `IkelbBackendDown` alert is pending or firing for b1;
//! 3. after the link is restored, b1 is 1 again.
//!
//! `every_dashboard_query_has_series_in_prometheus` checks the Grafana dashboard
//! (`deploy/grafana/ikelb.json`, read by `ikelb_tests::dashboard`) against the same kind of
//! Prometheus. First `promtool check rules` on the alert rules and `promtool check config` on
//! `deploy/prometheus/ikelb-scrape.yml`. Then a lab under the `ikg<pid>` prefix whose daemon
//! has everything a panel shows: `announce` and `share` (tables 100–102 of the gateway's
//! namespace), and `persistence_timeout: 8s` so slot flag sweeps run every 2 s. It carries real
//! traffic (every client opens on UDP 500, then bulk on 4500 every 100 ms), b1's link is cut
//! and restored (probe timeouts, rebuilds, route changes, flagged slots and their sweeps), and
//! 65 idle connections to `/metrics` make the listener evict one and time the others out.
//! After at least 20 scrapes every target expression of every panel, and every `label_values`
//! selector of the template variables, with `$node` set to the daemon's `instance`, `$vs` to
//! `aovpn`, `$__rate_interval` to 1m, `$__interval` to 15s and `$__range` to 5m, must return
//! a series — but for the queries of `NO_SERIES_IN_LAB`, which must return none (so the list
//! stays true).
//!
//! Prometheus is stopped by PID (the lab's child guard). Skips, saying why, when not root or
//! when `prometheus` is not installed (`cargo xtask bootstrap` installs it); fails when
//! `prometheus` is there but `promtool` is not.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ikelb_tests::dashboard;
use ikelb_tests::lab::{self, control::Clients, Child, Lab, LabSpec, NetNs};

/// Prometheus' API on the gateway's loopback.
const PROM_PORT: u16 = 9090;

fn skip(test: &str) -> bool {
    if !lab::is_root() {
        eprintln!(
            "SKIP {test}: needs root (network namespaces, veth, XDP); run `cargo xtask test` as \
             root"
        );
        return true;
    }
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIP {test}: no `prometheus` binary on PATH (Debian package prometheus; \
             `cargo xtask bootstrap` installs it)"
        );
        return true;
    }
    false
}

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

fn alert_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/ikelb-alerts.yml")
}

/// `GET path` on `127.0.0.1:port` in `ns` (HTTP/1.0); the body of a 200 answer.
fn http_get(ns: &NetNs, port: u16, path: &str) -> Result<String> {
    ns.run(|| -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connect 127.0.0.1:{port}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
        ensure!(head.contains(" 200"), "GET {path}: {head}");
        Ok(body.to_string())
    })?
}

/// `s` as a URL query value: everything but unreserved characters (RFC 3986 §2.3)
/// percent-encoded, so PromQL's braces, quotes, spaces and `+` arrive as written.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/api/v1/query?query=Q`: each series' labels and value (a NaN value, as a ratio of two
/// zero rates gives, is a series too).
fn query(lab: &Lab, q: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
    let body = http_get(
        &lab.gateway,
        PROM_PORT,
        &format!("/api/v1/query?query={}", url_encode(q)),
    )?;
    let v: serde_json::Value = serde_json::from_str(&body).context("query answer: JSON")?;
    ensure!(v["status"] == "success", "query {q}: {body}");
    let result = v["data"]["result"].as_array().context("no result array")?;
    result
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .context("no metric")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = r["value"][1].as_str().context("no value")?.parse::<f64>()?;
            Ok((labels, value))
        })
        .collect()
}

/// `ikelb_backend_up` per backend address, as Prometheus has it.
fn backend_up(lab: &Lab) -> Result<BTreeMap<String, f64>> {
    Ok(query(lab, "ikelb_backend_up")?
        .into_iter()
        .map(|(l, v)| (l.get("backend").cloned().unwrap_or_default(), v))
        .collect())
}

fn wait_up(lab: &Lab, want: &BTreeMap<String, f64>, what: &str) -> Duration {
    let t = Instant::now();
    let mut last = BTreeMap::new();
    let r = lab::wait_for(
        what,
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            last = backend_up(lab).unwrap_or_default();
            Ok((&last == want).then_some(()))
        },
    );
    if let Err(e) = r {
        panic!(
            "{e:#}: Prometheus has {last:?}, want {want:?}\n{}",
            lab.daemon_output_tail(30)
        );
    }
    t.elapsed()
}

/// Starts Prometheus in the gateway namespace and waits until it has scraped the daemon.
fn start_prometheus(lab: &Lab) -> Result<Child> {
    let dir = lab.dir().join("prometheus");
    std::fs::create_dir_all(dir.join("data"))?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  - job_name: ikelb\n    static_configs:\n      \
             - targets: ['127.0.0.1:9435']\n",
            rules = alert_rules().display()
        ),
    )?;
    let mut cmd = lab.gateway.command("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{PROM_PORT}"))
        .arg("--log.level=warn");
    let mut prom = Child::spawn("prometheus", cmd, dir.join("prometheus.log"))?;
    let ready = lab::wait_for(
        "Prometheus to scrape the daemon",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            if let Some(status) = prom.exit_status() {
                bail!("prometheus exited ({status}):\n{}", prom.output_tail(20));
            }
            let Ok(body) = http_get(&lab.gateway, PROM_PORT, "/api/v1/targets") else {
                return Ok(None);
            };
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let up = v["data"]["activeTargets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["health"] == "up"));
            Ok(up.then_some(()))
        },
    );
    ready.with_context(|| prom.output_tail(20))?;
    Ok(prom)
}

#[test]
fn prometheus_sees_every_backend_up_then_the_failed_one_down() {
    let test = "prometheus_sees_every_backend_up_then_the_failed_one_down";
    if skip(test) {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'r',
        clients: 10,
        backends: 3,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    lab.start_daemon(&lb_ctl).expect("start lb-ctl daemon");
    let prom = start_prometheus(&lab).expect("start prometheus");

    // 1. Every backend, up.
    let addrs: Vec<String> = lab.backends.iter().map(|b| b.addr.to_string()).collect();
    let mut want: BTreeMap<String, f64> = addrs.iter().map(|a| (a.clone(), 1.0)).collect();
    let took = wait_up(&lab, &want, "every backend up in Prometheus");
    eprintln!("prometheus: ikelb_backend_up = 1 for {addrs:?} after {took:.1?}");
    for (labels, _) in query(&lab, "ikelb_backend_up").unwrap() {
        assert_eq!(labels["vs"], "aovpn", "{labels:?}");
        assert_eq!(labels["job"], "ikelb", "{labels:?}");
    }
    for metric in [
        "ikelb_xdp_packets_total",
        "ikelb_backend_packets_total",
        "ikelb_backend_bytes_total",
        "ikelb_backend_clients",
        "ikelb_health_check_duration_seconds_count",
        "ikelb_health_checks_total",
        "ikelb_persistence_entries",
        "ikelb_persistence_capacity",
        "ikelb_maglev_rebuilds_total",
        "ikelb_build_info",
    ] {
        let series = query(&lab, metric).unwrap();
        assert!(!series.is_empty(), "Prometheus has no {metric}");
    }
    let rules = http_get(&lab.gateway, PROM_PORT, "/api/v1/rules").unwrap();
    assert!(
        rules.contains("IkelbBackendDown") && !rules.contains("\"health\":\"err"),
        "alert rules did not load cleanly: {rules}"
    );

    // 2. Failover: b1's link cut, health checks take it down.
    let b1 = &lab.backends[0];
    let (b1_name, b1_addr) = (b1.name.clone(), b1.addr.to_string());
    lab.bridge
        .ip(&["link", "set", &b1_name, "down"])
        .expect("cut b1's link");
    want.insert(b1_addr.clone(), 0.0);
    let took = wait_up(&lab, &want, "b1 down in Prometheus");
    eprintln!("prometheus: {b1_addr} down in Prometheus {took:.1?} after its link was cut");
    let alerts = lab::wait_for(
        "IkelbBackendDown for b1",
        Duration::from_secs(15),
        Duration::from_millis(250),
        || {
            let body = http_get(&lab.gateway, PROM_PORT, "/api/v1/alerts")?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let hit = v["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|a| {
                    a["labels"]["alertname"] == "IkelbBackendDown"
                        && a["labels"]["backend"] == b1_addr.as_str()
                })
            });
            Ok(hit.then_some(()))
        },
    );
    alerts.expect("the alert rule sees the down backend");

    // 3. Restored: up again.
    lab.bridge
        .ip(&["link", "set", &b1_name, "up"])
        .expect("restore b1's link");
    want.insert(b1_addr.clone(), 1.0);
    let took = wait_up(&lab, &want, "b1 up again in Prometheus");
    eprintln!("prometheus: {b1_addr} up again in Prometheus {took:.1?} after its link came back");

    drop(prom);
    let status = lab.stop_daemon().expect("stop the daemon");
    assert!(status.success(), "daemon exited with {status}");
}

/// Dashboard queries that have no series in this lab, each with why: the metric appears
/// only after an event the lab cannot cause without harming the daemon. Every other query of
/// `deploy/grafana/ikelb.json` must return a series; one of these that does return one makes
/// the test fail so the entry is removed.
const NO_SERIES_IN_LAB: &[(&str, &str)] = &[
    (
        "ikelb_accept_errors_total",
        "a failed accept needs the daemon out of file descriptors (EMFILE)",
    ),
    (
        "ikelb_connections_refused_total",
        "a refusal needs every one of a listener's 64 connection slots serving a request at once",
    ),
];

/// Idle connections to the metrics endpoint: one more than its slots
/// (`lb-ctl/src/metrics/http.rs`, `MAX_CONNECTIONS`), so the listener evicts one, and the
/// others are closed by its request timeout — the lab's listener faults.
const IDLE_METRICS_CONNECTIONS: usize = 65;

/// `promtool check ARGS…` on the project's files; fails with promtool's output.
fn promtool_check(args: &[&str]) {
    let out = Command::new("promtool")
        .arg("check")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool check {args:?}: {e}: promtool comes with the Debian package \
                 prometheus; run `cargo xtask bootstrap`"
            )
        });
    assert!(
        out.status.success(),
        "promtool check {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_dashboard_query_has_series_in_prometheus() {
    let test = "every_dashboard_query_has_series_in_prometheus";
    if skip(test) {
        return;
    }
    // The shipped rules and scrape config, as Prometheus' own checker reads them (the scrape
    // file is a whole config: `scrape_configs:` with everything else defaulted).
    let rules = alert_rules();
    promtool_check(&["rules", rules.to_str().unwrap()]);
    let scrape = rules.with_file_name("ikelb-scrape.yml");
    promtool_check(&["config", scrape.to_str().unwrap()]);

    let board = dashboard::Dashboard::load(&dashboard::path()).expect("the dashboard");
    let problems = board.problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The lab with every part a panel shows: announce and share (the cluster row), a short
    // persistence_timeout so slot flag sweeps (every timeout / 4 while slots are flagged)
    // run within the test.
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'g',
        clients: 10,
        backends: 3,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let config = lab
        .daemon_config()
        .replace("persistence_timeout: 30m\n", "persistence_timeout: 8s\n")
        + "announce:\n  table: 100\nshare:\n  export_table: 101\n  import_table: 102\n";
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon");
    let prom = start_prometheus(&lab).expect("start prometheus");
    let addrs: Vec<String> = lab.backends.iter().map(|b| b.addr.to_string()).collect();
    let mut want: BTreeMap<String, f64> = addrs.iter().map(|a| (a.clone(), 1.0)).collect();
    wait_up(&lab, &want, "every backend up in Prometheus");

    let idle = lab
        .gateway
        .run(|| {
            (0..IDLE_METRICS_CONNECTIONS)
                .map(|_| TcpStream::connect(("127.0.0.1", 9435)))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .unwrap()
        .expect("idle connections to /metrics");

    // Real traffic: every client opens its session on 500, then bulk on 4500 throughout.
    let wait = Duration::from_millis(300);
    let ike = Clients::bind(&lab, &lab.clients, 500).expect("bind IKE clients");
    ike.all_answered(5, wait)
        .unwrap_or_else(|e| panic!("IKE answers: {e:#}\n{}", lab.daemon_output_tail(30)));
    let bulk = Clients::bind(&lab, &lab.clients, 4500).expect("bind bulk clients");
    let traffic = bulk.background(Duration::from_millis(100), Duration::from_millis(200));

    // A failure and a recovery: probe timeouts, a rebuild, announce changes, flagged slots
    // and the sweeps that clear them.
    let b1 = lab.backends[0].name.clone();
    lab.bridge
        .ip(&["link", "set", &b1, "down"])
        .expect("cut b1's link");
    want.insert(addrs[0].clone(), 0.0);
    wait_up(&lab, &want, "b1 down in Prometheus");
    lab.bridge
        .ip(&["link", "set", &b1, "up"])
        .expect("restore b1's link");
    want.insert(addrs[0].clone(), 1.0);
    wait_up(&lab, &want, "b1 up again in Prometheus");

    // The instance Prometheus labels the daemon's series with: `$node`'s value.
    let instance = query(&lab, "ikelb_build_info").unwrap()[0].0["instance"].clone();
    let vars = [
        ("node", instance.as_str()),
        ("vs", "aovpn"),
        ("DS_PROMETHEUS", "prometheus"),
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
    ];
    let mut queries: Vec<(String, String)> = board
        .targets()
        .iter()
        .map(|t| {
            let q = dashboard::substitute(&t.expr, &vars).unwrap();
            (
                format!("panel {} {:?} target {}", t.panel_id, t.panel, t.ref_id),
                q,
            )
        })
        .collect();
    for v in board.label_values().expect("template variables") {
        let q = dashboard::substitute(&v.selector, &vars).unwrap();
        queries.push((
            format!("variable {} (series with label {})", v.name, v.label),
            q,
        ));
    }
    let excused = |q: &str| NO_SERIES_IN_LAB.iter().find(|(m, _)| q.contains(m));

    // Enough scrapes for every rate window, then until every query has a series (sweeps and
    // request timeouts come a few seconds after the recovery).
    let scrapes = format!("count_over_time(ikelb_build_info{{instance=\"{instance}\"}}[1m])");
    lab::wait_for(
        "20 scrapes in Prometheus",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            Ok(query(&lab, &scrapes)?
                .first()
                .is_some_and(|s| s.1 >= 20.0)
                .then_some(()))
        },
    )
    .expect("scrapes");
    let mut empty = Vec::new();
    let polled = lab::wait_for(
        "a series for every dashboard query",
        Duration::from_secs(45),
        Duration::from_millis(1000),
        || {
            empty.clear();
            for (what, q) in &queries {
                let series = query(&lab, q).with_context(|| format!("{what}: {q}"))?;
                if series.is_empty() && excused(q).is_none() {
                    empty.push(format!("{what}: {q}"));
                }
            }
            Ok(empty.is_empty().then_some(()))
        },
    );
    let (bulk, _) = traffic.stop().expect("traffic");
    drop((bulk, idle));
    if let Err(e) = polled {
        panic!(
            "{e:#}: {} of {} dashboard queries return no series:\n{}\n{}",
            empty.len(),
            queries.len(),
            empty.join("\n"),
            lab.daemon_output_tail(20)
        );
    }
    for (what, q) in &queries {
        let series = query(&lab, q).unwrap();
        if let Some((metric, why)) = excused(q) {
            assert!(
                series.is_empty(),
                "{what}: {q} has series now; take {metric} ({why}) off NO_SERIES_IN_LAB"
            );
        }
    }
    for (what, q) in board
        .label_values()
        .unwrap()
        .iter()
        .map(|v| (v, dashboard::substitute(&v.selector, &vars).unwrap()))
    {
        let series = query(&lab, &q).unwrap();
        assert!(
            series.iter().all(|(l, _)| l.contains_key(&what.label)),
            "variable {}: {q} has series without label {}",
            what.name,
            what.label
        );
    }
    eprintln!(
        "prometheus: {} dashboard queries, every one with series but {} excused ({:?})",
        queries.len(),
        queries.iter().filter(|(_, q)| excused(q).is_some()).count(),
        NO_SERIES_IN_LAB.iter().map(|(m, _)| m).collect::<Vec<_>>()
    );

    drop(prom);
    let status = lab.stop_daemon().expect("stop the daemon");
    assert!(status.success(), "daemon exited with {status}");
}
