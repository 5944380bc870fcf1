//! Header rewrites with incremental checksums (RFC 1624, `lb_common::csum`) and the exit:
//! XDP_TX back out of the ingress interface, or a devmap redirect.
//!
//! All functions take header pointers that `parse` bounds-checked.

use aya_ebpf::{bindings::xdp_action::XDP_TX, programs::XdpContext};
use lb_common::{csum, Backend};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    counters::{Verdict, DROP_BAD_BACKEND},
    l4::{self, Csum},
    maps::TX_PORTS,
    parse::{load16, load32, load_mac, store16, store32, store_mac},
    sanity,
};

/// Client → backend. NAT: destination VIP → backend address (IP and transport checksums,
/// `l4::Csum`; the client address is never touched, the backend must see it). DSR (`nat ==
/// false`): addresses untouched, the backend holds the VIP itself. Both: TTL − 1 and the
/// backend's MACs.
#[inline(always)]
pub fn forward_v4(eth: *mut EthHdr, ip: *mut Ipv4Hdr, transport: Csum, b: &Backend, nat: bool) {
    // SAFETY: bounds-checked header pointers (module docs).
    unsafe {
        let mut check = load16(&(*ip).check);
        if nat {
            let old = load32(&(*ip).dst_addr);
            let new = b.addr[0];
            store32(&mut (*ip).dst_addr, new);
            check = csum::replace32(check, old, new);
            l4::fix32(transport, old, new);
        }
        store16(&mut (*ip).check, decrement_ttl(ip, check));
        store_mac(&mut (*eth).dst_addr, load_mac(&b.dmac));
        store_mac(&mut (*eth).src_addr, load_mac(&b.smac));
    }
}

/// Backend → client: source backend address → VIP, TTL − 1, checksums; MACs toward the
/// client's previous hop as learned by the forward path.
#[inline(always)]
pub fn reverse_v4(
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    transport: Csum,
    vip: u32,
    dst_mac: &[u8; 6],
    src_mac: &[u8; 6],
) {
    // SAFETY: bounds-checked header pointers (module docs).
    unsafe {
        let old = load32(&(*ip).src_addr);
        store32(&mut (*ip).src_addr, vip);
        let check = csum::replace32(load16(&(*ip).check), old, vip);
        store16(&mut (*ip).check, decrement_ttl(ip, check));
        l4::fix32(transport, old, vip);
        store_mac(&mut (*eth).dst_addr, load_mac(dst_mac));
        store_mac(&mut (*eth).src_addr, load_mac(src_mac));
    }
}

/// TTL − 1 (RFC 1812 §5.3.1; the caller passed TTL ≤ 1 to the kernel) and the checksum update
/// for the TTL/protocol word it shares. Returns the new header checksum.
#[inline(always)]
unsafe fn decrement_ttl(ip: *mut Ipv4Hdr, check: u16) -> u16 {
    // SAFETY: caller's bounds-checked header.
    unsafe {
        // TTL is the high byte of the TTL/protocol word in wire order: TTL − 1 is the word
        // minus 0x0100 (no borrow: TTL > 1 here), i.e. minus `0x0100u16.to_be()` as loaded.
        let field = (&raw mut (*ip).ttl).cast::<[u8; 2]>();
        let old = load16(field);
        let new = old.wrapping_sub(0x0100u16.to_be());
        store16(field, new);
        csum::replace16(check, old, new)
    }
}

/// Sends the rewritten frame, cut to its IP datagram, which ends at frame offset `end`
/// (`sanity::trim`): XDP_TX when it leaves by the interface it arrived on (one-arm, or a
/// client and backend on the same side), else a redirect to devmap entry `port`. A missing
/// devmap entry drops the packet as `bad_backend`.
#[inline(always)]
pub fn send(ctx: &XdpContext, end: usize, ifindex: u32, port: u32) -> Result<u32, Verdict> {
    sanity::trim(ctx, end)?;
    if ctx.ingress_ifindex() as u32 == ifindex {
        return Ok(XDP_TX);
    }
    TX_PORTS.redirect(port, 0).map_err(|_| DROP_BAD_BACKEND)
}
