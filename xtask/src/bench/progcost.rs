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
//! all `repeat` frames must have taken the intended branch (`testrun`).
//!
//! Since the two-tier persistence (56e103b) only a promotion — the client echoing its
//! backend's IKE responder SPI — creates a `PERSIST_*` entry; a client seen for the first
//! time gets a probation entry at most. The hit rows therefore start from **established**
//! clients: their entries are written from user space (backend = the client's ring slot, as a
//! promotion would have left it; the clients' MAC and interface), then one warm-up pass runs
//! through the program. Rows whose sources are new (`miss*`, `spoofed_init*`) draw them from
//! 2^26 addresses, far more than both maps hold.
//!
//! The rows are written once for both families ([`Family`]): the IPv4 ones first, then the
//! IPv6 ones (`*_v6`), on the object loaded again for a virtual server with an IPv6 VIP and
//! IPv6 backends, with the IPv6 stamp (`bench_stamp6`, `bench_stamp_lb6`): the same rows at
//! the same client counts and the same checks, over `PERSIST_V6` / `PROBATION_V6`. Over IPv4
//! only: `hit_1k`, the attribution (its variants copy the IPv4 forward path), `pass`, the
//! `*_unlimited` rows and the lever's byte-for-byte check.

mod attribution;
mod memory;
mod paired;
mod testrun;

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{ensure, Result};
use lb_common::{counter, event};
use lb_ctl::state::IfaceInfo;

pub use attribution::Attribution;
pub use memory::Memory;
pub use paired::Pairs;

use crate::{
    closed_loop::SIZES,
    family::Family,
    frame::{self, BenchCfg, Template, ESP_IN_UDP, IKE, MODE_FORWARD, MODE_REVERSE},
    lb,
    sys::{self, NetNs, RunPrefix, Veth},
};
use testrun::{Bench, Expect, Fast};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Key space of the new sources (`Family::NEW_ESP`, `Family::SPOOFED`): 64× the default
/// persistence capacity, 256× the probation one, and more than the frames of one row
/// (≤ 20 × 2^20, stamp runs included), so no source of a row comes twice: every frame is a new
/// client.
const MISS_CLIENTS: u32 = 1 << 26;
/// Not a VIP, not a backend: the pass-through row's destination.
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// MAC of every backend's next hop (never used to send: test_run does not transmit).
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
/// The clients' previous hop.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
/// The interfaces of the config, in order: `ext` (the clients', port 0), `int`.
const IFACES: [&str; 2] = ["ext", "int"];
const EXT_PORT: u8 = 0;

/// Frames per test_run call.
const REPEAT: u32 = 1 << 20;

const EVENTS: usize = event::COUNT as usize;

/// One measured row.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: String,
    pub what: String,
    pub clients: u32,
    /// Median ns/frame of the stamp-only program and of stamp + ikelb.
    pub stamp_ns: f64,
    pub lb_ns: f64,
    /// lb_ns − stamp_ns.
    pub cost_ns: f64,
    /// Spread of the trials of stamp + ikelb (max − min), ns.
    pub spread_ns: f64,
    /// Fraction of a sample of the established clients present in `PERSIST_*` after the row's
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
        self.events[event::PROBATION_INSERT as usize]
            + self.events[event::PROBATION_THROTTLED as usize]
            > 0
    }
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
    /// IPv6 ÷ IPv4 hit path in pairs, fast path off then on (`paired`).
    pub pairs: Vec<Pairs>,
    pub ration: Ration,
    pub trials: usize,
    pub repeat: u32,
    pub cpu: usize,
}

pub fn run(prefix: &RunPrefix, cpu: usize, trials: usize) -> Result<ProgCost> {
    let ns = NetNs::new(prefix.name("prog"))?;
    let _link = Veth::new((&ns, IFACES[0]), (&ns, IFACES[1]))?;
    let mut ifaces = Vec::new();
    for name in IFACES {
        ifaces.push(IfaceInfo {
            name: name.into(),
            ifindex: ns.ifindex(name)?,
            mac: ns.mac(name)?,
        });
    }
    ns.run(|| -> Result<ProgCost> {
        sys::pin_to_cpu(cpu)?;
        measure(&ifaces, trials, cpu)
    })?
}

fn fwd_cfg(clients: u32, base: u32) -> BenchCfg {
    BenchCfg {
        mode: MODE_FORWARD,
        clients,
        base,
        _pad: 0,
    }
}

/// The frames of one family's rows and the client sets of its new sources.
struct Frames {
    /// ESP in UDP from an established client to the VIP.
    fwd: Template,
    /// A mid-session IKE message from an established client.
    ike: Template,
    /// An IKEv2 INFORMATIONAL request from an established client (read, its SA learnt).
    ike2: Template,
    /// A spoofed IKE_SA_INIT from a new source (`spoof`).
    init: Template,
    /// ESP in UDP of an SA nobody established, from a new source (`flood`).
    miss: Template,
    /// ESP in UDP of the established clients' SA from a new source (`flood`): a client whose
    /// address changed, steered to its SA's backend.
    moved: Template,
    /// ESP in UDP from a backend to an established client.
    rev: Template,
    flood: BenchCfg,
    spoof: BenchCfg,
}

impl Frames {
    fn new<F: Family>(ifaces: &[IfaceInfo]) -> Self {
        let (ext, int) = (ifaces[0].mac, ifaces[1].mac);
        let est = F::ESTABLISHED.prefix;
        Self {
            fwd: frame::template(ext, ROUTER_MAC, est, F::VIP, ESP_IN_UDP),
            ike: frame::template(ext, ROUTER_MAC, est, F::VIP, IKE),
            ike2: frame::ike_informational_template(ext, ROUTER_MAC, est, F::VIP),
            init: frame::ike_sa_init_template(ext, ROUTER_MAC, F::SPOOFED.prefix, F::VIP),
            miss: frame::template_spi(
                ext,
                ROUTER_MAC,
                F::NEW_ESP.prefix,
                F::VIP,
                ESP_IN_UDP,
                frame::UNKNOWN_SPI,
            ),
            moved: frame::template(ext, ROUTER_MAC, F::NEW_ESP.prefix, F::VIP, ESP_IN_UDP),
            rev: frame::template(int, BACKEND_MAC, F::BACKEND_PREFIX, est, ESP_IN_UDP),
            flood: fwd_cfg(MISS_CLIENTS, F::NEW_ESP.base),
            spoof: fwd_cfg(MISS_CLIENTS, F::SPOOFED.base),
        }
    }
}

fn measure(ifaces: &[IfaceInfo], trials: usize, cpu: usize) -> Result<ProgCost> {
    let config = lb::family_config::<Ipv4Addr>(&IFACES)?;
    let cpus = lb::quota_cpus();
    let ration = Ration {
        rate: config.new_client_rate,
        cpus,
        quota: config.new_client_quota(cpus),
    };
    let mut rows = Vec::new();
    let mut attribution = Vec::new();

    // IPv4, the attribution variants loaded too.
    let ebpf = lb::load_like_daemon(&config, testrun::REV_ENTRIES, false)?;
    let memory = Memory::measure(&ebpf, &config)?;
    let variants: Vec<&str> = attribution::VARIANTS.iter().map(|v| v.prog).collect();
    let mut b = Bench::<Ipv4Addr>::fill(ebpf, ifaces, trials, &config, &variants)?;
    let frames = Frames::new::<Ipv4Addr>(ifaces);
    b.forward_rows(&frames, &SIZES, Some(&mut attribution), &mut rows)?;
    eprintln!("  program cost: pass");
    let passed = Expect {
        counter: Some(counter::PASS_NOT_VIP),
        action: XDP_PASS,
        ..Expect::FORWARDED
    };
    let pass = frame::template(
        ifaces[0].mac,
        ROUTER_MAC,
        Ipv4Addr::UNSPECIFIED,
        OTHER,
        ESP_IN_UDP,
    );
    let cfg = fwd_cfg(65_536, Ipv4Addr::ESTABLISHED.base);
    let ext = b.ext;
    rows.push(b.row(
        "pass".into(),
        "not to a VIP, not from a backend: XDP_PASS".into(),
        &pass,
        cfg,
        ext,
        passed,
    )?);
    drop(b);

    // No ration (new_client_rate: 0): every new source gets a probation entry, evicting one.
    let mut unlimited = config.clone();
    unlimited.new_client_rate = 0;
    let mut b = Bench::<Ipv4Addr>::new(ifaces, trials, &unlimited, false)?;
    ensure!(
        b.quota == 0,
        "new_client_rate 0 must load NEW_CLIENT_QUOTA 0"
    );
    b.unlimited_rows(&frames, &mut rows)?;
    drop(b);

    // The lever (SLOT_FAST_PATH on): the same program and maps, loaded again.
    let mut b = Bench::<Ipv4Addr>::new(ifaces, trials, &config, true)?;
    b.lever_rows(&frames, true, &mut rows)?;
    drop(b);

    // IPv6: the object loaded for the IPv6 virtual server, fast path off, then on.
    let config = lb::family_config::<Ipv6Addr>(&IFACES)?;
    let frames = Frames::new::<Ipv6Addr>(ifaces);
    let mut b = Bench::<Ipv6Addr>::new(ifaces, trials, &config, false)?;
    b.forward_rows(&frames, &SIZES[1..], None, &mut rows)?;
    drop(b);
    let mut b = Bench::<Ipv6Addr>::new(ifaces, trials, &config, true)?;
    b.lever_rows(&frames, false, &mut rows)?;
    drop(b);

    for r in &mut rows {
        r.fast_path_on = r.key.starts_with("lever_");
    }
    let pairs = paired::hit_pairs(ifaces, trials)?;
    Ok(ProgCost {
        rows,
        attribution,
        memory,
        pairs,
        ration,
        trials,
        repeat: REPEAT,
        cpu,
    })
}

impl<F: Family> Bench<F> {
    /// Row `key` of `t` from the established clients of `cfg`, written first, then one
    /// warm-up pass of every client through the program (steady state); with the share of them
    /// still resident after the row.
    fn established_row(
        &mut self,
        key: String,
        what: String,
        t: &Template,
        cfg: BenchCfg,
        expect: Expect,
    ) -> Result<Row> {
        eprintln!("  program cost: {key}");
        self.establish(cfg)?;
        let (ext, warm_up) = (self.ext, cfg.clients.max(REPEAT));
        self.run(F::STAMP_LB, t, cfg, ext, warm_up, Some(expect))?;
        let mut row = self.row(key, what, t, cfg, ext, expect)?;
        row.resident = Some(self.resident(cfg)?);
        Ok(row)
    }

    /// Established clients at each of `sizes` (`hit_*`); at 64k also the reverse path and a
    /// spoofed IKE_SA_INIT flood; with `attribution`, the attribution above 1k; then ESP from
    /// new sources with 1M established (`miss`).
    fn forward_rows(
        &mut self,
        f: &Frames,
        sizes: &[(&str, u32)],
        mut attribution: Option<&mut Vec<Attribution>>,
        rows: &mut Vec<Row>,
    ) -> Result<()> {
        let (ext, int, sfx, what) = (self.ext, self.int, F::SUFFIX, F::WHAT);
        let forwarded = Expect::FORWARDED;
        for &(size, clients) in sizes {
            let cfg = fwd_cfg(clients, F::ESTABLISHED.base);
            let persist = F::PERSIST;
            rows.push(self.established_row(
                format!("hit_{size}{sfx}"),
                format!("{what}forward, established client ({persist} hit), {clients} clients"),
                &f.fwd,
                cfg,
                forwarded,
            )?);
            if clients == 65_536 {
                // The hit path with SPI learning: every IKE message of an established client
                // is read (SA steering, its IKE stage) and its initiator SPI looked up in
                // IKE_SAS — here a new SA each frame, so also inserted (the worst case). The
                // ESP hit rows above read each packet's SPI too (fast path off: no packet is
                // bulk) and learn it at a client's first packet of a tick.
                let key = format!("hit_ike_{size}{sfx}");
                eprintln!("  program cost: {key}");
                rows.push(self.row(
                    key,
                    format!(
                        "{what}forward, IKEv2 INFORMATIONAL of an established client, a new IKE SA each (IKE_SAS lookup + insert), {clients} clients"
                    ),
                    &f.ike2,
                    cfg,
                    ext,
                    forwarded,
                )?);
                eprintln!("  program cost: reverse{sfx}");
                self.fill_rev(cfg)?;
                let rcfg = BenchCfg {
                    mode: MODE_REVERSE,
                    ..cfg
                };
                rows.push(self.row(
                    format!("reverse{sfx}"),
                    format!("{what}reverse (backend → established client), {clients} clients"),
                    &f.rev,
                    rcfg,
                    int,
                    Expect::REVERSED,
                )?);
            }
            if let (Some(a), true) = (attribution.as_deref_mut(), clients != 1_000) {
                eprintln!("  program cost: attribution at {clients} clients");
                a.push(self.attribution(clients, cfg, &f.fwd)?);
            }
            if clients == 65_536 {
                let key = format!("spoofed_init_{size}{sfx}");
                eprintln!("  program cost: {key}");
                let rationed = Expect::rationed(false);
                self.run(F::STAMP_LB, &f.init, f.spoof, ext, REPEAT, Some(rationed))?;
                let mut row = self.row(
                    key,
                    format!(
                        "{what}spoofed IKE_SA_INIT, new source (of 2^26), {clients} established, default ration"
                    ),
                    &f.init,
                    f.spoof,
                    ext,
                    rationed,
                )?;
                row.resident = Some(self.resident(cfg)?);
                rows.push(row);
            }
        }
        eprintln!("  program cost: miss{sfx}");
        let established = fwd_cfg(1_000_000, F::ESTABLISHED.base);
        let lost = Expect::rationed(true);
        self.run(F::STAMP_LB, &f.miss, f.flood, ext, 2 * REPEAT, Some(lost))?;
        let mut row = self.row(
            format!("miss{sfx}"),
            format!(
                "{what}forward, ESP from a new source (of 2^26; miss in both maps, lost), default ration"
            ),
            &f.miss,
            f.flood,
            ext,
            lost,
        )?;
        row.resident = Some(self.resident(established)?);
        rows.push(row);
        // The SPI lookup of SA steering: the same new sources, now with the ESP SA the
        // established clients' frames carried (learned by the hit rows above), each steered
        // to that SA's backend — none lost — and rationed into probation like any new client.
        eprintln!("  program cost: steered{sfx}");
        let steered = Expect::rationed(false);
        self.run(F::STAMP_LB, &f.moved, f.flood, ext, REPEAT, Some(steered))?;
        let mut row = self.row(
            format!("steered{sfx}"),
            format!(
                "{what}forward, ESP of a known SA from a new source (of 2^26; ESP_SAS lookup, steered), default ration"
            ),
            &f.moved,
            f.flood,
            ext,
            steered,
        )?;
        ensure!(
            row.share(event::SA_STEERED) == 1.0,
            "steered{sfx}: {} of {} frames steered",
            row.events[event::SA_STEERED as usize],
            row.frames
        );
        row.resident = Some(self.resident(established)?);
        rows.push(row);
        Ok(())
    }

    /// On an object loaded without a ration: a spoofed IKE_SA_INIT flood with 64k established
    /// and ESP from new sources with 1M established, after the probation map is full.
    fn unlimited_rows(&mut self, f: &Frames, rows: &mut Vec<Row>) -> Result<()> {
        let ext = self.ext;
        for (key, established, t, sources, lost, what) in [
            (
                "spoofed_init_64k_unlimited",
                65_536,
                &f.init,
                f.spoof,
                false,
                "spoofed IKE_SA_INIT, new source (of 2^26), 65536 established, no ration: probation insert + eviction",
            ),
            (
                "miss_unlimited",
                1_000_000,
                &f.miss,
                f.flood,
                true,
                "forward, ESP from a new source (of 2^26), no ration: probation insert + eviction",
            ),
        ] {
            let key = format!("{key}{}", F::SUFFIX);
            eprintln!("  program cost: {key}");
            let cfg = fwd_cfg(established, F::ESTABLISHED.base);
            self.establish(cfg)?;
            let forwarded = Expect::FORWARDED;
            self.run(F::STAMP_LB, &f.fwd, cfg, ext, established.max(REPEAT), Some(forwarded))?;
            // Fill the probation map (2^18 entries by default) so that every insert evicts.
            let inserted = Expect::inserted(lost);
            self.run(F::STAMP_LB, t, sources, ext, 2 * REPEAT, Some(inserted))?;
            let mut row = self.row(key, format!("{}{what}", F::WHAT), t, sources, ext, inserted)?;
            row.resident = Some(self.resident(cfg)?);
            rows.push(row);
        }
        Ok(())
    }

    /// On an object loaded with the lever on: ESP from established clients in unchanged slots
    /// at 64k and 1M; at 64k also an IKE message (the persistence path), a spoofed
    /// IKE_SA_INIT flood and ESP with every slot flagged changed. With `equivalence`, 256
    /// clients' frames are checked to leave identically through both paths.
    fn lever_rows(&mut self, f: &Frames, equivalence: bool, rows: &mut Vec<Row>) -> Result<()> {
        if equivalence {
            lb::load_prog(self.lb.dataplane_mut().ebpf_mut(), lb_ctl::XDP_PROGRAM)?;
        }
        let (ext, sfx, what) = (self.ext, F::SUFFIX, F::WHAT);
        let forwarded = Expect::FORWARDED;
        let bulk = Expect {
            fast: Fast::Any,
            ..forwarded
        };
        for &(size, clients) in &SIZES[1..] {
            let cfg = fwd_cfg(clients, F::ESTABLISHED.base);
            // The warm-up writes every client's REFRESHED_V4 tag (its first packet of the tick).
            rows.push(self.established_row(
                format!("lever_hit_{size}{sfx}"),
                format!(
                    "{what}lever on: ESP in UDP, unchanged slot, established, {clients} clients"
                ),
                &f.fwd,
                cfg,
                bulk,
            )?);
            if clients != 65_536 {
                continue;
            }
            if equivalence {
                self.lever_equivalence(&f.fwd, cfg)?;
            }
            rows.push(self.row(
                format!("lever_ike_{size}{sfx}"),
                format!("{what}lever on: IKE message (persistence path), {clients} clients"),
                &f.ike,
                cfg,
                ext,
                forwarded,
            )?);
            // The default setting's flood cost: a throttled IKE_SA_INIT in an unchanged slot
            // reads neither map (`select::forward`). Run once first so the ration is spent.
            let key = format!("lever_spoofed_init_{size}{sfx}");
            eprintln!("  program cost: {key}");
            let rationed = Expect::rationed(false);
            self.run(F::STAMP_LB, &f.init, f.spoof, ext, REPEAT, Some(rationed))?;
            rows.push(self.row(
                key,
                format!(
                    "{what}lever on: spoofed IKE_SA_INIT, new source (of 2^26), unchanged slot, {clients} established, default ration"
                ),
                &f.init,
                f.spoof,
                ext,
                rationed,
            )?);
            self.flag_ring(true)?;
            let r = self.row(
                format!("lever_changed_{size}{sfx}"),
                format!("{what}lever on: ESP, slot flagged changed, {clients} clients"),
                &f.fwd,
                cfg,
                ext,
                forwarded,
            );
            self.flag_ring(false)?;
            rows.push(r?);
        }
        Ok(())
    }
}
