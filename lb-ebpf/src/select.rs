//! Backend selection (Katran's chain: VIP → per-client LRU → Maglev ring → backend array) and
//! the reverse-path check that a backend's packet answers a client the forward path sent it.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use lb_common::{
    hash::client_hash_v4, Backend, PersistKeyV4, PersistValue, Service, BACKEND_F_USABLE,
    BACKEND_NONE, RING_BACKEND_MASK, RING_F_CHANGED, TICK_SHIFT,
};
use network_types::eth::EthHdr;

use crate::{
    counters::{Verdict, DROP_BAD_BACKEND, DROP_NO_BACKEND, PASS_NOT_CLIENT, PASS_NOT_VIP},
    maps::{self, BACKENDS, BACKEND_IDS_V4, IFINDEX_PORTS, PERSIST_V4, RINGS, SERVICES},
    parse::{load_mac, store_mac},
};

/// Port recorded for a client whose ingress interface is not in `IFINDEX_PORTS` (the daemon
/// lists every interface it attaches to, so only a misconfiguration gets here): its replies
/// are dropped as `bad_backend` rather than sent out of a guessed interface.
pub const PORT_UNKNOWN: u8 = u8::MAX;

/// The chosen backend of a forwarded packet.
pub struct Choice {
    pub id: u32,
    pub backend: *const Backend,
    /// False when the persistence map refused the new entry (counted as
    /// `FORWARD_PERSIST_FULL`; the packet is forwarded anyway).
    pub persisted: bool,
}

/// Now, in persistence ticks.
#[inline(always)]
pub fn now_ticks() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } >> TICK_SHIFT) as u32
}

/// A backend by id, or `None` when the id is out of range or its slot was never written
/// (address 0).
#[inline(always)]
pub fn backend(id: u32) -> Option<*const Backend> {
    let b = BACKENDS.get_ptr(id)?;
    // SAFETY: a pointer into the array map's value area.
    if unsafe { (*b).addr[0] } == 0 {
        return None;
    }
    Some(b)
}

/// Persistence port of the ingress interface (a hash lookup, done only when a client's entry
/// is created or its source MAC changed).
#[inline(always)]
pub fn ingress_port(ctx: &XdpContext) -> u8 {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: plain-old-data value read once.
    match unsafe { IFINDEX_PORTS.get(ifindex) } {
        Some(&p) if p < u32::from(PORT_UNKNOWN) => p as u8,
        _ => PORT_UNKNOWN,
    }
}

/// The backend for client `saddr` of `svc`.
///
/// A persisted choice wins while its backend is usable (and still this service's) and the
/// entry is not idle (so adding
/// backends or changing weights never moves an established client); its `atime` is rewritten
/// at most once a tick, its MAC/port only when the client's previous hop changed. Otherwise
/// the client's Maglev slot picks, and the entry is created or overwritten in place.
///
/// `bulk` (only with `SLOT_FAST_PATH` on, see `parse::bulk_v4`): when the client's slot is
/// not flagged `RING_F_CHANGED` and its backend is usable, the ring's backend is the one the
/// client's sessions began on, and the persistence lookup is skipped.
#[inline(always)]
pub fn forward_v4(
    ctx: &XdpContext,
    eth: *const EthHdr,
    svc: &Service,
    saddr: u32,
    bulk: bool,
) -> Result<Choice, Verdict> {
    if bulk {
        let s = ring_slot(svc, saddr)?;
        if s & RING_F_CHANGED == 0 {
            let id = s & RING_BACKEND_MASK;
            if let Some(b) = backend(id) {
                // SAFETY: a pointer into the array map's value area.
                if unsafe { (*b).flags & BACKEND_F_USABLE != 0 && (*b).service == svc.id } {
                    return Ok(Choice {
                        id,
                        backend: b,
                        persisted: true,
                    });
                }
            }
        }
    }
    let key = PersistKeyV4 {
        service: svc.id,
        client: saddr,
    };
    let now = now_ticks();
    // SAFETY (entry accesses): a pointer into the LRU map's value. A concurrent eviction can
    // recycle it under us; the worst outcome is one stale or lost entry update.
    let src_mac = unsafe { load_mac(&(*eth).src_addr) };
    let entry = PERSIST_V4.get_ptr_mut(key);
    if let Some(e) = entry {
        let id = unsafe { (*e).backend };
        if let Some(b) = backend(id) {
            let atime = unsafe { (*e).atime };
            // A backend id reused by another service (the daemon recycles ids) is not this
            // client's backend any more.
            let usable = unsafe { (*b).flags & BACKEND_F_USABLE != 0 && (*b).service == svc.id };
            if usable && now.wrapping_sub(atime) <= maps::persist_timeout_ticks() {
                unsafe {
                    if atime != now {
                        (*e).atime = now;
                    }
                    if load_mac(&(*e).client_mac) != src_mac {
                        store_mac(&mut (*e).client_mac, src_mac);
                        (*e).port = ingress_port(ctx);
                    }
                }
                return Ok(Choice {
                    id,
                    backend: b,
                    persisted: true,
                });
            }
        }
    }

    let id = ring_slot(svc, saddr)? & RING_BACKEND_MASK;
    if id == BACKEND_NONE {
        return Err(DROP_NO_BACKEND);
    }
    let b = backend(id).ok_or(DROP_BAD_BACKEND)?;
    let mut value = PersistValue {
        backend: id,
        atime: now,
        client_mac: [0; 6],
        port: ingress_port(ctx),
        _pad: 0,
    };
    // SAFETY: a field of a local.
    unsafe { store_mac(&mut value.client_mac, src_mac) };
    let persisted = match entry {
        Some(e) => {
            // Re-selection: overwrite in place, no LRU insert (and no eviction) needed.
            unsafe { *e = value };
            true
        }
        None => PERSIST_V4.insert(key, value, 0).is_ok(),
    };
    Ok(Choice {
        id,
        backend: b,
        persisted,
    })
}

/// The client's slot of the service's active Maglev table: backend id | `RING_F_*`
/// (`BACKEND_NONE` for a slot beyond the map).
#[inline(always)]
fn ring_slot(svc: &Service, saddr: u32) -> Result<u32, Verdict> {
    let slot = client_hash_v4(saddr, maps::hash_seed())
        .checked_rem(maps::ring_size())
        .ok_or(DROP_NO_BACKEND)?;
    Ok(RINGS
        .get(svc.ring_base.wrapping_add(slot))
        .copied()
        .unwrap_or(BACKEND_NONE))
}

/// The backend whose address is `saddr` and its service: `PASS_NOT_VIP` when `saddr` is no
/// backend, `PASS_NOT_CLIENT` when the daemon's maps disagree (an id without a backend or
/// service entry: not ours to rewrite).
#[inline(always)]
pub fn reverse_service_v4(saddr: u32) -> Result<(u32, *const Service), Verdict> {
    // SAFETY: plain-old-data value read once.
    let id = *unsafe { BACKEND_IDS_V4.get(saddr) }.ok_or(PASS_NOT_VIP)?;
    let b = backend(id).ok_or(PASS_NOT_CLIENT)?;
    // SAFETY: a pointer into the array map's value area.
    let svc = SERVICES
        .get_ptr(unsafe { (*b).service })
        .ok_or(PASS_NOT_CLIENT)?;
    Ok((id, svc))
}

/// The persistence entry of client `daddr` of `svc`, if the forward path sent it to backend
/// `id` (anything else from a backend — health-check replies, traffic to the gateway itself,
/// another backend's client — is `PASS_NOT_CLIENT`).
#[inline(always)]
pub fn client_entry_v4(svc: &Service, id: u32, daddr: u32) -> Result<*const PersistValue, Verdict> {
    let key = PersistKeyV4 {
        service: svc.id,
        client: daddr,
    };
    let e = PERSIST_V4.get_ptr(key).ok_or(PASS_NOT_CLIENT)?;
    // SAFETY: see `forward_v4`.
    if unsafe { (*e).backend } != id {
        return Err(PASS_NOT_CLIENT);
    }
    Ok(e)
}
