//! Indices of [`maps::EVENTS`](crate::maps::EVENTS): things the data path did along the way
//! of a verdict (not verdicts: a packet may count under none or several), for
//! `ikelb_xdp_events_total{event}`.

/// A bulk packet sent by the slot fast path, without a persistence lookup.
pub const FAST_PATH: u32 = 0;
/// A probation entry created for a new client.
pub const PROBATION_INSERT: u32 = 1;
/// A new client not given a probation entry: this CPU's `NEW_CLIENT_QUOTA` was used up
/// (a flood of new sources). The packet still follows the ring.
pub const PROBATION_THROTTLED: u32 = 2;
/// A probation entry promoted to the persistence map (the client echoed the proof).
pub const PROMOTED: u32 = 3;
/// A mid-session packet (IKE with a responder SPI, ESP) of a client without any entry:
/// its entry was evicted, or it began before a restart or on another node.
pub const LOST: u32 = 4;
/// A client's frames came from a new MAC or interface, and the FIB confirmed the client
/// is reached that way: the entry learned it.
pub const MAC_MOVE_ACCEPTED: u32 = 5;
/// As above, but the FIB disagreed (a spoofed frame, or a client reached otherwise): the
/// entry kept its MAC and interface.
pub const MAC_MOVE_REJECTED: u32 = 6;
/// A backend's reply to a client without an entry, validated by the ring and routed by
/// `bpf_fib_lookup`.
pub const REVERSE_STATELESS: u32 = 7;
/// A forwarded frame carried bytes past its IP datagram (Ethernet padding, a link-layer
/// trailer): they were cut off (`bpf_xdp_adjust_tail`) before it left, as a Linux router
/// trims them (`docs/security.md`, "What a router checks").
pub const TRIMMED: u32 = 8;
/// A packet of an IKE or ESP SA established through this node came from an address without
/// any entry (the client moved: MOBIKE, a NAT rebinding) and went to that SA's backend, which
/// the address's new probation entry names (`SA_STEERING`).
pub const SA_STEERED: u32 = 9;
/// Number of events (size of `EVENTS`).
pub const COUNT: u32 = 10;
/// The `event` label of each index.
pub const LABELS: [&str; COUNT as usize] = [
    "fast_path",
    "probation_insert",
    "probation_throttled",
    "promoted",
    "lost",
    "mac_move_accepted",
    "mac_move_rejected",
    "reverse_stateless",
    "trimmed",
    "sa_steered",
];
