//! Backend selection for IPv6 clients: the chain of `select` (VIP → per-client LRU → Maglev
//! ring → backend array) over `PERSIST_V6`, `client_hash_v6` and `BACKEND_IDS_V6`. The rules
//! are those of `select::forward_v4`, step for step; only the key and the hash differ.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    hash::client_hash_v6, PersistKeyV6, PersistValue, Service, BACKEND_F_USABLE, BACKEND_NONE,
    RING_BACKEND_MASK,
};
use network_types::eth::EthHdr;

use crate::{
    counters::{Verdict, DROP_BAD_BACKEND, DROP_NO_BACKEND, PASS_NOT_CLIENT, PASS_NOT_VIP},
    maps::{self, BACKEND_IDS_V6, PERSIST_V6, RINGS, SERVICES},
    parse::{load_mac, store_mac},
    select::{backend, ingress_port, now_ticks, Choice},
};

/// The backend for IPv6 client `saddr` of `svc` (see `select::forward_v4`).
#[inline(always)]
pub fn forward_v6(
    ctx: &XdpContext,
    eth: *const EthHdr,
    svc: &Service,
    saddr: &[u32; 4],
) -> Result<Choice, Verdict> {
    let key = PersistKeyV6 {
        service: svc.id,
        client: *saddr,
    };
    let now = now_ticks();
    // SAFETY (entry accesses): a pointer into the LRU map's value; see `select::forward_v4`.
    let src_mac = unsafe { load_mac(&(*eth).src_addr) };
    let entry = PERSIST_V6.get_ptr_mut(&key);
    if let Some(e) = entry {
        let id = unsafe { (*e).backend };
        if let Some(b) = backend(id) {
            let atime = unsafe { (*e).atime };
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

    let slot = client_hash_v6(saddr, maps::hash_seed())
        .checked_rem(maps::ring_size())
        .ok_or(DROP_NO_BACKEND)?;
    let id = match RINGS.get(svc.ring_base.wrapping_add(slot)) {
        Some(&s) => s & RING_BACKEND_MASK,
        None => BACKEND_NONE,
    };
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
            unsafe { *e = value };
            true
        }
        None => PERSIST_V6.insert(&key, &value, 0).is_ok(),
    };
    Ok(Choice {
        id,
        backend: b,
        persisted,
    })
}

/// The backend whose IPv6 address is `saddr` and its service (see
/// `select::reverse_service_v4`).
#[inline(always)]
pub fn reverse_service_v6(saddr: &[u32; 4]) -> Result<(u32, *const Service), Verdict> {
    // SAFETY: plain-old-data value read once.
    let id = *unsafe { BACKEND_IDS_V6.get(saddr) }.ok_or(PASS_NOT_VIP)?;
    let b = backend(id).ok_or(PASS_NOT_CLIENT)?;
    // SAFETY: a pointer into the array map's value area.
    let svc = SERVICES
        .get_ptr(unsafe { (*b).service })
        .ok_or(PASS_NOT_CLIENT)?;
    Ok((id, svc))
}

/// The persistence entry of IPv6 client `daddr` of `svc`, if the forward path sent it to
/// backend `id` (see `select::client_entry_v4`).
#[inline(always)]
pub fn client_entry_v6(
    svc: &Service,
    id: u32,
    daddr: &[u32; 4],
) -> Result<*const PersistValue, Verdict> {
    let key = PersistKeyV6 {
        service: svc.id,
        client: *daddr,
    };
    let e = PERSIST_V6.get_ptr(&key).ok_or(PASS_NOT_CLIENT)?;
    // SAFETY: see `select::forward_v4`.
    if unsafe { (*e).backend } != id {
        return Err(PASS_NOT_CLIENT);
    }
    Ok(e)
}
