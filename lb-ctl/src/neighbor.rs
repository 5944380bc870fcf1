//! Next hop of each backend: which interface the kernel routes it out of, and the MAC
//! address to put in the frame (the backend's own when it is on-link, its gateway's
//! otherwise).
//!
//! The XDP program does no FIB or neighbour lookup on the forward path: the daemon resolves
//! the next hop here and writes it into `BACKENDS`. The kernel stays the authority (`ip -j
//! route get`, `ip -j neigh show`); when the neighbour entry is missing or incomplete a UDP
//! datagram to the backend's discard port makes the kernel ARP for it, and the look-up is
//! retried briefly. A backend that cannot be resolved stays unusable; the daemon retries it.
//!
//! Cost: a refresh reads the whole neighbour table with one `ip -j neigh show` (both
//! families, every device) and looks each backend up in it. Routes are cached per backend:
//! `ip -j route get` runs for a new backend, again as soon as its neighbour is not usable
//! (the route may have moved), and otherwise every 30–60 s ([`ROUTE_TTL`]). So with every
//! backend resolving, a 5-s refresh of 1,000 backends spawns one process plus about 110
//! route look-ups on average, instead of 2,000 processes.
//!
//! A fault on the gateway is not a backend failure (docs/operations.md, "Limits and
//! faults"): when `ip` cannot run (not found, out of descriptors), fails without the
//! kernel's answer, or prints something unreadable, each backend keeps its last known next
//! hop; the fault is logged once per run of faulty refreshes and counted
//! ([`FAULTS`]). A real observation that the next hop is gone (no neighbour entry, FAILED,
//! no route) clears it only after [`ABSENT_TO_CLEAR`] consecutive refreshes, as health
//! checks need `fall` failures. `ip` is run by absolute path, found once
//! ([`paths::IP_COMMANDS`](crate::paths::IP_COMMANDS)).
//!
//! ## Modules
//!
//! * `neighbor.rs` (this file): [`Resolved`], [`ResolveError`], the [`Resolver`] trait, the
//!   probe constants, [`ABSENT_TO_CLEAR`], [`FAULTS`], and [`IpCommand`] itself.
//! * `neighbor/ip.rs`: the kernel through iproute2 — [`Kernel`], [`System`] (`ip` by
//!   absolute path, UDP probes), and the parsing of `ip -j route get` / `ip -j neigh show`.
//! * `neighbor/resolve.rs`: resolution — the route cache ([`ROUTE_TTL`]), one neighbour
//!   dump per refresh, probes and polls for the unresolved.
//! * `neighbor/hysteresis.rs`: the last known next hops — kept across faults, dropped after
//!   [`ABSENT_TO_CLEAR`] absences in a row — and the fault log and count.

use std::{
    net::IpAddr,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use prometheus::IntCounter;

use hysteresis::Memory;
use resolve::RouteCache;

mod hysteresis;
mod ip;
mod resolve;

pub use ip::{parse_mac, Kernel, System};
pub use resolve::ROUTE_TTL;

/// UDP discard port (RFC 863): the probe that triggers neighbour resolution goes there.
const PROBE_PORT: u16 = 9;
/// After a probe, how often and how long to look for the neighbour entry.
const PROBE_POLL: Duration = Duration::from_millis(50);
const PROBE_POLLS: u32 = 20;

/// Consecutive refreshes that must each observe a backend's next hop gone (no neighbour
/// entry, INCOMPLETE or FAILED, no route, routed elsewhere) before the last known one is
/// dropped and the backend becomes unusable: at the daemon's 5-s refresh, 10–15 s. A
/// backend that really died is taken out sooner by its health checks.
pub const ABSENT_TO_CLEAR: u32 = 3;

/// `ikelb_next_hop_faults_total`: backend look-ups that failed on the gateway's side.
pub static FAULTS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "ikelb_next_hop_faults_total",
        "Backend next-hop look-ups that failed on the gateway's side (ip could not run, failed without the kernel's answer, or printed something unreadable); the last known next hop was kept.",
    )
    .expect("valid metric definition")
});

/// A resolved next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Egress interface name.
    pub dev: String,
    /// Address that was resolved: the gateway, or the backend itself when on-link.
    pub via: IpAddr,
    pub mac: [u8; 6],
}

/// Why a backend's next hop is unknown.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("parsing the output of `{command}`: {source}")]
    Parse {
        command: String,
        source: serde_json::Error,
    },
    #[error("no route to {addr}")]
    NoRoute { addr: IpAddr },
    #[error("{addr} is routed as {kind}, not to a neighbour")]
    NotUnicast { addr: IpAddr, kind: String },
    #[error("{addr} is routed out of {dev}, which is not one of the configured interfaces")]
    ForeignInterface { addr: IpAddr, dev: String },
    #[error("neighbour {via} on {dev} did not resolve (state {state})")]
    Unresolved {
        via: IpAddr,
        dev: String,
        state: String,
    },
    #[error("reading the neighbour table: {message}")]
    Neighbours { message: String },
    #[error("sending the resolution probe to {addr}: {source}")]
    Probe {
        addr: IpAddr,
        source: std::io::Error,
    },
}

impl ResolveError {
    /// A fault of the gateway (the look-up itself failed), as opposed to the kernel's answer
    /// that the next hop is not there. `ip route get` failing with `RTNETLINK answers: …` is
    /// the kernel saying there is no route: an answer, not a fault.
    pub fn is_fault(&self) -> bool {
        match self {
            Self::Spawn { .. }
            | Self::Parse { .. }
            | Self::Neighbours { .. }
            | Self::Probe { .. } => true,
            Self::Command { stderr, .. } => !stderr.starts_with("RTNETLINK answers"),
            Self::NoRoute { .. }
            | Self::NotUnicast { .. }
            | Self::ForeignInterface { .. }
            | Self::Unresolved { .. } => false,
        }
    }
}

/// Resolves backend next hops; a trait so the daemon's loop can be tested without a kernel.
pub trait Resolver {
    /// Next hop of each of `addrs` (in order), which must leave through one of
    /// `interfaces`.
    fn resolve_all(
        &self,
        addrs: &[IpAddr],
        interfaces: &[String],
    ) -> Vec<Result<Resolved, ResolveError>>;
}

/// The kernel's view through iproute2's JSON output. Clones share the route cache and the
/// last known next hops, which the daemon keeps across refreshes.
#[derive(Clone, Debug)]
pub struct IpCommand {
    routes: Arc<Mutex<RouteCache>>,
    memory: Arc<Mutex<Memory>>,
    kernel: Arc<dyn Kernel>,
    poll: Duration,
    polls: u32,
}

impl Default for IpCommand {
    fn default() -> Self {
        Self::with_kernel(Arc::new(System))
    }
}

impl IpCommand {
    /// Through `kernel` instead of the real system (tests), polling for a probed neighbour
    /// as the daemon does.
    pub fn with_kernel(kernel: Arc<dyn Kernel>) -> Self {
        Self {
            routes: Arc::default(),
            memory: Arc::default(),
            kernel,
            poll: PROBE_POLL,
            polls: PROBE_POLLS,
        }
    }
}

#[cfg(test)]
mod tests;
