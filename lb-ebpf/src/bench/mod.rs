//! Bench-only XDP programs (`cargo xtask bench`). They ship in the same object as `ikelb` so
//! the benchmark measures the very code the daemon loads; the daemon never loads them (a
//! program in an object costs nothing until it is loaded), and their maps are a few bytes.
//!
//! * [`bench_stamp`] rewrites the frame from a template (next client address from a per-CPU
//!   counter modulo the client count, the other address per mode, the counter as ESP
//!   sequence number, checksums fixed) and
//!   returns XDP_TX. Two uses: under `BPF_PROG_TEST_RUN` with `repeat` it is the reference
//!   the cost of `ikelb` is measured against; driven with `BPF_F_TEST_XDP_LIVE_FRAMES` it is
//!   the traffic generator of the closed loop (live-frame pages come back holding whatever
//!   the last stage wrote, so every header field is rewritten each time).
//! * [`bench_stamp_lb`]: the same stamp, then `ikelb`'s whole per-packet function. Its time
//!   minus [`bench_stamp`]'s is what `ikelb` costs per packet: with `repeat > 1` the kernel
//!   does not reset the frame, so without the stamp every run after the first would see the
//!   backend address `ikelb` wrote and take the pass-through branch.
//! * [`bench_stamp6`], [`bench_stamp_lb6`]: the same over IPv6 (template `BENCH_TEMPLATE6`,
//!   the counter written into the low word of the client address).
//! * [`bench_fwd`]: the physical limit of a forwarding path — MAC swap and a devmap
//!   redirect, nothing else. [`bench_fwd6`] is the IPv6 one: the same, plus the one test a
//!   forwarder of one family makes (EtherType IPv6; anything else to the kernel).
//! * [`bench_sink`]: counts and drops the generator's frames (IPv4 UDP to 500 or 4500); everything
//!   else (ARP, ICMP, the daemon's neighbour probes) goes to the kernel, so a backend address
//!   held by the sink answers ARP and pings. [`bench_sink6`]: the same for IPv6 UDP to 500 or
//!   4500 (neighbour discovery and ICMPv6 echo go to the kernel).
//! * [`variants`]: `ikelb`'s forward path with one step taken out at a time, to attribute its
//!   cost (measured, not guessed).
//!
//! Maps are named `BENCH_*`; the user side (`xtask/src/bench`) mirrors the layouts below.

mod variants;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::csum;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::parse::{load16, load32, load_mac, store16, store32, store_mac};

/// Bytes of a stamped header block: Ethernet + IPv4 (no options) + UDP.
pub const HEADERS: usize = EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN;
const _: () = assert!(HEADERS == 42);

/// Bytes of a stamped IPv6 header block: Ethernet + IPv6 (no extension header) + UDP.
pub const HEADERS6: usize = EthHdr::LEN + Ipv6Hdr::LEN + UdpHdr::LEN;
const _: () = assert!(HEADERS6 == 62);
/// Frame offsets of the low (last) 32-bit word of the IPv6 source and destination addresses:
/// the only words the IPv6 stamp writes (client `i` is the template's /96 prefix + `base + i`).
const SADDR6_LOW: usize = EthHdr::LEN + 8 + 12;
const DADDR6_LOW: usize = EthHdr::LEN + 24 + 12;

/// [`BenchCfg::mode`]: the client is the destination and the source is
/// `BENCH_REV[client index]` (a backend's reply to the client it serves). Any other mode (the
/// harness writes 0) makes the client the source: client → VIP, or to a non-VIP address.
pub const MODE_REVERSE: u32 = 1;

/// Value of [`BENCH_CFG`] (one entry). Written by the bench harness.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BenchCfg {
    /// [`MODE_REVERSE`], or 0 (forward).
    pub mode: u32,
    /// Number of distinct clients; the n-th stamped frame carries client `n % clients`.
    pub clients: u32,
    /// First client address, host order (client i is `base + i`).
    pub base: u32,
    pub _pad: u32,
}

/// Key 0: [`BenchCfg`].
#[map]
static BENCH_CFG: Array<BenchCfg> = Array::with_max_entries(1, 0);

/// Key 0: the header block stamped onto every frame (first [`HEADERS`] bytes, then the 8
/// payload bytes of an ESP header: SPI and the sequence number the checksum assumes). The
/// varying addresses are 0 in it and its checksums are computed that way, so the stamp only
/// adds the addresses in. Kept in a map, not in `.rodata`, so it cannot be constant-folded.
#[map]
static BENCH_TEMPLATE: Array<[u8; 64]> = Array::with_max_entries(1, 0);

/// Key 0: the IPv6 header block ([`HEADERS6`] bytes, then the 8 payload bytes as in
/// [`BENCH_TEMPLATE`]; 70 of the 72 bytes used). The low words of both addresses are 0 in it.
#[map]
static BENCH_TEMPLATE6: Array<[u8; 72]> = Array::with_max_entries(1, 0);

/// Key 0: frames stamped on this CPU (the client sequence).
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Key: client index. Value: the address (wire order) of the backend that client is
/// persisted to — the source of `MODE_REVERSE` frames; over IPv6 the low word of that
/// address (the template holds the backends' /96 prefix). Sized by the harness.
#[map]
static BENCH_REV: Array<u32> = Array::with_max_entries(1, 0);

/// Key 0: frames [`bench_sink`] dropped, per CPU.
#[map]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Key 0: where [`bench_fwd`] redirects.
#[map]
static BENCH_TX: DevMap = DevMap::with_max_entries(1, 0);

/// Stamps the next client's frame; `None` when the frame or a map is not what the harness
/// set up (the programs then abort, which the harness reports).
#[inline(always)]
fn stamp(ctx: &XdpContext) -> Option<()> {
    let cfg = BENCH_CFG.get(0)?;
    let tpl = BENCH_TEMPLATE.get_ptr(0)?;
    let seq = BENCH_SEQ.get_ptr_mut(0)?;
    let start = ctx.data();
    if start + HEADERS > ctx.data_end() {
        return None;
    }
    // SAFETY: a per-CPU slot; XDP runs with preemption disabled.
    let n = unsafe { *seq };
    unsafe { *seq = n.wrapping_add(1) };
    let idx = n.checked_rem(cfg.clients)?;
    let client = cfg.base.wrapping_add(idx).to_be();

    // SAFETY: `HEADERS` bytes are in the frame (checked above) and in the template value;
    // word accesses at 2-byte alignment as in `parse`.
    unsafe {
        let src = tpl.cast::<u8>();
        let dst = start as *mut u8;
        let mut off = 0;
        while off + 4 <= HEADERS {
            store32(dst.add(off).cast(), load32(src.add(off).cast()));
            off += 4;
        }
        store16(dst.add(off).cast(), load16(src.add(off).cast()));

        let ip = dst.add(EthHdr::LEN).cast::<Ipv4Hdr>();
        let udp = dst.add(EthHdr::LEN + Ipv4Hdr::LEN).cast::<UdpHdr>();
        let mut ip_check = load16(&(*ip).check);
        let mut udp_check = load16(&(*udp).check);
        let (saddr, daddr) = if cfg.mode == MODE_REVERSE {
            (*BENCH_REV.get(idx)?, client)
        } else {
            (client, 0)
        };
        store32(&mut (*ip).src_addr, saddr);
        ip_check = csum::replace32(ip_check, 0, saddr);
        udp_check = csum::udp_replace32(udp_check, 0, saddr);
        if daddr != 0 {
            store32(&mut (*ip).dst_addr, daddr);
            ip_check = csum::replace32(ip_check, 0, daddr);
            udp_check = csum::udp_replace32(udp_check, 0, daddr);
        }
        // The ESP sequence number (or whatever the payload holds there) counts frames, as in
        // real traffic; the template block holds the value its checksum was computed with.
        if start + HEADERS + 8 <= ctx.data_end() {
            let old = load32(src.add(HEADERS + 4).cast());
            let new = n.to_be();
            store32(dst.add(HEADERS + 4).cast(), new);
            udp_check = csum::udp_replace32(udp_check, old, new);
        }
        store16(&mut (*ip).check, ip_check);
        store16(&mut (*udp).check, udp_check);
    }
    Some(())
}

/// [`stamp`] over IPv6: the block of [`BENCH_TEMPLATE6`], then the client in the low word of
/// the source (forward) or destination (reverse, the source's low word from `BENCH_REV`),
/// the counter as ESP sequence number, the UDP checksum fixed (IPv6 has no header checksum).
#[inline(always)]
fn stamp6(ctx: &XdpContext) -> Option<()> {
    let cfg = BENCH_CFG.get(0)?;
    let tpl = BENCH_TEMPLATE6.get_ptr(0)?;
    let seq = BENCH_SEQ.get_ptr_mut(0)?;
    let start = ctx.data();
    if start + HEADERS6 > ctx.data_end() {
        return None;
    }
    // SAFETY: a per-CPU slot; XDP runs with preemption disabled.
    let n = unsafe { *seq };
    unsafe { *seq = n.wrapping_add(1) };
    let idx = n.checked_rem(cfg.clients)?;
    let client = cfg.base.wrapping_add(idx).to_be();

    // SAFETY: `HEADERS6` bytes are in the frame (checked above) and in the template value;
    // word accesses at 2-byte alignment as in `parse`.
    unsafe {
        let src = tpl.cast::<u8>();
        let dst = start as *mut u8;
        let mut off = 0;
        while off + 4 <= HEADERS6 {
            store32(dst.add(off).cast(), load32(src.add(off).cast()));
            off += 4;
        }
        store16(dst.add(off).cast(), load16(src.add(off).cast()));

        let udp = dst.add(EthHdr::LEN + Ipv6Hdr::LEN).cast::<UdpHdr>();
        let mut udp_check = load16(&(*udp).check);
        let (saddr, daddr) = if cfg.mode == MODE_REVERSE {
            (*BENCH_REV.get(idx)?, client)
        } else {
            (client, 0)
        };
        store32(dst.add(SADDR6_LOW).cast(), saddr);
        udp_check = csum::udp_replace32(udp_check, 0, saddr);
        if daddr != 0 {
            store32(dst.add(DADDR6_LOW).cast(), daddr);
            udp_check = csum::udp_replace32(udp_check, 0, daddr);
        }
        if start + HEADERS6 + 8 <= ctx.data_end() {
            let old = load32(src.add(HEADERS6 + 4).cast());
            let new = n.to_be();
            store32(dst.add(HEADERS6 + 4).cast(), new);
            udp_check = csum::udp_replace32(udp_check, old, new);
        }
        store16(&mut (*udp).check, udp_check);
    }
    Some(())
}

/// Stamp only (the reference of the cost measurement, and the closed loop's generator).
#[xdp]
pub fn bench_stamp(ctx: XdpContext) -> u32 {
    match stamp(&ctx) {
        Some(()) => XDP_TX,
        None => XDP_ABORTED,
    }
}

/// Stamp, then everything `ikelb` does with the frame.
#[xdp]
pub fn bench_stamp_lb(ctx: XdpContext) -> u32 {
    match stamp(&ctx) {
        Some(()) => crate::prog::process(&ctx),
        None => XDP_ABORTED,
    }
}

/// [`bench_stamp`] over IPv6.
#[xdp]
pub fn bench_stamp6(ctx: XdpContext) -> u32 {
    match stamp6(&ctx) {
        Some(()) => XDP_TX,
        None => XDP_ABORTED,
    }
}

/// [`bench_stamp_lb`] over IPv6.
#[xdp]
pub fn bench_stamp_lb6(ctx: XdpContext) -> u32 {
    match stamp6(&ctx) {
        Some(()) => crate::prog::process(&ctx),
        None => XDP_ABORTED,
    }
}

/// The closed loop's physical limit: swap the MACs, redirect to `BENCH_TX[0]`.
#[xdp]
pub fn bench_fwd(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        return XDP_ABORTED;
    }
    let eth = start as *mut EthHdr;
    // SAFETY: the Ethernet header is in the frame (checked above).
    unsafe {
        let d = load_mac(&(*eth).dst_addr);
        let s = load_mac(&(*eth).src_addr);
        store_mac(&mut (*eth).dst_addr, s);
        store_mac(&mut (*eth).src_addr, d);
    }
    BENCH_TX.redirect(0, 0).unwrap_or(XDP_ABORTED)
}

/// The closed loop's sink: counts and drops IPv4 UDP to port 500 or 4500 (the generator's
/// frames), passes everything else to the kernel.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + HEADERS > ctx.data_end() {
        return XDP_PASS;
    }
    // SAFETY: `HEADERS` bytes are in the frame (checked above).
    let ours = unsafe {
        let eth = start as *const EthHdr;
        let ip = (start + EthHdr::LEN) as *const Ipv4Hdr;
        let udp = (start + EthHdr::LEN + Ipv4Hdr::LEN) as *const UdpHdr;
        (*eth).ether_type == network_types::eth::EtherType::Ipv4 as u16
            && (*ip).vihl == 0x45
            && (*ip).proto == 17
            && (load16(&(*udp).dst) == 4500u16.to_be() || load16(&(*udp).dst) == 500u16.to_be())
    };
    if !ours {
        return XDP_PASS;
    }
    if let Some(c) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot.
        unsafe { *c += 1 };
    }
    XDP_DROP
}

/// The IPv6 closed loop's physical limit: [`bench_fwd`] for IPv6 frames only (anything else,
/// ARP included, to the kernel).
#[xdp]
pub fn bench_fwd6(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        return XDP_ABORTED;
    }
    let eth = start as *mut EthHdr;
    // SAFETY: the Ethernet header is in the frame (checked above).
    unsafe {
        if (*eth).ether_type != network_types::eth::EtherType::Ipv6 as u16 {
            return XDP_PASS;
        }
        let d = load_mac(&(*eth).dst_addr);
        let s = load_mac(&(*eth).src_addr);
        store_mac(&mut (*eth).dst_addr, s);
        store_mac(&mut (*eth).src_addr, d);
    }
    BENCH_TX.redirect(0, 0).unwrap_or(XDP_ABORTED)
}

/// [`bench_sink`] for IPv6: counts and drops UDP to port 500 or 4500 right after the IPv6
/// header (the generator's frames), passes everything else to the kernel.
#[xdp]
pub fn bench_sink6(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + HEADERS6 > ctx.data_end() {
        return XDP_PASS;
    }
    // SAFETY: `HEADERS6` bytes are in the frame (checked above).
    let ours = unsafe {
        let eth = start as *const EthHdr;
        let ip = (start + EthHdr::LEN) as *const Ipv6Hdr;
        let udp = (start + EthHdr::LEN + Ipv6Hdr::LEN) as *const UdpHdr;
        (*eth).ether_type == network_types::eth::EtherType::Ipv6 as u16
            && (*ip).vcf[0] >> 4 == 6
            && (*ip).next_hdr == 17
            && (load16(&(*udp).dst) == 4500u16.to_be() || load16(&(*udp).dst) == 500u16.to_be())
    };
    if !ours {
        return XDP_PASS;
    }
    if let Some(c) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot.
        unsafe { *c += 1 };
    }
    XDP_DROP
}
