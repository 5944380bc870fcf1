//! IPv6 header rewrites: the 128-bit address change with its incremental transport checksum
//! (RFC 1624 over the pseudo-header, RFC 8200 §8.1), hop limit, MACs. IPv6 has no header
//! checksum, so the hop limit costs nothing else. The exit is `rewrite::send`.
//!
//! All functions take header pointers that `parse6` and `l4` bounds-checked.

use lb_common::Backend;
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    l4::{self, Csum},
    parse::{load_mac, store_mac},
    parse6::{load128, store128},
};

/// Client → backend. NAT: destination VIP → backend address and the transport checksum (the
/// client address is never touched). DSR (`nat == false`): addresses untouched. Both: hop
/// limit − 1 (the caller passed ≤ 1 to the kernel) and the backend's MACs.
#[inline(always)]
pub fn forward_v6(eth: *mut EthHdr, ip: *mut Ipv6Hdr, csum: Csum, b: &Backend, nat: bool) {
    // SAFETY: bounds-checked header pointers (module docs).
    unsafe {
        if nat {
            let field = &raw mut (*ip).dst_addr;
            let old = load128(field);
            store128(field, &b.addr);
            l4::fix128(csum, &old, &b.addr);
        }
        (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1);
        store_mac(&mut (*eth).dst_addr, load_mac(&b.dmac));
        store_mac(&mut (*eth).src_addr, load_mac(&b.smac));
    }
}

/// Backend → client: source backend address → VIP, the transport checksum, hop limit − 1,
/// MACs toward the client's previous hop as learned by the forward path.
#[inline(always)]
pub fn reverse_v6(
    eth: *mut EthHdr,
    ip: *mut Ipv6Hdr,
    csum: Csum,
    vip: &[u32; 4],
    dst_mac: &[u8; 6],
    src_mac: &[u8; 6],
) {
    // SAFETY: bounds-checked header pointers (module docs).
    unsafe {
        let field = &raw mut (*ip).src_addr;
        let old = load128(field);
        store128(field, vip);
        l4::fix128(csum, &old, vip);
        (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1);
        store_mac(&mut (*eth).dst_addr, load_mac(dst_mac));
        store_mac(&mut (*eth).src_addr, load_mac(src_mac));
    }
}
