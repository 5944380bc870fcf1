//! The reverse path's half of selection: whether a backend's packet answers one of its live
//! clients (its entry, else the ring), and how the reply reaches that client — toward the MAC
//! and port its entry learned, or where the kernel FIB routes it (`select` module docs).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    event, Backend, PersistValue, Service, PORT_SHARED, PROBATION_F_GUESS, RING_BACKEND_MASK,
};

use super::{backend, live, now_ticks, ring_at, ring_backend, ring_index, usable};
use crate::{
    counters::{
        self, Verdict, DROP_BAD_BACKEND, DROP_NO_ROUTE, DROP_REVERSE_NOT_CLIENT, PASS_NOT_CLIENT,
        PASS_NOT_VIP,
    },
    edge,
    family::Family,
    ike,
    maps::{self, SERVICES},
    parse::Side,
    signal::{self, Pkt},
};

/// How a backend's reply reaches its client.
pub enum Back {
    /// Toward the MAC and port an entry learned from the client.
    Entry(*const PersistValue),
    /// No entry, but the ring names this backend: toward where the FIB says.
    Stateless(edge::Route),
}

/// Whether a backend's packet (`id`, of `svc`) to `daddr` answers a live client of that
/// backend: its established entry, else its probation entry (whose proof the packet may set) —
/// either one shared by another cluster node (`PORT_SHARED`) has no MAC yet and is routed by
/// the FIB —
/// else — no entry at all — the ring, with the route the kernel FIB gives. What the FIB would
/// not forward (the gateway's own addresses: its probes of the backend's service, tools run on
/// it; or a destination without any route, which the kernel then drops itself) is the
/// kernel's (`PASS_NOT_CLIENT`): nothing of it can leave with the backend's address. A route
/// the FIB refuses (unreachable, prohibit, blackhole, no resolved neighbour) is
/// `DROP_NO_ROUTE` for the backend's ring client. Anything else is `DROP_REVERSE_NOT_CLIENT`.
#[inline(always)]
pub fn reverse<F: Family>(
    ctx: &XdpContext,
    svc: &Service,
    id: u32,
    daddr: &F::Addr,
    pkt: &Pkt,
) -> Result<Back, Verdict> {
    let now = now_ticks();
    let key = F::key(svc.id, daddr);
    // SAFETY (entry accesses): see `forward`.
    if let Some(e) = F::persist().get_ptr(&key) {
        if unsafe { (*e).backend != id || !live((*e).atime, now) } {
            return Err(DROP_REVERSE_NOT_CLIENT);
        }
        if unsafe { (*e).port } != PORT_SHARED {
            return Ok(Back::Entry(e));
        }
        return shared::<F>(ctx, svc, daddr);
    }
    if let Some(p) = F::probation().get_ptr_mut(&key) {
        if unsafe { (*p).backend != id || !live((*p).atime, now) } {
            return Err(DROP_REVERSE_NOT_CLIENT);
        }
        let sig = signal::read(ctx, pkt, Side::Reverse);
        unsafe { ike::set(&raw mut (*p).flags, ike::reverse(&sig)) };
        let proof = sig.proof;
        if proof != 0 {
            // The backend knows the client: no longer the ring's guess.
            unsafe {
                (*p).proof = proof;
                (*p).flags &= !PROBATION_F_GUESS;
            }
            let _ = F::proofs().insert(&F::proof_key(svc.id, daddr, proof), &id, 0);
        }
        if unsafe { (*p).port } != PORT_SHARED {
            return Ok(Back::Entry(p.cast::<PersistValue>()));
        }
        return shared::<F>(ctx, svc, daddr);
    }
    // A backend or the gateway itself is not a client: the kernel routes that.
    if F::listed(daddr).is_some() {
        return Err(PASS_NOT_CLIENT);
    }
    let ours = ring_at(ring_index(svc, F::hash(daddr))?) & RING_BACKEND_MASK == id;
    match fib::<F>(ctx, svc, daddr) {
        edge::Fib::NotForwarded => Err(PASS_NOT_CLIENT),
        edge::Fib::Route(r) if ours => Ok(Back::Stateless(r)),
        edge::Fib::Unreachable if ours => Err(DROP_NO_ROUTE),
        _ => Err(DROP_REVERSE_NOT_CLIENT),
    }
}

/// A reply to a client another cluster node shared (an entry of either tier marked
/// `PORT_SHARED`: no MAC learned here): where the FIB routes it.
#[inline(always)]
fn shared<F: Family>(ctx: &XdpContext, svc: &Service, daddr: &F::Addr) -> Result<Back, Verdict> {
    match fib::<F>(ctx, svc, daddr) {
        edge::Fib::Route(r) => Ok(Back::Stateless(r)),
        edge::Fib::NotForwarded => Err(PASS_NOT_CLIENT),
        edge::Fib::Unreachable => Err(DROP_NO_ROUTE),
    }
}

/// The kernel's route from the service's VIP to client `daddr`, for a reply that arrived on
/// this interface.
#[inline(always)]
fn fib<F: Family>(ctx: &XdpContext, svc: &Service, daddr: &F::Addr) -> edge::Fib {
    edge::lookup(
        ctx,
        F::fib(F::vip(svc)),
        F::fib(daddr),
        ctx.ingress_ifindex() as u32,
    )
}

/// The backend that serves client `client` of `svc` now, without touching any state (for
/// ICMP errors about the client's flow): its entry's if usable, else the ring's.
#[inline(always)]
pub fn owner<F: Family>(svc: &Service, client: &F::Addr) -> Result<(u32, *const Backend), Verdict> {
    let key = F::key(svc.id, client);
    // SAFETY: plain-old-data values read once.
    let entry = unsafe {
        match F::persist().get(&key) {
            Some(e) => Some(e.backend),
            None => F::probation().get(&key).map(|p| p.backend),
        }
    };
    if let Some(id) = entry {
        if let Some(b) = usable(id, svc) {
            return Ok((id, b));
        }
    }
    ring_backend(ring_index(svc, F::hash(client))?)
}

/// The backend whose address is `saddr` and its service: `PASS_NOT_VIP` when `saddr` is no
/// backend, `PASS_NOT_CLIENT` when the daemon's maps disagree (an id without a backend or
/// service entry — `lb_common::OWN_ADDRESS_ID` among them: not ours to rewrite).
#[inline(always)]
pub fn reverse_service<F: Family>(
    saddr: &F::Addr,
) -> Result<(u32, *const Backend, *const Service), Verdict> {
    let id = F::listed(saddr).ok_or(PASS_NOT_VIP)?;
    let b = backend(id).ok_or(PASS_NOT_CLIENT)?;
    // SAFETY: a pointer into the array map's value area.
    let svc = SERVICES
        .get_ptr(unsafe { (*b).service })
        .ok_or(PASS_NOT_CLIENT)?;
    Ok((id, b, svc))
}

/// The next hop of a backend's reply toward its client.
pub struct Hop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
    pub port: u32,
}

/// Where a reply goes: back the way the client's frames came (an entry's MAC and port), or,
/// for a client without an entry, where the kernel FIB routed it (`DROP_NO_ROUTE` when that
/// is not an attached interface).
#[inline(always)]
pub fn hop(back: Back) -> Result<Hop, Verdict> {
    match back {
        Back::Entry(e) => {
            // SAFETY: pointers into the persistence and IFACES maps.
            let port = u32::from(unsafe { (*e).port });
            let iface = unsafe { &*maps::IFACES.get_ptr(port).ok_or(DROP_BAD_BACKEND)? };
            Ok(Hop {
                dmac: unsafe { (*e).client_mac },
                smac: iface.mac,
                ifindex: iface.ifindex,
                port,
            })
        }
        Back::Stateless(r) => {
            let info = edge::iface_info(r.ifindex);
            if info == 0 {
                return Err(DROP_NO_ROUTE);
            }
            counters::event(event::REVERSE_STATELESS);
            Ok(Hop {
                dmac: r.dmac,
                smac: r.smac,
                ifindex: r.ifindex,
                port: u32::from(edge::port_of(info)),
            })
        }
    }
}
