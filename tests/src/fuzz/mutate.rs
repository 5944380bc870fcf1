//! The mutations: each edits a frame in place and says what it did (that text goes into a
//! violation's report), or returns `None` when the frame has nothing it applies to (a TCP
//! data offset in a UDP frame). Those that change a field the IPv4 header checksum covers put
//! the checksum right again — a wrong one is a mutation of its own — so that each mutation
//! probes its own rule and not only the checksum's; transport checksums are recomputed where
//! a change of address or length would otherwise break them, or left for
//! [`bad_l4_checksum`].

// Every mutation has the table's one signature, `&mut Vec` included (some grow the frame).
#![allow(clippy::ptr_arg)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::frame::{
    be16, checksum_field, fix_ipv4_checksum, fix_l4_checksum, put16, Ip, Layout, IP6_LEN,
    NEXT_DEST_OPTS, NEXT_FRAGMENT, NEXT_HOP_BY_HOP, NEXT_ROUTING, PROTO_AH, PROTO_TCP, PROTO_UDP,
};
use super::Rng;
use crate::xdp::{BACKENDS4, BACKENDS6, EXT_MAC, INT_MAC, VIP4, VIP6};

type Mutation = fn(&mut Vec<u8>, &mut Rng, bool) -> Option<String>;

/// Every mutation, by name; bit flips twice, as the least targeted.
const MUTATIONS: [(&str, Mutation); 19] = [
    ("bit_flips", bit_flips),
    ("bit_flips", bit_flips),
    ("truncate", truncate),
    ("ip_total_length", ip_total_length),
    ("udp_length", udp_length),
    ("ipv6_payload_length", ipv6_payload_length),
    ("tcp_data_offset", tcp_data_offset),
    ("ip_options", ip_options),
    ("ipv6_ext_chain", ipv6_ext_chain),
    ("bad_ip_checksum", bad_ip_checksum),
    ("bad_l4_checksum", bad_l4_checksum),
    ("ttl", ttl),
    ("martian", martian),
    ("vlan", vlan),
    ("dst_mac", dst_mac),
    ("append", append),
    ("fragment", fragment),
    ("protocol", protocol),
    ("fragment", fragment),
];

/// Applies one to three mutations to `f` (`reverse`: a backend's reply, whose client is its
/// destination), returning what each did.
pub fn mutate(f: &mut Vec<u8>, rng: &mut Rng, reverse: bool) -> Vec<String> {
    let n = match rng.below(10) {
        0..=4 => 1,
        5..=7 => 2,
        _ => 3,
    };
    let mut done = Vec::new();
    while done.len() < n {
        let (name, m) = MUTATIONS[rng.below(MUTATIONS.len())];
        if let Some(what) = m(f, rng, reverse) {
            done.push(format!("{name}: {what}"));
        }
    }
    done
}

fn v4(f: &[u8]) -> Option<(usize, super::frame::V4)> {
    let l = Layout::of(f);
    match l.ip {
        Ip::V4(h) => Some((l.l3, h)),
        _ => None,
    }
}

fn v6(f: &[u8]) -> Option<(usize, super::frame::V6)> {
    let l = Layout::of(f);
    match l.ip {
        Ip::V6(h) => Some((l.l3, h)),
        _ => None,
    }
}

/// One of `fixed`, or sometimes a random 16-bit value.
fn pick16(rng: &mut Rng, fixed: &[i64]) -> u16 {
    if rng.below(6) == 0 {
        return rng.next_u64() as u16;
    }
    fixed[rng.below(fixed.len())].clamp(0, 0xffff) as u16
}

fn bit_flips(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    if f.is_empty() {
        return None;
    }
    let mut at = Vec::new();
    for _ in 0..1 + rng.below(4) {
        // Mostly the headers (Ethernet, IP with options, a transport header).
        let span = if rng.below(4) != 0 {
            f.len().min(14 + 60 + 24)
        } else {
            f.len()
        };
        let (byte, bit) = (rng.below(span), rng.below(8));
        f[byte] ^= 1 << bit;
        at.push(format!("{byte}.{bit}"));
    }
    let fixed = rng.below(2) == 0;
    if fixed {
        fix_ipv4_checksum(f);
    }
    Some(format!(
        "byte.bit {}{}",
        at.join(" "),
        if fixed {
            ", IPv4 header checksum recomputed"
        } else {
            ""
        }
    ))
}

fn truncate(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    if f.len() <= super::MIN_FRAME {
        return None;
    }
    let cut = super::MIN_FRAME + rng.below(f.len() - super::MIN_FRAME);
    f.truncate(cut);
    Some(format!("to {cut} bytes"))
}

fn ip_total_length(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let (l3, h) = v4(f)?;
    let (tot, ihl, room) = (h.total_len as i64, h.ihl as i64, (f.len() - l3) as i64);
    let v = pick16(
        rng,
        &[
            0,
            19,
            ihl - 1,
            ihl,
            ihl + 7,
            tot - 8,
            tot - 1,
            tot + 1,
            tot + 8,
            room - 1,
            room,
            room + 1,
            0xffff,
        ],
    );
    put16(f, l3 + 2, v);
    fix_ipv4_checksum(f);
    let l4 = rng.below(2) == 0;
    if l4 {
        fix_l4_checksum(f);
    }
    Some(format!(
        "{tot} → {v}{}",
        if l4 { ", L4 checksum recomputed" } else { "" }
    ))
}

fn udp_length(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let t = Layout::of(f)
        .transport(f)
        .filter(|t| t.proto == PROTO_UDP)?;
    let old = be16(f, t.start + 4)?;
    let len = (t.end - t.start) as i64;
    let v = pick16(
        rng,
        &[0, 1, 7, 8, len - 8, len - 1, len + 1, len + 8, 0xffff],
    );
    put16(f, t.start + 4, v);
    let l4 = rng.below(2) == 0;
    if l4 {
        fix_l4_checksum(f);
    }
    Some(format!(
        "{old} → {v} (IP payload {len}){}",
        if l4 { ", L4 checksum recomputed" } else { "" }
    ))
}

fn ipv6_payload_length(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let (l3, h) = v6(f)?;
    let (pl, room) = (h.payload_len as i64, f.len() as i64 - (l3 + IP6_LEN) as i64);
    let v = pick16(
        rng,
        &[
            0,
            7,
            8,
            pl - 8,
            pl - 1,
            pl + 1,
            pl + 8,
            room - 1,
            room,
            room + 1,
            0xffff,
        ],
    );
    put16(f, l3 + 4, v);
    Some(format!("{pl} → {v}"))
}

fn tcp_data_offset(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let t = Layout::of(f)
        .transport(f)
        .filter(|t| t.proto == PROTO_TCP)?;
    let b = f.get_mut(t.start + 12)?;
    let old = *b >> 4;
    let doff = rng.below(16) as u8;
    *b = (doff << 4) | (*b & 0x0f);
    fix_l4_checksum(f);
    Some(format!(
        "{old} → {doff} words (segment {} bytes)",
        t.end - t.start
    ))
}

fn ip_options(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let (l3, h) = v4(f)?;
    if rng.below(4) == 0 {
        // An IHL that disagrees with what follows.
        let ihl = rng.below(16) as u8;
        f[l3] = 0x40 | ihl;
        fix_ipv4_checksum(f);
        return Some(format!("IHL {} → {ihl}, nothing inserted", h.ihl / 4));
    }
    let words = 1 + rng.below(10);
    let mut opts = match rng.below(3) {
        // NOPs then End of Option List (RFC 791 §3.1).
        0 => {
            let mut o = vec![1; words * 4 - 1];
            o.push(0);
            o
        }
        // Record Route (type 7) with room for the addresses, pointer 4.
        1 => {
            let mut o = vec![7, (words * 4 - 1) as u8, 4];
            o.resize(words * 4, 0);
            o
        }
        _ => rng.bytes(words * 4),
    };
    // Right after the fixed header (before any options the frame has).
    let at = l3 + 20;
    let n = opts.len();
    f.splice(at..at, opts.drain(..));
    f[l3] = 0x40 | (h.ihl / 4 + words).min(15) as u8;
    put16(f, l3 + 2, (h.total_len + n) as u16);
    fix_ipv4_checksum(f);
    Some(format!(
        "{n} bytes of options inserted, IHL {}",
        f[l3] & 0x0f
    ))
}

/// A random extension header whose next-header field is `next`: its type, bytes and name.
fn ext_header(rng: &mut Rng, next: u8) -> (u8, Vec<u8>, String) {
    let garbage = rng.below(5) == 0;
    let (kind, mut b, what) = match rng.below(9) {
        0 | 1 => {
            let kind = if rng.below(2) == 0 {
                NEXT_HOP_BY_HOP
            } else {
                NEXT_DEST_OPTS
            };
            let len = rng.below(3);
            let total = (len + 1) * 8;
            // One PadN option filling the header (RFC 8200 §4.2).
            let mut b = vec![next, len as u8, 1, (total - 4) as u8];
            b.resize(total, 0);
            (kind, b, format!("options({kind}, {total} bytes)"))
        }
        2 | 3 => {
            let left = if rng.below(2) == 0 {
                0
            } else {
                1 + rng.below(3) as u8
            };
            let mut b = vec![next, 2, 4, left, 0, 0, 0, 0];
            b.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0xaaaa, 0, 0, 0, 0, 1).octets());
            (NEXT_ROUTING, b, format!("routing(segments left {left})"))
        }
        4 | 5 => {
            let (offset, more) = match rng.below(3) {
                0 => (0u16, false),
                1 => (0, true),
                _ => (rng.below(0x2000) as u16, rng.below(2) == 0),
            };
            let mut b = vec![next, 0];
            b.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
            b.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes());
            (
                NEXT_FRAGMENT,
                b,
                format!("fragment(offset {offset}, M {})", u8::from(more)),
            )
        }
        6 => {
            let len = 1 + rng.below(4);
            let mut b = vec![next, len as u8];
            b.resize((len + 2) * 4, 0);
            (PROTO_AH, b, "AH".into())
        }
        _ => {
            let kind = [135u8, 139, 140, 253, 59][rng.below(5)];
            let mut b = vec![next, 0];
            b.resize(8, 0);
            (kind, b, format!("header {kind}"))
        }
    };
    if garbage {
        let rest = rng.bytes(b.len() - 2);
        b[2..].copy_from_slice(&rest);
        return (kind, b, format!("{what} with random body"));
    }
    (kind, b, what)
}

fn ipv6_ext_chain(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let (l3, h) = v6(f)?;
    let mut next = f[l3 + 6];
    let mut chain = Vec::new();
    let mut names = Vec::new();
    for _ in 0..1 + rng.below(5) {
        let (kind, bytes, what) = ext_header(rng, next);
        chain.splice(0..0, bytes);
        names.insert(0, what);
        next = kind;
    }
    let at = l3 + IP6_LEN;
    let n = chain.len();
    f.splice(at..at, chain);
    f[l3 + 6] = next;
    let stale = rng.below(5) == 0;
    if !stale {
        put16(f, l3 + 4, (h.payload_len + n) as u16);
    }
    Some(format!(
        "{}{}",
        names.join(" → "),
        if stale {
            ", payload length not updated"
        } else {
            ""
        }
    ))
}

fn bad_ip_checksum(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let (l3, _) = v4(f)?;
    let x = 1 + rng.below(0xffff) as u16;
    let c = be16(f, l3 + 10)?;
    put16(f, l3 + 10, c ^ x);
    Some(format!("{c:#06x} → {:#06x}", c ^ x))
}

fn bad_l4_checksum(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let t = Layout::of(f).transport(f)?;
    let at = t.start + checksum_field(t.proto)?;
    let c = be16(f, at)?;
    let v = if t.proto == PROTO_UDP && rng.below(3) == 0 {
        0
    } else {
        c ^ (1 + rng.below(0xffff) as u16)
    };
    put16(f, at, v);
    Some(format!("protocol {} checksum {c:#06x} → {v:#06x}", t.proto))
}

fn ttl(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let l = Layout::of(f);
    let v = [0u8, 1, 1, 2, 255][rng.below(5)];
    let at = match l.ip {
        Ip::V4(_) => l.l3 + 8,
        Ip::V6(_) => l.l3 + 7,
        Ip::Other => return None,
    };
    let old = f[at];
    f[at] = v;
    fix_ipv4_checksum(f);
    Some(format!("TTL / hop limit {old} → {v}"))
}

fn martian4(rng: &mut Rng) -> Ipv4Addr {
    let list = [
        Ipv4Addr::new(0, 0, 0, 0),
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 255, 0, 9),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(239, 255, 255, 250),
        Ipv4Addr::new(240, 0, 0, 1),
        Ipv4Addr::new(255, 255, 255, 254),
        Ipv4Addr::BROADCAST,
        VIP4,
        BACKENDS4[rng.below(3)],
    ];
    list[rng.below(list.len())]
}

fn martian6(rng: &mut Rng) -> Ipv6Addr {
    let list = [
        Ipv6Addr::UNSPECIFIED,
        Ipv6Addr::LOCALHOST,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 2),
        Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 1, 3),
        VIP6,
        BACKENDS6[rng.below(3)],
    ];
    list[rng.below(list.len())]
}

/// The client's address (source on the way to a VIP, destination of a reply; sometimes the
/// other one) becomes a martian one.
fn martian(f: &mut Vec<u8>, rng: &mut Rng, reverse: bool) -> Option<String> {
    let l = Layout::of(f);
    let dst = reverse != (rng.below(5) == 0);
    let (old, new): (IpAddr, IpAddr) = match &l.ip {
        Ip::V4(h) => {
            let a = martian4(rng);
            let at = l.l3 + if dst { 16 } else { 12 };
            f[at..at + 4].copy_from_slice(&a.octets());
            (if dst { h.dst } else { h.src }.into(), a.into())
        }
        Ip::V6(h) => {
            let a = martian6(rng);
            let at = l.l3 + if dst { 24 } else { 8 };
            f[at..at + 16].copy_from_slice(&a.octets());
            (if dst { h.dst } else { h.src }.into(), a.into())
        }
        Ip::Other => return None,
    };
    fix_ipv4_checksum(f);
    fix_l4_checksum(f);
    Some(format!(
        "{} {old} → {new}, checksums recomputed",
        if dst { "destination" } else { "source" }
    ))
}

fn vlan(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    if f.len() < 12 {
        return None;
    }
    let mut tags = Vec::new();
    let double = rng.below(3) == 0;
    let tpids: &[u16] = if double {
        &[0x88a8, 0x8100]
    } else {
        &[[0x8100, 0x88a8][rng.below(2)]]
    };
    for &tpid in tpids {
        let vid = rng.below(0x1000) as u16;
        tags.extend_from_slice(&tpid.to_be_bytes());
        tags.extend_from_slice(&vid.to_be_bytes());
    }
    f.splice(12..12, tags);
    Some(format!("{} tag(s) {tpids:04x?}", tpids.len()))
}

fn dst_mac(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    if f.len() < 6 {
        return None;
    }
    let mut random = rng.bytes(6);
    let mac: [u8; 6] = match rng.below(8) {
        0 => [0xff; 6],
        1 => [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
        2 => [0x33, 0x33, 0x00, 0x00, 0x00, 0x01],
        3 => [0x33, 0x33, 0xff, 0x00, 0x00, 0x10],
        4 => [0x02, 0, 0, 0, 0x99, 0x99],
        5 => {
            if f[..6] == EXT_MAC {
                INT_MAC
            } else {
                EXT_MAC
            }
        }
        6 => {
            random[0] |= 1;
            random.try_into().unwrap()
        }
        _ => {
            random[0] &= !1;
            random.try_into().unwrap()
        }
    };
    f[..6].copy_from_slice(&mac);
    Some(super::frame::hex(&mac))
}

fn append(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let n = if rng.below(2) == 0 {
        1 + rng.below(8)
    } else {
        1 + rng.below(64)
    };
    let extra = if rng.below(3) == 0 {
        vec![0; n]
    } else {
        rng.bytes(n)
    };
    f.extend_from_slice(&extra);
    Some(format!("{n} bytes"))
}

/// An offset (8-byte units) that probes the 65,535-byte limit for a fragment whose
/// reassembled datagram adds `len` bytes beyond the offset.
fn offset_near_limit(rng: &mut Rng, len: usize) -> u16 {
    let edge = (65_535usize.saturating_sub(len) / 8) as i64;
    let choices = [0, 1, 2, 3, edge - 1, edge, edge + 1, 8190, 8191];
    if rng.below(5) == 0 {
        return rng.below(0x2000) as u16;
    }
    choices[rng.below(choices.len())].clamp(0, 8191) as u16
}

fn fragment(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let l = Layout::of(f);
    match &l.ip {
        Ip::V4(h) => {
            let offset = offset_near_limit(rng, h.total_len);
            let more = rng.below(2) == 0;
            let df = rng.below(4) == 0;
            let word = (u16::from(df) << 14) | (u16::from(more) << 13) | offset;
            put16(f, l.l3 + 6, word);
            fix_ipv4_checksum(f);
            Some(format!(
                "IPv4 offset {offset} ({} bytes), MF {}",
                usize::from(offset) * 8,
                u8::from(more)
            ))
        }
        Ip::V6(h) => {
            let more = rng.below(2) == 0;
            let at = match h.frag {
                Some((at, _, _)) => at,
                None => {
                    // A Fragment header right after the IPv6 header.
                    let at = l.l3 + IP6_LEN;
                    let mut b = vec![f[l.l3 + 6], 0, 0, 0];
                    b.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes());
                    f.splice(at..at, b);
                    f[l.l3 + 6] = NEXT_FRAGMENT;
                    put16(f, l.l3 + 4, (h.payload_len + 8) as u16);
                    at
                }
            };
            let pl = usize::from(be16(f, l.l3 + 4)?);
            let data = (l.l3 + IP6_LEN + pl).saturating_sub(at + 8);
            let unfragmentable = at - l.l3 - IP6_LEN;
            let offset = offset_near_limit(rng, data + unfragmentable);
            put16(f, at + 2, (offset << 3) | u16::from(more));
            Some(format!(
                "IPv6 offset {offset} ({} bytes), M {}{}",
                usize::from(offset) * 8,
                u8::from(more),
                if h.frag.is_none() {
                    ", Fragment header inserted"
                } else {
                    ""
                }
            ))
        }
        Ip::Other => None,
    }
}

fn protocol(f: &mut Vec<u8>, rng: &mut Rng, _: bool) -> Option<String> {
    let l = Layout::of(f);
    let choices = [1u8, 6, 17, 50, 51, 58, 0, 43, 44, 60, 41, 47, 132, 255];
    let p = if rng.below(5) == 0 {
        rng.next_u64() as u8
    } else {
        choices[rng.below(choices.len())]
    };
    let at = match &l.ip {
        Ip::V4(_) => l.l3 + 9,
        Ip::V6(h) => h.upper.map_or(l.l3 + 6, |(at, _)| at),
        Ip::Other => return None,
    };
    let old = f[at];
    f[at] = p;
    fix_ipv4_checksum(f);
    Some(format!("{old} → {p}"))
}
