//! ICMP errors about a client's flow, sent on to the client's backend so path MTU discovery
//! works through ikelb (RFC 1191 for IPv4, RFC 8201 for IPv6).
//!
//! A backend's reply leaves ikelb with the VIP as its source; a router on the way to the
//! client that cannot forward it whole answers the VIP with "fragmentation needed" (ICMP type
//! 3 code 4) or "packet too big" (ICMPv6 type 2), quoting the reply's headers. ikelb finds the
//! client in the quote (its destination), the backend that serves it (`select::owner`, no
//! state touched), and forwards the message there with the addresses the backend used: outer
//! destination VIP → backend, quoted source VIP → backend, and every checksum that covers
//! them. Any other ICMP to a VIP stays the kernel's (`pass/not_service_port`).

use aya_ebpf::programs::XdpContext;
use lb_common::{counter, csum, Service, DIR_FORWARD};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    counters::{self, Verdict, PASS_ICMPV6, PASS_NOT_SERVICE_PORT, PASS_TTL},
    l4::{Csum, IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP},
    maps,
    parse::{self, has_port, load16, load32, ptr_at, store16, store32},
    parse6::{self, load128, store128},
    family::{Family, V4, V6},
    rewrite, sanity,
    select,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;

/// ICMP header (RFC 792): type, code, checksum, then 4 bytes (unused + next-hop MTU).
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
}

/// The first 8 bytes of the quoted transport header: ports, then UDP length and checksum
/// (TCP: the sequence number; a TCP checksum lies beyond the 8 bytes RFC 792 promises and no
/// stack checks it in a quote, so it is left as it is).
#[repr(C)]
struct Quoted {
    sport: [u8; 2],
    dport: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

/// Whether a quoted packet of protocol `proto` from source port `sport` (wire order) is one of
/// `svc`'s replies: from a service port, or ESP when the service forwards it.
#[inline(always)]
fn quotes_a_reply(svc: &Service, proto: u8, sport: u16) -> bool {
    match proto {
        IPPROTO_UDP => has_port(&svc.udp_ports, sport),
        IPPROTO_TCP => has_port(&svc.tcp_ports, sport),
        IPPROTO_ESP => svc.flags & lb_common::SVC_F_ESP != 0,
        _ => false,
    }
}

/// An IPv4 ICMP message to a VIP (header without options, first fragment).
#[inline(always)]
pub fn frag_needed_v4(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    svc: &Service,
) -> Result<u32, Verdict> {
    const ICMP: usize = EthHdr::LEN + Ipv4Hdr::LEN;
    const INNER: usize = ICMP + 8;
    const QUOTED: usize = INNER + Ipv4Hdr::LEN;
    let icmp: *mut IcmpHdr = ptr_at(ctx, ICMP).map_err(|_| PASS_NOT_SERVICE_PORT)?;
    // SAFETY (all header accesses): pointers from `ptr_at`.
    if unsafe { (*icmp).kind != ICMP_DEST_UNREACH || (*icmp).code != ICMP_FRAG_NEEDED } {
        return Err(PASS_NOT_SERVICE_PORT);
    }
    // The quote must lie in the datagram, not in bytes past it (which the exit cuts off).
    let end = parse::end_v4(ip);
    if QUOTED + size_of::<Quoted>() > end {
        return Err(PASS_NOT_SERVICE_PORT);
    }
    let inner: *mut Ipv4Hdr = ptr_at(ctx, INNER).map_err(|_| PASS_NOT_SERVICE_PORT)?;
    let quoted: *mut Quoted = ptr_at(ctx, QUOTED).map_err(|_| PASS_NOT_SERVICE_PORT)?;
    let vip = svc.vip[0];
    let (proto, isrc, client) = unsafe {
        if (*inner).vihl != 0x45 {
            return Err(PASS_NOT_SERVICE_PORT);
        }
        (
            (*inner).proto,
            load32(&(*inner).src_addr),
            load32(&(*inner).dst_addr),
        )
    };
    // The quote must be one of our replies: from the VIP, from a service port (or ESP).
    let sport = unsafe { load16(&(*quoted).sport) };
    if isrc != vip || !quotes_a_reply(svc, proto, sport) {
        return Err(PASS_NOT_SERVICE_PORT);
    }
    if parse::ttl(ip) <= 1 {
        return Err(PASS_TTL);
    }
    // A backend or the gateway is no router on a client's path.
    if let Some(listed) = V4::listed(&parse::saddr(ip)) {
        return Err(sanity::listed_source(listed));
    }
    let (id, b) = select::owner::<V4>(svc, &client)?;
    // SAFETY: a pointer into the BACKENDS array map.
    let b = unsafe { &*b };
    if maps::mode_dsr() {
        // The backend holds the VIP itself: the message is right as it is.
        rewrite::forward::<V4>(eth, ip, Csum::None, b, false);
    } else {
        let new = b.addr[0];
        unsafe {
            // The quote: source VIP → backend, its header checksum, and the UDP checksum
            // (its pseudo-header holds the source; a zero one means none and stays zero).
            let mut icmp_check = load16(&(*icmp).check);
            store32(&mut (*inner).src_addr, new);
            icmp_check = csum::replace32(icmp_check, vip, new);
            let old_ic = load16(&(*inner).check);
            let new_ic = csum::replace32(old_ic, vip, new);
            store16(&mut (*inner).check, new_ic);
            icmp_check = csum::replace16(icmp_check, old_ic, new_ic);
            if proto == IPPROTO_UDP {
                let old_uc = load16(&(*quoted).check);
                let new_uc = csum::udp_replace32(old_uc, vip, new);
                store16(&mut (*quoted).check, new_uc);
                icmp_check = csum::replace16(icmp_check, old_uc, new_uc);
            }
            store16(&mut (*icmp).check, icmp_check);
        }
        // The outer header: destination VIP → backend, TTL, MACs (ICMP has no pseudo-header).
        rewrite::forward::<V4>(eth, ip, Csum::None, b, true);
    }
    let action = rewrite::send(ctx, end, b.ifindex, b.tx_port)?;
    counters::forwarded(
        counter::FORWARD_ICMP,
        id,
        DIR_FORWARD,
        parse::frame_len(ctx),
    );
    Ok(action)
}

const ICMPV6_PKT_TOOBIG: u8 = 2;

/// Whether an ICMPv6 message (right after the IPv6 header) is a packet-too-big long enough
/// to quote an IPv6 header and 8 bytes of its payload within the packet (not in bytes past
/// it, which the exit cuts off): the one ICMPv6 message ikelb may take from the kernel
/// (neighbour discovery and the rest are never touched).
#[inline(always)]
pub fn is_too_big_v6(ctx: &XdpContext, ip: *const Ipv6Hdr) -> bool {
    const QUOTE_END: usize = EthHdr::LEN + Ipv6Hdr::LEN + 8 + Ipv6Hdr::LEN + size_of::<Quoted>();
    match ptr_at::<IcmpHdr>(ctx, EthHdr::LEN + Ipv6Hdr::LEN) {
        // SAFETY: bounds-checked.
        Ok(h) => (unsafe { (*h).kind } == ICMPV6_PKT_TOOBIG) && parse6::end(ip) >= QUOTE_END,
        Err(_) => false,
    }
}

/// An ICMPv6 packet-too-big to a VIP (RFC 4443 §3.2) about one of the service's replies:
/// on to the client's backend, as [`frag_needed_v4`]. The ICMPv6 checksum covers the
/// pseudo-header (RFC 4443 §2.3), so the outer destination change enters it too.
#[inline(always)]
pub fn too_big_v6(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv6Hdr,
    svc: &Service,
) -> Result<u32, Verdict> {
    const ICMP: usize = EthHdr::LEN + Ipv6Hdr::LEN;
    const INNER: usize = ICMP + 8;
    const QUOTED: usize = INNER + Ipv6Hdr::LEN;
    let icmp: *mut IcmpHdr = ptr_at(ctx, ICMP).map_err(|_| PASS_ICMPV6)?;
    let inner: *mut Ipv6Hdr = ptr_at(ctx, INNER).map_err(|_| PASS_ICMPV6)?;
    let quoted: *mut Quoted = ptr_at(ctx, QUOTED).map_err(|_| PASS_ICMPV6)?;
    let end = parse6::end(ip);
    // SAFETY (all header accesses): pointers from `ptr_at`.
    let (proto, isrc, client, sport) = unsafe {
        (
            (*inner).next_hdr,
            load128(&raw const (*inner).src_addr),
            load128(&raw const (*inner).dst_addr),
            load16(&(*quoted).sport),
        )
    };
    if isrc != svc.vip || !quotes_a_reply(svc, proto, sport) {
        return Err(PASS_ICMPV6);
    }
    if parse6::hop_limit(ip) <= 1 {
        return Err(PASS_TTL);
    }
    if let Some(listed) = V6::listed(&parse6::saddr(ip)) {
        return Err(sanity::listed_source(listed));
    }
    let (id, b) = select::owner::<V6>(svc, &client)?;
    // SAFETY: a pointer into the BACKENDS array map.
    let b = unsafe { &*b };
    let nat = !maps::mode_dsr();
    if nat {
        unsafe {
            let mut check = load16(&(*icmp).check);
            // Pseudo-header: outer destination VIP → backend (written by `rewrite::forward`).
            check = csum::replace128(check, &svc.vip, &b.addr);
            store128(&raw mut (*inner).src_addr, &b.addr);
            check = csum::replace128(check, &svc.vip, &b.addr);
            if proto == IPPROTO_UDP {
                let old = load16(&(*quoted).check);
                let new = csum::udp_replace128(old, &svc.vip, &b.addr);
                store16(&mut (*quoted).check, new);
                check = csum::replace16(check, old, new);
            }
            store16(&mut (*icmp).check, check);
        }
    }
    rewrite::forward::<V6>(eth, ip, Csum::None, b, nat);
    let action = rewrite::send(ctx, end, b.ifindex, b.tx_port)?;
    counters::forwarded(
        counter::FORWARD_ICMP,
        id,
        DIR_FORWARD,
        parse::frame_len(ctx),
    );
    Ok(action)
}
