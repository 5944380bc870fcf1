//! The BPF maps, behind a small trait (Katran's `BaseBpfAdapter`): [`AyaDataplane`] writes
//! the real maps of a loaded [`aya::Ebpf`]; [`fake::FakeDataplane`] keeps them in memory and
//! records every operation in order, so the control logic is unit-tested without root.
//!
//! The trait speaks the contract types of `lb-common` and nothing else; which map a value
//! lands in (and in which byte order its key is) is decided here once.
//!
//! ## Modules
//!
//! * `dataplane.rs` (this file): [`DataplaneError`], the [`Dataplane`] trait, the entry
//!   types ([`PersistEntry`], [`Tier`]) and the wire-order helpers shared by both
//!   implementations.
//! * `dataplane/ebpf.rs`: [`AyaDataplane`], the maps of a loaded `lb-ebpf` object.
//! * `dataplane/fake.rs`: [`fake::FakeDataplane`], in memory, every operation recorded.

use std::net::IpAddr;

use aya::maps::{xdp::XdpMapError, MapError};
use lb_common::{
    Backend, Iface, PersistKeyV4, PersistKeyV6, PersistValue, ProbationValue, Service, FAMILY_V4,
    INGRESS_F_ATTACHED, INGRESS_PORT_MASK,
};

mod ebpf;
pub mod fake;

pub use ebpf::{AyaDataplane, Swapper};

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
    /// The XDP program could not be replaced ([`Dataplane::swap_program`]); every interface
    /// still runs the program it ran.
    #[error("replacing the XDP program: {0}")]
    Swap(String),
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
    /// new table's slots are written, and only for a service already written (the first
    /// table goes through `set_service`).
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

    /// Lists `addr` as one of the gateway's own (`BACKEND_IDS_V4/V6[addr] =
    /// OWN_ADDRESS_ID`, by its family): the data path drops a frame to a VIP from it
    /// (`drop/source_own_address`). The caller never passes a backend's address; a later
    /// [`set_backend`](Dataplane::set_backend) of the address overwrites the entry.
    fn set_own_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError>;

    /// Deletes the entry of `addr` if it is an own address (`OWN_ADDRESS_ID`); a backend's
    /// entry, or none, is left as it is.
    fn remove_own_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError>;

    /// Every address `BACKEND_IDS_V4/V6` lists as an own address (a previous daemon's, when
    /// the maps are pinned).
    fn own_addresses(&self) -> Result<Vec<IpAddr>, DataplaneError>;

    /// Writes `RINGS[index] = value` for each pair (absolute indices).
    fn write_ring_slots(&mut self, slots: &[(u32, u32)]) -> Result<(), DataplaneError>;

    /// Replaces the running XDP program by the same build with `PERSIST_TIMEOUT_TICKS` =
    /// `persist_timeout_ticks` (a reload of `persistence_timeout`), over the same maps: the new
    /// program is loaded (and verified), then every attached interface's link is moved to it
    /// with `BPF_LINK_UPDATE` — atomic, no interface is ever without a program. On an error
    /// no interface is left on the new program (links already moved are moved back).
    fn swap_program(&mut self, persist_timeout_ticks: u32) -> Result<(), DataplaneError>;

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

    /// Writes `value` for `key` into `PERSIST_V4`; with `new_only`, only if the client has
    /// no entry there (`BPF_NOEXIST`), else only if it has one (`BPF_EXIST`): `Ok(false)`
    /// when that condition failed. For entries another cluster node shares (`crate::share`),
    /// which never overwrite what this node learned itself.
    fn persistence_v4_write(
        &mut self,
        key: &PersistKeyV4,
        value: &PersistValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError>;

    /// As [`persistence_v4_write`](Dataplane::persistence_v4_write), `PERSIST_V6`.
    fn persistence_v6_write(
        &mut self,
        key: &PersistKeyV6,
        value: &PersistValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError>;

    /// Writes `value` for `key` into `PROBATION_V4`, on the condition of
    /// [`persistence_v4_write`](Dataplane::persistence_v4_write): another cluster node's
    /// unproven client (`crate::share`).
    fn probation_v4_write(
        &mut self,
        key: &PersistKeyV4,
        value: &ProbationValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError>;

    /// As [`probation_v4_write`](Dataplane::probation_v4_write), `PROBATION_V6`.
    fn probation_v6_write(
        &mut self,
        key: &PersistKeyV6,
        value: &ProbationValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError>;

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
/// the data path sends the client by, and its IKE stage (`lb_common::ike`), without the
/// probation-only `PROBATION_F_GUESS`.
pub fn probation_as_persist(v: &ProbationValue) -> PersistValue {
    PersistValue {
        backend: v.backend,
        atime: v.atime,
        client_mac: v.client_mac,
        port: v.port,
        flags: v.flags & !lb_common::PROBATION_F_GUESS,
    }
}

/// Which map an entry is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
