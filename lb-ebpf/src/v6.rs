//! The IPv6 flows: the IPv4 ones of `main.rs` (forward client → VIP, reverse backend →
//! client) over `parse6`, `l4`, `select6` and `rewrite6`.
//!
//! Per packet:
//!
//! 1. IPv6 sanity (`parse6::ipv6`) else `drop/malformed`.
//! 2. ICMPv6 directly after the header → `pass/icmpv6`, before any lookup: neighbour
//!    discovery, echo and errors are the kernel's and never touched (NDP to a VIP or from a
//!    backend included).
//! 3. `VIPS_V6[daddr]`: forward. Else, in NAT mode, `BACKEND_IDS_V6[saddr]`: reverse. Else
//!    `pass/not_vip` (DSR mode has no reverse path: backends answer from the VIP).
//! 4. Extension headers (`parse6::walk`), the persistency group (`l4::classify`), hop limit
//!    ≤ 1 → `pass/ttl_exceeded`, then the same selection (the slot fast path for bulk packets,
//!    `parse6::bulk`, included), rewrite and exit as IPv4; on the way, what a router checks
//!    (`sanity`: destination MAC, a source — or, reverse, a destination — that can be a
//!    client, the reverse path's interface and MACs), all before the selection.

use aya_ebpf::programs::XdpContext;
use lb_common::{counter, Service, DIR_FORWARD, DIR_REVERSE, INGRESS_F_CLIENTS};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    counters::{
        self, Verdict, DROP_NOT_CLIENT_IFACE, PASS_ICMPV6, PASS_NOT_CLIENT, PASS_NOT_SERVICE_PORT,
        PASS_NOT_VIP, PASS_TTL,
    },
    edge, icmp, l4,
    maps::{self, VIPS_V6},
    parse::{self, Side},
    parse6, rewrite, rewrite6, sanity,
    select::{self, Origin, V6},
    signal::Pkt,
};

/// An IPv6 frame (the caller saw EtherType 0x86DD).
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, eth: *mut EthHdr) -> Result<u32, Verdict> {
    let ip = parse6::ipv6(ctx)?;
    if parse6::next_hdr(ip) == parse6::NEXTHDR_ICMPV6 {
        // Packet too big about a client's flow goes to its backend (path MTU discovery);
        // every other ICMPv6 message, neighbour discovery first of all, is the kernel's.
        if !icmp::is_too_big_v6(ctx, ip) {
            return Err(PASS_ICMPV6);
        }
        // SAFETY: a plain-old-data map value, read-only here.
        let svc = unsafe { VIPS_V6.get(&parse6::daddr(ip)) }.ok_or(PASS_ICMPV6)?;
        let ingress = edge::iface_info(ctx.ingress_ifindex() as u32);
        if ingress & INGRESS_F_CLIENTS == 0 {
            return Err(DROP_NOT_CLIENT_IFACE);
        }
        sanity::to_ingress(eth, ingress)?;
        sanity::source_v6(&parse6::saddr(ip), &svc.vip)?;
        return icmp::too_big_v6(ctx, eth, ip, svc);
    }
    // SAFETY: a plain-old-data map value, read-only here.
    match unsafe { VIPS_V6.get(&parse6::daddr(ip)) } {
        Some(svc) => forward(ctx, eth, ip, svc),
        None => reverse(ctx, eth, ip),
    }
}

/// Client → VIP.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv6Hdr,
    svc: &Service,
) -> Result<u32, Verdict> {
    let ingress = edge::iface_info(ctx.ingress_ifindex() as u32);
    if ingress & INGRESS_F_CLIENTS == 0 {
        return Err(DROP_NOT_CLIENT_IFACE);
    }
    sanity::to_ingress(eth, ingress)?;
    let saddr = parse6::saddr(ip);
    sanity::source_v6(&saddr, &svc.vip)?;
    let t = parse6::walk(ctx, ip)?;
    let csum = l4::classify(ctx, t, svc, Side::Forward, PASS_NOT_SERVICE_PORT)?;
    if parse6::hop_limit(ip) <= 1 {
        return Err(PASS_TTL);
    }
    // As over IPv4 (`main.rs`): with the lever on, bulk packets of clients in unchanged slots
    // skip the persistence lookups (lb_common::RING_F_CHANGED); the verifier prunes this when
    // it is off. TCP (SSTP) is never bulk: `bulk` reads an ESP header behind the transport one.
    let bulk = maps::slot_fast_path() && !csum.is_tcp() && parse6::bulk(ctx, t, csum.udp());
    let pkt = Pkt {
        proto: t.proto,
        first: t.first,
        csum,
        end: t.end,
    };
    let origin = Origin::of(ctx, eth, ingress);
    let choice = select::forward::<V6>(ctx, svc, &saddr, &pkt, &origin, bulk)?;
    // SAFETY: a pointer into the BACKENDS array map.
    let b = unsafe { &*choice.backend };
    rewrite6::forward_v6(eth, ip, csum, b, !maps::mode_dsr());
    let action = rewrite::send(ctx, t.end, b.ifindex, b.tx_port)?;
    let counter = if choice.persisted {
        counter::FORWARD
    } else {
        counter::FORWARD_PERSIST_FULL
    };
    counters::forwarded(counter, choice.id, DIR_FORWARD, parse::frame_len(ctx));
    Ok(action)
}

/// Backend → client (NAT mode only).
#[inline(always)]
fn reverse(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv6Hdr) -> Result<u32, Verdict> {
    if maps::mode_dsr() {
        return Err(PASS_NOT_VIP);
    }
    let (id, b, svc) = select::reverse_service::<V6>(&parse6::saddr(ip))?;
    // SAFETY: a pointer into the SERVICES array map.
    let svc = unsafe { &*svc };
    let t = parse6::walk(ctx, ip)?;
    let csum = l4::classify(ctx, t, svc, Side::Reverse, PASS_NOT_CLIENT)?;
    sanity::from_backend(ctx, eth, b)?;
    let client = parse6::daddr(ip);
    sanity::client_v6(&client)?;
    if parse6::hop_limit(ip) <= 1 {
        return Err(PASS_TTL);
    }
    let pkt = Pkt {
        proto: t.proto,
        first: t.first,
        csum,
        end: t.end,
    };
    let back = select::reverse::<V6>(ctx, svc, id, &client, &pkt)?;
    let hop = select::hop(back)?;
    rewrite6::reverse_v6(eth, ip, csum, &svc.vip, &hop.dmac, &hop.smac);
    let action = rewrite::send(ctx, t.end, hop.ifindex, hop.port)?;
    counters::forwarded(counter::REVERSE, id, DIR_REVERSE, parse::frame_len(ctx));
    Ok(action)
}
