//! A tiny Ethernet/IPv4 frame builder for the program tests.
//!
//! Headers are serialised by `etherparse`, which computes the IPv4 header checksum and the UDP
//! checksum from scratch: a frame the XDP program rewrote incrementally must equal, byte for
//! byte, the frame built here with the rewritten fields. Odd frames (truncated, bad IHL, IP
//! options, VLAN tags) are made by editing the bytes of a good one ([`Ipv4Frame::bytes`]).

use std::net::Ipv4Addr;

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, TcpHeader, UdpHeader,
};

pub type Mac = [u8; 6];

/// IP protocol numbers used by the tests.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ESP: u8 = 50;

/// An Ethernet II frame carrying one IPv4 packet (or fragment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Frame {
    pub eth_src: Mac,
    pub eth_dst: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in units of 8 bytes (RFC 791).
    pub frag_offset: u16,
    pub proto: u8,
    /// Everything after the IPv4 header.
    pub payload: Vec<u8>,
}

impl Ipv4Frame {
    /// A frame with protocol `proto` and an opaque payload.
    pub fn raw(
        eth_src: Mac,
        eth_dst: Mac,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        payload: &[u8],
    ) -> Self {
        Self {
            eth_src,
            eth_dst,
            src,
            dst,
            ttl: 64,
            id: 0x1234,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            proto,
            payload: payload.to_vec(),
        }
    }

    /// A UDP datagram with its checksum computed from scratch.
    pub fn udp(
        eth_src: Mac,
        eth_dst: Mac,
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
        data: &[u8],
    ) -> Self {
        let mut f = Self::raw(eth_src, eth_dst, src, dst, PROTO_UDP, &[]);
        let udp = UdpHeader::with_ipv4_checksum(sport, dport, &f.ip_header(data.len() + 8), data)
            .expect("UDP datagram fits");
        f.payload = [&udp.to_bytes()[..], data].concat();
        f
    }

    /// A TCP segment (SYN when `data` is empty, else PSH|ACK) with its checksum computed
    /// from scratch.
    pub fn tcp(
        eth_src: Mac,
        eth_dst: Mac,
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
        data: &[u8],
    ) -> Self {
        let mut f = Self::raw(eth_src, eth_dst, src, dst, PROTO_TCP, &[]);
        let tcp = crate::packet6::tcp_header(sport, dport, data.is_empty());
        f.payload = [&tcp.to_bytes()[..], data].concat();
        f.readdressed(src, dst)
    }

    /// The same datagram with UDP checksum 0 ("none", RFC 768).
    pub fn without_udp_checksum(mut self) -> Self {
        assert_eq!(self.proto, PROTO_UDP);
        self.payload[6] = 0;
        self.payload[7] = 0;
        self
    }

    pub fn with_ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn with_macs(mut self, eth_src: Mac, eth_dst: Mac) -> Self {
        self.eth_src = eth_src;
        self.eth_dst = eth_dst;
        self
    }

    /// The datagram with new addresses and every checksum recomputed from scratch — what a
    /// correct NAT produces. (UDP and TCP; other payloads are copied unchanged.)
    pub fn readdressed(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        let mut f = Self {
            src,
            dst,
            ..self.clone()
        };
        if f.proto == PROTO_TCP && f.frag_offset == 0 && !f.more_fragments {
            let (tcp, data) = TcpHeader::from_slice(&self.payload).expect("a TCP header");
            let c = tcp
                .calc_checksum_ipv4(&f.ip_header(self.payload.len()), data)
                .expect("TCP segment fits");
            f.payload[16..18].copy_from_slice(&c.to_be_bytes());
        }
        if f.proto == PROTO_UDP && f.frag_offset == 0 && !f.more_fragments {
            let (udp, data) = UdpHeader::from_slice(&self.payload).expect("a UDP header");
            if udp.checksum != 0 {
                let udp = UdpHeader::with_ipv4_checksum(
                    udp.source_port,
                    udp.destination_port,
                    &f.ip_header(self.payload.len()),
                    data,
                )
                .expect("UDP datagram fits");
                f.payload[..8].copy_from_slice(&udp.to_bytes());
            }
        }
        f
    }

    /// Splits the (whole) datagram into two fragments: the first carries the first
    /// `first_len` bytes of the IP payload (a multiple of 8), the second the rest.
    pub fn fragments(&self, first_len: usize) -> (Self, Self) {
        assert!(first_len.is_multiple_of(8) && first_len < self.payload.len());
        let first = Self {
            more_fragments: true,
            dont_fragment: false,
            payload: self.payload[..first_len].to_vec(),
            ..self.clone()
        };
        let second = Self {
            more_fragments: false,
            dont_fragment: false,
            frag_offset: (first_len / 8) as u16,
            payload: self.payload[first_len..].to_vec(),
            ..self.clone()
        };
        (first, second)
    }

    fn ip_header(&self, payload_len: usize) -> Ipv4Header {
        let mut ip = Ipv4Header::new(
            payload_len as u16,
            self.ttl,
            IpNumber(self.proto),
            self.src.octets(),
            self.dst.octets(),
        )
        .expect("IPv4 payload fits");
        ip.identification = self.id;
        ip.dont_fragment = self.dont_fragment;
        ip.more_fragments = self.more_fragments;
        ip.fragment_offset = IpFragOffset::try_new(self.frag_offset).expect("13-bit offset");
        ip.header_checksum = ip.calc_header_checksum();
        ip
    }

    /// The frame on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        let eth = Ethernet2Header {
            source: self.eth_src,
            destination: self.eth_dst,
            ether_type: EtherType::IPV4,
        };
        let mut out = Vec::with_capacity(14 + 20 + self.payload.len());
        out.extend_from_slice(&eth.to_bytes());
        out.extend_from_slice(&self.ip_header(self.payload.len()).to_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Offset of the IPv4 header in a frame built here.
pub const IP_OFFSET: usize = 14;

/// Recomputes the IPv4 header checksum of a frame edited by hand (`ihl` words of header).
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[IP_OFFSET] & 0x0f) * 4;
    frame[IP_OFFSET + 10] = 0;
    frame[IP_OFFSET + 11] = 0;
    let c = lb_common::csum::checksum(&frame[IP_OFFSET..IP_OFFSET + ihl]);
    frame[IP_OFFSET + 10..IP_OFFSET + 12].copy_from_slice(&c.to_ne_bytes());
}

/// Inserts `tag` (TPID + TCI) after the MAC addresses: an 802.1Q / 802.1ad tagged frame.
pub fn vlan_tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// The frame with one 4-byte IPv4 option (NOP ×3 + EOL; RFC 791 §3.1) added: IHL 6.
pub fn with_ip_option(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..IP_OFFSET + 20].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&frame[IP_OFFSET + 20..]);
    out[IP_OFFSET] = 0x46;
    let total = u16::from_be_bytes([out[IP_OFFSET + 2], out[IP_OFFSET + 3]]) + 4;
    out[IP_OFFSET + 2..IP_OFFSET + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// An ARP request frame (who-has `target` tell `sender`).
pub fn arp_request(eth_src: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend_from_slice(&eth_src);
    out.extend_from_slice(&0x0806u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&eth_src);
    out.extend_from_slice(&sender.octets());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target.octets());
    out
}

/// A minimal IPv6/UDP frame between two documentation addresses (no VIP of the tests).
pub fn ipv6_udp(eth_src: Mac, eth_dst: Mac) -> Vec<u8> {
    let mut out = eth_dst.to_vec();
    out.extend_from_slice(&eth_src);
    out.extend_from_slice(&0x86ddu16.to_be_bytes());
    out.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, PROTO_UDP, 64]);
    out.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    out.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    out.extend_from_slice(&[0x01, 0xf4, 0x01, 0xf4, 0, 8, 0, 0]);
    out
}

/// An IKE message (RFC 7296 §3.1): the 28-byte header — initiator SPI, responder SPI (0 in
/// IKE_SA_INIT's request), next payload SA, version 2.0, `exchange` (34 IKE_SA_INIT, 35
/// IKE_AUTH, 37 INFORMATIONAL), flags `flags` (0x08 initiator, 0x20 response), message id
/// and the total length — then `body_len` opaque bytes.
pub fn ike_message(spi_i: u64, spi_r: u64, exchange: u8, flags: u8, body_len: usize) -> Vec<u8> {
    let mut b = spi_i.to_be_bytes().to_vec();
    b.extend_from_slice(&spi_r.to_be_bytes());
    b.extend_from_slice(&[33, 0x20, exchange, flags]);
    b.extend_from_slice(&u32::from(exchange != 34).to_be_bytes());
    b.extend_from_slice(&((28 + body_len) as u32).to_be_bytes());
    b.extend((0..body_len).map(|i| (i * 11 + 1) as u8));
    b
}

/// An IKE message behind the non-ESP marker (four zero bytes, RFC 3948 §2.2): what UDP 4500
/// carries once NAT was detected.
pub fn non_esp(ike: &[u8]) -> Vec<u8> {
    [&[0u8; 4][..], ike].concat()
}

/// The proof a probation entry records for IKE responder SPI `spi_r` (header bytes 8..16
/// loaded in native order: `lb_common::ProbationValue::proof`).
pub fn ike_proof(spi_r: u64) -> u64 {
    u64::from_ne_bytes(spi_r.to_be_bytes())
}

/// The proof recorded for a TCP SYN-ACK with sequence number `seq`: `seq + 1` in wire order,
/// loaded native as a u32.
pub fn tcp_proof(seq: u32) -> u64 {
    u64::from(u32::from_ne_bytes(seq.wrapping_add(1).to_be_bytes()))
}

/// TCP flags of [`Ipv4Frame::tcp_segment`].
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
}

impl Ipv4Frame {
    /// A TCP segment with the given sequence and acknowledgment numbers and flags, its
    /// checksum computed from scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp_segment(
        eth_src: Mac,
        eth_dst: Mac,
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
        seq: u32,
        ack: u32,
        flags: TcpFlags,
        data: &[u8],
    ) -> Self {
        let mut f = Self::raw(eth_src, eth_dst, src, dst, PROTO_TCP, &[]);
        let mut tcp = TcpHeader::new(sport, dport, seq, 64_240);
        tcp.syn = flags.syn;
        tcp.ack = flags.ack;
        tcp.psh = flags.psh;
        tcp.rst = flags.rst;
        tcp.acknowledgment_number = ack;
        f.payload = [&tcp.to_bytes()[..], data].concat();
        f.readdressed(src, dst)
    }

    /// The IPv4 header and IP payload (no Ethernet header).
    pub fn ip_bytes(&self) -> Vec<u8> {
        self.bytes()[IP_OFFSET..].to_vec()
    }
}

/// An ICMP destination unreachable / fragmentation needed (type 3 code 4, RFC 1191) from
/// `router` to `dst` about `quoted`: its IPv4 header and the first `quote` bytes of its IP
/// payload, with next-hop MTU `mtu` and the ICMP checksum computed from scratch.
pub fn icmp_frag_needed(
    eth_src: Mac,
    eth_dst: Mac,
    router: Ipv4Addr,
    dst: Ipv4Addr,
    quoted: &Ipv4Frame,
    quote: usize,
    mtu: u16,
) -> Ipv4Frame {
    icmp_error(eth_src, eth_dst, router, dst, 3, 4, quoted, quote, mtu)
}

/// As [`icmp_frag_needed`] with any type and code.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error(
    eth_src: Mac,
    eth_dst: Mac,
    router: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    code: u8,
    quoted: &Ipv4Frame,
    quote: usize,
    mtu: u16,
) -> Ipv4Frame {
    let inner = quoted.ip_bytes();
    let mut icmp = vec![kind, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&inner[..(20 + quote).min(inner.len())]);
    let c = lb_common::csum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    Ipv4Frame::raw(eth_src, eth_dst, router, dst, PROTO_ICMP, &icmp)
}
