//! IPv4 (RFC 791): 32-bit addresses, a header checksum, options left to the kernel, and the
//! fragment rules of `parse::transport_v4`.

use aya_ebpf::{maps::LruHashMap, programs::XdpContext};
use lb_common::{
    csum, hash::client_hash_v4, Backend, PersistKeyV4, PersistValue, ProbationValue, ProofKeyV4,
    Service,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use super::Family;
use crate::{
    counters::{Verdict, PASS_IP_OPTIONS},
    edge::Addr,
    icmp,
    l4::{self, Csum, Transport, IPPROTO_ICMP},
    maps::{self, BACKEND_IDS_V4, PERSIST_V4, PROBATION_V4, PROOFS_V4},
    parse::{self, load16, load32, store16, store32, Side},
    sanity,
};

pub struct V4;

impl Family for V4 {
    type Addr = u32;
    type Key = PersistKeyV4;
    type ProofKey = ProofKeyV4;
    type Hdr = Ipv4Hdr;

    #[inline(always)]
    fn key(service: u32, addr: &u32) -> PersistKeyV4 {
        PersistKeyV4 {
            service,
            client: *addr,
        }
    }
    #[inline(always)]
    fn proof_key(service: u32, addr: &u32, proof: u64) -> ProofKeyV4 {
        ProofKeyV4 {
            service,
            client: *addr,
            proof,
        }
    }
    #[inline(always)]
    fn proofs() -> &'static LruHashMap<ProofKeyV4, u32> {
        &PROOFS_V4
    }
    #[inline(always)]
    fn persist() -> &'static LruHashMap<PersistKeyV4, PersistValue> {
        &PERSIST_V4
    }
    #[inline(always)]
    fn probation() -> &'static LruHashMap<PersistKeyV4, ProbationValue> {
        &PROBATION_V4
    }
    #[inline(always)]
    fn hash(addr: &u32) -> u32 {
        client_hash_v4(*addr, maps::hash_seed())
    }
    #[inline(always)]
    fn fib(addr: &u32) -> Addr<'_> {
        Addr::V4(*addr)
    }
    #[inline(always)]
    fn vip(svc: &Service) -> &u32 {
        &svc.vip[0]
    }
    #[inline(always)]
    fn backend(b: &Backend) -> &u32 {
        &b.addr[0]
    }
    #[inline(always)]
    fn service(daddr: &u32) -> Option<&'static Service> {
        maps::vip_v4(*daddr)
    }
    #[inline(always)]
    fn listed(addr: &u32) -> Option<u32> {
        // SAFETY: plain-old-data value read once.
        unsafe { BACKEND_IDS_V4.get(addr) }.copied()
    }

    #[inline(always)]
    fn saddr(ip: *const Ipv4Hdr) -> u32 {
        parse::saddr(ip)
    }
    #[inline(always)]
    fn daddr(ip: *const Ipv4Hdr) -> u32 {
        parse::daddr(ip)
    }
    #[inline(always)]
    fn hop_limit(ip: *const Ipv4Hdr) -> u8 {
        parse::ttl(ip)
    }
    #[inline(always)]
    fn options(ip: *const Ipv4Hdr) -> Result<(), Verdict> {
        if parse::has_options(ip) {
            return Err(PASS_IP_OPTIONS);
        }
        Ok(())
    }
    #[inline(always)]
    fn checksum(ip: *const Ipv4Hdr) -> Result<(), Verdict> {
        sanity::checksum_v4(ip)
    }
    #[inline(always)]
    fn source(saddr: &u32, vip: &u32) -> Result<(), Verdict> {
        sanity::source_v4(*saddr, *vip)
    }
    #[inline(always)]
    fn client(daddr: &u32) -> Result<(), Verdict> {
        sanity::client_v4(*daddr)
    }
    #[inline(always)]
    fn kernels_icmp(_ctx: &XdpContext, _ip: *const Ipv4Hdr, _to_vip: bool) -> bool {
        false
    }
    #[inline(always)]
    fn icmp(ip: *const Ipv4Hdr) -> bool {
        parse::proto_first(ip) == (IPPROTO_ICMP, true)
    }
    #[inline(always)]
    fn icmp_error(
        ctx: &XdpContext,
        eth: *mut EthHdr,
        ip: *mut Ipv4Hdr,
        svc: &Service,
    ) -> Result<u32, Verdict> {
        icmp::frag_needed_v4(ctx, eth, ip, svc)
    }
    #[inline(always)]
    fn transport(_ctx: &XdpContext, ip: *const Ipv4Hdr, side: Side) -> Result<Transport, Verdict> {
        parse::transport_v4(ip, side)
    }

    #[inline(always)]
    unsafe fn readdress(ip: *mut Ipv4Hdr, side: Side, new: &u32, c: Csum) {
        // SAFETY: caller's bounds-checked header and transport checksum.
        unsafe {
            let field = match side {
                Side::Forward => &raw mut (*ip).dst_addr,
                Side::Reverse => &raw mut (*ip).src_addr,
            };
            let old = load32(field);
            store32(field, *new);
            let check = csum::replace32(load16(&(*ip).check), old, *new);
            store16(&mut (*ip).check, check);
            l4::fix32(c, old, *new);
        }
    }

    #[inline(always)]
    unsafe fn decrement_hop_limit(ip: *mut Ipv4Hdr) {
        // SAFETY: caller's bounds-checked header.
        unsafe {
            // TTL is the high byte of the TTL/protocol word in wire order: TTL − 1 is the
            // word minus 0x0100 (no borrow: TTL > 1 here), i.e. minus `0x0100u16.to_be()`
            // as loaded (RFC 1812 §5.3.1; RFC 1624 for the checksum).
            let field = (&raw mut (*ip).ttl).cast::<[u8; 2]>();
            let old = load16(field);
            let new = old.wrapping_sub(0x0100u16.to_be());
            store16(field, new);
            let check = csum::replace16(load16(&(*ip).check), old, new);
            store16(&mut (*ip).check, check);
        }
    }
}
