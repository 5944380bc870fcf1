//! What differs between IPv4 and IPv6, and nothing else: the address and its persistence
//! keys and maps (for `select`), and the header — where the addresses, the hop limit and the
//! transport header are, what a router checks of it, how an address is rewritten (for `flow`
//! and `rewrite`). Every rule above this (the flows, the selection, the slot fast path, the
//! edge protections) is written once over [`Family`], as Katran shares one lookup chain
//! between its IPv4 and IPv6 VIPs. [`V4`] is in `family/v4.rs`, [`V6`] in `family/v6.rs`.

use aya_ebpf::{maps::LruHashMap, programs::XdpContext};
use lb_common::{Backend, PersistValue, ProbationValue, Service};
use network_types::eth::EthHdr;

use crate::{
    counters::Verdict,
    edge::Addr,
    l4::{Csum, Transport},
    parse::Side,
};

mod v4;
mod v6;

pub use v4::V4;
pub use v6::V6;

/// One address family (module docs).
pub trait Family {
    /// An address, wire order (`u32`, `[u32; 4]`).
    type Addr: 'static + PartialEq;
    /// `PERSIST_*` / `PROBATION_*` key: service id and client address.
    type Key: 'static;
    /// `PROOFS_*` key: service id, client address and the proof a backend sent it.
    type ProofKey: 'static;
    /// The network header, bounds-checked by `parse::l3`.
    type Hdr;

    // --- Addresses, keys and maps (`select`) ---

    fn key(service: u32, addr: &Self::Addr) -> Self::Key;
    fn proof_key(service: u32, addr: &Self::Addr, proof: u64) -> Self::ProofKey;
    fn proofs() -> &'static LruHashMap<Self::ProofKey, u32>;
    fn persist() -> &'static LruHashMap<Self::Key, PersistValue>;
    fn probation() -> &'static LruHashMap<Self::Key, ProbationValue>;
    /// The client hash that picks a ring slot (`lb_common::hash`).
    fn hash(addr: &Self::Addr) -> u32;
    /// `addr` as the FIB wants it.
    fn fib(addr: &Self::Addr) -> Addr<'_>;
    /// The service's VIP of this family.
    fn vip(svc: &Service) -> &Self::Addr;
    /// A backend's address of this family.
    fn backend(b: &Backend) -> &Self::Addr;
    /// The service of VIP `daddr`, if it is one (`maps::vip_v4`, `maps::vip_v6`).
    fn service(daddr: &Self::Addr) -> Option<&'static Service>;
    /// `BACKEND_IDS_*[addr]`: a backend's id, or `lb_common::OWN_ADDRESS_ID`.
    fn listed(addr: &Self::Addr) -> Option<u32>;

    // --- The header (`flow`, `rewrite`) ---

    fn saddr(ip: *const Self::Hdr) -> Self::Addr;
    fn daddr(ip: *const Self::Hdr) -> Self::Addr;
    /// TTL or hop limit.
    fn hop_limit(ip: *const Self::Hdr) -> u8;
    /// A header ikelb leaves to the kernel whatever it carries (IPv4 options).
    fn options(ip: *const Self::Hdr) -> Result<(), Verdict>;
    /// The header checksum, where there is one (IPv4, RFC 1812 §5.2.2).
    fn checksum(ip: *const Self::Hdr) -> Result<(), Verdict>;
    /// Forward path: the source of a frame to `vip` can be a client (`sanity`).
    fn source(saddr: &Self::Addr, vip: &Self::Addr) -> Result<(), Verdict>;
    /// Reverse path: a backend's packet to `daddr` can be to a client (`sanity`).
    fn client(daddr: &Self::Addr) -> Result<(), Verdict>;
    /// Whether the packet is an ICMP message that stays the kernel's before any lookup:
    /// every ICMPv6 message but a packet-too-big to a VIP (`to_vip`). Never, over IPv4,
    /// whose ICMP to a VIP is [`icmp`](Family::icmp)'s and from a backend the reverse path's.
    fn kernels_icmp(ctx: &XdpContext, ip: *const Self::Hdr, to_vip: bool) -> bool;
    /// Whether a packet to a VIP is an ICMP error for [`icmp_error`](Family::icmp_error).
    fn icmp(ip: *const Self::Hdr) -> bool;
    /// An ICMP error to a VIP about one of its replies, on to the client's backend (`icmp`).
    fn icmp_error(
        ctx: &XdpContext,
        eth: *mut EthHdr,
        ip: *mut Self::Hdr,
        svc: &Service,
    ) -> Result<u32, Verdict>;
    /// Where the transport header is and where the datagram ends; the fragment rules of
    /// the family (`side`: the forward path has one more).
    fn transport(ctx: &XdpContext, ip: *const Self::Hdr, side: Side) -> Result<Transport, Verdict>;

    /// Sets the destination (`Side::Forward`) or source address to `new`, fixing the header
    /// checksum, if any, and the transport one (`csum`).
    ///
    /// # Safety
    /// `ip` is a bounds-checked header; `csum` was returned by `l4::classify` for this frame.
    unsafe fn readdress(ip: *mut Self::Hdr, side: Side, new: &Self::Addr, csum: Csum);
    /// TTL or hop limit − 1 (the caller passed ≤ 1 to the kernel), with the header checksum.
    ///
    /// # Safety
    /// `ip` is a bounds-checked header.
    unsafe fn decrement_hop_limit(ip: *mut Self::Hdr);
}
