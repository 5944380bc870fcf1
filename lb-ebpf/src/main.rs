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
//! Every packet ends in one verdict counted in `COUNTERS` (see `counters`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod counters;
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
mod select;
#[cfg(target_arch = "bpf")]
mod select6;
#[cfg(target_arch = "bpf")]
mod v6;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{macros::xdp, programs::XdpContext};
    use lb_common::{counter, Service, DIR_FORWARD, DIR_REVERSE};
    use network_types::{eth::EthHdr, ip::Ipv4Hdr};

    use crate::{
        counters::{
            self, Verdict, DROP_BAD_BACKEND, PASS_IP_OPTIONS, PASS_NOT_CLIENT,
            PASS_NOT_SERVICE_PORT, PASS_NOT_VIP, PASS_TTL,
        },
        l4,
        maps::{self, IFACES, VIPS_V4},
        parse::{self, ptr_at, Side, L3},
        parse6, rewrite, select, v6,
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
        // SAFETY: a plain-old-data map value, read-only here.
        match unsafe { VIPS_V4.get(parse::daddr(ip)) } {
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
        if parse::has_options(ip) {
            return Err(PASS_IP_OPTIONS);
        }
        let l4 = l4::classify_v4(ctx, ip, svc, Side::Forward, PASS_NOT_SERVICE_PORT)?;
        if parse::ttl(ip) <= 1 {
            return Err(PASS_TTL);
        }
        // With the lever on, bulk packets of clients in unchanged slots skip the persistence
        // lookup (lb_common::RING_F_CHANGED); the verifier prunes this when it is off.
        // TCP (SSTP) is never bulk: `bulk_v4` reads an ESP header behind the transport one.
        let bulk = maps::slot_fast_path() && !l4.is_tcp() && parse::bulk_v4(ctx, ip, l4.udp());
        let choice = select::forward_v4(ctx, eth, svc, parse::saddr(ip), bulk)?;
        // SAFETY: a pointer into the BACKENDS array map.
        let b = unsafe { &*choice.backend };
        rewrite::forward_v4(eth, ip, l4, b, !maps::mode_dsr());
        let action = rewrite::send(ctx, b.ifindex, b.tx_port)?;
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
        let (id, svc) = select::reverse_service_v4(parse::saddr(ip))?;
        // SAFETY: a pointer into the SERVICES array map.
        let svc = unsafe { &*svc };
        if parse::has_options(ip) {
            return Err(PASS_IP_OPTIONS);
        }
        let l4 = l4::classify_v4(ctx, ip, svc, Side::Reverse, PASS_NOT_CLIENT)?;
        let entry = select::client_entry_v4(svc, id, parse::daddr(ip))?;
        if parse::ttl(ip) <= 1 {
            return Err(PASS_TTL);
        }
        // SAFETY: pointers into the PERSIST_V4 and IFACES maps.
        let (client_mac, port) = unsafe { (&(*entry).client_mac, (*entry).port) };
        let iface = unsafe { &*IFACES.get_ptr(u32::from(port)).ok_or(DROP_BAD_BACKEND)? };
        rewrite::reverse_v4(eth, ip, l4, svc.vip[0], client_mac, &iface.mac);
        let action = rewrite::send(ctx, iface.ifindex, u32::from(port))?;
        counters::forwarded(counter::REVERSE, id, DIR_REVERSE, parse::frame_len(ctx));
        Ok(action)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
