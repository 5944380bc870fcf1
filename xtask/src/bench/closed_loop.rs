//! Throughput through real veth in a single-core closed loop, once per address family:
//!
//! ```text
//!            ┌ to_a ══ in [gw-a: MAC swap + redirect] out ══ s0 [sink-a] ┐
//!  [gen] ────┼ to_b ══ in [gw-b: lb-ctl daemon, ikelb] out ══ s0 [sink-b] ┤ XDP_DROP +
//!  stamp,    ├ to_c ══ in [gw-c: nft DNAT jhash + conntrack] out ══ s0 [sink-c] ┤ per-CPU count
//!  live      └ to_d ══ in [gw-d: kernel forwarding] out ══ s0 [sink-d] ┘
//! ```
//!
//! The generator is the family's stamp (`bench_stamp`, `bench_stamp6`) driven by
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (batch 64) on the chosen `to_*` veth:
//! every frame is rewritten from the template (next client address) and sent with XDP_TX into
//! that gateway. Frames are bulk VPN data: ESP in UDP to 4500 of the VIP, 64 bytes on the
//! wire over IPv4, the same payload behind the IPv6 header over IPv6 (84). Everything
//! downstream — the gateway's NAPI, its XDP program or the kernel stack, the sink's NAPI and
//! XDP program — runs in the softirqs the generator's `local_bh_enable` triggers, on the
//! generator's CPU: one core carries the whole loop, so packets per second measure the cost
//! per packet of the path. The gateways stay configured for the whole run, so the variants
//! alternate (A B C D E, A B C D E, …) with nothing rebuilt in between.
//!
//! IPv4 ([`VARIANTS`]):
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
//! IPv6 ([`VARIANTS_V6`]), after the IPv4 rig is torn down (so the IPv4 loop runs exactly as
//! without it): `bench_fwd6`, and the two daemons with the IPv6 benchmark configuration (the
//! IPv6 VIP, 10 IPv6 backends held by the sinks, which answer neighbour discovery and the
//! daemons' ICMPv6 echoes through the kernel; `bench_sink6` counts and drops only UDP to
//! 500/4500). Gateways and sinks have IPv6 on without duplicate address detection.
//!
//! The clients are **established** in both ikelb gateways before each size is measured:
//! since the two-tier persistence only a promotion (the client echoing its backend's IKE
//! responder SPI) creates a `PERSIST_*` entry, and ESP from unknown sources would only reach
//! the rationed probation map, the bench writes each client's entry into the daemon's pinned
//! `PERSIST_V4` / `PERSIST_V6` as a promotion leaves it (`lb::establish`). Each ikelb sample
//! also records, from the gateway's `EVENTS`, the share of its frames that took the slot fast
//! path (the lever) and how many counted as new clients (0 unless entries were lost).

mod rig;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_common::event;

use crate::{
    family::Family,
    stats::median,
    sys::{NetNs, RunPrefix},
};
use rig::{Rig, CHUNK};

/// What a gateway of the loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The family's trivial forwarder (`Family::FWD`): MAC swap + devmap redirect.
    Trivial,
    /// ikelb, the slot fast path off or on.
    Ikelb { fast_path: bool },
    /// nftables DNAT `jhash saddr mod N` + conntrack, kernel forwarding.
    Nft,
    /// Kernel forwarding, a static route for the VIP.
    Kernel,
}

/// One compared path: its key (the JSON's, the chart's), what it is, how it is built.
pub struct Variant {
    pub key: &'static str,
    pub what: &'static str,
    pub path: Path,
}

impl Variant {
    const fn new(key: &'static str, what: &'static str, path: Path) -> Self {
        Self { key, what, path }
    }

    /// The ikelb gateway with the slot fast path on.
    pub fn lever(&self) -> bool {
        self.path == Path::Ikelb { fast_path: true }
    }
}

/// The IPv4 paths, in the order they alternate.
pub const VARIANTS: [Variant; 5] = [
    Variant::new("trivial", "MAC swap + redirect (XDP)", Path::Trivial),
    Variant::new(
        "ikelb",
        "ikelb (lb-ctl daemon), slot fast path off",
        Path::Ikelb { fast_path: false },
    ),
    Variant::new("nft", "nft DNAT jhash + conntrack", Path::Nft),
    Variant::new("kernel", "kernel forwarding", Path::Kernel),
    Variant::new(
        "lever",
        "ikelb, slot fast path on",
        Path::Ikelb { fast_path: true },
    ),
];

/// The IPv6 paths (keys of the JSON's `closed_loop_v6`): no nft or kernel-forwarding variant.
pub const VARIANTS_V6: [Variant; 3] = [
    Variant::new(
        "trivial_v6",
        "MAC swap + redirect of IPv6 frames (XDP, bench_fwd6)",
        Path::Trivial,
    ),
    Variant::new(
        "ikelb_v6",
        "ikelb (lb-ctl daemon), IPv6 VIP, slot fast path off",
        Path::Ikelb { fast_path: false },
    ),
    Variant::new(
        "lever_v6",
        "ikelb (lb-ctl daemon), IPv6 VIP, slot fast path on",
        Path::Ikelb { fast_path: true },
    ),
];

/// Client counts of the sweep.
pub const SIZES: [(&str, u32); 3] = [("1k", 1_000), ("64k", 65_536), ("1M", 1_000_000)];

/// What the loop of one family is made of, beyond its addresses (`Family`).
pub trait LoopFamily: Family {
    /// The compared paths, in the order they alternate.
    const VARIANTS: &'static [Variant];
    /// Progress lines: what they start with, and the width of the variant column.
    const LABEL: &'static str;
    const WIDTH: usize;
    /// A gateway's `ip -batch`: the addresses of `in` (clients' side) and `out` (backends').
    const GATEWAY: &'static str;
    /// A gateway's sysctls: forwarding on (and, over IPv4, no reverse-path filter).
    const FORWARDING: &'static [(&'static str, &'static str)];
    /// What follows a backend's address in the sink's `ip addr add`.
    const SINK_ADDR: &'static str;
    /// nftables' name of the family (`ip`, `ip6`).
    const NFT: &'static str;
    /// A namespace of the rig, this family on in it.
    fn namespace(name: String) -> Result<NetNs> {
        NetNs::new(name)
    }
}

impl LoopFamily for Ipv4Addr {
    const VARIANTS: &'static [Variant] = &VARIANTS;
    const LABEL: &'static str = "closed loop";
    const WIDTH: usize = 8;
    const GATEWAY: &'static str = "addr add 192.0.2.1/24 dev in\naddr add 10.0.0.1/24 dev out\n";
    const FORWARDING: &'static [(&'static str, &'static str)] = &[
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
        ("net/ipv4/conf/in/rp_filter", "0"),
    ];
    const SINK_ADDR: &'static str = "/24 dev s0";
    const NFT: &'static str = "ip";
}

impl LoopFamily for Ipv6Addr {
    const VARIANTS: &'static [Variant] = &VARIANTS_V6;
    const LABEL: &'static str = "closed loop IPv6";
    const WIDTH: usize = 10;
    const GATEWAY: &'static str =
        "addr add 2001:db8:e::1/64 dev in nodad\naddr add 2001:db8::1/64 dev out nodad\n";
    const FORWARDING: &'static [(&'static str, &'static str)] =
        &[("net/ipv6/conf/all/forwarding", "1")];
    const SINK_ADDR: &'static str = "/64 dev s0 nodad";
    const NFT: &'static str = "ip6";

    /// `NetNs::new` turns IPv6 off: on again for the links made in it from now on, without
    /// duplicate address detection or router solicitations.
    fn namespace(name: String) -> Result<NetNs> {
        let ns = NetNs::new(name)?;
        ns.enable_ipv6(&[])?;
        Ok(ns)
    }
}

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
    /// How the lever's ikelb was set up: "lb-ctl daemon" or "library".
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

    /// The IPv4 samples of an earlier `results.json`, and its machine line (for `--redraw`).
    pub fn from_json(text: &str) -> Result<(Self, String)> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let mut samples = Vec::new();
        for s in v["closed_loop_samples"]
            .as_array()
            .context("closed_loop_samples")?
        {
            let size = SIZES
                .iter()
                .find(|(k, _)| s["clients"] == *k)
                .context("unknown size")?
                .0;
            let variant = VARIANTS
                .iter()
                .find(|v| s["variant"] == v.key)
                .context("unknown variant")?
                .key;
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

/// The loop of family `F`: every size, the variants alternating, `o.repeats` times.
pub fn run<F: LoopFamily>(prefix: &RunPrefix, o: &Options) -> Result<Results> {
    let mut rig = Rig::<F>::build(prefix, o)?;
    let (label, width) = (F::LABEL, F::WIDTH);
    let mut samples = Vec::new();
    for (size, clients) in SIZES {
        rig.set_clients(clients)?;
        for vi in rig.ikelb() {
            rig.establish(vi, clients)?;
        }
        eprintln!("  {label} {size:>3}: {clients} clients established in both ikelb gateways");
        for repeat in 0..o.repeats {
            for (vi, v) in F::VARIANTS.iter().enumerate() {
                // Warm-up: in the first round of a size every path sees every client at
                // least twice (LRU entries, conntrack entries exist before measuring).
                let (min_frames, min_time) = if repeat == 0 {
                    (2 * u64::from(clients), Duration::from_secs(1))
                } else {
                    (0, Duration::from_millis(500))
                };
                rig.generate(vi, o.cpu, CHUNK, |elapsed, frames| {
                    elapsed < min_time || frames < min_frames
                })?;
                thread::sleep(Duration::from_millis(20));
                let before = rig.sink_count()?;
                let ev_before = rig.events(vi)?;
                let measure = o.measure;
                let (generated, secs) =
                    rig.generate(vi, o.cpu, CHUNK, |elapsed, _| elapsed < measure)?;
                thread::sleep(Duration::from_millis(50));
                let received = rig.sink_count()? - before;
                let ev_after = rig.events(vi)?;
                let mpps = received as f64 / secs / 1e6;
                let (fast_path_share, new_clients) = match (ev_before, ev_after) {
                    (Some(b), Some(a)) => {
                        let d = |e: u32| a[e as usize] - b[e as usize];
                        (
                            v.lever()
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
                let variant = v.key;
                eprintln!(
                    "  {label} {size:>3} {variant:width$} #{repeat}: {mpps:6.3} Mpps \
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
    rig.check_daemons()?;
    Ok(Results {
        lever_loaded_by: rig.lever_loaded_by().into(),
        samples,
        opts_cpu: o.cpu,
        measure_secs: o.measure.as_secs_f64(),
        repeats: o.repeats,
    })
}
