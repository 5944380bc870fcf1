//! The control plane's model of what the data path should hold, and the logic that brings
//! the maps there with the fewest, safest writes.
//!
//! Config → one *service* per VIP (id = position in `virtual_servers`) → backends with
//! stable ids (id 0 is [`BACKEND_NONE`]) → a Maglev table per service
//! ([`lb_common::maglev::build`], where an unusable backend moves only its own slots).
//!
//! Each service owns two tables in `RINGS` ("double buffer"): buffer `b` of service `id`
//! starts at `(id * 2 + b) * M`. [`Balancer::apply`] writes a new table into the inactive
//! buffer — only the slots that differ from what that buffer already holds — and then
//! rewrites the service value (`VIPS_V4` and `SERVICES`) with the new `ring_base`: the flip.
//! The data path therefore never reads a half-written table.
//!
//! Order of writes around a flip, so that no packet is sent to a backend the data path
//! cannot use:
//! 1. backends that become usable (or change next hop) are written first;
//! 2. tables are rebuilt and flipped;
//! 3. backends that stop being usable are written last (after no table points at them);
//! 4. removed backends are forgotten last of all (`BACKENDS[id]` zeroed, reverse index
//!    entry deleted), and only then is their id free again.
//!
//! A backend is *usable* (`BACKEND_F_USABLE`: persisted clients may reach it) when its next
//! hop is resolved and its health checks say Up; it is *in the ring* (takes new clients) when
//! it is usable and not draining. Down or draining backends stay in the Maglev member list
//! with `usable: false`, so only their own slots move (`lb_common::maglev::build`); a
//! removed backend leaves the list (plain Maglev recompute: persisted clients of the others
//! stay where they are, the persistence map wins over the ring).

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::SystemTime,
};

use lb_common::{
    maglev::{self, Member},
    Backend, Iface, Service, BACKEND_F_USABLE, BACKEND_NONE, FAMILY_V4, FAMILY_V6, MAX_PORTS,
    SVC_F_ESP,
};

use crate::{
    config::Config,
    dataplane::{addr_words, port_wire, Dataplane, DataplaneError},
    health::HealthState,
};

/// Smallest `BACKENDS` capacity. The map is sized with headroom over the configured
/// backends so runtime `backend add` needs no reload.
pub const MIN_BACKEND_CAPACITY: u32 = 1024;

/// `BACKENDS` capacity for `configured` backends: id 0 plus the backends, doubled for
/// runtime additions, at least [`MIN_BACKEND_CAPACITY`], within the 24-bit id space.
pub fn backend_capacity(configured: usize) -> u32 {
    let want = (configured as u64 + 1).saturating_mul(2);
    want.clamp(
        u64::from(MIN_BACKEND_CAPACITY),
        u64::from(lb_common::RING_BACKEND_MASK),
    ) as u32
}

/// An interface ikelb is attached to, as the control plane knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// Where to send a backend's frames: out of interface `port` (index in `interfaces`) to
/// `mac` (the backend's own, or its gateway's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub port: u32,
    pub mac: [u8; 6],
}

/// A backend as the control plane tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub id: u32,
    /// Id of the service it belongs to.
    pub service: u32,
    pub address: IpAddr,
    pub weight: u32,
    /// Resolved next hop; `None` until the neighbour is known (the backend is unusable).
    pub next_hop: Option<NextHop>,
    /// The health checks' verdict; only `Up` is usable.
    pub health: HealthState,
    /// Drain deadline while draining (`lb-ctl backend remove --drain`): out of the ring,
    /// still usable for its persisted clients.
    pub drain_until: Option<SystemTime>,
    /// What `BACKENDS[id]` holds now, `None` before the first write.
    written: Option<Backend>,
}

impl BackendState {
    /// May the data path send to it (persisted clients included)? Next hop resolved and
    /// health Up.
    pub fn usable(&self) -> bool {
        self.next_hop.is_some() && self.health == HealthState::Up
    }

    /// Does it take new clients (hold ring slots)? Usable and not draining.
    pub fn in_ring(&self) -> bool {
        self.usable() && self.drain_until.is_none()
    }

    pub fn draining(&self) -> bool {
        self.drain_until.is_some()
    }

    fn value(&self, ifaces: &[IfaceInfo]) -> Backend {
        let mut b = Backend {
            addr: addr_words(self.address),
            service: self.service,
            ..Backend::default()
        };
        if let (true, Some(nh)) = (self.usable(), self.next_hop) {
            let iface = &ifaces[nh.port as usize];
            b.flags = BACKEND_F_USABLE;
            b.tx_port = nh.port;
            b.ifindex = iface.ifindex;
            b.dmac = nh.mac;
            b.smac = iface.mac;
        }
        b
    }
}

/// A service (one VIP) and the mirror of its two ring buffers.
#[derive(Clone, Debug)]
pub struct ServiceState {
    pub name: String,
    /// The value last written to `VIPS_V4`/`SERVICES` (or to be written).
    pub value: Service,
    /// Backend ids, in config order.
    pub members: Vec<u32>,
    /// What each buffer in `RINGS` holds (a fresh array is all zeros).
    buffers: [Vec<u32>; 2],
    /// Which buffer `value.ring_base` points at.
    active: usize,
    written: bool,
}

impl ServiceState {
    /// The table the data path reads now.
    pub fn active_table(&self) -> &[u32] {
        &self.buffers[self.active]
    }
}

/// Hands out backend ids: fresh ones first, freed ones only when fresh ones run out and then
/// oldest-freed first, so a persisted client of a removed backend is unlikely to land on
/// a newcomer under the same id.
#[derive(Clone, Debug)]
struct IdAllocator {
    next: u32,
    capacity: u32,
    free: VecDeque<u32>,
}

impl IdAllocator {
    fn alloc(&mut self) -> Option<u32> {
        if self.next < self.capacity {
            self.next += 1;
            Some(self.next - 1)
        } else {
            self.free.pop_front()
        }
    }

    fn release(&mut self, id: u32) {
        self.free.push_back(id);
    }
}

/// What one [`Balancer::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Backend entries rewritten.
    pub backends_written: usize,
    /// (service id, ring slots written) for every service whose table was flipped.
    pub flips: Vec<(u32, usize)>,
    /// Removed backends forgotten in the maps.
    pub backends_removed: usize,
}

/// Errors of the control logic.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no backend id left for {address} in {service} (capacity {capacity})")]
    IdsExhausted {
        service: String,
        address: IpAddr,
        capacity: u32,
    },
    #[error("backend id {id} is unknown")]
    UnknownBackend { id: u32 },
    #[error("next hop port {port} of backend {id} is not a configured interface")]
    UnknownPort { id: u32, port: u32 },
    #[error("service id {service} is unknown")]
    UnknownService { service: u32 },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// Owns the dataplane and keeps it in step with the desired state.
pub struct Balancer<D> {
    dp: D,
    ring_size: u32,
    seed: u32,
    ifaces: Vec<IfaceInfo>,
    services: Vec<ServiceState>,
    backends: BTreeMap<u32, BackendState>,
    ids: IdAllocator,
    /// Removed backends (id, address) still to be forgotten in the maps (step 4 of the
    /// write order); their ids are released once that is done.
    removed: Vec<(u32, IpAddr)>,
    ifaces_written: bool,
    /// Table flips since start (`ikelb_maglev_rebuilds_total`).
    flips: u64,
}

impl<D: Dataplane> Balancer<D> {
    /// Builds the desired state of `config` (no map is touched until [`apply`]).
    /// `ifaces` are the config's interfaces in order; `backend_capacity` is the size of
    /// `BACKENDS`.
    ///
    /// [`apply`]: Balancer::apply
    pub fn new(
        dp: D,
        config: &Config,
        ifaces: Vec<IfaceInfo>,
        backend_capacity: u32,
    ) -> Result<Self, StateError> {
        let m = config.maglev_table_size;
        let mut ids = IdAllocator {
            next: BACKEND_NONE + 1,
            capacity: backend_capacity,
            free: VecDeque::new(),
        };
        let mut services = Vec::new();
        let mut backends = BTreeMap::new();
        for (id, vs) in config.virtual_servers.iter().enumerate() {
            let id = id as u32;
            let mut value = Service {
                id,
                flags: if vs.esp { SVC_F_ESP } else { 0 },
                ring_base: id * 2 * m,
                family: if vs.vip.is_ipv4() {
                    FAMILY_V4
                } else {
                    FAMILY_V6
                },
                vip: addr_words(vs.vip),
                ..Service::default()
            };
            for (slot, &p) in value
                .udp_ports
                .iter_mut()
                .zip(vs.ports.iter().take(MAX_PORTS))
            {
                *slot = port_wire(p);
            }
            for (slot, &p) in value
                .tcp_ports
                .iter_mut()
                .zip(vs.tcp_ports.iter().take(MAX_PORTS))
            {
                *slot = port_wire(p);
            }
            let mut members = Vec::new();
            for b in &vs.backends {
                let bid = ids.alloc().ok_or(StateError::IdsExhausted {
                    service: vs.name.clone(),
                    address: b.address,
                    capacity: backend_capacity,
                })?;
                members.push(bid);
                backends.insert(
                    bid,
                    BackendState {
                        id: bid,
                        service: id,
                        address: b.address,
                        weight: b.weight,
                        next_hop: None,
                        health: HealthState::Unknown,
                        drain_until: None,
                        written: None,
                    },
                );
            }
            services.push(ServiceState {
                name: vs.name.clone(),
                value,
                members,
                buffers: [
                    vec![BACKEND_NONE; m as usize],
                    vec![BACKEND_NONE; m as usize],
                ],
                active: 0,
                written: false,
            });
        }
        Ok(Self {
            dp,
            ring_size: m,
            seed: config.hash_seed,
            ifaces,
            services,
            backends,
            ids,
            removed: Vec::new(),
            ifaces_written: false,
            flips: 0,
        })
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    pub fn backends(&self) -> impl Iterator<Item = &BackendState> {
        self.backends.values()
    }

    pub fn backend(&self, id: u32) -> Option<&BackendState> {
        self.backends.get(&id)
    }

    pub fn ifaces(&self) -> &[IfaceInfo] {
        &self.ifaces
    }

    /// Maglev tables flipped since this balancer was made (`ikelb_maglev_rebuilds_total`).
    pub fn flips(&self) -> u64 {
        self.flips
    }

    /// Size of `BACKENDS`: ids 1 to `capacity - 1` can be handed out.
    pub fn capacity(&self) -> u32 {
        self.ids.capacity
    }

    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    pub fn seed(&self) -> u32 {
        self.seed
    }

    /// The backend with `address` (any service; an address serves one service).
    pub fn backend_by_address(&self, address: IpAddr) -> Option<&BackendState> {
        self.backends.values().find(|b| b.address == address)
    }

    /// Adds a backend to service `service` (health Unknown, next hop unresolved: unusable
    /// until both are known). Returns its id. The caller has validated the address.
    pub fn add_backend(
        &mut self,
        service: u32,
        address: IpAddr,
        weight: u32,
    ) -> Result<u32, StateError> {
        let svc = self
            .services
            .get(service as usize)
            .ok_or(StateError::UnknownService { service })?;
        let id = self.ids.alloc().ok_or_else(|| StateError::IdsExhausted {
            service: svc.name.clone(),
            address,
            capacity: self.ids.capacity,
        })?;
        self.services[service as usize].members.push(id);
        self.backends.insert(
            id,
            BackendState {
                id,
                service,
                address,
                weight,
                next_hop: None,
                health: HealthState::Unknown,
                drain_until: None,
                written: None,
            },
        );
        Ok(id)
    }

    /// Removes a backend: it leaves its service's table at the next [`apply`], which then
    /// forgets it in the maps and frees its id.
    ///
    /// [`apply`]: Balancer::apply
    pub fn remove_backend(&mut self, id: u32) -> Result<BackendState, StateError> {
        let b = self
            .backends
            .remove(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        self.services[b.service as usize].members.retain(|&m| m != id);
        self.removed.push((id, b.address));
        Ok(b)
    }

    /// Records a health verdict; returns whether it changed.
    pub fn set_health(&mut self, id: u32, health: HealthState) -> Result<bool, StateError> {
        let b = self
            .backends
            .get_mut(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let changed = b.health != health;
        b.health = health;
        Ok(changed)
    }

    /// Starts (`Some(deadline)`), moves or cancels (`None`) a drain; returns whether it
    /// changed.
    pub fn set_drain(&mut self, id: u32, until: Option<SystemTime>) -> Result<bool, StateError> {
        let b = self
            .backends
            .get_mut(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let changed = b.drain_until != until;
        b.drain_until = until;
        Ok(changed)
    }

    /// Changes a backend's weight; returns whether it changed.
    pub fn set_weight(&mut self, id: u32, weight: u32) -> Result<bool, StateError> {
        let b = self
            .backends
            .get_mut(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let changed = b.weight != weight;
        b.weight = weight;
        Ok(changed)
    }

    /// Sets (or clears) a backend's resolved next hop. Returns whether it changed; the maps
    /// change at the next [`apply`](Balancer::apply).
    pub fn set_next_hop(&mut self, id: u32, next_hop: Option<NextHop>) -> Result<bool, StateError> {
        if let Some(nh) = next_hop {
            if nh.port as usize >= self.ifaces.len() {
                return Err(StateError::UnknownPort { id, port: nh.port });
            }
        }
        let b = self
            .backends
            .get_mut(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let changed = b.next_hop != next_hop;
        b.next_hop = next_hop;
        Ok(changed)
    }

    /// Brings the maps to the desired state (see the module doc for the write order).
    pub fn apply(&mut self) -> Result<ApplyReport, StateError> {
        let mut report = ApplyReport::default();
        if !self.ifaces_written {
            for (port, i) in self.ifaces.iter().enumerate() {
                self.dp.set_iface(
                    port as u32,
                    &Iface {
                        ifindex: i.ifindex,
                        mac: i.mac,
                        _pad: [0; 2],
                    },
                )?;
            }
            self.ifaces_written = true;
        }
        report.backends_written += self.write_backends(true)?;
        for idx in 0..self.services.len() {
            if let Some(flip) = self.rebuild(idx)? {
                report.flips.push(flip);
            }
        }
        report.backends_written += self.write_backends(false)?;
        report.backends_removed = self.forget_removed()?;
        Ok(report)
    }

    /// Zeroes `BACKENDS[id]` of every removed backend (the data path then treats the id as
    /// missing: a persisted client naming it is re-selected) and deletes its reverse index
    /// entry unless a live backend has taken the address again; then frees the id.
    fn forget_removed(&mut self) -> Result<usize, StateError> {
        let mut n = 0;
        while let Some(&(id, address)) = self.removed.first() {
            let readded = self.backends.values().any(|b| b.address == address);
            let index = (!readded).then(|| addr_words(address));
            self.dp.remove_backend(id, index)?;
            self.removed.remove(0);
            self.ids.release(id);
            n += 1;
        }
        Ok(n)
    }

    /// Writes the backends whose value changed and that are (`usable`) or are not usable.
    fn write_backends(&mut self, usable: bool) -> Result<usize, StateError> {
        let mut n = 0;
        for b in self.backends.values_mut() {
            if b.usable() != usable {
                continue;
            }
            let value = b.value(&self.ifaces);
            if b.written != Some(value) {
                self.dp.set_backend(b.id, &value)?;
                b.written = Some(value);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Rebuilds one service's table; writes and flips it if it differs from the active one.
    /// Returns (service id, slots written) when it flipped.
    fn rebuild(&mut self, idx: usize) -> Result<Option<(u32, usize)>, StateError> {
        let members: Vec<Member> = self.services[idx]
            .members
            .iter()
            .map(|id| {
                let b = &self.backends[id];
                Member {
                    id: b.id,
                    key: key_bytes(b.address),
                    weight: b.weight,
                    usable: b.in_ring(),
                }
            })
            .collect();
        let table = maglev::build(&members, self.ring_size, self.seed);
        let m = self.ring_size;
        let svc = &mut self.services[idx];
        if table == svc.buffers[svc.active] {
            if !svc.written {
                self.dp.set_service(&svc.value)?;
                svc.written = true;
            }
            return Ok(None);
        }
        let inactive = 1 - svc.active;
        let base = (svc.value.id * 2 + inactive as u32) * m;
        let slots: Vec<(u32, u32)> = table
            .iter()
            .zip(&svc.buffers[inactive])
            .enumerate()
            .filter(|(_, (new, old))| new != old)
            .map(|(i, (&new, _))| (base + i as u32, new))
            .collect();
        if let Err(e) = self.dp.write_ring_slots(&slots) {
            // Some slots may have been written: the mirror of this buffer is no longer
            // known, so the next attempt rewrites every slot (no table holds u32::MAX).
            svc.buffers[inactive].fill(u32::MAX);
            return Err(e.into());
        }
        svc.buffers[inactive] = table;
        let mut value = svc.value;
        value.ring_base = base;
        self.dp.flip(&value)?;
        svc.value = value;
        svc.active = inactive;
        svc.written = true;
        self.flips += 1;
        Ok(Some((value.id, slots.len())))
    }
}

/// The Maglev permutation key of a backend: its address bytes (stable across restarts and
/// nodes, independent of ids).
fn key_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

// Restart over pinned maps (`crate::pin`): a separate file, `state/adopt.rs`.
mod adopt;
pub use adopt::AdoptReport;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config,
        dataplane::fake::{FakeDataplane, Op},
    };

    const M: u32 = 251;

    fn config() -> Config {
        config::parse(
            "t.yaml",
            &format!(
                "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: 7\nvirtual_servers:
  - name: a
    vip: 203.0.113.10
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
        weight: 2
      - address: 10.0.0.13
  - name: b
    vip: 203.0.113.11
    ports: [4500]
    esp: false
    backends:
      - address: 10.0.1.11
"
            ),
        )
        .expect("valid config")
    }

    fn ifaces() -> Vec<IfaceInfo> {
        vec![
            IfaceInfo {
                name: "ext".into(),
                ifindex: 10,
                mac: [2, 0, 0, 0, 0, 10],
            },
            IfaceInfo {
                name: "int".into(),
                ifindex: 20,
                mac: [2, 0, 0, 0, 0, 20],
            },
        ]
    }

    fn balancer() -> Balancer<FakeDataplane> {
        Balancer::new(FakeDataplane::default(), &config(), ifaces(), 1024).unwrap()
    }

    /// Resolves every backend's next hop and marks it healthy.
    fn resolve_all(lb: &mut Balancer<FakeDataplane>) {
        let ids: Vec<u32> = lb.backends().map(|b| b.id).collect();
        for id in ids {
            lb.set_health(id, HealthState::Up).unwrap();
            lb.set_next_hop(
                id,
                Some(NextHop {
                    port: 1,
                    mac: [0xaa, 0, 0, 0, 0, id as u8],
                }),
            )
            .unwrap();
        }
    }

    #[test]
    fn ids_are_stable_and_zero_is_reserved() {
        let a = balancer();
        let b = balancer();
        let ids = |lb: &Balancer<FakeDataplane>| {
            lb.backends().map(|b| (b.id, b.address)).collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(
            ids(&a).iter().map(|x| x.0).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(a.services()[0].members, [1, 2, 3]);
        assert_eq!(a.services()[1].members, [4]);
    }

    #[test]
    fn first_apply_writes_interfaces_services_and_unusable_backends() {
        let mut lb = balancer();
        let r = lb.apply().unwrap();
        assert!(
            r.flips.is_empty(),
            "no usable backend: the all-zero table stays"
        );
        let dp = lb.dataplane();
        assert_eq!(
            dp.ops[..2],
            [
                Op::SetIface {
                    port: 0,
                    ifindex: 10
                },
                Op::SetIface {
                    port: 1,
                    ifindex: 20
                }
            ]
        );
        assert_eq!(dp.ifindex_ports[&20], 1);
        let s = dp.services[&1];
        assert_eq!(s.ring_base, 2 * M);
        assert_eq!(s.flags, 0);
        assert_eq!(s.udp_ports[..2], [port_wire(4500), 0]);
        assert_eq!(dp.services[&0].flags, SVC_F_ESP);
        assert_eq!(
            dp.services[&0].udp_ports[..3],
            [port_wire(500), port_wire(4500), 0]
        );
        assert_eq!(dp.vips[&addr_words("203.0.113.11".parse().unwrap())], s);
        assert_eq!(dp.backends.len(), 4);
        assert!(dp.backends.values().all(|b| b.flags == 0));
        assert_eq!(dp.backend_ids[&addr_words("10.0.1.11".parse().unwrap())], 4);
    }

    #[test]
    fn resolved_backends_are_written_before_the_table_and_the_flip_comes_last() {
        let mut lb = balancer();
        lb.apply().unwrap();
        lb.dataplane_mut().ops.clear();
        resolve_all(&mut lb);
        let r = lb.apply().unwrap();
        assert_eq!(r.backends_written, 4);
        assert_eq!(r.flips, [(0, M as usize), (1, M as usize)]);
        let ops = &lb.dataplane().ops;
        assert!(
            ops[..4].iter().all(|o| matches!(
                o,
                Op::SetBackend {
                    flags: BACKEND_F_USABLE,
                    ..
                }
            )),
            "{ops:?}"
        );
        assert_eq!(
            ops[4],
            Op::RingSlots {
                count: M as usize,
                first: M,
                last: 2 * M - 1
            }
        );
        assert_eq!(
            ops[5],
            Op::Flip {
                id: 0,
                ring_base: M
            }
        );
        assert_eq!(
            ops[6],
            Op::RingSlots {
                count: M as usize,
                first: 3 * M,
                last: 4 * M - 1
            }
        );
        assert_eq!(
            ops[7],
            Op::Flip {
                id: 1,
                ring_base: 3 * M
            }
        );
        assert_eq!(ops.len(), 8);

        let dp = lb.dataplane();
        let table = dp.table(M, M);
        assert_eq!(table, lb.services()[0].active_table());
        assert!(table.iter().all(|&b| (1..=3).contains(&b)));
        assert!(dp.table(3 * M, M).iter().all(|&b| b == 4));
        let b = dp.backends[&4];
        assert_eq!(
            (b.tx_port, b.ifindex, b.smac, b.dmac),
            (1, 20, [2, 0, 0, 0, 0, 20], [0xaa, 0, 0, 0, 0, 4])
        );
        assert_eq!(b.addr[0].to_ne_bytes(), [10, 0, 1, 11]);
        assert_eq!(b.service, 1);
    }

    #[test]
    fn nothing_is_written_when_nothing_changed() {
        let mut lb = balancer();
        resolve_all(&mut lb);
        lb.apply().unwrap();
        lb.dataplane_mut().ops.clear();
        assert_eq!(lb.apply().unwrap(), ApplyReport::default());
        assert!(lb.dataplane().ops.is_empty());
    }

    #[test]
    fn second_change_writes_only_the_changed_slots_of_the_inactive_buffer() {
        let mut lb = balancer();
        resolve_all(&mut lb);
        lb.apply().unwrap(); // buffer 1 of service 0 active, buffer 0 still all zeros
        let full = lb.services()[0].active_table().to_vec();

        // Backend 2 lost: its slots move, into buffer 0, which held zeros: every slot differs.
        lb.set_next_hop(2, None).unwrap();
        lb.dataplane_mut().ops.clear();
        let r = lb.apply().unwrap();
        assert_eq!(r.flips, [(0, M as usize)]);
        let without2 = lb.services()[0].active_table().to_vec();
        let moved = full.iter().zip(&without2).filter(|(a, b)| a != b).count();
        assert_eq!(
            moved,
            full.iter().filter(|&&b| b == 2).count(),
            "only backend 2's slots move"
        );
        let ops = &lb.dataplane().ops;
        assert_eq!(
            ops[1],
            Op::Flip {
                id: 0,
                ring_base: 0
            }
        );
        assert_eq!(
            ops[2],
            Op::SetBackend { id: 2, flags: 0 },
            "unusable backend written after the flip"
        );

        // Backend 2 back: buffer 1 still holds `full`, which is exactly the new table.
        resolve_all(&mut lb);
        lb.dataplane_mut().ops.clear();
        let r = lb.apply().unwrap();
        assert_eq!(
            r.flips,
            [(0, 0)],
            "buffer 1 already holds the table: no slot written"
        );
        assert_eq!(lb.services()[0].active_table(), full);
        assert_eq!(lb.dataplane().table(M, M), full);

        // Lost again: buffer 0 holds `without2` from before: again no slot written.
        lb.set_next_hop(2, None).unwrap();
        let r = lb.apply().unwrap();
        assert_eq!(r.flips, [(0, 0)]);
        assert_eq!(lb.dataplane().table(0, M), without2);

        // Backend 3 lost too: only the slots that differ from `full` (buffer 1) are written.
        lb.set_next_hop(3, None).unwrap();
        let r = lb.apply().unwrap();
        let without23 = lb.services()[0].active_table().to_vec();
        let differs = without23.iter().zip(&full).filter(|(a, b)| a != b).count();
        assert_eq!(r.flips, [(0, differs)]);
        assert!(differs < M as usize);
        assert_eq!(lb.dataplane().table(M, M), without23);
        assert!(without23.iter().all(|&b| b == 1));
    }

    #[test]
    fn a_backend_changing_next_hop_is_rewritten_without_a_flip() {
        let mut lb = balancer();
        resolve_all(&mut lb);
        lb.apply().unwrap();
        lb.dataplane_mut().ops.clear();
        assert!(lb
            .set_next_hop(
                4,
                Some(NextHop {
                    port: 0,
                    mac: [0xbb; 6]
                })
            )
            .unwrap());
        let r = lb.apply().unwrap();
        assert_eq!(
            r,
            ApplyReport {
                backends_written: 1,
                ..ApplyReport::default()
            }
        );
        assert_eq!(lb.dataplane().backends[&4].ifindex, 10);
        assert_eq!(lb.dataplane().backends[&4].smac, [2, 0, 0, 0, 0, 10]);
    }

    #[test]
    fn a_failed_ring_write_is_retried_in_full_and_nothing_flips() {
        let mut lb = balancer();
        resolve_all(&mut lb);
        lb.apply().unwrap(); // service 0: buffer 1 active
        let full = lb.services()[0].active_table().to_vec();
        lb.set_next_hop(1, None).unwrap();
        lb.apply().unwrap(); // buffer 0 active (without backend 1)
        lb.set_next_hop(
            1,
            Some(NextHop {
                port: 1,
                mac: [0xaa, 0, 0, 0, 0, 1],
            }),
        )
        .unwrap();
        lb.set_next_hop(2, None).unwrap();
        lb.dataplane_mut().fail_ring_write_after = Some(10);
        lb.dataplane_mut().ops.clear();
        assert!(lb.apply().is_err());
        assert!(
            !lb.dataplane()
                .ops
                .iter()
                .any(|o| matches!(o, Op::Flip { .. })),
            "no flip after a failed write"
        );
        assert_eq!(lb.services()[0].value.ring_base, 0);
        assert_eq!(lb.dataplane().services[&0].ring_base, 0);

        // Some slots of buffer 1 now hold an unknown mix: the retry rewrites all of them.
        let r = lb.apply().unwrap();
        assert_eq!(r.flips, [(0, M as usize)]);
        let want = lb.services()[0].active_table().to_vec();
        assert_ne!(want, full);
        assert_eq!(lb.dataplane().table(M, M), want);
    }

    #[test]
    fn unknown_ports_and_ids_are_refused() {
        let mut lb = balancer();
        assert!(matches!(
            lb.set_next_hop(
                1,
                Some(NextHop {
                    port: 2,
                    mac: [0; 6]
                })
            ),
            Err(StateError::UnknownPort { id: 1, port: 2 })
        ));
        assert!(matches!(
            lb.set_next_hop(99, None),
            Err(StateError::UnknownBackend { id: 99 })
        ));
    }

    #[test]
    fn ids_run_out_with_a_clear_error() {
        let err = Balancer::new(FakeDataplane::default(), &config(), ifaces(), 3)
            .err()
            .unwrap();
        assert!(
            matches!(err, StateError::IdsExhausted { capacity: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn capacity_has_headroom() {
        assert_eq!(backend_capacity(3), MIN_BACKEND_CAPACITY);
        assert_eq!(backend_capacity(5000), 10_002);
    }
}
