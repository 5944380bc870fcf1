//! Where IKE clients stop (Windows reports most of these as error 809): the indices of
//! [`maps::IKE_STAGES`](crate::maps::IKE_STAGES), a per-CPU array the data path bumps on IKE
//! messages, IP fragments and SA steering only — never on ESP — and the stage each client
//! entry keeps in its `flags` byte ([`crate::PersistValue::flags`],
//! [`crate::ProbationValue::flags`]) for `lb-ctl lookup`.
//!
//! Only the fixed IKE header is read (RFC 7296 §3.1): the exchange type (byte 18) and the
//! flags (byte 19, Response 0x20), from where `lb-ebpf/src/signal.rs` already finds the
//! header (UDP 500, or behind the non-ESP marker on another service port, RFC 3948 §2.2).

/// Exchange type IKE_SA_INIT (RFC 7296 §3.1).
pub const EXCHANGE_IKE_SA_INIT: u8 = 34;
/// Exchange type IKE_AUTH.
pub const EXCHANGE_IKE_AUTH: u8 = 35;
/// The Response flag of the IKE header's flags byte.
pub const FLAG_RESPONSE: u8 = 0x20;

// The counter of each request is its client's stage − 1 (`STAGE_*`), which the data path
// relies on (`lb-ebpf/src/ike.rs`); a test below keeps them in step.

/// An IKE_SA_INIT request of a client, forwarded to its backend.
pub const SA_INIT_REQUEST: u32 = 0;
/// An IKE_SA_INIT response of a backend (an error notification with a zero responder SPI
/// included: COOKIE, INVALID_KE_PAYLOAD), sent back to its client.
pub const SA_INIT_RESPONSE: u32 = 1;
/// An IKE_AUTH request of a client, forwarded whole (an RFC 7383 IKE fragment included).
pub const AUTH_REQUEST: u32 = 2;
/// An IKE_AUTH request whose first IP fragment was forwarded: the client does not use IKEv2
/// fragmentation (RFC 7383), and whatever drops IP fragments on its path drops its IKE_AUTH.
/// Not also counted under [`AUTH_REQUEST`]: the IKE_AUTH requests are the sum of both.
pub const AUTH_FRAGMENTED: u32 = 3;
/// A non-first IP fragment to a service from a client without any entry: its first fragment
/// never came this way (lost, or it arrived later), so it followed the ring.
pub const FRAGMENT_NO_ENTRY: u32 = 4;
/// A client's IKE message from an address without any entry, steered by its IKE SA's SPI.
pub const STEERED_IKE: u32 = 5;
/// As [`STEERED_IKE`], an ESP packet steered by its ESP SA's SPI.
pub const STEERED_ESP: u32 = 6;
/// Number of counters (size of `IKE_STAGES`).
pub const COUNT: u32 = 7;

/// Short name of each counter, indexed like the counters (the daemon maps them onto the
/// `ikelb_ike_*` metrics: `lb-ctl/src/metrics/collector.rs`).
pub const NAMES: [&str; COUNT as usize] = [
    "sa_init_request",
    "sa_init_response",
    "auth_request",
    "auth_fragmented",
    "fragments_no_entry",
    "steered_ike",
    "steered_esp",
];

/// Every stage, in order (`STAGE_*`).
pub const STAGES: [u8; 6] = [
    STAGE_NONE,
    STAGE_SA_INIT_SENT,
    STAGE_SA_INIT_ANSWERED,
    STAGE_AUTH_SENT,
    STAGE_AUTH_FRAGMENTED,
    STAGE_ESP,
];

/// Bits 1–3 of a client entry's `flags` byte: the last IKE stage the data path saw of it
/// (`STAGE_*`, shifted). Bit 0 is `PROBATION_F_GUESS`; entries written before the stages
/// existed hold 0 here ([`STAGE_NONE`]).
pub const STAGE_MASK: u8 = 0b1110;
/// Shift of the stage in the flags byte.
pub const STAGE_SHIFT: u32 = 1;
/// Flags bit: the entry was made for a packet steered by its SA's SPI (the client's address
/// changed). Kept until the entry is re-selected.
pub const CLIENT_F_STEERED: u8 = 1 << 4;

/// No IKE stage recorded (no IKE message seen since the entry was made, or an entry of an
/// older build).
pub const STAGE_NONE: u8 = 0;
/// The client's IKE_SA_INIT was forwarded; no response from the backend since.
pub const STAGE_SA_INIT_SENT: u8 = 1;
/// The backend's IKE_SA_INIT response went back; no IKE_AUTH from the client since.
pub const STAGE_SA_INIT_ANSWERED: u8 = 2;
/// The client's IKE_AUTH was forwarded whole; no ESP from it since.
pub const STAGE_AUTH_SENT: u8 = 3;
/// The client's IKE_AUTH arrived as IP fragments (first fragment forwarded); no ESP since.
pub const STAGE_AUTH_FRAGMENTED: u8 = 4;
/// ESP from the client: its IKE SA and a child SA are up.
pub const STAGE_ESP: u8 = 5;

/// The stage in a client entry's flags byte.
#[inline(always)]
pub fn stage(flags: u8) -> u8 {
    (flags & STAGE_MASK) >> STAGE_SHIFT
}

/// `flags` with its stage replaced by `stage`.
#[inline(always)]
pub fn with_stage(flags: u8, stage: u8) -> u8 {
    (flags & !STAGE_MASK) | ((stage << STAGE_SHIFT) & STAGE_MASK)
}

/// The short name of a stage (`lb-ctl lookup`'s JSON, metric labels).
pub fn stage_name(stage: u8) -> &'static str {
    match stage {
        STAGE_SA_INIT_SENT => "ike_sa_init_sent",
        STAGE_SA_INIT_ANSWERED => "ike_sa_init_answered",
        STAGE_AUTH_SENT => "ike_auth_sent",
        STAGE_AUTH_FRAGMENTED => "ike_auth_fragmented",
        STAGE_ESP => "established",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_keeps_the_other_flags() {
        let f = with_stage(crate::PROBATION_F_GUESS | CLIENT_F_STEERED, STAGE_ESP);
        assert_eq!(stage(f), STAGE_ESP);
        assert_eq!(f & !STAGE_MASK, crate::PROBATION_F_GUESS | CLIENT_F_STEERED);
        assert_eq!(stage(with_stage(f, STAGE_NONE)), STAGE_NONE);
        for s in STAGE_NONE..=STAGE_ESP {
            assert_eq!(stage(with_stage(0, s)), s);
        }
    }

    #[test]
    fn each_request_counter_is_its_stage_minus_one() {
        for (counter, stage) in [
            (SA_INIT_REQUEST, STAGE_SA_INIT_SENT),
            (SA_INIT_RESPONSE, STAGE_SA_INIT_ANSWERED),
            (AUTH_REQUEST, STAGE_AUTH_SENT),
            (AUTH_FRAGMENTED, STAGE_AUTH_FRAGMENTED),
        ] {
            assert_eq!(counter + 1, u32::from(stage));
        }
    }

    #[test]
    fn names_and_stages_are_distinct() {
        for (i, a) in NAMES.iter().enumerate() {
            assert!(!NAMES[i + 1..].contains(a), "{a:?} twice");
        }
        for (i, s) in STAGES.iter().enumerate() {
            assert_eq!(usize::from(*s), i);
            assert!(STAGES[..i].iter().all(|o| stage_name(*o) != stage_name(*s)));
        }
    }
}
