//! The closed loop of `closed_loop` over IPv6, after it (its rig torn down first, so the
//! IPv4 loop runs exactly as without this one):
//!
//! ```text
//!            ┌ to6a ══ in [gw6a: bench_fwd6, MAC swap + redirect] out ══ s0 [sink6a] ┐ XDP_DROP +
//!  [gen6] ───┼ to6b ══ in [gw6b: lb-ctl daemon, slot fast path off] out ══ s0 [sink6b] ┤ per-CPU
//!  stamp6    └ to6c ══ in [gw6c: lb-ctl daemon, slot fast path on] out ══ s0 [sink6c] ┘ count
//! ```
//!
//! The generator is `bench_stamp6` with `BPF_F_TEST_XDP_LIVE_FRAMES` (batch 64): ESP in UDP
//! to 4500 of the IPv6 VIP, the IPv4 loop's 18 payload bytes behind the IPv6 header (80-byte
//! frames, 84 on the wire). Both daemons run the IPv6 benchmark configuration
//! (`lb6::config_yaml6`: the IPv6 VIP, 10 IPv6 backends held by the sinks, which answer
//! neighbour discovery and the daemons' ICMPv6 echoes through the kernel; `bench_sink6`
//! counts and drops only UDP to 500/4500). Clients are established in both ikelb gateways'
//! `PERSIST_V6` before each size, as over IPv4 (`lb6::establish6`). The variants alternate
//! as over IPv4 (A B C, A B C, …), the same sizes, seconds and repeats.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, DevMap, HashMap, Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{event, PersistKeyV6, PersistValue, Service};
use lb_ctl::{pin::Pins, EBPF_OBJECT};

use crate::{
    closed_loop::{self, Options, Sample, CHUNK, CLIENT_BASE, SIZES},
    control::MAGLEV_M,
    frame::{self, BenchCfg, Template, ESP_IN_UDP, MODE_FORWARD},
    lb::{self, DaemonPaths, BACKENDS},
    lb6::{self, backend_addr6, VIP6},
    progcost::HIT6,
    sys::{self, BpfFs, Child, NetNs, RunPrefix, TempDir, Veth},
};

/// The compared paths, in the order they alternate (keys of the JSON's `closed_loop_v6`).
pub const VARIANTS6: [(&str, &str); 3] = [
    (
        "trivial_v6",
        "MAC swap + redirect of IPv6 frames (XDP, bench_fwd6)",
    ),
    (
        "ikelb_v6",
        "ikelb (lb-ctl daemon), IPv6 VIP, slot fast path off",
    ),
    (
        "lever_v6",
        "ikelb (lb-ctl daemon), IPv6 VIP, slot fast path on",
    ),
];
const IKELB: usize = 1;
const LEVER: usize = 2;
const LETTERS: [char; 3] = ['a', 'b', 'c'];

/// Torn down in field order: the daemons, the programs, the links, the namespaces, the
/// bpffs mounts and the run directories.
struct Rig {
    daemons: Vec<Child>,
    ebpf: Ebpf,
    _veths: Vec<Veth>,
    gen: NetNs,
    _gws: Vec<NetNs>,
    _sinks: Vec<NetNs>,
    /// The bpffs of the daemons of gw6b and gw6c, by variant index.
    bpffs: Vec<Option<BpfFs>>,
    _dirs: Vec<TempDir>,
    /// Per variant: the generator's egress ifindex and the frame template.
    paths: Vec<(u32, Template)>,
}

pub fn run(prefix: &RunPrefix, o: &Options) -> Result<closed_loop::Results> {
    let mut rig = build(prefix, o)?;
    let mut samples = Vec::new();
    for (size, clients) in SIZES {
        set_clients(&mut rig, clients)?;
        for vi in [IKELB, LEVER] {
            establish(&rig, vi, clients)?;
        }
        eprintln!(
            "  closed loop IPv6 {size:>3}: {clients} clients established in both ikelb gateways"
        );
        for repeat in 0..o.repeats {
            for (vi, (variant, _)) in VARIANTS6.iter().enumerate() {
                let (min_frames, min_time) = if repeat == 0 {
                    (2 * u64::from(clients), Duration::from_secs(1))
                } else {
                    (0, Duration::from_millis(500))
                };
                run_calls(&mut rig, vi, o.cpu, CHUNK, |elapsed, frames| {
                    elapsed < min_time || frames < min_frames
                })?;
                thread::sleep(Duration::from_millis(20));
                let before = closed_loop::sink_count(&rig.ebpf)?;
                let ev_before = ikelb_events(&rig, vi)?;
                let measure = o.measure;
                let (generated, secs) =
                    run_calls(&mut rig, vi, o.cpu, CHUNK, |elapsed, _| elapsed < measure)?;
                thread::sleep(Duration::from_millis(50));
                let received = closed_loop::sink_count(&rig.ebpf)? - before;
                let ev_after = ikelb_events(&rig, vi)?;
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
                    "  closed loop IPv6 {size:>3} {variant:10} #{repeat}: {mpps:6.3} Mpps \
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
    for (d, (v, _)) in rig.daemons.iter_mut().zip(&VARIANTS6[1..]) {
        if d.exit_status().is_some() {
            bail!("the {v} daemon exited during the run ({})", d.name());
        }
    }
    Ok(closed_loop::Results {
        samples,
        lever_loaded_by: "lb-ctl daemon (slot_fast_path: true)".into(),
        opts_cpu: o.cpu,
        measure_secs: o.measure.as_secs_f64(),
        repeats: o.repeats,
    })
}

/// A namespace with IPv6 on (`NetNs::new` turns it off) for the links made in it from now
/// on, without duplicate address detection or router solicitations.
fn ns6(name: String) -> Result<NetNs> {
    let ns = NetNs::new(name)?;
    ns.enable_ipv6(&[])?;
    Ok(ns)
}

fn build(prefix: &RunPrefix, o: &Options) -> Result<Rig> {
    let gen = NetNs::new(prefix.name("gen6"))?;
    let mut gws = Vec::new();
    let mut sinks = Vec::new();
    let mut veths = Vec::new();
    for l in LETTERS {
        let gw = ns6(prefix.name(&format!("gw6{l}")))?;
        let sink = ns6(prefix.name(&format!("sink6{l}")))?;
        veths.push(Veth::new((&gen, &format!("to6{l}")), (&gw, "in"))?);
        veths.push(Veth::new((&gw, "out"), (&sink, "s0"))?);
        gw.ip_batch(
            "addr add 2001:db8:e::1/64 dev in nodad\naddr add 2001:db8::1/64 dev out nodad\n",
        )?;
        gw.sysctl("net/ipv6/conf/all/forwarding", "1")?;
        let mut cmds = String::new();
        for i in 0..BACKENDS {
            cmds.push_str(&format!("addr add {}/64 dev s0 nodad\n", backend_addr6(i)));
        }
        sink.ip_batch(&cmds)?;
        gws.push(gw);
        sinks.push(sink);
    }

    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .context("loading the XDP object (bench programs)")?;
    for p in ["bench_stamp6", "bench_sink6", "bench_fwd6"] {
        lb::load_prog(&mut ebpf, p)?;
    }
    for sink in &sinks {
        let prog: &mut Xdp = ebpf
            .program_mut("bench_sink6")
            .context("bench_sink6")?
            .try_into()?;
        sink.run(|| {
            prog.attach("s0", XdpMode::Driver)
                .context("attach bench_sink6 (native)")
        })??;
    }
    {
        let out = gws[0].ifindex("out")?;
        let mut tx: DevMap<&mut MapData> =
            DevMap::try_from(ebpf.map_mut("BENCH_TX").context("BENCH_TX")?)?;
        gws[0].run(|| tx.set(0, out, None, 0).context("BENCH_TX[0] = gw6a out"))??;
        let prog: &mut Xdp = ebpf
            .program_mut("bench_fwd6")
            .context("bench_fwd6")?
            .try_into()?;
        gws[0].run(|| {
            prog.attach("in", XdpMode::Driver)
                .context("attach bench_fwd6")
        })??;
    }
    let mut paths = Vec::new();
    for (i, l) in LETTERS.iter().enumerate() {
        let ifname = format!("to6{l}");
        let t = frame::template6(gws[i].mac("in")?, gen.mac(&ifname)?, HIT6, VIP6, ESP_IN_UDP);
        paths.push((gen.ifindex(&ifname)?, t));
    }
    let mut rig = Rig {
        daemons: Vec::new(),
        ebpf,
        _veths: veths,
        gen,
        _gws: gws,
        _sinks: sinks,
        bpffs: VARIANTS6.iter().map(|_| None).collect(),
        _dirs: Vec::new(),
        paths,
    };
    for (vi, fast) in [(IKELB, false), (LEVER, true)] {
        let dir = TempDir::named(prefix, &format!("loop6{}", LETTERS[vi]))?;
        let bpffs = BpfFs::mount_in(&dir)?;
        let yaml = lb6::config_yaml6(
            &["in", "out"],
            Some(&DaemonPaths {
                dir: dir.path(),
                bpffs: bpffs.path(),
            }),
            &format!("slot_fast_path: {fast}\n"),
        );
        let cfg = dir.path().join("ikelb.yaml");
        fs::write(&cfg, yaml)?;
        let log = dir.path().join("daemon.log");
        rig._dirs.push(dir);
        rig.bpffs[vi] = Some(bpffs);
        let ns = prefix.name(&format!("gw6{}", LETTERS[vi]));
        let d = start_daemon(&mut rig, &ns, vi, &cfg, &log, o)?;
        rig.daemons.push(d);
    }
    Ok(rig)
}

/// `lb-ctl daemon --config cfg` in namespace `ns`, pinned to the daemons' CPU; returns once
/// it forwards every frame of a probe burst through variant `vi`.
fn start_daemon(
    rig: &mut Rig,
    ns: &str,
    vi: usize,
    cfg: &Path,
    log_path: &Path,
    o: &Options,
) -> Result<Child> {
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
    let mut daemon = Child::spawn(&format!("lb-ctl daemon in {ns}"), cmd, log_path.into())?;
    set_clients(rig, 1_000)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        sys::check_interrupted()?;
        if daemon.exit_status().is_some() {
            bail!(
                "lb-ctl daemon in {ns} exited; its log:\n{}",
                closed_loop::tail(log_path)
            );
        }
        let before = closed_loop::sink_count(&rig.ebpf)?;
        let (generated, _) = run_calls(rig, vi, o.cpu, 4096, |_, frames| frames == 0)?;
        thread::sleep(Duration::from_millis(20));
        if closed_loop::sink_count(&rig.ebpf)? - before == generated {
            return Ok(daemon);
        }
        if Instant::now() > deadline {
            bail!(
                "ikelb (IPv6) did not forward within 60 s of the daemon's start in {ns}; its log:\n{}",
                closed_loop::tail(log_path)
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Map `name` pinned by the daemon of gateway `vi`.
fn ikelb_map(rig: &Rig, vi: usize, name: &str) -> Result<MapData> {
    let bpffs = rig.bpffs[vi].as_ref().context("not an ikelb gateway")?;
    let path = Pins::new(bpffs.path(), lb_ctl::paths::INSTANCE).map(name);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

/// Clients `HIT6` + (`CLIENT_BASE` … + `clients` − 1) established in gateway `vi`'s
/// `PERSIST_V6`: each client's ring backend, the generator's MAC, port 0 (`in`).
fn establish(rig: &Rig, vi: usize, clients: u32) -> Result<()> {
    let services: Array<MapData, Service> =
        Array::try_from(Map::Array(ikelb_map(rig, vi, "SERVICES")?))?;
    let svc = services.get(&0, 0)?;
    let rings: Array<MapData, u32> = Array::try_from(Map::Array(ikelb_map(rig, vi, "RINGS")?))?;
    let ring: Vec<u32> = (svc.ring_base..svc.ring_base + MAGLEV_M)
        .map(|i| rings.get(&i, 0))
        .collect::<Result<_, _>>()?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&rig.paths[vi].1.frame[6..12]);
    let mut persist: HashMap<MapData, PersistKeyV6, PersistValue> =
        HashMap::try_from(Map::LruHashMap(ikelb_map(rig, vi, "PERSIST_V6")?))?;
    lb6::establish6(
        &mut persist,
        svc.id,
        &ring,
        HIT6,
        CLIENT_BASE,
        clients,
        mac,
        0,
    )
}

/// `EVENTS` of ikelb gateway `vi`, summed over the CPUs (`None` for the trivial forwarder).
fn ikelb_events(rig: &Rig, vi: usize) -> Result<Option<[u64; event::COUNT as usize]>> {
    if rig.bpffs[vi].is_none() {
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

/// Generator calls of `chunk` frames through variant `vi` while `go_on`; (frames, seconds).
fn run_calls(
    rig: &mut Rig,
    vi: usize,
    cpu: usize,
    chunk: u32,
    go_on: impl Fn(Duration, u64) -> bool + Send + Sync,
) -> Result<(u64, f64)> {
    lb6::set_template_of(&mut rig.ebpf, &rig.paths[vi].1)?;
    let prog: &Xdp = lb::prog(&rig.ebpf, "bench_stamp6")?;
    let (ifindex, ref t) = rig.paths[vi];
    closed_loop::live_frames(&rig.gen, prog, ifindex, &t.frame, cpu, chunk, go_on)
}
