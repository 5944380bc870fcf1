//! The persistency group of a service, for both address families: which transport packets to
//! a VIP (or from a backend) ikelb steers by client address, and which transport checksum a
//! rewrite of the addresses must fix.
//!
//! The group (DESIGN.md, "Why this exists"; issue 6) is, per service:
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

use aya_ebpf::programs::XdpContext;
use lb_common::{csum, Service, SVC_F_ESP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    counters::{Verdict, DROP_MALFORMED},
    parse::{has_port, load16, ptr_at, store16, Side},
};

/// IP protocol numbers (IANA).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ESP: u8 = 50;
/// Fragment offset bits of the IPv4 flags/offset word (RFC 791 §3.1), host order.
const IP_OFFSET_MASK: u16 = 0x1fff;

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
    /// The UDP header of a UDP packet (for `parse::bulk_v4`, which reads its port).
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
            return Ok(Csum::Tcp(tcp));
        }
        return Err(miss);
    }
    if t.proto == IPPROTO_ESP && svc.flags & SVC_F_ESP != 0 {
        return Ok(Csum::None);
    }
    Err(miss)
}

/// [`classify`] for an IPv4 packet without options (`parse::l3` checked the header).
#[inline(always)]
pub fn classify_v4(
    ctx: &XdpContext,
    ip: *const Ipv4Hdr,
    svc: &Service,
    side: Side,
    miss: Verdict,
) -> Result<Csum, Verdict> {
    // SAFETY: a bounds-checked header.
    let (proto, frags, total_len) =
        unsafe { ((*ip).proto, load16(&(*ip).frags), load16(&(*ip).tot_len)) };
    let t = Transport {
        proto,
        offset: EthHdr::LEN + Ipv4Hdr::LEN,
        end: EthHdr::LEN + usize::from(u16::from_be(total_len)),
        first: frags & IP_OFFSET_MASK.to_be() == 0,
    };
    classify(ctx, t, svc, side, miss)
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
