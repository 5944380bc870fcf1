//! What the frame builders of [`crate::packet`] (IPv4) and [`crate::packet6`] (IPv6) share:
//! UDP and TCP with checksums from scratch, a correct NAT ([`IpFrame::readdressed`]), the
//! Ethernet framing, and ICMP errors quoting a frame. A family's frame type only lays out its
//! own IP header (IPv4's flags and fragment offset, IPv6's extension headers) and says
//! whether it is a whole packet; everything else is written once, here, over [`Family`].
//!
//! Transport checksums are `etherparse`'s, computed over the pseudo-header of the frame's
//! addresses: a frame the XDP program rewrote incrementally must equal, byte for byte, the
//! frame built here with the rewritten fields.

use etherparse::{TcpHeader, UdpHeader};

use crate::family::Family;
use crate::packet::{Mac, PROTO_TCP, PROTO_UDP};

/// Offset of the IP header in a frame built here (untagged Ethernet II).
pub const ETH_LEN: usize = 14;

/// The identification of IPv6 fragments made by [`IpFrame::split`] and
/// [`IpFrame::last_fragment_at`].
pub const FRAGMENT_ID: u32 = 0x5eed;

/// TCP flags of [`IpFrame::tcp_segment`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub psh: bool,
    pub rst: bool,
}

impl TcpFlags {
    /// A connection's first segment.
    pub const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        psh: false,
        rst: false,
    };
    /// A pure acknowledgment (40 bytes of IPv4: a frame Ethernet pads to 60).
    pub const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        psh: false,
        rst: false,
    };
    /// Data: PSH|ACK.
    pub const DATA: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        psh: true,
        rst: false,
    };
}

/// An Ethernet II frame carrying one IP packet (or fragment) of family `Self::Addr`.
pub trait IpFrame: Clone {
    type Addr: Family;

    /// A frame with protocol `proto` and an opaque payload (after the IP header and, for
    /// IPv6, its extension headers), the family's default header fields.
    fn raw(
        eth_src: Mac,
        eth_dst: Mac,
        src: Self::Addr,
        dst: Self::Addr,
        proto: u8,
        payload: &[u8],
    ) -> Self;
    fn macs_mut(&mut self) -> (&mut Mac, &mut Mac);
    fn macs(&self) -> (Mac, Mac);
    /// Source and destination address.
    fn addrs(&self) -> (Self::Addr, Self::Addr);
    fn set_addrs(&mut self, src: Self::Addr, dst: Self::Addr);
    /// The upper-layer protocol.
    fn proto(&self) -> u8;
    fn payload(&self) -> &[u8];
    fn payload_mut(&mut self) -> &mut Vec<u8>;
    /// Not a fragment: only a whole packet's transport checksum can be computed.
    fn is_whole(&self) -> bool;
    /// The IP header (IPv6: with its extension headers) in front of the current payload.
    fn ip_header(&self) -> Vec<u8>;
    /// The TTL (IPv4) or hop limit (IPv6).
    fn hops(&self) -> u8;
    fn with_hops(self, hops: u8) -> Self;
    /// The (whole) packet as two fragments: the first carries the first `first_len` bytes (a
    /// multiple of 8) of what follows the IP header, the second the rest. IPv4 keeps the
    /// header's identification; IPv6 puts a Fragment header with id [`FRAGMENT_ID`] last.
    fn split(&self, first_len: usize) -> (Self, Self);
    /// The packet as the last fragment of a larger one, its payload at `offset` (8-byte
    /// units); IPv6: behind a Fragment header with id [`FRAGMENT_ID`].
    fn last_fragment_at(self, offset: u16) -> Self;

    /// A UDP datagram with its checksum computed from scratch.
    fn udp(
        eth_src: Mac,
        eth_dst: Mac,
        (src, sport): (Self::Addr, u16),
        (dst, dport): (Self::Addr, u16),
        data: &[u8],
    ) -> Self {
        let len = u16::try_from(8 + data.len()).expect("UDP datagram fits");
        let udp = UdpHeader {
            source_port: sport,
            destination_port: dport,
            length: len,
            checksum: 0,
        };
        let payload = [&udp.to_bytes()[..], data].concat();
        let mut f = Self::raw(eth_src, eth_dst, src, dst, PROTO_UDP, &payload);
        let c = Self::Addr::transport_checksum(src, dst, PROTO_UDP, f.payload()).expect("UDP");
        f.payload_mut()[6..8].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// A TCP segment (SYN when `data` is empty, else PSH|ACK) without options, with its
    /// checksum computed from scratch.
    fn tcp(
        eth_src: Mac,
        eth_dst: Mac,
        from: (Self::Addr, u16),
        to: (Self::Addr, u16),
        data: &[u8],
    ) -> Self {
        let (ack, flags) = if data.is_empty() {
            (0, TcpFlags::SYN)
        } else {
            (0x2000_0000, TcpFlags::DATA)
        };
        Self::tcp_segment(eth_src, eth_dst, from, to, 0x1000_0000, ack, flags, data)
    }

    /// A TCP segment with the given sequence and acknowledgment numbers and flags, its
    /// checksum computed from scratch.
    #[allow(clippy::too_many_arguments)]
    fn tcp_segment(
        eth_src: Mac,
        eth_dst: Mac,
        (src, sport): (Self::Addr, u16),
        (dst, dport): (Self::Addr, u16),
        seq: u32,
        ack: u32,
        flags: TcpFlags,
        data: &[u8],
    ) -> Self {
        let mut tcp = TcpHeader::new(sport, dport, seq, 64_240);
        tcp.syn = flags.syn;
        tcp.ack = flags.ack;
        tcp.psh = flags.psh;
        tcp.rst = flags.rst;
        tcp.acknowledgment_number = ack;
        let payload = [&tcp.to_bytes()[..], data].concat();
        let mut f = Self::raw(eth_src, eth_dst, src, dst, PROTO_TCP, &payload);
        f.fix_transport_checksum();
        f
    }

    /// The UDP checksum field set to `c` (0: "none" over IPv4, RFC 768; forbidden over
    /// IPv6, RFC 8200 §8.1).
    fn with_udp_checksum(mut self, c: u16) -> Self {
        assert_eq!(self.proto(), PROTO_UDP);
        self.payload_mut()[6..8].copy_from_slice(&c.to_be_bytes());
        self
    }

    fn with_macs(mut self, eth_src: Mac, eth_dst: Mac) -> Self {
        let (s, d) = self.macs_mut();
        (*s, *d) = (eth_src, eth_dst);
        self
    }

    /// Recomputes the UDP or TCP checksum from scratch (whole packets only; a zero UDP
    /// checksum stays zero).
    fn fix_transport_checksum(&mut self) {
        let (src, dst) = self.addrs();
        let proto = self.proto();
        if !self.is_whole() || (proto == PROTO_UDP && self.payload()[6..8] == [0, 0]) {
            return;
        }
        let Some(c) = Self::Addr::transport_checksum(src, dst, proto, self.payload()) else {
            return;
        };
        let at = if proto == PROTO_UDP { 6 } else { 16 };
        self.payload_mut()[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// The packet with new addresses and its transport checksum recomputed from scratch —
    /// what a correct NAT produces (UDP and TCP; other payloads and fragments are copied
    /// unchanged).
    fn readdressed(&self, src: Self::Addr, dst: Self::Addr) -> Self {
        let mut f = self.clone();
        f.set_addrs(src, dst);
        f.fix_transport_checksum();
        f
    }

    /// The frame on the wire.
    fn bytes(&self) -> Vec<u8> {
        let (src, dst) = self.macs();
        let ip = self.ip_header();
        let mut out = Vec::with_capacity(ETH_LEN + ip.len() + self.payload().len());
        out.extend_from_slice(&dst);
        out.extend_from_slice(&src);
        out.extend_from_slice(&Self::Addr::ETHER_TYPE.to_be_bytes());
        out.extend(ip);
        out.extend_from_slice(self.payload());
        out
    }

    /// The IP packet without the Ethernet header.
    fn ip_bytes(&self) -> Vec<u8> {
        self.bytes()[ETH_LEN..].to_vec()
    }
}

/// The accessors of [`IpFrame`] over the fields both frame types name alike — `eth_src`,
/// `eth_dst`, `src`, `dst`, `proto`, `payload` — written once for the two `impl IpFrame`s
/// (the fields themselves stay on each frame type, where tests set them by name).
macro_rules! common_fields {
    () => {
        fn macs_mut(&mut self) -> (&mut $crate::packet::Mac, &mut $crate::packet::Mac) {
            (&mut self.eth_src, &mut self.eth_dst)
        }

        fn macs(&self) -> ($crate::packet::Mac, $crate::packet::Mac) {
            (self.eth_src, self.eth_dst)
        }

        fn addrs(&self) -> (Self::Addr, Self::Addr) {
            (self.src, self.dst)
        }

        fn set_addrs(&mut self, src: Self::Addr, dst: Self::Addr) {
            (self.src, self.dst) = (src, dst);
        }

        fn proto(&self) -> u8 {
            self.proto
        }

        fn payload(&self) -> &[u8] {
            &self.payload
        }

        fn payload_mut(&mut self) -> &mut Vec<u8> {
            &mut self.payload
        }
    };
}
pub(crate) use common_fields;

/// An ICMP error of `quoted`'s family (RFC 792, RFC 4443) from `src` to `dst`: type `kind`,
/// `code`, the 4-byte field `param` (IPv4 frag-needed: unused + next-hop MTU, RFC 1191;
/// ICMPv6 Packet Too Big: the MTU), then `quoted`'s fixed IP header and the first `quote`
/// bytes after it; checksum from scratch.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error_of<F: IpFrame>(
    eth_src: Mac,
    eth_dst: Mac,
    src: F::Addr,
    dst: F::Addr,
    kind: u8,
    code: u8,
    param: [u8; 4],
    quoted: &F,
    quote: usize,
) -> F {
    let inner = quoted.ip_bytes();
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&param);
    icmp.extend_from_slice(&inner[..(F::Addr::IP_HEADER_LEN + quote).min(inner.len())]);
    let c = F::Addr::icmp_checksum(src, dst, &icmp);
    icmp[2..4].copy_from_slice(&c);
    F::raw(eth_src, eth_dst, src, dst, F::Addr::PROTO_ICMP, &icmp)
}

/// The "too big" ICMP error of `quoted`'s family ([`Family::ICMP_TOO_BIG`]) from `src` to
/// `dst` announcing `mtu`, quoting `quoted`'s fixed IP header and the first `quote` bytes
/// after it: IPv4's frag-needed carries the next-hop MTU in the low 16 bits of its 4-byte
/// field (RFC 1191), ICMPv6's packet too big the MTU in all 32 — the same bytes for an MTU
/// below 65,536.
#[allow(clippy::too_many_arguments)]
pub fn too_big_of<F: IpFrame>(
    eth_src: Mac,
    eth_dst: Mac,
    src: F::Addr,
    dst: F::Addr,
    quoted: &F,
    quote: usize,
    mtu: u16,
) -> F {
    let (kind, code) = F::Addr::ICMP_TOO_BIG;
    let param = u32::from(mtu).to_be_bytes();
    icmp_error_of(eth_src, eth_dst, src, dst, kind, code, param, quoted, quote)
}

/// An ICMP echo request (id 1, sequence 1, no data) of `F`'s family, checksum from scratch.
pub fn echo_request_of<F: IpFrame>(eth_src: Mac, eth_dst: Mac, src: F::Addr, dst: F::Addr) -> F {
    let mut icmp = vec![F::Addr::ICMP_ECHO.0, 0, 0, 0, 0, 1, 0, 1];
    let c = F::Addr::icmp_checksum(src, dst, &icmp);
    icmp[2..4].copy_from_slice(&c);
    F::raw(eth_src, eth_dst, src, dst, F::Addr::PROTO_ICMP, &icmp)
}

/// An ESP packet body (SPI, sequence number, opaque data): what ikelb forwards unparsed.
pub fn esp_body(spi: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut b = spi.to_be_bytes().to_vec();
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend((0..len).map(|i| (i * 13 + 5) as u8));
    b
}
