//! Memory of the per-client maps, from `/proc/self/fdinfo`: the kernel's own accounting of
//! what each map allocated (an LRU hash preallocates every entry).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Map, MapData},
    Ebpf,
};
use lb_ctl::config::Config;

use crate::{family::Family, lb};

/// One family's per-client maps: `PERSIST_*` at `persist_entries`, `PROBATION_*` and
/// `PROOFS_*` at `probation_entries`, and each map fd's `memlock`.
#[derive(Clone, Copy)]
pub struct FamilyMemory {
    pub persist_entries: u32,
    pub probation_entries: u32,
    pub persist_memlock: u64,
    pub probation_memlock: u64,
    pub proofs_memlock: u64,
}

impl FamilyMemory {
    /// Bytes per entry of each map: persistence, probation, proofs.
    pub fn per_entry(&self) -> [(&'static str, f64); 3] {
        let per = |bytes: u64, entries: u32| bytes as f64 / f64::from(entries);
        [
            (
                "persistence",
                per(self.persist_memlock, self.persist_entries),
            ),
            (
                "probation",
                per(self.probation_memlock, self.probation_entries),
            ),
            ("proofs", per(self.proofs_memlock, self.probation_entries)),
        ]
    }
}

pub struct Memory {
    /// The IPv4 maps at their configured capacities (`persistence_entries`,
    /// `probation_entries`).
    pub v4: FamilyMemory,
    /// The IPv6 maps as a dual-stack daemon with the bench's config sizes them
    /// (`persistence_entries_v6`, `probation_entries_v6`: by default the IPv4 sizes).
    pub v6: FamilyMemory,
    /// REFRESHED_V4 (the slot fast path's refresh tags), as the daemon sizes it.
    pub refreshed_entries: u32,
    pub refreshed_memlock: u64,
    /// Every map of the object as the daemon sizes it, bench maps included (a few KiB).
    pub all_maps_memlock: u64,
}

impl Memory {
    /// The maps of `ebpf`, loaded like the daemon does for `config` (one IPv4 virtual
    /// server), and the IPv6 maps at the sizes `config` gives them, from one extra load of
    /// the object's maps, freed on return.
    pub fn measure(ebpf: &Ebpf, config: &Config) -> Result<Self> {
        let v4 = family::<Ipv4Addr>(ebpf, config.persistence_entries, config.probation_entries)?;
        let (persist6, probation6) = (config.persistence_entries_v6, config.probation_entries_v6);
        let v6 = family::<Ipv6Addr>(
            &lb::load_v6_maps(persist6, probation6)?,
            persist6,
            probation6,
        )?;
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
        Ok(Self {
            v4,
            v6,
            refreshed_entries: config.virtual_servers.len() as u32 * 2 * config.maglev_table_size,
            refreshed_memlock,
            all_maps_memlock: all,
        })
    }
}

/// Family `F`'s per-client maps in `ebpf`, sized `persist_entries` / `probation_entries`.
fn family<F: Family>(
    ebpf: &Ebpf,
    persist_entries: u32,
    probation_entries: u32,
) -> Result<FamilyMemory> {
    Ok(FamilyMemory {
        persist_entries,
        probation_entries,
        persist_memlock: lru_memlock(ebpf, F::PERSIST)?,
        probation_memlock: lru_memlock(ebpf, F::PROBATION)?,
        proofs_memlock: lru_memlock(ebpf, F::PROOFS)?,
    })
}

/// `memlock` of the LRU hash map `name` of `ebpf`.
fn lru_memlock(ebpf: &Ebpf, name: &str) -> Result<u64> {
    let Some(Map::LruHashMap(m)) = ebpf.map(name) else {
        bail!("{name} is not an LRU hash map");
    };
    fd_memlock(m.fd().as_fd().as_raw_fd())
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
