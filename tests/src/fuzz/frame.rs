//! A lenient reader of Ethernet/IPv4/IPv6 frames for the fuzzer: where the headers are, what
//! their length fields say, and the Internet checksum (RFC 1071) computed from scratch. It
//! reads whatever a frame holds without trusting it (mutated frames lie), so every accessor
//! is bounds-checked and a field past the end is `None`.
//!
//! It is independent of the data path's parser (`lb-ebpf/src/parse.rs`, `parse6.rs`): the
//! invariants of `super::check` hold it against the program.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const IP6_LEN: usize = 40;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_AH: u8 = 51;
pub const PROTO_ICMPV6: u8 = 58;
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_DEST_OPTS: u8 = 60;

pub fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(f.get(at..at + 2)?.try_into().ok()?))
}

pub fn put16(f: &mut [u8], at: usize, v: u16) {
    if let Some(b) = f.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

/// The one's-complement sum of `data` (odd length padded with a zero byte), folded.
pub fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let (chunks, rest) = data.as_chunks::<2>();
    for c in chunks {
        acc += u32::from(u16::from_be_bytes(*c));
    }
    if let [last] = rest {
        acc += u32::from(*last) << 8;
    }
    fold(acc)
}

fn fold(mut acc: u32) -> u32 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The checksum field value that makes `data` (with its checksum field zeroed) sum to 0xffff.
pub fn checksum(acc: u32, data: &[u8]) -> u16 {
    !(sum16(acc, data) as u16)
}

/// The network layer a frame claims.
#[derive(Clone, Debug)]
pub enum Ip {
    V4(V4),
    V6(V6),
    /// Another EtherType (ARP, …), or a frame too short for its IP header.
    Other,
}

#[derive(Clone, Debug)]
pub struct V4 {
    /// Header length from the IHL field, in bytes.
    pub ihl: usize,
    pub total_len: usize,
    pub proto: u8,
    pub more: bool,
    /// Fragment offset in 8-byte units.
    pub offset: u16,
    pub ttl: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

#[derive(Clone, Debug)]
pub struct V6 {
    pub payload_len: usize,
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Offset (from the frame start) of the next-header byte that names the upper layer, and
    /// of the upper layer itself; `None` when the extension-header chain runs past the
    /// payload or the frame.
    pub upper: Option<(usize, usize)>,
    /// The Fragment header: its offset in the frame, fragment offset (8-byte units), M flag.
    pub frag: Option<(usize, u16, bool)>,
    /// The chain holds a header that ends past the payload length or the frame.
    pub chain_overrun: bool,
}

/// Where a frame's layers are.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Offset of the IP header (14, or after VLAN tags).
    pub l3: usize,
    pub ip: Ip,
}

impl Layout {
    pub fn of(f: &[u8]) -> Layout {
        let mut l3 = ETH_LEN;
        let mut ether_type = be16(f, 12).unwrap_or(0);
        let mut vlan_tags = 0;
        while matches!(ether_type, ETHERTYPE_VLAN | ETHERTYPE_QINQ) && vlan_tags < 4 {
            ether_type = be16(f, l3 + 2).unwrap_or(0);
            l3 += 4;
            vlan_tags += 1;
        }
        let ip = match ether_type {
            ETHERTYPE_IPV4 => v4(f, l3).map_or(Ip::Other, Ip::V4),
            ETHERTYPE_IPV6 => v6(f, l3).map_or(Ip::Other, Ip::V6),
            _ => Ip::Other,
        };
        Layout { l3, ip }
    }

    /// The transport layer: protocol, offset and end (bounded by the IP length and the
    /// frame), for a whole packet or a first fragment.
    pub fn transport(&self, f: &[u8]) -> Option<Transport> {
        match &self.ip {
            Ip::V4(h) => {
                if h.offset != 0 {
                    return None;
                }
                let start = self.l3 + h.ihl;
                let end = (self.l3 + h.total_len).min(f.len());
                (start <= end).then_some(Transport {
                    proto: h.proto,
                    start,
                    end,
                    whole: !h.more,
                })
            }
            Ip::V6(h) => {
                let (at, start) = h.upper?;
                if matches!(h.frag, Some((_, off, _)) if off != 0) {
                    return None;
                }
                let end = (self.l3 + IP6_LEN + h.payload_len).min(f.len());
                (start <= end).then_some(Transport {
                    proto: f[at],
                    start,
                    end,
                    whole: h.frag.is_none_or(|(_, _, more)| !more),
                })
            }
            Ip::Other => None,
        }
    }

    /// The IP source and destination.
    pub fn addrs(&self) -> Option<(IpAddr, IpAddr)> {
        match &self.ip {
            Ip::V4(h) => Some((h.src.into(), h.dst.into())),
            Ip::V6(h) => Some((h.src.into(), h.dst.into())),
            Ip::Other => None,
        }
    }
}

/// A transport header's place: protocol, offset, end of the datagram's bytes in the frame,
/// and whether the packet is whole (no fragment).
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    pub proto: u8,
    pub start: usize,
    pub end: usize,
    pub whole: bool,
}

fn v4(f: &[u8], l3: usize) -> Option<V4> {
    let h = f.get(l3..l3 + 20)?;
    let frags = u16::from_be_bytes([h[6], h[7]]);
    Some(V4 {
        ihl: usize::from(h[0] & 0x0f) * 4,
        total_len: usize::from(u16::from_be_bytes([h[2], h[3]])),
        proto: h[9],
        more: frags & 0x2000 != 0,
        offset: frags & 0x1fff,
        ttl: h[8],
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
    })
}

fn addr6(b: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"))
}

/// Extension headers a chain walk follows (RFC 8200 §4; AH per RFC 4302 §2.2).
pub fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_FRAGMENT | NEXT_DEST_OPTS | PROTO_AH
    )
}

fn v6(f: &[u8], l3: usize) -> Option<V6> {
    let h = f.get(l3..l3 + IP6_LEN)?;
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let end = (l3 + IP6_LEN + payload_len).min(f.len());
    let mut at = l3 + 6;
    let mut off = l3 + IP6_LEN;
    let mut frag = None;
    let mut upper = None;
    let mut chain_overrun = false;
    for _ in 0..16 {
        let next = f[at];
        if !is_extension(next) {
            upper = Some((at, off));
            break;
        }
        let len = match next {
            NEXT_FRAGMENT => Some(8),
            PROTO_AH => f.get(off + 1).map(|l| (usize::from(*l) + 2) * 4),
            _ => f.get(off + 1).map(|l| (usize::from(*l) + 1) * 8),
        };
        let Some(len) = len.filter(|len| off + len <= end) else {
            chain_overrun = true;
            break;
        };
        if next == NEXT_FRAGMENT {
            let word = be16(f, off + 2)?;
            frag = Some((off, word >> 3, word & 1 != 0));
            if word >> 3 != 0 {
                // A non-first fragment: what follows is fragment data.
                upper = Some((off, off + 8));
                break;
            }
        }
        at = off;
        off += len;
    }
    Some(V6 {
        payload_len,
        hop_limit: h[7],
        src: addr6(&h[8..24]),
        dst: addr6(&h[24..40]),
        upper,
        frag,
        chain_overrun,
    })
}

/// The pseudo-header sum of a transport checksum (RFC 768, RFC 9293 §3.1, RFC 8200 §8.1);
/// ICMP over IPv4 has none.
pub fn pseudo(layout: &Layout, proto: u8, len: usize) -> u32 {
    let mut acc = 0;
    match &layout.ip {
        Ip::V4(h) if proto != PROTO_ICMP => {
            acc = sum16(acc, &h.src.octets());
            acc = sum16(acc, &h.dst.octets());
            acc = sum16(acc, &[0, proto]);
            acc = sum16(acc, &(len as u16).to_be_bytes());
        }
        Ip::V6(h) => {
            acc = sum16(acc, &h.src.octets());
            acc = sum16(acc, &h.dst.octets());
            acc = sum16(acc, &(len as u32).to_be_bytes());
            acc = sum16(acc, &[0, 0, 0, proto]);
        }
        _ => {}
    }
    acc
}

/// Offset of the checksum field within a transport header of `proto`.
pub fn checksum_field(proto: u8) -> Option<usize> {
    match proto {
        PROTO_UDP => Some(6),
        PROTO_TCP => Some(16),
        PROTO_ICMP | PROTO_ICMPV6 => Some(2),
        _ => None,
    }
}

/// Whether a whole packet's UDP, TCP, ICMP or ICMPv6 checksum is right, computed over the
/// transport bytes the IP length covers. A zero UDP checksum is valid over IPv4 ("none",
/// RFC 768) and invalid over IPv6 (RFC 8200 §8.1). `None`: a fragment, another protocol, or
/// no transport header to check.
pub fn l4_checksum_ok(f: &[u8], layout: &Layout) -> Option<bool> {
    let t = layout.transport(f)?;
    if !t.whole {
        return None;
    }
    let field = checksum_field(t.proto)?;
    if t.proto == PROTO_ICMP && !matches!(layout.ip, Ip::V4(_)) {
        return None;
    }
    let l4 = &f[t.start..t.end];
    let c = be16(l4, field)?;
    if t.proto == PROTO_UDP && c == 0 {
        return Some(matches!(layout.ip, Ip::V4(_)));
    }
    Some(sum16(pseudo(layout, t.proto, l4.len()), l4) == 0xffff)
}

/// Recomputes the transport checksum of a whole packet from scratch (a no-op where
/// [`l4_checksum_ok`] has nothing to check). A zero UDP checksum over IPv4 stays zero.
pub fn fix_l4_checksum(f: &mut [u8]) {
    let layout = Layout::of(f);
    let Some(t) = layout.transport(f) else { return };
    let Some(field) = checksum_field(t.proto) else {
        return;
    };
    if !t.whole || t.start + field + 2 > t.end {
        return;
    }
    if t.proto == PROTO_ICMP && !matches!(layout.ip, Ip::V4(_)) {
        return;
    }
    let at = t.start + field;
    if t.proto == PROTO_UDP && be16(f, at) == Some(0) && matches!(layout.ip, Ip::V4(_)) {
        return;
    }
    put16(f, at, 0);
    let mut c = checksum(
        pseudo(&layout, t.proto, t.end - t.start),
        &f[t.start..t.end],
    );
    if t.proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    put16(f, at, c);
}

/// Whether the IPv4 header (IHL words) sums to 0xffff.
pub fn ipv4_checksum_ok(f: &[u8], l3: usize, ihl: usize) -> bool {
    f.get(l3..l3 + ihl).is_some_and(|h| sum16(0, h) == 0xffff)
}

/// Recomputes the IPv4 header checksum (over the IHL words, as far as the frame holds them).
pub fn fix_ipv4_checksum(f: &mut [u8]) {
    let layout = Layout::of(f);
    let Ip::V4(h) = &layout.ip else { return };
    let end = (layout.l3 + h.ihl.max(20)).min(f.len());
    put16(f, layout.l3 + 10, 0);
    let c = checksum(0, &f[layout.l3..end]);
    put16(f, layout.l3 + 10, c);
}

pub fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}
