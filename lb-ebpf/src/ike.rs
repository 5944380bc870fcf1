//! Where IKE clients stop (`lb_common::ike`): the `IKE_STAGES` counters and the stage a client
//! entry keeps. Called only where the forward or reverse path has read a packet's IKE header
//! anyway (`signal`), on non-first fragments without an entry, and on SA steering — never
//! for an ESP packet of the slot fast path, and for an established client's ESP at most once
//! a tick (where SA steering reads its SPI; without SA steering an established client's
//! packets are not read).

use lb_common::ike::{
    self, EXCHANGE_IKE_AUTH, EXCHANGE_IKE_SA_INIT, FLAG_RESPONSE, SA_INIT_RESPONSE,
    STAGE_AUTH_SENT, STAGE_ESP, STAGE_NONE, STAGE_SA_INIT_ANSWERED, STAGE_SA_INIT_SENT,
    STEERED_ESP, STEERED_IKE,
};

use crate::{maps::IKE_STAGES, signal::Signal};

/// Bumps one per-CPU `IKE_STAGES` counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = IKE_STAGES.get_ptr_mut(index) {
        // SAFETY: a valid per-CPU slot; XDP runs with preemption disabled.
        unsafe { *c += 1 };
    }
}

/// Counts what a client's forwarded packet shows (`frag`: it is the first fragment of an IP
/// datagram) and returns the stage it puts the client in (`STAGE_NONE`: no change). The
/// counter of an IKE request is its stage − 1 (`lb_common::ike`): one call site bumps it.
///
/// `ESTABLISHED`: the client has a persistence entry. Its IKE_SA_INIT (a new session from
/// the same address) is neither counted nor recorded: the reverse path does not read an
/// established client's replies (that would cost every ESP-in-UDP reply a port check and
/// the verifier ~10,000 instructions), so its response could not be, and the request would
/// look unanswered. Such a client keeps the stage its last session reached.
#[inline(always)]
pub fn forward<const ESTABLISHED: bool>(sig: &Signal, frag: bool) -> u8 {
    if sig.esp_spi != 0 {
        return STAGE_ESP;
    }
    if sig.ike_flags & FLAG_RESPONSE != 0 {
        return STAGE_NONE;
    }
    let stage = match sig.exchange {
        EXCHANGE_IKE_SA_INIT if !ESTABLISHED => STAGE_SA_INIT_SENT,
        EXCHANGE_IKE_AUTH => STAGE_AUTH_SENT + u8::from(frag),
        _ => return STAGE_NONE,
    };
    count(u32::from(stage) - 1);
    stage
}

/// Counts what a backend's packet to a client in probation shows (`sig`, read
/// `Side::Reverse`), and returns the stage it puts the client in (`STAGE_NONE`: no change).
/// An established client's replies are not read (see [`forward`]).
#[inline(always)]
pub fn reverse(sig: &Signal) -> u8 {
    sa_init_response(sig.exchange, sig.ike_flags)
}

/// An IKE_SA_INIT response (by an IKE header's exchange type and flags): counted, and the
/// stage it puts its client in.
#[inline(always)]
fn sa_init_response(exchange: u8, flags: u8) -> u8 {
    if exchange == EXCHANGE_IKE_SA_INIT && flags & FLAG_RESPONSE != 0 {
        count(SA_INIT_RESPONSE);
        return STAGE_SA_INIT_ANSWERED;
    }
    STAGE_NONE
}

/// Records `stage` (unless `STAGE_NONE`) in the flags byte of a client entry; written only
/// when it changes.
///
/// # Safety
/// `flags` points at the `flags` byte of a map value.
#[inline(always)]
pub unsafe fn set(flags: *mut u8, stage: u8) {
    if stage == STAGE_NONE {
        return;
    }
    // SAFETY: caller's map value pointer.
    unsafe {
        let f = *flags;
        if ike::stage(f) != stage {
            *flags = ike::with_stage(f, stage);
        }
    }
}

/// Counts a packet steered by its SA's SPI (`steer`).
#[inline(always)]
pub fn steered(sig: &Signal) {
    count(if sig.ike_spi != 0 {
        STEERED_IKE
    } else {
        STEERED_ESP
    });
}
