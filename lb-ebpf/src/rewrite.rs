//! Header rewrites with incremental checksums (RFC 1624, `lb_common::csum`) and the exit:
//! XDP_TX back out of the ingress interface, or a devmap redirect.
//!
//! All functions take header pointers that `parse` bounds-checked.

use aya_ebpf::{bindings::xdp_action::XDP_TX, programs::XdpContext};
use lb_common::{csum, Backend};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::{
    counters::{Verdict, DROP_BAD_BACKEND},
    maps::TX_PORTS,
};

/// Client → backend. NAT: destination VIP → backend address (IP and UDP checksums; the client
/// address is never touched, the backend must see it). DSR (`nat == false`): addresses
/// untouched, the backend holds the VIP itself. Both: TTL − 1 and the backend's MACs.
#[inline(always)]
pub fn forward_v4(
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    udp: Option<*mut UdpHdr>,
    b: &Backend,
    nat: bool,
) {
    // SAFETY: bounds-checked header pointers (module docs).
    unsafe {
        let mut check = u16::from_ne_bytes((*ip).check);
        if nat {
            let old = u32::from_ne_bytes((*ip).dst_addr);
            let new = b.addr[0];
            (*ip).dst_addr = new.to_ne_bytes();
            check = csum::replace32(check, old, new);
            fix_udp(udp, old, new);
        }
        (*ip).check = decrement_ttl(ip, check).to_ne_bytes();
        (*eth).dst_addr = b.dmac;
        (*eth).src_addr = b.smac;
    }
}

/// Backend → client: source backend address → VIP, TTL − 1, checksums; MACs toward the
/// client's previous hop as learned by the forward path.
#[inline(always)]
pub fn reverse_v4(
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    udp: Option<*mut UdpHdr>,
    vip: u32,
    dst_mac: &[u8; 6],
    src_mac: &[u8; 6],
) {
    // SAFETY: bounds-checked header pointers (module docs).
    unsafe {
        let old = u32::from_ne_bytes((*ip).src_addr);
        (*ip).src_addr = vip.to_ne_bytes();
        let check = csum::replace32(u16::from_ne_bytes((*ip).check), old, vip);
        (*ip).check = decrement_ttl(ip, check).to_ne_bytes();
        fix_udp(udp, old, vip);
        (*eth).dst_addr = *dst_mac;
        (*eth).src_addr = *src_mac;
    }
}

/// The UDP checksum covers the addresses through the pseudo-header (RFC 768); 0 ("no
/// checksum") stays 0. Fragments other than the first carry no UDP header (`None`).
#[inline(always)]
unsafe fn fix_udp(udp: Option<*mut UdpHdr>, old: u32, new: u32) {
    if let Some(udp) = udp {
        // SAFETY: caller's bounds-checked header.
        unsafe {
            let c = csum::udp_replace32(u16::from_ne_bytes((*udp).check), old, new);
            (*udp).check = c.to_ne_bytes();
        }
    }
}

/// TTL − 1 (RFC 1812 §5.3.1; the caller passed TTL ≤ 1 to the kernel) and the checksum update
/// for the TTL/protocol word it shares. Returns the new header checksum.
#[inline(always)]
unsafe fn decrement_ttl(ip: *mut Ipv4Hdr, check: u16) -> u16 {
    // SAFETY: caller's bounds-checked header.
    unsafe {
        let (ttl, proto) = ((*ip).ttl, (*ip).proto);
        (*ip).ttl = ttl.wrapping_sub(1);
        csum::replace16(check, u16::from_ne_bytes([ttl, proto]), u16::from_ne_bytes([ttl.wrapping_sub(1), proto]))
    }
}

/// Sends the rewritten frame: XDP_TX when it leaves by the interface it arrived on (one-arm,
/// or a client and backend on the same side), else a redirect to devmap entry `port`. A
/// missing devmap entry drops the packet as `bad_backend`.
#[inline(always)]
pub fn send(ctx: &XdpContext, ifindex: u32, port: u32) -> Result<u32, Verdict> {
    if ctx.ingress_ifindex() as u32 == ifindex {
        return Ok(XDP_TX);
    }
    TX_PORTS.redirect(port, 0).map_err(|_| DROP_BAD_BACKEND)
}
