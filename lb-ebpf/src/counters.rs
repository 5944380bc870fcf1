//! Verdicts and the counters they are recorded under.
//!
//! Every packet ends in exactly one [`Verdict`]: an XDP action and the `lb_common::counter`
//! index that counts it (cilium's `DROP_*` + `update_metrics`). Pass and drop verdicts travel
//! as the `Err` of the data path's `Result` and are recorded by the entry point; forwarded
//! packets are recorded where the redirect succeeds, with their backend's traffic.

use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};
use lb_common::{counter, Traffic};

use crate::maps::{BACKEND_STATS, COUNTERS, EVENTS};

/// An XDP action and the counter that records it.
#[derive(Clone, Copy)]
pub struct Verdict {
    action: u32,
    counter: u32,
}

impl Verdict {
    const fn pass(counter: u32) -> Self {
        Self {
            action: XDP_PASS,
            counter,
        }
    }

    const fn drop(counter: u32) -> Self {
        Self {
            action: XDP_DROP,
            counter,
        }
    }

    /// Counts the verdict and returns its action (the entry point's `unwrap_or_else`).
    #[inline(always)]
    pub fn record(self) -> u32 {
        count(self.counter);
        self.action
    }
}

pub const PASS_NOT_IP: Verdict = Verdict::pass(counter::PASS_NOT_IP);
pub const PASS_VLAN: Verdict = Verdict::pass(counter::PASS_VLAN);
pub const PASS_ICMPV6: Verdict = Verdict::pass(counter::PASS_ICMPV6);
pub const PASS_IPV6_EXT: Verdict = Verdict::pass(counter::PASS_IPV6_EXT);
pub const PASS_NOT_VIP: Verdict = Verdict::pass(counter::PASS_NOT_VIP);
pub const PASS_NOT_SERVICE_PORT: Verdict = Verdict::pass(counter::PASS_NOT_SERVICE_PORT);
pub const PASS_TTL: Verdict = Verdict::pass(counter::PASS_TTL);
pub const PASS_IP_OPTIONS: Verdict = Verdict::pass(counter::PASS_IP_OPTIONS);
pub const PASS_NOT_CLIENT: Verdict = Verdict::pass(counter::PASS_NOT_CLIENT);
pub const DROP_MALFORMED: Verdict = Verdict::drop(counter::DROP_MALFORMED);
pub const DROP_NO_BACKEND: Verdict = Verdict::drop(counter::DROP_NO_BACKEND);
pub const DROP_BAD_BACKEND: Verdict = Verdict::drop(counter::DROP_BAD_BACKEND);
pub const DROP_REVERSE_NOT_CLIENT: Verdict = Verdict::drop(counter::DROP_REVERSE_NOT_CLIENT);
pub const DROP_REVERSE_WRONG_IFACE: Verdict = Verdict::drop(counter::DROP_REVERSE_WRONG_IFACE);
pub const DROP_REVERSE_WRONG_MAC: Verdict = Verdict::drop(counter::DROP_REVERSE_WRONG_MAC);
pub const DROP_NOT_CLIENT_IFACE: Verdict = Verdict::drop(counter::DROP_NOT_CLIENT_IFACE);
pub const DROP_FRAGMENT_OFFSET: Verdict = Verdict::drop(counter::DROP_FRAGMENT_OFFSET);
pub const DROP_NO_ROUTE: Verdict = Verdict::drop(counter::DROP_NO_ROUTE);
pub const DROP_IP_CHECKSUM: Verdict = Verdict::drop(counter::DROP_IP_CHECKSUM);
pub const DROP_DST_MAC_GROUP: Verdict = Verdict::drop(counter::DROP_DST_MAC_GROUP);
pub const DROP_DST_MAC_OTHER: Verdict = Verdict::drop(counter::DROP_DST_MAC_OTHER);
pub const DROP_SOURCE_MARTIAN: Verdict = Verdict::drop(counter::DROP_SOURCE_MARTIAN);
pub const DROP_SOURCE_MULTICAST: Verdict = Verdict::drop(counter::DROP_SOURCE_MULTICAST);
pub const DROP_SOURCE_LOOPBACK: Verdict = Verdict::drop(counter::DROP_SOURCE_LOOPBACK);
pub const DROP_SOURCE_UNSPECIFIED: Verdict = Verdict::drop(counter::DROP_SOURCE_UNSPECIFIED);
pub const DROP_SOURCE_VIP: Verdict = Verdict::drop(counter::DROP_SOURCE_VIP);
pub const DROP_SOURCE_BACKEND: Verdict = Verdict::drop(counter::DROP_SOURCE_BACKEND);
pub const DROP_SOURCE_OWN: Verdict = Verdict::drop(counter::DROP_SOURCE_OWN);
pub const DROP_UDP_LENGTH: Verdict = Verdict::drop(counter::DROP_UDP_LENGTH);
pub const DROP_TCP_DATA_OFFSET: Verdict = Verdict::drop(counter::DROP_TCP_DATA_OFFSET);
pub const DROP_FRAGMENT_END: Verdict = Verdict::drop(counter::DROP_FRAGMENT_END);
pub const DROP_REVERSE_NOT_BACKEND_IFACE: Verdict =
    Verdict::drop(counter::DROP_REVERSE_NOT_BACKEND_IFACE);

/// Bumps one per-CPU counter (no atomics needed: the slot is this CPU's).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a valid per-CPU slot; XDP runs with preemption disabled.
        unsafe { *c += 1 };
    }
}

/// Bumps one per-CPU event counter (`lb_common::event`).
#[inline(always)]
pub fn event(index: u32) {
    if let Some(c) = EVENTS.get_ptr_mut(index) {
        // SAFETY: as in `count`.
        unsafe { *c += 1 };
    }
}

/// Records a forwarded packet: `counter` (`FORWARD`, `REVERSE`, `FORWARD_ICMP` or
/// `FORWARD_PERSIST_FULL`)
/// and the backend's traffic in direction `dir`.
#[inline(always)]
pub fn forwarded(counter: u32, backend: u32, dir: u32, bytes: u64) {
    count(counter);
    if let Some(t) = BACKEND_STATS.get_ptr_mut(backend * 2 + dir) {
        // SAFETY: as in `count`.
        unsafe {
            let t: &mut Traffic = &mut *t;
            t.packets += 1;
            t.bytes += bytes;
        }
    }
}
