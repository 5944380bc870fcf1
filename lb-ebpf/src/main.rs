//! ikelb's XDP program: parse → classify → select a backend → rewrite → redirect.
//!
//! Forward path (client → VIP): the persistency group of a service (its UDP and TCP ports,
//! ESP, and the fragments that carry no ports; `l4`) is steered by the client address alone,
//! so UDP 500, UDP 4500, ESP, SSTP (TCP 443) and fragments of one client reach the same
//! backend, over IPv4 and IPv6 alike (`flow`, once over `family::Family`). Reverse path (backend →
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
mod family;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod ike;
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
mod sanity;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod signal;
#[cfg(target_arch = "bpf")]
mod steer;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{macros::xdp, programs::XdpContext};
    use network_types::eth::EthHdr;

    use crate::{
        counters::Verdict,
        family::{V4, V6},
        flow,
        parse::{self, ptr_at, L3},
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
        match parse::l3(ctx, eth)? {
            L3::V4(ip) => flow::ip::<V4>(ctx, eth, ip),
            L3::V6(ip) => flow::ip::<V6>(ctx, eth, ip),
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
