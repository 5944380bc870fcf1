//! The loop's namespaces, links, programs and daemons (module docs of `closed_loop`), built
//! from a family's [`LoopFamily::VARIANTS`], and the generator that drives them.

use std::{
    fs,
    marker::PhantomData,
    os::fd::AsFd as _,
    path::{Path as FsPath, PathBuf},
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
use lb_common::{event, PersistValue, Service};
use lb_ctl::{
    dataplane::AyaDataplane,
    pin::Pins,
    state::{Balancer, IfaceInfo},
    EBPF_OBJECT,
};

use super::{LoopFamily, Options, Path};
use crate::{
    control::MAGLEV_M,
    family::Family,
    frame::{self, BenchCfg, Template, ESP_IN_UDP, MODE_FORWARD},
    lb::{self, DaemonPaths, BACKENDS},
    sys::{self, BpfFs, Child, NetNs, RunPrefix, Sysctl, TempDir, Veth},
};

/// Frames per test_run call (≈ 20–100 ms); the loop stops at the first call past the deadline.
pub const CHUNK: u32 = 1 << 16;
const BATCH: u32 = 64;

/// Conntrack entries the nft gateway needs at 1M clients (the per-namespace value is
/// read-only: the global one is raised for the run and restored).
const CONNTRACK_MAX: &str = "2097152";
const CONNTRACK_BUCKETS: &str = "1048576";

/// Everything the loop is made of, torn down in field order: the daemons first, then the
/// programs, the links, the namespaces, the bpffs mounts, the run directories and the global
/// sysctls.
pub struct Rig<F> {
    /// Per variant: the `lb-ctl daemon` of an ikelb gateway.
    daemons: Vec<Option<Child>>,
    /// The lever's ikelb loaded through the library, when this lb-ctl has no
    /// `slot_fast_path` key (maps and attachments live as long as the `Balancer`): its
    /// variant and the `Balancer`.
    library: Option<(usize, Balancer<AyaDataplane>)>,
    ebpf: Ebpf,
    _veths: Vec<Veth>,
    gen: NetNs,
    gws: Vec<NetNs>,
    _sinks: Vec<NetNs>,
    /// Per variant: the bpffs mount an ikelb gateway's daemon pins its maps under.
    bpffs: Vec<Option<BpfFs>>,
    _dirs: Vec<TempDir>,
    _conntrack: Option<(Sysctl, Sysctl)>,
    /// Per variant: the generator's egress ifindex and the frame template.
    paths: Vec<(u32, Template)>,
    family: PhantomData<F>,
}

/// Gateway `i`'s letter (gw-a, gw-b, …).
fn letter(i: usize) -> char {
    char::from(b'a' + i as u8)
}

impl<F: LoopFamily> Rig<F> {
    pub fn build(prefix: &RunPrefix, o: &Options) -> Result<Self> {
        let variants = F::VARIANTS;
        let conntrack = match variants.iter().any(|v| v.path == Path::Nft) {
            true => Some((
                Sysctl::set("net/netfilter/nf_conntrack_max", CONNTRACK_MAX)?,
                Sysctl::set("net/netfilter/nf_conntrack_buckets", CONNTRACK_BUCKETS)?,
            )),
            false => None,
        };
        let sfx = F::SUFFIX;
        let gen = F::namespace(prefix.name(&format!("gen{sfx}")))?;
        let mut gws = Vec::new();
        let mut sinks = Vec::new();
        let mut veths = Vec::new();
        for (i, v) in variants.iter().enumerate() {
            let l = letter(i);
            let gw = F::namespace(prefix.name(&format!("gw{l}{sfx}")))?;
            let sink = F::namespace(prefix.name(&format!("sink{l}{sfx}")))?;
            veths.push(Veth::new((&gen, &format!("to_{l}")), (&gw, "in"))?);
            veths.push(Veth::new((&gw, "out"), (&sink, "s0"))?);
            let mut cmds = F::GATEWAY.to_owned();
            if v.path == Path::Kernel {
                cmds.push_str(&format!("route add {} via {}\n", F::VIP, F::backend(0)));
            }
            gw.ip_batch(&cmds)?;
            for (key, value) in F::FORWARDING {
                gw.sysctl(key, value)?;
            }
            let mut cmds = String::new();
            for i in 0..BACKENDS {
                cmds.push_str(&format!("addr add {}{}\n", F::backend(i), F::SINK_ADDR));
            }
            sink.ip_batch(&cmds)?;
            if matches!(v.path, Path::Nft | Path::Kernel) {
                // Kernel paths: NAPI on the gateway's ingress veth (GRO) so XDP_TX frames from
                // the generator are accepted (a veth drops XDP frames unless the receiver has
                // XDP or GRO).
                gw.exec("ethtool", &["-K", "in", "gro", "on"])?;
            }
            if v.path == Path::Nft {
                nft_rules::<F>(&gw)?;
            }
            gws.push(gw);
            sinks.push(sink);
        }

        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .context("loading the XDP object (bench programs)")?;
        for p in [F::STAMP, F::SINK, F::FWD] {
            lb::load_prog(&mut ebpf, p)?;
        }
        for sink in &sinks {
            let prog: &mut Xdp = ebpf.program_mut(F::SINK).context(F::SINK)?.try_into()?;
            sink.run(|| {
                prog.attach(c"s0", XdpMode::Driver)
                    .with_context(|| format!("attach {} (native)", F::SINK))
            })??;
        }
        let trivial = variants
            .iter()
            .position(|v| v.path == Path::Trivial)
            .context("no trivial forwarder")?;
        {
            let gw = &gws[trivial];
            let out = gw.ifindex("out")?;
            let mut tx: DevMap<&mut MapData> =
                DevMap::try_from(ebpf.map_mut("BENCH_TX").context("BENCH_TX")?)?;
            gw.run(|| {
                tx.set(0, out, None, 0)
                    .context("BENCH_TX[0] = the trivial gateway's out")
            })??;
            let prog: &mut Xdp = ebpf.program_mut(F::FWD).context(F::FWD)?.try_into()?;
            gw.run(|| {
                prog.attach(c"in", XdpMode::Driver)
                    .with_context(|| format!("attach {}", F::FWD))
            })??;
        }

        let mut paths = Vec::new();
        for (i, gw) in gws.iter().enumerate() {
            let ifname = format!("to_{}", letter(i));
            let t = frame::template(
                gw.mac("in")?,
                gen.mac(&ifname)?,
                F::ESTABLISHED.prefix,
                F::VIP,
                ESP_IN_UDP,
            );
            paths.push((gen.ifindex(&ifname)?, t));
        }

        // The ikelb gateways' run directories and configurations.
        let mut dirs = Vec::new();
        let mut bpffs: Vec<Option<BpfFs>> = variants.iter().map(|_| None).collect();
        let mut configs = Vec::new();
        for (vi, v) in variants.iter().enumerate() {
            let Path::Ikelb { fast_path } = v.path else {
                continue;
            };
            let dir = TempDir::named(prefix, &format!("loop{}{sfx}", letter(vi)))?;
            let fs = BpfFs::mount_in(&dir)?;
            // With the key, both daemons say explicitly which way they run.
            let extra = format!("slot_fast_path: {fast_path}\n");
            configs.push((vi, write_config::<F>(dir.path(), fs.path(), &extra)?));
            bpffs[vi] = Some(fs);
            dirs.push(dir);
        }
        let lever = variants
            .iter()
            .position(|v| v.lever())
            .context("no lever")?;
        let lever_cfg = &configs
            .iter()
            .find(|(vi, _)| *vi == lever)
            .context("lever")?
            .1;
        let library = if accepts(o, &gws[lever], lever_cfg) {
            None
        } else {
            eprintln!(
                "  this lb-ctl has no `slot_fast_path` key: gw-{} loads ikelb with the lever \
                 through the lb_ctl library instead of the daemon",
                letter(lever)
            );
            configs.retain(|(vi, _)| *vi != lever);
            for (vi, cfg) in &mut configs {
                let fs = bpffs[*vi].as_ref().context("bpffs")?;
                *cfg = write_config::<F>(cfg.parent().context("run dir")?, fs.path(), "")?;
            }
            Some((lever, lever_gateway::<F>(&gws[lever], &sinks[lever])?))
        };
        let mut rig = Self {
            daemons: variants.iter().map(|_| None).collect(),
            library,
            ebpf,
            _veths: veths,
            gen,
            gws,
            _sinks: sinks,
            bpffs,
            _dirs: dirs,
            _conntrack: conntrack,
            paths,
            family: PhantomData,
        };
        for (vi, cfg) in configs {
            rig.daemons[vi] = Some(rig.start_daemon(vi, &cfg, o)?);
        }
        Ok(rig)
    }

    /// The variants that are ikelb gateways.
    pub fn ikelb(&self) -> Vec<usize> {
        (0..F::VARIANTS.len())
            .filter(|&vi| matches!(F::VARIANTS[vi].path, Path::Ikelb { .. }))
            .collect()
    }

    /// How the lever's ikelb was set up.
    pub fn lever_loaded_by(&self) -> &'static str {
        match self.library {
            Some(_) => "lb_ctl library (this lb-ctl has no slot_fast_path key)",
            None => "lb-ctl daemon (slot_fast_path: true)",
        }
    }

    /// An error if a daemon exited during the run.
    pub fn check_daemons(&mut self) -> Result<()> {
        for (vi, d) in self.daemons.iter_mut().enumerate() {
            let Some(d) = d else { continue };
            if d.exit_status().is_some() {
                bail!(
                    "the {} daemon exited during the run ({}); its log:\n{}",
                    F::VARIANTS[vi].key,
                    d.name(),
                    d.output_tail(20)
                );
            }
        }
        Ok(())
    }

    /// Starts `lb-ctl daemon --config cfg` in gateway `vi`'s namespace (pinned to the other
    /// CPU) and waits until it forwards every frame of a probe burst (backends resolved and
    /// health-checked up).
    fn start_daemon(&mut self, vi: usize, cfg: &FsPath, o: &Options) -> Result<Child> {
        let ns = self.gws[vi].name().to_owned();
        let log = cfg.with_file_name("daemon.log");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &ns,
            "taskset",
            "-c",
            &o.daemon_cpu.to_string(),
        ])
        .arg(&o.lb_ctl)
        .args(["daemon", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info");
        let mut daemon = Child::spawn(&format!("lb-ctl daemon in {ns}"), cmd, log)?;
        self.set_clients(1_000)?;
        let what = format!("forward {} frames", F::NAME);
        let (within, every) = (Duration::from_secs(60), Duration::from_millis(500));
        sys::wait_ready(&mut daemon, &what, within, every, || {
            let before = self.sink_count()?;
            let (generated, _) = self.generate(vi, o.cpu, 4096, |_, frames| frames == 0)?;
            thread::sleep(Duration::from_millis(20));
            Ok(self.sink_count()? - before == generated)
        })?;
        Ok(daemon)
    }

    /// Map `name` of ikelb gateway `vi`, opened anew: from its daemon's pins (instance
    /// `default` under the gateway's bpffs), or from the library-loaded lever's object.
    fn ikelb_map(&mut self, vi: usize, name: &str) -> Result<MapData> {
        if let Some((_, b)) = self.library.as_mut().filter(|(l, _)| *l == vi) {
            let m = b
                .dataplane_mut()
                .ebpf_mut()
                .map(name)
                .with_context(|| name.to_owned())?;
            let d = match m {
                Map::Array(d) | Map::LruHashMap(d) | Map::PerCpuArray(d) => d,
                _ => bail!("{name}: unexpected map type"),
            };
            let fd = d.fd().as_fd().try_clone_to_owned()?;
            return MapData::from_fd(fd).with_context(|| format!("reopening {name}"));
        }
        let bpffs = self.bpffs[vi].as_ref().context("not an ikelb gateway")?;
        let path = Pins::new(bpffs.path(), lb_ctl::paths::INSTANCE).map(name);
        MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
    }

    /// Establishes `clients` clients of `Family::ESTABLISHED` in ikelb gateway `vi` (module
    /// docs): entries toward each client's ring backend, with the generator's MAC toward that
    /// gateway and port 0 (`in`, the clients' interface).
    pub fn establish(&mut self, vi: usize, clients: u32) -> Result<()> {
        let services: Array<MapData, Service> =
            Array::try_from(Map::Array(self.ikelb_map(vi, "SERVICES")?))?;
        let svc = services.get(&0, 0)?;
        let rings: Array<MapData, u32> = Array::try_from(Map::Array(self.ikelb_map(vi, "RINGS")?))?;
        let ring: Vec<u32> = (svc.ring_base..svc.ring_base + MAGLEV_M)
            .map(|i| rings.get(&i, 0))
            .collect::<Result<_, _>>()?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.paths[vi].1.frame[6..12]);
        let mut persist: HashMap<MapData, F::Key, PersistValue> =
            HashMap::try_from(Map::LruHashMap(self.ikelb_map(vi, F::PERSIST)?))?;
        lb::establish(&mut persist, svc.id, &ring, F::ESTABLISHED, clients, mac, 0)
    }

    /// `EVENTS` of ikelb gateway `vi`, summed over the CPUs (`None` for the other variants).
    pub fn events(&mut self, vi: usize) -> Result<Option<[u64; event::COUNT as usize]>> {
        if !matches!(F::VARIANTS[vi].path, Path::Ikelb { .. }) {
            return Ok(None);
        }
        let m: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(self.ikelb_map(vi, "EVENTS")?))?;
        let mut out = [0u64; event::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = m.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(Some(out))
    }

    /// The generator's client count (its clients: `Family::ESTABLISHED`).
    pub fn set_clients(&mut self, clients: u32) -> Result<()> {
        lb::set_cfg(
            &mut self.ebpf,
            BenchCfg {
                mode: MODE_FORWARD,
                clients,
                base: F::ESTABLISHED.base,
                _pad: 0,
            },
        )
    }

    /// Frames the sinks counted, all CPUs.
    pub fn sink_count(&self) -> Result<u64> {
        let m: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("BENCH_SINK").context("BENCH_SINK")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }

    /// Generator calls (in `gen`, pinned to `cpu`) of `chunk` live frames through variant
    /// `vi`'s path while `go_on(elapsed, frames so far)`; (frames, seconds).
    pub fn generate(
        &mut self,
        vi: usize,
        cpu: usize,
        chunk: u32,
        go_on: impl Fn(Duration, u64) -> bool + Send + Sync,
    ) -> Result<(u64, f64)> {
        F::set_template(&mut self.ebpf, &self.paths[vi].1.block)?;
        let prog: &Xdp = lb::prog(&self.ebpf, F::STAMP)?;
        let (ifindex, ref t) = self.paths[vi];
        let frame = &t.frame[..];
        let md = frame::xdp_md(ifindex, frame.len());
        self.gen.run(|| {
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
}

/// The benchmark configuration of family `F` for `lb-ctl daemon`, its runtime files under
/// `dir`; `extra` is appended (top-level keys). Returns the file.
fn write_config<F: Family>(dir: &FsPath, bpffs: &FsPath, extra: &str) -> Result<PathBuf> {
    let yaml = lb::family_yaml::<F>(&["in", "out"], Some(&DaemonPaths { dir, bpffs }), extra);
    let path = dir.join("ikelb.yaml");
    fs::write(&path, yaml)?;
    Ok(path)
}

/// Whether `o.lb_ctl` accepts `cfg` (`daemon --check`) in `gw`.
fn accepts(o: &Options, gw: &NetNs, cfg: &FsPath) -> bool {
    Command::new("ip")
        .args(["netns", "exec", gw.name()])
        .arg(&o.lb_ctl)
        .args(["daemon", "--check", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// ikelb with `SLOT_FAST_PATH` on in `gw`: loaded with the daemon's globals and sizes,
/// filled by `Balancer` (backends usable via the sink's MAC, health up), attached natively to
/// `in` and `out`.
fn lever_gateway<F: Family>(gw: &NetNs, sink: &NetNs) -> Result<Balancer<AyaDataplane>> {
    let config = lb::family_config::<F>(&["in", "out"])?;
    let mut ifaces = Vec::new();
    for name in ["in", "out"] {
        ifaces.push(IfaceInfo {
            name: name.into(),
            ifindex: gw.ifindex(name)?,
            mac: gw.mac(name)?,
        });
    }
    let sink_mac = sink.mac("s0")?;
    gw.run(|| {
        let ebpf = lb::load_like_daemon(&config, 1, true)?;
        let mut b = lb::fill_like_daemon(ebpf, &config, ifaces, sink_mac)?;
        let prog = lb::load_prog(b.dataplane_mut().ebpf_mut(), lb_ctl::XDP_PROGRAM)?;
        for i in [c"in", c"out"] {
            prog.attach(i, XdpMode::Driver)
                .with_context(|| format!("attach ikelb (lever) to {}", i.to_string_lossy()))?;
        }
        Ok(b)
    })?
}

/// DNAT of UDP 500/4500 to the VIP by `jhash saddr mod BACKENDS` over the backends.
fn nft_rules<F: LoopFamily>(gw: &NetNs) -> Result<()> {
    let map: Vec<String> = (0..BACKENDS)
        .map(|i| format!("{i} : {}", F::backend(i)))
        .collect();
    let (nf, vip) = (F::NFT, F::VIP);
    let rules = format!(
        "table {nf} ikelb_bench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         {nf} daddr {vip} udp dport {{ 500, 4500 }} dnat to jhash {nf} saddr mod {BACKENDS} map {{ {} }}\n  }}\n}}\n",
        map.join(", ")
    );
    gw.exec_stdin("nft", &["-f", "-"], &rules)
        .context("loading the nft DNAT rules")
}
