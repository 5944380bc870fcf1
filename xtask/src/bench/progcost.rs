//! Program cost with `BPF_PROG_TEST_RUN` and the stamp method (see
//! `lb-ebpf/src/bench/mod.rs`), and the memory of the per-client maps.
//!
//! The object is loaded with the daemon's globals and map sizes and filled by `lb_ctl`'s own
//! `Balancer` (one virtual server, 10 backends, Maglev M = 65537, persistence capacity at its
//! default, the default new-client ration). Frames arrive on a real veth
//! (`ctx_in.ingress_ifindex`) of a namespace made for this, so ikelb takes its two-arm path
//! exactly as in production: in on `ext` (the clients' interface), out by devmap redirect on
//! `int`. The measuring thread is pinned to one CPU. Each trial runs the stamp-only program
//! and then stamp + ikelb with the same `repeat`; the reported cost is
//! median(stamp + ikelb) − median(stamp). Every run's counter and event deltas are checked:
//! all `repeat` frames must have taken the intended branch.
//!
//! Since the two-tier persistence (56e103b) only a promotion — the client echoing its
//! backend's IKE responder SPI — creates a `PERSIST_V4` entry; a client seen for the first
//! time gets a probation entry at most. The hit rows therefore start from **established**
//! clients: their `PERSIST_V4` entries are written from user space (backend = the client's
//! ring slot, as a promotion would have left it; the clients' MAC and interface), then one
//! warm-up pass runs through the program. Rows whose sources are new (`miss*`,
//! `spoofed_init*`) draw them from 2^26 addresses, far more than both maps hold.
//!
//! The IPv6 rows (`*_v6`) run after every IPv4 row, on the object loaded again for a virtual
//! server with an IPv6 VIP and IPv6 backends (`lb6`), with the IPv6 stamp (`bench_stamp6`,
//! `bench_stamp_lb6`): the same rows at the same client counts and the same checks, over
//! `PERSIST_V6` / `PROBATION_V6`.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions},
};
use lb_common::{
    counter, event, PersistKeyV4, PersistKeyV6, PersistValue, QUOTA_WINDOW_SHIFT, RING_F_CHANGED,
};
use lb_ctl::{
    config::Config,
    dataplane::{AyaDataplane, Dataplane},
    state::{Balancer, IfaceInfo},
};

use crate::{
    frame::{
        self, client_wire, BenchCfg, Template, ESP_IN_UDP, IKE, MODE_FORWARD, MODE_REVERSE,
    },
    lb::{self, backend_addr, BACKENDS, VIP},
    lb6::{self, BACKEND_PREFIX6, VIP6},
    stats::median,
    sys::{self, NetNs, RunPrefix, Veth},
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// First client address of the established clients (100.64.0.0, CGNAT space) and of the new
/// sources: ESP (`miss*`) from 32.0.0.0/6, spoofed IKE_SA_INIT (`spoofed_init*`) from
/// 64.0.0.0/6 — 2^26 addresses each, none a VIP or backend, disjoint so that no row meets
/// the probation entries another left.
const HIT_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
const MISS_BASE: u32 = u32::from_be_bytes([32, 0, 0, 0]);
const SPOOF_BASE: u32 = u32::from_be_bytes([64, 0, 0, 0]);
/// Key space of the new sources: 64× the default persistence capacity, 256× the probation
/// one, and more than the frames of one row (≤ 20 × 2^20, stamp runs included), so no source
/// of a row comes twice: every frame is a new client.
const MISS_CLIENTS: u32 = 1 << 26;
/// The IPv6 rows' /96 prefixes (the low word from the stamp): established clients
/// (`HIT_BASE` + i, as over IPv4), ESP from new sources and spoofed IKE_SA_INIT (low words
/// 1 … 2^26), disjoint as above.
pub const HIT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0);
const MISS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x3200, 0, 0, 0, 0, 0);
const SPOOF6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x6400, 0, 0, 0, 0, 0);
/// Not a VIP, not a backend: the pass-through row's destination.
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// MAC of every backend's next hop (never used to send: test_run does not transmit).
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
/// The clients' previous hop.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
/// Port (position in the config's `interfaces`) of `ext`, the clients' interface.
const EXT_PORT: u8 = 0;

/// Frames per test_run call.
const REPEAT: u32 = 1 << 20;

const EVENTS: usize = event::COUNT as usize;

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
    /// Fraction of a sample of the established clients present in PERSIST_V4 after the row's
    /// trials (hit rows; for the rows of new sources: the established clients that survived
    /// the flood).
    pub resident: Option<f64>,
    /// `EVENTS` deltas (`lb_common::event`) summed over the measured stamp + ikelb runs.
    pub events: [u64; EVENTS],
    /// Frames of those runs (trials × repeat).
    pub frames: u64,
    /// Loaded with `SLOT_FAST_PATH` on: the fast-path share is meaningful.
    pub fast_path_on: bool,
}

impl Row {
    /// Share of the measured frames that counted event `e`.
    pub fn share(&self, e: u32) -> f64 {
        self.events[e as usize] as f64 / self.frames.max(1) as f64
    }

    /// Share of the measured frames that took the slot fast path (lever rows only).
    pub fn fast_path_share(&self) -> Option<f64> {
        self.fast_path_on.then(|| self.share(event::FAST_PATH))
    }

    /// Whether the row's frames came from new clients (probation inserted or throttled).
    pub fn new_clients(&self) -> bool {
        self.events[event::PROBATION_INSERT as usize] + self.events[event::PROBATION_THROTTLED as usize] > 0
    }
}

pub struct Memory {
    /// PERSIST_V4 at its configured capacity: entries and the map fd's `memlock`.
    pub persist_entries: u32,
    pub persist_memlock: u64,
    /// PROBATION_V4 at its configured capacity (`probation_entries`).
    pub probation_entries: u32,
    pub probation_memlock: u64,
    /// PROOFS_V4, sized like PROBATION_V4.
    pub proofs_memlock: u64,
    /// The IPv6 maps at the same sizes (`None` until measured: [`v6_memory`]).
    pub v6: Option<V6Memory>,
    /// REFRESHED_V4 (the slot fast path's refresh tags), as the daemon sizes it.
    pub refreshed_entries: u32,
    pub refreshed_memlock: u64,
    /// Every map of the object as the daemon sizes it, bench maps included (a few KiB).
    pub all_maps_memlock: u64,
}

/// `memlock` of PERSIST_V6 (`persist_entries`) and PROBATION_V6, PROOFS_V6
/// (`probation_entries`), sized as a dual-stack daemon with the bench's config sizes them.
#[derive(Clone, Copy)]
pub struct V6Memory {
    pub persist_entries: u32,
    pub probation_entries: u32,
    pub persist_memlock: u64,
    pub probation_memlock: u64,
    pub proofs_memlock: u64,
}

/// The new-client ration every row but the `*_unlimited` ones runs with (the daemon's default).
pub struct Ration {
    /// Config `new_client_rate` (per second, whole gateway).
    pub rate: u32,
    /// CPUs it is spread over.
    pub cpus: u32,
    /// `NEW_CLIENT_QUOTA`: inserts per CPU per window of 2^QUOTA_WINDOW_SHIFT ns.
    pub quota: u32,
}

pub struct ProgCost {
    pub rows: Vec<Row>,
    pub attribution: Vec<Attribution>,
    pub memory: Memory,
    pub ration: Ration,
    pub trials: usize,
    pub repeat: u32,
    pub cpu: usize,
}

pub fn run(prefix: &RunPrefix, cpu: usize, trials: usize) -> Result<ProgCost> {
    let ns = NetNs::new(prefix.name("prog"))?;
    let _link = Veth::new((&ns, "ext"), (&ns, "int"))?;
    let ext_mac = ns.mac("ext")?;
    let int_mac = ns.mac("int")?;
    let ext = ns.ifindex("ext")?;
    let int = ns.ifindex("int")?;
    ns.run(|| -> Result<ProgCost> {
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
    })?
}

struct Bench {
    lb: Balancer<AyaDataplane>,
    ext: u32,
    int: u32,
    trials: usize,
    /// `NEW_CLIENT_QUOTA` this object was loaded with (0 = unlimited).
    quota: u32,
    /// Event deltas summed over the checked runs since the last reset (`row`).
    acc: [u64; EVENTS],
    /// The IPv6 object (`setup6`): the IPv6 stamp programs, `PERSIST_V6`, clients under
    /// [`HIT6`].
    v6: bool,
}

/// The benchmark's configuration as the daemon would parse it.
fn bench_config() -> Result<Config> {
    let backends: Vec<Ipv4Addr> = (0..BACKENDS).map(backend_addr).collect();
    lb::parse_config(&lb::config_yaml(&["ext", "int"], &backends, None))
}

/// The object loaded and filled like the daemon does (lever on or off; the default new-client
/// ration, or none with `unlimited`), its bench programs loaded.
fn setup(
    ifaces: &[IfaceInfo; 2],
    trials: usize,
    fast_path: bool,
    unlimited: bool,
) -> Result<(Bench, Memory)> {
    let mut config = bench_config()?;
    if unlimited {
        config.new_client_rate = 0;
    }
    let variants = VARIANTS.iter().map(|v| v.prog).filter(|_| !fast_path && !unlimited);
    let progs: Vec<&str> = [STAMP, LB].into_iter().chain(variants).collect();
    setup_config(ifaces, trials, fast_path, &config, &progs, false)
}

/// [`setup`] for the IPv6 virtual server (`lb6`), the default ration, no variants.
fn setup6(ifaces: &[IfaceInfo; 2], trials: usize, fast_path: bool) -> Result<Bench> {
    let config = lb6::config6(&["ext", "int"])?;
    Ok(setup_config(ifaces, trials, fast_path, &config, &[STAMP6, LB6], true)?.0)
}

fn setup_config(
    ifaces: &[IfaceInfo; 2],
    trials: usize,
    fast_path: bool,
    config: &Config,
    progs: &[&str],
    v6: bool,
) -> Result<(Bench, Memory)> {
    let quota = config.new_client_quota(lb::quota_cpus());
    let ebpf = lb::load_like_daemon(config, 1 << 16, fast_path)?;
    let memory = memory(&ebpf, config)?;
    let mut lb = lb::fill_like_daemon(ebpf, config, ifaces.to_vec(), BACKEND_MAC)?;
    {
        let ebpf = lb.dataplane_mut().ebpf_mut();
        for p in progs {
            lb::load_prog(ebpf, p)?;
        }
    }
    Ok((
        Bench {
            lb,
            ext: ifaces[0].ifindex,
            int: ifaces[1].ifindex,
            trials,
            quota,
            acc: [0; EVENTS],
            v6,
        },
        memory,
    ))
}

fn fwd_cfg(clients: u32, base: u32) -> BenchCfg {
    BenchCfg {
        mode: MODE_FORWARD,
        clients,
        base,
        _pad: 0,
    }
}

fn measure(ifaces: [IfaceInfo; 2], trials: usize, cpu: usize) -> Result<ProgCost> {
    let (ext_mac, int_mac) = (ifaces[0].mac, ifaces[1].mac);
    let ration = {
        let config = bench_config()?;
        let cpus = lb::quota_cpus();
        Ration {
            rate: config.new_client_rate,
            cpus,
            quota: config.new_client_quota(cpus),
        }
    };
    let (mut b, mut memory) = setup(&ifaces, trials, false, false)?;
    memory.v6 = Some(v6_memory(&bench_config()?)?);
    let fwd = frame::template(ext_mac, ROUTER_MAC, Some(VIP), ESP_IN_UDP);
    let ike = frame::template(ext_mac, ROUTER_MAC, Some(VIP), IKE);
    let init = frame::ike_sa_init_template(ext_mac, ROUTER_MAC, VIP);
    let rev = frame::template(int_mac, BACKEND_MAC, None, ESP_IN_UDP);
    let pass = frame::template(ext_mac, ROUTER_MAC, Some(OTHER), ESP_IN_UDP);
    let flood = fwd_cfg(MISS_CLIENTS, MISS_BASE);
    let spoof = fwd_cfg(MISS_CLIENTS, SPOOF_BASE);
    // Established clients: no new-client event, no MAC move.
    let forwarded = Expect {
        counter: Some(counter::FORWARD),
        action: XDP_REDIRECT,
        news: News::None,
        fast: Fast::Never,
    };
    // Frames of new sources: every one a probation insert or, past the ration, throttled.
    let rationed = |lost: bool| Expect {
        news: News::Rationed { lost },
        ..forwarded
    };
    let inserted = |lost: bool| Expect {
        news: News::Inserted { lost },
        ..forwarded
    };

    let mut rows = Vec::new();
    let mut attribution = Vec::new();
    for (key, clients) in [("hit_1k", 1_000), ("hit_64k", 65_536), ("hit_1M", 1_000_000)] {
        eprintln!("  program cost: {key}");
        let cfg = fwd_cfg(clients, HIT_BASE);
        b.establish(cfg)?;
        // Warm-up: every client once more through the program (steady state).
        b.run(LB, &fwd, cfg, b.ext, clients.max(REPEAT), Some(forwarded))?;
        let mut row = b.row(
            key,
            format!("forward, established client (PERSIST_V4 hit), {clients} clients"),
            &fwd,
            cfg,
            b.ext,
            forwarded,
        )?;
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
                ..forwarded
            };
            rows.push(b.row(
                "reverse",
                format!("reverse (backend → established client), {clients} clients"),
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
        if key == "hit_64k" {
            eprintln!("  program cost: spoofed_init_64k");
            b.run(LB, &init, spoof, b.ext, REPEAT, Some(rationed(false)))?;
            let mut row = b.row(
                "spoofed_init_64k",
                format!(
                    "spoofed IKE_SA_INIT, new source (of 2^26), {clients} established, default ration"
                ),
                &init,
                spoof,
                b.ext,
                rationed(false),
            )?;
            row.resident = Some(b.resident(cfg)?);
            rows.push(row);
        }
    }
    eprintln!("  program cost: miss");
    let established = fwd_cfg(1_000_000, HIT_BASE);
    b.run(LB, &fwd, flood, b.ext, 2 * REPEAT, Some(rationed(true)))?;
    let mut row = b.row(
        "miss",
        "forward, ESP from a new source (of 2^26; miss in both maps, lost), default ration".into(),
        &fwd,
        flood,
        b.ext,
        rationed(true),
    )?;
    row.resident = Some(b.resident(established)?);
    rows.push(row);
    eprintln!("  program cost: pass");
    let passed = Expect {
        counter: Some(counter::PASS_NOT_VIP),
        action: XDP_PASS,
        ..forwarded
    };
    rows.push(b.row(
        "pass",
        "not to a VIP, not from a backend: XDP_PASS".into(),
        &pass,
        fwd_cfg(65_536, HIT_BASE),
        b.ext,
        passed,
    )?);
    drop(b);

    // No ration (new_client_rate: 0): every new source gets a probation entry, evicting one.
    let (mut b, _) = setup(&ifaces, trials, false, true)?;
    ensure!(b.quota == 0, "new_client_rate 0 must load NEW_CLIENT_QUOTA 0");
    for (key, established, t, sources, lost, what) in [
        (
            "spoofed_init_64k_unlimited",
            65_536,
            &init,
            spoof,
            false,
            "spoofed IKE_SA_INIT, new source (of 2^26), 65536 established, no ration: probation insert + eviction",
        ),
        (
            "miss_unlimited",
            1_000_000,
            &fwd,
            flood,
            true,
            "forward, ESP from a new source (of 2^26), no ration: probation insert + eviction",
        ),
    ] {
        eprintln!("  program cost: {key}");
        let cfg = fwd_cfg(established, HIT_BASE);
        b.establish(cfg)?;
        b.run(LB, &fwd, cfg, b.ext, established.max(REPEAT), Some(forwarded))?;
        // Fill the probation map (2^18 entries by default) so that every insert evicts.
        b.run(LB, t, sources, b.ext, 2 * REPEAT, Some(inserted(lost)))?;
        let mut row = b.row(key, what.into(), t, sources, b.ext, inserted(lost))?;
        row.resident = Some(b.resident(cfg)?);
        rows.push(row);
    }
    drop(b);

    // The lever (SLOT_FAST_PATH on): the same program and maps, loaded again.
    let (mut b, _) = setup(&ifaces, trials, true, false)?;
    lb::load_prog(b.lb.dataplane_mut().ebpf_mut(), lb_ctl::XDP_PROGRAM)?;
    let bulk = Expect {
        fast: Fast::Any,
        ..forwarded
    };
    for (key, clients) in [("lever_hit_64k", 65_536), ("lever_hit_1M", 1_000_000)] {
        eprintln!("  program cost: {key}");
        let cfg = fwd_cfg(clients, HIT_BASE);
        b.establish(cfg)?;
        // Warm-up: every client's first packet of the tick writes its REFRESHED_V4 tag.
        b.run(LB, &fwd, cfg, b.ext, clients.max(REPEAT), Some(bulk))?;
        let mut row = b.row(
            key,
            format!("lever on: ESP in UDP, unchanged slot, established, {clients} clients"),
            &fwd,
            cfg,
            b.ext,
            bulk,
        )?;
        row.resident = Some(b.resident(cfg)?);
        rows.push(row);
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
            // The default setting's flood cost: a throttled IKE_SA_INIT in an unchanged slot
            // reads neither map (`select::forward`). Run once first so the ration is spent.
            eprintln!("  program cost: lever_spoofed_init_64k");
            b.run(LB, &init, spoof, b.ext, REPEAT, Some(rationed(false)))?;
            rows.push(b.row(
                "lever_spoofed_init_64k",
                format!(
                    "lever on: spoofed IKE_SA_INIT, new source (of 2^26), unchanged slot, {clients} established, default ration"
                ),
                &init,
                spoof,
                b.ext,
                rationed(false),
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
    rows.extend(measure_v6(&ifaces, trials)?);
    for r in &mut rows {
        r.fast_path_on = r.key.starts_with("lever_");
    }
    Ok(ProgCost {
        rows,
        attribution,
        memory,
        ration,
        trials,
        repeat: REPEAT,
        cpu,
    })
}

/// The IPv6 rows, after every IPv4 one: the object loaded for the IPv6 virtual server, the
/// IPv4 rows' frames over IPv6 (`frame::template6`), the same expectations. Keys: the IPv4
/// row's with `_v6`.
fn measure_v6(ifaces: &[IfaceInfo; 2], trials: usize) -> Result<Vec<Row>> {
    let (ext_mac, int_mac) = (ifaces[0].mac, ifaces[1].mac);
    let fwd = frame::template6(ext_mac, ROUTER_MAC, HIT6, VIP6, ESP_IN_UDP);
    let ike = frame::template6(ext_mac, ROUTER_MAC, HIT6, VIP6, IKE);
    let init = frame::ike_sa_init_template6(ext_mac, ROUTER_MAC, SPOOF6, VIP6);
    let miss = frame::template6(ext_mac, ROUTER_MAC, MISS6, VIP6, ESP_IN_UDP);
    let rev = frame::template6(int_mac, BACKEND_MAC, BACKEND_PREFIX6, HIT6, ESP_IN_UDP);
    let flood = fwd_cfg(MISS_CLIENTS, 1);
    let spoof = fwd_cfg(MISS_CLIENTS, 1);
    let forwarded = Expect {
        counter: Some(counter::FORWARD),
        action: XDP_REDIRECT,
        news: News::None,
        fast: Fast::Never,
    };
    let rationed = |lost: bool| Expect {
        news: News::Rationed { lost },
        ..forwarded
    };

    let mut rows = Vec::new();
    let mut b = setup6(ifaces, trials, false)?;
    for (key, clients) in [("hit_64k_v6", 65_536), ("hit_1M_v6", 1_000_000)] {
        eprintln!("  program cost: {key}");
        let cfg = fwd_cfg(clients, HIT_BASE);
        b.establish(cfg)?;
        b.run(LB, &fwd, cfg, b.ext, clients.max(REPEAT), Some(forwarded))?;
        let mut row = b.row(
            key,
            format!("IPv6: forward, established client (PERSIST_V6 hit), {clients} clients"),
            &fwd,
            cfg,
            b.ext,
            forwarded,
        )?;
        row.resident = Some(b.resident(cfg)?);
        rows.push(row);
        if clients != 65_536 {
            continue;
        }
        eprintln!("  program cost: reverse_v6");
        b.fill_rev(cfg)?;
        let rcfg = BenchCfg {
            mode: MODE_REVERSE,
            ..cfg
        };
        let reversed = Expect {
            counter: Some(counter::REVERSE),
            ..forwarded
        };
        rows.push(b.row(
            "reverse_v6",
            format!("IPv6: reverse (backend → established client), {clients} clients"),
            &rev,
            rcfg,
            b.int,
            reversed,
        )?);
        eprintln!("  program cost: spoofed_init_64k_v6");
        b.run(LB, &init, spoof, b.ext, REPEAT, Some(rationed(false)))?;
        let mut row = b.row(
            "spoofed_init_64k_v6",
            format!(
                "IPv6: spoofed IKE_SA_INIT, new source (of 2^26), {clients} established, default ration"
            ),
            &init,
            spoof,
            b.ext,
            rationed(false),
        )?;
        row.resident = Some(b.resident(cfg)?);
        rows.push(row);
    }
    eprintln!("  program cost: miss_v6");
    b.run(LB, &miss, flood, b.ext, 2 * REPEAT, Some(rationed(true)))?;
    let mut row = b.row(
        "miss_v6",
        "IPv6: forward, ESP from a new source (of 2^26; miss in both maps, lost), default ration"
            .into(),
        &miss,
        flood,
        b.ext,
        rationed(true),
    )?;
    row.resident = Some(b.resident(fwd_cfg(1_000_000, HIT_BASE))?);
    rows.push(row);
    drop(b);

    let mut b = setup6(ifaces, trials, true)?;
    let bulk = Expect {
        fast: Fast::Any,
        ..forwarded
    };
    for (key, clients) in [("lever_hit_64k_v6", 65_536), ("lever_hit_1M_v6", 1_000_000)] {
        eprintln!("  program cost: {key}");
        let cfg = fwd_cfg(clients, HIT_BASE);
        b.establish(cfg)?;
        b.run(LB, &fwd, cfg, b.ext, clients.max(REPEAT), Some(bulk))?;
        let mut row = b.row(
            key,
            format!("IPv6: lever on: ESP in UDP, unchanged slot, established, {clients} clients"),
            &fwd,
            cfg,
            b.ext,
            bulk,
        )?;
        row.resident = Some(b.resident(cfg)?);
        rows.push(row);
        if clients != 65_536 {
            continue;
        }
        rows.push(b.row(
            "lever_ike_64k_v6",
            format!("IPv6: lever on: IKE message (persistence path), {clients} clients"),
            &ike,
            cfg,
            b.ext,
            forwarded,
        )?);
        eprintln!("  program cost: lever_spoofed_init_64k_v6");
        b.run(LB, &init, spoof, b.ext, REPEAT, Some(rationed(false)))?;
        rows.push(b.row(
            "lever_spoofed_init_64k_v6",
            format!(
                "IPv6: lever on: spoofed IKE_SA_INIT, new source (of 2^26), unchanged slot, {clients} established, default ration"
            ),
            &init,
            spoof,
            b.ext,
            rationed(false),
        )?);
        b.flag_ring(true)?;
        let r = b.row(
            "lever_changed_64k_v6",
            format!("IPv6: lever on: ESP, slot flagged changed, {clients} clients"),
            &fwd,
            cfg,
            b.ext,
            forwarded,
        );
        b.flag_ring(false)?;
        rows.push(r?);
    }
    Ok(rows)
}

/// What every frame of a run must have done.
#[derive(Clone, Copy)]
struct Expect {
    /// Counter each frame bumps (`None`: the program does not count).
    counter: Option<u32>,
    action: u32,
    /// New-client events (`PROBATION_*`, `LOST`).
    news: News,
    /// `FAST_PATH` events.
    fast: Fast,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum News {
    /// None at all (established clients, the reverse path, pass-through).
    None,
    /// Every frame a new client: a probation insert or, past this CPU's ration, throttled
    /// (and no more inserts than the ration allows in the windows the run spans); `lost`:
    /// every frame also counted lost (mid-session: ESP).
    Rationed { lost: bool },
    /// Every frame a probation insert (no ration).
    Inserted { lost: bool },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fast {
    /// No frame may take the slot fast path.
    Never,
    /// Any share (reported, not asserted).
    Any,
}

const LB: &str = "bench_stamp_lb";
const STAMP: &str = "bench_stamp";
/// The IPv6 stamp (`Bench::run` runs these for `LB` and `STAMP` on the IPv6 object).
const LB6: &str = "bench_stamp_lb6";
const STAMP6: &str = "bench_stamp6";

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
        let real = Expect {
            counter: Some(counter::FORWARD),
            action: XDP_REDIRECT,
            news: News::None,
            fast: Fast::Never,
        };
        let fwd = |v: &Variant| Expect {
            counter: v.counts.then_some(counter::FORWARD),
            action: if v.redirects { XDP_REDIRECT } else { XDP_TX },
            ..real
        };
        let mut progs: Vec<(&str, Expect)> = vec![(LB, real)];
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
    /// path: the same frame of 256 established clients through `ikelb` with their slots
    /// unflagged (fast path) and flagged (persistence path), output and action compared byte
    /// for byte. The unflagged pass runs after one that refreshed the clients' tags, and must
    /// have taken the fast path for all 256 (retried if a tick began in between).
    fn lever_equivalence(&mut self, t: &Template, cfg: BenchCfg) -> Result<()> {
        let frames: Vec<Vec<u8>> = (0..256)
            .map(|i| frame::with_source(t, client_wire(cfg.base, i * (cfg.clients / 256))))
            .collect();
        let n = frames.len() as u64;
        let mut outs = Vec::new();
        for flagged in [false, true] {
            self.flag_ring(flagged)?;
            let mut attempts = 0;
            let out = loop {
                let before = self.events()?;
                let out = self.run_each(&frames)?;
                let fast = self.events()?[event::FAST_PATH as usize] - before[event::FAST_PATH as usize];
                attempts += 1;
                if flagged {
                    ensure!(fast == 0, "lever: {fast} frames of flagged slots took the fast path");
                    break out;
                }
                if fast == n {
                    break out;
                }
                ensure!(
                    attempts < 4,
                    "lever: only {fast} of {n} refreshed clients took the fast path"
                );
            };
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

    /// Each frame once through `ikelb` (no stamp): (action, frame out).
    fn run_each(&mut self, frames: &[Vec<u8>]) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for f in frames {
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
        Ok(out)
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
            action: XDP_TX,
            news: News::None,
            fast: Fast::Never,
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
        let prog = match (self.v6, prog) {
            (true, STAMP) => STAMP6,
            (true, LB) => LB6,
            (_, p) => p,
        };
        lb6::set_template_of(self.lb.dataplane_mut().ebpf_mut(), t)?;
        lb::set_cfg(self.lb.dataplane_mut().ebpf_mut(), cfg)?;
        let before = self.counters()?;
        let events_before = self.events()?;
        let md = frame::xdp_md(ingress, t.frame.len());
        let started = Instant::now();
        let r = lb::prog(self.lb.dataplane_mut().ebpf_mut(), prog)?
            .test_run(TestRunOptions {
                data_in: Some(&t.frame),
                ctx_in: Some(&md),
                repeat,
                ..TestRunOptions::new()
            })
            .with_context(|| format!("test_run {prog}"))?;
        let elapsed = started.elapsed();
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
            let after = self.events()?;
            let mut d = [0u64; EVENTS];
            for (i, x) in d.iter_mut().enumerate() {
                *x = after[i] - events_before[i];
                self.acc[i] += *x;
            }
            self.check_events(prog, &d, u64::from(repeat), e, elapsed)?;
        }
        Ok(r.duration.as_nanos() as f64)
    }

    /// The event deltas of one run against what `e` says every frame did.
    fn check_events(
        &self,
        prog: &str,
        d: &[u64; EVENTS],
        repeat: u64,
        e: Expect,
        elapsed: std::time::Duration,
    ) -> Result<()> {
        let ev = |i: u32| d[i as usize];
        let fail = |what: &str| {
            let all: Vec<String> = event::LABELS
                .iter()
                .zip(d)
                .filter(|(_, n)| **n != 0)
                .map(|(l, n)| format!("{l} {n}"))
                .collect();
            anyhow::anyhow!("{prog}: {what} (events of {repeat} frames: {})", all.join(", "))
        };
        for i in [
            event::PROMOTED,
            event::MAC_MOVE_ACCEPTED,
            event::MAC_MOVE_REJECTED,
            event::REVERSE_STATELESS,
        ] {
            if ev(i) != 0 {
                return Err(fail(&format!("unexpected {}", event::LABELS[i as usize])));
            }
        }
        if e.fast == Fast::Never && ev(event::FAST_PATH) != 0 {
            return Err(fail("frames took the fast path"));
        }
        let (ins, thr, lost) = (
            ev(event::PROBATION_INSERT),
            ev(event::PROBATION_THROTTLED),
            ev(event::LOST),
        );
        let want_lost = |l: bool| if l { repeat } else { 0 };
        match e.news {
            News::None => {
                if ins + thr + lost != 0 {
                    return Err(fail("new-client events from established clients"));
                }
            }
            News::Rationed { lost: l } => {
                ensure!(self.quota != 0, "{prog}: a rationed row without a ration");
                // Windows the run touched: the one it began in (partly used before), the
                // ones it spanned, the one it ended in.
                let windows = (elapsed.as_nanos() >> QUOTA_WINDOW_SHIFT) as u64 + 2;
                if ins + thr != repeat || lost != want_lost(l) {
                    return Err(fail("not every frame a new client"));
                }
                if ins > u64::from(self.quota) * windows {
                    return Err(fail(&format!(
                        "more inserts than the ration ({} per window, ≤ {windows} windows)",
                        self.quota
                    )));
                }
            }
            News::Inserted { lost: l } => {
                if ins != repeat || thr != 0 || lost != want_lost(l) {
                    return Err(fail("not every frame a probation insert"));
                }
            }
        }
        Ok(())
    }

    /// `EVENTS`, summed over the CPUs.
    fn events(&mut self) -> Result<[u64; EVENTS]> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.lb
                .dataplane_mut()
                .ebpf_mut()
                .map(lb_common::maps::EVENTS)
                .context("EVENTS")?,
        )?;
        let mut out = [0u64; EVENTS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = m.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Established entries for the clients of `cfg` in PERSIST_V4 (`lb::establish`): their
    /// router's MAC, the clients' interface.
    fn establish(&mut self, cfg: BenchCfg) -> Result<()> {
        let svc = self.lb.services()[0].value;
        let m = self.lb.ring_size();
        let ebpf = self.lb.dataplane_mut().ebpf_mut();
        let ring: Vec<u32> = {
            let rings: Array<&MapData, u32> =
                Array::try_from(ebpf.map("RINGS").context("RINGS")?)?;
            (svc.ring_base..svc.ring_base + m)
                .map(|i| rings.get(&i, 0))
                .collect::<Result<_, _>>()?
        };
        if self.v6 {
            let mut persist: HashMap<&mut MapData, PersistKeyV6, PersistValue> =
                HashMap::try_from(ebpf.map_mut("PERSIST_V6").context("PERSIST_V6")?)?;
            let (base, n) = (cfg.base, cfg.clients);
            return lb6::establish6(&mut persist, svc.id, &ring, HIT6, base, n, ROUTER_MAC, EXT_PORT);
        }
        let mut persist: HashMap<&mut MapData, PersistKeyV4, PersistValue> =
            HashMap::try_from(ebpf.map_mut("PERSIST_V4").context("PERSIST_V4")?)?;
        lb::establish(&mut persist, svc.id, &ring, cfg.base, cfg.clients, ROUTER_MAC, EXT_PORT)
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
        self.acc = [0; EVENTS];
        let (stamp, per) = self.trials(t, cfg, ingress, &[(LB, expect)])?;
        let events = self.acc;
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
            events,
            frames: self.trials as u64 * u64::from(REPEAT),
            fast_path_on: false,
        })
    }

    /// Fraction of 4096 clients spread over the key space that have an entry.
    fn resident(&mut self, cfg: BenchCfg) -> Result<f64> {
        let service = self.lb.services()[0].value.id;
        if self.v6 {
            return self.resident6(cfg, service);
        }
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
                service,
                client: client_wire(cfg.base, s * step),
            };
            if m.get(&key, 0).is_ok() {
                present += 1;
            }
        }
        Ok(f64::from(present) / f64::from(samples))
    }

    /// [`Self::resident`] over `PERSIST_V6`.
    fn resident6(&mut self, cfg: BenchCfg, service: u32) -> Result<f64> {
        let m: HashMap<&MapData, PersistKeyV6, PersistValue> = HashMap::try_from(
            self.lb
                .dataplane_mut()
                .ebpf_mut()
                .map("PERSIST_V6")
                .context("PERSIST_V6")?,
        )?;
        let samples = 4096u32.min(cfg.clients);
        let step = cfg.clients / samples;
        let mut present = 0;
        for s in 0..samples {
            let key = PersistKeyV6 {
                service,
                client: frame::client6_wire(HIT6, cfg.base, s * step),
            };
            if m.get(&key, 0).is_ok() {
                present += 1;
            }
        }
        Ok(f64::from(present) / f64::from(samples))
    }

    /// `BENCH_REV[i]` = the address of the backend client `i` is persisted to (IPv6: its low
    /// word; every backend is under `BACKEND_PREFIX6`).
    fn fill_rev(&mut self, cfg: BenchCfg) -> Result<()> {
        if self.v6 {
            return self.fill_rev6(cfg);
        }
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

impl Bench {
    fn fill_rev6(&mut self, cfg: BenchCfg) -> Result<()> {
        let prefix = &BACKEND_PREFIX6.octets()[..12];
        let mut addrs = std::collections::HashMap::new();
        for b in self.lb.backends() {
            let std::net::IpAddr::V6(a) = b.address else {
                bail!("backend {} of the IPv6 service is not IPv6", b.address)
            };
            let o = a.octets();
            ensure!(&o[..12] == prefix, "backend {a} is not under {BACKEND_PREFIX6}/96");
            addrs.insert(b.id, u32::from_ne_bytes([o[12], o[13], o[14], o[15]]));
        }
        let service = self.lb.services()[0].value.id;
        let ebpf = self.lb.dataplane_mut().ebpf_mut();
        let mut rev_vals = Vec::with_capacity(cfg.clients as usize);
        {
            let m: HashMap<&MapData, PersistKeyV6, PersistValue> =
                HashMap::try_from(ebpf.map("PERSIST_V6").context("PERSIST_V6")?)?;
            for i in 0..cfg.clients {
                let key = PersistKeyV6 {
                    service,
                    client: frame::client6_wire(HIT6, cfg.base, i),
                };
                let v = m
                    .get(&key, 0)
                    .with_context(|| format!("IPv6 client {i} has no persistence entry"))?;
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

/// `memlock` of the LRU hash map `name` of `ebpf`.
fn lru_memlock(ebpf: &aya::Ebpf, name: &str) -> Result<u64> {
    let Some(Map::LruHashMap(m)) = ebpf.map(name) else {
        bail!("{name} is not an LRU hash map");
    };
    fd_memlock(m.fd().as_fd().as_raw_fd())
}

/// The IPv6 maps' `memlock` at the sizes a dual-stack daemon gives them with `config`
/// (`persistence_entries_v6`, `probation_entries_v6`: by default the IPv4 sizes), from one
/// extra load of the object's maps, freed on return.
fn v6_memory(config: &Config) -> Result<V6Memory> {
    let ebpf = lb::load_v6_maps(config.persistence_entries_v6, config.probation_entries_v6)?;
    Ok(V6Memory {
        persist_entries: config.persistence_entries_v6,
        probation_entries: config.probation_entries_v6,
        persist_memlock: lru_memlock(&ebpf, "PERSIST_V6")?,
        probation_memlock: lru_memlock(&ebpf, "PROBATION_V6")?,
        proofs_memlock: lru_memlock(&ebpf, "PROOFS_V6")?,
    })
}

/// `memlock` of PERSIST_V4, PROBATION_V4, PROOFS_V4, REFRESHED_V4 and of every map of the
/// object, from /proc/self/fdinfo (the kernel's own accounting of what the map allocated —
/// an LRU hash preallocates every entry).
fn memory(ebpf: &aya::Ebpf, config: &Config) -> Result<Memory> {
    let persist_memlock = lru_memlock(ebpf, "PERSIST_V4")?;
    let probation_memlock = lru_memlock(ebpf, "PROBATION_V4")?;
    let proofs_memlock = lru_memlock(ebpf, "PROOFS_V4")?;
    let Some(Map::Array(refreshed)) = ebpf.map("REFRESHED_V4") else {
        bail!("REFRESHED_V4 is not an array");
    };
    let refreshed_memlock = fd_memlock(refreshed.fd().as_fd().as_raw_fd())?;
    let mut all = 0;
    for (_, m) in ebpf.maps() {
        if let Some(fd) = map_fd(m) {
            all += fd_memlock(fd)?;
        }
    }
    Ok(Memory {
        persist_entries: config.persistence_entries,
        persist_memlock,
        probation_entries: config.probation_entries,
        probation_memlock,
        proofs_memlock,
        v6: None,
        refreshed_entries: config.virtual_servers.len() as u32 * 2 * config.maglev_table_size,
        refreshed_memlock,
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

