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
use lb_common::{counter, PersistKeyV4, PersistValue};
use lb_ctl::{
    dataplane::{AyaDataplane, Dataplane},
    state::{Balancer, IfaceInfo},
};

use crate::{
    frame::{self, client_wire, BenchCfg, Template, FRAME_LEN, MODE_FORWARD, MODE_REVERSE},
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

fn measure(ifaces: [IfaceInfo; 2], trials: usize, cpu: usize) -> Result<ProgCost> {
    let backends: Vec<Ipv4Addr> = (0..BACKENDS).map(backend_addr).collect();
    let config = lb::parse_config(&lb::config_yaml(&["ext", "int"], &backends, None))?;
    let ebpf = lb::load_like_daemon(&config, 1 << 16)?;
    let memory = memory(&ebpf, config.persistence_entries)?;
    let (ext, int) = (ifaces[0].ifindex, ifaces[1].ifindex);
    let (ext_mac, int_mac) = (ifaces[0].mac, ifaces[1].mac);
    let mut lb = lb::fill_like_daemon(ebpf, &config, ifaces.to_vec(), BACKEND_MAC)?;
    {
        let ebpf = lb.dataplane_mut().ebpf_mut();
        lb::load_prog(ebpf, "bench_stamp")?;
        lb::load_prog(ebpf, "bench_stamp_lb")?;
    }
    let mut b = Bench {
        lb,
        ext,
        int,
        trials,
    };
    let fwd = frame::template(ext_mac, ROUTER_MAC, Some(VIP));
    let rev = frame::template(int_mac, BACKEND_MAC, None);
    let pass = frame::template(ext_mac, ROUTER_MAC, Some(OTHER));

    let mut rows = Vec::new();
    for (key, clients) in [("hit_1k", 1_000), ("hit_64k", 65_536), ("hit_1M", 1_000_000)] {
        eprintln!("  program cost: {key}");
        let cfg = BenchCfg {
            mode: MODE_FORWARD,
            clients,
            base: HIT_BASE,
            _pad: 0,
        };
        // Warm-up: every client inserted once, then one more pass (steady state).
        b.run(&fwd, cfg, b.ext, clients.max(REPEAT), None)?;
        let mut row = b.row(key, format!("forward, hit, {clients} clients"), &fwd, cfg, b.ext, counter::FORWARD, XDP_REDIRECT)?;
        row.resident = Some(b.resident(cfg)?);
        rows.push(row);
        if key == "hit_64k" {
            eprintln!("  program cost: reverse");
            b.fill_rev(cfg)?;
            let rcfg = BenchCfg {
                mode: MODE_REVERSE,
                ..cfg
            };
            rows.push(b.row(
                "reverse",
                format!("reverse (backend → client), {clients} clients"),
                &rev,
                rcfg,
                b.int,
                counter::REVERSE,
                XDP_REDIRECT,
            )?);
        }
    }
    eprintln!("  program cost: miss");
    let cfg = BenchCfg {
        mode: MODE_FORWARD,
        clients: MISS_CLIENTS,
        base: MISS_BASE,
        _pad: 0,
    };
    b.run(&fwd, cfg, b.ext, 2 * REPEAT, None)?;
    rows.push(b.row(
        "miss",
        format!("forward, miss + LRU insert ({MISS_CLIENTS} clients > capacity)"),
        &fwd,
        cfg,
        b.ext,
        counter::FORWARD,
        XDP_REDIRECT,
    )?);
    eprintln!("  program cost: pass");
    let cfg = BenchCfg {
        mode: MODE_FORWARD,
        clients: 65_536,
        base: HIT_BASE,
        _pad: 0,
    };
    rows.push(b.row(
        "pass",
        "not to a VIP, not from a backend: XDP_PASS".into(),
        &pass,
        cfg,
        b.ext,
        counter::PASS_NOT_VIP,
        XDP_PASS,
    )?);
    Ok(ProgCost {
        rows,
        memory,
        trials,
        repeat: REPEAT,
        cpu,
    })
}

impl Bench {
    /// One test_run of `prog` (`None` = stamp only); ns per frame, and the action of the last
    /// run. Checks that every frame bumped `expect` (when given).
    fn run(
        &mut self,
        t: &Template,
        cfg: BenchCfg,
        ingress: u32,
        repeat: u32,
        expect: Option<(&'static str, u32)>,
    ) -> Result<(f64, u32)> {
        sys::check_interrupted()?;
        lb::set_template(self.lb.dataplane_mut().ebpf_mut(), t.block)?;
        lb::set_cfg(self.lb.dataplane_mut().ebpf_mut(), cfg)?;
        let name = expect.map_or("bench_stamp_lb", |(p, _)| p);
        let before = self.counters()?;
        let md = frame::xdp_md(ingress, FRAME_LEN);
        let r = lb::prog(self.lb.dataplane_mut().ebpf_mut(), name)?
            .test_run(TestRunOptions {
                data_in: Some(&t.frame),
                ctx_in: Some(&md),
                repeat,
                ..TestRunOptions::new()
            })
            .with_context(|| format!("test_run {name}"))?;
        let after = self.counters()?;
        if let Some((p, c)) = expect {
            if p == "bench_stamp_lb" {
                let d = after[c as usize] - before[c as usize];
                ensure!(
                    d == u64::from(repeat),
                    "{name}: {d} of {repeat} frames counted as {:?} (counters before {before:?}, after {after:?})",
                    counter::LABELS[c as usize]
                );
            }
        }
        Ok((r.duration.as_nanos() as f64, r.return_value))
    }

    fn counters(&self) -> Result<Vec<u64>> {
        self.lb
            .dataplane()
            .counters()
            .map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))
    }

    #[expect(clippy::too_many_arguments, reason = "one call site per row, read as a table")]
    fn row(
        &mut self,
        key: &'static str,
        what: String,
        t: &Template,
        cfg: BenchCfg,
        ingress: u32,
        counter: u32,
        action: u32,
    ) -> Result<Row> {
        let mut stamp = Vec::new();
        let mut lb = Vec::new();
        for _ in 0..self.trials {
            let (s, a) = self.run(t, cfg, ingress, REPEAT, Some(("bench_stamp", counter)))?;
            ensure!(a == 3, "bench_stamp returned {a}, not XDP_TX");
            stamp.push(s);
            let (l, a) = self.run(t, cfg, ingress, REPEAT, Some(("bench_stamp_lb", counter)))?;
            ensure!(a == action, "{key}: ikelb returned action {a}, expected {action}");
            lb.push(l);
        }
        let (s, l) = (median(&stamp), median(&lb));
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
