//! Next hops (steps 3 and 5 of `daemon.rs`): every backend's next hop resolved in the
//! blocking pool, the results applied to the balancer, and transitions logged.

use std::net::IpAddr;

use tracing::{info, warn};

use super::{Daemon, Resolution, RESOLVE_INTERVAL};
use crate::{
    config::Mode,
    neighbor::{ResolveError, Resolved, Resolver},
    runtime,
    state::{NextHop, StateError},
};

impl Daemon {
    /// Resolves every backend's next hop (in the blocking pool: it runs `ip` and waits for
    /// ARP), records changes and applies them.
    pub(super) async fn refresh_next_hops(&mut self) -> Result<(), StateError> {
        let (targets, results) = self
            .start_resolve()
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.finish_resolve(targets, results)
    }

    /// Starts resolving every backend's next hop in the blocking pool.
    pub(super) fn start_resolve(&self) -> Resolution {
        let targets: Vec<(u32, IpAddr)> = self
            .balancer
            .backends()
            .map(|b| (b.id, b.address))
            .collect();
        let interfaces = self.config.interface_names();
        let resolver = self.resolver.clone();
        tokio::task::spawn_blocking(move || {
            let addrs: Vec<IpAddr> = targets.iter().map(|t| t.1).collect();
            let results = resolver.resolve_all(&addrs, &interfaces);
            (targets, results)
        })
    }

    /// Records the results of [`start_resolve`](Daemon::start_resolve) and applies them.
    /// Backends removed (or whose id was reused) while it ran are skipped.
    pub(super) fn finish_resolve(
        &mut self,
        targets: Vec<(u32, IpAddr)>,
        results: Vec<Result<Resolved, ResolveError>>,
    ) -> Result<(), StateError> {
        for ((id, addr), result) in targets.into_iter().zip(results) {
            if self.balancer.backend(id).map(|b| b.address) != Some(addr) {
                continue;
            }
            let next_hop = self.note_next_hop(id, addr, result);
            self.balancer.set_next_hop(id, next_hop)?;
        }
        runtime::apply_and_log(&mut self.balancer).map(drop)
    }

    /// Turns a resolution result into a next hop, logging transitions only.
    fn note_next_hop(
        &mut self,
        id: u32,
        addr: IpAddr,
        result: Result<Resolved, ResolveError>,
    ) -> Option<NextHop> {
        let vs = self
            .balancer
            .backend(id)
            .map(|b| self.balancer.service(b.service).name.clone())
            .unwrap_or_default();
        let (status, next_hop) = match result {
            // DSR keeps the VIP as destination: a frame handed to a router would be routed
            // back to the VIP's owner, ikelb. The backend must be on one of ikelb's links.
            Ok(r) if self.config.mode == Mode::Dsr && r.via != addr => (
                format!(
                    "mode: dsr needs it on a link of ikelb's, but it is routed via {} on {} \
                     (a frame for the VIP handed to a router comes back)",
                    r.via, r.dev
                ),
                None,
            ),
            Ok(r) => {
                let port = self.balancer.port_of(&r.dev);
                let mac = format_mac(&r.mac);
                let how = if r.via == addr {
                    "on-link".to_owned()
                } else {
                    format!("via {}", r.via)
                };
                (
                    format!("next hop {mac} on {} ({how})", r.dev),
                    port.map(|port| NextHop { port, mac: r.mac }),
                )
            }
            Err(e) => (crate::error_chain(&e), None),
        };
        if self.status.get(&id) != Some(&status) {
            if next_hop.is_some() {
                info!(virtual_server = %vs, backend = %addr, id, "backend usable: {status}");
            } else {
                warn!(
                    virtual_server = %vs, backend = %addr, id,
                    "backend unusable: {status}; retrying every {}", humantime::format_duration(RESOLVE_INTERVAL)
                );
            }
            self.status.insert(id, status);
        }
        next_hop
    }
}

fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
