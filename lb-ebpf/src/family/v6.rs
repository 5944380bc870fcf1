//! IPv6 (RFC 8200): 128-bit addresses, no header checksum, extension headers walked by
//! `parse6::walk`, and ICMPv6 — neighbour discovery above all — left to the kernel but for
//! a packet-too-big about a VIP's reply.

use aya_ebpf::{maps::LruHashMap, programs::XdpContext};
use lb_common::{
    hash::client_hash_v6, Backend, PersistKeyV6, PersistValue, ProbationValue, ProofKeyV6,
    Service,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use super::Family;
use crate::{
    counters::Verdict,
    edge::Addr,
    icmp,
    l4::{self, Csum, Transport},
    maps::{self, BACKEND_IDS_V6, PERSIST_V6, PROBATION_V6, PROOFS_V6},
    parse::Side,
    parse6::{self, load128, store128, NEXTHDR_ICMPV6},
    sanity,
};

pub struct V6;

impl Family for V6 {
    type Addr = [u32; 4];
    type Key = PersistKeyV6;
    type ProofKey = ProofKeyV6;
    type Hdr = Ipv6Hdr;

    #[inline(always)]
    fn key(service: u32, addr: &[u32; 4]) -> PersistKeyV6 {
        PersistKeyV6 {
            service,
            client: *addr,
        }
    }
    #[inline(always)]
    fn proof_key(service: u32, addr: &[u32; 4], proof: u64) -> ProofKeyV6 {
        ProofKeyV6 {
            service,
            client: *addr,
            _pad: 0,
            proof,
        }
    }
    #[inline(always)]
    fn proofs() -> &'static LruHashMap<ProofKeyV6, u32> {
        &PROOFS_V6
    }
    #[inline(always)]
    fn persist() -> &'static LruHashMap<PersistKeyV6, PersistValue> {
        &PERSIST_V6
    }
    #[inline(always)]
    fn probation() -> &'static LruHashMap<PersistKeyV6, ProbationValue> {
        &PROBATION_V6
    }
    #[inline(always)]
    fn hash(addr: &[u32; 4]) -> u32 {
        client_hash_v6(addr, maps::hash_seed())
    }
    #[inline(always)]
    fn fib(addr: &[u32; 4]) -> Addr<'_> {
        Addr::V6(addr)
    }
    #[inline(always)]
    fn vip(svc: &Service) -> &[u32; 4] {
        &svc.vip
    }
    #[inline(always)]
    fn backend(b: &Backend) -> &[u32; 4] {
        &b.addr
    }
    #[inline(always)]
    fn service(daddr: &[u32; 4]) -> Option<&'static Service> {
        maps::vip_v6(daddr)
    }
    #[inline(always)]
    fn listed(addr: &[u32; 4]) -> Option<u32> {
        // SAFETY: plain-old-data value read once.
        unsafe { BACKEND_IDS_V6.get(addr) }.copied()
    }

    #[inline(always)]
    fn saddr(ip: *const Ipv6Hdr) -> [u32; 4] {
        parse6::saddr(ip)
    }
    #[inline(always)]
    fn daddr(ip: *const Ipv6Hdr) -> [u32; 4] {
        parse6::daddr(ip)
    }
    #[inline(always)]
    fn hop_limit(ip: *const Ipv6Hdr) -> u8 {
        parse6::hop_limit(ip)
    }
    #[inline(always)]
    fn options(_ip: *const Ipv6Hdr) -> Result<(), Verdict> {
        Ok(())
    }
    #[inline(always)]
    fn checksum(_ip: *const Ipv6Hdr) -> Result<(), Verdict> {
        Ok(())
    }
    #[inline(always)]
    fn source(saddr: &[u32; 4], vip: &[u32; 4]) -> Result<(), Verdict> {
        sanity::source_v6(saddr, vip)
    }
    #[inline(always)]
    fn client(daddr: &[u32; 4]) -> Result<(), Verdict> {
        sanity::client_v6(daddr)
    }
    #[inline(always)]
    fn kernels_icmp(ctx: &XdpContext, ip: *const Ipv6Hdr, to_vip: bool) -> bool {
        parse6::next_hdr(ip) == NEXTHDR_ICMPV6 && !(to_vip && icmp::is_too_big_v6(ctx, ip))
    }
    #[inline(always)]
    fn icmp(ip: *const Ipv6Hdr) -> bool {
        parse6::next_hdr(ip) == NEXTHDR_ICMPV6
    }
    #[inline(always)]
    fn icmp_error(
        ctx: &XdpContext,
        eth: *mut EthHdr,
        ip: *mut Ipv6Hdr,
        svc: &Service,
    ) -> Result<u32, Verdict> {
        icmp::too_big_v6(ctx, eth, ip, svc)
    }
    #[inline(always)]
    fn transport(ctx: &XdpContext, ip: *const Ipv6Hdr, _side: Side) -> Result<Transport, Verdict> {
        parse6::walk(ctx, ip)
    }

    #[inline(always)]
    unsafe fn readdress(ip: *mut Ipv6Hdr, side: Side, new: &[u32; 4], c: Csum) {
        // SAFETY: caller's bounds-checked header and transport checksum.
        unsafe {
            let field = match side {
                Side::Forward => &raw mut (*ip).dst_addr,
                Side::Reverse => &raw mut (*ip).src_addr,
            };
            let old = load128(field);
            store128(field, new);
            l4::fix128(c, &old, new);
        }
    }

    #[inline(always)]
    unsafe fn decrement_hop_limit(ip: *mut Ipv6Hdr) {
        // SAFETY: caller's bounds-checked header. IPv6 has no header checksum.
        unsafe { (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1) }
    }
}
