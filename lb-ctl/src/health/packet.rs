//! ICMP echo packets of the health checks: the request we send, and the rule that decides
//! what a received ICMP message means for the probe it may answer.
//!
//! Only an **Echo Reply** (ICMP type 0, RFC 792; ICMPv6 type 129, RFC 4443 §4.2) *from the
//! probed address*, carrying *our* identifier, sequence number and payload, is [`Verdict::Alive`].
//! An ICMP error (destination unreachable, time exceeded, parameter problem, …; RFC 792,
//! RFC 4443 §3) that quotes our echo request is [`Verdict::Failed`] with the reason. Anything
//! else — another pinger's reply, a reply with the wrong payload, an error about another
//! packet — is [`Verdict::NotOurs`]: ignored, the probe keeps waiting until its timeout.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ECHO_REPLY_V4: u8 = 0;
pub const ECHO_REQUEST_V4: u8 = 8;
pub const ECHO_REQUEST_V6: u8 = 128;
pub const ECHO_REPLY_V6: u8 = 129;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// ICMP (IPv4) or ICMPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ICMP",
            Family::V6 => "ICMPv6",
        }
    }
}

/// What one probe waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The probed backend.
    pub addr: IpAddr,
    pub ident: u16,
    pub seq: u16,
    /// The echo request's data, random token included; the reply must carry it unchanged.
    pub payload: Vec<u8>,
}

/// The echo request of `expected` (ICMP header and data). The ICMPv4 checksum is filled in;
/// the ICMPv6 one is left 0: the kernel computes it (it needs the pseudo-header, RFC 4443
/// §2.3), for raw ICMPv6 sockets as for ping sockets.
pub fn echo_request(family: Family, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let kind = match family {
        Family::V4 => ECHO_REQUEST_V4,
        Family::V6 => ECHO_REQUEST_V6,
    };
    let mut p = Vec::with_capacity(8 + payload.len());
    p.extend_from_slice(&[kind, 0, 0, 0]);
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    if family == Family::V4 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP error message: its type and code, for the reason of a failed probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub family: Family,
    pub icmp_type: u8,
    pub code: u8,
}

impl fmt::Display for IcmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, code) = match (self.family, self.icmp_type, self.code) {
            // RFC 792, RFC 1122 §3.2.2.1, RFC 1812 §5.2.7.1.
            (Family::V4, 3, c) => (
                "destination unreachable",
                match c {
                    0 => "net unreachable",
                    1 => "host unreachable",
                    2 => "protocol unreachable",
                    3 => "port unreachable",
                    4 => "fragmentation needed",
                    6 => "destination network unknown",
                    7 => "destination host unknown",
                    9 | 10 | 13 => "administratively prohibited",
                    _ => "",
                },
            ),
            (Family::V4, 4, _) => ("source quench", ""),
            (Family::V4, 11, 0) => ("time exceeded", "TTL exceeded in transit"),
            (Family::V4, 11, _) => ("time exceeded", "fragment reassembly"),
            (Family::V4, 12, _) => ("parameter problem", ""),
            // RFC 4443 §3.
            (Family::V6, 1, c) => (
                "destination unreachable",
                match c {
                    0 => "no route to destination",
                    1 => "administratively prohibited",
                    2 => "beyond scope of source address",
                    3 => "address unreachable",
                    4 => "port unreachable",
                    5 => "source address failed ingress/egress policy",
                    6 => "reject route to destination",
                    _ => "",
                },
            ),
            (Family::V6, 2, _) => ("packet too big", ""),
            (Family::V6, 3, _) => ("time exceeded", ""),
            (Family::V6, 4, _) => ("parameter problem", ""),
            _ => ("error", ""),
        };
        if code.is_empty() {
            write!(
                f,
                "{} {kind} (type {}, code {})",
                self.family.name(),
                self.icmp_type,
                self.code
            )
        } else {
            write!(f, "{} {kind} ({code})", self.family.name())
        }
    }
}

/// Is `(family, type)` an ICMP error message about a packet we sent?
fn is_error(family: Family, icmp_type: u8) -> bool {
    match family {
        // Destination unreachable, source quench, time exceeded, parameter problem. Redirect
        // (5) is not an error: the request was forwarded.
        Family::V4 => matches!(icmp_type, 3 | 4 | 11 | 12),
        // Every ICMPv6 error message type defined by RFC 4443 §3.
        Family::V6 => matches!(icmp_type, 1..=4),
    }
}

/// A received ICMP message, parsed as far as the probes care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    EchoReply {
        ident: u16,
        seq: u16,
        payload: &'a [u8],
    },
    /// An error quoting an echo request: the request's destination, identifier, sequence and
    /// as much of its data as the sender quoted.
    Error {
        error: IcmpError,
        quoted_dst: IpAddr,
        ident: u16,
        seq: u16,
        payload: &'a [u8],
    },
    /// Any other message (echo requests, redirects, neighbour discovery, errors about other
    /// protocols): never about a probe.
    Other { icmp_type: u8 },
}

impl Received<'_> {
    /// The sequence number this message is about, if it can be about a probe at all.
    pub fn seq(&self) -> Option<u16> {
        match self {
            Received::EchoReply { seq, .. } | Received::Error { seq, .. } => Some(*seq),
            Received::Other { .. } => None,
        }
    }
}

/// Why a received message could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses what a socket of `family` returned. `with_ip_header`: the message starts with the
/// IPv4 header (raw IPv4 sockets); ping sockets and ICMPv6 sockets return the ICMP message
/// alone. ICMPv4 checksums are verified here (a raw socket gets its copy before the kernel's
/// ICMP code checks it); the kernel verifies ICMPv6 checksums for raw and ping sockets.
pub fn parse(family: Family, with_ip_header: bool, msg: &[u8]) -> Result<Received<'_>, Malformed> {
    let icmp = match (family, with_ip_header) {
        (Family::V4, true) => {
            let (proto, _dst, rest) = ipv4_payload(msg).ok_or(Malformed("bad IPv4 header"))?;
            if proto != IPPROTO_ICMP {
                return Err(Malformed("not ICMP"));
            }
            rest
        }
        _ => msg,
    };
    if icmp.len() < 8 {
        return Err(Malformed("ICMP message shorter than 8 bytes"));
    }
    if family == Family::V4 && checksum(icmp) != 0 {
        return Err(Malformed("bad ICMP checksum"));
    }
    let (icmp_type, code) = (icmp[0], icmp[1]);
    let reply = match family {
        Family::V4 => ECHO_REPLY_V4,
        Family::V6 => ECHO_REPLY_V6,
    };
    if icmp_type == reply {
        return Ok(Received::EchoReply {
            ident: u16::from_be_bytes([icmp[4], icmp[5]]),
            seq: u16::from_be_bytes([icmp[6], icmp[7]]),
            payload: &icmp[8..],
        });
    }
    if !is_error(family, icmp_type) {
        return Ok(Received::Other { icmp_type });
    }
    // The error quotes the offending packet after its own 8-byte header: IP header first.
    let quoted = &icmp[8..];
    let (quoted_dst, echo) = match family {
        Family::V4 => {
            let (proto, dst, rest) =
                ipv4_payload(quoted).ok_or(Malformed("error quotes a bad IPv4 header"))?;
            if proto != IPPROTO_ICMP {
                return Ok(Received::Other { icmp_type });
            }
            (IpAddr::V4(dst), rest)
        }
        Family::V6 => {
            if quoted.len() < 40 || quoted[0] >> 4 != 6 {
                return Err(Malformed("error quotes a bad IPv6 header"));
            }
            // Our echo requests carry no extension headers: the quoted Next Header of one
            // of ours is ICMPv6 itself.
            if quoted[6] != IPPROTO_ICMPV6 {
                return Ok(Received::Other { icmp_type });
            }
            let dst: [u8; 16] = quoted[24..40].try_into().expect("16 bytes");
            let len = usize::from(u16::from_be_bytes([quoted[4], quoted[5]]));
            let end = (40 + len).min(quoted.len());
            (IpAddr::V6(Ipv6Addr::from(dst)), &quoted[40..end])
        }
    };
    let request = match family {
        Family::V4 => ECHO_REQUEST_V4,
        Family::V6 => ECHO_REQUEST_V6,
    };
    // RFC 792 guarantees the first 8 bytes of the quoted datagram: the echo header.
    if echo.len() < 8 {
        return Err(Malformed("error quotes less than the echo header"));
    }
    if echo[0] != request {
        return Ok(Received::Other { icmp_type });
    }
    Ok(Received::Error {
        error: IcmpError {
            family,
            icmp_type,
            code,
        },
        quoted_dst,
        ident: u16::from_be_bytes([echo[4], echo[5]]),
        seq: u16::from_be_bytes([echo[6], echo[7]]),
        payload: &echo[8..],
    })
}

/// Protocol, destination and payload of an IPv4 packet (the payload cut to the header's total
/// length when the packet is whole; a quoted packet may be truncated).
fn ipv4_payload(p: &[u8]) -> Option<(u8, Ipv4Addr, &[u8])> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let end = if total >= ihl && total <= p.len() {
        total
    } else {
        p.len()
    };
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Some((p[9], dst, &p[ihl..end]))
}

/// What a received message means for one waiting probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Our echo reply: the backend is alive.
    Alive,
    /// An ICMP error about our echo request: the probe fails, with this reason.
    Failed(String),
    /// Not about this probe (or forged): ignored, the probe keeps waiting.
    NotOurs(&'static str),
}

/// Decides what `received`, which came from `from`, means for the probe waiting for
/// `expected` (see the module doc).
pub fn classify(expected: &Expected, from: IpAddr, received: &Received<'_>) -> Verdict {
    match *received {
        Received::EchoReply {
            ident,
            seq,
            payload,
        } => {
            if seq != expected.seq {
                Verdict::NotOurs("echo reply with another sequence number")
            } else if ident != expected.ident {
                Verdict::NotOurs("echo reply with another identifier")
            } else if from != expected.addr {
                Verdict::NotOurs("echo reply from another address")
            } else if payload != expected.payload.as_slice() {
                Verdict::NotOurs("echo reply with another payload")
            } else {
                Verdict::Alive
            }
        }
        Received::Error {
            error,
            quoted_dst,
            ident,
            seq,
            payload,
        } => {
            if seq != expected.seq {
                Verdict::NotOurs("ICMP error about another sequence number")
            } else if ident != expected.ident {
                Verdict::NotOurs("ICMP error about another identifier")
            } else if quoted_dst != expected.addr {
                Verdict::NotOurs("ICMP error about a request to another address")
            } else if !expected.payload.starts_with(payload) {
                // A router may quote only part of the data (RFC 792: 8 bytes at least), but
                // what it quotes must be ours.
                Verdict::NotOurs("ICMP error quoting another payload")
            } else {
                Verdict::Failed(format!("{error} from {from}"))
            }
        }
        Received::Other { .. } => Verdict::NotOurs("neither an echo reply nor an ICMP error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 20);
    const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
    const GATEWAY4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 0x20);
    const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
    const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

    fn expected(addr: IpAddr) -> Expected {
        Expected {
            addr,
            ident: 0xa1b2,
            seq: 0xc3d4,
            payload: b"ikelb health check 0123456789abcdef".to_vec(),
        }
    }

    /// An IPv4 header (no options) of a packet from `src` to `dst` carrying `payload`.
    fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        h
    }

    /// An ICMP message with a correct ICMPv4 checksum (harmless for ICMPv6 in these tests:
    /// the kernel checks those).
    fn icmp(icmp_type: u8, code: u8, rest_of_header: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = vec![icmp_type, code, 0, 0];
        m.extend_from_slice(&rest_of_header);
        m.extend_from_slice(body);
        let sum = checksum(&m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        m
    }

    fn id_seq(ident: u16, seq: u16) -> [u8; 4] {
        let [a, b] = ident.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        [a, b, c, d]
    }

    /// The echo reply the backend sends for `e`, as a raw IPv4 socket returns it.
    fn reply4(e: &Expected, from: Ipv4Addr) -> Vec<u8> {
        let m = icmp(ECHO_REPLY_V4, 0, id_seq(e.ident, e.seq), &e.payload);
        ipv4(IPPROTO_ICMP, from, GATEWAY4, &m)
    }

    /// An ICMPv4 error from `router` quoting our echo request for `e` (`quote` bytes of its
    /// data), as a raw IPv4 socket returns it.
    fn error4(e: &Expected, router: Ipv4Addr, icmp_type: u8, code: u8, quote: usize) -> Vec<u8> {
        let IpAddr::V4(dst) = e.addr else { panic!() };
        let request = echo_request(Family::V4, e.ident, e.seq, &e.payload);
        let original = ipv4(IPPROTO_ICMP, GATEWAY4, dst, &request);
        let m = icmp(icmp_type, code, [0; 4], &original[..20 + 8 + quote]);
        ipv4(IPPROTO_ICMP, router, GATEWAY4, &m)
    }

    fn reply6(e: &Expected) -> Vec<u8> {
        icmp(ECHO_REPLY_V6, 0, id_seq(e.ident, e.seq), &e.payload)
    }

    fn error6(e: &Expected, icmp_type: u8, code: u8) -> Vec<u8> {
        let IpAddr::V6(dst) = e.addr else { panic!() };
        let request = echo_request(Family::V6, e.ident, e.seq, &e.payload);
        let original = ipv6(IPPROTO_ICMPV6, GATEWAY6, dst, &request);
        icmp(icmp_type, code, [0; 4], &original)
    }

    fn verdict(family: Family, raw: bool, e: &Expected, from: IpAddr, msg: &[u8]) -> Verdict {
        let received = parse(family, raw, msg).expect("parses");
        classify(e, from, &received)
    }

    #[test]
    fn the_request_carries_ident_seq_payload_and_a_valid_checksum() {
        let e = expected(BACKEND4.into());
        let p = echo_request(Family::V4, e.ident, e.seq, &e.payload);
        assert_eq!(p[0], ECHO_REQUEST_V4);
        assert_eq!(&p[4..8], &id_seq(e.ident, e.seq));
        assert_eq!(&p[8..], e.payload.as_slice());
        assert_eq!(checksum(&p), 0, "a correct checksum sums to 0");
        let p6 = echo_request(Family::V6, e.ident, e.seq, &e.payload);
        assert_eq!(p6[0], ECHO_REQUEST_V6);
        assert_eq!(&p6[2..4], &[0, 0], "left to the kernel");
    }

    #[test]
    fn our_echo_reply_from_the_backend_is_alive() {
        let e = expected(BACKEND4.into());
        assert_eq!(
            verdict(Family::V4, true, &e, BACKEND4.into(), &reply4(&e, BACKEND4)),
            Verdict::Alive
        );
        // A ping socket returns the ICMP message without the IP header.
        let m = icmp(ECHO_REPLY_V4, 0, id_seq(e.ident, e.seq), &e.payload);
        assert_eq!(
            verdict(Family::V4, false, &e, BACKEND4.into(), &m),
            Verdict::Alive
        );
        let e6 = expected(BACKEND6.into());
        assert_eq!(
            verdict(Family::V6, false, &e6, BACKEND6.into(), &reply6(&e6)),
            Verdict::Alive
        );
    }

    #[test]
    fn host_unreachable_from_a_router_fails_the_probe_with_the_reason() {
        let e = expected(BACKEND4.into());
        for quote in [0, 4, e.payload.len()] {
            let msg = error4(&e, ROUTER4, 3, 1, quote);
            assert_eq!(
                verdict(Family::V4, true, &e, ROUTER4.into(), &msg),
                Verdict::Failed(
                    "ICMP destination unreachable (host unreachable) from 10.0.0.254".into()
                ),
                "quoting {quote} bytes of data"
            );
        }
    }

    #[test]
    fn every_icmp_error_type_fails_the_probe() {
        let e = expected(BACKEND4.into());
        for (t, c, why) in [
            (3, 0, "ICMP destination unreachable (net unreachable)"),
            (3, 3, "ICMP destination unreachable (port unreachable)"),
            (
                3,
                13,
                "ICMP destination unreachable (administratively prohibited)",
            ),
            (4, 0, "ICMP source quench (type 4, code 0)"),
            (11, 0, "ICMP time exceeded (TTL exceeded in transit)"),
            (12, 0, "ICMP parameter problem (type 12, code 0)"),
        ] {
            let msg = error4(&e, ROUTER4, t, c, 8);
            assert_eq!(
                verdict(Family::V4, true, &e, ROUTER4.into(), &msg),
                Verdict::Failed(format!("{why} from {ROUTER4}"))
            );
        }
        let e6 = expected(BACKEND6.into());
        for (t, c, why) in [
            (1, 3, "ICMPv6 destination unreachable (address unreachable)"),
            (
                1,
                0,
                "ICMPv6 destination unreachable (no route to destination)",
            ),
            (2, 0, "ICMPv6 packet too big (type 2, code 0)"),
            (3, 0, "ICMPv6 time exceeded (type 3, code 0)"),
            (4, 1, "ICMPv6 parameter problem (type 4, code 1)"),
        ] {
            let msg = error6(&e6, t, c);
            assert_eq!(
                verdict(Family::V6, false, &e6, ROUTER6.into(), &msg),
                Verdict::Failed(format!("{why} from {ROUTER6}"))
            );
        }
    }

    #[test]
    fn the_family_decides_which_type_is_a_reply() {
        // Type 129 over ICMPv4 and type 0 over ICMPv6 are not echo replies.
        let e = expected(BACKEND4.into());
        let m = icmp(ECHO_REPLY_V6, 0, id_seq(e.ident, e.seq), &e.payload);
        assert!(matches!(
            verdict(Family::V4, false, &e, BACKEND4.into(), &m),
            Verdict::NotOurs(_)
        ));
        let e6 = expected(BACKEND6.into());
        let m6 = icmp(ECHO_REPLY_V4, 0, id_seq(e6.ident, e6.seq), &e6.payload);
        assert!(matches!(
            verdict(Family::V6, false, &e6, BACKEND6.into(), &m6),
            Verdict::NotOurs(_)
        ));
    }

    #[test]
    fn a_reply_with_another_ident_seq_payload_or_source_is_not_ours() {
        let e = expected(BACKEND4.into());
        let mut other = e.clone();
        other.ident ^= 1;
        let wrong_ident = reply4(&other, BACKEND4);
        let mut other = e.clone();
        other.seq = other.seq.wrapping_add(1);
        let wrong_seq = reply4(&other, BACKEND4);
        let mut other = e.clone();
        *other.payload.last_mut().unwrap() ^= 0xff;
        let wrong_token = reply4(&other, BACKEND4);
        let mut other = e.clone();
        other.payload.truncate(19);
        let short = reply4(&other, BACKEND4);
        for (msg, from, why) in [
            (&wrong_ident, BACKEND4, "echo reply with another identifier"),
            (
                &wrong_seq,
                BACKEND4,
                "echo reply with another sequence number",
            ),
            (&wrong_token, BACKEND4, "echo reply with another payload"),
            (&short, BACKEND4, "echo reply with another payload"),
            (
                &reply4(&e, ROUTER4),
                ROUTER4,
                "echo reply from another address",
            ),
        ] {
            assert_eq!(
                verdict(Family::V4, true, &e, from.into(), msg),
                Verdict::NotOurs(why)
            );
        }
        let e6 = expected(BACKEND6.into());
        let mut other = e6.clone();
        other.payload[20] ^= 1;
        assert_eq!(
            verdict(Family::V6, false, &e6, BACKEND6.into(), &reply6(&other)),
            Verdict::NotOurs("echo reply with another payload")
        );
        assert_eq!(
            verdict(Family::V6, false, &e6, ROUTER6.into(), &reply6(&e6)),
            Verdict::NotOurs("echo reply from another address")
        );
    }

    #[test]
    fn an_error_about_another_request_is_not_ours() {
        let e = expected(BACKEND4.into());
        let mut other = e.clone();
        other.ident ^= 0x100;
        assert_eq!(
            verdict(
                Family::V4,
                true,
                &e,
                ROUTER4.into(),
                &error4(&other, ROUTER4, 3, 1, 8)
            ),
            Verdict::NotOurs("ICMP error about another identifier")
        );
        let mut other = e.clone();
        other.addr = Ipv4Addr::new(10, 9, 0, 21).into();
        assert_eq!(
            verdict(
                Family::V4,
                true,
                &e,
                ROUTER4.into(),
                &error4(&other, ROUTER4, 3, 1, 8)
            ),
            Verdict::NotOurs("ICMP error about a request to another address")
        );
        let mut other = e.clone();
        other.payload[25] ^= 1;
        assert_eq!(
            verdict(
                Family::V4,
                true,
                &e,
                ROUTER4.into(),
                &error4(&other, ROUTER4, 3, 1, 30)
            ),
            Verdict::NotOurs("ICMP error quoting another payload")
        );
        let e6 = expected(BACKEND6.into());
        let mut other = e6.clone();
        other.seq ^= 1;
        assert_eq!(
            verdict(
                Family::V6,
                false,
                &e6,
                ROUTER6.into(),
                &error6(&other, 1, 3)
            ),
            Verdict::NotOurs("ICMP error about another sequence number")
        );
    }

    #[test]
    fn requests_redirects_and_errors_about_other_protocols_are_other() {
        let e = expected(BACKEND4.into());
        let request = echo_request(Family::V4, e.ident, e.seq, &e.payload);
        let msg = ipv4(IPPROTO_ICMP, BACKEND4, GATEWAY4, &request);
        assert_eq!(
            parse(Family::V4, true, &msg),
            Ok(Received::Other {
                icmp_type: ECHO_REQUEST_V4
            })
        );
        let redirect = ipv4(
            IPPROTO_ICMP,
            ROUTER4,
            GATEWAY4,
            &icmp(5, 1, [10, 0, 0, 2], &error4(&e, ROUTER4, 3, 1, 8)[28..]),
        );
        assert_eq!(
            parse(Family::V4, true, &redirect),
            Ok(Received::Other { icmp_type: 5 })
        );
        // Port unreachable about a UDP datagram.
        let udp = ipv4(
            17,
            GATEWAY4,
            BACKEND4,
            &[0x01, 0xf4, 0x01, 0xf4, 0, 8, 0, 0],
        );
        let msg = ipv4(IPPROTO_ICMP, BACKEND4, GATEWAY4, &icmp(3, 3, [0; 4], &udp));
        assert_eq!(
            parse(Family::V4, true, &msg),
            Ok(Received::Other { icmp_type: 3 })
        );
        // Neighbour solicitation.
        let ns = icmp(135, 0, [0; 4], &BACKEND6.octets());
        assert_eq!(
            parse(Family::V6, false, &ns),
            Ok(Received::Other { icmp_type: 135 })
        );
        assert!(matches!(
            classify(&e, BACKEND4.into(), &Received::Other { icmp_type: 5 }),
            Verdict::NotOurs(_)
        ));
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let e = expected(BACKEND4.into());
        let good = reply4(&e, BACKEND4);
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert_eq!(
            parse(Family::V4, true, &bad_sum),
            Err(Malformed("bad ICMP checksum"))
        );
        assert!(parse(Family::V4, true, &good[..24]).is_err());
        assert!(parse(Family::V4, true, &good[..10]).is_err());
        assert!(parse(Family::V6, false, &[129, 0, 0]).is_err());
        // An error that quotes less than the echo header.
        let msg = error4(&e, ROUTER4, 3, 1, 0);
        let IpAddr::V4(dst) = e.addr else { panic!() };
        let original = ipv4(IPPROTO_ICMP, GATEWAY4, dst, &[8, 0, 0, 0]);
        let cut = ipv4(
            IPPROTO_ICMP,
            ROUTER4,
            GATEWAY4,
            &icmp(3, 1, [0; 4], &original),
        );
        assert!(parse(Family::V4, true, &msg).is_ok());
        assert_eq!(
            parse(Family::V4, true, &cut),
            Err(Malformed("error quotes less than the echo header"))
        );
    }
}
