//! The control plane's model of what the data path should hold, and the logic that brings
//! the maps there with the fewest, safest writes.
//!
//! Config → one *service* per VIP (id by name, stable across restarts and config edits:
//! [`crate::identity`]) → backends with
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
//!
//! ## Slot flags (`RING_F_CHANGED`, the data path's slot fast path)
//!
//! With `slot_fast_path` on, the data path sends bulk packets (ESP) of a client whose slot is
//! not flagged `RING_F_CHANGED` to the slot's backend without reading its persistence entry.
//! That is right only while **no live entry of an unflagged slot names another backend than
//! the slot's** (the invariant). It is kept by two rules:
//!
//! * **Setting** ([`Balancer::apply`]): every table written gets `RING_F_CHANGED` on each
//!   slot whose backend differs from the active table's (a slot that had no backend held no
//!   session: the first table of a fresh service has no flag), and keeps the flag of every
//!   slot flagged in the active table. The flag travels in the same `u32` as the backend, so
//!   the flip that changes a slot's backend also flags it. The mirror holds the flags, so they
//!   survive flips and, read back from the pinned `RINGS`, an adoption. After a map migration,
//!   or when the pinned program was another build or had other globals (another `hash_seed`
//!   puts every client in another slot), the first table flags every slot
//!   ([`Balancer::flag_all_slots`]).
//! * **Clearing** (the sweep, every `persistence_timeout`/4 while the fast path is on): (1)
//!   [`Balancer::sweep_ticket`] on the daemon's loop records the epoch E (flips so far) and
//!   the tick T; (2) off the loop, after [`SWEEP_GRACE`], `PERSIST_V4` and `PROBATION_V4`
//!   are read (a new client's probation entry names the backend the data path sends it to
//!   just as an established entry does: the invariant is over both maps); (3)
//!   [`Balancer::clear_flags`], back on the loop, clears the flag of each slot that is
//!   flagged, whose backend last changed at an epoch ≤ E, and for which no entry live at T
//!   (the data path's idle test, one tick of margin) names another backend than the active
//!   table's. It writes the active table's slot in place and then the mirror.
//!
//! Why clearing is safe, races included. Every `Balancer` write — flips and clears — happens
//! on the daemon's loop through `&mut self`, so a clear never interleaves with a flip: the
//! active table a clear writes is the one it checked, and a slot whose backend changed after
//! the ticket (a flip between the ticket and the clear: `changed_at > E`) is never cleared,
//! even if it changed back (A→B→A: entries naming B may have been written after the scan
//! passed them). The concurrency left is the data path's. For a slot whose backend is the
//! same since before E:
//! * an entry the data path *creates or overwrites* takes the ring's backend, which is the
//!   active table's — unless the packet read an older table (before E). Such a packet's
//!   program run ends within microseconds; the scan starts [`SWEEP_GRACE`] after the ticket,
//!   so its entry is there to be read, live.
//! * an entry that *exists* keeps its backend (refreshing `atime` only); entries live when
//!   the scan begins are read (an LRU hash walk sees every element present throughout; one
//!   evicted meanwhile is gone for the data path too).
//! * an entry idle at T stays idle (the data path's clock only advances) until a packet
//!   overwrites it — with the active table's backend, as above. An `atime` after T is live.
//! * the write itself only drops the flag bit of a slot whose backend it keeps; a packet
//!   reading the slot before or after it is sent to the same, right, backend.
//!
//! A clear that fails part way leaves the map and the mirror equal (one slot per write).
//! Flags only ever cost speed: a flagged slot takes the persistence path, exactly the
//! behaviour without the fast path. IPv6 services are not swept (the fast path is IPv4 only),
//! so their flags only accumulate.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::SystemTime,
};

use lb_common::{
    maglev::{self, Member},
    Backend, Iface, PersistKeyV4, PersistValue, Service, BACKEND_F_USABLE, BACKEND_NONE, FAMILY_V4,
    FAMILY_V6, MAX_PORTS, RING_BACKEND_MASK, RING_F_CHANGED, SVC_F_ESP,
};

use crate::{
    config::Config,
    dataplane::{addr_words, port_wire, Dataplane, DataplaneError},
    health::HealthState,
    identity::Identity,
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

/// Where to send a backend's frames: out of interface `port` (its number in `IFACES` and
/// `TX_PORTS`, by name: [`crate::identity`]) to
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

    fn value(&self, ifaces: &[IfaceInfo], ports: &[u32]) -> Backend {
        let mut b = Backend {
            addr: addr_words(self.address),
            service: self.service,
            ..Backend::default()
        };
        let iface = |port: u32| ports.iter().position(|&p| p == port).map(|i| &ifaces[i]);
        if let (true, Some(nh)) = (self.usable(), self.next_hop) {
            // `set_next_hop` refuses a port no interface has.
            let iface = iface(nh.port).expect("the next hop's port is an interface's");
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
    /// Per slot: the [`Balancer`] epoch (flip count) of the flip that last changed the slot's
    /// backend in the active table (0: before this balancer). The sweep clears a flag only on
    /// slots unchanged since its ticket (see "Slot flags").
    changed_at: Vec<u32>,
    /// Flag every slot of the next table (after a map migration, or when the pinned program
    /// was another build or had other globals: the pinned flags may not describe the pinned
    /// persistence entries).
    flag_all: bool,
}

impl ServiceState {
    /// The table the data path reads now (backend id | `RING_F_*` per slot).
    pub fn active_table(&self) -> &[u32] {
        &self.buffers[self.active]
    }

    /// The backend of `slot` in the active table (flags stripped).
    pub fn active_backend(&self, slot: usize) -> u32 {
        self.buffers[self.active][slot] & RING_BACKEND_MASK
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

    /// Takes back an id [`alloc`](IdAllocator::alloc) just handed out and that was never
    /// written to the maps: the allocator is as it was before.
    fn unalloc(&mut self, id: u32) {
        if id + 1 == self.next {
            self.next -= 1;
        } else {
            self.free.push_front(id);
        }
    }

    /// Rebuilds the free list from what is actually in use (after an adoption renumbered
    /// every backend): every id below `next` and the capacity that `in_use` does not hold is
    /// free, lowest first. Without this, ids that were free when the previous daemon stopped
    /// would be lost at every restart.
    fn rebuild_free(&mut self, in_use: &std::collections::BTreeSet<u32>) {
        let end = self.next.min(self.capacity);
        self.free = (BACKEND_NONE + 1..end)
            .filter(|id| !in_use.contains(id))
            .collect();
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
    #[error("virtual server {name} ({vip}) has no service id assigned")]
    NoServiceId { name: String, vip: IpAddr },
    #[error("interface {name} has no port assigned")]
    NoPort { name: String },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// Owns the dataplane and keeps it in step with the desired state.
pub struct Balancer<D> {
    dp: D,
    ring_size: u32,
    seed: u32,
    ifaces: Vec<IfaceInfo>,
    /// Port (`IFACES`/`TX_PORTS` index) of each interface (same order as `ifaces`).
    ports: Vec<u32>,
    /// `INGRESS_F_*` role flags of each interface (same order as `ifaces`).
    roles: Vec<u32>,
    /// In config order (the order of `config.virtual_servers`); `value.id` is the service id.
    services: Vec<ServiceState>,
    /// Service id → index in `services`.
    service_pos: BTreeMap<u32, usize>,
    /// Services pinned by a previous daemon whose VIP the config no longer has (adoption):
    /// forgotten by the next apply.
    stale_services: Vec<Service>,
    backends: BTreeMap<u32, BackendState>,
    ids: IdAllocator,
    /// Removed backends (id, address) still to be forgotten in the maps (step 4 of the
    /// write order); their ids are released once that is done.
    removed: Vec<(u32, IpAddr)>,
    ifaces_written: bool,
    /// Table flips since start (`ikelb_maglev_rebuilds_total`).
    flips: u64,
    /// Flips since start, as the generation [`ServiceState::changed_at`] and sweep tickets
    /// count in.
    epoch: u32,
}

impl<D: Dataplane> Balancer<D> {
    /// Builds the desired state of `config` (no map is touched until [`apply`]), with
    /// service ids and ports by position ([`Identity::positional`]: a first start).
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
        let identity = Identity::positional(config, ifaces.iter().map(|i| i.name.as_str()));
        Self::with_identity(dp, config, ifaces, backend_capacity, &identity)
    }

    /// [`new`](Balancer::new) with the service ids and ports of `identity`
    /// ([`crate::identity::assign`]), which must name every configured service and interface.
    pub fn with_identity(
        dp: D,
        config: &Config,
        ifaces: Vec<IfaceInfo>,
        backend_capacity: u32,
        identity: &Identity,
    ) -> Result<Self, StateError> {
        let m = config.maglev_table_size;
        let mut ids = IdAllocator {
            next: BACKEND_NONE + 1,
            capacity: backend_capacity,
            free: VecDeque::new(),
        };
        let mut services = Vec::new();
        let mut backends = BTreeMap::new();
        let mut service_pos = BTreeMap::new();
        for (pos, vs) in config.virtual_servers.iter().enumerate() {
            let id = identity
                .service(vs)
                .ok_or_else(|| StateError::NoServiceId {
                    name: vs.name.clone(),
                    vip: vs.vip,
                })?;
            service_pos.insert(id, pos);
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
                changed_at: vec![0; m as usize],
                flag_all: false,
            });
        }
        // Interfaces beyond the config's (only in tests) get both roles.
        let roles = (0..ifaces.len())
            .map(|i| {
                config
                    .interfaces
                    .get(i)
                    .map_or(crate::config::Role::Both, |s| s.role)
                    .ingress_flags()
            })
            .collect();
        let ports = ifaces
            .iter()
            .map(|i| {
                identity
                    .ports
                    .get(&i.name)
                    .copied()
                    .ok_or_else(|| StateError::NoPort {
                        name: i.name.clone(),
                    })
            })
            .collect::<Result<Vec<u32>, StateError>>()?;
        Ok(Self {
            dp,
            ring_size: m,
            seed: config.hash_seed,
            ifaces,
            ports,
            roles,
            services,
            service_pos,
            stale_services: Vec::new(),
            backends,
            ids,
            removed: Vec::new(),
            ifaces_written: false,
            flips: 0,
            epoch: 0,
        })
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Every service, in config order (the order of `config.virtual_servers`; the service
    /// id is `value.id`).
    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// Index in [`services`](Balancer::services) (and `config.virtual_servers`) of service
    /// `id`.
    pub fn service_index(&self, id: u32) -> Option<usize> {
        self.service_pos.get(&id).copied()
    }

    /// Service `id` (a backend's `service`, a persistence key's). Panics on an id no
    /// configured service has, as indexing would: every backend's service is configured.
    pub fn service(&self, id: u32) -> &ServiceState {
        &self.services[self.service_pos[&id]]
    }

    /// The interface with port `port`.
    pub fn iface(&self, port: u32) -> Option<&IfaceInfo> {
        let i = self.ports.iter().position(|&p| p == port)?;
        Some(&self.ifaces[i])
    }

    /// The port of interface `name`.
    pub fn port_of(&self, name: &str) -> Option<u32> {
        let i = self.ifaces.iter().position(|i| i.name == name)?;
        Some(self.ports[i])
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

    /// Adds a backend to the service at index `service` of [`services`](Balancer::services)
    /// (config order, not the service id) (health Unknown, next hop unresolved: unusable
    /// until both are known). Returns its id. The caller has validated the address.
    pub fn add_backend(
        &mut self,
        service: u32,
        address: IpAddr,
        weight: u32,
    ) -> Result<u32, StateError> {
        let pos = service as usize;
        let svc = self
            .services
            .get(pos)
            .ok_or(StateError::UnknownService { service })?;
        let service = svc.value.id;
        let id = self.ids.alloc().ok_or_else(|| StateError::IdsExhausted {
            service: svc.name.clone(),
            address,
            capacity: self.ids.capacity,
        })?;
        self.services[pos].members.push(id);
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

    /// Takes back a backend [`add_backend`](Balancer::add_backend) just added, before any
    /// [`apply`](Balancer::apply) wrote it (a request whose change could not be saved): the
    /// model and the id allocator are as they were before the add.
    pub fn cancel_add(&mut self, id: u32) -> Result<(), StateError> {
        match self.backends.get(&id) {
            Some(b) if b.written.is_none() => {}
            _ => return Err(StateError::UnknownBackend { id }),
        }
        let b = self.backends.remove(&id).expect("checked above");
        let pos = self.service_pos[&b.service];
        self.services[pos].members.retain(|&m| m != id);
        self.ids.unalloc(id);
        Ok(())
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
        let pos = self.service_pos[&b.service];
        self.services[pos].members.retain(|&m| m != id);
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
            if !self.ports.contains(&nh.port) {
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
            for ((i, &roles), &port) in self.ifaces.iter().zip(&self.roles).zip(&self.ports) {
                self.dp.set_iface(
                    port,
                    &Iface {
                        ifindex: i.ifindex,
                        mac: i.mac,
                        _pad: [0; 2],
                    },
                    roles,
                )?;
            }
            // Interfaces a previous daemon attached that left the config: their port may
            // now be another interface's.
            let keep: Vec<u32> = self.ifaces.iter().map(|i| i.ifindex).collect();
            self.dp.forget_other_ifaces(&keep)?;
            self.ifaces_written = true;
        }
        // VIPs a previous daemon served and the config no longer has: not balanced any more,
        // and their id's `SERVICES` slot cleared unless a configured service holds it.
        while let Some(stale) = self.stale_services.first().copied() {
            let slot = !self.service_pos.contains_key(&stale.id);
            self.dp.forget_service(&stale, slot)?;
            self.stale_services.remove(0);
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
            let value = b.value(&self.ifaces, &self.ports);
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
        let built = maglev::build(&members, self.ring_size, self.seed);
        let m = self.ring_size;
        let svc = &mut self.services[idx];
        // Slot flags (module doc, "Slot flags"): set where the backend changes against the
        // active table (a slot that had none holds no session), kept where already set.
        let flag_all = svc.flag_all;
        let table: Vec<u32> = built
            .iter()
            .zip(&svc.buffers[svc.active])
            .map(|(&new, &old)| {
                let was = old & RING_BACKEND_MASK;
                let changed = was != BACKEND_NONE && was != new;
                if flag_all || changed || old & RING_F_CHANGED != 0 {
                    new | RING_F_CHANGED
                } else {
                    new
                }
            })
            .collect();
        if table == svc.buffers[svc.active] {
            svc.flag_all = false;
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
        self.epoch = self.epoch.wrapping_add(1).max(1);
        let epoch = self.epoch;
        for ((at, &new), &old) in svc
            .changed_at
            .iter_mut()
            .zip(&svc.buffers[inactive])
            .zip(&svc.buffers[svc.active])
        {
            if (new ^ old) & RING_BACKEND_MASK != 0 {
                *at = epoch;
            }
        }
        svc.value = value;
        svc.active = inactive;
        svc.written = true;
        svc.flag_all = false;
        self.flips += 1;
        Ok(Some((value.id, slots.len())))
    }
}

/// What a flag sweep saw when it began ([`Balancer::sweep_ticket`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepTicket {
    /// [`Balancer`] epoch (flips so far) when the sweep began.
    pub epoch: u32,
    /// Persistence tick (`CLOCK_MONOTONIC_COARSE` >> `TICK_SHIFT`) when the sweep began:
    /// entries idle by then are ignored.
    pub tick: u32,
}

/// How long a sweep waits between its ticket and reading the persistence map, so that every
/// packet that read a table older than the ticket has finished writing its entry (an XDP
/// program run takes microseconds; this is a wide margin).
pub const SWEEP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What one [`Balancer::clear_flags`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Slots whose flag was cleared.
    pub cleared: usize,
    /// Flagged slots left flagged (a disagreeing live entry, or changed since the ticket).
    pub kept: usize,
}

impl<D: Dataplane> Balancer<D> {
    /// Flags every slot of every service's next table (and forces that table to be written
    /// and flipped at the next [`apply`](Balancer::apply)): for a data path whose pinned
    /// flags may not describe its persistence entries (a map migration, another build or
    /// other globals, e.g. a new `hash_seed`).
    pub fn flag_all_slots(&mut self) {
        for s in &mut self.services {
            s.flag_all = true;
        }
    }

    /// Slots flagged `RING_F_CHANGED` in the active tables, all services.
    pub fn flagged_slots(&self) -> usize {
        self.services
            .iter()
            .map(|s| {
                s.active_table()
                    .iter()
                    .filter(|&&v| v & RING_F_CHANGED != 0)
                    .count()
            })
            .sum()
    }

    /// Begins a flag sweep: records the epoch and `tick` (now). The caller then waits
    /// [`SWEEP_GRACE`], reads `PERSIST_V4` and hands the entries to
    /// [`clear_flags`](Balancer::clear_flags) (see "Slot flags" in the module doc).
    pub fn sweep_ticket(&self, tick: u32) -> SweepTicket {
        SweepTicket {
            epoch: self.epoch,
            tick,
        }
    }

    /// Ends a flag sweep: clears `RING_F_CHANGED` on every slot of an IPv4 service's active
    /// table that is flagged, whose backend has not changed since `ticket`, and that no
    /// entry of `entries` (a read of `PERSIST_V4` and `PROBATION_V4`, the latter as their
    /// `PersistValue` part, begun at least [`SWEEP_GRACE`] after the
    /// ticket) disagrees with while live. Live: `ticket.tick − atime ≤ timeout + 1` ticks (the
    /// data path's own idle test, one tick more; an atime after the ticket is live). The
    /// active table's slots and the mirror are written in place.
    pub fn clear_flags(
        &mut self,
        ticket: SweepTicket,
        entries: &[(PersistKeyV4, PersistValue)],
        timeout_ticks: u32,
    ) -> Result<SweepReport, StateError> {
        let m = self.ring_size;
        let mut report = SweepReport::default();
        // Per service: slots with a live entry that disagrees with the active table.
        let mut keep: BTreeMap<u32, std::collections::BTreeSet<u32>> = BTreeMap::new();
        for (k, v) in entries {
            let Some(svc) = self.service_index(k.service).map(|i| &self.services[i]) else {
                continue;
            };
            // One tick of grace: the ticket's tick was read before the scan began.
            let live = lb_common::is_live(ticket.tick, v.atime, timeout_ticks.saturating_add(1));
            if !live {
                continue;
            }
            let slot = lb_common::hash::client_hash_v4(k.client, self.seed) % m;
            if v.backend != svc.active_backend(slot as usize) {
                keep.entry(k.service).or_default().insert(slot);
            }
        }
        let none = std::collections::BTreeSet::new();
        for svc in &mut self.services {
            // Only IPv4 services have their entries here (the fast path is IPv4 only).
            if svc.value.family != FAMILY_V4 || !svc.written {
                continue;
            }
            let keep = keep.get(&svc.value.id).unwrap_or(&none);
            let base = svc.value.ring_base;
            let active = svc.active;
            let mut writes = Vec::new();
            for (slot, &v) in svc.buffers[active].iter().enumerate() {
                if v & RING_F_CHANGED == 0 {
                    continue;
                }
                let since = svc.changed_at[slot];
                // Changed after the ticket (epochs wrap after 2^32 flips; not a concern).
                if since > ticket.epoch || keep.contains(&(slot as u32)) {
                    report.kept += 1;
                    continue;
                }
                writes.push((base + slot as u32, v & !RING_F_CHANGED));
            }
            // One slot at a time, the mirror following each write: after a failure the
            // mirror still matches the map exactly.
            for w in writes {
                self.dp.write_ring_slots(&[w])?;
                svc.buffers[active][(w.0 - base) as usize] = w.1;
                report.cleared += 1;
            }
        }
        Ok(report)
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
mod tests;
