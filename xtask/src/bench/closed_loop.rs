//! Throughput through real veth in a single-core closed loop:
//!
//! ```text
//!            ┌ to_a ══ in [gw-a: MAC swap + redirect] out ══ s0 [sink-a] ┐
//!  [gen] ────┼ to_b ══ in [gw-b: lb-ctl daemon, ikelb] out ══ s0 [sink-b] ┤ XDP_DROP +
//!  stamp,    ├ to_c ══ in [gw-c: nft DNAT jhash + conntrack] out ══ s0 [sink-c] ┤ per-CPU count
//!  live      └ to_d ══ in [gw-d: kernel forwarding] out ══ s0 [sink-d] ┘
//! ```
//!
//! The generator is `bench_stamp` driven by `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (batch 64) on the chosen `to_*` veth: every frame is rewritten
//! from the template (next client address) and sent with XDP_TX into that gateway. Frames
//! are bulk VPN data: ESP in UDP to 4500, 64 bytes on the wire. Everything
//! downstream — the gateway's NAPI, its XDP program or the kernel stack, the sink's NAPI and
//! XDP program — runs in the softirqs the generator's `local_bh_enable` triggers, on the
//! generator's CPU: one core carries the whole loop, so packets per second measure the cost
//! per packet of the path. The four gateways stay configured for the whole run, so the
//! variants alternate (A B C D, A B C D, …) with nothing rebuilt in between.
//!
//! * gw-a: `bench_fwd` (MAC swap + devmap redirect): the physical limit of this path.
//! * gw-b: `lb-ctl daemon` with the benchmark configuration — the real program with the maps
//!   the daemon fills (it resolves the backends and health-checks them like in production;
//!   the sinks hold the backend addresses and answer ARP and ping through the kernel).
//! * gw-c: nftables DNAT `jhash ip saddr mod 10 map {…}` with conntrack, kernel forwarding.
//! * gw-d: kernel forwarding, a static route for the VIP.
//! * gw-e: ikelb with the slot fast path on: `lb-ctl daemon` with `slot_fast_path: true` when
//!   this lb-ctl accepts the key (`--check`), else the same object loaded with the global on
//!   and filled by `lb_ctl`'s own `Balancer`, attached to both veths (the table says which).
//!
//! The clients are **established** in both ikelb gateways before each size is measured:
//! since the two-tier persistence only a promotion (the client echoing its backend's IKE
//! responder SPI) creates a `PERSIST_V4` entry, and ESP from unknown sources would only reach
//! the rationed probation map, the bench writes each client's entry into the daemon's pinned
//! `PERSIST_V4` as a promotion leaves it (`lb::establish`). Each ikelb sample also records,
//! from the gateway's `EVENTS`, the share of its frames that took the slot fast path (gw-e)
//! and how many counted as new clients (0 unless entries were lost).

use std::{
    fs,
    os::fd::AsFd as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, DevMap, HashMap, Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{event, PersistKeyV4, PersistValue, Service};
use lb_ctl::{
    dataplane::AyaDataplane,
    pin::Pins,
    state::{Balancer, IfaceInfo},
    EBPF_OBJECT,
};

use crate::{
    control::MAGLEV_M,
    frame::{self, BenchCfg, Template, ESP_IN_UDP, MODE_FORWARD},
    lb::{self, backend_addr, DaemonPaths, BACKENDS, VIP},
    stats::median,
    sys::{self, BpfFs, Child, NetNs, RunPrefix, Sysctl, TempDir, Veth},
};

/// The compared paths, in the order they alternate.
pub const VARIANTS: [(&str, &str); 5] = [
    ("trivial", "MAC swap + redirect (XDP)"),
    ("ikelb", "ikelb (lb-ctl daemon), slot fast path off"),
    ("nft", "nft DNAT jhash + conntrack"),
    ("kernel", "kernel forwarding"),
    ("lever", "ikelb, slot fast path on"),
];

/// Indices in [`VARIANTS`] of the ikelb gateways (gw-b, gw-e).
const IKELB: usize = 1;
const LEVER: usize = 4;

/// Client counts of the sweep.
pub const SIZES: [(&str, u32); 3] = [("1k", 1_000), ("64k", 65_536), ("1M", 1_000_000)];

pub(crate) const CLIENT_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
/// Frames per test_run call (≈ 20–100 ms); the loop stops at the first call past the deadline.
pub(crate) const CHUNK: u32 = 1 << 16;
const BATCH: u32 = 64;

/// Conntrack entries the nft gateway needs at 1M clients (the per-namespace value is
/// read-only: the global one is raised for the run and restored).
const CONNTRACK_MAX: &str = "2097152";
const CONNTRACK_BUCKETS: &str = "1048576";

pub struct Options {
    pub cpu: usize,
    pub daemon_cpu: usize,
    pub measure: Duration,
    pub repeats: usize,
    pub lb_ctl: PathBuf,
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Sample {
    pub size: &'static str,
    pub variant: &'static str,
    pub repeat: usize,
    pub generated: u64,
    pub received: u64,
    pub secs: f64,
    pub mpps: f64,
    /// ikelb with the lever: share of the received frames that took the slot fast path
    /// (`fast_path` events of the gateway).
    pub fast_path_share: Option<f64>,
    /// ikelb gateways: frames counted as new clients (`probation_insert` +
    /// `probation_throttled`) — 0 while every client is established.
    pub new_clients: Option<u64>,
}

#[derive(Default)]
pub struct Results {
    pub samples: Vec<Sample>,
    /// How gw-e's ikelb with the slot fast path was set up: "lb-ctl daemon" or "library".
    pub lever_loaded_by: String,
    pub opts_cpu: usize,
    pub measure_secs: f64,
    pub repeats: usize,
}

impl Results {
    /// Median Mpps of a (size, variant).
    pub fn median(&self, size: &str, variant: &str) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.size == size && s.variant == variant)
            .map(|s| s.mpps)
            .collect();
        median(&v)
    }

    /// The samples of an earlier `results.json`, and its machine line (for `--redraw`).
    pub fn from_json(text: &str) -> Result<(Self, String)> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let mut samples = Vec::new();
        for s in v["closed_loop_samples"].as_array().context("closed_loop_samples")? {
            let size = SIZES
                .iter()
                .find(|(k, _)| s["clients"] == *k)
                .context("unknown size")?
                .0;
            let variant = VARIANTS
                .iter()
                .find(|(k, _)| s["variant"] == *k)
                .context("unknown variant")?
                .0;
            samples.push(Sample {
                size,
                variant,
                repeat: s["repeat"].as_u64().unwrap_or(0) as usize,
                generated: s["generated"].as_u64().unwrap_or(0),
                received: s["received"].as_u64().unwrap_or(0),
                secs: s["seconds"].as_f64().unwrap_or(0.0),
                mpps: s["mpps"].as_f64().unwrap_or(0.0),
                fast_path_share: s["fast_path_share"].as_f64(),
                new_clients: s["new_clients"].as_u64(),
            });
        }
        let m = &v["machine"];
        let machine = format!(
            "{} · {} vCPU {} · {:.0} GiB · Linux {} · ikelb {} · cargo xtask bench",
            m["date"].as_str().unwrap_or(""),
            m["cpus"],
            m["cpu"].as_str().unwrap_or(""),
            m["mem_gib"].as_f64().unwrap_or(0.0),
            m["kernel"].as_str().unwrap_or(""),
            m["commit"].as_str().unwrap_or("")
        );
        let method = &v["closed_loop_method"];
        Ok((
            Self {
                samples,
                lever_loaded_by: method["lever_loaded_by"].as_str().unwrap_or("").to_owned(),
                opts_cpu: method["cpu"].as_u64().unwrap_or(0) as usize,
                measure_secs: method["seconds_per_point"].as_f64().unwrap_or(0.0),
                repeats: method["repeats"].as_u64().unwrap_or(0) as usize,
            },
            machine,
        ))
    }

    /// Median fast-path share of the lever's samples of a size (NaN without any).
    pub fn fast_path_share(&self, size: &str) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.size == size)
            .filter_map(|s| s.fast_path_share)
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            median(&v)
        }
    }

    /// Frames generated but not counted by the sink, summed over the measurements of a
    /// (size, variant).
    pub fn lost(&self, size: &str, variant: &str) -> u64 {
        self.samples
            .iter()
            .filter(|s| s.size == size && s.variant == variant)
            .map(|s| s.generated.saturating_sub(s.received))
            .sum()
    }
}

/// Everything the loop is made of, torn down in field order: the daemon first, then the
/// programs, the links, the namespaces, the bpffs mounts, the run directories and the global
/// sysctls.
struct Rig {
    daemon: Option<Child>,
    /// gw-e's ikelb with the lever: `lb-ctl daemon` with `slot_fast_path: true` when this
    /// lb-ctl accepts the key, else loaded through the library (maps and attachments live as
    /// long as the `Balancer`).
    lever_daemon: Option<Child>,
    _lever: Option<Balancer<AyaDataplane>>,
    ebpf: Ebpf,
    _veths: Vec<Veth>,
    gen: NetNs,
    _gws: Vec<NetNs>,
    _sinks: Vec<NetNs>,
    /// The bpffs mounts the daemons of gw-b and gw-e pin their maps under.
    bpffs: BpfFs,
    lever_bpffs: BpfFs,
    _dir: TempDir,
    _lever_dir: TempDir,
    _conntrack: (Sysctl, Sysctl),
    /// Per variant: the generator's egress ifindex and the frame template.
    paths: Vec<(u32, Template)>,
    log: PathBuf,
    lever_log: PathBuf,
}

pub fn run(prefix: &RunPrefix, o: &Options) -> Result<Results> {
    let mut rig = build(prefix, o)?;
    let mut samples = Vec::new();
    for (size, clients) in SIZES {
        set_clients(&mut rig, clients)?;
        for vi in [IKELB, LEVER] {
            establish(&mut rig, vi, clients)?;
        }
        eprintln!("  closed loop {size:>3}: {clients} clients established in both ikelb gateways");
        for repeat in 0..o.repeats {
            for (vi, (variant, _)) in VARIANTS.iter().enumerate() {
                // Warm-up: in the first round of a size every path sees every client at
                // least twice (LRU entries, conntrack entries exist before measuring).
                let (min_frames, min_time) = if repeat == 0 {
                    (2 * u64::from(clients), Duration::from_secs(1))
                } else {
                    (0, Duration::from_millis(500))
                };
                lb::set_template(&mut rig.ebpf, rig.paths[vi].1.block)?;
                run_calls(&rig, vi, o.cpu, CHUNK, |elapsed, frames| {
                    elapsed < min_time || frames < min_frames
                })?;
                thread::sleep(Duration::from_millis(20));
                let before = sink_count(&rig.ebpf)?;
                let ev_before = ikelb_events(&mut rig, vi)?;
                let (generated, secs) = generate(&mut rig, vi, o.measure, o.cpu)?;
                thread::sleep(Duration::from_millis(50));
                let received = sink_count(&rig.ebpf)? - before;
                let ev_after = ikelb_events(&mut rig, vi)?;
                let mpps = received as f64 / secs / 1e6;
                let (fast_path_share, new_clients) = match (ev_before, ev_after) {
                    (Some(b), Some(a)) => {
                        let d = |e: u32| a[e as usize] - b[e as usize];
                        (
                            (vi == LEVER)
                                .then(|| d(event::FAST_PATH) as f64 / received.max(1) as f64),
                            Some(d(event::PROBATION_INSERT) + d(event::PROBATION_THROTTLED)),
                        )
                    }
                    _ => (None, None),
                };
                let mut note = String::new();
                if let Some(f) = fast_path_share {
                    note += &format!(", fast path {:.1}%", f * 100.0);
                }
                if let Some(n) = new_clients.filter(|&n| n > 0) {
                    note += &format!(", {n} as new clients");
                }
                eprintln!(
                    "  closed loop {size:>3} {variant:8} #{repeat}: {mpps:6.3} Mpps \
                     ({received} of {generated} frames in {secs:.2} s{note})"
                );
                samples.push(Sample {
                    size,
                    variant,
                    repeat,
                    generated,
                    received,
                    secs,
                    mpps,
                    fast_path_share,
                    new_clients,
                });
            }
        }
    }
    if let Some(d) = rig.daemon.as_mut() {
        if d.exit_status().is_some() {
            bail!("the daemon exited during the run; its log: {}", tail(&rig.log));
        }
    }
    if let Some(d) = rig.lever_daemon.as_mut() {
        if d.exit_status().is_some() {
            bail!("the slot-fast-path daemon exited during the run; its log: {}", tail(&rig.lever_log));
        }
    }
    Ok(Results {
        lever_loaded_by: if rig.lever_daemon.is_some() {
            "lb-ctl daemon (slot_fast_path: true)".into()
        } else {
            "lb_ctl library (this lb-ctl has no slot_fast_path key)".into()
        },
        samples,
        opts_cpu: o.cpu,
        measure_secs: o.measure.as_secs_f64(),
        repeats: o.repeats,
    })
}

fn build(prefix: &RunPrefix, o: &Options) -> Result<Rig> {
    let conntrack = (
        Sysctl::set("net/netfilter/nf_conntrack_max", CONNTRACK_MAX)?,
        Sysctl::set("net/netfilter/nf_conntrack_buckets", CONNTRACK_BUCKETS)?,
    );
    let dir = TempDir::named(prefix, "loop")?;
    let bpffs = BpfFs::mount_in(&dir)?;
    let gen = NetNs::new(prefix.name("gen"))?;
    let mut gws = Vec::new();
    let mut sinks = Vec::new();
    let mut veths = Vec::new();
    let letters = ['a', 'b', 'c', 'd', 'e'];
    for l in letters {
        let gw = NetNs::new(prefix.name(&format!("gw{l}")))?;
        let sink = NetNs::new(prefix.name(&format!("sink{l}")))?;
        veths.push(Veth::new((&gen, &format!("to_{l}")), (&gw, "in"))?);
        veths.push(Veth::new((&gw, "out"), (&sink, "s0"))?);
        let mut cmds = String::from(
            "addr add 192.0.2.1/24 dev in\naddr add 10.0.0.1/24 dev out\n",
        );
        if l == 'd' {
            cmds.push_str(&format!("route add {VIP}/32 via {}\n", backend_addr(0)));
        }
        gw.ip_batch(&cmds)?;
        for key in [
            "net/ipv4/ip_forward",
            "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/default/rp_filter",
            "net/ipv4/conf/in/rp_filter",
        ] {
            gw.sysctl(key, if key.ends_with("ip_forward") { "1" } else { "0" })?;
        }
        let mut cmds = String::new();
        for i in 0..BACKENDS {
            cmds.push_str(&format!("addr add {}/24 dev s0\n", backend_addr(i)));
        }
        sink.ip_batch(&cmds)?;
        gws.push(gw);
        sinks.push(sink);
    }
    // Kernel paths: NAPI on the gateway's ingress veth (GRO) so XDP_TX frames from the
    // generator are accepted (a veth drops XDP frames unless the receiver has XDP or GRO).
    for gw in &gws[2..4] {
        gw.exec("ethtool", &["-K", "in", "gro", "on"])?;
    }
    nft_rules(&gws[2])?;

    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .context("loading the XDP object (bench programs)")?;
    for p in ["bench_stamp", "bench_sink", "bench_fwd"] {
        lb::load_prog(&mut ebpf, p)?;
    }
    for sink in &sinks {
        let prog: &mut Xdp = ebpf.program_mut("bench_sink").context("bench_sink")?.try_into()?;
        sink.run(|| {
            prog.attach("s0", XdpMode::Driver)
                .context("attach bench_sink (native)")
        })??;
    }
    {
        let out = gws[0].ifindex("out")?;
        let mut tx: DevMap<&mut MapData> =
            DevMap::try_from(ebpf.map_mut("BENCH_TX").context("BENCH_TX")?)?;
        gws[0].run(|| tx.set(0, out, None, 0).context("BENCH_TX[0] = gw-a out"))??;
        let prog: &mut Xdp = ebpf.program_mut("bench_fwd").context("bench_fwd")?.try_into()?;
        gws[0].run(|| prog.attach("in", XdpMode::Driver).context("attach bench_fwd"))??;
    }

    let mut paths = Vec::new();
    for (i, l) in letters.iter().enumerate() {
        let ifname = format!("to_{l}");
        let t = frame::template(gws[i].mac("in")?, gen.mac(&ifname)?, Some(VIP), ESP_IN_UDP);
        paths.push((gen.ifindex(&ifname)?, t));
    }

    let lever_dir = TempDir::named(prefix, "lever")?;
    let lever_bpffs = BpfFs::mount_in(&lever_dir)?;
    let lever_cfg = write_config(
        lever_dir.path(),
        lever_bpffs.path(),
        "slot_fast_path: true\n",
    )?;
    let daemon_has_lever = Command::new("ip")
        .args(["netns", "exec", gws[4].name()])
        .arg(&o.lb_ctl)
        .args(["daemon", "--check", "--config"])
        .arg(&lever_cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let lever = if daemon_has_lever {
        None
    } else {
        eprintln!(
            "  this lb-ctl has no `slot_fast_path` key: gw-e loads ikelb with the lever through \
             the lb_ctl library instead of the daemon"
        );
        Some(lever_gateway(&gws[4], &sinks[4])?)
    };
    let log = dir.path().join("daemon.log");
    let lever_log = lever_dir.path().join("daemon.log");
    // With the key, both daemons say explicitly which way they run.
    let cfg = write_config(
        dir.path(),
        bpffs.path(),
        if daemon_has_lever { "slot_fast_path: false\n" } else { "" },
    )?;
    let mut rig = Rig {
        daemon: None,
        lever_daemon: None,
        _lever: lever,
        ebpf,
        _veths: veths,
        gen,
        _gws: gws,
        _sinks: sinks,
        bpffs,
        lever_bpffs,
        _dir: dir,
        _lever_dir: lever_dir,
        _conntrack: conntrack,
        paths,
        log,
        lever_log,
    };
    rig.daemon = Some(start_daemon(&mut rig, &prefix.name("gwb"), 1, &cfg, o, false)?);
    if daemon_has_lever {
        rig.lever_daemon = Some(start_daemon(&mut rig, &prefix.name("gwe"), 4, &lever_cfg, o, true)?);
    }
    Ok(rig)
}

/// The benchmark configuration for `lb-ctl daemon`, its runtime files under `dir`; `extra`
/// is appended (top-level keys). Returns the file.
fn write_config(dir: &Path, bpffs: &Path, extra: &str) -> Result<PathBuf> {
    let backends: Vec<Ipv4Addr> = (0..BACKENDS).map(backend_addr).collect();
    let yaml = lb::config_yaml(&["in", "out"], &backends, Some(&DaemonPaths { dir, bpffs })) + extra;
    let path = dir.join("ikelb.yaml");
    fs::write(&path, yaml)?;
    Ok(path)
}

/// ikelb with `SLOT_FAST_PATH` on in `gw`: loaded with the daemon's globals and sizes,
/// filled by `Balancer` (backends usable via the sink's MAC, health up), attached natively to
/// `in` and `out`.
fn lever_gateway(gw: &NetNs, sink: &NetNs) -> Result<Balancer<AyaDataplane>> {
    let backends: Vec<Ipv4Addr> = (0..BACKENDS).map(backend_addr).collect();
    let config = lb::parse_config(&lb::config_yaml(&["in", "out"], &backends, None))?;
    let ifaces = [
        IfaceInfo {
            name: "in".into(),
            ifindex: gw.ifindex("in")?,
            mac: gw.mac("in")?,
        },
        IfaceInfo {
            name: "out".into(),
            ifindex: gw.ifindex("out")?,
            mac: gw.mac("out")?,
        },
    ];
    let sink_mac = sink.mac("s0")?;
    gw.run(|| {
        let ebpf = lb::load_like_daemon(&config, 1, true)?;
        let mut b = lb::fill_like_daemon(ebpf, &config, ifaces.to_vec(), sink_mac)?;
        let prog = lb::load_prog(b.dataplane_mut().ebpf_mut(), lb_ctl::XDP_PROGRAM)?;
        for i in ["in", "out"] {
            prog.attach(i, XdpMode::Driver)
                .with_context(|| format!("attach ikelb (lever) to {i}"))?;
        }
        Ok(b)
    })?
}

fn nft_rules(gw: &NetNs) -> Result<()> {
    let map: Vec<String> = (0..BACKENDS)
        .map(|i| format!("{i} : {}", backend_addr(i)))
        .collect();
    let rules = format!(
        "table ip ikelb_bench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {VIP} udp dport {{ 500, 4500 }} dnat to jhash ip saddr mod {BACKENDS} map {{ {} }}\n  }}\n}}\n",
        map.join(", ")
    );
    gw.exec_stdin("nft", &["-f", "-"], &rules)
        .context("loading the nft DNAT rules")
}

/// Starts `lb-ctl daemon --config cfg` in namespace `ns` (pinned to the other CPU) and waits
/// until it forwards every frame of a probe burst through variant `vi` (backends resolved and
/// health-checked up).
fn start_daemon(
    rig: &mut Rig,
    ns: &str,
    vi: usize,
    cfg: &Path,
    o: &Options,
    lever: bool,
) -> Result<Child> {
    let log_path = if lever { rig.lever_log.clone() } else { rig.log.clone() };
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        ns,
        "taskset",
        "-c",
        &o.daemon_cpu.to_string(),
    ])
    .arg(&o.lb_ctl)
    .args(["daemon", "--config"])
    .arg(cfg)
    .env("RUST_LOG", "info");
    let mut daemon = Child::spawn(&format!("lb-ctl daemon in {ns}"), cmd, log_path.clone())?;
    set_clients(rig, 1_000)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        sys::check_interrupted()?;
        if daemon.exit_status().is_some() {
            bail!("lb-ctl daemon in {ns} exited; its log:\n{}", tail(&log_path));
        }
        let before = sink_count(&rig.ebpf)?;
        let (generated, _) = generate_n(rig, vi, 4096, o.cpu)?;
        thread::sleep(Duration::from_millis(20));
        if sink_count(&rig.ebpf)? - before == generated {
            return Ok(daemon);
        }
        if Instant::now() > deadline {
            bail!(
                "ikelb did not forward within 60 s of the daemon's start in {ns}; its log:\n{}",
                tail(&log_path)
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

pub(crate) fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Map `name` of ikelb gateway `vi` (gw-b or gw-e), opened anew: from its daemon's pins
/// (instance `default` under the run's bpffs), or from the library-loaded lever's object.
fn ikelb_map(rig: &mut Rig, vi: usize, name: &str) -> Result<MapData> {
    if vi == LEVER {
        if let Some(b) = rig._lever.as_mut() {
            let m = b.dataplane_mut().ebpf_mut().map(name).with_context(|| name.to_owned())?;
            let d = match m {
                Map::Array(d) | Map::LruHashMap(d) | Map::PerCpuArray(d) => d,
                _ => bail!("{name}: unexpected map type"),
            };
            let fd = d.fd().as_fd().try_clone_to_owned()?;
            return MapData::from_fd(fd).with_context(|| format!("reopening {name}"));
        }
    }
    let bpffs = if vi == LEVER { &rig.lever_bpffs } else { &rig.bpffs };
    let path = Pins::new(bpffs.path(), lb_ctl::paths::INSTANCE).map(name);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

/// Establishes clients 0 … `clients` − 1 in ikelb gateway `vi` (module docs): entries
/// toward each client's ring backend, with the generator's MAC toward that gateway and port
/// 0 (`in`, the clients' interface).
fn establish(rig: &mut Rig, vi: usize, clients: u32) -> Result<()> {
    let services: Array<MapData, Service> =
        Array::try_from(Map::Array(ikelb_map(rig, vi, "SERVICES")?))?;
    let svc = services.get(&0, 0)?;
    let rings: Array<MapData, u32> = Array::try_from(Map::Array(ikelb_map(rig, vi, "RINGS")?))?;
    let ring: Vec<u32> = (svc.ring_base..svc.ring_base + MAGLEV_M)
        .map(|i| rings.get(&i, 0))
        .collect::<Result<_, _>>()?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&rig.paths[vi].1.frame[6..12]);
    let mut persist: HashMap<MapData, PersistKeyV4, PersistValue> =
        HashMap::try_from(Map::LruHashMap(ikelb_map(rig, vi, "PERSIST_V4")?))?;
    lb::establish(&mut persist, svc.id, &ring, CLIENT_BASE, clients, mac, 0)
}

/// `EVENTS` of ikelb gateway `vi`, summed over the CPUs (`None` for the other variants).
fn ikelb_events(rig: &mut Rig, vi: usize) -> Result<Option<[u64; event::COUNT as usize]>> {
    if vi != IKELB && vi != LEVER {
        return Ok(None);
    }
    let m: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(ikelb_map(rig, vi, "EVENTS")?))?;
    let mut out = [0u64; event::COUNT as usize];
    for (i, o) in out.iter_mut().enumerate() {
        *o = m.get(&(i as u32), 0)?.iter().sum();
    }
    Ok(Some(out))
}

fn set_clients(rig: &mut Rig, clients: u32) -> Result<()> {
    lb::set_cfg(
        &mut rig.ebpf,
        BenchCfg {
            mode: MODE_FORWARD,
            clients,
            base: CLIENT_BASE,
            _pad: 0,
        },
    )
}

pub(crate) fn sink_count(ebpf: &Ebpf) -> Result<u64> {
    let m: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(ebpf.map("BENCH_SINK").context("BENCH_SINK")?)?;
    Ok(m.get(&0, 0)?.iter().sum())
}

/// Generates through variant `vi` for `dur`; (frames generated, seconds).
fn generate(rig: &mut Rig, vi: usize, dur: Duration, cpu: usize) -> Result<(u64, f64)> {
    lb::set_template(&mut rig.ebpf, rig.paths[vi].1.block)?;
    run_calls(rig, vi, cpu, CHUNK, |elapsed, _| elapsed < dur)
}

/// Generates `n` frames (one call) through variant `vi`.
fn generate_n(rig: &mut Rig, vi: usize, n: u32, cpu: usize) -> Result<(u64, f64)> {
    lb::set_template(&mut rig.ebpf, rig.paths[vi].1.block)?;
    run_calls(rig, vi, cpu, n, |_, frames| frames == 0)
}

fn run_calls(
    rig: &Rig,
    vi: usize,
    cpu: usize,
    chunk: u32,
    go_on: impl Fn(Duration, u64) -> bool + Send + Sync,
) -> Result<(u64, f64)> {
    let prog: &Xdp = lb::prog(&rig.ebpf, "bench_stamp")?;
    let (ifindex, ref t) = rig.paths[vi];
    live_frames(&rig.gen, prog, ifindex, &t.frame, cpu, chunk, go_on)
}

/// Generator calls (in `gen`, pinned to `cpu`) of `chunk` live frames of `frame` through the
/// stamping program `prog` on `ifindex`, while `go_on(elapsed, frames so far)`; (frames,
/// seconds). Shared by the IPv4 and IPv6 loops.
pub(crate) fn live_frames(
    gen: &NetNs,
    prog: &Xdp,
    ifindex: u32,
    frame: &[u8],
    cpu: usize,
    chunk: u32,
    go_on: impl Fn(Duration, u64) -> bool + Send + Sync,
) -> Result<(u64, f64)> {
    let md = frame::xdp_md(ifindex, frame.len());
    gen.run(|| {
        sys::pin_to_cpu(cpu)?;
        let start = Instant::now();
        let mut generated = 0u64;
        while go_on(start.elapsed(), generated) {
            sys::check_interrupted()?;
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&md),
                repeat: chunk,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..TestRunOptions::new()
            })
            .context("test_run (live frames) of the generator")?;
            generated += u64::from(chunk);
        }
        Ok((generated, start.elapsed().as_secs_f64()))
    })?
}
