//! `lb-ctl daemon`: validate, load, fill the maps, attach, keep next hops current, and on
//! SIGINT/SIGTERM detach and exit.
//!
//! Order matters and is fixed:
//! 1. the whole config is validated and every interface looked up — nothing is loaded
//!    before the file is known good;
//! 2. the running kernel is probed for what the program needs ([`crate::kernel`]), then the
//!    XDP object is loaded with its load-time globals and map sizes from the config;
//! 3. interfaces, services, backends and tables are written, and next hops resolved, so the
//!    first packet already meets a complete configuration;
//! 4. the program is attached to every interface (`xdp_mode`);
//! 5. with `announce`, the host routes of the VIPs this node can serve are reconciled
//!    ([`crate::announce`]), then kept current after every event; next hops are re-resolved
//!    (and the routes re-read) every [`RESOLVE_INTERVAL`] until a signal arrives;
//! 6. the routes are withdrawn (`announce.withdraw_on_stop`, or `detach_on_exit`); with
//!    `detach_on_exit`, every attachment is detached and the pins removed; without it
//!    (the default) the data path stays attached for the next daemon.
//!
//! Maps, program and links are pinned under `<bpffs>/<instance>` ([`crate::pin`]): step 2
//! reuses (or migrates) what a previous daemon pinned, step 3 adopts its state
//! ([`Balancer::adopt`]), and step 4 keeps the running program or swaps the new one in
//! atomically.
//!
//! ## Modules
//!
//! * `daemon.rs` (this file): [`DaemonError`], the config check and interface lookups,
//!   [`run`], [`unload`], and the running daemon's state.
//! * `daemon/load.rs`: steps 1–2 — service ids and interface ports, resource limits, the
//!   kernel probe, the XDP object loaded against the pins.
//! * `daemon/run.rs`: the start in order (steps 2–4), the loop until a signal (step 5) and
//!   the routes' withdrawal (step 6).
//! * `daemon/next_hops.rs`: next-hop resolution in the blocking pool and its results applied
//!   (steps 3 and 5).
//! * `daemon/attach.rs`: attaching through the pins (step 4), detaching on the way out
//!   (step 6), the packet counters logged at exit.
//! * `daemon/swap.rs`: a reload's program swap (`persistence_timeout`): the object loaded
//!   again with the new global and every link moved to it (`BPF_LINK_UPDATE`).

use std::{collections::HashMap, ffi::CString, net::IpAddr, path::PathBuf, time::Duration};

use aya::{programs::ProgramError, EbpfError};

use crate::{
    announce::{self, Announcer, Netlink, RouteError},
    config::{self, Config, ConfigError},
    dataplane::AyaDataplane,
    identity,
    neighbor::{parse_mac, IpCommand, ResolveError, Resolved},
    paths,
    pin::{self, PinError, Pins},
    state::{Balancer, StateError},
};

mod attach;
mod load;
mod next_hops;
mod run;
mod swap;

pub use load::program_globals;

/// How often next hops are looked up again: unresolved backends are retried, resolved ones
/// re-checked (a backend or gateway whose MAC changed is rewritten).
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// Why the daemon stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("reading the MAC address of interface {iface} from {path}: {source}")]
    InterfaceMac {
        iface: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("interface {iface} has no Ethernet address ({found:?} in {path})")]
    InterfaceNotEthernet {
        iface: String,
        path: PathBuf,
        found: String,
    },
    #[error(
        "the embedded XDP object is empty: lb-ctl was built with AYA_BUILD_SKIP=1; \
         rebuild without it (cargo xtask bootstrap installs bpf-linker)"
    )]
    NoObject,
    #[error("loading the XDP object: {source}")]
    Load { source: Box<EbpfError> },
    /// The kernel lacks a piece the XDP program needs, or its verifier refused the program.
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error("program {name} is not in the XDP object")]
    MissingProgram { name: &'static str },
    #[error("program {name} is not an XDP program: {source}")]
    ProgramType {
        name: &'static str,
        source: ProgramError,
    },
    #[error("loading program {name} into the kernel: {source}")]
    LoadProgram {
        name: &'static str,
        source: ProgramError,
    },
    #[error("attaching to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
    /// Boxed: carries aya's (large) map and program errors.
    #[error("pinning: {0}")]
    Pin(Box<PinError>),
    /// Boxed: `StateError` carries aya's (large) map errors.
    #[error("filling the maps: {0}")]
    State(Box<StateError>),
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("starting the async runtime: {source}")]
    Runtime { source: std::io::Error },
    #[error(transparent)]
    MetricsListen(#[from] crate::metrics::http::BindError),
    #[error("metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    /// Boxed: large. Runtime changes, health checks, control socket.
    #[error(transparent)]
    Control(Box<crate::runtime::RuntimeError>),
    /// Withdrawing the announced routes (`--unload`, or a clean stop).
    #[error("withdrawing the routes of announce.table: {0}")]
    Announce(#[from] RouteError),
}

impl From<PinError> for DaemonError {
    fn from(e: PinError) -> Self {
        DaemonError::Pin(Box::new(e))
    }
}

impl From<StateError> for DaemonError {
    fn from(e: StateError) -> Self {
        DaemonError::State(Box::new(e))
    }
}

/// Validates the config at `path` and looks up its interfaces, as the daemon does before
/// loading anything. `lb-ctl daemon --check` stops here.
pub fn check(path: &std::path::Path) -> Result<(Config, Vec<u32>), DaemonError> {
    let config = config::load(path)?;
    let ifindexes = config.resolve_interfaces(if_nametoindex)?;
    Ok((config, ifindexes))
}

/// `if_nametoindex(3)`; `None` when there is no such interface.
pub fn if_nametoindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

fn interface_mac(name: &str) -> Result<[u8; 6], DaemonError> {
    let path = PathBuf::from(paths::SYSFS_NET).join(name).join("address");
    let text = std::fs::read_to_string(&path).map_err(|source| DaemonError::InterfaceMac {
        iface: name.to_owned(),
        path: path.clone(),
        source,
    })?;
    parse_mac(&text).ok_or_else(|| DaemonError::InterfaceNotEthernet {
        iface: name.to_owned(),
        path,
        found: text.trim().to_owned(),
    })
}

/// Runs the daemon on an already checked config until SIGINT or SIGTERM.
pub fn run(config: Config, ifindexes: Vec<u32>) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Runtime { source })?;
    rt.block_on(run::run_async(config, ifindexes))
}

/// `lb-ctl daemon --unload`: withdraws the routes of `announce.table` (first: routers stop
/// sending before the data path goes), then detaches the data path of `config`'s instance
/// and removes its pins (stop the daemon first: it holds the maps open, though not the
/// links). A route that cannot be removed fails the command after the detaching.
pub fn unload(config: &Config) -> Result<Vec<String>, DaemonError> {
    let withdrawn = config.announce.map(|a| {
        Announcer::new(a.table, Netlink::default())
            .withdraw_all(&[])
            .inspect(|routes| {
                tracing::info!(table = a.table, "routes withdrawn: [{}]", routes.join(", "));
            })
    });
    let pins = Pins::new(&config.bpffs, &config.instance);
    let detached = pin::remove_all(&pins)?;
    withdrawn.transpose()?;
    Ok(detached)
}

/// A next-hop resolution running in the blocking pool: the backends asked about (id,
/// address) and the answers, in the same order.
type Resolution =
    tokio::task::JoinHandle<(Vec<(u32, IpAddr)>, Vec<Result<Resolved, ResolveError>>)>;

struct Daemon {
    config: Config,
    balancer: Balancer<AyaDataplane>,
    pins: Pins,
    /// [`pin::fingerprint`] of the program this daemon would run.
    fingerprint: String,
    /// The maps were migrated to a new set: the program must be replaced even if unchanged.
    migrate: bool,
    /// Last reported next-hop status per backend id, so the log shows transitions only.
    status: HashMap<u32, String>,
    /// Next-hop resolver; keeps each backend's route across refreshes
    /// ([`neighbor::ROUTE_TTL`](crate::neighbor::ROUTE_TTL)).
    resolver: IpCommand,
    /// The host routes of `announce` (none without it); made once the program is attached.
    announcer: Option<Announcer<Netlink>>,
}

impl Daemon {
    /// Brings the announced routes to what the balancer can serve now (no-op without
    /// `announce`, or before the program is attached).
    fn announce(&mut self, trigger: announce::Trigger) -> Option<announce::View> {
        let announcer = self.announcer.as_mut()?;
        announcer.sync(&announce::decide(&self.balancer), trigger);
        Some(announcer.view())
    }
}
