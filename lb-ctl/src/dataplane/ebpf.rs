//! [`AyaDataplane`]: the [`Dataplane`] over the real maps of a loaded `lb-ebpf` object —
//! arrays, hashes and the devmap written through aya, per-CPU counters summed, the
//! persistence and probation maps read by bounded walks through duplicated descriptors.

use aya::{
    maps::{Array, DevMap, HashMap, Map, MapData, MapError, PerCpuArray},
    Ebpf, Pod,
};
use lb_common::{
    counter, event, maps, Backend, Iface, PersistKeyV4, PersistKeyV6, PersistValue,
    ProbationValue, Service, FAMILY_V4, INGRESS_SLOTS, OWN_ADDRESS_ID,
};

use std::net::IpAddr;

use super::{
    addr_words, ingress_value, probation_as_persist, Dataplane, DataplaneError, PersistEntry,
    PersistReader, PersistV4Reader,
};

mod vip_index;

/// Every entry of persistence or probation map `m`, each once: a bounded walk
/// ([`crate::scan::walk`]; a walk stopped at `max_entries` is logged and its entries kept).
fn read_persistence<K: Pod + Eq + std::hash::Hash, V: Pod>(
    m: &crate::scan::BpfMap<K, V>,
) -> Result<Vec<(K, V)>, DataplaneError> {
    let w = crate::scan::walk(m)?;
    if w.stats.truncated {
        tracing::warn!(
            map = w.stats.map,
            max_entries = w.stats.max_entries,
            "map walk stopped at max_entries visits before the end of the map"
        );
    }
    Ok(w.entries)
}

/// Loads the program anew with `PERSIST_TIMEOUT_TICKS` = the `u32`, over the pinned maps, and
/// moves every link to it; returns the new object (the daemon's: `daemon/swap.rs`).
pub type Swapper = Box<dyn FnMut(u32) -> Result<Ebpf, String> + Send>;

/// The maps of a loaded `lb-ebpf` object.
pub struct AyaDataplane {
    ebpf: Ebpf,
    swapper: Option<Swapper>,
}

impl AyaDataplane {
    pub fn new(ebpf: Ebpf) -> Self {
        Self {
            ebpf,
            swapper: None,
        }
    }

    /// [`Dataplane::swap_program`] goes through `swapper` from now on (without one it fails).
    pub fn set_swapper(&mut self, swapper: Swapper) {
        self.swapper = Some(swapper);
    }

    /// The object, for attaching and detaching its program.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn map_mut(&mut self, map: &'static str) -> Result<&mut Map, DataplaneError> {
        self.ebpf
            .map_mut(map)
            .ok_or(DataplaneError::MissingMap { map })
    }

    fn map(&self, map: &'static str) -> Result<&Map, DataplaneError> {
        self.ebpf.map(map).ok_or(DataplaneError::MissingMap { map })
    }

    /// Entries `0..count` of the per-CPU `u64` array `map`, each summed over the CPUs
    /// (`COUNTERS`, `EVENTS`).
    fn per_cpu_sums(&self, map: &'static str, count: u32) -> Result<Vec<u64>, DataplaneError> {
        let c: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        (0..count)
            .map(|i| {
                c.get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .map_err(|source| DataplaneError::Read {
                        map,
                        source: Box::new(source),
                    })
            })
            .collect()
    }

    fn hash_insert<K: Pod + std::fmt::Debug, V: Pod>(
        &mut self,
        map: &'static str,
        key: K,
        value: V,
    ) -> Result<(), DataplaneError> {
        let mut m: HashMap<&mut MapData, K, V> =
            HashMap::try_from(self.map_mut(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        m.insert(&key, &value, 0)
            .map_err(|source| DataplaneError::Update {
                map,
                key: format!("{key:?}"),
                source: Box::new(source),
            })
    }

    /// Deletes `key` of a map with u32 values; a key that is not there is no error.
    fn hash_remove<K: Pod + std::fmt::Debug>(
        &mut self,
        map: &'static str,
        key: K,
    ) -> Result<(), DataplaneError> {
        self.hash_remove_of::<K, u32>(map, key)
    }

    /// Deletes `key` of a map with `V` values; a key that is not there is no error (the
    /// goal is its absence).
    fn hash_remove_of<K: Pod + std::fmt::Debug, V: Pod>(
        &mut self,
        map: &'static str,
        key: K,
    ) -> Result<(), DataplaneError> {
        let mut m: HashMap<&mut MapData, K, V> =
            HashMap::try_from(self.map_mut(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        match m.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            // bpf_map_delete_elem reports a missing key as ENOENT (e.g. a backend removed
            // before it was ever written).
            Err(MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(DataplaneError::Delete {
                map,
                key: format!("{key:?}"),
                source: Box::new(source),
            }),
        }
    }

    /// Writes `key` only if it is not there (`new_only`, `BPF_NOEXIST`: `EEXIST` otherwise)
    /// or only if it is (`BPF_EXIST`: `ENOENT` otherwise): `Ok(false)` when it failed so.
    fn write_if<K: Pod + std::fmt::Debug, V: Pod>(
        &mut self,
        map: &'static str,
        key: K,
        value: V,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        let mut m: HashMap<&mut MapData, K, V> =
            HashMap::try_from(self.map_mut(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        // BPF_NOEXIST, BPF_EXIST (include/uapi/linux/bpf.h).
        let (flags, refused) = if new_only { (1, libc::EEXIST) } else { (2, libc::ENOENT) };
        match m.insert(&key, &value, flags) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(refused) =>
            {
                Ok(false)
            }
            Err(source) => Err(DataplaneError::Update {
                map,
                key: format!("{key:?}"),
                source: Box::new(source),
            }),
        }
    }

    fn array_set<V: Pod>(
        &mut self,
        map: &'static str,
        index: u32,
        value: V,
    ) -> Result<(), DataplaneError> {
        let mut m: Array<&mut MapData, V> =
            Array::try_from(self.map_mut(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        m.set(index, &value, 0)
            .map_err(|source| DataplaneError::Update {
                map,
                key: index.to_string(),
                source: Box::new(source),
            })
    }
}

impl Dataplane for AyaDataplane {
    fn set_iface(&mut self, port: u32, iface: &Iface, roles: u32) -> Result<(), DataplaneError> {
        let value = ingress_value(port, roles);
        self.array_set(maps::IFACES, port, *iface)?;
        self.hash_insert(maps::IFINDEX_PORTS, iface.ifindex, value)?;
        if iface.ifindex < INGRESS_SLOTS {
            self.array_set(maps::INGRESS, iface.ifindex, value)?;
        }
        let map = maps::TX_PORTS;
        let mut tx: DevMap<&mut MapData> =
            DevMap::try_from(self.map_mut(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        tx.set(port, iface.ifindex, None, 0)
            .map_err(|source| DataplaneError::UpdateDevMap {
                map,
                key: port.to_string(),
                source: Box::new(source),
            })
    }

    fn forget_other_ifaces(&mut self, keep: &[u32]) -> Result<usize, DataplaneError> {
        let map = maps::IFINDEX_PORTS;
        let stale: Vec<u32> = {
            let m: HashMap<&MapData, u32, u32> =
                HashMap::try_from(self.map(map)?).map_err(|source| DataplaneError::MapType {
                    map,
                    source: Box::new(source),
                })?;
            m.keys()
                .collect::<Result<Vec<u32>, MapError>>()
                .map_err(|source| DataplaneError::Read {
                    map,
                    source: Box::new(source),
                })?
                .into_iter()
                .filter(|i| !keep.contains(i))
                .collect()
        };
        for &ifindex in &stale {
            // INGRESS first: the data path's per-packet read stops naming the port before
            // the fallback entry goes.
            if ifindex < INGRESS_SLOTS {
                self.array_set(maps::INGRESS, ifindex, 0u32)?;
            }
            self.hash_remove(map, ifindex)?;
        }
        Ok(stale.len())
    }

    fn set_service(&mut self, service: &Service) -> Result<(), DataplaneError> {
        self.flip(service)?;
        // The index last: it names the service only once both maps hold it.
        if service.family == FAMILY_V4 {
            self.index_vip(service.vip[0], None)
        } else {
            self.index_vip(service.vip, None)
        }
    }

    /// The two value writes of [`set_service`](Dataplane::set_service) only: a flip changes a
    /// written service's `ring_base`, never its VIP, so its `VIP_INDEX_*` slot stays right.
    fn flip(&mut self, service: &Service) -> Result<(), DataplaneError> {
        if service.family == FAMILY_V4 {
            self.hash_insert(maps::VIPS_V4, service.vip[0], *service)?;
        } else {
            self.hash_insert(maps::VIPS_V6, service.vip, *service)?;
        }
        self.array_set(maps::SERVICES, service.id, *service)
    }

    fn forget_service(&mut self, service: &Service, slot: bool) -> Result<(), DataplaneError> {
        // The index first: it stops naming the service before the maps forget it.
        if service.family == FAMILY_V4 {
            self.index_vip(service.vip[0], Some(service.vip[0]))?;
            self.hash_remove_of::<_, Service>(maps::VIPS_V4, service.vip[0])?;
        } else {
            self.index_vip(service.vip, Some(service.vip))?;
            self.hash_remove_of::<_, Service>(maps::VIPS_V6, service.vip)?;
        }
        if slot {
            self.array_set(maps::SERVICES, service.id, Service::default())?;
        }
        Ok(())
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.array_set(maps::BACKENDS, id, *backend)?;
        // The family of a backend is its service's; an IPv4 address has words 1–3 zero and
        // no IPv6 backend is accepted yet (config refuses them).
        if backend.addr[1..] == [0, 0, 0] {
            self.hash_insert(maps::BACKEND_IDS_V4, backend.addr[0], id)
        } else {
            self.hash_insert(maps::BACKEND_IDS_V6, backend.addr, id)
        }
    }

    fn remove_backend(&mut self, id: u32, index: Option<[u32; 4]>) -> Result<(), DataplaneError> {
        self.array_set(maps::BACKENDS, id, Backend::default())?;
        let Some(addr) = index else {
            return Ok(());
        };
        // As in `set_backend`: words 1–3 zero means IPv4.
        if addr[1..] == [0, 0, 0] {
            self.hash_remove(maps::BACKEND_IDS_V4, addr[0])
        } else {
            self.hash_remove(maps::BACKEND_IDS_V6, addr)
        }
    }

    fn set_own_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let w = addr_words(addr);
        match addr {
            IpAddr::V4(_) => self.hash_insert(maps::BACKEND_IDS_V4, w[0], OWN_ADDRESS_ID),
            IpAddr::V6(_) => self.hash_insert(maps::BACKEND_IDS_V6, w, OWN_ADDRESS_ID),
        }
    }

    fn remove_own_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let w = addr_words(addr);
        // Only an own-address entry: a backend's (which overwrote it) stays.
        match addr {
            IpAddr::V4(_) => {
                if self.persist_get::<u32, u32>(maps::BACKEND_IDS_V4, &w[0])?
                    == Some(OWN_ADDRESS_ID)
                {
                    self.hash_remove(maps::BACKEND_IDS_V4, w[0])?;
                }
            }
            IpAddr::V6(_) => {
                if self.persist_get::<[u32; 4], u32>(maps::BACKEND_IDS_V6, &w)?
                    == Some(OWN_ADDRESS_ID)
                {
                    self.hash_remove(maps::BACKEND_IDS_V6, w)?;
                }
            }
        }
        Ok(())
    }

    fn own_addresses(&self) -> Result<Vec<IpAddr>, DataplaneError> {
        fn own<K: Pod>(dp: &AyaDataplane, map: &'static str) -> Result<Vec<K>, DataplaneError> {
            // Bounded by the map's size (the backends' capacity): read whole.
            dp.persist_map::<K, u32>(map)?
                .iter()
                .filter_map(|r| match r {
                    Ok((k, id)) if id == OWN_ADDRESS_ID => Some(Ok(k)),
                    Ok(_) => None,
                    Err(source) => Some(Err(DataplaneError::Read {
                        map,
                        source: Box::new(source),
                    })),
                })
                .collect()
        }
        let mut out: Vec<IpAddr> = own::<u32>(self, maps::BACKEND_IDS_V4)?
            .into_iter()
            .map(|k| IpAddr::from(k.to_ne_bytes()))
            .collect();
        out.extend(
            own::<[u32; 4]>(self, maps::BACKEND_IDS_V6)?
                .iter()
                .map(|w| super::words_addr(lb_common::FAMILY_V6, w)),
        );
        Ok(out)
    }

    fn write_ring_slots(&mut self, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        let map = maps::RINGS;
        let mut rings: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        for &(index, value) in slots {
            rings
                .set(index, &value, 0)
                .map_err(|source| DataplaneError::Update {
                    map,
                    key: index.to_string(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    fn swap_program(&mut self, persist_timeout_ticks: u32) -> Result<(), DataplaneError> {
        let swap = self
            .swapper
            .as_mut()
            .ok_or_else(|| DataplaneError::Swap("no program loader (not a daemon)".into()))?;
        let new = swap(persist_timeout_ticks).map_err(DataplaneError::Swap)?;
        // No link holds the old object's program now: dropping it frees it.
        self.ebpf = new;
        Ok(())
    }

    fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
        self.per_cpu_sums(maps::COUNTERS, counter::COUNT)
    }

    fn events(&self) -> Result<Vec<u64>, DataplaneError> {
        self.per_cpu_sums(maps::EVENTS, event::COUNT)
    }

    fn persistence_v4(&self) -> Result<Vec<(PersistKeyV4, PersistValue)>, DataplaneError> {
        read_persistence(&self.walker::<PersistKeyV4, PersistValue>(maps::PERSIST_V4)?)
    }

    fn persistence_v6(&self) -> Result<Vec<(PersistKeyV6, PersistValue)>, DataplaneError> {
        read_persistence(&self.walker::<PersistKeyV6, PersistValue>(maps::PERSIST_V6)?)
    }

    fn probation_v4(&self) -> Result<Vec<(PersistKeyV4, ProbationValue)>, DataplaneError> {
        read_persistence(&self.walker::<PersistKeyV4, ProbationValue>(maps::PROBATION_V4)?)
    }

    fn probation_v6(&self) -> Result<Vec<(PersistKeyV6, ProbationValue)>, DataplaneError> {
        read_persistence(&self.walker::<PersistKeyV6, ProbationValue>(maps::PROBATION_V6)?)
    }

    fn persistence_scan(&self) -> Result<crate::scan::ScanSource, DataplaneError> {
        Ok(crate::scan::PersistMaps {
            v4: self.walker(maps::PERSIST_V4)?,
            v6: self.walker(maps::PERSIST_V6)?,
            p4: self.walker(maps::PROBATION_V4)?,
            p6: self.walker(maps::PROBATION_V6)?,
        }
        .into_source())
    }

    fn persistence_reader(&self) -> Result<PersistReader, DataplaneError> {
        let v4 = self.persist_handle::<PersistKeyV4, PersistValue>(maps::PERSIST_V4)?;
        let v6 = self.persist_handle::<PersistKeyV6, PersistValue>(maps::PERSIST_V6)?;
        let p4 = self.persist_handle::<PersistKeyV4, ProbationValue>(maps::PROBATION_V4)?;
        let p6 = self.persist_handle::<PersistKeyV6, ProbationValue>(maps::PROBATION_V6)?;
        Ok(Box::new(move || {
            Ok(PersistEntry::all(&v4()?, &v6()?, &p4()?, &p6()?))
        }))
    }

    fn persistence_v4_get(
        &self,
        key: &PersistKeyV4,
    ) -> Result<Option<PersistValue>, DataplaneError> {
        self.persist_get(maps::PERSIST_V4, key)
    }

    fn persistence_v4_reader(&self) -> Result<PersistV4Reader, DataplaneError> {
        let v4 = self.persist_handle::<PersistKeyV4, PersistValue>(maps::PERSIST_V4)?;
        let p4 = self.persist_handle::<PersistKeyV4, ProbationValue>(maps::PROBATION_V4)?;
        Ok(Box::new(move || {
            let mut out = v4()?;
            out.extend(p4()?.iter().map(|(k, v)| (*k, probation_as_persist(v))));
            Ok(out)
        }))
    }

    fn probation_v4_get(
        &self,
        key: &PersistKeyV4,
    ) -> Result<Option<ProbationValue>, DataplaneError> {
        self.persist_get(maps::PROBATION_V4, key)
    }

    fn probation_v6_get(
        &self,
        key: &PersistKeyV6,
    ) -> Result<Option<ProbationValue>, DataplaneError> {
        self.persist_get(maps::PROBATION_V6, key)
    }

    fn persistence_v6_get(
        &self,
        key: &PersistKeyV6,
    ) -> Result<Option<PersistValue>, DataplaneError> {
        self.persist_get(maps::PERSIST_V6, key)
    }

    fn persistence_v4_write(
        &mut self,
        key: &PersistKeyV4,
        value: &PersistValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        self.write_if(maps::PERSIST_V4, *key, *value, new_only)
    }

    fn persistence_v6_write(
        &mut self,
        key: &PersistKeyV6,
        value: &PersistValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        self.write_if(maps::PERSIST_V6, *key, *value, new_only)
    }

    fn probation_v4_write(
        &mut self,
        key: &PersistKeyV4,
        value: &ProbationValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        self.write_if(maps::PROBATION_V4, *key, *value, new_only)
    }

    fn probation_v6_write(
        &mut self,
        key: &PersistKeyV6,
        value: &ProbationValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        self.write_if(maps::PROBATION_V6, *key, *value, new_only)
    }
}

impl AyaDataplane {
    fn persist_map<K: Pod, V: Pod>(
        &self,
        map: &'static str,
    ) -> Result<HashMap<&MapData, K, V>, DataplaneError> {
        HashMap::try_from(self.map(map)?).map_err(|source| DataplaneError::MapType {
            map,
            source: Box::new(source),
        })
    }

    fn persist_get<K: Pod, V: Pod>(
        &self,
        map: &'static str,
        key: &K,
    ) -> Result<Option<V>, DataplaneError> {
        match self.persist_map::<K, V>(map)?.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Read {
                map,
                source: Box::new(source),
            }),
        }
    }

    /// `map` through a duplicate of its fd, for walks ([`crate::scan::walk`]).
    fn walker<K: Pod, V: Pod>(
        &self,
        map: &'static str,
    ) -> Result<crate::scan::BpfMap<K, V>, DataplaneError> {
        use std::os::fd::AsFd;
        let m = self.persist_map::<K, V>(map)?;
        let fd = aya::maps::IterableMap::map(&m)
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| DataplaneError::Read {
                map,
                source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error,
                })),
            })?;
        crate::scan::BpfMap::from_fd(fd, map)
    }

    /// A reader of every entry of persistence or probation map `map` through its own
    /// (duplicated) fd.
    #[allow(clippy::type_complexity)]
    fn persist_handle<K: Pod + Eq + std::hash::Hash + Send + 'static, V: Pod + Send + 'static>(
        &self,
        map: &'static str,
    ) -> Result<Box<dyn FnOnce() -> Result<Vec<(K, V)>, DataplaneError> + Send>, DataplaneError>
    {
        let m = self.walker::<K, V>(map)?;
        Ok(Box::new(move || read_persistence(&m)))
    }
}
