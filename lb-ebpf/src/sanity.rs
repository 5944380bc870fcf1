//! What a router checks before it forwards (RFC 1812 for IPv4; RFC 8200 and RFC 4291 for
//! IPv6), for the frames ikelb forwards itself; everything it passes, the kernel checks as it
//! always does (`docs/security.md`, "What a router checks").
//!
//! * **Destination MAC**: the receiving interface's own — `IFACES[port]` on the forward path,
//!   the backend's `smac` (the MAC of the interface its frames arrive on) on the reverse path
//!   — never a broadcast, multicast or another host's (RFC 1812 §5.3.4; Linux drops
//!   `PACKET_OTHERHOST` frames and does not forward link-layer broadcasts).
//! * **IPv4 header checksum** (RFC 1812 §5.2.2): a fixed 20-byte sum, headers with options
//!   being the kernel's anyway (`lb_common::csum::ipv4_header_ok`).
//! * **The client's address** — the source of a frame to a VIP, the destination of a backend's
//!   reply: never 0/8, 127/8, 224/4, 240/4 (255.255.255.255 included), ::, ::1, ff00::/8,
//!   ::ffff:0:0/96 or fe80::/10 (RFC 1812 §5.3.7, RFC 6890, RFC 4291 §2.5–2.7), nor the VIP.
//!   These are a few comparisons on every packet. A backend's address, or one of the
//!   gateway's own (`lb_common::OWN_ADDRESS_ID`), is found in `BACKEND_IDS_V4/V6` by the
//!   lookup the reverse path makes anyway; the forward path makes it only for a source
//!   without an entry (`select::forward`), so an established client's packet costs nothing
//!   more and no such source ever gets an entry.
//! * **Reverse path**: a backend's frame arrives on that backend's interface, which has the
//!   `backends` role, from its MAC, to the interface's MAC ([`from_backend`]).
//!
//! Lengths are checked where the headers are read: the UDP length and the TCP data offset in
//! `l4::classify`, where a fragment ends in `parse::transport_v4` and `parse6::walk`; bytes past
//! the datagram are cut off on the way out ([`trim`]).

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{csum, event, Backend, INGRESS_F_BACKENDS, INGRESS_PORT_MASK, OWN_ADDRESS_ID};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    counters::{
        self, Verdict, DROP_DST_MAC_GROUP, DROP_DST_MAC_OTHER, DROP_IP_CHECKSUM, DROP_MALFORMED,
        DROP_REVERSE_NOT_BACKEND_IFACE, DROP_REVERSE_NOT_CLIENT, DROP_REVERSE_WRONG_IFACE,
        DROP_REVERSE_WRONG_MAC, DROP_SOURCE_BACKEND, DROP_SOURCE_LOOPBACK, DROP_SOURCE_MARTIAN,
        DROP_SOURCE_MULTICAST, DROP_SOURCE_OWN, DROP_SOURCE_UNSPECIFIED, DROP_SOURCE_VIP,
    },
    edge,
    maps::IFACES,
    parse::{load32, load_mac},
};

/// The frame is addressed to `mac` (a bounds-checked Ethernet header; `mac` 2-byte aligned).
#[inline(always)]
fn to_mac(eth: *const EthHdr, mac: &[u8; 6]) -> Result<(), Verdict> {
    // SAFETY: a bounds-checked header; a MAC field of a map value.
    unsafe {
        if load_mac(&(*eth).dst_addr) == load_mac(mac) {
            return Ok(());
        }
        // The I/G bit (IEEE 802 §8.2): broadcast is a multicast address too.
        Err(if (*eth).dst_addr[0] & 1 != 0 {
            DROP_DST_MAC_GROUP
        } else {
            DROP_DST_MAC_OTHER
        })
    }
}

/// Forward path: the frame is addressed to the MAC of the interface it arrived on, whose
/// `iface_info` value is `ingress` (port in the low byte).
#[inline(always)]
pub fn to_ingress(eth: *const EthHdr, ingress: u32) -> Result<(), Verdict> {
    match IFACES.get(ingress & INGRESS_PORT_MASK) {
        Some(iface) => to_mac(eth, &iface.mac),
        None => Err(DROP_DST_MAC_OTHER),
    }
}

/// The checksum of an IPv4 header without options (the caller checked IHL = 5).
#[inline(always)]
pub fn checksum_v4(ip: *const Ipv4Hdr) -> Result<(), Verdict> {
    let w = ip.cast::<[u8; 4]>();
    // SAFETY: a bounds-checked 20-byte header, read as five words (see `parse::load32`).
    let words = unsafe {
        [
            load32(w),
            load32(w.add(1)),
            load32(w.add(2)),
            load32(w.add(3)),
            load32(w.add(4)),
        ]
    };
    if csum::ipv4_header_ok(&words) {
        Ok(())
    } else {
        Err(DROP_IP_CHECKSUM)
    }
}

/// Whether IPv4 address `a` (wire order) may be a host's by its prefix alone: not 0/8, 127/8,
/// 224/4 or 240/4.
#[inline(always)]
fn plausible_v4(a: u32) -> bool {
    let first = u32::from_be(a) >> 24;
    first != 0 && first != 127 && first < 224
}

/// Why an IPv4 address that is not [`plausible_v4`] is no client's.
#[inline(always)]
fn martian_v4(a: u32) -> Verdict {
    let h = u32::from_be(a);
    match h >> 24 {
        0 if h == 0 => DROP_SOURCE_UNSPECIFIED,
        127 => DROP_SOURCE_LOOPBACK,
        f if (0xe0..0xf0).contains(&f) || h == u32::MAX => DROP_SOURCE_MULTICAST,
        _ => DROP_SOURCE_MARTIAN,
    }
}

/// Forward path: the source of a frame to `vip` can be a client (module docs; backends and
/// the gateway's own addresses are `select::forward`'s).
#[inline(always)]
pub fn source_v4(saddr: u32, vip: u32) -> Result<(), Verdict> {
    if !plausible_v4(saddr) {
        return Err(martian_v4(saddr));
    }
    if saddr == vip {
        return Err(DROP_SOURCE_VIP);
    }
    Ok(())
}

/// Reverse path: a backend's packet to `daddr` can be to a client (a VIP as destination took
/// the forward path).
#[inline(always)]
pub fn client_v4(daddr: u32) -> Result<(), Verdict> {
    if plausible_v4(daddr) {
        Ok(())
    } else {
        Err(DROP_REVERSE_NOT_CLIENT)
    }
}

/// Why IPv6 address `a` (wire-order words) is no client's, if it is not one by its prefix:
/// ff00::/8, fe80::/10, ::, ::1, ::ffff:0:0/96.
#[inline(always)]
fn martian_v6(a: &[u32; 4]) -> Option<Verdict> {
    let w0 = u32::from_be(a[0]);
    if w0 >> 24 == 0xff {
        return Some(DROP_SOURCE_MULTICAST);
    }
    if w0 >> 22 == 0xfe80 >> 6 {
        return Some(DROP_SOURCE_MARTIAN);
    }
    if w0 != 0 || a[1] != 0 {
        return None;
    }
    let (w2, w3) = (u32::from_be(a[2]), u32::from_be(a[3]));
    match (w2, w3) {
        (0, 0) => Some(DROP_SOURCE_UNSPECIFIED),
        (0, 1) => Some(DROP_SOURCE_LOOPBACK),
        (0xffff, _) => Some(DROP_SOURCE_MARTIAN),
        _ => None,
    }
}

/// As [`source_v4`] for IPv6.
#[inline(always)]
pub fn source_v6(saddr: &[u32; 4], vip: &[u32; 4]) -> Result<(), Verdict> {
    if let Some(v) = martian_v6(saddr) {
        return Err(v);
    }
    if saddr == vip {
        return Err(DROP_SOURCE_VIP);
    }
    Ok(())
}

/// As [`client_v4`] for IPv6.
#[inline(always)]
pub fn client_v6(daddr: &[u32; 4]) -> Result<(), Verdict> {
    match martian_v6(daddr) {
        Some(_) => Err(DROP_REVERSE_NOT_CLIENT),
        None => Ok(()),
    }
}

/// The verdict for a frame to a VIP whose source `BACKEND_IDS_*` lists as `id`.
#[inline(always)]
pub fn listed_source(id: u32) -> Verdict {
    if id == OWN_ADDRESS_ID {
        DROP_SOURCE_OWN
    } else {
        DROP_SOURCE_BACKEND
    }
}

/// A frame with backend `b`'s source address must come from `b`'s interface, which faces
/// backends, from `b`'s MAC (or its next hop's, `Backend::dmac`), addressed to that
/// interface's MAC (`Backend::smac`): anything else is spoofed, misrouted or not ours.
#[inline(always)]
pub fn from_backend(
    ctx: &XdpContext,
    eth: *const EthHdr,
    b: *const Backend,
) -> Result<(), Verdict> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: a bounds-checked header and a pointer into the BACKENDS map.
    unsafe {
        if ifindex != (*b).ifindex {
            return Err(DROP_REVERSE_WRONG_IFACE);
        }
        if edge::iface_info(ifindex) & INGRESS_F_BACKENDS == 0 {
            return Err(DROP_REVERSE_NOT_BACKEND_IFACE);
        }
        if load_mac(&(*eth).src_addr) != load_mac(&(*b).dmac) {
            return Err(DROP_REVERSE_WRONG_MAC);
        }
        to_mac(eth, &(*b).smac)
    }
}

/// Cuts off whatever follows the IP datagram that ends at frame offset `end` (Ethernet
/// padding, a link-layer trailer) before the frame leaves, as a Linux router does
/// (`ip_rcv_core`, `ipv6_rcv`: `pskb_trim_rcsum`); the egress device pads again what it must.
/// Called last, after every header access: the helper invalidates the packet pointers.
#[inline(always)]
pub fn trim(ctx: &XdpContext, end: usize) -> Result<(), Verdict> {
    let len = ctx.data_end() - ctx.data();
    if len <= end {
        return Ok(());
    }
    // SAFETY: the program's own context; a shrink by less than the frame beyond Ethernet.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, end as i32 - len as i32) } != 0 {
        return Err(DROP_MALFORMED);
    }
    counters::event(event::TRIMMED);
    Ok(())
}
