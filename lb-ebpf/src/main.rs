//! ikelb's XDP program: parse → classify → select a backend → rewrite → redirect.
//!
//! Forward path (client → VIP): the persistency group of a service (its UDP and TCP ports,
//! ESP, and the fragments that carry no ports; `l4`) is steered by the client address alone,
//! so UDP 500, UDP 4500, ESP, SSTP (TCP 443) and fragments of one client reach the same
//! backend, over IPv4 here and IPv6 in `v6`. Reverse path (backend →
//! client): replies of a backend to a client the forward path sent it get the VIP back as
//! their source, and leave toward the MAC and interface the client's own frames came from
//! (MAC-based forwarding, no per-packet FIB lookup). Everything else is the kernel's.
//!
//! On the way, both paths check what a router checks before it forwards (`sanity`: the
//! destination MAC, the IPv4 header checksum, a client address that can be one, lengths);
//! every packet ends in one verdict counted in `COUNTERS` (see `counters`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod edge;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod l4;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod parse6;
#[cfg(target_arch = "bpf")]
mod rewrite;
#[cfg(target_arch = "bpf")]
mod rewrite6;
#[cfg(target_arch = "bpf")]
mod sanity;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod signal;
#[cfg(target_arch = "bpf")]
mod v6;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{macros::xdp, programs::XdpContext};
    use lb_common::{counter, Service, DIR_FORWARD, DIR_REVERSE, INGRESS_F_CLIENTS};
    use network_types::{eth::EthHdr, ip::Ipv4Hdr};

    use crate::{
        counters::{
            self, Verdict, DROP_FRAGMENT_OFFSET, DROP_NOT_CLIENT_IFACE, PASS_IP_OPTIONS,
            PASS_NOT_CLIENT, PASS_NOT_SERVICE_PORT, PASS_NOT_VIP, PASS_TTL,
        },
        edge, icmp, l4,
        maps,
        parse::{self, ptr_at, Side, L3},
        parse6, rewrite, sanity,
        select::{self, Origin, V4},
        signal::Pkt,
        v6,
    };

    #[xdp]
    pub fn ikelb(ctx: XdpContext) -> u32 {
        process(&ctx)
    }

    /// The whole per-packet work of `ikelb` (verdict counted), also called by the bench-only
    /// programs of `crate::bench` after they stamp the frame.
    #[inline(always)]
    pub(crate) fn process(ctx: &XdpContext) -> u32 {
        try_ikelb(ctx).unwrap_or_else(Verdict::record)
    }

    /// `Ok(action)` for a forwarded packet (already counted), `Err(verdict)` for everything
    /// the program passes or drops.
    #[inline(always)]
    fn try_ikelb(ctx: &XdpContext) -> Result<u32, Verdict> {
        let eth: *mut EthHdr = ptr_at(ctx, 0)?;
        if parse6::is_ipv6(eth) {
            return v6::ipv6(ctx, eth);
        }
        match parse::l3(ctx, eth)? {
            L3::V4(ip) => ipv4(ctx, eth, ip),
        }
    }

    #[inline(always)]
    fn ipv4(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Result<u32, Verdict> {
        match maps::vip_v4(parse::daddr(ip)) {
            Some(svc) => forward_v4(ctx, eth, ip, svc),
            None => reverse_v4(ctx, eth, ip),
        }
    }

    /// Client → VIP.
    #[inline(always)]
    fn forward_v4(
        ctx: &XdpContext,
        eth: *mut EthHdr,
        ip: *mut Ipv4Hdr,
        svc: &Service,
    ) -> Result<u32, Verdict> {
        // VIP traffic only from where clients are (`docs/security.md`): a frame from the
        // backends' segment claiming a client's address is spoofed.
        let ingress = edge::iface_info(ctx.ingress_ifindex() as u32);
        if ingress & INGRESS_F_CLIENTS == 0 {
            return Err(DROP_NOT_CLIENT_IFACE);
        }
        sanity::to_ingress(eth, ingress)?;
        if parse::has_options(ip) {
            return Err(PASS_IP_OPTIONS);
        }
        // What a router checks (`sanity`): the header checksum, a source that can be a client.
        sanity::checksum_v4(ip)?;
        let saddr = parse::saddr(ip);
        sanity::source_v4(saddr, svc.vip[0])?;
        let (proto, first) = parse::proto_first(ip);
        if proto == l4::IPPROTO_ICMP && first {
            return icmp::frag_needed_v4(ctx, eth, ip, svc);
        }
        // RFC 1858 §3.2: a TCP fragment at offset 8 bytes can only serve to overwrite the
        // first fragment's flags; no sender makes one.
        if proto == l4::IPPROTO_TCP && parse::fragment_offset(ip) == 1 {
            return Err(DROP_FRAGMENT_OFFSET);
        }
        let csum = l4::classify_v4(ctx, ip, svc, Side::Forward, PASS_NOT_SERVICE_PORT)?;
        if parse::ttl(ip) <= 1 {
            return Err(PASS_TTL);
        }
        // With the lever on, bulk packets of clients in unchanged slots skip the persistence
        // lookups (lb_common::RING_F_CHANGED); the verifier prunes this when it is off.
        // TCP (SSTP) is never bulk: `bulk_v4` reads an ESP header behind the transport one.
        let bulk = maps::slot_fast_path() && !csum.is_tcp() && parse::bulk_v4(ctx, ip, csum.udp());
        let pkt = pkt_v4(ip, csum);
        let origin = Origin::of(ctx, eth, ingress);
        let choice = select::forward::<V4>(ctx, svc, &saddr, &pkt, &origin, bulk)?;
        // SAFETY: a pointer into the BACKENDS array map.
        let b = unsafe { &*choice.backend };
        rewrite::forward_v4(eth, ip, csum, b, !maps::mode_dsr());
        let action = rewrite::send(ctx, pkt.end, b.ifindex, b.tx_port)?;
        let counter = if choice.persisted {
            counter::FORWARD
        } else {
            counter::FORWARD_PERSIST_FULL
        };
        counters::forwarded(counter, choice.id, DIR_FORWARD, parse::frame_len(ctx));
        Ok(action)
    }

    /// Backend → client (NAT mode only: in DSR mode backends answer clients directly).
    #[inline(always)]
    fn reverse_v4(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Result<u32, Verdict> {
        if maps::mode_dsr() {
            return Err(PASS_NOT_VIP);
        }
        let (id, b, svc) = select::reverse_service::<V4>(&parse::saddr(ip))?;
        // SAFETY: a pointer into the SERVICES array map.
        let svc = unsafe { &*svc };
        if parse::has_options(ip) {
            return Err(PASS_IP_OPTIONS);
        }
        // Only the service's traffic is rewritten; the backend's other traffic (health-check
        // replies, its own connections through the gateway) is the kernel's.
        let csum = l4::classify_v4(ctx, ip, svc, Side::Reverse, PASS_NOT_CLIENT)?;
        sanity::from_backend(ctx, eth, b)?;
        sanity::checksum_v4(ip)?;
        let client = parse::daddr(ip);
        sanity::client_v4(client)?;
        if parse::ttl(ip) <= 1 {
            return Err(PASS_TTL);
        }
        let pkt = pkt_v4(ip, csum);
        let back = select::reverse::<V4>(ctx, svc, id, &client, &pkt)?;
        let hop = select::hop(back)?;
        rewrite::reverse_v4(eth, ip, csum, svc.vip[0], &hop.dmac, &hop.smac);
        let action = rewrite::send(ctx, pkt.end, hop.ifindex, hop.port)?;
        counters::forwarded(counter::REVERSE, id, DIR_REVERSE, parse::frame_len(ctx));
        Ok(action)
    }

    /// What the selection needs of an IPv4 packet besides its addresses (`signal::Pkt`).
    #[inline(always)]
    fn pkt_v4(ip: *const Ipv4Hdr, csum: l4::Csum) -> Pkt {
        let (proto, first) = parse::proto_first(ip);
        Pkt {
            proto,
            first,
            csum,
            end: parse::end_v4(ip),
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
