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
    let (chunks, rest) = data.as_chunks::<2>();
    for c in chunks {
        sum += u32::from(u16::from_be_bytes(*c));
    }
    if let [last] = rest {
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
mod tests;
