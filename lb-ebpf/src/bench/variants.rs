//! Attribution: `ikelb`'s IPv4 forward path (`flow::forward` + `select::forward`),
//! copied step for step with one step taken out at a time, each as a stamp + variant program.
//! `bench_v_full` takes nothing out and must cost what `bench_stamp_lb` costs on the forward
//! path (the harness prints both, so a drift of this copy from the real code shows).
//!
//! Cost of a step = cost(full) − cost(variant without it). The variants exist to measure;
//! none of them is a correct load balancer.
//!
//! **What the copy covers: the hit path of an established client** (a `PERSIST_V4` entry,
//! usable and live), with `SLOT_FAST_PATH` off — the case the harness measures it on (every
//! client has an entry). That path is the same since the two-tier persistence (56e103b):
//! ingress role, VIP, classify, persistence lookup, atime, the MAC/port comparison, rewrite,
//! redirect, counters. The rest is **not** copied and is the design before it: a miss
//! inserts straight into `PERSIST_V4` (no probation map, no `NEW_CLIENT_QUOTA` ration, no
//! FIB check before a MAC move, no `REFRESHED_V4` tag, no `VIP_INDEX_V4`), the ICMP and
//! TCP-fragment checks of `flow::forward` are left out. The new-client path is measured on the real program (rows
//! `miss*`, `spoofed_init*`), and so is the lever.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_TX},
    helpers::bpf_ktime_get_coarse_ns,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    counter, hash::client_hash_v4, PersistKeyV4, PersistValue, Service, BACKEND_F_USABLE,
    BACKEND_NONE, DIR_FORWARD, INGRESS_F_CLIENTS, RING_BACKEND_MASK, TICK_SHIFT,
};
use network_types::eth::EthHdr;

use crate::{
    counters::{
        self, Verdict, DROP_BAD_BACKEND, DROP_NOT_CLIENT_IFACE, DROP_NO_BACKEND, PASS_IP_OPTIONS,
        PASS_NOT_SERVICE_PORT, PASS_NOT_VIP, PASS_TTL,
    },
    edge,
    family::V4,
    l4,
    maps::{self, PERSIST_V4, RINGS, SERVICES, VIPS_V4},
    parse::{self, load_mac, ptr_at, store_mac, Side, L3},
    rewrite, sanity, select,
};

/// Steps a variant leaves out.
const NO_VIP: u32 = 1 << 0;
const NO_PERSIST: u32 = 1 << 1;
const NO_TIME: u32 = 1 << 2;
const NO_COUNT: u32 = 1 << 3;
const NO_REWRITE: u32 = 1 << 4;
const NO_REDIRECT: u32 = 1 << 5;

#[inline(always)]
fn has(skip: u32, step: u32) -> bool {
    skip & step != 0
}

#[inline(always)]
fn run<const SKIP: u32>(ctx: &XdpContext) -> u32 {
    if super::stamp(ctx).is_none() {
        return XDP_ABORTED;
    }
    match try_fwd::<SKIP>(ctx) {
        Ok(a) => a,
        Err(v) => v.record(),
    }
}

#[inline(always)]
fn try_fwd<const SKIP: u32>(ctx: &XdpContext) -> Result<u32, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let L3::V4(ip) = parse::l3(ctx, eth)? else {
        return Err(PASS_NOT_VIP);
    };
    let svc: &Service = if has(SKIP, NO_VIP) {
        // SAFETY: a plain-old-data array value, read-only.
        unsafe { &*SERVICES.get_ptr(0).ok_or(PASS_NOT_VIP)? }
    } else {
        // SAFETY: as above, hash map value.
        unsafe { VIPS_V4.get(&parse::daddr(ip)) }.ok_or(PASS_NOT_VIP)?
    };
    let ingress = edge::iface_info(ctx.ingress_ifindex() as u32);
    if ingress & INGRESS_F_CLIENTS == 0 {
        return Err(DROP_NOT_CLIENT_IFACE);
    }
    sanity::to_ingress(eth, ingress)?;
    if parse::has_options(ip) {
        return Err(PASS_IP_OPTIONS);
    }
    sanity::checksum_v4(ip)?;
    sanity::source_v4(parse::saddr(ip), svc.vip[0])?;
    let t = parse::transport_v4(ip, Side::Forward)?;
    let l4 = l4::classify(ctx, t, svc, Side::Forward, PASS_NOT_SERVICE_PORT)?;
    if parse::ttl(ip) <= 1 {
        return Err(PASS_TTL);
    }
    let (id, b) = select_fwd::<SKIP>(eth, svc, parse::saddr(ip), edge::port_of(ingress))?;
    // SAFETY: a pointer into the BACKENDS array map.
    let b = unsafe { &*b };
    let end = parse::end_v4(ip);
    if !has(SKIP, NO_REWRITE) {
        rewrite::forward::<V4>(eth, ip, l4, b, !maps::mode_dsr());
    }
    let action = if has(SKIP, NO_REDIRECT) {
        XDP_TX
    } else {
        rewrite::send(ctx, end, b.ifindex, b.tx_port)?
    };
    if !has(SKIP, NO_COUNT) {
        counters::forwarded(counter::FORWARD, id, DIR_FORWARD, parse::frame_len(ctx));
    }
    Ok(action)
}

#[inline(always)]
fn now<const SKIP: u32>() -> u32 {
    if has(SKIP, NO_TIME) {
        return 0;
    }
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } >> TICK_SHIFT) as u32
}

#[inline(always)]
fn ring_choice(svc: &Service, hash: u32) -> Result<u32, Verdict> {
    let m = maps::ring_size();
    if m == 0 {
        return Err(DROP_NO_BACKEND);
    }
    let slot = lb_common::hash::ring_slot(hash, m);
    match RINGS.get(svc.ring_base.wrapping_add(slot)) {
        Some(&s) => Ok(s),
        None => Ok(BACKEND_NONE),
    }
}

/// `select::forward` (IPv4, fast path off), step for step on the hit path, with
/// `NO_PERSIST` / `NO_TIME` removable; its miss branch is the pre-probation one (module docs).
#[inline(always)]
fn select_fwd<const SKIP: u32>(
    eth: *const EthHdr,
    svc: &Service,
    saddr: u32,
    port: u8,
) -> Result<(u32, *const lb_common::Backend), Verdict> {
    let hash = client_hash_v4(saddr, maps::hash_seed());
    let key = PersistKeyV4 {
        service: svc.id,
        client: saddr,
    };
    let now = now::<SKIP>();
    // SAFETY (entry accesses): see `select::forward`.
    let src_mac = unsafe { load_mac(&(*eth).src_addr) };
    let entry = if has(SKIP, NO_PERSIST) {
        None
    } else {
        PERSIST_V4.get_ptr_mut(&key)
    };
    if let Some(e) = entry {
        let id = unsafe { (*e).backend };
        if let Some(b) = select::backend(id) {
            let atime = unsafe { (*e).atime };
            let usable = unsafe { (*b).flags & BACKEND_F_USABLE != 0 && (*b).service == svc.id };
            let fresh =
                has(SKIP, NO_TIME) || now.wrapping_sub(atime) <= maps::persist_timeout_ticks();
            if usable && fresh {
                unsafe {
                    if !has(SKIP, NO_TIME) && atime != now {
                        (*e).atime = now;
                    }
                    // The real path asks the FIB before moving them (never, for these clients).
                    if load_mac(&(*e).client_mac) != src_mac || (*e).port != port {
                        store_mac(&mut (*e).client_mac, src_mac);
                        (*e).port = port;
                    }
                }
                return Ok((id, b));
            }
        }
    }
    let id = ring_choice(svc, hash)? & RING_BACKEND_MASK;
    if id == BACKEND_NONE {
        return Err(DROP_NO_BACKEND);
    }
    let b = select::backend(id).ok_or(DROP_BAD_BACKEND)?;
    if has(SKIP, NO_PERSIST) {
        return Ok((id, b));
    }
    let mut value = PersistValue {
        backend: id,
        atime: now,
        client_mac: [0; 6],
        port,
        flags: 0,
    };
    unsafe { store_mac(&mut value.client_mac, src_mac) };
    match entry {
        Some(e) => unsafe { *e = value },
        None => {
            let _ = PERSIST_V4.insert(&key, &value, 0);
        }
    }
    Ok((id, b))
}

#[xdp]
pub fn bench_v_full(ctx: XdpContext) -> u32 {
    run::<0>(&ctx)
}

#[xdp]
pub fn bench_v_novip(ctx: XdpContext) -> u32 {
    run::<NO_VIP>(&ctx)
}

#[xdp]
pub fn bench_v_nopers(ctx: XdpContext) -> u32 {
    run::<NO_PERSIST>(&ctx)
}

#[xdp]
pub fn bench_v_notime(ctx: XdpContext) -> u32 {
    run::<NO_TIME>(&ctx)
}

#[xdp]
pub fn bench_v_nocount(ctx: XdpContext) -> u32 {
    run::<NO_COUNT>(&ctx)
}

#[xdp]
pub fn bench_v_norewr(ctx: XdpContext) -> u32 {
    run::<NO_REWRITE>(&ctx)
}

#[xdp]
pub fn bench_v_noredir(ctx: XdpContext) -> u32 {
    run::<NO_REDIRECT>(&ctx)
}

/// Everything but parsing and the verdict: stamp + parse + VIP + classify, then XDP_TX.
#[xdp]
pub fn bench_v_parse(ctx: XdpContext) -> u32 {
    if super::stamp(&ctx).is_none() {
        return XDP_ABORTED;
    }
    let r = (|| -> Result<u32, Verdict> {
        let eth: *mut EthHdr = ptr_at(&ctx, 0)?;
        let L3::V4(ip) = parse::l3(&ctx, eth)? else {
            return Err(PASS_NOT_VIP);
        };
        // SAFETY: hash map value, read-only.
        let svc = unsafe { VIPS_V4.get(&parse::daddr(ip)) }.ok_or(PASS_NOT_VIP)?;
        let t = parse::transport_v4(ip, Side::Forward)?;
        l4::classify(&ctx, t, svc, Side::Forward, PASS_NOT_SERVICE_PORT)?;
        Ok(XDP_TX)
    })();
    r.unwrap_or_else(Verdict::record)
}
