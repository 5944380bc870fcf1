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
//! ([`paths::IP_COMMANDS`]).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, LazyLock, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use prometheus::IntCounter;
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::paths;

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

/// What [`IpCommand`] asks of the system: `ip` runs and resolution probes. The seam for
/// tests (a fake that fails on demand).
pub trait Kernel: Send + Sync + std::fmt::Debug {
    /// `ip ARGS`: its stdout when it exits 0.
    fn ip(&self, args: &[&str]) -> Result<String, ResolveError>;
    /// Makes the kernel resolve the next hop toward `addr`.
    fn probe(&self, addr: IpAddr) -> Result<(), ResolveError>;
}

/// The real system: iproute2's `ip` by absolute path, UDP probes.
#[derive(Debug)]
pub struct System;

/// The `ip` binary: the first executable of [`paths::IP_COMMANDS`], looked for once.
fn ip_binary() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = paths::IP_COMMANDS.iter().map(PathBuf::from).find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
            match &found {
                Some(p) => info!("next hops are looked up with {}", p.display()),
                None => warn!(
                    "iproute2's ip is in none of {}: backends' next hops cannot be resolved",
                    paths::IP_COMMANDS.join(", ")
                ),
            }
            found
        })
        .as_deref()
}

impl Kernel for System {
    fn ip(&self, args: &[&str]) -> Result<String, ResolveError> {
        let Some(bin) = ip_binary() else {
            return Err(ResolveError::Spawn {
                command: format!("ip {}", args.join(" ")),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("not found in {}", paths::IP_COMMANDS.join(", ")),
                ),
            });
        };
        let command = format!("{} {}", bin.display(), args.join(" "));
        let out = Command::new(bin)
            .args(args)
            .output()
            .map_err(|source| ResolveError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if stderr.is_empty() {
                stderr = out.status.to_string();
            }
            return Err(ResolveError::Command { command, stderr });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One UDP datagram to the discard port; unprivileged, and harmless to the backend.
    fn probe(&self, addr: IpAddr) -> Result<(), ResolveError> {
        let bind: IpAddr = if addr.is_ipv4() {
            [0u8; 4].into()
        } else {
            [0u8; 16].into()
        };
        let sock =
            UdpSocket::bind((bind, 0)).map_err(|source| ResolveError::Probe { addr, source })?;
        // EHOSTUNREACH from an earlier failed resolution is expected; the look-up that
        // follows tells the real outcome.
        let _ = sock.send_to(b"ikelb neighbour probe", (addr, PROBE_PORT));
        Ok(())
    }
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

/// Last known next hops, for faults and hysteresis.
#[derive(Debug, Default)]
struct Memory {
    known: HashMap<IpAddr, Known>,
    /// Consecutive refreshes with a fault (0: the last one had none).
    faulty_refreshes: u64,
}

#[derive(Debug)]
struct Known {
    hop: Resolved,
    /// Consecutive refreshes that observed it gone.
    absent: u32,
}

/// One entry of `ip -j route get`.
#[derive(Debug, Deserialize)]
struct RouteEntry {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    dev: Option<String>,
    gateway: Option<IpAddr>,
}

/// One entry of `ip -j neigh show`.
#[derive(Debug, Deserialize)]
struct NeighEntry {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// (egress device, address to resolve) from `ip -j route get ADDR` output.
fn parse_route(
    addr: IpAddr,
    json: &str,
) -> Result<Result<(String, IpAddr), ResolveError>, serde_json::Error> {
    let routes: Vec<RouteEntry> = serde_json::from_str(json)?;
    let Some(r) = routes.into_iter().next() else {
        return Ok(Err(ResolveError::NoRoute { addr }));
    };
    if let Some(kind) = r.kind.filter(|k| k != "unicast") {
        return Ok(Err(ResolveError::NotUnicast { addr, kind }));
    }
    let Some(dev) = r.dev else {
        return Ok(Err(ResolveError::NoRoute { addr }));
    };
    Ok(Ok((dev, r.gateway.unwrap_or(addr))))
}

/// A neighbour entry with a usable address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Neigh {
    mac: [u8; 6],
    /// Not confirmed lately. The kernel re-verifies a STALE entry only when it sends through
    /// it, which forwarded traffic never makes it do (XDP bypasses the stack), so the daemon
    /// sends a probe: a backend whose MAC changed is then re-learnt, one that is gone turns
    /// FAILED.
    stale: bool,
}

/// The neighbour from `ip -j neigh show to VIA dev DEV` output, or the entry's state when it
/// has no usable address. REACHABLE, STALE, DELAY, PROBE, PERMANENT and NOARP entries carry
/// a valid address; INCOMPLETE and FAILED do not.
#[cfg(test)]
fn parse_neigh(json: &str) -> Result<Result<Neigh, String>, serde_json::Error> {
    let entries: Vec<NeighEntry> = serde_json::from_str(json)?;
    Ok(entries
        .into_iter()
        .next()
        .map_or_else(|| Err("none".to_owned()), neigh_of))
}

/// One neighbour entry: its address, or its state when it has none usable.
fn neigh_of(e: NeighEntry) -> Result<Neigh, String> {
    let state = if e.state.is_empty() {
        "unknown".to_owned()
    } else {
        e.state.join(",")
    };
    if e.state.iter().any(|s| s == "INCOMPLETE" || s == "FAILED") {
        return Err(state);
    }
    let stale = e.state.iter().any(|s| s == "STALE");
    e.lladdr
        .as_deref()
        .and_then(parse_mac)
        .map(|mac| Neigh { mac, stale })
        .ok_or(state)
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The neighbour table as one `ip -j neigh show` dump (both families, every device), keyed
/// by (device, address): a link-local gateway means something only on its device.
#[derive(Debug, Default)]
struct NeighTable(HashMap<(String, IpAddr), Result<Neigh, String>>);

/// One entry of the `ip -j neigh show` dump (no filter: each entry names its device).
#[derive(Debug, Deserialize)]
struct NeighDumpEntry {
    dst: IpAddr,
    dev: Option<String>,
    #[serde(flatten)]
    neigh: NeighEntry,
}

impl NeighTable {
    /// Parses a whole dump; entries without a device are skipped (a dump without filter
    /// always names it).
    fn parse(json: &str) -> Result<Self, serde_json::Error> {
        let entries: Vec<NeighDumpEntry> = serde_json::from_str(json)?;
        let mut table = HashMap::with_capacity(entries.len());
        for e in entries {
            if let Some(dev) = e.dev {
                table.insert((dev, e.dst), neigh_of(e.neigh));
            }
        }
        Ok(Self(table))
    }

    /// The neighbour `via` on `dev`, or the entry's state ("none" when there is no entry).
    fn get(&self, via: IpAddr, dev: &str) -> Result<Neigh, String> {
        self.0
            .get(&(dev.to_owned(), via))
            .cloned()
            .unwrap_or_else(|| Err("none".to_owned()))
    }
}

/// How long a cached `ip route get` answer is trusted at most while its neighbour keeps
/// resolving ([`route_ttl`] spreads it over the second half of this, per address, so the
/// 1,000 routes cached at start-up are not all looked up again in the same refresh). A
/// backend whose neighbour is missing, incomplete or failed has its route looked up again at
/// once; one that resolves fine has it re-checked every 30–60 s, so a route change that
/// leaves the old next hop reachable (a new gateway, a moved prefix) is picked up within a
/// minute instead of within one refresh interval. The trade: 1,000 backends cost about 22
/// `ip route get` a second on average instead of 200.
pub const ROUTE_TTL: Duration = Duration::from_secs(60);

/// This address's route lifetime: between half of [`ROUTE_TTL`] and all of it, fixed per
/// address.
fn route_ttl(addr: IpAddr) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    let half = ROUTE_TTL / 2;
    half + Duration::from_millis(h.finish() % half.as_millis() as u64)
}

/// A cached route look-up.
#[derive(Clone, Debug)]
struct CachedRoute {
    dev: String,
    via: IpAddr,
    at: Instant,
}

/// Per-backend route cache kept across refreshes.
type RouteCache = HashMap<IpAddr, CachedRoute>;

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

    fn route(&self, addr: IpAddr) -> Result<(String, IpAddr), ResolveError> {
        let a = addr.to_string();
        let args = ["-j", "route", "get", a.as_str()];
        let json = self.kernel.ip(&args)?;
        parse_route(addr, &json).map_err(|source| ResolveError::Parse {
            command: args.join(" "),
            source,
        })?
    }

    /// The whole neighbour table, one process.
    fn neigh_dump(&self) -> Result<NeighTable, ResolveError> {
        let args = ["-j", "neigh", "show"];
        let json = self.kernel.ip(&args)?;
        NeighTable::parse(&json).map_err(|source| ResolveError::Parse {
            command: args.join(" "),
            source,
        })
    }

    /// The route toward `addr`: the cached one unless `fresh`, absent or older than
    /// [`route_ttl`]; a new look-up replaces the entry (and a failed one drops it).
    fn cached_route(
        &self,
        cache: &mut RouteCache,
        addr: IpAddr,
        fresh: bool,
        now: Instant,
    ) -> Result<(String, IpAddr), ResolveError> {
        if !fresh {
            if let Some(c) = cache.get(&addr) {
                if now.duration_since(c.at) < route_ttl(addr) {
                    return Ok((c.dev.clone(), c.via));
                }
            }
        }
        match self.route(addr) {
            Ok((dev, via)) => {
                cache.insert(
                    addr,
                    CachedRoute {
                        dev: dev.clone(),
                        via,
                        at: now,
                    },
                );
                Ok((dev, via))
            }
            Err(e) => {
                cache.remove(&addr);
                Err(e)
            }
        }
    }

    /// This refresh's raw answers against the last known next hops: an answer replaces
    /// the known hop, a fault keeps it, an absence keeps it until the
    /// [`ABSENT_TO_CLEAR`]th in a row. `side_faults` are faults that did not decide a
    /// backend (a failed probe of a STALE neighbour whose address was still used).
    fn settle(
        &self,
        addrs: &[IpAddr],
        raw: Vec<Result<Resolved, ResolveError>>,
        side_faults: Vec<ResolveError>,
    ) -> Vec<Result<Resolved, ResolveError>> {
        let mut m = self
            .memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wanted: HashSet<IpAddr> = addrs.iter().copied().collect();
        m.known.retain(|a, _| wanted.contains(a));
        let mut faults = side_faults.len() as u64;
        let mut first_fault = side_faults.into_iter().next().map(|e| e.to_string());
        let mut kept = 0usize;
        let out: Vec<_> = addrs
            .iter()
            .zip(raw)
            .map(|(&addr, r)| match r {
                Ok(hop) => {
                    m.known.insert(
                        addr,
                        Known {
                            hop: hop.clone(),
                            absent: 0,
                        },
                    );
                    Ok(hop)
                }
                Err(e) if e.is_fault() => {
                    faults += 1;
                    first_fault.get_or_insert_with(|| e.to_string());
                    match m.known.get(&addr) {
                        Some(k) => {
                            kept += 1;
                            Ok(k.hop.clone())
                        }
                        None => Err(e),
                    }
                }
                Err(e) => match m.known.get_mut(&addr) {
                    Some(k) if k.absent + 1 < ABSENT_TO_CLEAR => {
                        k.absent += 1;
                        debug!(
                            backend = %addr,
                            "next hop not seen ({e}); kept, {} of {ABSENT_TO_CLEAR} refreshes",
                            k.absent
                        );
                        Ok(k.hop.clone())
                    }
                    Some(_) => {
                        m.known.remove(&addr);
                        Err(e)
                    }
                    None => Err(e),
                },
            })
            .collect();
        if let Some(first) = first_fault {
            FAULTS.inc_by(faults);
            if m.faulty_refreshes == 0 {
                warn!(
                    "next-hop look-up failed on the gateway: {first}; {kept} backends keep their last known next hop (logged once until a refresh succeeds, counted in ikelb_next_hop_faults_total)"
                );
            }
            m.faulty_refreshes += 1;
        } else if m.faulty_refreshes > 0 {
            info!(
                "next-hop look-ups work again after {} refreshes with faults",
                m.faulty_refreshes
            );
            m.faulty_refreshes = 0;
        }
        out
    }
}

/// A route look-up that found the egress interface, waiting for the neighbour.
struct Pending {
    dev: String,
    via: IpAddr,
    state: String,
}

/// What one backend's first look-up in the dump gave.
enum First {
    Done(Result<Resolved, ResolveError>),
    Wait(Pending),
}

/// One backend against a neighbour table: the route (cached unless `fresh`), the interface
/// check, the neighbour. `route` stands for [`IpCommand::cached_route`] so this is testable.
fn look_up(
    addr: IpAddr,
    interfaces: &[String],
    table: &NeighTable,
    route: impl FnOnce() -> Result<(String, IpAddr), ResolveError>,
) -> Result<Result<(Resolved, bool), Pending>, ResolveError> {
    let (dev, via) = route()?;
    if !interfaces.contains(&dev) {
        return Err(ResolveError::ForeignInterface { addr, dev });
    }
    Ok(match table.get(via, &dev) {
        Ok(n) => Ok((
            Resolved {
                dev,
                via,
                mac: n.mac,
            },
            n.stale,
        )),
        Err(state) => Err(Pending { dev, via, state }),
    })
}

impl Resolver for IpCommand {
    /// [`IpCommand::resolve_raw`], settled against the last known next hops (faults keep
    /// them; an absence clears one after [`ABSENT_TO_CLEAR`] refreshes in a row).
    fn resolve_all(
        &self,
        addrs: &[IpAddr],
        interfaces: &[String],
    ) -> Vec<Result<Resolved, ResolveError>> {
        let (raw, side_faults) = self.resolve_raw(addrs, interfaces);
        self.settle(addrs, raw, side_faults)
    }
}

impl IpCommand {
    /// Reads the neighbour table once and looks every address up in it, through its cached
    /// route; a backend without a usable neighbour has its route looked up again and, if
    /// still unresolved, is probed. All probed at the same time, then one dump every
    /// `PROBE_POLL` settles them, for up to `PROBE_POLL * PROBE_POLLS` (one second) in
    /// total. Cached routes of addresses no longer asked for are dropped. Also returns the
    /// faults that did not decide an answer.
    fn resolve_raw(
        &self,
        addrs: &[IpAddr],
        interfaces: &[String],
    ) -> (Vec<Result<Resolved, ResolveError>>, Vec<ResolveError>) {
        let mut side_faults = Vec::new();
        let mut cache = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wanted: HashSet<IpAddr> = addrs.iter().copied().collect();
        cache.retain(|a, _| wanted.contains(a));
        let now = Instant::now();
        let table = match self.neigh_dump() {
            Ok(t) => t,
            Err(e) => {
                let message = e.to_string();
                let all = addrs
                    .iter()
                    .map(|_| {
                        Err(ResolveError::Neighbours {
                            message: message.clone(),
                        })
                    })
                    .collect();
                return (all, side_faults);
            }
        };
        let mut out: Vec<Result<Resolved, ResolveError>> = Vec::with_capacity(addrs.len());
        let mut pending: Vec<(usize, Pending)> = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let mut first = look_up(addr, interfaces, &table, || {
                self.cached_route(&mut cache, addr, false, now)
            });
            // No usable neighbour through the cached route: the route may have moved.
            if matches!(first, Ok(Err(_))) && cache.get(&addr).is_some_and(|c| c.at != now) {
                first = look_up(addr, interfaces, &table, || {
                    self.cached_route(&mut cache, addr, true, now)
                });
            }
            let first = match first {
                Ok(Ok((r, stale))) => {
                    // A STALE address is still the last one the kernel saw: used even when
                    // the probe that would re-verify it cannot be sent.
                    if stale {
                        if let Err(e) = self.kernel.probe(addr) {
                            side_faults.push(e);
                        }
                    }
                    First::Done(Ok(r))
                }
                Ok(Err(p)) => First::Wait(p),
                Err(e) => First::Done(Err(e)),
            };
            match first {
                First::Done(r) => out.push(r),
                First::Wait(p) => {
                    // Placeholder until the polls below settle it.
                    out.push(Err(ResolveError::Unresolved {
                        via: p.via,
                        dev: p.dev.clone(),
                        state: p.state.clone(),
                    }));
                    match self.kernel.probe(addr) {
                        Ok(()) => pending.push((i, p)),
                        Err(e) => out[i] = Err(e),
                    }
                }
            }
        }
        drop(cache);
        for _ in 0..self.polls {
            if pending.is_empty() {
                break;
            }
            thread::sleep(self.poll);
            let table = match self.neigh_dump() {
                Ok(t) => t,
                Err(e) => {
                    let message = e.to_string();
                    for (i, _) in pending.drain(..) {
                        out[i] = Err(ResolveError::Neighbours {
                            message: message.clone(),
                        });
                    }
                    break;
                }
            };
            pending.retain_mut(|(i, p)| match table.get(p.via, &p.dev) {
                Ok(n) => {
                    out[*i] = Ok(Resolved {
                        dev: p.dev.clone(),
                        via: p.via,
                        mac: n.mac,
                    });
                    false
                }
                Err(state) => {
                    p.state = state;
                    true
                }
            });
        }
        for (i, p) in pending {
            out[i] = Err(ResolveError::Unresolved {
                via: p.via,
                dev: p.dev,
                state: p.state,
            });
        }
        (out, side_faults)
    }
}

#[cfg(test)]
mod tests;
