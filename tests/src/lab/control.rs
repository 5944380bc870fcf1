//! Helpers for tests that drive a running daemon through `lb-ctl` and watch clients move:
//! config edits, `lb-ctl` runs with their exit status and stderr, `backend list --json`, and
//! a client pool that asks the VIP from many addresses at once and records who answered.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::{Lab, UdpProbe, VIP};

/// `config` (a [`Lab::daemon_config`] text) with another `health_check` block; its
/// `probes` line, if any, is kept.
pub fn with_health(config: &str, interval: &str, timeout: &str, fall: u32, rise: u32) -> String {
    let start = config
        .find("health_check:\n")
        .expect("config has health_check");
    let end = config[start..]
        .find("control:\n")
        .map(|i| start + i)
        .expect("health_check is followed by control");
    let probes: String = config[start..end]
        .lines()
        .filter(|l| l.starts_with("  probes:"))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "{}health_check:\n  interval: {interval}\n  timeout: {timeout}\n  fall: {fall}\n  rise: {rise}\n{probes}{}",
        &config[..start],
        &config[end..]
    )
}

/// `config` (a [`Lab::daemon_config`] text) with `health_check.probes` set to `probes`
/// (`"[icmp, ike]"`).
pub fn with_probes(config: &str, probes: &str) -> String {
    let start = config
        .find("health_check:\n")
        .expect("config has health_check");
    let end = config[start..]
        .find("control:\n")
        .map(|i| start + i)
        .expect("health_check is followed by control");
    let block: String = config[start..end]
        .lines()
        .filter(|l| !l.starts_with("  probes:"))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "{}{block}  probes: {probes}\n{}",
        &config[..start],
        &config[end..]
    )
}

/// `config` without the backend `addr` (so it can be added at runtime).
pub fn without_backend(config: &str, addr: Ipv4Addr) -> String {
    let line = format!("      - address: {addr}\n");
    assert!(config.contains(&line), "{addr} is not in the config");
    config.replace(&line, "")
}

/// `lb-ctl --socket <lab's> ARGS…`, whatever its exit status.
pub fn lb_ctl_output(lab: &Lab, lb_ctl: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = std::process::Command::new(lb_ctl);
    cmd.arg("--socket").arg(lab.control_socket()).args(args);
    cmd.env("NO_COLOR", "1");
    cmd.output().with_context(|| format!("run lb-ctl {args:?}"))
}

/// `lb-ctl backend list --json`: the backend objects.
pub fn backends(lab: &Lab, lb_ctl: &Path) -> Result<Vec<Value>> {
    let out = lab.lb_ctl(lb_ctl, &["backend", "list", "--json"])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    ensure!(v["kind"] == "backends", "unexpected reply {v}");
    Ok(v["backends"].as_array().cloned().unwrap_or_default())
}

/// The `backend list --json` object of `addr`, if it is a backend.
pub fn backend(lab: &Lab, lb_ctl: &Path, addr: Ipv4Addr) -> Result<Option<Value>> {
    Ok(backends(lab, lb_ctl)?
        .into_iter()
        .find(|b| b["address"] == addr.to_string()))
}

/// The backend objects, asked on the control socket by the test itself ([`Lab::request`]):
/// what `lb-ctl backend list --json` prints, without starting a process per poll.
pub fn backend_list(lab: &Lab) -> Result<Vec<Value>> {
    let v = lab.request(&serde_json::json!({"command": "backend_list"}))?;
    ensure!(v["kind"] == "backends", "unexpected reply {v}");
    Ok(v["backends"].as_array().cloned().unwrap_or_default())
}

/// Waits until `pred` holds for the backend list (polled every 50 ms on the control
/// socket).
pub fn wait_backends(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&[Value]) -> bool,
) -> Result<Duration> {
    let t0 = Instant::now();
    super::wait_for(what, timeout, Duration::from_millis(50), || {
        let list = backend_list(lab)?;
        Ok(pred(&list).then_some(()))
    })?;
    Ok(t0.elapsed())
}

/// Waits until backend `addr` holds ring slots in the active table: slots whose backend
/// changes keep the old, still usable one, flagged, for `slot_move_delay` (5 s by default)
/// before they move (`lb-ctl/src/state.rs`, "Slot moves").
pub fn wait_ring_slots(lab: &Lab, addr: Ipv4Addr, timeout: Duration) -> Result<Duration> {
    wait_backends(lab, &format!("{addr} holds ring slots"), timeout, |l| {
        l.iter()
            .any(|b| b["address"] == addr.to_string() && b["ring_slots"].as_u64().unwrap_or(0) > 0)
    })
}

/// Whether the backend `addr` is in `list` with `state` (`active`, `draining`, `unusable`).
pub fn has_state(list: &[Value], addr: Ipv4Addr, state: &str) -> bool {
    list.iter()
        .any(|b| b["address"] == addr.to_string() && b["state"] == state)
}

/// Client sockets (one per client address, bound in the client namespace) that ask the VIP
/// together: every client sends, then every answer is collected.
pub struct Clients {
    probes: Vec<UdpProbe>,
    port: u16,
}

/// Who answered each client in one round (`None`: no answer in time).
pub type Round = BTreeMap<Ipv4Addr, Option<String>>;

/// Every round of a [`Background`] run, with the time it started.
pub type Rounds = Vec<(Instant, Round)>;

impl Clients {
    /// Sockets for `addrs` (addresses of the lab's client namespace) asking `VIP:port`.
    pub fn bind(lab: &Lab, addrs: &[Ipv4Addr], port: u16) -> Result<Self> {
        let addrs = addrs.to_vec();
        let probes = lab.client_ns.run(move || {
            addrs
                .iter()
                .map(|&a| UdpProbe::bind(a))
                .collect::<Result<Vec<_>>>()
        })??;
        Ok(Self { probes, port })
    }

    pub fn addrs(&self) -> Vec<Ipv4Addr> {
        self.probes.iter().map(|p| *p.local().ip()).collect()
    }

    /// One datagram from every client, then up to `wait` for the answers.
    pub fn round(&self, wait: Duration) -> Result<Round> {
        let to = SocketAddrV4::new(VIP, self.port);
        let tags: Vec<String> = self
            .probes
            .iter()
            .map(|p| p.send(to, 64))
            .collect::<Result<_>>()?;
        let deadline = Instant::now() + wait;
        let mut out = Round::new();
        for (p, tag) in self.probes.iter().zip(&tags) {
            let reply = p.collect(tag, deadline)?;
            if let Some(r) = &reply {
                ensure!(
                    r.from == to,
                    "{} got an answer from {} (want {to})",
                    p.local(),
                    r.from
                );
            }
            out.insert(*p.local().ip(), reply.map(|r| r.echo.backend));
        }
        Ok(out)
    }

    /// Rounds until every client has been answered once (at most `tries` rounds); fails
    /// naming the clients nobody answered.
    pub fn all_answered(&self, tries: u32, wait: Duration) -> Result<BTreeMap<Ipv4Addr, String>> {
        let mut got: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for _ in 0..tries {
            for (c, b) in self.round(wait)? {
                if let (Some(b), None) = (b, got.get(&c)) {
                    got.insert(c, b);
                }
            }
            if got.len() == self.probes.len() {
                return Ok(got);
            }
        }
        let missing: Vec<Ipv4Addr> = self
            .addrs()
            .into_iter()
            .filter(|a| !got.contains_key(a))
            .collect();
        bail!("no answer for {} clients: {missing:?}", missing.len())
    }

    /// Sends rounds on a thread every `every` until the handle is stopped.
    pub fn background(self, every: Duration, wait: Duration) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = thread::spawn(move || -> Result<(Self, Rounds)> {
            let mut rounds = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let t = Instant::now();
                rounds.push((t, self.round(wait)?));
                thread::sleep(every.saturating_sub(t.elapsed()));
            }
            Ok((self, rounds))
        });
        Background { stop, handle }
    }
}

/// Rounds running on a thread ([`Clients::background`]).
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Result<(Clients, Rounds)>>,
}

impl Background {
    /// Stops after the current round; returns the clients and every round with its start.
    pub fn stop(self) -> Result<(Clients, Rounds)> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => bail!("the traffic thread panicked"),
        }
    }
}

/// How many clients each backend has.
pub fn spread(chosen: &BTreeMap<Ipv4Addr, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for b in chosen.values() {
        *out.entry(b.clone()).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "virtual_servers:\n  - name: aovpn\n    backends:\n      - address: 10.0.0.11\n      - address: 10.0.0.12\nhealth_check:\n  interval: 200ms\n  timeout: 150ms\n  fall: 3\n  rise: 1\ncontrol:\n  socket: /x\n";

    #[test]
    fn config_edits() {
        let c = with_health(CONFIG, "500ms", "200ms", 3, 2);
        assert!(c.contains(
            "health_check:\n  interval: 500ms\n  timeout: 200ms\n  fall: 3\n  rise: 2\ncontrol:\n"
        ));
        assert!(!c.contains("150ms"));
        let c = without_backend(&c, Ipv4Addr::new(10, 0, 0, 12));
        assert!(c.contains("10.0.0.11") && !c.contains("10.0.0.12"));
        let c = with_probes(&c, "[icmp]");
        assert!(c.contains("  rise: 2\n  probes: [icmp]\ncontrol:\n"), "{c}");
        let c = with_probes(&c, "[icmp, ike]");
        assert_eq!(c.matches("probes:").count(), 1, "{c}");
        let c = with_health(&c, "1s", "500ms", 2, 1);
        assert!(
            c.contains("  rise: 1\n  probes: [icmp, ike]\ncontrol:\n"),
            "with_health keeps the probes: {c}"
        );
    }
}
