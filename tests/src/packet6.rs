//! The Ethernet/IPv6 frame builder for the program tests ([`Ipv6Frame`]), with extension
//! headers and fragments.
//!
//! What IPv6 shares with IPv4 — UDP, TCP, transport checksums from scratch over the
//! pseudo-header of the final addresses (RFC 8200 §8.1), NAT, the wire bytes — is
//! [`IpFrame`] (`crate::frame`); this file lays out the IPv6 header and its extension headers
//! by hand (a next-header byte, a length in 8-octet units beyond the first 8, and a body;
//! RFC 8200 §4).

use std::net::Ipv6Addr;

use crate::family::Family;
pub use crate::family::PROTO_ICMPV6;
use crate::frame::{common_fields, icmp_error_of, FRAGMENT_ID};
pub use crate::frame::{esp_body, IpFrame};
use crate::packet::Mac;
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_AUTH: u8 = 51;
pub const NEXT_NONE: u8 = 59;
pub const NEXT_DEST_OPTS: u8 = 60;

/// Offset of the IPv6 header in a frame built here.
pub const IP6_OFFSET: usize = 14;
/// Length of the fixed IPv6 header.
pub const IP6_LEN: usize = 40;

/// An extension header in front of the transport header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-Hop Options holding one PadN option with `pad` bytes of padding: the header is
    /// 4 + `pad` bytes, so `pad` is 4, 12, 20, ….
    HopByHop { pad: usize },
    /// Destination Options, as `HopByHop`.
    DestOpts { pad: usize },
    /// A Routing header of type 4 (segment routing, RFC 8754) with one segment, as far as
    /// its length and `segments_left` go.
    Routing { segments_left: u8 },
    /// A Fragment header (RFC 8200 §4.5): `offset` in 8-octet units.
    Fragment { offset: u16, more: bool, id: u32 },
    /// Any other header type, with an 8-byte body layout (`len` 0).
    Raw { kind: u8 },
}

impl Ext {
    fn kind(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => NEXT_HOP_BY_HOP,
            Ext::DestOpts { .. } => NEXT_DEST_OPTS,
            Ext::Routing { .. } => NEXT_ROUTING,
            Ext::Fragment { .. } => NEXT_FRAGMENT,
            Ext::Raw { kind } => *kind,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop { pad } | Ext::DestOpts { pad } => {
                let total = 2 + 2 + pad;
                assert!(total.is_multiple_of(8), "options header of {total} bytes");
                // PadN option (RFC 8200 §4.2): type 1, length, zeros.
                let mut b = vec![next, (total / 8 - 1) as u8, 1, *pad as u8];
                b.resize(total, 0);
                b
            }
            Ext::Routing { segments_left } => {
                // Type 4 with one 16-byte segment: 8 + 16 bytes, length 2.
                let mut b = vec![next, 2, 4, *segments_left, 0, 0, 0, 0];
                b.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0xaaaa, 0, 0, 0, 0, 1).octets());
                b
            }
            Ext::Fragment { offset, more, id } => {
                let word = (offset << 3) | u16::from(*more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&word.to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
            Ext::Raw { .. } => {
                let mut b = vec![next, 0];
                b.resize(8, 0);
                b
            }
        }
    }
}

/// An Ethernet II frame carrying one IPv6 packet (or fragment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Frame {
    pub eth_src: Mac,
    pub eth_dst: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// Extension headers, in order, before the transport header.
    pub ext: Vec<Ext>,
    /// The upper-layer protocol (what the last extension header, or the IPv6 header, names).
    pub proto: u8,
    /// Everything after the extension headers.
    pub payload: Vec<u8>,
}

impl IpFrame for Ipv6Frame {
    type Addr = Ipv6Addr;

    fn raw(
        eth_src: Mac,
        eth_dst: Mac,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        payload: &[u8],
    ) -> Self {
        Self {
            eth_src,
            eth_dst,
            src,
            dst,
            hop_limit: 64,
            ext: Vec::new(),
            proto,
            payload: payload.to_vec(),
        }
    }

    common_fields!();

    fn is_whole(&self) -> bool {
        !self
            .ext
            .iter()
            .any(|e| matches!(e, Ext::Fragment { offset, more, .. } if *offset != 0 || *more))
    }

    /// The fixed header and the extension headers.
    fn ip_header(&self) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, Ext::kind);
            chain.extend(e.bytes(next));
        }
        let first = self.ext.first().map_or(self.proto, Ext::kind);
        let payload_len = (chain.len() + self.payload.len()) as u16;
        let mut out = Vec::with_capacity(IP6_LEN + chain.len());
        // Version 6, traffic class 0, a flow label (RFC 6437) the program must leave alone.
        out.extend_from_slice(&[0x60, 0x0a, 0xbc, 0xde]);
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.push(first);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.extend(chain);
        out
    }

    fn hops(&self) -> u8 {
        self.hop_limit
    }

    fn with_hops(self, hops: u8) -> Self {
        self.with_hop_limit(hops)
    }

    fn split(&self, first_len: usize) -> (Self, Self) {
        self.fragments(first_len, FRAGMENT_ID)
    }

    fn last_fragment_at(self, offset: u16) -> Self {
        self.with_ext(Ext::Fragment {
            offset,
            more: false,
            id: FRAGMENT_ID,
        })
    }
}

impl Ipv6Frame {
    pub fn with_hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    /// The packet with `ext` inserted in front of the transport header (after those it has).
    pub fn with_ext(mut self, ext: Ext) -> Self {
        self.ext.push(ext);
        self
    }

    /// Splits the (whole) packet's payload into two fragments behind a Fragment header: the
    /// first carries `first_len` bytes (a multiple of 8), the second the rest.
    pub fn fragments(&self, first_len: usize, id: u32) -> (Self, Self) {
        assert!(first_len.is_multiple_of(8) && first_len < self.payload.len());
        let first = Self {
            payload: self.payload[..first_len].to_vec(),
            ..self.clone()
        }
        .with_ext(Ext::Fragment {
            offset: 0,
            more: true,
            id,
        });
        let second = Self {
            payload: self.payload[first_len..].to_vec(),
            ..self.clone()
        }
        .with_ext(Ext::Fragment {
            offset: (first_len / 8) as u16,
            more: false,
            id,
        });
        (first, second)
    }
}

/// An ICMPv6 neighbour solicitation for `target` (RFC 4861 §4.3), to its solicited-node
/// multicast address, with its checksum. The program must pass it untouched.
pub fn neighbour_solicitation(eth_src: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let dst = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    // Source link-layer address option.
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&eth_src);
    let c = Ipv6Addr::icmp_checksum(src, dst, &icmp);
    icmp[2..4].copy_from_slice(&c);
    let d = dst.octets();
    let mac = [0x33, 0x33, d[12], d[13], d[14], d[15]];
    let mut f = Ipv6Frame::raw(eth_src, mac, src, dst, PROTO_ICMPV6, &icmp);
    f.hop_limit = 255;
    f.bytes()
}

/// An ICMPv6 message of `kind`/`code` (RFC 4443) from `src` to `dst` whose 4-byte parameter
/// is `param` (the MTU of a Packet Too Big) and whose body quotes `quoted` (its IPv6 header
/// and the first `quote` bytes after it), checksum over the pseudo-header from scratch.
#[allow(clippy::too_many_arguments)]
pub fn icmpv6_error(
    eth_src: Mac,
    eth_dst: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    param: u32,
    quoted: &Ipv6Frame,
    quote: usize,
) -> Ipv6Frame {
    let param = param.to_be_bytes();
    icmp_error_of(eth_src, eth_dst, src, dst, kind, code, param, quoted, quote)
}
