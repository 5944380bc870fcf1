//! Route announcement for an active-active cluster (`announce: {table, withdraw_on_stop}`,
//! docs/cluster.md): a host route (/32, /128) for every VIP this node can serve, kept in a
//! kernel routing table of ikelb's own, for a routing daemon (BIRD 2, FRR) to export over BGP
//! to the routers that spread clients over the nodes by ECMP (RFC 4271, RFC 7938).
//!
//! * **Can serve** ([`decide`]): the program is attached (the daemon starts announcing only
//!   after attaching) and at least one backend of the VIP's service is *usable* — health
//!   checks Up and next hop resolved (`crate::state`). A draining backend counts: it still
//!   serves the clients it has, and withdrawing the VIP would send them to other nodes.
//! * **The route**: `VIP/32` (or `/128`) `dev lo`, type unicast, `proto 75`
//!   ([`RTPROT_IKELB`]) in table `announce.table`. A table of its own changes nothing on this
//!   host (no `ip rule` points at it, and the data path answers the VIP before any routing);
//!   `dev lo` rather than `blackhole`, so that a policy rule pointing at the table by mistake
//!   never drops traffic; the protocol number marks ikelb's routes, so the routing daemon
//!   exports only those (BIRD: `krt_source = 75`) and the daemon removes only its own.
//! * **Written through rtnetlink** (`announce/netlink.rs`): the same messages as
//!   `ip route replace|del|show table N proto 75`.
//! * **Reconciled**: at start (after attaching) the table is read and every route of
//!   protocol 75 for a VIP this node cannot serve (or no longer has) is removed; on every
//!   health round the desired set is compared with what was written; every
//!   [`RECHECK`](Trigger::Recheck) the table is read again, so a route someone removed by
//!   hand comes back.
//! * **Failures**: a write that fails is logged once (then at debug until writes work
//!   again), counted (`ikelb_announce_route_errors_total`), retried on the next health
//!   round, and never touches the data path.
//! * **Stop**: a clean stop (SIGTERM, SIGINT) withdraws every route when `withdraw_on_stop`
//!   (default) or `detach_on_exit` is set; `lb-ctl daemon --unload` always does. A killed
//!   daemon leaves its routes: its XDP program, pinned, still forwards.
//!
//! Each daemon instance needs a table of its own: reconciliation removes every route of
//! protocol 75 in the table that the instance does not serve.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use tracing::{debug, info, warn};

use crate::{
    dataplane::{words_addr, Dataplane},
    state::Balancer,
};

mod netlink;
pub use netlink::Netlink;

/// Route protocol number (`rtm_protocol`, `ip route … proto 75`) of ikelb's routes: not in
/// iproute2's `rt_protos` nor among the numbers the kernel names (RTPROT_* in
/// `include/uapi/linux/rtnetlink.h`: 0–4, 8–18, 42, 99, 186–192), BIRD (12) or FRR (11,
/// 186 and up) write.
pub const RTPROT_IKELB: u8 = 75;

/// One VIP of the config and whether this node can serve it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipState {
    /// The virtual server's name (`vs` label).
    pub vs: String,
    pub vip: IpAddr,
    /// At least one usable backend.
    pub can_serve: bool,
}

/// The decision: every VIP of `lb`, in config order, and whether this node can serve it —
/// at least one usable backend (health Up and next hop known; draining ones included).
/// The caller announces only after the program is attached.
pub fn decide<D: Dataplane>(lb: &Balancer<D>) -> Vec<VipState> {
    lb.services()
        .iter()
        .map(|s| VipState {
            vs: s.name.clone(),
            vip: words_addr(s.value.family, &s.value.vip),
            can_serve: s
                .members
                .iter()
                .filter_map(|id| lb.backend(*id))
                .any(|b| b.usable()),
        })
        .collect()
}

/// `203.0.113.10/32`, `2001:db8::10/128`: the host route of `vip`.
pub fn prefix(vip: IpAddr) -> String {
    let len = if vip.is_ipv4() { 32 } else { 128 };
    format!("{vip}/{len}")
}

/// Why a route could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink route socket: {source}")]
    Socket { source: std::io::Error },
    #[error("{op} route {prefix} in table {table}: {source}")]
    Write {
        op: &'static str,
        prefix: String,
        table: u32,
        source: std::io::Error,
    },
    #[error("listing the routes of table {table}: {source}")]
    List { table: u32, source: std::io::Error },
}

/// The kernel routing table, as far as ikelb's routes go (protocol [`RTPROT_IKELB`]).
pub trait RouteTable {
    /// The VIPs with a route of ikelb's in `table` (a table that does not exist is empty).
    fn list(&mut self, table: u32) -> Result<BTreeSet<IpAddr>, RouteError>;
    /// Adds (or replaces) the host route of `vip`.
    fn add(&mut self, table: u32, vip: IpAddr) -> Result<(), RouteError>;
    /// Removes ikelb's host route of `vip`; one that is not there is no error.
    fn remove(&mut self, table: u32, vip: IpAddr) -> Result<(), RouteError>;
}

/// What is announced, for `lb-ctl status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub table: u32,
    /// Every configured VIP, and whether its route is in the table now.
    pub vips: Vec<Announced>,
    /// Routes added or removed since start.
    pub changes: u64,
    /// Route reads and writes that failed since start.
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    pub vs: String,
    pub vip: IpAddr,
    pub announced: bool,
}

impl View {
    /// The announced host routes (`203.0.113.10/32`), in config order.
    pub fn prefixes(&self) -> Vec<String> {
        self.vips
            .iter()
            .filter(|v| v.announced)
            .map(|v| prefix(v.vip))
            .collect()
    }
}

/// The [`View`] shared with the control socket's `status`.
pub type Shared = Arc<RwLock<View>>;

/// What made the daemon call [`Announcer::sync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Any change (a request, a drain, next hops): write the difference, unless a write
    /// failed since the last round (then wait for the next round).
    Change,
    /// A health round: as `Change`, and after a failure read the table and retry.
    Round,
    /// Start and every `daemon::RESOLVE_INTERVAL`: read the table and repair it.
    Recheck,
}

/// Keeps the table's routes equal to the VIPs this node can serve.
pub struct Announcer<R> {
    table: u32,
    routes: R,
    /// ikelb's routes in the table, as last read or written.
    installed: BTreeSet<IpAddr>,
    /// The table has not been read yet, or a write failed: read it before writing.
    dirty: bool,
    /// A failure was logged and writes have not worked since.
    failing: bool,
    view: Shared,
}

impl<R: RouteTable> Announcer<R> {
    /// Nothing is read or written until [`sync`](Announcer::sync) or
    /// [`withdraw_all`](Announcer::withdraw_all).
    pub fn new(table: u32, routes: R) -> Self {
        Self {
            table,
            routes,
            installed: BTreeSet::new(),
            dirty: true,
            failing: false,
            view: Arc::new(RwLock::new(View {
                table,
                ..View::default()
            })),
        }
    }

    /// The view `status` and the metrics read, updated by every call.
    pub fn shared(&self) -> Shared {
        Arc::clone(&self.view)
    }

    pub fn view(&self) -> View {
        self.view.read().expect("not poisoned").clone()
    }

    /// Brings the table to the VIPs of `vips` that can be served (see [`Trigger`]).
    pub fn sync(&mut self, vips: &[VipState], trigger: Trigger) {
        let wanted: BTreeSet<IpAddr> = vips.iter().filter(|v| v.can_serve).map(|v| v.vip).collect();
        let read = match trigger {
            Trigger::Recheck => true,
            Trigger::Round => self.dirty,
            Trigger::Change if self.dirty => {
                self.publish(vips, 0, 0);
                return;
            }
            Trigger::Change => false,
        };
        let (mut changes, mut errors) = (0, 0);
        if read {
            match self.routes.list(self.table) {
                Ok(found) => {
                    for vip in found.difference(&self.installed) {
                        if !self.dirty {
                            warn!(route = %prefix(*vip), table = self.table, "a route of ikelb's appeared in the table: reconciled");
                        }
                    }
                    self.installed = found;
                }
                Err(e) => {
                    self.failed(&e);
                    self.dirty = true;
                    self.publish(vips, 0, 1);
                    return;
                }
            }
        }
        let mut ok = true;
        let stale: Vec<IpAddr> = self.installed.difference(&wanted).copied().collect();
        for vip in stale {
            match self.routes.remove(self.table, vip) {
                Ok(()) => {
                    self.installed.remove(&vip);
                    changes += 1;
                    let why = if vips.iter().any(|v| v.vip == vip) {
                        "no usable backend"
                    } else {
                        "not a VIP of this config"
                    };
                    info!(route = %prefix(vip), table = self.table, "route withdrawn: {why}");
                }
                Err(e) => {
                    self.failed(&e);
                    errors += 1;
                    ok = false;
                }
            }
        }
        let missing: Vec<IpAddr> = wanted.difference(&self.installed).copied().collect();
        for vip in missing {
            match self.routes.add(self.table, vip) {
                Ok(()) => {
                    self.installed.insert(vip);
                    changes += 1;
                    info!(route = %prefix(vip), table = self.table, "route announced: a usable backend");
                }
                Err(e) => {
                    self.failed(&e);
                    errors += 1;
                    ok = false;
                }
            }
        }
        self.dirty = !ok;
        if ok && self.failing {
            self.failing = false;
            info!(table = self.table, "route writes work again");
        }
        self.publish(vips, changes, errors);
    }

    /// Removes every route of ikelb's from the table (a clean stop, `--unload`): read from
    /// the table, so routes a killed daemon left go too. Returns the routes removed.
    pub fn withdraw_all(&mut self, vips: &[VipState]) -> Result<Vec<String>, RouteError> {
        let found = match self.routes.list(self.table) {
            Ok(found) => found,
            Err(e) => {
                self.publish(vips, 0, 1);
                return Err(e);
            }
        };
        self.installed.extend(found);
        let mut removed = Vec::new();
        let (mut first_error, mut errors) = (None, 0);
        for vip in std::mem::take(&mut self.installed) {
            match self.routes.remove(self.table, vip) {
                Ok(()) => removed.push(prefix(vip)),
                Err(e) => {
                    self.installed.insert(vip);
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        self.publish(vips, removed.len() as u64, errors);
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    fn failed(&mut self, e: &RouteError) {
        if self.failing {
            debug!("announce: {e}");
        } else {
            self.failing = true;
            warn!(
                "announce: {e}; retried every health round (the data path is not affected; \
                 further failures are logged at debug level until writes work again)"
            );
        }
    }

    fn publish(&self, vips: &[VipState], changes: u64, errors: u64) {
        let mut view = self.view.write().expect("not poisoned");
        view.vips = vips
            .iter()
            .map(|v| Announced {
                vs: v.vs.clone(),
                vip: v.vip,
                announced: self.installed.contains(&v.vip),
            })
            .collect();
        view.changes += changes;
        view.errors += errors;
    }
}

#[cfg(test)]
mod tests;
