//! Program cost with `BPF_PROG_TEST_RUN` and the stamp method (see
//! `lb-ebpf/src/bench/mod.rs`), and the memory of the persistence map.
//!
//! The object is loaded with the daemon's globals and map sizes and filled by `lb_ctl`'s own
//! `Balancer` (one virtual server, 10 backends, Maglev M = 65537, persistence capacity at its
//! default). Frames arrive on a real veth (`ctx_in.ingress_ifindex`) of a namespace made for
//! this, so ikelb takes its two-arm path exactly as in production: in on `ext`, out by devmap
//! redirect on `int`. The measuring thread is pinned to one CPU. Each trial runs the
//! stamp-only program and then stamp + ikelb with the same `repeat`; the reported cost is
//! median(stamp + ikelb) − median(stamp). Every run's counter deltas are checked: all
//! `repeat` frames must have taken the intended branch.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use lb_common::{counter, PersistKeyV4, PersistValue, RING_F_CHANGED};
use lb_ctl::{
    dataplane::{AyaDataplane, Dataplane},
    state::{Balancer, IfaceInfo},
};

use crate::{
    frame::{
        self, client_wire, BenchCfg, Template, ESP_IN_UDP, FRAME_LEN, IKE, MODE_FORWARD,
        MODE_REVERSE,
    },
    lb::{self, backend_addr, BACKENDS, VIP},
    stats::median,
    sys::{self, NetNs, Prefix},
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// First client address of the hit-path sweeps (100.64.0.0, CGNAT space) and of the miss
/// sweep (32.0.0.0: 2^24 addresses, none a VIP or backend).
const HIT_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
const MISS_BASE: u32 = u32::from_be_bytes([32, 0, 0, 0]);
/// Key space of the miss/insert path: 16× the default persistence capacity.
const MISS_CLIENTS: u32 = 1 << 24;
/// Not a VIP, not a backend: the pass-through row's destination.
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// MAC of every backend's next hop (never used to send: test_run does not transmit).
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
/// The clients' previous hop.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];

/// Frames per test_run call.
const REPEAT: u32 = 1 << 20;

/// One measured row.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: &'static str,
    pub what: String,
    pub clients: u32,
    /// Median ns/frame of the stamp-only program and of stamp + ikelb.
    pub stamp_ns: f64,
    pub lb_ns: f64,
    /// lb_ns − stamp_ns.
    pub cost_ns: f64,
    /// Spread of the trials of stamp + ikelb (max − min), ns.
    pub spread_ns: f64,
    /// Fraction of a sample of the clients present in PERSIST_V4 after the trials (hit rows).
    pub resident: Option<f64>,
}

pub struct Memory {
    /// PERSIST_V4 at its configured capacity: entries and the map fd's `memlock`.
    pub persist_entries: u32,
    pub persist_memlock: u64,
    /// Every map of the object as the daemon sizes it, bench maps included (a few KiB).
    pub all_maps_memlock: u64,
}

pub struct ProgCost {
    pub rows: Vec<Row>,
    pub attribution: Vec<Attribution>,
    pub memory: Memory,
    pub trials: usize,
    pub repeat: u32,
    pub cpu: usize,
}

pub fn run(prefix: &Prefix, cpu: usize, trials: usize) -> Result<ProgCost> {
    let ns = NetNs::new(prefix.name("prog"))?;
    sys::veth((&ns, "ext"), (&ns, "int"))?;
    let ext_mac = ns.mac("ext")?;
    let int_mac = ns.mac("int")?;
    let ext = ns.ifindex("ext")?;
    let int = ns.ifindex("int")?;
    ns.run(|| {
        sys::pin_to_cpu(cpu)?;
        measure(
            [
                IfaceInfo {
                    name: "ext".into(),
                    ifindex: ext,
                    mac: ext_mac,
                },
                IfaceInfo {
                    name: "int".into(),
                    ifindex: int,
                    mac: int_mac,
                },
            ],
            trials,
            cpu,
        )
    })
}

struct Bench {
    lb: Balancer<AyaDataplane>,
    ext: u32,
    int: u32,
    trials: usize,
}

/// The object loaded and filled like the daemon does (lever on or off), its bench programs
/// loaded.
fn setup(ifaces: &[IfaceInfo; 2], trials: usize, fast_path: bool) -> Result<(Bench, Memory)> {
    let backends: Vec<Ipv4Addr> = (0..BACKENDS).map(backend_addr).collect();
    let config = lb::parse_config(&lb::config_yaml(&["ext", "int"], &backends, None))?;
    let ebpf = lb::load_like_daemon(&config, 1 << 16, fast_path)?;
    let memory = memory(&ebpf, config.persistence_entries)?;
    let mut lb = lb::fill_like_daemon(ebpf, &config, ifaces.to_vec(), BACKEND_MAC)?;
    {
        let ebpf = lb.dataplane_mut().ebpf_mut();
        let variants = VARIANTS.iter().map(|v| v.prog).filter(|_| !fast_path);
        for p in [STAMP, LB].into_iter().chain(variants) {
            lb::load_prog(ebpf, p)?;
        }
    }
    Ok((
        Bench {
            lb,
            ext: ifaces[0].ifindex,
            int: ifaces[1].ifindex,
            trials,
        },
        memory,
    ))
}

fn measure(ifaces: [IfaceInfo; 2], trials: usize, cpu: usize) -> Result<ProgCost> {
    let (ext_mac, int_mac) = (ifaces[0].mac, ifaces[1].mac);
    let (mut b, memory) = setup(&ifaces, trials, false)?;
    let fwd = frame::template(ext_mac, ROUTER_MAC, Some(VIP), ESP_IN_UDP);
    let ike = frame::template(ext_mac, ROUTER_MAC, Some(VIP), IKE);
    let rev = frame::template(int_mac, BACKEND_MAC, None, ESP_IN_UDP);
    let pass = frame::template(ext_mac, ROUTER_MAC, Some(OTHER), ESP_IN_UDP);
    let forwarded = Expect {
        counter: Some(counter::FORWARD),
        action: XDP_REDIRECT,
    };

    let mut rows = Vec::new();
    let mut attribution = Vec::new();
    for (key, clients) in [("hit_1k", 1_000), ("hit_64k", 65_536), ("hit_1M", 1_000_000)] {
        eprintln!("  program cost: {key}");
        let cfg = BenchCfg {
            mode: MODE_FORWARD,
            clients,
            base: HIT_BASE,
            _pad: 0,
        };
        // Warm-up: every client inserted once, then one more pass (steady state).
        b.run(LB, &fwd, cfg, b.ext, clients.max(REPEAT), None)?;
        let mut row = b.row(key, format!("forward, hit, {clients} clients"), &fwd, cfg, b.ext, forwarded)?;
        row.resident = Some(b.resident(cfg)?);
        rows.push(row);
        if key == "hit_64k" {
            eprintln!("  program cost: reverse");
            b.fill_rev(cfg)?;
            let rcfg = BenchCfg {
                mode: MODE_REVERSE,
                ..cfg
            };
            let reversed = Expect {
                counter: Some(counter::REVERSE),
                action: XDP_REDIRECT,
            };
            rows.push(b.row(
                "reverse",
                format!("reverse (backend → client), {clients} clients"),
                &rev,
                rcfg,
                b.int,
                reversed,
            )?);
        }
        if key != "hit_1k" {
            eprintln!("  program cost: attribution at {clients} clients");
            attribution.push(b.attribution(clients, cfg, &fwd)?);
        }
    }
    eprintln!("  program cost: miss");
    let cfg = BenchCfg {
        mode: MODE_FORWARD,
        clients: MISS_CLIENTS,
        base: MISS_BASE,
        _pad: 0,
    };
    b.run(LB, &fwd, cfg, b.ext, 2 * REPEAT, None)?;
    rows.push(b.row(
        "miss",
        format!("forward, miss + LRU insert ({MISS_CLIENTS} clients > capacity)"),
        &fwd,
        cfg,
        b.ext,
        forwarded,
    )?);
    eprintln!("  program cost: pass");
    let cfg = BenchCfg {
        mode: MODE_FORWARD,
        clients: 65_536,
        base: HIT_BASE,
        _pad: 0,
    };
    let passed = Expect {
        counter: Some(counter::PASS_NOT_VIP),
        action: XDP_PASS,
    };
    rows.push(b.row(
        "pass",
        "not to a VIP, not from a backend: XDP_PASS".into(),
        &pass,
        cfg,
        b.ext,
        passed,
    )?);
    drop(b);

    // The lever (SLOT_FAST_PATH on): the same program and maps, loaded again.
    let (mut b, _) = setup(&ifaces, trials, true)?;
    lb::load_prog(b.lb.dataplane_mut().ebpf_mut(), lb_ctl::XDP_PROGRAM)?;
    for (key, clients) in [("lever_hit_64k", 65_536), ("lever_hit_1M", 1_000_000)] {
        eprintln!("  program cost: {key}");
        let cfg = BenchCfg {
            mode: MODE_FORWARD,
            clients,
            base: HIT_BASE,
            _pad: 0,
        };
        // Sessions begin with IKE: the entries exist, as they would.
        b.run(LB, &ike, cfg, b.ext, clients.max(REPEAT), None)?;
        rows.push(b.row(
            key,
            format!("lever on: ESP in UDP, unchanged slot, {clients} clients"),
            &fwd,
            cfg,
            b.ext,
            forwarded,
        )?);
        if clients == 65_536 {
            b.lever_equivalence(&fwd, cfg)?;
            rows.push(b.row(
                "lever_ike_64k",
                format!("lever on: IKE message (persistence path), {clients} clients"),
                &ike,
                cfg,
                b.ext,
                forwarded,
            )?);
            b.flag_ring(true)?;
            let r = b.row(
                "lever_changed_64k",
                format!("lever on: ESP, slot flagged changed, {clients} clients"),
                &fwd,
                cfg,
                b.ext,
                forwarded,
            );
            b.flag_ring(false)?;
            rows.push(r?);
        }
    }
    Ok(ProgCost {
        rows,
        attribution,
        memory,
        trials,
        repeat: REPEAT,
        cpu,
    })
}

/// What every frame of a run must have done.
#[derive(Clone, Copy)]
struct Expect {
    /// Counter each frame bumps (`None`: the program does not count).
    counter: Option<u32>,
    action: u32,
}

const LB: &str = "bench_stamp_lb";
const STAMP: &str = "bench_stamp";

/// One attribution program: stamp + ikelb's forward path with a step removed (or the lever).
pub struct Variant {
    pub prog: &'static str,
    pub what: &'static str,
    counts: bool,
    redirects: bool,
}

pub const VARIANTS: [Variant; 8] = [
    Variant { prog: "bench_v_full", what: "copy of the forward path, nothing removed", counts: true, redirects: true },
    Variant { prog: "bench_v_novip", what: "VIP hash lookup → array read", counts: true, redirects: true },
    Variant { prog: "bench_v_nopers", what: "no persistence lookup (ring only)", counts: true, redirects: true },
    Variant { prog: "bench_v_notime", what: "no clock read / atime", counts: true, redirects: true },
    Variant { prog: "bench_v_nocount", what: "no counters (COUNTERS, BACKEND_STATS)", counts: false, redirects: true },
    Variant { prog: "bench_v_norewr", what: "no header rewrite", counts: true, redirects: true },
    Variant { prog: "bench_v_noredir", what: "XDP_TX instead of devmap redirect", counts: true, redirects: false },
    Variant { prog: "bench_v_parse", what: "parse + VIP + classify only", counts: false, redirects: false },
];

/// Attribution at one client count: every variant's cost over stamp, same trials.
#[derive(Clone, Debug)]
pub struct Attribution {
    pub clients: u32,
    /// bench_stamp_lb (the real program) over stamp, in the same trials.
    pub real_ns: f64,
    /// (program, description, ns over stamp).
    pub rows: Vec<(&'static str, String, f64)>,
}

impl Bench {
    fn attribution(
        &mut self,
        clients: u32,
        cfg: BenchCfg,
        esp: &Template,
    ) -> Result<Attribution> {
        let fwd = |v: &Variant| Expect {
            counter: v.counts.then_some(counter::FORWARD),
            action: if v.redirects { XDP_REDIRECT } else { 3 },
        };
        let mut progs: Vec<(&str, Expect)> = vec![(
            LB,
            Expect {
                counter: Some(counter::FORWARD),
                action: XDP_REDIRECT,
            },
        )];
        progs.extend(VARIANTS.iter().map(|v| (v.prog, fwd(v))));
        let (stamp, per) = self.trials(esp, cfg, self.ext, &progs)?;
        let s = median(&stamp);
        let real_ns = median(&per[0]) - s;
        let rows: Vec<(&'static str, String, f64)> = VARIANTS
            .iter()
            .zip(&per[1..])
            .map(|(v, t)| (v.prog, v.what.to_owned(), median(t) - s))
            .collect();
        Ok(Attribution {
            clients,
            real_ns,
            rows,
        })
    }

    /// With the lever on, a bulk frame must leave exactly as it does through the persistence
    /// path: the same frame of 256 clients through `ikelb` with their slots unflagged (fast
    /// path) and flagged (persistence path), output and action compared byte for byte.
    fn lever_equivalence(&mut self, t: &Template, cfg: BenchCfg) -> Result<()> {
        let frames: Vec<Vec<u8>> = (0..256)
            .map(|i| frame::with_source(t, client_wire(cfg.base, i * (cfg.clients / 256))))
            .collect();
        let mut outs = Vec::new();
        for flagged in [false, true] {
            self.flag_ring(flagged)?;
            let mut out = Vec::new();
            for f in &frames {
                let mut data = vec![0u8; f.len()];
                let md = frame::xdp_md(self.ext, f.len());
                let r = lb::prog(self.lb.dataplane_mut().ebpf_mut(), lb_ctl::XDP_PROGRAM)?
                    .test_run(TestRunOptions {
                        data_in: Some(f),
                        data_out: Some(&mut data),
                        ctx_in: Some(&md),
                        ..TestRunOptions::new()
                    })
                    .context("test_run ikelb")?;
                out.push((r.return_value, data));
            }
            outs.push(out);
        }
        self.flag_ring(false)?;
        for (i, (fast, slow)) in outs[0].iter().zip(&outs[1]).enumerate() {
            ensure!(
                fast == slow && fast.0 == XDP_REDIRECT,
                "lever: client {i} leaves differently through the fast path ({:?}) and the \
                 persistence path ({:?})",
                fast,
                slow
            );
        }
        eprintln!("  lever: 256 clients leave identically through both paths");
        Ok(())
    }

    /// Sets or clears the lever's RING_F_CHANGED bit on every slot of the active table.
    fn flag_ring(&mut self, on: bool) -> Result<()> {
        let base = self.lb.services()[0].value.ring_base;
        let m = self.lb.ring_size();
        let mut rings: Array<&mut MapData, u32> = Array::try_from(
            self.lb
                .dataplane_mut()
                .ebpf_mut()
                .map_mut("RINGS")
                .context("RINGS")?,
        )?;
        for i in base..base + m {
            let v = rings.get(&i, 0)?;
            rings.set(i, if on { v | RING_F_CHANGED } else { v & !RING_F_CHANGED }, 0)?;
        }
        Ok(())
    }

    /// `trials` rounds of: stamp only, then each program; ns per frame of each run.
    fn trials(
        &mut self,
        t: &Template,
        cfg: BenchCfg,
        ingress: u32,
        progs: &[(&str, Expect)],
    ) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        let mut stamp = Vec::new();
        let mut per = vec![Vec::new(); progs.len()];
        let stamp_only = Expect {
            counter: None,
            action: 3,
        };
        for _ in 0..self.trials {
            stamp.push(self.run(STAMP, t, cfg, ingress, REPEAT, Some(stamp_only))?);
            for (i, (p, e)) in progs.iter().enumerate() {
                per[i].push(self.run(p, t, cfg, ingress, REPEAT, Some(*e))?);
            }
        }
        Ok((stamp, per))
    }

    /// One test_run of `prog`: ns per frame. With `expect`, checks the last run's action and
    /// that every frame bumped the expected counter.
    fn run(
        &mut self,
        prog: &str,
        t: &Template,
        cfg: BenchCfg,
        ingress: u32,
        repeat: u32,
        expect: Option<Expect>,
    ) -> Result<f64> {
        sys::check_interrupted()?;
        lb::set_template(self.lb.dataplane_mut().ebpf_mut(), t.block)?;
        lb::set_cfg(self.lb.dataplane_mut().ebpf_mut(), cfg)?;
        let before = self.counters()?;
        let md = frame::xdp_md(ingress, FRAME_LEN);
        let r = lb::prog(self.lb.dataplane_mut().ebpf_mut(), prog)?
            .test_run(TestRunOptions {
                data_in: Some(&t.frame),
                ctx_in: Some(&md),
                repeat,
                ..TestRunOptions::new()
            })
            .with_context(|| format!("test_run {prog}"))?;
        if let Some(e) = expect {
            ensure!(
                r.return_value == e.action,
                "{prog}: returned action {}, expected {}",
                r.return_value,
                e.action
            );
            if let Some(c) = e.counter {
                let after = self.counters()?;
                let d = after[c as usize] - before[c as usize];
                ensure!(
                    d == u64::from(repeat),
                    "{prog}: {d} of {repeat} frames counted as {:?} (counters before {before:?}, after {after:?})",
                    counter::LABELS[c as usize]
                );
            }
        }
        Ok(r.duration.as_nanos() as f64)
    }

    fn counters(&self) -> Result<Vec<u64>> {
        self.lb
            .dataplane()
            .counters()
            .map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))
    }

    fn row(
        &mut self,
        key: &'static str,
        what: String,
        t: &Template,
        cfg: BenchCfg,
        ingress: u32,
        expect: Expect,
    ) -> Result<Row> {
        let (stamp, per) = self.trials(t, cfg, ingress, &[(LB, expect)])?;
        let lb = &per[0];
        let (s, l) = (median(&stamp), median(lb));
        let spread = lb.iter().cloned().fold(f64::MIN, f64::max)
            - lb.iter().cloned().fold(f64::MAX, f64::min);
        Ok(Row {
            key,
            what,
            clients: cfg.clients,
            stamp_ns: s,
            lb_ns: l,
            cost_ns: l - s,
            spread_ns: spread,
            resident: None,
        })
    }

    /// Fraction of 4096 clients spread over the key space that have an entry.
    fn resident(&mut self, cfg: BenchCfg) -> Result<f64> {
        let m: HashMap<&MapData, PersistKeyV4, PersistValue> = HashMap::try_from(
            self.lb
                .dataplane_mut()
                .ebpf_mut()
                .map("PERSIST_V4")
                .context("PERSIST_V4")?,
        )?;
        let samples = 4096u32.min(cfg.clients);
        let step = cfg.clients / samples;
        let mut present = 0;
        for s in 0..samples {
            let key = PersistKeyV4 {
                service: 0,
                client: client_wire(cfg.base, s * step),
            };
            if m.get(&key, 0).is_ok() {
                present += 1;
            }
        }
        Ok(f64::from(present) / f64::from(samples))
    }

    /// `BENCH_REV[i]` = the address of the backend client `i` is persisted to.
    fn fill_rev(&mut self, cfg: BenchCfg) -> Result<()> {
        let addrs: std::collections::HashMap<u32, u32> = self
            .lb
            .backends()
            .map(|b| {
                let std::net::IpAddr::V4(a) = b.address else {
                    unreachable!("IPv4 backends")
                };
                (b.id, u32::from_ne_bytes(a.octets()))
            })
            .collect();
        let ebpf = self.lb.dataplane_mut().ebpf_mut();
        let mut rev_vals = Vec::with_capacity(cfg.clients as usize);
        {
            let m: HashMap<&MapData, PersistKeyV4, PersistValue> =
                HashMap::try_from(ebpf.map("PERSIST_V4").context("PERSIST_V4")?)?;
            for i in 0..cfg.clients {
                let key = PersistKeyV4 {
                    service: 0,
                    client: client_wire(cfg.base, i),
                };
                let v = m
                    .get(&key, 0)
                    .with_context(|| format!("client {i} has no persistence entry"))?;
                rev_vals.push(*addrs.get(&v.backend).context("unknown backend id")?);
            }
        }
        let mut rev: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut("BENCH_REV").context("BENCH_REV")?)?;
        for (i, a) in rev_vals.into_iter().enumerate() {
            rev.set(i as u32, a, 0)?;
        }
        Ok(())
    }
}

/// `memlock` of PERSIST_V4 and of every map of the object, from /proc/self/fdinfo (the kernel's
/// own accounting of what the map allocated — an LRU hash preallocates every entry).
fn memory(ebpf: &aya::Ebpf, persist_entries: u32) -> Result<Memory> {
    let Some(Map::LruHashMap(persist)) = ebpf.map("PERSIST_V4") else {
        bail!("PERSIST_V4 is not an LRU hash map");
    };
    let persist_memlock = fd_memlock(persist.fd().as_fd().as_raw_fd())?;
    let mut all = 0;
    for (_, m) in ebpf.maps() {
        if let Some(fd) = map_fd(m) {
            all += fd_memlock(fd)?;
        }
    }
    Ok(Memory {
        persist_entries,
        persist_memlock,
        all_maps_memlock: all,
    })
}

fn map_fd(m: &Map) -> Option<i32> {
    let d: &MapData = match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::DevMap(d)
        | Map::RingBuf(d)
        | Map::PerCpuHashMap(d) => d,
        _ => return None,
    };
    Some(d.fd().as_fd().as_raw_fd())
}

fn fd_memlock(fd: i32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .context("no memlock in fdinfo")?
        .trim()
        .parse()
        .context("memlock value")
}
