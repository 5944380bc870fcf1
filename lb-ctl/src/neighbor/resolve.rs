//! Resolution of every backend's next hop in one refresh: the route cache (each route
//! trusted for up to [`ROUTE_TTL`], looked up again as soon as its neighbour is unusable),
//! one neighbour dump, the interface check, and probes then polls for neighbours not yet
//! resolved.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use super::{
    ip::{parse_route, NeighTable},
    IpCommand, ResolveError, Resolved, Resolver,
};

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
pub(super) fn route_ttl(addr: IpAddr) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    let half = ROUTE_TTL / 2;
    half + Duration::from_millis(h.finish() % half.as_millis() as u64)
}

/// A cached route look-up.
#[derive(Clone, Debug)]
pub(super) struct CachedRoute {
    pub(super) dev: String,
    pub(super) via: IpAddr,
    pub(super) at: Instant,
}

/// Per-backend route cache kept across refreshes.
pub(super) type RouteCache = HashMap<IpAddr, CachedRoute>;

impl IpCommand {
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
    pub(super) fn cached_route(
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
}

/// A route look-up that found the egress interface, waiting for the neighbour.
pub(super) struct Pending {
    pub(super) dev: String,
    pub(super) via: IpAddr,
    pub(super) state: String,
}

/// What one backend's first look-up in the dump gave.
enum First {
    Done(Result<Resolved, ResolveError>),
    Wait(Pending),
}

/// One backend against a neighbour table: the route (cached unless `fresh`), the interface
/// check, the neighbour. `route` stands for [`IpCommand::cached_route`] so this is testable.
pub(super) fn look_up(
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
    /// them; an absence clears one after [`ABSENT_TO_CLEAR`](super::ABSENT_TO_CLEAR)
    /// refreshes in a row).
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
