//! A reload's program swap (docs/operations.md, "Reload"; `Dataplane::swap_program`): the
//! embedded object loaded again with the globals it was started with, `PERSIST_TIMEOUT_TICKS`
//! changed, its maps bound to the same pins (the maps are the running ones: nothing is
//! created or migrated), and every interface's link moved to the new program with
//! `BPF_LINK_UPDATE` ([`pin::swap`]) — the swap a restart with other globals makes.

use aya::EbpfLoader;
use lb_common::globals;
use tracing::info;

use super::load::xdp_program;
use crate::{
    dataplane::Swapper,
    kernel,
    pin::{self, MapPlan, Pins},
    EBPF_OBJECT, XDP_PROGRAM,
};

/// The swapper of the daemon's data path: `globals` and `max_entries` as loaded at start,
/// `targets` the attached interfaces.
pub(super) fn swapper(
    pins: Pins,
    mut globals: Vec<(&'static str, u32)>,
    max_entries: Vec<(&'static str, u32)>,
    targets: Vec<pin::Target>,
) -> Swapper {
    Box::new(move |ticks| {
        let mut next = globals.clone();
        for g in &mut next {
            if g.0 == globals::PERSIST_TIMEOUT_TICKS {
                g.1 = ticks;
            }
        }
        let specs =
            pin::expected_specs(EBPF_OBJECT, &max_entries).map_err(|e| crate::error_chain(&e))?;
        let mut loader = EbpfLoader::new();
        for (name, value) in &next {
            loader.override_global(name, value, true);
        }
        for &(name, n) in &max_entries {
            loader.map_max_entries(name, n);
        }
        pin::configure_loader(&mut loader, &pins, &MapPlan::Reuse, &specs)
            .map_err(|e| crate::error_chain(&e))?;
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| format!("loading the XDP object: {}", crate::error_chain(&e)))?;
        xdp_program(&mut ebpf).map_err(|e| crate::error_chain(&e))?;
        let fingerprint = pin::fingerprint(EBPF_OBJECT, &next);
        let swapped =
            pin::swap(&mut ebpf, XDP_PROGRAM, &pins, &targets, &fingerprint).map_err(|e| {
                match kernel::refusal(XDP_PROGRAM, &e) {
                    Some(refused) => crate::error_chain(&refused),
                    None => crate::error_chain(&e),
                }
            })?;
        for iface in &swapped {
            info!(interface = %iface, fingerprint = %fingerprint, persist_timeout_ticks = ticks, "XDP program replaced atomically (BPF_LINK_UPDATE)");
        }
        globals = next;
        Ok(ebpf)
    })
}
