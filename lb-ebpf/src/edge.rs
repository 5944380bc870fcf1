//! Where a frame came from and where the kernel would send one: the interface roles
//! (`INGRESS`), the kernel FIB (`bpf_fib_lookup`, ≈ 115 ns, so only off the per-packet path:
//! when a client's frames move to another MAC or interface, and for a backend's reply to a
//! client that has no entry) and the new-client ration (`QUOTA`).

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{INGRESS_PORT_MASK, INGRESS_SLOTS, QUOTA_WINDOW_SHIFT};

use crate::maps::{self, IFINDEX_PORTS, INGRESS, QUOTA};

/// Port recorded for a client whose ingress interface is not ours (the daemon lists every
/// interface it attaches to, so only a misconfiguration gets here): its replies are dropped as
/// `bad_backend` rather than sent out of a guessed interface.
pub const PORT_UNKNOWN: u8 = u8::MAX;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `port | INGRESS_F_*` of interface `ifindex`, 0 when ikelb is not attached to it.
#[inline(always)]
pub fn iface_info(ifindex: u32) -> u32 {
    if ifindex < INGRESS_SLOTS {
        return INGRESS.get(ifindex).copied().unwrap_or(0);
    }
    // SAFETY: plain-old-data value read once.
    unsafe { IFINDEX_PORTS.get(&ifindex) }.copied().unwrap_or(0)
}

/// The persistence port of an `iface_info` value.
#[inline(always)]
pub fn port_of(info: u32) -> u8 {
    if info == 0 {
        PORT_UNKNOWN
    } else {
        (info & INGRESS_PORT_MASK) as u8
    }
}

/// The kernel's route toward `dst` for a packet from `src` that arrived on `ifindex`.
pub struct Route {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// An address of either family, as the FIB wants it.
pub enum Addr<'a> {
    V4(u32),
    V6(&'a [u32; 4]),
}

/// What the kernel FIB says of a destination.
pub enum Fib {
    /// Forwarded: out of this interface to this neighbour.
    Route(Route),
    /// Not forwarded (`BPF_FIB_LKUP_RET_NOT_FWDED`): a local address of the gateway, or no
    /// route at all — the kernel delivers it or drops it, never forwards it.
    NotForwarded,
    /// No usable route or no resolved neighbour.
    Unreachable,
}

/// The FIB's answer for `dst` (see [`Fib`]): a forwarding lookup (`bpf_fib_lookup`, the route
/// and the neighbour entry) as for a packet from `src` that arrived on `ifindex`.
#[inline(always)]
pub fn lookup(ctx: &XdpContext, src: Addr, dst: Addr, ifindex: u32) -> Fib {
    // SAFETY: an all-integer C struct; zero is its "nothing set" value.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.ifindex = ifindex;
    match (src, dst) {
        (Addr::V4(s), Addr::V4(d)) => {
            p.family = AF_INET;
            p.__bindgen_anon_3.ipv4_src = s;
            p.__bindgen_anon_4.ipv4_dst = d;
        }
        (Addr::V6(s), Addr::V6(d)) => {
            p.family = AF_INET6;
            p.__bindgen_anon_3.ipv6_src = *s;
            p.__bindgen_anon_4.ipv6_dst = *d;
        }
        _ => return Fib::Unreachable,
    }
    // SAFETY: the helper reads and writes `p` only (size passed), `ctx.ctx` is the program's.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if ret == i64::from(BPF_FIB_LKUP_RET_NOT_FWDED) {
        return Fib::NotForwarded;
    }
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Fib::Unreachable;
    }
    // SAFETY: a successful lookup fills the union's MAC pair (its other member, `mark`, is
    // an input only for BPF_FIB_LOOKUP_MARK, which is not set).
    let macs = unsafe { p.__bindgen_anon_6.__bindgen_anon_2 };
    Fib::Route(Route {
        ifindex: p.ifindex,
        smac: macs.smac,
        dmac: macs.dmac,
    })
}

/// Whether the kernel would send a packet for `client` out of `ifindex` to `mac`: the evidence
/// a client's frames need before its entry learns a new MAC or interface (a spoofed frame
/// from another segment, or from a neighbour that is not the client's route, fails it).
#[inline(always)]
pub fn confirms(ctx: &XdpContext, vip: Addr, client: Addr, ifindex: u32, mac: &[u8; 6]) -> bool {
    match lookup(ctx, vip, client, ifindex) {
        Fib::Route(r) => r.ifindex == ifindex && r.dmac == *mac,
        _ => false,
    }
}

/// Whether this CPU's ration has an insert left in the current window (without taking it).
#[inline(always)]
pub fn quota_left(now_ns: u64) -> bool {
    let quota = maps::new_client_quota();
    if quota == 0 {
        return true;
    }
    match QUOTA.get_ptr(0) {
        // SAFETY: this CPU's slot.
        Some(q) => unsafe {
            (*q).window != (now_ns >> QUOTA_WINDOW_SHIFT) as u32 || (*q).used < quota
        },
        None => false,
    }
}

/// Takes one new-client insert from this CPU's ration (`NEW_CLIENT_QUOTA` per window of
/// 2^`QUOTA_WINDOW_SHIFT` ns; 0 = unlimited). Per CPU, so no atomics and no shared line.
#[inline(always)]
pub fn take_quota(now_ns: u64) -> bool {
    let quota = maps::new_client_quota();
    if quota == 0 {
        return true;
    }
    let window = (now_ns >> QUOTA_WINDOW_SHIFT) as u32;
    let Some(q) = QUOTA.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; XDP runs with preemption disabled.
    unsafe {
        if (*q).window != window {
            (*q).window = window;
            (*q).used = 0;
        }
        if (*q).used >= quota {
            return false;
        }
        (*q).used += 1;
    }
    true
}
