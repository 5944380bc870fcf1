//! The IP layer of the tests, once for both address families.
//!
//! [`Family`] is implemented by `Ipv4Addr` and `Ipv6Addr` themselves, so a frame builder or
//! a traffic driver that takes an address knows its family without being told (as the data
//! path has one `Family` for its headers, keys and maps, `lb-ebpf/src/family.rs`). It holds
//! only what really differs between IPv4 and IPv6: the transport pseudo-header (RFC 768,
//! RFC 8200 §8.1), ICMP's checksum and types (ICMPv6 covers a pseudo-header, RFC 4443 §2.3),
//! and the sockets (an IPv4 raw socket returns the IP header, an IPv6 one does not, RFC 3542
//! §3). The frame builders on top are [`crate::frame::IpFrame`], the drivers
//! `crate::lab::UdpProbe` and `crate::lab::EspProbe`.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Instant;

use anyhow::{Context, Result};
use etherparse::{TcpHeader, UdpHeader};

use crate::lab::raw::RawSocket;
use crate::lab::sock::{self, RawSocket6};
use crate::packet::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// ICMPv6's next-header value (RFC 4443).
pub const PROTO_ICMPV6: u8 = 58;

/// One address family, implemented by its address type.
pub trait Family:
    Copy + Eq + Ord + Hash + Debug + Display + Send + Sync + Into<IpAddr> + 'static
{
    /// The socket address of this family (`SocketAddrV4`, `SocketAddrV6`).
    type Sock: FamilySock<Ip = Self>;
    /// A raw socket of this family.
    type Raw: RawIp<Self>;
    /// `IPv4`, `IPv6`: for messages.
    const NAME: &'static str;
    /// The Ethernet type of its packets.
    const ETHER_TYPE: u16;
    /// Length of its fixed IP header (an IPv4 header without options).
    const IP_HEADER_LEN: usize;
    /// Its ICMP's protocol number.
    const PROTO_ICMP: u8;
    /// Its ICMP's "too big" error, (type, code): destination unreachable / fragmentation
    /// needed over IPv4 (RFC 1191), packet too big over IPv6 (RFC 4443 §3.2).
    const ICMP_TOO_BIG: (u8, u8);
    /// Its ICMP's echo request and echo reply types (RFC 792, RFC 4443 §4).
    const ICMP_ECHO: (u8, u8);

    fn sock(self, port: u16) -> Self::Sock;
    /// `addr` if it is of this family.
    fn of_sock(addr: SocketAddr) -> Option<Self::Sock>;
    /// The transport pseudo-header for `len` bytes of protocol `proto` (RFC 768 for IPv4,
    /// RFC 8200 §8.1 for IPv6).
    fn pseudo_header(src: Self, dst: Self, proto: u8, len: usize) -> Vec<u8>;
    /// The UDP or TCP checksum of `segment` (header and data, whatever its checksum field
    /// holds) from scratch, by `etherparse` (not by the project's own checksum code, which the
    /// data path's incremental updates are checked against). `None` for other protocols.
    fn transport_checksum(src: Self, dst: Self, proto: u8, segment: &[u8]) -> Option<u16>;
    /// The checksum field of an ICMP message of this family, in wire order: ICMPv4 sums the
    /// message alone, ICMPv6 the pseudo-header too.
    fn icmp_checksum(src: Self, dst: Self, icmp: &[u8]) -> [u8; 2];
    /// A UDP socket bound to `local:0`. An IPv4 one never sets DF, so a datagram above the
    /// path MTU is fragmented by the sender as an IKE_AUTH with certificates is; an IPv6
    /// sender fragments such a datagram itself (RFC 8200 §5) and the socket is IPv6-only.
    fn udp_socket(local: Self) -> Result<UdpSocket>;
    /// Sends a ready-made UDP datagram (header included, checksum as given) from `src` to
    /// `dst` through a raw socket of the calling thread's namespace.
    fn send_raw_udp(src: Self::Sock, dst: Self::Sock, udp: &[u8]) -> Result<()>;
}

/// A socket address that names its family: lets a function taking `SocketAddrV4` or
/// `SocketAddrV6` find the [`Family`].
pub trait FamilySock:
    Copy + Eq + Hash + Debug + Display + Send + Sync + Into<SocketAddr> + 'static
{
    type Ip: Family<Sock = Self>;
    fn ip_addr(&self) -> Self::Ip;
    fn port_number(&self) -> u16;
}

/// A raw socket for one protocol, of family `A`: sent buffers start after the IP header,
/// received ones are returned without it.
pub trait RawIp<A>: Sized + Debug {
    /// A raw socket for `protocol` bound to `local`: it sends from `local` and sees only
    /// packets to it.
    fn open(protocol: i32, local: A) -> Result<Self>;
    fn send(&self, payload: &[u8], dst: A) -> Result<()>;
    /// One packet's source and body (after the IP header), waiting until `deadline`
    /// (`None`: forever); `None` on timeout or signal.
    fn receive<'b>(
        &self,
        buf: &'b mut [u8],
        deadline: Option<Instant>,
    ) -> Result<Option<(A, &'b [u8])>>;
}

fn checksum_bytes(data: &[u8]) -> [u8; 2] {
    lb_common::csum::checksum(data).to_ne_bytes()
}

fn udp_or_tcp_checksum(
    proto: u8,
    segment: &[u8],
    udp: impl FnOnce(&UdpHeader, &[u8]) -> u16,
    tcp: impl FnOnce(&TcpHeader, &[u8]) -> u16,
) -> Option<u16> {
    match proto {
        PROTO_UDP => {
            let (h, data) = UdpHeader::from_slice(segment).expect("a UDP header");
            Some(udp(&h, data))
        }
        PROTO_TCP => {
            let (h, data) = TcpHeader::from_slice(segment).expect("a TCP header");
            Some(tcp(&h, data))
        }
        _ => None,
    }
}

impl Family for Ipv4Addr {
    type Sock = SocketAddrV4;
    type Raw = RawSocket;
    const NAME: &'static str = "IPv4";
    const ETHER_TYPE: u16 = 0x0800;
    const IP_HEADER_LEN: usize = 20;
    const PROTO_ICMP: u8 = PROTO_ICMP;
    const ICMP_TOO_BIG: (u8, u8) = (3, 4);
    const ICMP_ECHO: (u8, u8) = (8, 0);

    fn sock(self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self, port)
    }

    fn of_sock(addr: SocketAddr) -> Option<SocketAddrV4> {
        match addr {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        }
    }

    fn pseudo_header(src: Self, dst: Self, proto: u8, len: usize) -> Vec<u8> {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&u16::try_from(len).expect("fits IPv4").to_be_bytes());
        p
    }

    fn transport_checksum(src: Self, dst: Self, proto: u8, segment: &[u8]) -> Option<u16> {
        let (s, d) = (src.octets(), dst.octets());
        udp_or_tcp_checksum(
            proto,
            segment,
            |h, data| {
                h.calc_checksum_ipv4_raw(s, d, data)
                    .expect("UDP datagram fits")
            },
            |h, data| {
                h.calc_checksum_ipv4_raw(s, d, data)
                    .expect("TCP segment fits")
            },
        )
    }

    fn icmp_checksum(_: Self, _: Self, icmp: &[u8]) -> [u8; 2] {
        checksum_bytes(icmp)
    }

    fn udp_socket(local: Self) -> Result<UdpSocket> {
        let sock = UdpSocket::bind((local, 0)).with_context(|| format!("bind {local}:0"))?;
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: setsockopt on an open socket with a correctly sized int option.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&dont as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("IP_MTU_DISCOVER");
        }
        Ok(sock)
    }

    /// With the IPv4 header built here (`IPPROTO_RAW` implies `IP_HDRINCL`): the kernel
    /// would leave the checksum alone anyway, this keeps every other header field fixed.
    fn send_raw_udp(src: SocketAddrV4, dst: SocketAddrV4, udp: &[u8]) -> Result<()> {
        let (src, dst) = (*src.ip(), *dst.ip());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, PROTO_UDP, 0, 0];
        ip[2..4].copy_from_slice(&(20 + udp.len() as u16).to_be_bytes());
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let sum = checksum_bytes(&ip);
        ip[10..12].copy_from_slice(&sum);
        ip.extend_from_slice(udp);
        RawSocket::new(libc::IPPROTO_RAW)?.send_to(&ip, dst)
    }
}

impl Family for Ipv6Addr {
    type Sock = SocketAddrV6;
    type Raw = RawSocket6;
    const NAME: &'static str = "IPv6";
    const ETHER_TYPE: u16 = 0x86dd;
    const IP_HEADER_LEN: usize = 40;
    const PROTO_ICMP: u8 = PROTO_ICMPV6;
    const ICMP_TOO_BIG: (u8, u8) = (2, 0);
    const ICMP_ECHO: (u8, u8) = (128, 129);

    fn sock(self, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(self, port, 0, 0)
    }

    fn of_sock(addr: SocketAddr) -> Option<SocketAddrV6> {
        match addr {
            SocketAddr::V6(a) => Some(a),
            SocketAddr::V4(_) => None,
        }
    }

    fn pseudo_header(src: Self, dst: Self, proto: u8, len: usize) -> Vec<u8> {
        let mut p = Vec::with_capacity(40);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&u32::try_from(len).expect("fits IPv6").to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
        p
    }

    fn transport_checksum(src: Self, dst: Self, proto: u8, segment: &[u8]) -> Option<u16> {
        let (s, d) = (src.octets(), dst.octets());
        udp_or_tcp_checksum(
            proto,
            segment,
            |h, data| h.calc_checksum_ipv6_raw(s, d, data).expect("fits"),
            |h, data| h.calc_checksum_ipv6_raw(s, d, data).expect("fits"),
        )
    }

    fn icmp_checksum(src: Self, dst: Self, icmp: &[u8]) -> [u8; 2] {
        let mut pseudo = Self::pseudo_header(src, dst, PROTO_ICMPV6, icmp.len());
        pseudo.extend_from_slice(icmp);
        checksum_bytes(&pseudo)
    }

    fn udp_socket(local: Self) -> Result<UdpSocket> {
        sock::udp_bind(local.sock(0).into())
    }

    /// Through a raw UDP socket bound to `src`: the kernel writes the IPv6 header and leaves
    /// a raw socket's checksum alone unless `IPV6_CHECKSUM` asks.
    fn send_raw_udp(src: SocketAddrV6, dst: SocketAddrV6, udp: &[u8]) -> Result<()> {
        let raw = RawSocket6::new(libc::IPPROTO_UDP)?;
        raw.bind(*src.ip())?;
        raw.send_to(udp, *dst.ip())
    }
}

/// [`FamilySock`] and [`RawIp`] for one family's socket address and raw socket types, whose
/// methods have the same names in both families.
macro_rules! socket_types {
    ($sock:ty, $ip:ty, $raw:ty) => {
        impl FamilySock for $sock {
            type Ip = $ip;
            fn ip_addr(&self) -> $ip {
                *self.ip()
            }
            fn port_number(&self) -> u16 {
                self.port()
            }
        }

        impl RawIp<$ip> for $raw {
            fn open(protocol: i32, local: $ip) -> Result<Self> {
                let raw = <$raw>::new(protocol)?;
                raw.bind(local)?;
                Ok(raw)
            }
            fn send(&self, payload: &[u8], dst: $ip) -> Result<()> {
                self.send_to(payload, dst)
            }
            fn receive<'b>(
                &self,
                buf: &'b mut [u8],
                deadline: Option<Instant>,
            ) -> Result<Option<($ip, &'b [u8])>> {
                self.recv(buf, deadline)
            }
        }
    };
}

socket_types!(SocketAddrV4, Ipv4Addr, RawSocket);
socket_types!(SocketAddrV6, Ipv6Addr, RawSocket6);

/// A UDP datagram from `src` to `dst` carrying `payload` whose checksum is deliberately
/// wrong (never the right one, never 0).
pub fn udp_with_bad_checksum<S: FamilySock>(src: S, dst: S, payload: &[u8]) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(udp_len as usize);
    udp.extend_from_slice(&src.port_number().to_be_bytes());
    udp.extend_from_slice(&dst.port_number().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = S::Ip::pseudo_header(src.ip_addr(), dst.ip_addr(), PROTO_UDP, udp.len());
    pseudo.extend_from_slice(&udp);
    let good = checksum_bytes(&pseudo);
    let bad = if good == [0xde, 0xad] {
        [0xbe, 0xef]
    } else {
        [0xde, 0xad]
    };
    udp[6..8].copy_from_slice(&bad);
    udp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2, complemented 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(u16::from_be_bytes(checksum_bytes(&data)), !0xddf2);
    }

    /// The corrupted datagram is wrong for both families, and the right checksum over the
    /// same pseudo-header is what `etherparse` computes (so "wrong" is measured right).
    #[test]
    fn bad_checksum_is_bad_under_both_pseudo_headers() {
        fn check<S: FamilySock>(src: S, dst: S) {
            let udp = udp_with_bad_checksum(src, dst, b"bad checksum");
            let (a, b) = (src.ip_addr(), dst.ip_addr());
            let right = S::Ip::transport_checksum(a, b, PROTO_UDP, &udp).unwrap();
            let sent = u16::from_be_bytes([udp[6], udp[7]]);
            assert_ne!(sent, right, "{}", S::Ip::NAME);
            assert_ne!(sent, 0);
            let mut fixed = udp.clone();
            fixed[6..8].copy_from_slice(&right.to_be_bytes());
            let mut pseudo = S::Ip::pseudo_header(a, b, PROTO_UDP, fixed.len());
            pseudo.extend_from_slice(&fixed);
            assert_eq!(lb_common::csum::checksum(&pseudo), 0, "{}", S::Ip::NAME);
        }
        check(
            SocketAddrV4::new(Ipv4Addr::new(100, 64, 1, 1), 40_000),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 11), 9),
        );
        check(
            SocketAddrV6::new("2001:db8:c::1".parse().unwrap(), 40_000, 0, 0),
            SocketAddrV6::new("2001:db8:1::11".parse().unwrap(), 9, 0, 0),
        );
    }
}
