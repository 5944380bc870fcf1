//! IPv6: header sanity, addresses as wire-order words, the extension-header walk that finds
//! the transport header (or the fragment) behind them, and the bulk-data test of the slot fast
//! path behind it ([`bulk`]).
//!
//! The walk follows at most [`MAX_EXT_HEADERS`] headers (RFC 8200 §4):
//!
//! * Hop-by-Hop Options (only directly after the IPv6 header, §4.3 — anywhere else is a
//!   parameter problem for the kernel to report) and Destination Options (§4.6) are skipped:
//!   their options are for the hops and the destination, which the load balancer forwards to
//!   (§4.3 lets forwarding nodes leave Hop-by-Hop options unexamined).
//! * A Routing header with segments left 0 is skipped (§4.4: "ignore the Routing header");
//!   with segments left > 0 the VIP is a waypoint, not the destination: the kernel's.
//! * Fragment (§4.5): an atomic fragment (offset 0, M clear, RFC 6946) continues the walk; a
//!   first fragment ends it with the header behind (its transport header, whose length covers
//!   the whole datagram), a non-first fragment with the original packet's protocol and no
//!   transport header. A fragment whose fragmentable part starts with another extension
//!   header (Destination Options, AH) is the kernel's (`pass/ipv6_ext_header`): no IKE, ESP
//!   or SSTP stack sends one, and ending the walk at every fragment keeps the verifier's walk
//!   of it short (carrying "a first fragment" through the loop cost ~15,000 instructions).
//! * AH, Mobility, HIP, Shim6, the experimental numbers and a chain longer than the walk goes
//!   are passed to the kernel as `pass/ipv6_ext_header`. (AH authenticates the addresses a NAT
//!   rewrites; ESP, TCP, UDP and anything else end the walk as the upper layer.)
//!
//! Headers that run past the datagram are `DROP_MALFORMED`; a non-first fragment whose
//! datagram would end past 65,535 bytes of payload is `DROP_FRAGMENT_END` (§4.5).

use aya_ebpf::programs::XdpContext;
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    counters::{Verdict, DROP_FRAGMENT_END, DROP_MALFORMED, PASS_IPV6_EXT},
    l4::{Transport, IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP},
    parse::{load16, load32, ptr_at, store32},
};

/// Next-header values of RFC 8200 §4 and the IANA "IPv6 Extension Header Types" registry.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const NEXTHDR_MOBILITY: u8 = 135;
const NEXTHDR_HIP: u8 = 139;
const NEXTHDR_SHIM6: u8 = 140;
const NEXTHDR_EXP1: u8 = 253;
const NEXTHDR_EXP2: u8 = 254;
/// ICMPv6 (RFC 4443): neighbour discovery, echo, errors.
pub const NEXTHDR_ICMPV6: u8 = 58;

/// Extension headers the walk follows before giving up (`pass/ipv6_ext_header`). Real IKE,
/// ESP and SSTP traffic carries none, or one Fragment header; four leaves room for a
/// Hop-by-Hop, a Destination Options and a Routing header in front of it.
pub const MAX_EXT_HEADERS: usize = 4;

/// Fragment offset bits of the Fragment header's offset/flags word (RFC 8200 §4.5), host
/// order; the low three bits are reserved and the M flag.
const FRAG_OFFSET_MASK: u16 = 0xfff8;
/// The M (more fragments) flag of that word.
const FRAG_MORE: u16 = 0x0001;

/// The Fragment header (RFC 8200 §4.5); network-types has none.
#[repr(C)]
struct FragHdr {
    next_hdr: u8,
    _reserved: u8,
    /// Fragment offset (13 bits, in 8-byte units), 2 reserved bits, M flag.
    offset_flags: [u8; 2],
    _id: [u8; 4],
}

/// The first two bytes every other extension header starts with (RFC 8200 §4.2 / §4.4): next
/// header, then the length in 8-octet units not counting the first 8; a Routing header
/// continues with its type and segments left.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
    routing_type: u8,
    segments_left: u8,
}

/// IPv6 header sanity (RFC 8200 §3): version 6, the payload length inside the frame (which
/// may carry Ethernet padding beyond it). A jumbogram (payload length 0 with a Jumbo Payload
/// option, RFC 2675) cannot occur on Ethernet; its transport header fails the length checks.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Result<*mut Ipv6Hdr, Verdict> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY (all header reads): `ptr_at` checked the header lies inside the frame.
    let version = unsafe { (*ip).vcf[0] } >> 4;
    let payload_len = usize::from(u16::from_be(unsafe { load16(&(*ip).payload_len) }));
    let room = ctx.data_end() - ctx.data() - EthHdr::LEN - Ipv6Hdr::LEN;
    if version != 6 || payload_len > room {
        return Err(DROP_MALFORMED);
    }
    Ok(ip)
}

/// An IPv6 address field as wire-order words (see `lb_common`, "Byte order"), one 32-bit
/// load each (fields are 2-byte aligned behind Ethernet, as `parse::load32` explains).
///
/// # Safety
/// `a` is a bounds-checked header field.
#[inline(always)]
pub unsafe fn load128(a: *const [u8; 16]) -> [u32; 4] {
    let w = a.cast::<[u8; 4]>();
    // SAFETY: caller's bounds-checked field.
    unsafe {
        [
            load32(w),
            load32(w.add(1)),
            load32(w.add(2)),
            load32(w.add(3)),
        ]
    }
}

/// # Safety
/// As [`load128`].
#[inline(always)]
pub unsafe fn store128(a: *mut [u8; 16], v: &[u32; 4]) {
    let w = a.cast::<[u8; 4]>();
    // SAFETY: caller's bounds-checked field.
    unsafe {
        store32(w, v[0]);
        store32(w.add(1), v[1]);
        store32(w.add(2), v[2]);
        store32(w.add(3), v[3]);
    }
}

/// IPv6 source and destination addresses, wire order.
#[inline(always)]
pub fn saddr(ip: *const Ipv6Hdr) -> [u32; 4] {
    // SAFETY: a bounds-checked header (`ipv6`).
    unsafe { load128(&raw const (*ip).src_addr) }
}

#[inline(always)]
pub fn daddr(ip: *const Ipv6Hdr) -> [u32; 4] {
    unsafe { load128(&raw const (*ip).dst_addr) }
}

/// Frame offset of the end of the IPv6 packet (what follows is padding or a trailer).
#[inline(always)]
pub fn end(ip: *const Ipv6Hdr) -> usize {
    // SAFETY: a bounds-checked header.
    let payload_len = u16::from_be(unsafe { load16(&(*ip).payload_len) });
    EthHdr::LEN + Ipv6Hdr::LEN + usize::from(payload_len)
}

#[inline(always)]
pub fn next_hdr(ip: *const Ipv6Hdr) -> u8 {
    unsafe { (*ip).next_hdr }
}

#[inline(always)]
pub fn hop_limit(ip: *const Ipv6Hdr) -> u8 {
    unsafe { (*ip).hop_limit }
}

/// Extension headers the walk does not follow (module docs).
#[inline(always)]
fn unwalked(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_AUTH | NEXTHDR_MOBILITY | NEXTHDR_HIP | NEXTHDR_SHIM6 | NEXTHDR_EXP1 | NEXTHDR_EXP2
    )
}

/// Any extension header (what may not start a non-first fragment's payload for ikelb).
#[inline(always)]
fn extension(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_DEST
    ) || unwalked(next)
}

/// Walks the extension headers of a sane IPv6 packet (module docs) to its transport header.
#[inline(always)]
pub fn walk(ctx: &XdpContext, ip: *const Ipv6Hdr) -> Result<Transport, Verdict> {
    // SAFETY (header reads): every pointer below comes from `ptr_at`.
    let payload_len = usize::from(u16::from_be(unsafe { load16(&(*ip).payload_len) }));
    let end = EthHdr::LEN + Ipv6Hdr::LEN + payload_len;
    let mut next = next_hdr(ip);
    let mut offset = EthHdr::LEN + Ipv6Hdr::LEN;
    // What nearly every packet carries: its upper layer right behind the IPv6 header.
    if matches!(next, IPPROTO_UDP | IPPROTO_ESP | IPPROTO_TCP) {
        return Ok(Transport {
            proto: next,
            offset,
            end,
            first: true,
            whole: true,
        });
    }
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        if next == NEXTHDR_FRAGMENT {
            let f: *const FragHdr = ptr_at(ctx, offset)?;
            let proto = unsafe { (*f).next_hdr };
            let word = u16::from_be(unsafe { load16(&(*f).offset_flags) });
            // The offset field is the word's top 13 bits in 8-byte units: in bytes, the word
            // without its low 3 bits.
            let fragment_offset = usize::from(word & FRAG_OFFSET_MASK);
            offset += size_of::<FragHdr>();
            if offset > end {
                return Err(DROP_MALFORMED);
            }
            if fragment_offset != 0 {
                // §4.5: the unfragmentable part + offset + this fragment's data, i.e. offset +
                // payload length − the Fragment header, may not exceed 65,535 bytes.
                if fragment_offset + payload_len - size_of::<FragHdr>() > 65_535 {
                    return Err(DROP_FRAGMENT_END);
                }
                if extension(proto) {
                    return Err(PASS_IPV6_EXT);
                }
                return Ok(Transport {
                    proto,
                    offset,
                    end,
                    first: false,
                    whole: false,
                });
            }
            if word & FRAG_MORE != 0 {
                // A first fragment ends the walk as the others do: its transport header (the
                // UDP length of which covers more than it carries) follows directly.
                if extension(proto) {
                    return Err(PASS_IPV6_EXT);
                }
                return Ok(Transport {
                    proto,
                    offset,
                    end,
                    first: true,
                    whole: false,
                });
            }
            // An atomic fragment (RFC 6946: offset 0, M clear) is a whole packet.
            next = proto;
        } else if next == NEXTHDR_DEST || next == NEXTHDR_ROUTING || (next == NEXTHDR_HOP && i == 0)
        {
            let h: *const ExtHdr = ptr_at(ctx, offset)?;
            if next == NEXTHDR_ROUTING && unsafe { (*h).segments_left } != 0 {
                return Err(PASS_IPV6_EXT);
            }
            next = unsafe { (*h).next_hdr };
            offset += (usize::from(unsafe { (*h).len }) + 1) * 8;
            if offset > end {
                return Err(DROP_MALFORMED);
            }
        } else if extension(next) {
            // AH and friends, or a Hop-by-Hop header out of place.
            return Err(PASS_IPV6_EXT);
        } else {
            break;
        }
        i += 1;
    }
    if extension(next) {
        return Err(PASS_IPV6_EXT);
    }
    Ok(Transport {
        proto: next,
        offset,
        end,
        first: true,
        whole: true,
    })
}
