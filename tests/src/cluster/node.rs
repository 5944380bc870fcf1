//! One ikelb node of the cluster lab: its namespace, `lb-ctl daemon` with `announce`, BIRD
//! announcing its VIP routes to the router (`deploy/bird/ikelb-node.conf`) and keepalived
//! offering the backends' gateway (`deploy/keepalived/keepalived.conf`), each behind a guard.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::keepalived::{self, Keepalived};
use super::{HASH_SEED, MAGLEV_SIZE, ROUTER_NODES_ADDR, SHARE_EXPORT, SHARE_IMPORT, TABLE};
use crate::bird::{self, Bird};
use crate::lab::{self, metrics, wait_for, BpfFs, Child, NetNs, XdpAttachment, VIP};

/// The node's interface toward the router (clients' side).
pub const EXT: &str = "ext";
/// The node's interface toward the backends.
pub const INT: &str = "int";
/// The daemon's Prometheus endpoint, on the node's loopback.
const METRICS_PORT: u16 = 9435;

/// One node. Fields drop in declaration order: keepalived (a backup takes over at once),
/// BIRD (the router drops the node's routes), the daemon, the pins, the namespace.
#[derive(Debug)]
pub struct Node {
    /// `n1`, `n2`, …
    pub name: String,
    /// Its address on the router's segment (BGP, the routes' next hop).
    pub ext_addr: Ipv4Addr,
    /// Its own address on the backends' segment (health checks leave from it).
    pub int_addr: Ipv4Addr,
    /// Its VRRP priority (highest: master).
    pub priority: u8,
    /// The other nodes' `int` addresses when shared persistence is on (its iBGP peers),
    /// `None` without `share`.
    share_peers: Option<Vec<Ipv4Addr>>,
    keepalived: Option<Keepalived>,
    bird: Option<Bird>,
    daemon: Option<Child>,
    bpffs: BpfFs,
    dir: PathBuf,
    pub ns: NetNs,
}

impl Node {
    pub(super) fn new(
        name: String,
        ns: NetNs,
        ext_addr: Ipv4Addr,
        int_addr: Ipv4Addr,
        priority: u8,
        share_peers: Option<Vec<Ipv4Addr>>,
        dir: PathBuf,
    ) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let bpffs = BpfFs::mount(dir.join("bpffs"))?;
        Ok(Self {
            name,
            ext_addr,
            int_addr,
            priority,
            share_peers,
            keepalived: None,
            bird: None,
            daemon: None,
            bpffs,
            dir,
            ns,
        })
    }

    /// This node's run directory (config, logs, pins).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's configuration: the same virtual server, backends, `hash_seed` and
    /// `maglev_table_size` as every other node (what lets any node serve any client), the
    /// lab's fast health checks, and `announce` into table [`TABLE`] with the default
    /// `withdraw_on_stop: true`. `detach_on_exit` stays false: a stopped daemon's pinned
    /// program keeps forwarding what still arrives (the planned drain relies on it).
    /// `slot_move_delay: 1s` (5 s by default) so that the slots of a backend added or
    /// recovered move within the tests' patience. With shared persistence on,
    /// `share: {export_table: 101, import_table: 102}` ([`SHARE_EXPORT`], [`SHARE_IMPORT`]).
    pub fn daemon_config(&self, backends: &[Ipv4Addr]) -> String {
        let mut list = String::new();
        for b in backends {
            writeln!(list, "      - address: {b}").expect("write to String");
        }
        format!(
            "# ikelb cluster lab node {name}: written by ikelb-tests\n\
             interfaces: [{EXT}, {INT}]\n\
             mode: nat\n\
             xdp_mode: native\n\
             persistence_timeout: 30m\n\
             slot_move_delay: 1s\n\
             hash_seed: {HASH_SEED:#x}\n\
             maglev_table_size: {MAGLEV_SIZE}\n\
             virtual_servers:\n\
             \x20 - name: aovpn\n\
             \x20   vip: {VIP}\n\
             \x20   ports: [500, 4500]\n\
             \x20   esp: true\n\
             \x20   backends:\n\
             {list}\
             health_check:\n\
             \x20 interval: 200ms\n\
             \x20 timeout: 150ms\n\
             \x20 fall: 3\n\
             \x20 rise: 1\n\
             \x20 probes: [icmp]\n\
             control:\n\
             \x20 socket: {sock}\n\
             metrics:\n\
             \x20 listen: 127.0.0.1:{METRICS_PORT}\n\
             state_dir: {state}\n\
             bpffs: {bpffs}\n\
             announce:\n\
             \x20 table: {TABLE}\n\
             {share}",
            name = self.name,
            share = if self.share_peers.is_some() {
                format!("share: {{export_table: {SHARE_EXPORT}, import_table: {SHARE_IMPORT}}}\n")
            } else {
                String::new()
            },
            sock = self.control_socket().display(),
            state = self.dir.join("state").display(),
            bpffs = self.bpffs.path().display(),
        )
    }

    /// The daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    /// Starts `lb-ctl daemon` and waits until its program is attached natively to both
    /// interfaces.
    pub fn start_daemon(&mut self, lb_ctl: &Path, backends: &[Ipv4Addr]) -> Result<()> {
        if let Some(d) = self.daemon.as_mut() {
            ensure!(
                d.exit_status().is_some(),
                "{}: daemon already running",
                self.name
            );
        }
        let config = self.dir.join("ikelb.yaml");
        std::fs::write(&config, self.daemon_config(backends))?;
        let mut cmd = self.ns.command(lb_ctl);
        cmd.arg("daemon").arg("--config").arg(&config);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.env("NO_COLOR", "1");
        self.daemon = Some(Child::spawn(
            &format!("lb-ctl daemon {}", self.name),
            cmd,
            self.dir.join("daemon.log"),
        )?);
        let (ns, daemon) = (&self.ns, self.daemon.as_mut().expect("just set"));
        let (ext, int) = wait_for(
            &format!("{}: the daemon to attach XDP to {EXT} and {INT}", self.name),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                if let Some(status) = daemon.exit_status() {
                    bail!(
                        "lb-ctl daemon exited ({status}):\n{}",
                        daemon.output_tail(40)
                    );
                }
                Ok(ns.xdp(EXT)?.zip(ns.xdp(INT)?))
            },
        )?;
        for (ifname, a) in [(EXT, ext), (INT, int)] {
            ensure!(
                a.mode == XdpAttachment::MODE_NATIVE,
                "{}: XDP on {ifname} is attached in mode {} (want native, 1)",
                self.name,
                a.mode
            );
        }
        Ok(())
    }

    /// SIGTERM to the daemon (with `withdraw_on_stop`, the routes go before it exits);
    /// how it ended.
    pub fn stop_daemon(&mut self) -> Result<ExitStatus> {
        let name = &self.name;
        self.daemon
            .as_mut()
            .with_context(|| format!("{name}: daemon not started"))?
            .stop(Duration::from_secs(5))
    }

    /// The daemon's last `n` lines.
    pub fn daemon_tail(&self, n: usize) -> String {
        self.daemon
            .as_ref()
            .map_or_else(|| "not started".into(), |d| d.output_tail(n))
    }

    /// Starts BIRD with the shipped node config: this node's addresses, logging to its
    /// file, and the test's short reconnect timers (`connect retry`, `error wait`: a
    /// session comes up within a second of both ends running). Hold time and BFD stay as
    /// shipped. With shared persistence on, the file's optional part is enabled as its
    /// comments say ([`share_bird_part`]).
    pub fn start_bird(&mut self) -> Result<()> {
        let ext = self.ext_addr.to_string();
        let mut config = bird::deploy_config(
            "ikelb-node.conf",
            &[
                ("log syslog all;", "log stderr all;"),
                ("router id 192.0.2.1;", &format!("router id {ext};")),
                (
                    "local 192.0.2.1 as 65001;",
                    &format!("local {ext} as 65001;"),
                ),
                (
                    "neighbor 192.0.2.2 as 65000;",
                    &format!("neighbor {ROUTER_NODES_ADDR} as 65000;"),
                ),
                ("connect retry time 10;", "connect retry time 1;"),
                ("error wait time 5, 30;", "error wait time 1, 5;"),
            ],
        )?;
        if let Some(peers) = &self.share_peers {
            config = share_bird_part(&config, self.int_addr, peers)?;
        }
        self.bird = Some(Bird::start(&self.ns, &self.name, &config, &self.dir)?);
        Ok(())
    }

    /// Stops BIRD (SIGTERM: it closes its BGP session, the router drops the routes).
    pub fn stop_bird(&mut self) {
        self.bird = None;
    }

    /// BIRD, if running.
    pub fn bird(&self) -> Option<&Bird> {
        self.bird.as_ref()
    }

    /// Starts keepalived with the shipped config and this node's priority.
    pub fn start_keepalived(&mut self) -> Result<()> {
        let config = keepalived::deploy_config(&[(
            "priority 100 ",
            &format!("priority {} ", self.priority),
        )])?;
        self.keepalived = Some(Keepalived::start(&self.ns, &self.name, &config, &self.dir)?);
        Ok(())
    }

    /// SIGTERM to keepalived without waiting for it to exit (see
    /// [`Keepalived::terminate`]).
    pub fn terminate_keepalived(&mut self) -> Result<()> {
        let name = &self.name;
        self.keepalived
            .as_mut()
            .with_context(|| format!("{name}: keepalived not started"))?
            .terminate();
        Ok(())
    }

    /// Stops keepalived cleanly (SIGTERM: priority-0 advertisement, address removed).
    pub fn stop_keepalived(&mut self) -> Result<ExitStatus> {
        let name = &self.name;
        self.keepalived
            .as_mut()
            .with_context(|| format!("{name}: keepalived not started"))?
            .stop()
    }

    /// keepalived's last `n` lines.
    pub fn keepalived_tail(&self, n: usize) -> String {
        self.keepalived
            .as_ref()
            .map_or_else(|| "not started".into(), |k| k.log_tail(n))
    }

    /// Whether `addr` is one of the addresses of this node's `int`.
    pub fn holds(&self, addr: Ipv4Addr) -> Result<bool> {
        let v = self.ns.ip_json(&["-4", "addr", "show", "dev", INT])?;
        let want = addr.to_string();
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
            .any(|a| a["local"].as_str() == Some(&want)))
    }

    /// This node's routes of ikelb's protocol in table [`TABLE`] (what it announces).
    pub fn announced(&self) -> Result<Vec<String>> {
        let v = self
            .ns
            .ip_json(&["-4", "route", "show", "table", TABLE, "proto", "75"])?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["dst"].as_str().map(str::to_owned))
            .collect())
    }

    /// `lb-ctl --socket … ARGS`; stdout.
    pub fn lb_ctl(&self, lb_ctl: &Path, args: &[&str]) -> Result<String> {
        let sock = self.control_socket();
        let mut all = vec!["--socket", sock.to_str().context("non-UTF-8 path")?];
        all.extend_from_slice(args);
        lab::run(lb_ctl.to_str().context("non-UTF-8 path")?, &all)
            .with_context(|| format!("{}: lb-ctl", self.name))
    }

    /// `lb-ctl lookup CLIENT --json`: the result for the lab's one virtual server.
    pub fn lookup(&self, lb_ctl: &Path, client: Ipv4Addr) -> Result<Lookup> {
        let out = self.lb_ctl(lb_ctl, &["lookup", &client.to_string(), "--json"])?;
        let v: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
        let r = &v["results"][0];
        Ok(Lookup {
            backend: r["backend"].as_str().and_then(|b| b.parse().ok()),
            source: r["source"].as_str().unwrap_or("").to_owned(),
            entry: r.get("persisted").is_some(),
        })
    }

    /// The daemon's `/metrics` page (HTTP/1.0 GET on the node's loopback).
    pub fn metrics(&self) -> Result<String> {
        self.ns.run(|| -> Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT))
                .context("connect to the daemon's metrics endpoint")?;
            s.set_read_timeout(Some(lab::patience(Duration::from_secs(2))))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
            ensure!(
                head.starts_with("HTTP/1.") && head.contains(" 200"),
                "metrics: {head}"
            );
            Ok(body.to_string())
        })?
    }

    /// `ikelb_share_clients{table}` (`exported`, `learned`), both tiers: `None` when the
    /// daemon reports none (no `share`, or no round yet).
    pub fn share_clients(&self, table: &str) -> Result<Option<u64>> {
        let text = self.metrics()?;
        let samples = metrics::samples(&text, "ikelb_share_clients");
        let of_table: Vec<_> = samples.iter().filter(|s| s.label("table") == table).collect();
        Ok((!of_table.is_empty()).then(|| of_table.iter().map(|s| s.value as u64).sum()))
    }

    /// The host routes of kernel table `table` of this node: (client, gateway), sorted.
    /// A table that never held a route does not exist yet: empty.
    pub fn share_routes(&self, table: &str) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
        let v = match self.ns.ip_json(&["-4", "route", "show", "table", table]) {
            Ok(v) => v,
            Err(e) if format!("{e:#}").contains("FIB table does not exist") => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            let (Some(dst), Some(gw)) = (r["dst"].as_str(), r["gateway"].as_str()) else {
                continue;
            };
            out.push((dst.parse()?, gw.parse()?));
        }
        out.sort();
        Ok(out)
    }

    /// The counters that say what this node's data path carried.
    pub fn counters(&self) -> Result<Counters> {
        let text = self.metrics()?;
        let packets = |dir: &str| {
            metrics::sum(&text, "ikelb_backend_packets_total", &[("direction", dir)]) as u64
        };
        Ok(Counters {
            forward: packets("forward"),
            reverse: packets("reverse"),
            reverse_stateless: metrics::sum(
                &text,
                "ikelb_xdp_events_total",
                &[("event", "reverse_stateless")],
            ) as u64,
        })
    }
}

/// What a node's daemon says about one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The backend its next packet would go to.
    pub backend: Option<Ipv4Addr>,
    /// `persistence`, `probation`, `maglev` or `none`.
    pub source: String,
    /// The node holds an entry for it (established or probation): it has forwarded it.
    pub entry: bool,
}

/// A node's data-path counters (`/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets forwarded client → backend.
    pub forward: u64,
    /// Packets rewritten backend → client.
    pub reverse: u64,
    /// Replies to clients this node had no entry for, sent because the ring names the
    /// backend (`reverse_stateless`).
    pub reverse_stateless: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            forward: self.forward.saturating_sub(o.forward),
            reverse: self.reverse.saturating_sub(o.reverse),
            reverse_stateless: self.reverse_stateless.saturating_sub(o.reverse_stateless),
        }
    }
}

/// Where the optional shared persistence part of `deploy/bird/ikelb-node.conf` begins.
const SHARE_PART: &str = "# --- Optional: shared persistence between the nodes";

/// Enables the optional shared persistence part of the node config the way its comments
/// tell an operator to: every line of it that holds configuration (a `#` not followed by a
/// space) loses its `#`; this node's address on the shared segment replaces 10.0.0.1, one
/// `protocol bgp` per other node replaces the two examples; the lab's short reconnect
/// timers as on the upstream session. The tables stay 101 and 102 ([`SHARE_EXPORT`],
/// [`SHARE_IMPORT`]), as in the daemon's config.
pub(super) fn share_bird_part(config: &str, own: Ipv4Addr, peers: &[Ipv4Addr]) -> Result<String> {
    let at = config
        .find(SHARE_PART)
        .with_context(|| format!("ikelb-node.conf: no {SHARE_PART:?} part"))?;
    let (head, part) = config.split_at(at);
    let mut enabled = String::with_capacity(part.len());
    for line in part.lines() {
        let uncommented = match line.strip_prefix('#') {
            Some(rest) if !rest.starts_with(' ') => rest,
            _ => line,
        };
        enabled.push_str(uncommented);
        enabled.push('\n');
    }
    let mut sessions = String::new();
    for (j, p) in peers.iter().enumerate() {
        write!(
            sessions,
            "protocol bgp share_peer{} from share_peer {{\n\tneighbor {p} as 65001;\n}}\n\n",
            j + 1
        )
        .expect("write to String");
    }
    let examples =
        "protocol bgp share_node2 from share_peer {\n\tneighbor 10.0.0.2 as 65001;\n}\n\n\
                    protocol bgp share_node3 from share_peer {\n\tneighbor 10.0.0.3 as 65001;\n}\n";
    let edits: [(&str, &str); 3] = [
        (
            "local 10.0.0.1 as 65001;",
            &format!("local {own} as 65001;"),
        ),
        (
            "\tkeepalive time 3;\n\tipv4 {\n\t\ttable share4;",
            "\tkeepalive time 3;\n\tconnect retry time 1;\n\terror wait time 1, 5;\n\
             \tipv4 {\n\t\ttable share4;",
        ),
        (examples, &sessions),
    ];
    for (from, to) in edits {
        ensure!(
            enabled.contains(from),
            "ikelb-node.conf, shared persistence part: no {from:?} to replace"
        );
        enabled = enabled.replacen(from, to, 1);
    }
    for table in [SHARE_EXPORT, SHARE_IMPORT] {
        ensure!(
            enabled.contains(&format!("\n\tkernel table {table};")),
            "ikelb-node.conf, shared persistence part: no kernel table {table} (the daemon's \
             share tables)"
        );
    }
    Ok(format!("{head}{enabled}"))
}
