//! The BPF maps, behind a small trait (Katran's `BaseBpfAdapter`): [`AyaDataplane`] writes
//! the real maps of a loaded [`aya::Ebpf`]; [`fake::FakeDataplane`] keeps them in memory and
//! records every operation in order, so the control logic is unit-tested without root.
//!
//! The trait speaks the contract types of `lb-common` and nothing else; which map a value
//! lands in (and in which byte order its key is) is decided here once.

use std::net::IpAddr;

use aya::{
    maps::{xdp::XdpMapError, Array, DevMap, HashMap, Map, MapData, MapError, PerCpuArray},
    Ebpf, Pod,
};
use lb_common::{
    counter, event, maps, Backend, Iface, PersistKeyV4, PersistKeyV6, PersistValue, ProbationValue,
    Service, FAMILY_V4, INGRESS_F_ATTACHED, INGRESS_PORT_MASK, INGRESS_SLOTS,
};

/// A BPF map operation that failed, naming the map and the entry. aya's errors are boxed:
/// they are large and this error travels through every control-plane call.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("map {map} is not in the XDP object (is the embedded lb-ebpf older than lb-ctl?)")]
    MissingMap { map: &'static str },
    #[error("map {map} does not have the expected type: {source}")]
    MapType {
        map: &'static str,
        source: Box<MapError>,
    },
    #[error("updating {map}[{key}]: {source}")]
    Update {
        map: &'static str,
        key: String,
        source: Box<MapError>,
    },
    #[error("updating {map}[{key}]: {source}")]
    UpdateDevMap {
        map: &'static str,
        key: String,
        source: Box<XdpMapError>,
    },
    #[error("reading {map}: {source}")]
    Read {
        map: &'static str,
        source: Box<MapError>,
    },
    #[error("deleting {map}[{key}]: {source}")]
    Delete {
        map: &'static str,
        key: String,
        source: Box<MapError>,
    },
}

/// What the control plane needs from the data path.
pub trait Dataplane {
    /// Records interface `port` (its position in the config's `interfaces`) with its role
    /// flags (`INGRESS_F_CLIENTS` / `INGRESS_F_BACKENDS`): `IFACES[port]`, the devmap entry
    /// `TX_PORTS[port] = ifindex`, and [`ingress_value`] in `IFINDEX_PORTS[ifindex]` and, for
    /// an ifindex below `INGRESS_SLOTS`, `INGRESS[ifindex]`.
    fn set_iface(&mut self, port: u32, iface: &Iface, roles: u32) -> Result<(), DataplaneError>;

    /// Forgets every interface in `IFINDEX_PORTS` whose ifindex is not in `keep` (interfaces
    /// that left the config, as a previous daemon left them pinned): its `IFINDEX_PORTS`
    /// entry is deleted and its `INGRESS` slot zeroed, since its port number may now name
    /// another interface. Returns how many were forgotten.
    fn forget_other_ifaces(&mut self, keep: &[u32]) -> Result<usize, DataplaneError>;

    /// Writes a service's value to `VIPS_V4`/`VIPS_V6` (by family, keyed by VIP) and to
    /// `SERVICES[id]`.
    fn set_service(&mut self, service: &Service) -> Result<(), DataplaneError>;

    /// Forgets a service a previous daemon left pinned and the config no longer has
    /// (`crate::identity`): its `VIPS_V4`/`VIPS_V6` entry is deleted (traffic to the VIP is
    /// no longer balanced), and with `slot`, `SERVICES[service.id]` is zeroed (an id no
    /// configured service holds).
    fn forget_service(&mut self, service: &Service, slot: bool) -> Result<(), DataplaneError>;

    /// Makes `service.ring_base` the active table: the same writes as [`set_service`], in
    /// the same order (VIP map first, the forward path's entry point). Called only after the
    /// new table's slots are written.
    ///
    /// [`set_service`]: Dataplane::set_service
    fn flip(&mut self, service: &Service) -> Result<(), DataplaneError> {
        self.set_service(service)
    }

    /// Writes `BACKENDS[id]` and the reverse-path index `BACKEND_IDS_V4/V6[addr] = id`.
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError>;

    /// Forgets backend `id`: `BACKENDS[id]` is zeroed (address 0 is "missing" to the data
    /// path, so a persisted client naming it is re-selected) and, when `index` is given (its
    /// address words), `BACKEND_IDS_V4/V6[index]` is deleted.
    fn remove_backend(&mut self, id: u32, index: Option<[u32; 4]>) -> Result<(), DataplaneError>;

    /// Writes `RINGS[index] = value` for each pair (absolute indices).
    fn write_ring_slots(&mut self, slots: &[(u32, u32)]) -> Result<(), DataplaneError>;

    /// `COUNTERS`, summed over CPUs, indexed like [`lb_common::counter`].
    fn counters(&self) -> Result<Vec<u64>, DataplaneError>;

    /// `EVENTS`, summed over CPUs, indexed like [`lb_common::event`].
    fn events(&self) -> Result<Vec<u64>, DataplaneError>;

    /// Every entry of `PERSIST_V4`.
    fn persistence_v4(&self) -> Result<Vec<(PersistKeyV4, PersistValue)>, DataplaneError>;

    /// Every entry of `PERSIST_V6`.
    fn persistence_v6(&self) -> Result<Vec<(PersistKeyV6, PersistValue)>, DataplaneError>;

    /// Every entry of `PROBATION_V4`.
    fn probation_v4(&self) -> Result<Vec<(PersistKeyV4, ProbationValue)>, DataplaneError>;

    /// Every entry of `PROBATION_V6`.
    fn probation_v6(&self) -> Result<Vec<(PersistKeyV6, ProbationValue)>, DataplaneError>;

    /// Every entry of the persistence and probation maps, as the control plane counts and
    /// drains clients: a client in probation is sent to its backend like an established one.
    fn persistence(&self) -> Result<Vec<PersistEntry>, DataplaneError> {
        Ok(PersistEntry::all(
            &self.persistence_v4()?,
            &self.persistence_v6()?,
            &self.probation_v4()?,
            &self.probation_v6()?,
        ))
    }

    /// A reader of every entry of the persistence and probation maps that owns its own
    /// handles on them (bounded walks). The daemon reads through
    /// [`persistence_scan`](Dataplane::persistence_scan) and its shared scanner instead.
    fn persistence_reader(&self) -> Result<PersistReader, DataplaneError>;

    /// A reader of every `PERSIST_V4` and `PROBATION_V4` entry with its key (a probation
    /// value as its [`PersistValue`] part), through its own handles on the maps: the slot
    /// flag sweep (`state::Balancer::clear_flags`) reads the same from the shared scanner
    /// ([`crate::scan::Scanned::v4`]). Both maps
    /// name a backend the data path sends the client to, so the sweep's invariant is over
    /// both.
    fn persistence_v4_reader(&self) -> Result<PersistV4Reader, DataplaneError>;

    /// What the daemon's shared [`Scanner`](crate::scan::Scanner) reads the four
    /// persistence and probation maps with: bounded batch walks ([`crate::scan::walk`])
    /// through handles of its own, on the scanner's thread.
    fn persistence_scan(&self) -> Result<crate::scan::ScanSource, DataplaneError>;

    /// One entry of `PERSIST_V4` (`lb-ctl lookup`).
    fn persistence_v4_get(
        &self,
        key: &PersistKeyV4,
    ) -> Result<Option<PersistValue>, DataplaneError>;

    /// One entry of `PERSIST_V6` (`lb-ctl lookup`).
    fn persistence_v6_get(
        &self,
        key: &PersistKeyV6,
    ) -> Result<Option<PersistValue>, DataplaneError>;

    /// One entry of `PROBATION_V4` (`lb-ctl lookup`).
    fn probation_v4_get(
        &self,
        key: &PersistKeyV4,
    ) -> Result<Option<ProbationValue>, DataplaneError>;

    /// One entry of `PROBATION_V6` (`lb-ctl lookup`).
    fn probation_v6_get(
        &self,
        key: &PersistKeyV6,
    ) -> Result<Option<ProbationValue>, DataplaneError>;
}

/// The `INGRESS` / `IFINDEX_PORTS` value of an attached interface: its port, its role flags
/// and `INGRESS_F_ATTACHED` (a zero slot is "not ours").
pub fn ingress_value(port: u32, roles: u32) -> u32 {
    (port & INGRESS_PORT_MASK) | roles | INGRESS_F_ATTACHED
}

/// The [`PersistValue`] part of a probation entry (its first 16 bytes, same fields): what
/// the data path sends the client by.
pub fn probation_as_persist(v: &ProbationValue) -> PersistValue {
    PersistValue {
        backend: v.backend,
        atime: v.atime,
        client_mac: v.client_mac,
        port: v.port,
        _pad: 0,
    }
}

/// Which map an entry is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tier {
    /// `PERSIST_V4`/`_V6`: a client that proved return routability.
    #[default]
    Established,
    /// `PROBATION_V4`/`_V6`: a new client, not proven yet.
    Probation,
}

/// A persistence or probation entry of either family, as the control plane counts clients
/// and detects idle drains: the service of the client's key, the value (a probation value
/// as its [`PersistValue`] part) and its map. (Which client it is matters only to `lookup`,
/// which reads the entries it needs.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistEntry {
    pub service: u32,
    pub value: PersistValue,
    pub tier: Tier,
}

impl PersistEntry {
    /// The entries of both persistence maps, IPv4 first.
    pub fn both(
        v4: &[(PersistKeyV4, PersistValue)],
        v6: &[(PersistKeyV6, PersistValue)],
    ) -> Vec<Self> {
        let v4 = v4.iter().map(|(k, v)| (k.service, *v));
        let v6 = v6.iter().map(|(k, v)| (k.service, *v));
        v4.chain(v6)
            .map(|(service, value)| Self {
                service,
                value,
                tier: Tier::Established,
            })
            .collect()
    }

    /// The entries of the persistence maps, then those of the probation maps.
    pub fn all(
        v4: &[(PersistKeyV4, PersistValue)],
        v6: &[(PersistKeyV6, PersistValue)],
        p4: &[(PersistKeyV4, ProbationValue)],
        p6: &[(PersistKeyV6, ProbationValue)],
    ) -> Vec<Self> {
        let p4 = p4.iter().map(|(k, v)| (k.service, v));
        let p6 = p6.iter().map(|(k, v)| (k.service, v));
        let mut out = Self::both(v4, v6);
        out.extend(p4.chain(p6).map(|(service, v)| Self {
            service,
            value: probation_as_persist(v),
            tier: Tier::Probation,
        }));
        out
    }
}

/// See [`Dataplane::persistence_reader`].
pub type PersistReader = Box<dyn FnOnce() -> Result<Vec<PersistEntry>, DataplaneError> + Send>;

/// See [`Dataplane::persistence_v4_reader`].
pub type PersistV4Reader =
    Box<dyn FnOnce() -> Result<Vec<(PersistKeyV4, PersistValue)>, DataplaneError> + Send>;

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

/// Wire-order words of an address: IPv4 in word 0 (see `lb-common`, "Byte order").
pub fn addr_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            core::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// Inverse of [`addr_words`].
pub fn words_addr(family: u32, words: &[u32; 4]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

/// A port in wire order (the two header bytes loaded natively).
pub fn port_wire(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The maps of a loaded `lb-ebpf` object.
pub struct AyaDataplane {
    ebpf: Ebpf,
}

impl AyaDataplane {
    pub fn new(ebpf: Ebpf) -> Self {
        Self { ebpf }
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
        m.insert(key, value, 0)
            .map_err(|source| DataplaneError::Update {
                map,
                key: format!("{key:?}"),
                source: Box::new(source),
            })
    }

    /// Deletes `key`; a key that is not there is no error (the goal is its absence).
    fn hash_remove<K: Pod + std::fmt::Debug>(
        &mut self,
        map: &'static str,
        key: K,
    ) -> Result<(), DataplaneError> {
        let mut m: HashMap<&mut MapData, K, u32> =
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
        m.set(index, value, 0)
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
        if service.family == FAMILY_V4 {
            self.hash_insert(maps::VIPS_V4, service.vip[0], *service)?;
        } else {
            self.hash_insert(maps::VIPS_V6, service.vip, *service)?;
        }
        self.array_set(maps::SERVICES, service.id, *service)
    }

    fn forget_service(&mut self, service: &Service, slot: bool) -> Result<(), DataplaneError> {
        fn delete<K: Pod + std::fmt::Debug>(
            dp: &mut AyaDataplane,
            map: &'static str,
            key: K,
        ) -> Result<(), DataplaneError> {
            let mut m: HashMap<&mut MapData, K, Service> = HashMap::try_from(dp.map_mut(map)?)
                .map_err(|source| DataplaneError::MapType {
                    map,
                    source: Box::new(source),
                })?;
            match m.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
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
        if service.family == FAMILY_V4 {
            delete(self, maps::VIPS_V4, service.vip[0])?;
        } else {
            delete(self, maps::VIPS_V6, service.vip)?;
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

    fn write_ring_slots(&mut self, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        let map = maps::RINGS;
        let mut rings: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        for &(index, value) in slots {
            rings
                .set(index, value, 0)
                .map_err(|source| DataplaneError::Update {
                    map,
                    key: index.to_string(),
                    source: Box::new(source),
                })?;
        }
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

pub mod fake;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports_are_wire_order() {
        let ip: IpAddr = "10.0.0.11".parse().unwrap();
        let w = addr_words(ip);
        assert_eq!(w[0].to_ne_bytes(), [10, 0, 0, 11]);
        assert_eq!(words_addr(FAMILY_V4, &w), ip);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(words_addr(lb_common::FAMILY_V6, &addr_words(v6)), v6);
        assert_eq!(port_wire(4500).to_ne_bytes(), [0x11, 0x94]);
    }
}
