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
//!   the tick T; (2) off the loop, after [`SWEEP_GRACE`], the persistence and probation maps
//!   of both families are read (a new client's probation entry names the backend the data
//!   path sends it to just as an established entry does: the invariant is over both maps);
//!   (3) [`Balancer::clear_flags`] (IPv4 services, by `PERSIST_V4` and `PROBATION_V4`) and
//!   [`Balancer::clear_flags_v6`] (IPv6 services, by `PERSIST_V6` and `PROBATION_V6`),
//!   back on the loop, clear the flag of each slot that is flagged, whose backend last
//!   changed at an epoch ≤ E, and for which no entry live at T (the data path's idle test,
//!   one tick of margin) names another backend than the active table's — an entry's slot
//!   computed with the data path's client hash of its family. They write the active table's
//!   slot in place and then the mirror.
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
//! behaviour without the fast path. Each family's services are swept by that family's maps
//! only: the data path looks an IPv6 client up in the IPv6 maps, never in the IPv4 ones.
//!
//! ## Slot moves (`slot_move_delay`)
//!
//! The fast path refreshes one client's entry per slot and tick (`lb-ebpf/README.md`, "Slot
//! fast path"). A client that shares its slot with a busier one may come first in a tick so
//! rarely that its entry idles out while it is active; that costs it nothing while the slot
//! keeps its backend (the ring names the same one), but when the slot's backend changes it
//! would move. So with the fast path on, a slot whose backend changes while the old one is
//! still usable (a backend added, a weight changed, a recovery, a drain) **keeps the old
//! backend, flagged, for `slot_move_delay`** (default 5 s) before it moves
//! ([`Balancer::apply_at`]): flagged, every packet of the slot takes the persistence path, so
//! a client that sends anything meanwhile refreshes its entry — an idled-out one is
//! re-selected by the ring, which still names the old backend — and keeps that backend after
//! the move. New clients of the slot go to the old backend until then. A slot whose old
//! backend is no longer usable (failed, removed) moves at once: its sessions are gone; so
//! does a slot of a backend that starts draining, which takes no new client from then on —
//! there, a client of the slot whose entry idled out while it was active is re-balanced (the
//! trade for a drain that means what it says). A new
//! change during a hold restarts the service's delay; the sweep never clears a held slot's
//! flag. The daemon applies at least once a second, so a due move is made within a second.
//! With the fast path off every packet refreshes its own entry and slots move at once.
//!
//! ## Modules
//!
//! * `state/backends.rs` — backends and their ids: add/remove, health, drain, weight, and the
//!   `BACKENDS` writes around a flip;
//! * `state/interfaces.rs` — the attached interfaces, their ports, and backends' next hops;
//! * `state/apply.rs` — services and their Maglev tables: build, write and flip
//!   ([`Balancer::apply`]);
//! * `state/services.rs` — services from the config, and those a reload adds or removes;
//! * `state/preview.rs` — the tables an edit would give, for dry runs;
//! * `state/sweep.rs` — the slot flag sweep ("Slot flags" above);
//! * `state/timeout.rs` — `persistence_timeout` changed by a reload (the program swap, the
//!   flags it needs, the sweeps it outdates);
//! * `state/adopt.rs` — restart over pinned maps.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

use lb_common::{Service, BACKEND_NONE};

use crate::{
    config::Config,
    dataplane::{Dataplane, DataplaneError},
    health::HealthState,
    identity::Identity,
};

mod apply;
mod backends;
mod interfaces;
mod preview;
mod services;
mod sweep;

use backends::IdAllocator;

pub use apply::{ApplyReport, ServiceState};
pub use backends::{backend_capacity, BackendState, MIN_BACKEND_CAPACITY};
pub use interfaces::{IfaceInfo, NextHop};
pub use preview::{Edit, Preview};
pub use sweep::{SweepReport, SweepTicket, SWEEP_GRACE};

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
    #[error("the sweep began under another persistence_timeout (a reload changed it): its result is discarded")]
    SweepOutdated,
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
    /// Ids below this fit the maps indexed by service id (`SERVICES`, `RINGS`): a service a
    /// reload adds needs one ([`Balancer::add_service`]).
    service_capacity: u32,
    /// IPv6 services `VIPS_V6` holds.
    v6_capacity: u32,
    /// Ids of services removed while running: not given to a new service before a restart
    /// (entries keyed by them may still be in the persistence maps).
    retired: Vec<u32>,
    /// Services pinned by a previous daemon whose VIP the config no longer has (adoption),
    /// or removed by a reload: forgotten by the next apply.
    stale_services: Vec<Service>,
    backends: BTreeMap<u32, BackendState>,
    ids: IdAllocator,
    /// Removed backends (id, address) still to be forgotten in the maps (step 4 of the
    /// write order); their ids are released once that is done.
    removed: Vec<(u32, IpAddr)>,
    ifaces_written: bool,
    /// Table flips since start (`ikelb_maglev_rebuilds_total`).
    flips: u64,
    /// Maglev tables computed since start (a flip, or a build that changed nothing).
    builds: u64,
    /// Flips since start, as the generation [`ServiceState::changed_at`] and sweep tickets
    /// count in.
    epoch: u32,
    /// How long a slot whose backend changes keeps its old, still usable backend, flagged,
    /// before it moves ("Slot moves"); zero with the slot fast path off.
    slot_move_delay: std::time::Duration,
    /// `PERSIST_TIMEOUT_TICKS` of the running program, and how many times a reload changed
    /// it (sweep tickets carry it: `state/timeout.rs`).
    persist_timeout_ticks: u32,
    timeout_generation: u32,
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
            let mut service = ServiceState::new(vs, id, m);
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
            service.members = members;
            services.push(service);
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
            service_capacity: u32::MAX,
            v6_capacity: u32::MAX,
            retired: Vec::new(),
            stale_services: Vec::new(),
            backends,
            ids,
            removed: Vec::new(),
            ifaces_written: false,
            flips: 0,
            builds: 0,
            epoch: 0,
            slot_move_delay: if config.slot_fast_path {
                config.slot_move_delay
            } else {
                std::time::Duration::ZERO
            },
            persist_timeout_ticks: config.persist_timeout_ticks(),
            timeout_generation: 0,
        })
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Maglev tables flipped since this balancer was made (`ikelb_maglev_rebuilds_total`).
    pub fn flips(&self) -> u64 {
        self.flips
    }

    /// Maglev tables computed since this balancer was made: an apply after an event that
    /// changed no member of a service computes none for it.
    pub fn builds(&self) -> u64 {
        self.builds
    }

    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    pub fn seed(&self) -> u32 {
        self.seed
    }
}

mod timeout;

// Restart over pinned maps (`crate::pin`): a separate file, `state/adopt.rs`.
mod adopt;
pub use adopt::AdoptReport;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod test_support;
