//! The Ethernet/IPv4 frame builder for the program tests ([`Ipv4Frame`]), and the
//! family-neutral payloads (IKE messages, proofs).
//!
//! What IPv4 shares with IPv6 — UDP, TCP, checksums from scratch, NAT, the wire bytes — is
//! [`IpFrame`] (`crate::frame`); this file lays out the IPv4 header (by `etherparse`, which
//! computes its checksum) and IPv4's fragments. Odd frames (truncated, bad IHL, IP options,
//! VLAN tags) are made by editing the bytes of a good one ([`IpFrame::bytes`]).

use std::net::Ipv4Addr;

use etherparse::{IpFragOffset, IpNumber, Ipv4Header};

use crate::frame::{common_fields, icmp_error_of};
pub use crate::frame::{IpFrame, TcpFlags};

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

impl IpFrame for Ipv4Frame {
    type Addr = Ipv4Addr;

    fn raw(
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

    common_fields!();

    fn is_whole(&self) -> bool {
        self.frag_offset == 0 && !self.more_fragments
    }

    fn ip_header(&self) -> Vec<u8> {
        let mut ip = Ipv4Header::new(
            self.payload.len() as u16,
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
        ip.to_bytes().to_vec()
    }

    fn hops(&self) -> u8 {
        self.ttl
    }

    fn with_hops(self, hops: u8) -> Self {
        self.with_ttl(hops)
    }

    fn split(&self, first_len: usize) -> (Self, Self) {
        self.fragments(first_len)
    }

    fn last_fragment_at(mut self, offset: u16) -> Self {
        self.frag_offset = offset;
        self.more_fragments = false;
        self
    }
}

impl Ipv4Frame {
    /// The same datagram with UDP checksum 0 ("none", RFC 768).
    pub fn without_udp_checksum(self) -> Self {
        self.with_udp_checksum(0)
    }

    pub fn with_ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
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
}

/// Offset of the IPv4 header in a frame built here.
pub const IP_OFFSET: usize = crate::frame::ETH_LEN;

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
    let [hi, lo] = mtu.to_be_bytes();
    let param = [0, 0, hi, lo];
    icmp_error_of(
        eth_src, eth_dst, router, dst, kind, code, param, quoted, quote,
    )
}
