//! The persistency group of a service, for both address families: which transport packets to
//! a VIP (or from a backend) ikelb steers by client address, and which transport checksum a
//! rewrite of the addresses must fix.
//!
//! The group (`docs/configuration.md`, `virtual_servers`) is, per service:
//!
//! * UDP to one of `udp_ports` (IKE 500, NAT-T 4500), TCP to one of `tcp_ports` (SSTP 443, the
//!   Always On VPN fallback), unfragmented or first fragment: the transport header must lie in
//!   the frame and in the datagram, else `DROP_MALFORMED` (a first fragment too short to hold
//!   the ports is the RFC 1858 / RFC 7112 tiny-fragment case: never forwarded).
//! * A non-first fragment of UDP or TCP when the service has ports of that protocol: it carries
//!   no ports, and the persistence key does not need them (IKE_AUTH with certificates is
//!   routinely fragmented; RFC 791 §2.3, RFC 8200 §4.5).
//! * ESP (IP protocol 50, fragment or not) when the service has `SVC_F_ESP`: nothing of it is
//!   parsed, it has no transport checksum (RFC 4303 §2).
//!
//! A packet of the group is forwarded only with lengths that agree (`sanity`, module docs):
//! a UDP length equal to the IP payload (at least what a first fragment carries,
//! `DROP_UDP_LENGTH`), a TCP data offset of 5 words or more inside the segment
//! (`DROP_TCP_DATA_OFFSET`), and, over IPv4, a fragment ending within 65,535 bytes
//! (`DROP_FRAGMENT_END`, `parse::transport_v4`; `parse6::walk` checks IPv6's). Transport checksums are not verified,
//! as a router does not: a wrong one stays wrong (incremental updates keep it so), a zero
//! UDP checksum stays zero — over IPv6 too (RFC 8200 §8.1 makes it invalid; the backend's stack
//! drops it, `docs/security.md`).

use aya_ebpf::programs::XdpContext;
use lb_common::{csum, Service, SVC_F_ESP};
use network_types::{tcp::TcpHdr, udp::UdpHdr};

use crate::{
    counters::{Verdict, DROP_MALFORMED, DROP_TCP_DATA_OFFSET, DROP_UDP_LENGTH},
    parse::{has_port, load16, load32, ptr_at, store16, Side},
};

/// IP protocol numbers (IANA).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ESP: u8 = 50;
/// Where a packet's transport header is, as the network layer found it.
#[derive(Clone, Copy)]
pub struct Transport {
    /// Protocol of the transport header (or of the fragment's original packet).
    pub proto: u8,
    /// Offset of the transport header from the start of the frame (first fragments and
    /// whole packets only).
    pub offset: usize,
    /// Offset of the end of the datagram (frame padding lies beyond it).
    pub end: usize,
    /// A whole packet or a first fragment: the transport header is here.
    pub first: bool,
    /// A whole packet (not a fragment of one, an atomic fragment included): the transport
    /// header's length covers exactly `end - offset`.
    pub whole: bool,
}

/// The transport checksum that covers the rewritten addresses (through the pseudo-header).
#[derive(Clone, Copy)]
pub enum Csum {
    /// Nothing to fix: ESP, or a non-first fragment (no transport header).
    None,
    /// A UDP header. A zero checksum means "none" over IPv4 (RFC 768) and "invalid" over
    /// IPv6 (RFC 8200 §8.1); either way it stays zero.
    Udp(*mut UdpHdr),
    /// A TCP header (RFC 9293 §3.1): every checksum value is a checksum.
    Tcp(*mut TcpHdr),
}

impl Csum {
    /// The UDP header of a UDP packet (for [`bulk`], which reads its port).
    #[inline(always)]
    pub fn udp(self) -> Option<*mut UdpHdr> {
        match self {
            Csum::Udp(u) => Some(u),
            _ => None,
        }
    }

    #[inline(always)]
    pub fn is_tcp(self) -> bool {
        matches!(self, Csum::Tcp(_))
    }
}

/// Whether the packet belongs to `svc`'s persistency group (module docs), and if so which
/// checksum to fix. `side` names the port that identifies the service (destination on the
/// way to a VIP, source on a backend's reply); `miss` is the verdict for packets outside the
/// group.
#[inline(always)]
pub fn classify(
    ctx: &XdpContext,
    t: Transport,
    svc: &Service,
    side: Side,
    miss: Verdict,
) -> Result<Csum, Verdict> {
    if t.proto == IPPROTO_UDP {
        if !t.first {
            return if svc.udp_ports[0] != 0 {
                Ok(Csum::None)
            } else {
                Err(miss)
            };
        }
        let udp: *mut UdpHdr = ptr_at(ctx, t.offset)?;
        if t.offset + UdpHdr::LEN > t.end {
            return Err(DROP_MALFORMED);
        }
        // SAFETY (both headers): `ptr_at` checked the header lies inside the frame.
        let port = unsafe {
            match side {
                Side::Forward => load16(&(*udp).dst),
                Side::Reverse => load16(&(*udp).src),
            }
        };
        if has_port(&svc.udp_ports, port) {
            udp_length(udp, t)?;
            return Ok(Csum::Udp(udp));
        }
        return Err(miss);
    }
    if t.proto == IPPROTO_TCP {
        if !t.first {
            return if svc.tcp_ports[0] != 0 {
                Ok(Csum::None)
            } else {
                Err(miss)
            };
        }
        let tcp: *mut TcpHdr = ptr_at(ctx, t.offset)?;
        if t.offset + TcpHdr::LEN > t.end {
            return Err(DROP_MALFORMED);
        }
        let port = unsafe {
            match side {
                Side::Forward => load16(&(*tcp).dest),
                Side::Reverse => load16(&(*tcp).source),
            }
        };
        if has_port(&svc.tcp_ports, port) {
            data_offset(tcp, t)?;
            return Ok(Csum::Tcp(tcp));
        }
        return Err(miss);
    }
    if t.proto == IPPROTO_ESP && svc.flags & SVC_F_ESP != 0 {
        return Ok(Csum::None);
    }
    Err(miss)
}

/// The UDP length of a packet of the group agrees with its IP payload (RFC 768): equal to it
/// for a whole datagram, at least what a first fragment carries (`DROP_UDP_LENGTH`; the
/// header itself is inside the payload, `classify` checked).
#[inline(always)]
fn udp_length(udp: *const UdpHdr, t: Transport) -> Result<(), Verdict> {
    let carried = (t.end - t.offset) as u64;
    // SAFETY: a bounds-checked header.
    let len = u64::from(u16::from_be(unsafe { load16(&(*udp).len) }));
    // One branch on a value computed without branches (`len < carried`, `len != carried` as
    // sign bits): comparing the lengths themselves narrows their ranges on the way on and
    // splits the verifier's states downstream (≈ 20,000 more instructions processed).
    let short = len.wrapping_sub(carried) >> 63;
    let diff = len ^ carried;
    let unequal = (diff | diff.wrapping_neg()) >> 63;
    if short | (unequal & u64::from(t.whole)) != 0 {
        return Err(DROP_UDP_LENGTH);
    }
    Ok(())
}

/// The TCP data offset of a segment of the group is at least 5 words and inside what the
/// packet (or first fragment) carries (RFC 9293 §3.1; `DROP_TCP_DATA_OFFSET`).
#[inline(always)]
fn data_offset(tcp: *const TcpHdr, t: Transport) -> Result<(), Verdict> {
    // SAFETY: a bounds-checked header; byte 12 holds the data offset in its high nibble.
    let doff = usize::from(unsafe { *tcp.cast::<u8>().add(12) } >> 4) * 4;
    if doff < TcpHdr::LEN || doff > t.end - t.offset {
        return Err(DROP_TCP_DATA_OFFSET);
    }
    Ok(())
}

/// Fixes the transport checksum after a 32-bit address changed from `old` to `new`.
///
/// # Safety
/// `c` was returned by [`classify`] for this frame.
#[inline(always)]
pub unsafe fn fix32(c: Csum, old: u32, new: u32) {
    // SAFETY: caller's bounds-checked field.
    unsafe {
        match c {
            Csum::None => {}
            Csum::Udp(u) => {
                let f = &raw mut (*u).check;
                store16(f, csum::udp_replace32(load16(f), old, new));
            }
            Csum::Tcp(t) => {
                let f = &raw mut (*t).check;
                store16(f, csum::replace32(load16(f), old, new));
            }
        }
    }
}

/// Fixes the transport checksum after a 128-bit address changed from `old` to `new`.
///
/// # Safety
/// As [`fix32`].
#[inline(always)]
pub unsafe fn fix128(c: Csum, old: &[u32; 4], new: &[u32; 4]) {
    // SAFETY: caller's bounds-checked field.
    unsafe {
        match c {
            Csum::None => {}
            Csum::Udp(u) => {
                let f = &raw mut (*u).check;
                store16(f, csum::udp_replace128(load16(f), old, new));
            }
            Csum::Tcp(t) => {
                let f = &raw mut (*t).check;
                store16(f, csum::replace128(load16(f), old, new));
            }
        }
    }
}

/// Whether a packet of the persistency group (`classify` accepted `t`) is bulk data that may
/// take the slot fast path (`SLOT_FAST_PATH`): ESP (SPI non-zero), in UDP or not, and
/// non-first fragments. IKE messages never are: UDP to 500, or starting with the non-ESP
/// marker (RFC 3948 §2.2), or a NAT keepalive (one 0xff byte, shorter than an ESP header) —
/// so every session start, rekey and keepalive goes through the persistence entries. The ESP
/// header must lie in the datagram, not in bytes past it (a keepalive's Ethernet padding is
/// no SPI). The caller rules out TCP.
#[inline(always)]
pub fn bulk(ctx: &XdpContext, t: Transport, udp: Option<*mut UdpHdr>) -> bool {
    if !t.first {
        return true;
    }
    let esp = match udp {
        Some(udp) => {
            // SAFETY: `classify` bounds-checked the UDP header.
            if unsafe { load16(&(*udp).dst) } == 500u16.to_be() {
                return false;
            }
            t.offset + UdpHdr::LEN
        }
        None => t.offset,
    };
    // SPI and sequence number; a shorter payload is a keepalive (or malformed): not bulk.
    if esp + 8 > t.end {
        return false;
    }
    let Ok(hdr) = ptr_at::<[[u8; 4]; 2]>(ctx, esp) else {
        return false;
    };
    // SAFETY: bounds-checked just now.
    unsafe { load32(&(*hdr)[0]) != 0 }
}
