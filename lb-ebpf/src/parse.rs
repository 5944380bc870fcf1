//! Header access: the one bounds helper, word loads and stores, Ethernet and IPv4 parsing
//! (IPv6's is `parse6`; the persistency-group test and the bulk-data test are `l4`).

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::MAX_PORTS;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    counters::{
        Verdict, DROP_FRAGMENT_END, DROP_FRAGMENT_OFFSET, DROP_MALFORMED, PASS_NOT_IP, PASS_VLAN,
    },
    l4::{Transport, IPPROTO_TCP},
    parse6,
};

/// Fragment offset bits of the IPv4 flags/offset word (RFC 791 §3.1), host order.
const IP_OFFSET_MASK: u16 = 0x1fff;
/// The More Fragments flag of that word.
const IP_MF: u16 = 0x2000;

/// The one bounds check: a pointer to a `T` at `offset` from the start of the frame, or
/// `DROP_MALFORMED` when the frame is too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Verdict> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return Err(DROP_MALFORMED);
    }
    Ok((start + offset) as *mut T)
}

// Header fields as whole words.
//
// network-types declares multi-byte fields as byte arrays (alignment 1), so plain reads make
// LLVM split every address into four byte loads and every MAC copy into a `memmove` call.
// These helpers load and store each field with one instruction per word instead, as
// Katran's and Cilium's C does through `struct iphdr`: behind a 14-byte Ethernet header the
// fields are only 2-byte aligned, which the verifier accepts (no BPF_F_STRICT_ALIGNMENT) and
// the JITs of the architectures ikelb runs on (x86-64, arm64) load natively. Map values are
// 4-byte aligned, so a 6-byte MAC in one is 2-byte aligned at least.

/// One 32-bit load of a 4-byte field (wire order, see `lb_common`).
#[inline(always)]
pub unsafe fn load32(field: *const [u8; 4]) -> u32 {
    // SAFETY: caller's in-bounds field; alignment as explained above.
    unsafe { field.cast::<u32>().read() }
}

/// One 16-bit load of a 2-byte field (wire order).
#[inline(always)]
pub unsafe fn load16(field: *const [u8; 2]) -> u16 {
    // SAFETY: as `load32`.
    unsafe { field.cast::<u16>().read() }
}

#[inline(always)]
pub unsafe fn store32(field: *mut [u8; 4], v: u32) {
    // SAFETY: as `load32`.
    unsafe { field.cast::<u32>().write(v) }
}

#[inline(always)]
pub unsafe fn store16(field: *mut [u8; 2], v: u16) {
    // SAFETY: as `load32`.
    unsafe { field.cast::<u16>().write(v) }
}

/// A MAC address as a 4-byte and a 2-byte word.
#[inline(always)]
pub unsafe fn load_mac(mac: *const [u8; 6]) -> (u32, u16) {
    // SAFETY: as `load32`; a MAC is 2-byte aligned in frames and map values.
    unsafe { (load32(mac.cast()), load16(mac.cast::<[u8; 2]>().add(2))) }
}

#[inline(always)]
pub unsafe fn store_mac(mac: *mut [u8; 6], (hi, lo): (u32, u16)) {
    // SAFETY: as `load_mac`.
    unsafe {
        store32(mac.cast(), hi);
        store16(mac.cast::<[u8; 2]>().add(2), lo);
    }
}

/// Length of the whole frame (for the per-backend byte counters).
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// Network layer of a frame ikelb may handle, its header bounds-checked.
pub enum L3 {
    V4(*mut Ipv4Hdr),
    V6(*mut Ipv6Hdr),
}

/// Ethernet: tagged frames and non-IP frames are the kernel's.
#[inline(always)]
pub fn l3(ctx: &XdpContext, eth: *mut EthHdr) -> Result<L3, Verdict> {
    // SAFETY (all header reads below): `ptr_at` checked the header lies inside the frame.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv4 as u16 {
        return Ok(L3::V4(ipv4(ctx)?));
    }
    if ether_type == EtherType::Ipv6 as u16 {
        return Ok(L3::V6(parse6::ipv6(ctx)?));
    }
    Err(if ether_type == EtherType::Ieee8021q as u16
        || ether_type == EtherType::Ieee8021ad as u16
    {
        PASS_VLAN
    } else {
        PASS_NOT_IP
    })
}

/// IPv4 header sanity (RFC 791 §3.1, RFC 1812 §5.2.2): version 4, IHL ≥ 5, total length
/// between the header length and what the frame holds (the frame may carry Ethernet padding
/// beyond it).
#[inline(always)]
fn ipv4(ctx: &XdpContext) -> Result<*mut Ipv4Hdr, Verdict> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    let vihl = unsafe { (*ip).vihl };
    let header_len = u16::from(vihl & 0x0f) * 4;
    let total_len = u16::from_be(unsafe { load16(&(*ip).tot_len) });
    let room = ctx.data_end() - ctx.data() - EthHdr::LEN;
    if vihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN as u16
        || total_len < header_len
        || usize::from(total_len) > room
    {
        return Err(DROP_MALFORMED);
    }
    Ok(ip)
}

/// IPv4 source and destination addresses, wire order.
#[inline(always)]
pub fn saddr(ip: *const Ipv4Hdr) -> u32 {
    unsafe { load32(&(*ip).src_addr) }
}

#[inline(always)]
pub fn daddr(ip: *const Ipv4Hdr) -> u32 {
    unsafe { load32(&(*ip).dst_addr) }
}

/// Frame offset of the end of the IPv4 datagram (what follows is padding or a trailer).
#[inline(always)]
pub fn end_v4(ip: *const Ipv4Hdr) -> usize {
    // SAFETY: a bounds-checked header.
    EthHdr::LEN + usize::from(u16::from_be(unsafe { load16(&(*ip).tot_len) }))
}

#[inline(always)]
pub fn has_options(ip: *const Ipv4Hdr) -> bool {
    unsafe { (*ip).vihl != 0x45 }
}

/// The protocol, and whether the transport header is here (whole packet or first fragment).
#[inline(always)]
pub fn proto_first(ip: *const Ipv4Hdr) -> (u8, bool) {
    // SAFETY: a bounds-checked header.
    unsafe {
        (
            (*ip).proto,
            load16(&(*ip).frags) & IP_OFFSET_MASK.to_be() == 0,
        )
    }
}

/// Where an IPv4 packet without options (`l3` checked the header) carries its transport
/// header, and the fragment rules:
///
/// * a fragment whose datagram would end past 65,535 bytes (RFC 791 §3.1: the offset in
///   8-byte units plus the fragment's total length; the header is 20 bytes here) is dropped
///   (`DROP_FRAGMENT_END`): whatever reassembles it overflows;
/// * on the way to a VIP, a TCP fragment at offset 8 bytes can only serve to overwrite the
///   first fragment's flags; no sender makes one (RFC 1858 §3.2, `DROP_FRAGMENT_OFFSET`).
#[inline(always)]
pub fn transport_v4(ip: *const Ipv4Hdr, side: Side) -> Result<Transport, Verdict> {
    // SAFETY: a bounds-checked header.
    let (proto, frags, total_len) =
        unsafe { ((*ip).proto, load16(&(*ip).frags), load16(&(*ip).tot_len)) };
    let total_len = usize::from(u16::from_be(total_len));
    let offset = u16::from_be(frags) & IP_OFFSET_MASK;
    if side == Side::Forward && proto == IPPROTO_TCP && offset == 1 {
        return Err(DROP_FRAGMENT_OFFSET);
    }
    let first = offset == 0;
    if !first && usize::from(offset) * 8 + total_len > 65_535 {
        return Err(DROP_FRAGMENT_END);
    }
    Ok(Transport {
        proto,
        offset: EthHdr::LEN + Ipv4Hdr::LEN,
        end: EthHdr::LEN + total_len,
        first,
        whole: frags & (IP_OFFSET_MASK | IP_MF).to_be() == 0,
    })
}

#[inline(always)]
pub fn ttl(ip: *const Ipv4Hdr) -> u8 {
    unsafe { (*ip).ttl }
}

/// Which port of a UDP header names the service: the destination on the way to a VIP, the
/// source on a backend's reply.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Forward,
    Reverse,
}

/// `port` (wire order) is one of `ports` (unused entries are 0 and last; port 0 never
/// matches).
#[inline(always)]
pub fn has_port(ports: &[u16; MAX_PORTS], port: u16) -> bool {
    let mut i = 0;
    while i < MAX_PORTS {
        let p = ports[i];
        if p == 0 {
            return false;
        }
        if p == port {
            return true;
        }
        i += 1;
    }
    false
}
