//! Types and constants shared by ikelb's XDP program (`lb-ebpf`) and its daemon (`lb-ctl`).
//!
//! Everything that crosses the kernel/user boundary is defined here once: map keys and
//! values (`#[repr(C)]`, no implicit padding, size asserted beside each type), map and
//! global names, counter indices, the client hash, and incremental checksum arithmetic.
//!
//! ## Byte order
//!
//! Addresses and ports are kept **as they appear on the wire**: an IPv4 address is the four
//! header bytes loaded into a `u32` with native byte order (`u32::from_ne_bytes(octets)` on
//! the host), an IPv6 address is four such words, a port is the two header bytes loaded into a
//! `u16` with native byte order. The data path then compares and hashes raw header words with
//! no byte swapping, and the host computes the same values with `from_ne_bytes`.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod csum;
pub mod hash;
#[cfg(feature = "user")]
pub mod maglev;

use core::mem::size_of;

/// Backend id that means "no backend". Ring slots and persistence entries never hold it for
/// a usable choice; a ring made of zeros drops every packet as `no_backend`.
pub const BACKEND_NONE: u32 = 0;
/// Value of `BACKEND_IDS_V4/V6` for an address of the gateway's own (an interface address of
/// its network namespace, written by the daemon: `lb-ctl/src/own_addresses.rs`) rather than
/// a backend's: never a client. The forward path finds
/// it in the lookup it makes for a source without an entry (`drop/source_own_address`); on
/// the reverse path it names no backend, so frames from it are the kernel's. Never a backend
/// id (ids fit [`RING_BACKEND_MASK`]).
pub const OWN_ADDRESS_ID: u32 = u32::MAX;
/// Ports per protocol per service (UDP and TCP each).
pub const MAX_PORTS: usize = 8;
/// Interfaces ikelb can attach to (indices into [`maps::IFACES`] / [`maps::TX_PORTS`]).
pub const MAX_IFACES: u32 = 64;
/// Default Maglev table size (prime), as in the Maglev paper and Katran.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Bits of a ring slot that hold the backend id; the rest are flags (`RING_F_*`).
pub const RING_BACKEND_MASK: u32 = 0x00ff_ffff;
/// Ring slot flag: this slot's backend changed since sessions in it may have begun, so its
/// clients must look their persistence entry up. With [`globals::SLOT_FAST_PATH`] on, the
/// data path skips the persistence lookup for bulk packets (ESP) of clients whose slot lacks
/// this flag: the ring already names their original backend. The daemon sets the flag on every
/// slot whose backend changes and clears it only once no live entry of the slot disagrees with
/// the ring (`lb-ctl/src/state.rs`, "Slot flags"; config `slot_fast_path`).
pub const RING_F_CHANGED: u32 = 1 << 24;
/// Slots of [`maps::INGRESS`]: interfaces with an ifindex below this are found by one array
/// read; the rare larger ifindex falls back to the [`maps::IFINDEX_PORTS`] hash.
pub const INGRESS_SLOTS: u32 = 4096;
/// [`maps::INGRESS`] / [`maps::IFINDEX_PORTS`] value: the port (index in `IFACES`/`TX_PORTS`)
/// in the low byte.
pub const INGRESS_PORT_MASK: u32 = 0xff;
/// Ingress flag: clients may reach VIPs through this interface (config role `clients` or
/// `both`). VIP traffic arriving on an interface without it is dropped
/// (`drop/not_client_interface`).
pub const INGRESS_F_CLIENTS: u32 = 1 << 8;
/// Ingress flag: backends are reached through this interface (role `backends` or `both`).
pub const INGRESS_F_BACKENDS: u32 = 1 << 9;
/// Ingress flag: ikelb is attached here (a zero [`maps::INGRESS`] slot is "not ours").
pub const INGRESS_F_ATTACHED: u32 = 1 << 31;

/// New-client inserts are rationed per CPU in windows of 2^this ns (≈ 134 ms): at most
/// [`globals::NEW_CLIENT_QUOTA`] probation inserts per CPU per window.
pub const QUOTA_WINDOW_SHIFT: u32 = 27;

/// Persistence time is counted in ticks of 2^30 ns (≈ 1.074 s): `bpf_ktime_get_coarse_ns() >>
/// TICK_SHIFT`. Coarse on purpose — an entry's timestamp is rewritten at most once a tick.
pub const TICK_SHIFT: u32 = 30;

/// Ticks an entry stamped at `atime` has been idle at `now`, for the data path and the daemon
/// alike. The clock is `CLOCK_MONOTONIC` (it starts near 0 at boot, so a young gateway has
/// small ticks); the difference wraps with the u32 tick counter (every ~146 years of uptime).
/// A stamp up to 2^31 ticks ahead of `now` counts as idle 0, not as idle for ~2^32 ticks: a
/// packet on another CPU stamps tick `t + 1` while this CPU (or a daemon scan that read the
/// clock before it) still holds `t`, and that client is as live as it gets.
#[inline(always)]
pub fn idle_ticks(now: u32, atime: u32) -> u32 {
    let idle = now.wrapping_sub(atime);
    if (idle as i32) < 0 {
        0
    } else {
        idle
    }
}

/// Whether an entry stamped at `atime` is still live at `now` (idle no longer than
/// `timeout` ticks); see [`idle_ticks`].
#[inline(always)]
pub fn is_live(now: u32, atime: u32, timeout: u32) -> bool {
    idle_ticks(now, atime) <= timeout
}

/// Address family tags in [`Service::family`].
pub const FAMILY_V4: u32 = 4;
pub const FAMILY_V6: u32 = 6;

/// [`Service::flags`]: forward IP protocol 50 (ESP) to the client's backend too.
pub const SVC_F_ESP: u32 = 1 << 0;

/// [`Backend::flags`]: the backend may receive packets (present and healthy). A persisted
/// client whose backend lacks this flag is re-selected from the ring. Draining backends keep
/// it (they are only left out of the ring) until the drain ends.
pub const BACKEND_F_USABLE: u32 = 1 << 0;

/// One virtual IP of a virtual server with its port set and active Maglev table — internally
/// a *service*. A config virtual server with an IPv4 and an IPv6 VIP is two services (clients
/// of different families never share a persistence entry anyway).
///
/// Value of [`maps::VIPS_V4`] / [`maps::VIPS_V6`] (keyed by VIP) and of [`maps::SERVICES`]
/// (keyed by `id`, for the reverse path). Written by the daemon only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index of this service: key in `SERVICES`, first word of persistence keys.
    pub id: u32,
    /// `SVC_F_*`.
    pub flags: u32,
    /// Index in `RINGS` of slot 0 of the *active* Maglev table. The daemon writes the other
    /// buffer (`(id * 2 + 1 - active) * ring_size`), then rewrites this value: the flip.
    pub ring_base: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
    /// The VIP, wire order (IPv4 in word 0, words 1–3 zero).
    pub vip: [u32; 4],
    /// UDP destination ports in the persistency group, wire order, unused entries 0 and last.
    pub udp_ports: [u16; MAX_PORTS],
    /// TCP destination ports in the persistency group (SSTP fallback), as `udp_ports`.
    pub tcp_ports: [u16; MAX_PORTS],
}
const _: () = assert!(size_of::<Service>() == 64);

/// A backend (real server). Value of [`maps::BACKENDS`], an array indexed by backend id
/// (id 0 = [`BACKEND_NONE`], never used). Written by the daemon only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address, wire order (IPv4 in word 0).
    pub addr: [u32; 4],
    /// Service this backend belongs to ([`Service::id`]).
    pub service: u32,
    /// `BACKEND_F_*`.
    pub flags: u32,
    /// Egress port: key in `TX_PORTS` and `IFACES` of the interface toward this backend.
    pub tx_port: u32,
    /// ifindex of that interface: a frame that arrived on it leaves with XDP_TX instead of
    /// a redirect.
    pub ifindex: u32,
    /// Destination MAC: the backend's (or its next hop's) address, resolved by the daemon.
    pub dmac: [u8; 6],
    /// Source MAC: the MAC of the egress interface.
    pub smac: [u8; 6],
}
const _: () = assert!(size_of::<Backend>() == 44);

/// Key of [`maps::PERSIST_V4`]: one entry per (service, client address); all ports of the
/// service share it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKeyV4 {
    pub service: u32,
    /// Client address, wire order.
    pub client: u32,
}
const _: () = assert!(size_of::<PersistKeyV4>() == 8);

/// Key of [`maps::PERSIST_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKeyV6 {
    pub service: u32,
    /// Client address, wire order.
    pub client: [u32; 4],
}
const _: () = assert!(size_of::<PersistKeyV6>() == 20);

/// Value of [`maps::PERSIST_V4`] / [`maps::PERSIST_V6`], the *established* clients: those
/// that proved return routability (see [`ProbationValue`]). Written by the XDP program (insert on a miss, re-select
/// when the backend is unusable or the entry idle, `atime` at most once a tick); read by the
/// daemon for `lookup`, client counts and drain.
///
/// `client_mac` and `port` remember where the client's packets came from (the previous hop's
/// MAC and the ingress interface — NetScaler's MAC-based forwarding), so the reverse path
/// sends replies back the same way without a per-packet FIB lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistValue {
    /// Chosen backend id.
    pub backend: u32,
    /// Last time a packet of this client was seen, in ticks (see [`TICK_SHIFT`]).
    pub atime: u32,
    /// Source MAC of the client's last frame (its router's, or its own on the same segment).
    pub client_mac: [u8; 6],
    /// Ingress port (index in `IFACES`) of the client's last frame.
    pub port: u8,
    /// The same byte as [`ProbationValue::flags`] (a promotion copies it): the client's last
    /// IKE stage and [`ike::CLIENT_F_STEERED`] (`ike`); `PROBATION_F_GUESS` is never set
    /// here. Builds before the IKE stages wrote 0 (padding): no stage.
    pub flags: u8,
}
const _: () = assert!(size_of::<PersistValue>() == 16);

/// [`PersistValue::port`] of an entry the daemon wrote from another cluster node's shared
/// persistence (`docs/cluster.md`, "Shared persistence"): no MAC is learned for the client
/// on this node yet, so its backend's replies go where the kernel FIB routes them, until the
/// client's own frames arrive here and the entry learns their MAC and port (with the FIB's
/// confirmation, as any move).
pub const PORT_SHARED: u8 = 254;

/// Value of [`maps::PROBATION_V4`] / [`maps::PROBATION_V6`]: a client that has not yet shown
/// return routability. Its first fields are a [`PersistValue`] (same meaning, same offsets).
///
/// A spoofed source can create one of these (rationed by [`globals::NEW_CLIENT_QUOTA`]) but
/// never an established entry: the reverse path records in `proof` a value the backend sent to
/// the client through ikelb — the responder SPI of an IKE message (RFC 7296 §3.1), or the
/// initial sequence number + 1 of a TCP SYN-ACK — and only a client packet that echoes it (an
/// IKE message with that responder SPI, a TCP segment acknowledging it) moves the entry into
/// the persistence map ("promotion"). Someone who cannot receive the client's packets cannot
/// guess 64 (IKE) or 32 (TCP) random bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbationValue {
    /// Chosen backend id.
    pub backend: u32,
    /// Last time a packet of this client was seen, in ticks.
    pub atime: u32,
    /// As [`PersistValue::client_mac`].
    pub client_mac: [u8; 6],
    /// As [`PersistValue::port`].
    pub port: u8,
    /// `PROBATION_F_*` (bit 0), the client's last IKE stage and [`ike::CLIENT_F_STEERED`]
    /// (`ike`).
    pub flags: u8,
    /// What the client must echo to be promoted, as the 8 (IKE responder SPI) or 4 (TCP ack
    /// number, high word 0) header bytes loaded in native order; 0 = nothing recorded yet.
    pub proof: u64,
}
const _: () = assert!(size_of::<ProbationValue>() == 24);

/// [`ProbationValue::flags`]: the entry was made for a mid-session packet (IKE with a
/// responder SPI, ESP) of an SA this node does not know, so its backend is the ring's guess.
/// A packet of an SA the node does know (`globals::SA_STEERING`) may still correct it, until a
/// reply of the entry's backend that carries a proof shows the backend knows the client, which
/// clears the flag. An entry without it is never moved by an SA.
pub const PROBATION_F_GUESS: u8 = 1;

/// Key of [`maps::IKE_SAS`]: an IKE SA of a service, by its initiator SPI (RFC 7296 §3.1,
/// header bytes 0–8, loaded as two native words like [`ProbationValue::proof`]). The value is
/// the backend id the SA was established on. Both families' clients share the map: the
/// service id tells them apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IkeSaKey {
    pub service: u32,
    pub _pad: u32,
    pub spi: u64,
}
const _: () = assert!(size_of::<IkeSaKey>() == 16);

/// Key of [`maps::ESP_SAS`]: an inbound ESP SA of a service (client to backend), by its SPI
/// (RFC 4303 §2.1, wire order). The value is the backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EspSaKey {
    pub service: u32,
    pub spi: u32,
}
const _: () = assert!(size_of::<EspSaKey>() == 8);

/// Key of [`maps::PROOFS_V4`]: a proof the backend sent to a probation client. Many clients
/// behind one NAT address share a probation entry and handshake at once; each of their
/// backends' answers is kept here, so whichever client echoes its own proof promotes the
/// address (the entry's `proof` holds only the last one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProofKeyV4 {
    pub service: u32,
    /// Client address, wire order.
    pub client: u32,
    /// As [`ProbationValue::proof`].
    pub proof: u64,
}
const _: () = assert!(size_of::<ProofKeyV4>() == 16);

/// Key of [`maps::PROOFS_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProofKeyV6 {
    pub service: u32,
    /// Client address, wire order.
    pub client: [u32; 4],
    pub _pad: u32,
    /// As [`ProbationValue::proof`].
    pub proof: u64,
}
const _: () = assert!(size_of::<ProofKeyV6>() == 32);

/// Value of [`maps::QUOTA`] (per CPU): probation inserts made in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// `bpf_ktime_get_coarse_ns() >> QUOTA_WINDOW_SHIFT` of the current window (low 32 bits).
    pub window: u32,
    /// Inserts made in it.
    pub used: u32,
}
const _: () = assert!(size_of::<Quota>() == 8);

/// An interface ikelb is attached to. Value of [`maps::IFACES`], indexed by port (position in
/// the config's `interfaces` list). Written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Iface>() == 12);

/// One slot of [`maps::VIP_INDEX_V4`], the direct-mapped index the data path reads before any
/// hash lookup: slot [`vip_slot`]`(vip)` of each IPv4 VIP says which service it is, or that
/// several VIPs share the slot. Written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    /// [`VIP_SLOT_EMPTY`], [`VIP_SLOT_ONE`] or [`VIP_SLOT_SHARED`].
    pub state: u32,
    /// The VIP (wire order), with `VIP_SLOT_ONE`.
    pub addr: u32,
    /// Its service id (index in [`maps::SERVICES`]), with `VIP_SLOT_ONE`.
    pub service: u32,
}
const _: () = assert!(size_of::<VipSlot>() == 12);

/// One slot of [`maps::VIP_INDEX_V6`]: [`VipSlot`] for IPv6 VIPs, at slot
/// [`vip_slot6`]`(vip)`. Written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot6 {
    /// [`VIP_SLOT_EMPTY`], [`VIP_SLOT_ONE`] or [`VIP_SLOT_SHARED`].
    pub state: u32,
    /// Its service id, with `VIP_SLOT_ONE`.
    pub service: u32,
    /// The VIP (wire order words), with `VIP_SLOT_ONE`.
    pub addr: [u32; 4],
}
const _: () = assert!(size_of::<VipSlot6>() == 24);

/// No VIP hashes to the slot: a packet whose destination does is to no VIP.
pub const VIP_SLOT_EMPTY: u32 = 0;
/// Exactly one VIP hashes to the slot.
pub const VIP_SLOT_ONE: u32 = 1;
/// Several VIPs hash to the slot: the data path asks [`maps::VIPS_V4`].
pub const VIP_SLOT_SHARED: u32 = 2;
/// Slots of [`maps::VIP_INDEX_V4`] and [`maps::VIP_INDEX_V6`] (a power of two).
pub const VIP_INDEX_SLOTS: u32 = 256;

/// The slot of IPv4 address `addr` (wire order) in [`maps::VIP_INDEX_V4`]: Fibonacci hashing,
/// one multiply and a shift (Knuth, TAOCP vol. 3, §6.4).
#[inline(always)]
pub fn vip_slot(addr: u32) -> u32 {
    addr.wrapping_mul(0x9e37_79b9) >> (32 - VIP_INDEX_SLOTS.trailing_zeros())
}

/// The slot of IPv6 address `addr` (wire order words) in [`maps::VIP_INDEX_V6`]: its four
/// words folded by XOR, then [`vip_slot`] (VIPs of one prefix differ in the low words).
#[inline(always)]
pub fn vip_slot6(addr: &[u32; 4]) -> u32 {
    vip_slot(addr[0] ^ addr[1] ^ addr[2] ^ addr[3])
}

/// Packets and bytes, one per CPU, per backend and direction. Value of
/// [`maps::BACKEND_STATS`], indexed by `backend_id * 2 + DIR_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Traffic>() == 16);

/// Direction index in [`maps::BACKEND_STATS`]: client → backend.
pub const DIR_FORWARD: u32 = 0;
/// Direction index in [`maps::BACKEND_STATS`]: backend → client.
pub const DIR_REVERSE: u32 = 1;

/// Map names (the `static` names in `lb-ebpf`), so the daemon never spells one by hand.
pub mod maps {
    /// HashMap<u32 VIP (wire order), Service>.
    pub const VIPS_V4: &str = "VIPS_V4";
    /// HashMap<[u32; 4] VIP, Service>.
    pub const VIPS_V6: &str = "VIPS_V6";
    /// Array<Service> indexed by service id (reverse path).
    pub const SERVICES: &str = "SERVICES";
    /// Array<VipSlot> of `VIP_INDEX_SLOTS`, indexed by `vip_slot(daddr)`: which IPv4 VIP, if
    /// any, a destination is, without a hash lookup (`VIPS_V4` only for a shared slot).
    pub const VIP_INDEX_V4: &str = "VIP_INDEX_V4";
    /// Array<VipSlot6> of `VIP_INDEX_SLOTS`, indexed by `vip_slot6(daddr)`: the same for IPv6.
    pub const VIP_INDEX_V6: &str = "VIP_INDEX_V6";
    /// Array<u32 backend id | RING_F_*>: every service's two Maglev tables back to back.
    pub const RINGS: &str = "RINGS";
    /// Array<Backend> indexed by backend id.
    pub const BACKENDS: &str = "BACKENDS";
    /// HashMap<u32 backend address, u32 backend id> (reverse path).
    pub const BACKEND_IDS_V4: &str = "BACKEND_IDS_V4";
    /// HashMap<[u32; 4] backend address, u32 backend id> (reverse path).
    pub const BACKEND_IDS_V6: &str = "BACKEND_IDS_V6";
    /// LruHashMap<PersistKeyV4, PersistValue>.
    pub const PERSIST_V4: &str = "PERSIST_V4";
    /// LruHashMap<PersistKeyV6, PersistValue>.
    pub const PERSIST_V6: &str = "PERSIST_V6";
    /// LruHashMap<PersistKeyV4, ProbationValue>: clients not yet established.
    pub const PROBATION_V4: &str = "PROBATION_V4";
    /// LruHashMap<PersistKeyV6, ProbationValue>.
    pub const PROBATION_V6: &str = "PROBATION_V6";
    /// LruHashMap<ProofKeyV4, u32 backend id>: proofs sent to probation clients.
    pub const PROOFS_V4: &str = "PROOFS_V4";
    /// LruHashMap<ProofKeyV6, u32 backend id>.
    pub const PROOFS_V6: &str = "PROOFS_V6";
    /// LruHashMap<IkeSaKey, u32 backend id>: IKE SAs of established clients, by initiator SPI
    /// (SA steering).
    pub const IKE_SAS: &str = "IKE_SAS";
    /// LruHashMap<EspSaKey, u32 backend id>: inbound ESP SAs of established clients, by SPI
    /// (SA steering).
    pub const ESP_SAS: &str = "ESP_SAS";
    /// Array<u32 tick> indexed like `RINGS` (`ring_base + slot`): the tick in which a packet of
    /// the slot last refreshed its client's entry (slot fast path). Serves the services of both
    /// families despite its name (ring indices are unique across them); renaming this pinned
    /// map would force a map migration on every upgrade.
    pub const REFRESHED_V4: &str = "REFRESHED_V4";
    /// Array<u32 port | INGRESS_F_*> indexed by ifindex (< INGRESS_SLOTS).
    pub const INGRESS: &str = "INGRESS";
    /// PerCpuArray<Quota>, one element: the new-client ration of each CPU.
    pub const QUOTA: &str = "QUOTA";
    /// PerCpuArray<u64> indexed by [`crate::event`] index.
    pub const EVENTS: &str = "EVENTS";
    /// Array<Iface> indexed by port.
    pub const IFACES: &str = "IFACES";
    /// HashMap<u32 ifindex, u32 port | INGRESS_F_*> (every attached interface; the data path
    /// reads it only for an ifindex ≥ INGRESS_SLOTS).
    pub const IFINDEX_PORTS: &str = "IFINDEX_PORTS";
    /// DevMap indexed by port.
    pub const TX_PORTS: &str = "TX_PORTS";
    /// PerCpuArray<u64> indexed by [`crate::counter`] index.
    pub const COUNTERS: &str = "COUNTERS";
    /// PerCpuArray<u64> indexed by [`crate::ike`] counter index: where IKE clients stop.
    pub const IKE_STAGES: &str = "IKE_STAGES";
    /// PerCpuArray<Traffic> indexed by backend id * 2 + direction.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
}

/// Load-time globals of the XDP program (`EbpfLoader::set_global`).
pub mod globals {
    /// u32: 1 = skip the persistence lookup for bulk packets of clients in unchanged slots
    /// (see [`crate::RING_F_CHANGED`]); 0 (default) = every packet looks its entry up.
    pub const SLOT_FAST_PATH: &str = "SLOT_FAST_PATH";
    /// u32: Maglev table size M (prime).
    pub const RING_SIZE: &str = "RING_SIZE";
    /// u32: idle time, in ticks, after which a persisted client may be re-balanced.
    pub const PERSIST_TIMEOUT_TICKS: &str = "PERSIST_TIMEOUT_TICKS";
    /// u32: client hash seed (config `hash_seed`).
    pub const HASH_SEED: &str = "HASH_SEED";
    /// u32: 1 for `mode: dsr` (MAC rewrite only, no reverse path), 0 for `mode: nat`.
    pub const MODE_DSR: &str = "MODE_DSR";
    /// u32: probation inserts allowed per CPU per window of 2^QUOTA_WINDOW_SHIFT ns
    /// (config `new_client_rate` spread over the CPUs); 0 = unlimited.
    pub const NEW_CLIENT_QUOTA: &str = "NEW_CLIENT_QUOTA";
    /// u32: 1 = a packet of an IKE or ESP SA established through ikelb, from an address
    /// without any entry (the client moved: MOBIKE, a NAT rebinding), goes to that SA's
    /// backend (config `sa_steering`); 0 = it follows the ring.
    pub const SA_STEERING: &str = "SA_STEERING";
}

pub mod counter;

pub mod event;

pub mod ike;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type below is #[repr(C)], made of integers and byte arrays only, with no
    // padding (asserted by the size checks next to each definition).
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for PersistKeyV4 {}
    unsafe impl aya::Pod for PersistKeyV6 {}
    unsafe impl aya::Pod for PersistValue {}
    unsafe impl aya::Pod for ProbationValue {}
    unsafe impl aya::Pod for Quota {}
    unsafe impl aya::Pod for ProofKeyV4 {}
    unsafe impl aya::Pod for ProofKeyV6 {}
    unsafe impl aya::Pod for IkeSaKey {}
    unsafe impl aya::Pod for EspSaKey {}
    unsafe impl aya::Pod for Iface {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for VipSlot {}
    unsafe impl aya::Pod for VipSlot6 {}
}
