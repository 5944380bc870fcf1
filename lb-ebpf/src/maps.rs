//! Every map and load-time global of the program, named exactly as `lb_common::maps::*` and
//! `lb_common::globals::*` so the daemon finds them by those constants.
//!
//! The `max_entries` below are small defaults for tests and `cargo xtask run`; the daemon sets
//! the real sizes from its configuration with `EbpfLoader::set_max_entries`.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    counter, event, ike, Backend, EspSaKey, Iface, IkeSaKey, PersistKeyV4, PersistKeyV6,
    PersistValue, ProbationValue, ProofKeyV4, ProofKeyV6, Quota, Service, Traffic, VipSlot,
    VipSlot6, DEFAULT_RING_SIZE, INGRESS_SLOTS, MAX_IFACES, VIP_INDEX_SLOTS, VIP_SLOT_ONE,
    VIP_SLOT_SHARED,
};

/// Default number of services (VIPs) and backends the maps hold.
const SERVICES_DEFAULT: u32 = 16;
const BACKENDS_DEFAULT: u32 = 256;
const PERSIST_DEFAULT: u32 = 4096;
const PROBATION_DEFAULT: u32 = 1024;

/// Key: VIP (IPv4, wire order). Value: its [`Service`]. Written by the daemon; read by the
/// forward path when several IPv4 VIPs share a `VIP_INDEX_V4` slot.
#[map]
pub static VIPS_V4: HashMap<u32, Service> = HashMap::with_max_entries(SERVICES_DEFAULT, 0);

/// Key: VIP (IPv6, wire order words). Value: its [`Service`]. Written by the daemon; read by
/// the forward path when several IPv6 VIPs share a `VIP_INDEX_V6` slot.
#[map]
pub static VIPS_V6: HashMap<[u32; 4], Service> = HashMap::with_max_entries(SERVICES_DEFAULT, 0);

/// Key: `lb_common::vip_slot(daddr)`. Value: which IPv4 VIP hashes there ([`VipSlot`]). Written
/// by the daemon after `VIPS_V4` and `SERVICES`; read first by every IPv4 packet (`vip_v4`).
#[map]
pub static VIP_INDEX_V4: Array<VipSlot> = Array::with_max_entries(VIP_INDEX_SLOTS, 0);

/// Key: `lb_common::vip_slot6(daddr)`. Value: which IPv6 VIP hashes there ([`VipSlot6`]).
/// As `VIP_INDEX_V4`, for every IPv6 packet (`vip_v6`).
#[map]
pub static VIP_INDEX_V6: Array<VipSlot6> = Array::with_max_entries(VIP_INDEX_SLOTS, 0);

/// Key: service id. Value: its [`Service`]. Written by the daemon; read by the reverse path
/// (backend → client) to find the VIP and port set of a backend's service.
#[map]
pub static SERVICES: Array<Service> = Array::with_max_entries(SERVICES_DEFAULT, 0);

/// Key: `Service::ring_base + slot`. Value: backend id (`RING_BACKEND_MASK`) | `RING_F_*`.
/// Every service's two Maglev tables back to back. Written by the daemon (inactive half, then
/// the `ring_base` flip); read by the forward path on a persistence miss.
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(2 * DEFAULT_RING_SIZE, 0);

/// Key: backend id (0 = none, never written). Value: [`Backend`]. Written by the daemon;
/// read by both paths. A slot whose address is 0 was never written and counts as missing.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(BACKENDS_DEFAULT, 0);

/// Key: backend address (IPv4, wire order). Value: backend id, or `OWN_ADDRESS_ID` for one of
/// the gateway's own addresses. Written by the daemon; read by the reverse path to recognise
/// a backend's replies, and by the forward path for a source without an entry (a backend or
/// own address is never a client).
#[map]
pub static BACKEND_IDS_V4: HashMap<u32, u32> = HashMap::with_max_entries(BACKENDS_DEFAULT, 0);

/// As [`BACKEND_IDS_V4`] for IPv6 (address in wire order words).
#[map]
pub static BACKEND_IDS_V6: HashMap<[u32; 4], u32> = HashMap::with_max_entries(BACKENDS_DEFAULT, 0);

/// Key: (service id, client address). Value: [`PersistValue`] (backend, last seen, where the
/// client's frames come from). Written by the forward path (insert on a miss, in-place
/// re-select, `atime`, learned MAC and port); read by both paths and by the daemon (`lookup`,
/// client counts, drain).
#[map]
pub static PERSIST_V4: LruHashMap<PersistKeyV4, PersistValue> =
    LruHashMap::with_max_entries(PERSIST_DEFAULT, 0);

/// As [`PERSIST_V4`] for IPv6 clients.
#[map]
pub static PERSIST_V6: LruHashMap<PersistKeyV6, PersistValue> =
    LruHashMap::with_max_entries(PERSIST_DEFAULT, 0);

/// Key: (service id, client address). Value: [`ProbationValue`]. Clients that have not shown
/// return routability yet: created by the forward path for a new client (rationed by
/// `QUOTA`), given its proof by the reverse path, deleted on promotion into `PERSIST_V4`.
/// A spoofed flood churns this map only. Read by the daemon like `PERSIST_V4`.
#[map]
pub static PROBATION_V4: LruHashMap<PersistKeyV4, ProbationValue> =
    LruHashMap::with_max_entries(PROBATION_DEFAULT, 0);

/// As [`PROBATION_V4`] for IPv6 clients.
#[map]
pub static PROBATION_V6: LruHashMap<PersistKeyV6, ProbationValue> =
    LruHashMap::with_max_entries(PROBATION_DEFAULT, 0);

/// Key: (service, client, proof). Value: backend id. Every proof the reverse path saw a
/// backend send to a probation client (the entry's `proof` keeps only the last): written by
/// the reverse path, read by the forward path when a probation client's packet carries a proof
/// that is not the entry's. Sized like the probation map by the daemon.
#[map]
pub static PROOFS_V4: LruHashMap<ProofKeyV4, u32> =
    LruHashMap::with_max_entries(PROBATION_DEFAULT, 0);

/// As [`PROOFS_V4`] for IPv6 clients.
#[map]
pub static PROOFS_V6: LruHashMap<ProofKeyV6, u32> =
    LruHashMap::with_max_entries(PROBATION_DEFAULT, 0);

/// Key: (service, IKE initiator SPI). Value: the backend id of an IKE SA an established client
/// of the service has through ikelb. Written by the forward path (when a client is promoted,
/// and once a tick from an established client's IKE message), never over an existing entry;
/// read for a packet from an address without any entry (`sa_steering`). Sized like the
/// persistence maps together by the daemon.
#[map]
pub static IKE_SAS: LruHashMap<IkeSaKey, u32> = LruHashMap::with_max_entries(PERSIST_DEFAULT, 0);

/// Key: (service, ESP SPI). Value: the backend id of an inbound ESP SA (client to backend) of
/// an established client. As [`IKE_SAS`], learned once a tick from an established client's
/// ESP.
#[map]
pub static ESP_SAS: LruHashMap<EspSaKey, u32> = LruHashMap::with_max_entries(PERSIST_DEFAULT, 0);

/// Key: `Service::ring_base + slot`, as `RINGS`. Value: the tick (`select::now_ticks`) in
/// which a packet of that ring slot last went through the persistence path and refreshed its
/// client's entry. Written by the forward path (at most once a tick per slot, only with the
/// slot fast path on); read by the slot fast path, which skips the maps only in a slot
/// refreshed in the current tick. Not read by the daemon; sized like `RINGS` by it.
///
/// Despite its name it serves IPv4 and IPv6 services alike: it is indexed like `RINGS`, whose
/// indices are unique across the services of both families. The name stays because it is a
/// pinned map: renaming it would force a map migration on every upgrade
/// (`docs/restart-and-upgrade.md`).
#[map]
pub static REFRESHED_V4: Array<u32> = Array::with_max_entries(2 * DEFAULT_RING_SIZE, 0);

/// Key: ifindex (< `INGRESS_SLOTS`). Value: port | `INGRESS_F_*` (0: not ours). Written by the
/// daemon; read by the forward path for every VIP packet (role check) and when a client's
/// ingress changes.
#[map]
pub static INGRESS: Array<u32> = Array::with_max_entries(INGRESS_SLOTS, 0);

/// Key: 0. Value: [`Quota`], per CPU: the probation inserts of the current window. Written
/// by the forward path.
#[map]
pub static QUOTA: PerCpuArray<Quota> = PerCpuArray::with_max_entries(1, 0);

/// Key: `lb_common::event::*`. Value: occurrences, per CPU. Written by the program; read by
/// the daemon for `ikelb_xdp_events_total`.
#[map]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);

/// Key: port (position in the config's `interfaces`). Value: [`Iface`] (ifindex, MAC).
/// Written by the daemon; read by the reverse path for the source MAC toward a client.
#[map]
pub static IFACES: Array<Iface> = Array::with_max_entries(MAX_IFACES, 0);

/// Key: ifindex. Value: port | `INGRESS_F_*`. Written by the daemon; read by the program only
/// for an ifindex ≥ `INGRESS_SLOTS` (`INGRESS` holds the others).
#[map]
pub static IFINDEX_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);

/// Key: port. Value: the interface (devmap entry). Written by the daemon; read by
/// `bpf_redirect_map` when a frame leaves by another interface than it came in on.
#[map]
pub static TX_PORTS: DevMap = DevMap::with_max_entries(MAX_IFACES, 0);

/// Key: `lb_common::counter::*`. Value: packets, per CPU. Written by the program (every
/// verdict bumps exactly one); read by the daemon for `ikelb_xdp_packets_total`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Key: `lb_common::ike::*`. Value: occurrences, per CPU. Written by the program on IKE
/// messages, IP fragments and SA steering only (`crate::ike`); read by the daemon for the
/// `ikelb_ike_*` metrics.
#[map]
pub static IKE_STAGES: PerCpuArray<u64> = PerCpuArray::with_max_entries(ike::COUNT, 0);

/// Key: `backend id * 2 + DIR_*`. Value: [`Traffic`], per CPU. Written by the program on
/// every forwarded packet; read by the daemon for `ikelb_backend_{packets,bytes}_total`.
#[map]
pub static BACKEND_STATS: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(2 * BACKENDS_DEFAULT, 0);

// Load-time globals (`EbpfLoader::set_global`), read with `read_volatile` so the compiler
// does not fold the defaults into the code.

/// Maglev table size M (prime).
#[no_mangle]
static RING_SIZE: u32 = DEFAULT_RING_SIZE;
/// Idle ticks after which a persisted client is re-selected.
#[no_mangle]
static PERSIST_TIMEOUT_TICKS: u32 = 1676; // 30 min, the config default
/// Client hash seed (config `hash_seed`).
#[no_mangle]
static HASH_SEED: u32 = 0;
/// 1 = `mode: dsr` (MAC rewrite only, no reverse path).
#[no_mangle]
static MODE_DSR: u32 = 0;
/// 1 = bulk packets of clients in unchanged ring slots skip the persistence lookup
/// (`lb_common::RING_F_CHANGED`). 0 here; the daemon loads it from config `slot_fast_path`.
#[no_mangle]
static SLOT_FAST_PATH: u32 = 0;
/// Probation inserts per CPU per window (`lb_common::QUOTA_WINDOW_SHIFT`); 0 = unlimited.
#[no_mangle]
static NEW_CLIENT_QUOTA: u32 = 0;
/// 1 = SA steering (`lb_common::globals::SA_STEERING`); the daemon loads config `sa_steering`.
#[no_mangle]
static SA_STEERING: u32 = 0;

/// The service of IPv4 VIP `daddr` (wire order), if it is one: `VIP_INDEX_V4` first — one
/// array read and a compare where a hash lookup would hash the key and walk a bucket — and
/// `VIPS_V4` only when several VIPs share the slot.
#[inline(always)]
pub fn vip_v4(daddr: u32) -> Option<&'static Service> {
    let slot = VIP_INDEX_V4.get(lb_common::vip_slot(daddr))?;
    match slot.state {
        VIP_SLOT_ONE if slot.addr == daddr => SERVICES.get(slot.service),
        // The same `SERVICES` value as above, found by id: one kind of pointer for the
        // verifier, which would otherwise check everything after this twice.
        // SAFETY: a plain-old-data map value, read-only here.
        VIP_SLOT_SHARED => SERVICES.get(unsafe { VIPS_V4.get(&daddr) }?.id),
        _ => None,
    }
}

/// [`vip_v4`] for IPv6 VIP `daddr` (wire order words): `VIP_INDEX_V6`, then `VIPS_V6` for a
/// shared slot.
#[inline(always)]
pub fn vip_v6(daddr: &[u32; 4]) -> Option<&'static Service> {
    let slot = VIP_INDEX_V6.get(lb_common::vip_slot6(daddr))?;
    match slot.state {
        VIP_SLOT_ONE if slot.addr == *daddr => SERVICES.get(slot.service),
        // SAFETY: a plain-old-data map value, read-only here.
        VIP_SLOT_SHARED => SERVICES.get(unsafe { VIPS_V6.get(daddr) }?.id),
        _ => None,
    }
}

#[inline(always)]
pub fn ring_size() -> u32 {
    // SAFETY: a plain aligned read of an initialised static.
    unsafe { core::ptr::read_volatile(&RING_SIZE) }
}

#[inline(always)]
pub fn persist_timeout_ticks() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&PERSIST_TIMEOUT_TICKS) }
}

#[inline(always)]
pub fn hash_seed() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}

#[inline(always)]
pub fn mode_dsr() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&MODE_DSR) != 0 }
}

#[inline(always)]
pub fn sa_steering() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&SA_STEERING) != 0 }
}

#[inline(always)]
pub fn slot_fast_path() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&SLOT_FAST_PATH) != 0 }
}

#[inline(always)]
pub fn new_client_quota() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&NEW_CLIENT_QUOTA) }
}
