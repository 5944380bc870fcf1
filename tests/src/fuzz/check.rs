//! The invariants every frame must keep, whatever was done to it (`super`, module doc):
//!
//! * XDP_ABORTED never happens, and the action is one of XDP's.
//! * Exactly one verdict counter grows, by one, and it is labelled with the action taken
//!   (`lb_common::counter::LABELS`: `redirect` for XDP_TX and XDP_REDIRECT).
//! * XDP_PASS leaves the frame byte for byte as it came.
//! * A forwarded frame (XDP_TX, XDP_REDIRECT) is well formed: Ethernet then IPv4 (version 4,
//!   IHL ≥ 5, total length = the bytes after Ethernet, header checksum right, TTL ≥ 1) or IPv6
//!   (payload length = the bytes after its header, hop limit ≥ 1, extension headers inside
//!   the payload); the datagram its fragment belongs to fits in 65,535 bytes (RFC 791 §3.1:
//!   total length, header included; RFC 8200 §4.5: payload length); a whole UDP datagram's
//!   length is its IP payload and a first fragment's is at least what the fragment carries;
//!   a TCP data offset is ≥ 5 and inside the segment (RFC 9293 §3.1; an IPv6 first
//!   fragment holds the whole TCP header, RFC 7112 §5); its transport checksum is right
//!   whenever the input's was.
//! * It came to the MAC of the interface it arrived on (never broadcast, multicast, or
//!   another host's), and its client (the source of a frame to a VIP, the destination of a
//!   backend's reply) is no martian address: 0/8, 127/8, 224/4, 240/4 (255.255.255.255
//!   included), the VIP, a backend; ::, ::1, ff00::/8, the VIP, a backend (RFC 1812 §5.3.7,
//!   RFC 6890, RFC 4291 §2.5.2–2.7).

use std::fmt;
use std::net::IpAddr;

use lb_common::counter;

use super::frame::{
    be16, ipv4_checksum_ok, l4_checksum_ok, Ip, Layout, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_LEN,
    IP6_LEN, PROTO_TCP, PROTO_UDP,
};
use crate::xdp::{
    Side, BACKENDS4, BACKENDS6, EXT_MAC, INT_MAC, VIP4, VIP6, XDP_DROP, XDP_PASS, XDP_REDIRECT,
    XDP_TX,
};

/// A kind of violation: the unit the report counts and `IKELB_FUZZ_ONLY` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Aborted,
    UnknownAction,
    Counters,
    CounterAction,
    PassModified,
    /// A forwarded frame that is not Ethernet + IPv4/IPv6, or too short for its IP header.
    Ethernet,
    /// IPv4 version, IHL.
    Ipv4Header,
    /// IPv4 total length ≠ the bytes after the Ethernet header.
    Ipv4Length,
    Ipv4Checksum,
    Ttl,
    /// IPv6 payload length ≠ the bytes after the IPv6 header.
    Ipv6Length,
    /// An extension header past the IPv6 payload.
    Ipv6ExtChain,
    /// The reassembled datagram would exceed 65,535 bytes.
    FragmentEnd,
    /// A whole datagram's UDP length ≠ its IP payload (or no room for the UDP header).
    UdpLength,
    /// A first fragment's UDP length < the UDP bytes it carries.
    UdpLengthFirstFragment,
    TcpDataOffset,
    L4Checksum,
    Martian,
    DstMac,
}

impl Class {
    pub const ALL: [Class; 19] = [
        Class::Aborted,
        Class::UnknownAction,
        Class::Counters,
        Class::CounterAction,
        Class::PassModified,
        Class::Ethernet,
        Class::Ipv4Header,
        Class::Ipv4Length,
        Class::Ipv4Checksum,
        Class::Ttl,
        Class::Ipv6Length,
        Class::Ipv6ExtChain,
        Class::FragmentEnd,
        Class::UdpLength,
        Class::UdpLengthFirstFragment,
        Class::TcpDataOffset,
        Class::L4Checksum,
        Class::Martian,
        Class::DstMac,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Aborted => "aborted",
            Class::UnknownAction => "unknown_action",
            Class::Counters => "counters",
            Class::CounterAction => "counter_action",
            Class::PassModified => "pass_modified",
            Class::Ethernet => "ethernet",
            Class::Ipv4Header => "ipv4_header",
            Class::Ipv4Length => "ipv4_length",
            Class::Ipv4Checksum => "ipv4_checksum",
            Class::Ttl => "ttl",
            Class::Ipv6Length => "ipv6_length",
            Class::Ipv6ExtChain => "ipv6_ext_chain",
            Class::FragmentEnd => "fragment_end",
            Class::UdpLength => "udp_length",
            Class::UdpLengthFirstFragment => "udp_length_first_fragment",
            Class::TcpDataOffset => "tcp_data_offset",
            Class::L4Checksum => "l4_checksum",
            Class::Martian => "martian",
            Class::DstMac => "dst_mac",
        }
    }

    pub fn by_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub type Found = Vec<(Class, String)>;

/// What one run of the program did to one frame.
pub struct Run<'a> {
    pub input: &'a [u8],
    pub side: Side,
    pub action: u32,
    pub output: &'a [u8],
    /// Per-counter growth (after − before).
    pub deltas: &'a [i128],
}

pub fn action_name(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "?",
    }
}

/// Every invariant `run` breaks.
pub fn check(run: &Run) -> Found {
    let mut found = Found::new();
    match run.action {
        0 => found.push((Class::Aborted, "XDP_ABORTED".into())),
        XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT => {}
        a => found.push((Class::UnknownAction, format!("action {a}"))),
    }
    counters(run, &mut found);
    if run.action == XDP_PASS && run.output != run.input {
        let at = run
            .input
            .iter()
            .zip(run.output)
            .position(|(a, b)| a != b)
            .unwrap_or(run.input.len().min(run.output.len()));
        found.push((
            Class::PassModified,
            format!(
                "XDP_PASS changed the frame: first at byte {at} (lengths {} → {})",
                run.input.len(),
                run.output.len()
            ),
        ));
    }
    if matches!(run.action, XDP_TX | XDP_REDIRECT) {
        forwarded_input(run, &mut found);
        forwarded_output(run, &mut found);
    }
    found
}

fn counters(run: &Run, found: &mut Found) {
    let grown: Vec<(usize, i128)> = run
        .deltas
        .iter()
        .enumerate()
        .filter(|(_, d)| **d != 0)
        .map(|(i, d)| (i, *d))
        .collect();
    let label = |i: usize| {
        counter::LABELS
            .get(i)
            .map_or("?".to_string(), |(a, r)| format!("{a}/{r}"))
    };
    match grown.as_slice() {
        [(i, 1)] => {
            let want = match run.action {
                XDP_PASS => "pass",
                XDP_DROP => "drop",
                XDP_TX | XDP_REDIRECT => "redirect",
                _ => return,
            };
            if counter::LABELS.get(*i).map(|l| l.0) != Some(want) {
                found.push((
                    Class::CounterAction,
                    format!("{} counted as {}", action_name(run.action), label(*i)),
                ));
            }
        }
        _ => {
            let list: Vec<String> = grown
                .iter()
                .map(|(i, d)| format!("{} {d:+}", label(*i)))
                .collect();
            found.push((
                Class::Counters,
                format!(
                    "counter deltas [{}] (sum {:+}), want exactly one +1",
                    list.join(", "),
                    run.deltas.iter().sum::<i128>()
                ),
            ));
        }
    }
}

pub fn martian(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 0 || o[0] == 127 || o[0] >= 224 || a == VIP4 || BACKENDS4.contains(&a)
        }
        IpAddr::V6(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.octets()[0] == 0xff
                || a == VIP6
                || BACKENDS6.contains(&a)
        }
    }
}

/// What the input of a forwarded frame must have been: to our MAC, from no martian client.
fn forwarded_input(run: &Run, found: &mut Found) {
    let ours = match run.side {
        Side::Ext => EXT_MAC,
        Side::Int => INT_MAC,
    };
    let dmac = &run.input[..6.min(run.input.len())];
    if dmac != ours {
        let what = if dmac == [0xff; 6] {
            "broadcast"
        } else if dmac.first().is_some_and(|b| b & 1 != 0) {
            "multicast"
        } else {
            "another host's"
        };
        found.push((
            Class::DstMac,
            format!(
                "forwarded a frame to {what} MAC {} arriving on {:?}",
                super::frame::hex(dmac),
                run.side
            ),
        ));
    }
    let Some((src, dst)) = Layout::of(run.input).addrs() else {
        return;
    };
    let client = if dst == IpAddr::from(VIP4) || dst == IpAddr::from(VIP6) {
        ("source", src)
    } else {
        ("destination", dst)
    };
    if martian(client.1) {
        found.push((
            Class::Martian,
            format!(
                "forwarded a frame whose client ({}) is {}",
                client.0, client.1
            ),
        ));
    }
}

fn forwarded_output(run: &Run, found: &mut Found) {
    let f = run.output;
    let Some(ether_type) = be16(f, 12) else {
        found.push((Class::Ethernet, format!("{} bytes", f.len())));
        return;
    };
    let layout = Layout::of(f);
    let well_formed = match (ether_type, &layout.ip) {
        (ETHERTYPE_IPV4, Ip::V4(h)) => {
            let room = f.len() - ETH_LEN;
            let mut ok = true;
            if f[ETH_LEN] >> 4 != 4 || h.ihl < 20 || h.ihl > room || h.total_len < h.ihl {
                found.push((
                    Class::Ipv4Header,
                    format!(
                        "version/IHL byte {:#04x}, total length {}",
                        f[ETH_LEN], h.total_len
                    ),
                ));
                return;
            }
            if h.total_len != room {
                found.push((
                    Class::Ipv4Length,
                    format!(
                        "total length {} but {room} bytes after Ethernet",
                        h.total_len
                    ),
                ));
                ok = false;
            }
            if !ipv4_checksum_ok(f, ETH_LEN, h.ihl) {
                found.push((Class::Ipv4Checksum, "IPv4 header checksum wrong".into()));
            }
            if h.ttl == 0 {
                found.push((Class::Ttl, "TTL 0".into()));
            }
            let reassembled = usize::from(h.offset) * 8 + h.total_len;
            if reassembled > 65_535 {
                found.push((
                    Class::FragmentEnd,
                    format!(
                        "fragment at {} + total length {} = {reassembled} > 65,535",
                        usize::from(h.offset) * 8,
                        h.total_len
                    ),
                ));
            }
            ok
        }
        (ETHERTYPE_IPV6, Ip::V6(h)) => {
            if f[ETH_LEN] >> 4 != 6 {
                found.push((
                    Class::Ethernet,
                    format!("IPv6 EtherType, version byte {:#04x}", f[ETH_LEN]),
                ));
                return;
            }
            let room = f.len() - ETH_LEN - IP6_LEN;
            let mut ok = true;
            if h.payload_len != room {
                found.push((
                    Class::Ipv6Length,
                    format!(
                        "payload length {} but {room} bytes after the IPv6 header",
                        h.payload_len
                    ),
                ));
                ok = false;
            }
            if h.hop_limit == 0 {
                found.push((Class::Ttl, "hop limit 0".into()));
            }
            if h.chain_overrun {
                found.push((
                    Class::Ipv6ExtChain,
                    "an extension header runs past the payload".into(),
                ));
                ok = false;
            }
            if let Some((at, offset, _)) = h.frag {
                // RFC 8200 §4.5: per-fragment headers + offset + fragment data.
                let unfragmentable = at - ETH_LEN - IP6_LEN;
                let data = (ETH_LEN + IP6_LEN + h.payload_len).saturating_sub(at + 8);
                let reassembled = unfragmentable + usize::from(offset) * 8 + data;
                if reassembled > 65_535 {
                    found.push((
                        Class::FragmentEnd,
                        format!("reassembled payload length {reassembled} > 65,535"),
                    ));
                }
            }
            ok
        }
        _ => {
            found.push((
                Class::Ethernet,
                format!(
                    "EtherType {ether_type:#06x}, {} bytes: not a whole IP header",
                    f.len()
                ),
            ));
            return;
        }
    };
    transport(run, &layout, well_formed, found);
}

fn transport(run: &Run, layout: &Layout, well_formed: bool, found: &mut Found) {
    let f = run.output;
    let Some(t) = layout.transport(f) else { return };
    let len = t.end - t.start;
    match t.proto {
        PROTO_UDP => {
            let udp_len = be16(f, t.start + 4).map(usize::from);
            match udp_len {
                None => found.push((
                    Class::UdpLength,
                    format!("{len} bytes of UDP: no room for the header"),
                )),
                Some(u) if t.whole && u != len => found.push((
                    Class::UdpLength,
                    format!("UDP length {u}, IP payload {len}"),
                )),
                Some(u) if !t.whole && (u < 8 || u < len) => found.push((
                    Class::UdpLengthFirstFragment,
                    format!("first fragment: UDP length {u} < the {len} bytes it carries"),
                )),
                _ => {}
            }
        }
        PROTO_TCP => {
            let doff = f.get(t.start + 12).map(|b| usize::from(b >> 4) * 4);
            // A whole segment holds its header; so does an IPv6 first fragment (RFC 7112 §5:
            // the whole header chain, upper-layer header included). An IPv4 first fragment
            // may leave TCP options to the next one.
            let within = t.whole || matches!(layout.ip, Ip::V6(_));
            match doff {
                Some(d) if d >= 20 && len >= 20 && (d <= len || !within) => {}
                _ => found.push((
                    Class::TcpDataOffset,
                    format!(
                        "TCP data offset {} bytes in a {len}-byte segment",
                        doff.map_or("?".into(), |d| d.to_string())
                    ),
                )),
            }
        }
        _ => {}
    }
    // The checksum is compared only on a frame whose lengths hold (else the coverage is
    // ambiguous, and the length violation is reported already).
    if well_formed
        && l4_checksum_ok(run.input, &Layout::of(run.input)) == Some(true)
        && l4_checksum_ok(f, layout) == Some(false)
    {
        found.push((
            Class::L4Checksum,
            format!(
                "protocol {} checksum wrong (the input's was right)",
                t.proto
            ),
        ));
    }
}
