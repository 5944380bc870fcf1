//! SA steering: a client whose address changes mid-session — a laptop roaming with MOBIKE
//! (RFC 4555), a NAT that rebinds — arrives from an address without any entry, and the ring
//! would send it to another backend, which knows nothing of its SAs. So the forward path
//! learns which backend each IKE SA (by initiator SPI, RFC 7296 §3.1) and each inbound ESP SA
//! (by SPI, RFC 4303 §2.1) of an **established** client is on, and a packet from an address
//! without any entry that names one of them goes there (`select::forward`), with a probation
//! entry for the new address: its replies then come back from the VIP, and its next proof
//! establishes it, as for any new client (`docs/security.md`, "SA steering").
//!
//! Learning is bounded: only a promoted client's SAs (its promotion, then its first packet
//! each tick), never over a known SA (`BPF_NOEXIST`: the first backend an SA was seen on is
//! its backend), and the lookups happen only for a packet from an address without any entry.

use lb_common::{EspSaKey, IkeSaKey};

use crate::{
    maps::{self, ESP_SAS, IKE_SAS},
    signal::Signal,
};

/// `BPF_NOEXIST` (`include/uapi/linux/bpf.h`).
const BPF_NOEXIST: u64 = 1;

/// Records that the SA `sig` names (if any) of an established client of `service` is on
/// `backend`, unless it is known already. A lookup first: an LRU map's update takes a free
/// element before it checks the key, which could evict another SA.
#[inline(always)]
pub fn learn(service: u32, sig: &Signal, backend: u32) {
    if !maps::sa_steering() {
        return;
    }
    if sig.ike_spi != 0 {
        let key = IkeSaKey {
            service,
            _pad: 0,
            spi: sig.ike_spi,
        };
        if IKE_SAS.get_ptr(&key).is_none() {
            let _ = IKE_SAS.insert(&key, &backend, BPF_NOEXIST);
        }
    }
    if sig.esp_spi != 0 {
        let key = EspSaKey {
            service,
            spi: sig.esp_spi,
        };
        if ESP_SAS.get_ptr(&key).is_none() {
            let _ = ESP_SAS.insert(&key, &backend, BPF_NOEXIST);
        }
    }
}

/// The backend of the established SA a mid-session packet names (an IKE message with a
/// responder SPI, or ESP), if this node learned it.
#[inline(always)]
pub fn backend(service: u32, sig: &Signal) -> Option<u32> {
    if !maps::sa_steering() || !sig.mid_session {
        return None;
    }
    // SAFETY (both): plain-old-data values read once.
    if sig.ike_spi != 0 {
        let key = IkeSaKey {
            service,
            _pad: 0,
            spi: sig.ike_spi,
        };
        return unsafe { IKE_SAS.get(&key) }.copied();
    }
    if sig.esp_spi != 0 {
        let key = EspSaKey {
            service,
            spi: sig.esp_spi,
        };
        return unsafe { ESP_SAS.get(&key) }.copied();
    }
    None
}
