//! Backend selection for both address families (Katran's chain: VIP → per-client state →
//! Maglev ring → backend array), and the reverse-path check that a backend's packet answers
//! one of its live clients. Only the key, the hash and the maps differ per family
//! (`family::Family`); the rules are one.
//!
//! Per-client state has two tiers (`docs/security.md`, "Floods"):
//!
//! * `PERSIST_*` — **established** clients, those that proved return routability. Only a
//!   promotion inserts here, so a spoofed flood never evicts one of them.
//! * `PROBATION_*` — new clients. A miss in both maps takes the Maglev ring and creates a
//!   probation entry when this CPU's ration allows (`edge::take_quota`). The reverse path
//!   records in it what the backend told the client (`signal`), and the client's packet that
//!   echoes it promotes the entry. A flood of new sources churns this map only; a client it
//!   costs an entry follows the ring, as without persistence.
//!
//! A hit whose backend is usable (and still this service's) and whose entry is not idle wins
//! over the ring; otherwise the ring re-selects and the entry is overwritten in place. An
//! entry learns a new client MAC or interface only when the kernel's FIB confirms that the
//! client is reached that way (`edge::confirms`): one spoofed frame cannot redirect a
//! client's replies.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use lb_common::{
    event,
    hash::ring_slot,
    ike::{self as ike_counter, CLIENT_F_STEERED},
    Backend, PersistValue, ProbationValue, Service, BACKEND_F_USABLE, BACKEND_NONE,
    PROBATION_F_GUESS, RING_BACKEND_MASK, RING_F_CHANGED, TICK_SHIFT,
};
use network_types::eth::EthHdr;

use crate::{
    counters::{
        self, Verdict, DROP_BAD_BACKEND, DROP_NO_BACKEND,
    },
    edge,
    family::Family,
    ike,
    maps::{self, BACKENDS, REFRESHED_V4, RINGS},
    parse::{load_mac, store_mac, Side},
    sanity,
    signal::{self, Pkt},
    steer,
};

mod reverse;

pub use reverse::{hop, owner, reverse, reverse_service};

/// Whether ring slot `index` (of a service of either family) is stamped with tick `now` in
/// `REFRESHED_V4`, which is indexed like `RINGS` for both families despite its name
/// (`maps::REFRESHED_V4`).
#[inline(always)]
fn stamped(index: u32, now: u32) -> bool {
    REFRESHED_V4.get(index).copied() == Some(now)
}

/// Stamps ring slot `index` with tick `now` (see [`stamped`]).
#[inline(always)]
fn stamp(index: u32, now: u32) {
    // Only the fast path reads the stamps (the verifier prunes this when it is off).
    if !maps::slot_fast_path() {
        return;
    }
    if let Some(stamp) = REFRESHED_V4.get_ptr_mut(index) {
        // SAFETY: a pointer into the array map; racing writers write the same tick.
        unsafe {
            if *stamp != now {
                *stamp = now;
            }
        }
    }
}

/// Flags ring slot `index` `RING_F_CHANGED` when `id` is not its backend: an entry of the
/// slot now names another backend than the ring's (SA steering), so the slot fast path must
/// look its clients' entries up. The daemon's flag sweep adopts a flag set here, and clears
/// it once no live entry of the slot disagrees (`lb-ctl/src/state/sweep.rs`).
#[inline(always)]
fn flag_if_divergent(index: u32, id: u32) {
    if !maps::slot_fast_path() {
        return;
    }
    if let Some(v) = RINGS.get_ptr_mut(index) {
        // SAFETY: a pointer into the array map; the daemon writes whole slots.
        unsafe {
            if *v & RING_BACKEND_MASK != id && *v & RING_F_CHANGED == 0 {
                *v |= RING_F_CHANGED;
            }
        }
    }
}

/// The chosen backend of a forwarded packet.
///
/// `repr(C)` keeps `id` first: `Result<Choice, Verdict>` then lays the error's `u32` over `id`
/// rather than over the low half of `backend`. Over the pointer, LLVM 23 (the nightly pinned
/// in lb-ebpf/rust-toolchain.toml) moves the pointer as two 32-bit halves, and the verifier
/// refuses shifts of a map value pointer (docs/toolchain.md).
#[repr(C)]
pub struct Choice {
    pub id: u32,
    pub backend: *const Backend,
    /// False when the persistence map refused an entry (counted as `FORWARD_PERSIST_FULL`;
    /// the packet is forwarded anyway).
    pub persisted: bool,
}

/// Now, in nanoseconds (coarse clock) and in persistence ticks.
#[inline(always)]
fn now() -> (u64, u32) {
    // SAFETY: a helper without arguments.
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    (ns, (ns >> TICK_SHIFT) as u32)
}

/// Now, in persistence ticks.
#[inline(always)]
pub fn now_ticks() -> u32 {
    now().1
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

/// Backend `id` if persisted clients of `svc` may reach it (usable, and still this service's:
/// the daemon recycles ids).
#[inline(always)]
fn usable(id: u32, svc: &Service) -> Option<*const Backend> {
    let b = backend(id)?;
    // SAFETY: a pointer into the array map's value area.
    unsafe { ((*b).flags & BACKEND_F_USABLE != 0 && (*b).service == svc.id).then_some(b) }
}

/// An entry last seen at `atime` is still live at `now` (not idle past the timeout).
#[inline(always)]
fn live(atime: u32, now: u32) -> bool {
    lb_common::is_live(now, atime, maps::persist_timeout_ticks())
}

/// Index in `RINGS` (and `REFRESHED_V4`) of the client's slot of the service's active Maglev
/// table.
#[inline(always)]
fn ring_index(svc: &Service, hash: u32) -> Result<u32, Verdict> {
    let m = maps::ring_size();
    if m == 0 {
        return Err(DROP_NO_BACKEND);
    }
    Ok(svc.ring_base.wrapping_add(ring_slot(hash, m)))
}

/// A ring slot's value: backend id | `RING_F_*` (`BACKEND_NONE` beyond the map).
#[inline(always)]
fn ring_at(index: u32) -> u32 {
    RINGS.get(index).copied().unwrap_or(BACKEND_NONE)
}

/// The backend of ring slot `index`: `DROP_NO_BACKEND` for an empty slot (no usable backend
/// when the table was built), `DROP_BAD_BACKEND` for an id without a backend.
#[inline(always)]
fn ring_backend(index: u32) -> Result<(u32, *const Backend), Verdict> {
    let id = ring_at(index) & RING_BACKEND_MASK;
    if id == BACKEND_NONE {
        return Err(DROP_NO_BACKEND);
    }
    Ok((id, backend(id).ok_or(DROP_BAD_BACKEND)?))
}

/// Where a client's frames come from: the frame's source MAC and the ingress interface.
#[derive(Clone, Copy)]
pub struct Origin {
    pub mac: (u32, u16),
    pub port: u8,
    pub ifindex: u32,
}

impl Origin {
    #[inline(always)]
    pub fn of(ctx: &XdpContext, eth: *const EthHdr, ingress_info: u32) -> Self {
        Self {
            // SAFETY: a bounds-checked header.
            mac: unsafe { load_mac(&(*eth).src_addr) },
            port: edge::port_of(ingress_info),
            ifindex: ctx.ingress_ifindex() as u32,
        }
    }
}

/// Keeps an entry's MAC and port, or moves them to `o` when the FIB confirms the client is
/// reached that way. `e` points at a `PersistValue` or at the same leading fields of a
/// `ProbationValue`.
#[inline(always)]
unsafe fn learn<F: Family>(
    ctx: &XdpContext,
    e: *mut PersistValue,
    svc: &Service,
    client: &F::Addr,
    o: &Origin,
) {
    // SAFETY: caller's map value pointer.
    unsafe {
        if load_mac(&(*e).client_mac) == o.mac && (*e).port == o.port {
            return;
        }
        let mut mac = [0u8; 6];
        store_mac(&mut mac, o.mac);
        if edge::confirms(ctx, F::fib(F::vip(svc)), F::fib(client), o.ifindex, &mac) {
            store_mac(&mut (*e).client_mac, o.mac);
            (*e).port = o.port;
            counters::event(event::MAC_MOVE_ACCEPTED);
        } else {
            counters::event(event::MAC_MOVE_REJECTED);
        }
    }
}

/// The backend for client `saddr` of `svc` (module docs). `bulk` (only with `SLOT_FAST_PATH`
/// on, see `l4::bulk`): when the client's slot is not flagged `RING_F_CHANGED`, its
/// backend is usable and a packet of the slot already refreshed its client's entry in this
/// tick (`REFRESHED_V4`), the ring's backend is the one its sessions began on and both maps
/// are skipped. So each tick the first packet of every slot refreshes an entry: a slot's
/// only client (most, at up to a client per slot) every tick, the clients of a shared slot
/// in turn — each within a few ticks, with ample margin on `persistence_timeout` (see
/// `lb-ebpf/README.md`, "Slot fast path", for why not one lookup per client and tick).
#[inline(always)]
pub fn forward<F: Family>(
    ctx: &XdpContext,
    svc: &Service,
    saddr: &F::Addr,
    pkt: &Pkt,
    origin: &Origin,
    bulk: bool,
) -> Result<Choice, Verdict> {
    if maps::ring_size() == 0 {
        return Err(DROP_NO_BACKEND);
    }
    // The client's ring slot. The fast path's first test needs it; with the fast path off an
    // established client's packet needs none, and skips the client hash (four words over
    // IPv6) until a choice is made. Stamps and flags are the fast path's only.
    let slot = || ring_index(svc, F::hash(saddr));
    let fast = if maps::slot_fast_path() {
        Some(slot()?)
    } else {
        None
    };
    let index = || fast.map_or_else(slot, Ok);
    let (now_ns, now) = now();
    if let (true, Some(index)) = (bulk, fast) {
        let s = ring_at(index);
        if s & RING_F_CHANGED == 0 {
            let id = s & RING_BACKEND_MASK;
            if let Some(b) = usable(id, svc) {
                if stamped(index, now) {
                    counters::event(event::FAST_PATH);
                    return Ok(Choice {
                        id,
                        backend: b,
                        persisted: true,
                    });
                }
            }
        }
    }
    // An IKE_SA_INIT under a flood of new sources (this CPU's ration used up) in an unchanged
    // slot follows the ring without either map: the slot's invariant (no live entry names
    // another backend than its ring's, as for the fast path) makes the ring's answer the one
    // an established entry would give, and it could not get a probation entry. A spoofed
    // IKE_SA_INIT then costs one ring read and `BACKEND_IDS_*`, no lookup in the large maps
    // (`docs/security.md`, "Floods"). Only UDP that is not bulk reads its IKE header here.
    let early = if let (false, true, true, Some(index)) =
        (bulk, pkt.first, pkt.csum.udp().is_some(), fast)
    {
        let sig = signal::read(ctx, pkt, Side::Forward);
        if sig.ike_init && ring_at(index) & RING_F_CHANGED == 0 && !edge::quota_left(now_ns) {
            if let Some(id) = F::listed(saddr) {
                return Err(sanity::listed_source(id));
            }
            return throttled(index);
        }
        Some(sig)
    } else {
        None
    };
    let key = F::key(svc.id, saddr);
    // SAFETY (entry accesses below): pointers into the LRU maps' values. A concurrent
    // eviction can recycle one under us; the worst outcome is one stale or lost entry update.
    if let Some(e) = F::persist().get_ptr_mut(&key) {
        let (id, b) = match unsafe { usable((*e).backend, svc) } {
            Some(b) if live(unsafe { (*e).atime }, now) => (unsafe { (*e).backend }, b),
            _ => {
                // Re-selection in place (no LRU insert, no eviction).
                let (id, b) = ring_backend(index()?)?;
                unsafe { (*e).backend = id };
                (id, b)
            }
        };
        unsafe {
            let first_in_tick = (*e).atime != now;
            if first_in_tick {
                (*e).atime = now;
            }
            // The SA the packet names, for SA steering, and the client's IKE stage (`ike`): of
            // every IKE message (rare; several clients behind one NAT address each have their
            // own), and of the address's first packet each tick (ESP is the bulk: once a tick
            // is enough to learn a rekey's SA, and to see the client got that far). Without
            // SA steering an established client's packets are not read at all (its stage
            // stays where the handshake left it: `docs/metrics.md`).
            if maps::sa_steering() && pkt.first && (first_in_tick || !bulk) {
                let sig = match early {
                    Some(sig) => sig,
                    None => signal::read(ctx, pkt, Side::Forward),
                };
                steer::learn(svc.id, &sig, id, first_in_tick);
                ike::set(&raw mut (*e).flags, ike::forward::<true>(&sig, pkt.frag));
            }
            learn::<F>(ctx, e, svc, saddr, origin);
        }
        if let Some(i) = fast {
            stamp(i, now);
        }
        return Ok(Choice {
            id,
            backend: b,
            persisted: true,
        });
    }

    // Not established. A backend's or the gateway's own address is no client: it follows no
    // ring and gets no entry (`sanity`; the reverse path's lookup, made only here).
    if let Some(id) = F::listed(saddr) {
        return Err(sanity::listed_source(id));
    }
    // What the packet says decides the rest. Non-first fragments say nothing.
    let sig = match early {
        Some(sig) => sig,
        None if pkt.first => signal::read(ctx, pkt, Side::Forward),
        None => signal::Signal::default(),
    };
    // Under a flood of new sources (this CPU's ration used up), an IKE_SA_INIT follows the
    // ring without even looking for a probation entry: it could not get one, and a client
    // that has not got far enough to be established follows the ring during a flood anyway
    // (`docs/security.md`). In a changed slot, or with the fast path off, this keeps a
    // spoofed IKE_SA_INIT at two map lookups (its entry, `BACKEND_IDS_*`).
    if sig.ike_init && !edge::quota_left(now_ns) {
        return throttled(index()?);
    }

    if let Some(p) = F::probation().get_ptr_mut(&key) {
        let e = p.cast::<PersistValue>();
        let (id, b) = match unsafe { usable((*p).backend, svc) } {
            Some(b) if live(unsafe { (*p).atime }, now) => (unsafe { (*p).backend }, b),
            _ => {
                let (id, b) = ring_backend(index()?)?;
                unsafe {
                    (*p).backend = id;
                    (*p).proof = 0;
                    (*p).flags = 0;
                }
                (id, b)
            }
        };
        // The ring's guess for a mid-session packet of an unknown SA, not confirmed by its
        // backend yet: a packet of a known SA corrects it (`lb_common::PROBATION_F_GUESS`).
        let (id, b) = match unsafe { (*p).flags } & PROBATION_F_GUESS {
            0 => (id, b),
            _ => match steer::backend(svc.id, &sig).and_then(|s| Some((s, usable(s, svc)?))) {
                Some((s, sb)) => {
                    unsafe {
                        (*p).backend = s;
                        (*p).proof = 0;
                        (*p).flags = CLIENT_F_STEERED;
                    }
                    if let Some(i) = fast {
                        flag_if_divergent(i, s);
                    }
                    counters::event(event::SA_STEERED);
                    ike::steered(&sig);
                    (s, sb)
                }
                None => (id, b),
            },
        };
        unsafe {
            (*p).atime = now;
            ike::set(&raw mut (*p).flags, ike::forward::<false>(&sig, pkt.frag));
            learn::<F>(ctx, e, svc, saddr, origin);
        }
        let recorded = unsafe { (*p).proof };
        let mut persisted = true;
        if recorded != 0 && echoes::<F>(sig.proof, svc.id, saddr, recorded, id) {
            // The client echoed what its backend sent it: it receives at its address. Its
            // flags carry its IKE stage over (`PROBATION_F_GUESS` is cleared by then: a
            // proof is recorded only with it).
            let value = unsafe { *e };
            persisted = F::persist().insert(&key, &value, 0).is_ok();
            if persisted {
                let _ = F::probation().remove(&key);
                counters::event(event::PROMOTED);
                steer::learn(svc.id, &sig, id, true);
            }
        }
        if let Some(i) = fast {
            stamp(i, now);
        }
        return Ok(Choice {
            id,
            backend: b,
            persisted,
        });
    }

    // A client without any entry: the backend of the established SA its packet names, if
    // it moved (`steer`), else the ring.
    let steered = steer::backend(svc.id, &sig).and_then(|id| Some((id, usable(id, svc)?)));
    let (id, b) = match steered {
        Some(choice) => choice,
        None => ring_backend(index()?)?,
    };
    // Non-first fragments carry nothing to keep (their first fragment made the entry), nor
    // does a NAT keepalive: it would pin a client that moved to the ring's backend before
    // its first ESP packet could be steered.
    if !pkt.first {
        // Its first fragment made no entry: lost, throttled, or not here yet.
        ike::count(ike_counter::FRAGMENT_NO_ENTRY);
    }
    if !pkt.first || sig.keepalive {
        return Ok(Choice {
            id,
            backend: b,
            persisted: true,
        });
    }
    let mut flags = ike_counter::with_stage(0, ike::forward::<false>(&sig, pkt.frag));
    if steered.is_some() {
        if let Some(i) = fast {
            flag_if_divergent(i, id);
        }
        counters::event(event::SA_STEERED);
        ike::steered(&sig);
        flags |= CLIENT_F_STEERED;
    } else if sig.mid_session {
        counters::event(event::LOST);
        flags |= PROBATION_F_GUESS;
    }
    let persisted = if edge::take_quota(now_ns) {
        let mut value = ProbationValue {
            backend: id,
            atime: now,
            client_mac: [0; 6],
            port: origin.port,
            flags,
            proof: 0,
        };
        // SAFETY: a field of a local.
        unsafe { store_mac(&mut value.client_mac, origin.mac) };
        let ok = F::probation().insert(&key, &value, 0).is_ok();
        if ok {
            counters::event(event::PROBATION_INSERT);
        }
        ok
    } else {
        counters::event(event::PROBATION_THROTTLED);
        true
    };
    Ok(Choice {
        id,
        backend: b,
        persisted,
    })
}

/// A new client past this CPU's ration: the ring's backend, no entry (`probation_throttled`).
#[inline(always)]
fn throttled(index: u32) -> Result<Choice, Verdict> {
    counters::event(event::PROBATION_THROTTLED);
    let (id, b) = ring_backend(index)?;
    Ok(Choice {
        id,
        backend: b,
        persisted: true,
    })
}

/// Whether a probation client's packet echoes a proof its backend `id` sent it: the entry's
/// last one, or any other in `PROOFS_*` (several clients behind one NAT address handshaking at
/// once each echo their own).
#[inline(always)]
fn echoes<F: Family>(proof: u64, service: u32, client: &F::Addr, recorded: u64, id: u32) -> bool {
    if proof == 0 {
        return false;
    }
    if proof == recorded {
        return true;
    }
    // SAFETY: plain-old-data value read once.
    unsafe { F::proofs().get(&F::proof_key(service, client, proof)) }.copied() == Some(id)
}
