//! The two flows, once for both address families ([`Family`]):
//!
//! * **Forward** (client → VIP): the interface and MAC it arrived on, what a router checks of
//!   the header and the source (`sanity`), an ICMP error about a reply (`icmp`), the
//!   persistency group (`l4::classify`), the hop limit, then the selection (`select::forward`,
//!   the slot fast path for bulk packets included), the rewrite and the exit.
//! * **Reverse** (backend → client, NAT mode only: in DSR mode backends answer clients
//!   directly): the backend and its service (`select::reverse_service`), the group, a
//!   destination that is not the gateway itself (its health probes' replies are the kernel's
//!   even while the backend is not usable), the backend's interface and MACs, a destination
//!   that can be a client, the reverse-path check
//!   (`select::reverse`), the VIP back as the source, and the exit toward the client's MAC.
//!
//! Every check comes before the selection, so nothing the selection writes is written for a
//! packet that is then dropped. The order of the checks decides which verdict a packet with
//! several faults is counted under; it is the same for both families, and the family-only
//! checks (IPv4 options and header checksum) sit where the IPv4 flow always had them.

use aya_ebpf::programs::XdpContext;
use lb_common::{counter, Service, DIR_FORWARD, DIR_REVERSE, INGRESS_F_CLIENTS, OWN_ADDRESS_ID};
use network_types::eth::EthHdr;

use crate::{
    counters::{
        self, Verdict, DROP_NOT_CLIENT_IFACE, PASS_ICMPV6, PASS_NOT_CLIENT, PASS_NOT_SERVICE_PORT,
        PASS_NOT_VIP, PASS_TTL,
    },
    edge,
    family::Family,
    l4, maps,
    parse::{self, Side},
    rewrite, sanity,
    select::{self, Origin},
    signal::Pkt,
};

/// A bounds-checked IP packet of family `F`: to a VIP, from a backend, or the kernel's.
#[inline(always)]
pub fn ip<F: Family>(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut F::Hdr) -> Result<u32, Verdict> {
    let svc = F::service(&F::daddr(ip));
    if F::kernels_icmp(ctx, ip, svc.is_some()) {
        return Err(PASS_ICMPV6);
    }
    match svc {
        Some(svc) => forward::<F>(ctx, eth, ip, svc),
        None => reverse::<F>(ctx, eth, ip),
    }
}

/// Client → VIP.
#[inline(always)]
fn forward<F: Family>(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut F::Hdr,
    svc: &Service,
) -> Result<u32, Verdict> {
    // VIP traffic only from where clients are (`docs/security.md`): a frame from the
    // backends' segment claiming a client's address is spoofed.
    let ingress = edge::iface_info(ctx.ingress_ifindex() as u32);
    if ingress & INGRESS_F_CLIENTS == 0 {
        return Err(DROP_NOT_CLIENT_IFACE);
    }
    sanity::to_ingress(eth, ingress)?;
    F::options(ip)?;
    F::checksum(ip)?;
    let saddr = F::saddr(ip);
    F::source(&saddr, F::vip(svc))?;
    if F::icmp(ip) {
        return F::icmp_error(ctx, eth, ip, svc);
    }
    let t = F::transport(ctx, ip, Side::Forward)?;
    let csum = l4::classify(ctx, t, svc, Side::Forward, PASS_NOT_SERVICE_PORT)?;
    if F::hop_limit(ip) <= 1 {
        return Err(PASS_TTL);
    }
    // With the lever on, bulk packets of clients in unchanged slots skip the persistence
    // lookups (lb_common::RING_F_CHANGED); the verifier prunes this when it is off.
    // TCP (SSTP) is never bulk: `l4::bulk` reads an ESP header behind the transport one.
    let bulk = maps::slot_fast_path() && !csum.is_tcp() && l4::bulk(ctx, t, csum.udp());
    let pkt = Pkt::of(t, csum);
    let origin = Origin::of(ctx, eth, ingress);
    let choice = select::forward::<F>(ctx, svc, &saddr, &pkt, &origin, bulk)?;
    // SAFETY: a pointer into the BACKENDS array map.
    let b = unsafe { &*choice.backend };
    rewrite::forward::<F>(eth, ip, csum, b, !maps::mode_dsr());
    let action = rewrite::send(ctx, pkt.end, b.ifindex, b.tx_port)?;
    let counter = if choice.persisted {
        counter::FORWARD
    } else {
        counter::FORWARD_PERSIST_FULL
    };
    counters::forwarded(counter, choice.id, DIR_FORWARD, parse::frame_len(ctx));
    Ok(action)
}

/// Backend → client.
#[inline(always)]
fn reverse<F: Family>(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut F::Hdr) -> Result<u32, Verdict> {
    if maps::mode_dsr() {
        return Err(PASS_NOT_VIP);
    }
    let (id, b, svc) = select::reverse_service::<F>(&F::saddr(ip))?;
    // SAFETY: a pointer into the SERVICES array map.
    let svc = unsafe { &*svc };
    F::options(ip)?;
    // Only the service's traffic is rewritten; the backend's other traffic (health-check
    // replies, its own connections through the gateway) is the kernel's.
    let t = F::transport(ctx, ip, Side::Reverse)?;
    let csum = l4::classify(ctx, t, svc, Side::Reverse, PASS_NOT_CLIENT)?;
    // To the gateway itself (its IKE health probe of this backend, tools run on it): the
    // kernel's, whatever the backend's state. A backend that is not usable has no interface
    // or MACs in its entry, so its check would drop the very replies that could bring it
    // back up. Looked up only when that check fails: a usable backend's reply to the gateway
    // passes it and reaches the kernel by the reverse-path check (`select::reverse`).
    if let Err(v) = sanity::from_backend(ctx, eth, b) {
        if F::listed(&F::daddr(ip)) == Some(OWN_ADDRESS_ID) {
            return Err(PASS_NOT_CLIENT);
        }
        return Err(v);
    }
    F::checksum(ip)?;
    let client = F::daddr(ip);
    F::client(&client)?;
    if F::hop_limit(ip) <= 1 {
        return Err(PASS_TTL);
    }
    let pkt = Pkt::of(t, csum);
    let back = select::reverse::<F>(ctx, svc, id, &client, &pkt)?;
    let hop = select::hop(back)?;
    rewrite::reverse::<F>(eth, ip, csum, F::vip(svc), &hop.dmac, &hop.smac);
    let action = rewrite::send(ctx, pkt.end, hop.ifindex, hop.port)?;
    counters::forwarded(counter::REVERSE, id, DIR_REVERSE, parse::frame_len(ctx));
    Ok(action)
}
