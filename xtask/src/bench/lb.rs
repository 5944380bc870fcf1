//! ikelb as the daemon sets it up: the benchmark's configuration file, and (for the program
//! cost) the embedded object loaded with the daemon's globals and map sizes and filled by
//! `lb_ctl`'s own control logic (`Balancer`), plus the bench programs of the same object and
//! established clients of either family.

use std::{borrow::BorrowMut, fmt::Display, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb_common::{globals, maps, PersistValue, RING_BACKEND_MASK, TICK_SHIFT};
use lb_ctl::{
    config::{self, Config},
    dataplane::AyaDataplane,
    health::HealthState,
    state::{backend_capacity, Balancer, IfaceInfo, NextHop},
    EBPF_OBJECT,
};

use crate::{
    family::{Clients, Family},
    frame::BenchCfg,
};

pub const HASH_SEED: u32 = 0x5eed;
/// Backends of the benchmark's virtual server (`Family::backend`).
pub const BACKENDS: u32 = 10;

/// Where the daemon keeps its runtime files (all inside the run's temporary directory).
pub struct DaemonPaths<'a> {
    pub dir: &'a Path,
    pub bpffs: &'a Path,
}

/// The benchmark's configuration: one virtual server (UDP 500/4500 + ESP) at `vip` over
/// `backends`, every other key at its default (persistence capacity included) except where
/// the daemon must keep its files in the run's directory; `extra` is appended (top-level
/// keys).
pub fn config_yaml<A: Display>(
    interfaces: &[&str],
    vip: A,
    backends: &[A],
    paths: Option<&DaemonPaths<'_>>,
    extra: &str,
) -> String {
    let mut y = format!(
        "interfaces: [{}]\nmode: nat\nxdp_mode: native\nhash_seed: {HASH_SEED:#x}\n\
         virtual_servers:\n  - name: bench\n    vip: {vip}\n    ports: [500, 4500]\n    \
         esp: true\n    backends:\n",
        interfaces.join(", ")
    );
    for b in backends {
        y.push_str(&format!("      - address: {b}\n"));
    }
    // ICMP only: the bench's backends answer no IKE on UDP 500.
    y.push_str("health_check:\n  interval: 5s\n  timeout: 2s\n  probes: [icmp]\n");
    if let Some(p) = paths {
        y.push_str(&format!(
            "control:\n  socket: {}\nmetrics:\n  listen: 127.0.0.1:9435\nstate_dir: {}\nbpffs: {}\n",
            p.dir.join("ctl.sock").display(),
            p.dir.join("state").display(),
            p.bpffs.display()
        ));
    }
    y + extra
}

/// [`config_yaml`] for family `F`'s VIP and the [`BACKENDS`] backends.
pub fn family_yaml<F: Family>(
    interfaces: &[&str],
    paths: Option<&DaemonPaths<'_>>,
    extra: &str,
) -> String {
    let backends: Vec<F> = (0..BACKENDS).map(F::backend).collect();
    config_yaml(interfaces, F::VIP, &backends, paths, extra)
}

/// [`family_yaml`] as the daemon parses it (no runtime paths).
pub fn family_config<F: Family>(interfaces: &[&str]) -> Result<Config> {
    parse_config(&family_yaml::<F>(interfaces, None, ""))
}

pub fn parse_config(yaml: &str) -> Result<Config> {
    config::parse("bench.yaml", yaml).map_err(|e| anyhow::anyhow!("bench config: {e}"))
}

/// CPUs the new-client ration is spread over (`NEW_CLIENT_QUOTA` =
/// `Config::new_client_quota(cpus)`): the possible CPUs, one `QUOTA` slot each.
pub fn quota_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n.get())
}

/// Loads the embedded object with the globals and map sizes `lb-ctl daemon` uses for
/// `config` (mirrors `load` in `lb-ctl/src/daemon/load.rs`: the new-client ration from `new_client_rate`,
/// the probation map from `probation_entries`, the refresh stamps like `RINGS`), plus
/// the size of `BENCH_REV`. `fast_path` turns the `SLOT_FAST_PATH` lever on or off whatever
/// `config` says.
pub fn load_like_daemon(config: &Config, rev_entries: u32, fast_path: bool) -> Result<Ebpf> {
    anyhow::ensure!(
        !EBPF_OBJECT.is_empty(),
        "lb-ctl was built with AYA_BUILD_SKIP=1: no XDP object embedded"
    );
    let services = config.virtual_servers.len() as u32;
    let capacity = backend_capacity(config.backend_count());
    // One tick stamp per ring slot, as the daemon sizes it.
    let refreshed = services * 2 * config.maglev_table_size;
    // 1 and 1 without an IPv6 service, as the daemon sizes them.
    let (v6_persist, v6_probation) = config.v6_map_entries();
    // The daemon's own globals (SA steering on, as by default), the lever as asked.
    let globals: Vec<(&str, u32)> = lb_ctl::daemon::program_globals(config, quota_cpus())
        .into_iter()
        .map(|(name, v)| match name {
            globals::SLOT_FAST_PATH => (name, u32::from(fast_path)),
            _ => (name, v),
        })
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    let sas = config.persistence_entries.saturating_add(v6_persist);
    let ebpf = loader
        .map_max_entries(maps::IKE_SAS, sas)
        .map_max_entries(maps::ESP_SAS, sas)
        .map_max_entries(maps::RINGS, services * 2 * config.maglev_table_size)
        .map_max_entries(maps::SERVICES, services)
        .map_max_entries(maps::VIPS_V4, services)
        .map_max_entries(maps::VIPS_V6, 1)
        .map_max_entries(maps::BACKENDS, capacity)
        .map_max_entries(maps::BACKEND_IDS_V4, capacity)
        .map_max_entries(maps::BACKEND_IDS_V6, capacity)
        .map_max_entries(maps::BACKEND_STATS, capacity * 2)
        .map_max_entries(maps::PERSIST_V4, config.persistence_entries)
        .map_max_entries(maps::PERSIST_V6, v6_persist)
        .map_max_entries(maps::PROBATION_V4, config.probation_entries)
        .map_max_entries(maps::PROBATION_V6, v6_probation)
        .map_max_entries(maps::PROOFS_V4, config.probation_entries)
        .map_max_entries(maps::PROOFS_V6, v6_probation)
        .map_max_entries(maps::REFRESHED_V4, refreshed)
        .map_max_entries("BENCH_REV", rev_entries.max(1))
        .load(EBPF_OBJECT)
        .context("loading the XDP object")?;
    Ok(ebpf)
}

/// The object's maps only (no program is loaded) with `PERSIST_V6` at `persist` entries and
/// `PROBATION_V6`, `PROOFS_V6` at `probation`, as a dual-stack daemon sizes them from
/// `persistence_entries_v6` / `probation_entries_v6`; the IPv4 per-client maps at 1 entry.
/// What the IPv6 maps' memory per entry is read from.
pub fn load_v6_maps(persist: u32, probation: u32) -> Result<Ebpf> {
    anyhow::ensure!(
        !EBPF_OBJECT.is_empty(),
        "lb-ctl was built with AYA_BUILD_SKIP=1: no XDP object embedded"
    );
    EbpfLoader::new()
        .map_max_entries(maps::PERSIST_V4, 1)
        .map_max_entries(maps::PROBATION_V4, 1)
        .map_max_entries(maps::PROOFS_V4, 1)
        .map_max_entries(maps::PERSIST_V6, persist)
        .map_max_entries(maps::PROBATION_V6, probation)
        .map_max_entries(maps::PROOFS_V6, probation)
        .load(EBPF_OBJECT)
        .context("loading the XDP object's maps (IPv6 sizes)")
}

/// Fills the maps exactly as the daemon does (`Balancer::apply`), every backend usable with
/// next hop `backend_mac` out of interface port 1.
pub fn fill_like_daemon(
    ebpf: Ebpf,
    config: &Config,
    ifaces: Vec<IfaceInfo>,
    backend_mac: [u8; 6],
) -> Result<Balancer<AyaDataplane>> {
    let capacity = backend_capacity(config.backend_count());
    let mut b = Balancer::new(AyaDataplane::new(ebpf), config, ifaces, capacity)
        .map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))?;
    let ids: Vec<u32> = b.backends().map(|b| b.id).collect();
    for id in ids {
        b.set_next_hop(
            id,
            Some(NextHop {
                port: 1,
                mac: backend_mac,
            }),
        )
        .map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))?;
        // What the health checker reports for a backend that answers.
        b.set_health(id, HealthState::Up)
            .map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))?;
    }
    b.apply()
        .map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))?;
    Ok(b)
}

/// Loads program `name` of `ebpf` into the kernel (verifier) and returns it.
pub fn load_prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is not in the object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    lb_ctl::kernel::load_xdp(p).with_context(|| format!("loading {name}"))?;
    Ok(p)
}

pub fn prog<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    ebpf.program(name)
        .with_context(|| format!("program {name} is not in the object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

pub fn set_cfg(ebpf: &mut Ebpf, cfg: BenchCfg) -> Result<()> {
    let mut m: Array<&mut MapData, BenchCfg> =
        Array::try_from(ebpf.map_mut("BENCH_CFG").context("BENCH_CFG")?)?;
    m.set(0, &cfg, 0)?;
    Ok(())
}

/// Established clients: writes a `PERSIST_*` entry for `n` clients of `clients` of service
/// `service` as a promotion leaves it — the backend of the client's slot in `ring` (the
/// service's active Maglev table), last seen now, and the MAC and port its frames arrive with
/// (so the data path never considers a MAC move). Since the two-tier persistence only a
/// promotion (the client echoing its backend's IKE responder SPI) creates such an entry;
/// traffic from unknown sources only reaches the probation map, rationed.
pub fn establish<F: Family, T: BorrowMut<MapData>>(
    persist: &mut HashMap<T, F::Key, PersistValue>,
    service: u32,
    ring: &[u32],
    clients: Clients<F>,
    n: u32,
    mac: [u8; 6],
    port: u8,
) -> Result<()> {
    let m = ring.len() as u32;
    anyhow::ensure!(m > 0, "empty ring");
    let now = now_ticks();
    for i in 0..n {
        if i % 65_536 == 0 {
            crate::sys::check_interrupted()?;
        }
        let client = F::client(clients.prefix, clients.base, i);
        let slot = lb_common::hash::ring_slot(F::hash(&client), m);
        let value = PersistValue {
            backend: ring[slot as usize] & RING_BACKEND_MASK,
            atime: now,
            client_mac: mac,
            port,
            flags: 0,
        };
        persist
            .insert(&F::key(service, client), &value, 0)
            .with_context(|| format!("{} insert", F::PERSIST))?;
    }
    Ok(())
}

/// Now in persistence ticks, as the data path reads it (`bpf_ktime_get_coarse_ns`, i.e.
/// CLOCK_MONOTONIC_COARSE, >> TICK_SHIFT).
pub fn now_ticks() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    (ns >> TICK_SHIFT) as u32
}
