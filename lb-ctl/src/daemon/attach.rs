//! Attaching and detaching (steps 4 and 6 of `daemon.rs`): the program put on every
//! interface through the pins, the data path left running or removed on the way out, and
//! the packet counters logged at exit.

use aya::programs::XdpMode;
use lb_common::counter;
use tracing::{debug, info};

use super::{Daemon, DaemonError};
use crate::{config::XdpAttachMode, dataplane::Dataplane, kernel, pin, XDP_PROGRAM};

impl Daemon {
    /// Puts the program on every interface through the pins ([`pin::attach`]): keeps a
    /// running identical program, swaps a different one in atomically, attaches fresh where
    /// nothing is pinned.
    pub(super) fn attach_all(&mut self) -> Result<(), DaemonError> {
        let modes: &[(XdpMode, &'static str)] = match self.config.xdp_mode {
            XdpAttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
            XdpAttachMode::Native => &[(XdpMode::Driver, "native")],
            XdpAttachMode::Generic => &[(XdpMode::Skb, "generic")],
        };
        let targets: Vec<pin::Target> = self
            .balancer
            .ifaces()
            .iter()
            .map(|i| pin::Target {
                iface: i.name.clone(),
                ifindex: i.ifindex,
            })
            .collect();
        let r = pin::attach(
            self.balancer.dataplane_mut().ebpf_mut(),
            XDP_PROGRAM,
            &self.pins,
            &targets,
            modes,
            &self.fingerprint,
            self.migrate,
        )
        // The verifier runs here (`Xdp::load`): `EbpfLoader::load` only creates the maps.
        .map_err(|e| match kernel::refusal(XDP_PROGRAM, &e) {
            Some(refused) => DaemonError::Kernel(refused),
            None => e.into(),
        })?;
        for iface in &r.kept {
            info!(interface = %iface, "XDP program unchanged: the pinned link keeps running it");
        }
        for iface in &r.replaced {
            info!(interface = %iface, fingerprint = %self.fingerprint, "XDP program replaced atomically (BPF_LINK_UPDATE)");
        }
        for (iface, mode) in &r.attached {
            info!(interface = %iface, mode, "XDP attached and pinned");
        }
        for iface in &r.removed {
            info!(interface = %iface, "XDP detached: the interface left the config");
        }
        if let Some(n) = r.copied {
            info!(
                entries = n,
                "map migration committed; persistence entries carried over"
            );
        }
        Ok(())
    }

    /// On the way out: with `detach_on_exit`, detach and remove every pin; otherwise leave
    /// the data path running for the next daemon.
    pub(super) fn detach_all(&mut self) -> Result<(), DaemonError> {
        let dir = self.pins.dir().display();
        if !self.config.detach_on_exit {
            info!(pins = %dir, "leaving XDP attached (detach_on_exit: false): the next daemon takes over the pinned data path");
            return Ok(());
        }
        for iface in pin::remove_all(&self.pins)? {
            info!(interface = %iface, "XDP detached");
        }
        info!(pins = %dir, "pins removed");
        Ok(())
    }

    /// Logs the non-zero packet counters on the way out (while running they are on /metrics).
    pub(super) fn log_counters(&self) {
        match self.balancer.dataplane().counters() {
            Ok(c) => {
                let nonzero: Vec<String> = c
                    .iter()
                    .zip(counter::LABELS)
                    .filter(|(n, _)| **n > 0)
                    .map(|(n, (action, reason))| format!("{action}/{reason}={n}"))
                    .collect();
                info!(
                    "packet counters: {}",
                    if nonzero.is_empty() {
                        "none".to_owned()
                    } else {
                        nonzero.join(" ")
                    }
                );
            }
            Err(e) => debug!("reading counters: {}", crate::error_chain(&e)),
        }
    }
}
