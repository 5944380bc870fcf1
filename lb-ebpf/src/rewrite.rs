//! Header rewrites with incremental checksums (RFC 1624, `lb_common::csum`; the family's
//! address and hop-limit writes are `Family::readdress` and `Family::decrement_hop_limit`)
//! and the exit: XDP_TX back out of the ingress interface, or a devmap redirect.
//!
//! All functions take header pointers that `parse`, `parse6` and `l4` bounds-checked.

use aya_ebpf::{bindings::xdp_action::XDP_TX, programs::XdpContext};
use lb_common::Backend;
use network_types::eth::EthHdr;

use crate::{
    counters::{Verdict, DROP_BAD_BACKEND},
    family::Family,
    l4::Csum,
    maps::TX_PORTS,
    parse::{load_mac, store_mac, Side},
    sanity,
};

/// Client → backend. NAT: destination VIP → backend address (header and transport checksums,
/// `l4::Csum`; the client address is never touched, the backend must see it). DSR (`nat ==
/// false`): addresses untouched, the backend holds the VIP itself. Both: TTL or hop limit − 1
/// and the backend's MACs.
#[inline(always)]
pub fn forward<F: Family>(eth: *mut EthHdr, ip: *mut F::Hdr, csum: Csum, b: &Backend, nat: bool) {
    // SAFETY: bounds-checked header pointers (module docs).
    unsafe {
        if nat {
            F::readdress(ip, Side::Forward, F::backend(b), csum);
        }
        F::decrement_hop_limit(ip);
        store_mac(&mut (*eth).dst_addr, load_mac(&b.dmac));
        store_mac(&mut (*eth).src_addr, load_mac(&b.smac));
    }
}

/// Backend → client: source backend address → VIP, TTL or hop limit − 1, checksums; MACs
/// toward the client's previous hop as learned by the forward path.
#[inline(always)]
pub fn reverse<F: Family>(
    eth: *mut EthHdr,
    ip: *mut F::Hdr,
    csum: Csum,
    vip: &F::Addr,
    dst_mac: &[u8; 6],
    src_mac: &[u8; 6],
) {
    // SAFETY: bounds-checked header pointers (module docs).
    unsafe {
        F::readdress(ip, Side::Reverse, vip, csum);
        F::decrement_hop_limit(ip);
        store_mac(&mut (*eth).dst_addr, load_mac(dst_mac));
        store_mac(&mut (*eth).src_addr, load_mac(src_mac));
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
