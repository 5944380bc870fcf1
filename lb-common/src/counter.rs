//! Indices of [`maps::COUNTERS`](crate::maps::COUNTERS): every verdict the program returns
//! is counted under exactly one of these, named `(action, reason)` for
//! `ikelb_xdp_packets_total{action,reason}`.

/// Client → backend, rewritten and redirected (or XDP_TX).
pub const FORWARD: u32 = 0;
/// Backend → client, rewritten and redirected (or XDP_TX).
pub const REVERSE: u32 = 1;
/// Not IPv4/IPv6 (ARP, LLDP, …): the kernel's business.
pub const PASS_NOT_IP: u32 = 2;
/// 802.1Q/802.1ad tagged: ikelb does not parse VLANs; the kernel may.
pub const PASS_VLAN: u32 = 3;
/// Not addressed to a VIP and not a reply of a backend to one of its clients.
pub const PASS_NOT_VIP: u32 = 4;
/// Addressed to a VIP but not a protocol/port in its persistency group.
pub const PASS_NOT_SERVICE_PORT: u32 = 5;
/// TTL / hop limit ≤ 1: the kernel sends ICMP time exceeded.
pub const PASS_TTL: u32 = 6;
/// IPv4 options (IPv6 extension headers have their own counter, [`PASS_IPV6_EXT`]).
pub const PASS_IP_OPTIONS: u32 = 7;
/// From a backend but not to a client the forward path recorded for it (e.g. to the
/// gateway itself, health check replies).
pub const PASS_NOT_CLIENT: u32 = 8;
/// A frame cut short or inconsistent (Ethernet/IP/L4 header truncated, IHL < 5, total
/// length beyond the frame).
pub const DROP_MALFORMED: u32 = 9;
/// To a VIP whose service has no usable backend.
pub const DROP_NO_BACKEND: u32 = 10;
/// A backend id whose entry is missing or whose egress port has no interface.
pub const DROP_BAD_BACKEND: u32 = 11;
/// The persistence map refused an insert (logged; the packet is still forwarded).
pub const FORWARD_PERSIST_FULL: u32 = 12;
/// Retired: IPv6 passed unchanged before the data path handled IPv6. Never bumped now;
/// kept so the indices after it do not move.
pub const PASS_IPV6: u32 = 13;
/// ICMPv6 right after the IPv6 header (neighbour discovery, echo, errors): the kernel's,
/// recognised before any map lookup so NDP is never touched.
pub const PASS_ICMPV6: u32 = 14;
/// An IPv6 extension header ikelb does not walk (AH, a Routing header with segments
/// left, an unknown header, a chain longer than the program follows, a fragment — first
/// or not — whose fragmentable part starts with another extension header).
pub const PASS_IPV6_EXT: u32 = 15;
/// A backend's service-port or ESP traffic to an address that is not its live client
/// (no entry and the ring names another backend, an entry naming another backend, an
/// idle entry): dropped, never leaked with the backend's internal source address.
pub const DROP_REVERSE_NOT_CLIENT: u32 = 16;
/// A frame with a backend's source address that did not arrive on that backend's
/// interface.
pub const DROP_REVERSE_WRONG_IFACE: u32 = 17;
/// A frame with a backend's source address from another MAC than the backend's (or its
/// next hop's).
pub const DROP_REVERSE_WRONG_MAC: u32 = 18;
/// Traffic to a VIP on an interface without the `clients` role.
pub const DROP_NOT_CLIENT_IFACE: u32 = 19;
/// An ICMP fragmentation-needed / ICMPv6 packet-too-big about a client's flow, sent on to
/// that client's backend (path MTU discovery through ikelb).
pub const FORWARD_ICMP: u32 = 20;
/// A TCP fragment at offset 1 (8 bytes): could rewrite the TCP flags of the first one
/// (RFC 1858 §3.2); never legitimate.
pub const DROP_FRAGMENT_OFFSET: u32 = 21;
/// A reply to a client without a persistence entry (validated by the ring) whose route
/// back the kernel FIB could not give (`bpf_fib_lookup`).
pub const DROP_NO_ROUTE: u32 = 22;
/// An IPv4 header (without options) whose checksum is wrong (RFC 1812 §5.2.2).
pub const DROP_IP_CHECKSUM: u32 = 23;
/// A frame to a VIP, or a backend's reply, sent to a broadcast or multicast MAC (RFC 1812
/// §5.3.4: a router does not forward what arrived as a link-layer broadcast).
pub const DROP_DST_MAC_GROUP: u32 = 24;
/// A frame to a VIP, or a backend's reply, sent to another MAC than the receiving
/// interface's (another host's frame, seen through promiscuous mode or a flooding switch).
pub const DROP_DST_MAC_OTHER: u32 = 25;
/// From an address that is no host's (RFC 1812 §5.3.7, RFC 6890): IPv4 0/8 (but 0.0.0.0)
/// and 240/4 (but 255.255.255.255); IPv6 IPv4-mapped ::ffff:0:0/96 and link-local
/// fe80::/10 (RFC 4291 §2.5.5.2, §2.5.6: never forwarded off its link).
pub const DROP_SOURCE_MARTIAN: u32 = 26;
/// From a multicast or broadcast address: IPv4 224/4 and 255.255.255.255, IPv6 ff00::/8
/// (RFC 1812 §5.3.7, RFC 4291 §2.7).
pub const DROP_SOURCE_MULTICAST: u32 = 27;
/// From a loopback address: 127/8, ::1.
pub const DROP_SOURCE_LOOPBACK: u32 = 28;
/// From the unspecified address: 0.0.0.0, :: (RFC 4291 §2.5.2: never forwarded).
pub const DROP_SOURCE_UNSPECIFIED: u32 = 29;
/// To a VIP from that VIP.
pub const DROP_SOURCE_VIP: u32 = 30;
/// To a VIP from a backend's address (`BACKEND_IDS_V4/V6`): never a client.
pub const DROP_SOURCE_BACKEND: u32 = 31;
/// To a VIP from one of the gateway's own addresses ([`crate::OWN_ADDRESS_ID`] in
/// `BACKEND_IDS_V4/V6`).
pub const DROP_SOURCE_OWN: u32 = 32;
/// A UDP length that disagrees with the IP payload: shorter than what the packet (or
/// first fragment) carries, or, for a whole datagram, not equal to it (RFC 768).
pub const DROP_UDP_LENGTH: u32 = 33;
/// A TCP data offset below 5 words or past the segment (RFC 9293 §3.1).
pub const DROP_TCP_DATA_OFFSET: u32 = 34;
/// A fragment whose datagram would end past 65,535 bytes (RFC 791 §3.1, RFC 8200 §4.5).
pub const DROP_FRAGMENT_END: u32 = 35;
/// A frame with a backend's source address, on that backend's interface, but the
/// interface has no `backends` role (the backend is routed out of a clients interface).
pub const DROP_REVERSE_NOT_BACKEND_IFACE: u32 = 36;
/// Number of counters (size of `COUNTERS`).
pub const COUNT: u32 = 37;

/// `(action, reason)` label pair of each counter, indexed like the counters.
pub const LABELS: [(&str, &str); COUNT as usize] = [
    ("redirect", "forward"),
    ("redirect", "reverse"),
    ("pass", "not_ip"),
    ("pass", "vlan"),
    ("pass", "not_vip"),
    ("pass", "not_service_port"),
    ("pass", "ttl_exceeded"),
    ("pass", "ip_options"),
    ("pass", "not_client"),
    ("drop", "malformed"),
    ("drop", "no_backend"),
    ("drop", "bad_backend"),
    ("redirect", "persist_full"),
    ("pass", "ipv6"),
    ("pass", "icmpv6"),
    ("pass", "ipv6_ext_header"),
    ("drop", "reverse_not_client"),
    ("drop", "reverse_wrong_interface"),
    ("drop", "reverse_wrong_mac"),
    ("drop", "not_client_interface"),
    ("redirect", "icmp"),
    ("drop", "fragment_offset_1"),
    ("drop", "no_route"),
    ("drop", "ip_checksum"),
    ("drop", "dst_mac_group"),
    ("drop", "dst_mac_other_host"),
    ("drop", "source_martian"),
    ("drop", "source_multicast"),
    ("drop", "source_loopback"),
    ("drop", "source_unspecified"),
    ("drop", "source_vip"),
    ("drop", "source_backend"),
    ("drop", "source_own_address"),
    ("drop", "udp_length"),
    ("drop", "tcp_data_offset"),
    ("drop", "fragment_past_65535"),
    ("drop", "reverse_not_backend_interface"),
];
