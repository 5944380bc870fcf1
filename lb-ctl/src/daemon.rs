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
//! 5. next hops are re-resolved every [`RESOLVE_INTERVAL`] until a signal arrives;
//! 6. with `detach_on_exit`, every attachment is detached and the pins removed; without it
//!    (the default) the data path stays attached for the next daemon.
//!
//! Maps, program and links are pinned under `<bpffs>/<instance>` ([`crate::pin`]): step 2
//! reuses (or migrates) what a previous daemon pinned, step 3 adopts its state
//! ([`Balancer::adopt`]), and step 4 keeps the running program or swaps the new one in
//! atomically.

use std::{collections::HashMap, ffi::CString, net::IpAddr, path::PathBuf, time::Duration};

use aya::{
    programs::{ProgramError, Xdp, XdpMode},
    EbpfError, EbpfLoader,
};
use lb_common::{counter, globals, maps};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::{
    config::{self, Config, ConfigError, Mode, XdpAttachMode},
    dataplane::{AyaDataplane, Dataplane},
    identity, kernel,
    neighbor::{parse_mac, IpCommand, ResolveError, Resolved, Resolver},
    paths,
    pin::{self, MapPlan, PinError, PinnedState, Pins},
    runtime,
    state::{backend_capacity, Balancer, IfaceInfo, NextHop, StateError},
    EBPF_OBJECT, XDP_PROGRAM,
};

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
    rt.block_on(run_async(config, ifindexes))
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
}

async fn run_async(config: Config, ifindexes: Vec<u32>) -> Result<(), DaemonError> {
    let mut ifaces = Vec::new();
    for (iface, &ifindex) in config.interfaces.iter().zip(&ifindexes) {
        ifaces.push(IfaceInfo {
            name: iface.name.clone(),
            ifindex,
            mac: interface_mac(&iface.name)?,
        });
    }
    // Signal handlers first: a SIGTERM during start-up must still detach cleanly.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| DaemonError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Signal {
        signal: "SIGINT",
        source,
    })?;

    // A taken metrics port stops the start before the data path is touched.
    let metrics_listener = crate::metrics::http::bind(config.metrics_listen).await?;
    let capacity = backend_capacity(config.backend_count());
    let pins = Pins::new(&config.bpffs, &config.instance);
    let identity = assign_identity(&config, &ifindexes, &pins)?;
    let loaded = load(&config, capacity, &pins, &identity)?;
    // Scrapes read the maps through their own fds (opened from the pins just made or
    // reused), never through the control loop.
    let stats = crate::metrics::PinnedStats::open(&pins.load_dir(&loaded.plan))
        .map_err(|e| DaemonError::State(Box::new(StateError::Dataplane(e))))?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(
        std::sync::Arc::new(stats),
        config.persist_timeout_ticks(),
        crate::metrics::Capacity {
            persistence: config.persistence_entries,
            probation: config.probation_entries,
        },
    )?);
    let mut balancer = Balancer::with_identity(
        AyaDataplane::new(loaded.ebpf),
        &config,
        ifaces,
        capacity,
        &identity,
    )?;
    // Runtime backend changes (state_dir) before adoption, so adopted ids follow addresses.
    let controller = runtime::Controller::for_daemon(&config, &mut balancer)
        .map_err(|e| DaemonError::Control(Box::new(e)))?;
    if let Some(pinned) = &loaded.pinned {
        let r = balancer.adopt(pinned, loaded.plan == MapPlan::Reuse)?;
        info!(
            kept_ids = r.kept_ids,
            usable = r.usable,
            new = r.new,
            stale = r.stale,
            tables = r.tables,
            stale_services = r.stale_services,
            "adopted the pinned data path's backends and tables"
        );
        // Ring flags describe the persistence entries only for the program (and globals,
        // e.g. `hash_seed`) that kept them: another one, or a migration, flags every slot
        // until the first sweep (state.rs, "Slot flags").
        if loaded.plan == MapPlan::Reuse
            && pin::pinned_fingerprint(&pins).as_deref() != Some(loaded.fingerprint.as_str())
        {
            balancer.flag_all_slots();
            info!("the pinned program differs: every ring slot flagged until the first sweep");
        }
    }
    let mut daemon = Daemon {
        balancer,
        config,
        pins,
        fingerprint: loaded.fingerprint,
        migrate: matches!(loaded.plan, MapPlan::Migrate(_)),
        status: HashMap::new(),
        resolver: IpCommand::default(),
    };
    // One health round before the maps are applied and the program attached; then the
    // health monitor, the control socket and drains run in the loop below.
    let mut control = runtime::Runtime::start(
        controller,
        &mut daemon.balancer,
        Some(metrics.probe_observer()),
    )
    .await
    .map_err(|e| DaemonError::Control(Box::new(e)))?;
    control.observe_sweeps(metrics.sweep_observer());
    // One persistence scan at a time for scrapes, queries, drains and the sweep.
    metrics.share_scans(control.scanner());

    // Fill everything (fresh: backends unusable; adopted: nothing changes), then resolve
    // next hops, then attach.
    daemon.balancer.apply()?;
    daemon.refresh_next_hops().await?;
    let attached = daemon.attach_all();
    let outcome = match attached {
        Ok(()) => {
            metrics.publish(&daemon.balancer);
            let server =
                crate::metrics::http::serve(metrics_listener, std::sync::Arc::clone(&metrics));
            info!(listen = %daemon.config.metrics_listen, "Prometheus metrics at http://{}/metrics", daemon.config.metrics_listen);
            info!(
                virtual_servers = daemon.config.virtual_servers.len(),
                backends = daemon.config.backend_count(),
                usable = daemon.balancer.backends().filter(|b| b.usable()).count(),
                "ikelb running; SIGINT or SIGTERM stops it"
            );
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + RESOLVE_INTERVAL,
                RESOLVE_INTERVAL,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Next-hop resolution runs in the blocking pool (`ip`, ARP waits of up to a
            // second) while the loop keeps serving health reports and requests: a failover
            // is never held up behind a neighbour that does not answer.
            let mut resolving: Option<Resolution> = None;
            let mut resolve_again = false;
            let outcome = loop {
                tokio::select! {
                    _ = sigterm.recv() => { info!("SIGTERM received"); break Ok(()); }
                    _ = sigint.recv() => { info!("SIGINT received"); break Ok(()); }
                    event = control.next_event() => {
                        if control.handle(&mut daemon.balancer, event) {
                            // A backend came up or was added: look up its next hop now.
                            match resolving {
                                None => resolving = Some(daemon.start_resolve()),
                                Some(_) => resolve_again = true,
                            }
                        }
                        metrics.publish(&daemon.balancer);
                    }
                    _ = tick.tick() => {
                        if resolving.is_none() {
                            resolving = Some(daemon.start_resolve());
                        }
                    }
                    done = async { resolving.as_mut().expect("guarded by the condition").await },
                        if resolving.is_some() => {
                        resolving = None;
                        let (targets, results) =
                            done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                        if let Err(e) = daemon.finish_resolve(targets, results) {
                            // The mirror is only advanced on success: the next pass retries.
                            warn!(
                                "updating the maps failed, retrying in {}: {}",
                                humantime::format_duration(RESOLVE_INTERVAL),
                                crate::error_chain(&e)
                            );
                        }
                        if std::mem::take(&mut resolve_again) {
                            resolving = Some(daemon.start_resolve());
                        }
                        metrics.publish(&daemon.balancer);
                    }
                }
            };
            server.abort();
            outcome
        }
        Err(e) => Err(e),
    };
    let detached = daemon.detach_all();
    daemon.log_counters();
    outcome.and(detached)
}

/// Service ids and interface ports by name ([`crate::identity`]): the pinned maps' (the
/// running truth), else `state_dir/identity.json`'s, else the lowest free; saved back before
/// anything is loaded.
fn assign_identity(
    config: &Config,
    ifindexes: &[u32],
    pins: &Pins,
) -> Result<identity::Identity, DaemonError> {
    let path = identity::path(&config.state_dir);
    let saved = identity::load(&path)?;
    let pinned = pin::read_identity(pins)?;
    let assigned = identity::assign(config, ifindexes, &saved, &pinned);
    for note in &assigned.notes {
        info!(file = %path.display(), "identity: {note}");
    }
    identity::check_bounds(&assigned.identity, config.maglev_table_size, &path)?;
    if assigned.identity != saved {
        match identity::save(&path, &assigned.identity) {
            Ok(()) => {}
            // The new file is in place; only its durability is in doubt (and the pins keep
            // the numbers meanwhile).
            Err(e @ identity::IdentityError::NotDurable { .. }) => warn!("{e}"),
            Err(e) => return Err(e.into()),
        }
    }
    debug!(services = ?assigned.identity.services, ports = ?assigned.identity.ports, "service ids and interface ports");
    Ok(assigned.identity)
}

/// The embedded object loaded against the pins, not yet attached.
struct Loaded {
    ebpf: aya::Ebpf,
    plan: MapPlan,
    /// What the pinned maps held (ids, health, tables), unless the start is fresh.
    pinned: Option<PinnedState>,
    fingerprint: String,
}

/// Loads the embedded object with the config's globals and map sizes, its maps bound to the
/// pins of `pins` (reused, created, or a new set for a migration: [`pin::plan`]). The program
/// itself is loaded into the kernel only when it is to be attached ([`pin::attach`]).
fn load(
    config: &Config,
    backend_capacity: u32,
    pins: &Pins,
    identity: &identity::Identity,
) -> Result<Loaded, DaemonError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DaemonError::NoObject);
    }
    raise_memlock_limit();
    crate::listen::raise_nofile_limit();
    // After the memlock limit: kernels before 5.11 charge the probes' maps to it.
    kernel::require()?;
    // Maps indexed by service id hold the highest id + 1 (ids follow names and may leave
    // gaps: `crate::identity`).
    let services = identity.service_slots().max(1);
    let v6_services = config
        .virtual_servers
        .iter()
        .filter(|vs| vs.vip.is_ipv6())
        .count() as u32;
    let ring_size = config.maglev_table_size;
    let ticks = config.persist_timeout_ticks();
    let seed = config.hash_seed;
    let dsr = u32::from(config.mode == Mode::Dsr);
    // `identity::check_bounds` keeps (highest id + 1) × 2 × M within 2^32.
    let rings = services * 2 * ring_size;
    // PERSIST_V6 and VIPS_V6 are sized for IPv6 services only: an LRU hash preallocates
    // every entry, and with no IPv6 service nothing is ever inserted there.
    let (v6_persist, v6_probation) = if v6_services == 0 {
        (1, 1)
    } else {
        (config.persistence_entries, config.probation_entries)
    };
    let cpus = possible_cpus();
    let quota = config.new_client_quota(cpus);
    // One tick stamp per ring slot, indexed like RINGS.
    let refreshed = rings;
    let globals = [
        (globals::RING_SIZE, ring_size),
        (globals::PERSIST_TIMEOUT_TICKS, ticks),
        (globals::HASH_SEED, seed),
        (globals::MODE_DSR, dsr),
        (globals::SLOT_FAST_PATH, u32::from(config.slot_fast_path)),
        (globals::NEW_CLIENT_QUOTA, quota),
    ];
    let max_entries = [
        (maps::RINGS, rings),
        (maps::SERVICES, services),
        (maps::VIPS_V4, services),
        (maps::VIPS_V6, v6_services.max(1)),
        (maps::BACKENDS, backend_capacity),
        (maps::BACKEND_IDS_V4, backend_capacity),
        (maps::BACKEND_IDS_V6, backend_capacity),
        (maps::BACKEND_STATS, backend_capacity * 2),
        (maps::PERSIST_V4, config.persistence_entries),
        (maps::PERSIST_V6, v6_persist),
        (maps::PROBATION_V4, config.probation_entries),
        (maps::PROBATION_V6, v6_probation),
        // One proof per probation client usually; several behind a NAT address at once.
        (maps::PROOFS_V4, config.probation_entries),
        (maps::PROOFS_V6, v6_probation),
        // Indexed like RINGS.
        (maps::REFRESHED_V4, refreshed),
    ];
    debug!(
        ring_size,
        ticks, seed, dsr, rings, backend_capacity, cpus, quota, refreshed, "loading the XDP object"
    );
    pin::ensure_bpffs(&config.bpffs)?;
    let specs = pin::expected_specs(EBPF_OBJECT, &max_entries)?;
    let plan = pin::plan(pins, &specs)?;
    let dir = pins.dir().display();
    let pinned = match &plan {
        MapPlan::Fresh => {
            info!(pins = %dir, "no pinned data path: creating and pinning the maps");
            None
        }
        MapPlan::Reuse => {
            info!(pins = %dir, "reusing the pinned maps (persistence, counters, tables)");
            Some(pin::read_state(pins, Some(ring_size))?)
        }
        MapPlan::Migrate(reasons) => {
            warn!(
                pins = %dir,
                "the pinned maps do not fit this build or config ({}): building a new map set \
                 and moving the persistence entries over",
                reasons.join("; ")
            );
            Some(pin::read_state(pins, None)?)
        }
    };
    let mut loader = EbpfLoader::new();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    for &(name, n) in &max_entries {
        loader.map_max_entries(name, n);
    }
    pin::configure_loader(&mut loader, pins, &plan, &specs)?;
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|source| DaemonError::Load {
            source: Box::new(source),
        })?;
    xdp_program(&mut ebpf)?;
    let fingerprint = pin::fingerprint(EBPF_OBJECT, &globals);
    info!(
        program = XDP_PROGRAM,
        fingerprint = %fingerprint,
        ring_size,
        persist_timeout_ticks = ticks,
        hash_seed = seed,
        dsr = dsr == 1,
        new_client_quota = quota,
        "XDP object loaded"
    );
    if quota != 0 {
        let window_ms = (1u64 << lb_common::QUOTA_WINDOW_SHIFT) as f64 / 1e6;
        info!(
            new_client_rate = config.new_client_rate,
            cpus,
            per_cpu_window = quota,
            "new clients rationed: at most {quota} probation entries per CPU every {window_ms:.0} ms"
        );
    }
    Ok(Loaded {
        ebpf,
        plan,
        pinned,
        fingerprint,
    })
}

/// Possible CPUs (`/sys/devices/system/cpu/possible`, what per-CPU maps and the quota are
/// spread over); 1 when it cannot be read, which only makes the quota more generous.
fn possible_cpus() -> u32 {
    match aya::util::nr_cpus() {
        Ok(n) => n.max(1) as u32,
        Err((path, e)) => {
            warn!("reading {path}: {e}; spreading new_client_rate as if there were one CPU");
            1
        }
    }
}

/// `lb-ctl daemon --unload`: detaches the data path of `config`'s instance and removes its
/// pins (stop the daemon first: it holds the maps open, though not the links).
pub fn unload(config: &Config) -> Result<Vec<String>, DaemonError> {
    let pins = Pins::new(&config.bpffs, &config.instance);
    Ok(pin::remove_all(&pins)?)
}

fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, DaemonError> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or(DaemonError::MissingProgram { name: XDP_PROGRAM })?
        .try_into()
        .map_err(|source| DaemonError::ProgramType {
            name: XDP_PROGRAM,
            source,
        })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg and ignore
/// it. Raising it is harmless either way.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            "raising RLIMIT_MEMLOCK failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Daemon {
    /// Resolves every backend's next hop (in the blocking pool: it runs `ip` and waits for
    /// ARP), records changes and applies them.
    async fn refresh_next_hops(&mut self) -> Result<(), StateError> {
        let (targets, results) = self
            .start_resolve()
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.finish_resolve(targets, results)
    }

    /// Starts resolving every backend's next hop in the blocking pool.
    fn start_resolve(&self) -> Resolution {
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
    fn finish_resolve(
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

    /// Puts the program on every interface through the pins ([`pin::attach`]): keeps a
    /// running identical program, swaps a different one in atomically, attaches fresh where
    /// nothing is pinned.
    fn attach_all(&mut self) -> Result<(), DaemonError> {
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
    fn detach_all(&mut self) -> Result<(), DaemonError> {
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
    fn log_counters(&self) {
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

fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
