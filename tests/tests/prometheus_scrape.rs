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
//! Prometheus is stopped by PID (the lab's child guard). Skips, saying why, when not root or
//! when `prometheus` is not installed (`cargo xtask bootstrap` installs it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ikelb_tests::lab::{self, Child, Lab, LabSpec, NetNs};

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

/// `/api/v1/query?query=Q`: each series' labels and value.
fn query(lab: &Lab, q: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
    let body = http_get(&lab.gateway, PROM_PORT, &format!("/api/v1/query?query={q}"))?;
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
