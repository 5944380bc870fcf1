//! Shared persistence between the nodes of an active-active cluster (`docs/cluster.md`,
//! "Shared persistence").
//!
//! Every node computes the same Maglev ring from the same configuration, so a client whose
//! backend is its ring slot's needs nothing shared: any node sends it there, and any node
//! may rewrite its backend's replies (the stateless reply of the reverse path). A client
//! whose established entry names another backend — **divergent**: its slot moved after it
//! began (a runtime `backend add`, a weight change, a recovery) — is known only to the node
//! that forwarded it. Each node therefore publishes its divergent clients, one host route
//! `CLIENT via BACKEND` each, and BIRD carries them to the other nodes over iBGP (the
//! routing daemon operators run anyway; no protocol of ikelb's own). What a node learns
//! becomes an established entry of its own ([`import`]), marked `lb_common::PORT_SHARED`
//! (no MAC learned here yet: replies go where the FIB routes), in a slot flagged
//! `RING_F_CHANGED` first, so that the slot fast path sends the client through the entry.
//!
//! Only established entries are published: a probation entry is a client that has not shown
//! return routability, which a spoofed source can create; publishing those would let a
//! flood fill every node's tables.
//!
//! This module decides what to publish and what to take ([`divergent`], [`import`]); the
//! route tables are read and written by the daemon.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    hash::{client_hash_v4, client_hash_v6, ring_slot},
    PersistKeyV4, PersistKeyV6, PersistValue, FAMILY_V4, FAMILY_V6, PORT_SHARED,
};

use crate::{
    dataplane::Dataplane,
    scan::Scanned,
    state::{Balancer, StateError},
};

pub mod netlink;

/// One divergent client of one node: the route `client via backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shared {
    pub client: IpAddr,
    pub backend: IpAddr,
}

/// What one [`import`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Entries written.
    pub inserted: usize,
    /// Shared entries of an earlier import, not yet used here, kept alive.
    pub refreshed: usize,
    /// Clients that had an entry here already (this node's own knowledge wins).
    pub present: usize,
    /// Routes naming no usable backend of ours, or a client of the other family.
    pub ignored: usize,
}

fn v4_addr(words: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(words.to_ne_bytes()))
}

fn v6_addr(words: &[u32; 4]) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(o))
}

fn v4_words(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn v6_words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The established clients of `scanned` that are live at `tick` (the data path's idle test
/// with `timeout_ticks`) and whose entry names another backend than their ring slot: the
/// one the slot will name once every pending move is done (`Balancer::converged_backend`),
/// so that a client is published before its slot moves, not after.
pub fn divergent<D: Dataplane>(
    lb: &Balancer<D>,
    scanned: &Scanned,
    tick: u32,
    timeout_ticks: u32,
) -> BTreeSet<Shared> {
    let (seed, m) = (lb.seed(), lb.ring_size());
    let v4 = scanned.v4[..scanned.established_v4.min(scanned.v4.len())]
        .iter()
        .map(|(k, v)| {
            (
                k.service,
                FAMILY_V4,
                ring_slot(client_hash_v4(k.client, seed), m),
                v4_addr(k.client),
                v,
            )
        });
    let v6 = scanned.v6[..scanned.established_v6.min(scanned.v6.len())]
        .iter()
        .map(|(k, v)| {
            (
                k.service,
                FAMILY_V6,
                ring_slot(client_hash_v6(&k.client, seed), m),
                v6_addr(&k.client),
                v,
            )
        });
    let mut out = BTreeSet::new();
    for (service, family, slot, client, v) in v4.chain(v6) {
        if !lb_common::is_live(tick, v.atime, timeout_ticks) {
            continue;
        }
        // Another node's client taken by `import`, not used here yet: that node publishes
        // it. Publishing it again would keep it alive in both nodes' tables (each import
        // refreshing the other's) after its own node withdrew it.
        if v.port == PORT_SHARED {
            continue;
        }
        let Some(i) = lb.service_index(service) else {
            continue;
        };
        if lb.services()[i].value.family != family {
            continue;
        }
        if lb.converged_backend(service, slot) == Some(v.backend) {
            continue;
        }
        // A backend of that service, by its address (the same on every node; ids are not).
        if let Some(b) = lb.backend(v.backend).filter(|b| b.service == service) {
            out.insert(Shared {
                client,
                backend: b.address,
            });
        }
    }
    out
}

/// Writes an established entry, marked `PORT_SHARED` with `atime = tick`, for every shared
/// client that has none here (and refreshes such an entry of an earlier import the client has
/// not used here yet), on every usable backend of ours with the route's backend
/// address and a service of the client's family (a backend address in two virtual servers
/// of one family gives the client an entry in each; only the one it uses is read). The
/// client's ring slot is flagged first (`Balancer::flag_slot`) when the entry disagrees with
/// it. An entry present here is left alone: what this node learned from the client's own
/// packets wins.
pub fn import<D: Dataplane>(
    lb: &mut Balancer<D>,
    shared: &[Shared],
    tick: u32,
) -> Result<ImportReport, StateError> {
    let (seed, m) = (lb.seed(), lb.ring_size());
    let mut report = ImportReport::default();
    // Our usable backends by address, once a round (not once a route).
    let mut by_address: BTreeMap<IpAddr, Vec<(u32, u32)>> = BTreeMap::new();
    for b in lb.backends().filter(|b| b.usable()) {
        by_address
            .entry(b.address)
            .or_default()
            .push((b.service, b.id));
    }
    for s in shared {
        let targets = by_address.get(&s.backend).map_or(&[][..], Vec::as_slice);
        let mut any = false;
        for &(service, id) in targets {
            let Some(i) = lb.service_index(service) else {
                continue;
            };
            let family = lb.services()[i].value.family;
            let value = PersistValue {
                backend: id,
                atime: tick,
                client_mac: [0; 6],
                port: PORT_SHARED,
                _pad: 0,
            };
            let (slot, key) = match (s.client, family) {
                (IpAddr::V4(c), FAMILY_V4) => {
                    let w = v4_words(c);
                    (
                        ring_slot(client_hash_v4(w, seed), m),
                        Key::V4(PersistKeyV4 { service, client: w }),
                    )
                }
                (IpAddr::V6(c), FAMILY_V6) => {
                    let w = v6_words(c);
                    (
                        ring_slot(client_hash_v6(&w, seed), m),
                        Key::V6(PersistKeyV6 { service, client: w }),
                    )
                }
                _ => continue,
            };
            any = true;
            let existing = match key {
                Key::V4(k) => lb.dataplane().persistence_v4_get(&k)?,
                Key::V6(k) => lb.dataplane().persistence_v6_get(&k)?,
            };
            match existing {
                // Still only shared (the client has not come here): kept alive while the
                // other node keeps publishing it, or it would idle out here after
                // `persistence_timeout` however long the client stays with that node.
                Some(e) if e.port == PORT_SHARED && e.backend == id => {
                    if e.atime != tick {
                        let _ = write(lb, &key, &value, false)?;
                    }
                    report.refreshed += 1;
                }
                Some(_) => report.present += 1,
                None => {
                    if lb.services()[i].active_backend(slot as usize) != id {
                        lb.flag_slot(service, slot)?;
                    }
                    if write(lb, &key, &value, true)? {
                        report.inserted += 1;
                    } else {
                        report.present += 1;
                    }
                }
            }
        }
        if !any {
            report.ignored += 1;
        }
    }
    Ok(report)
}

enum Key {
    V4(PersistKeyV4),
    V6(PersistKeyV6),
}

fn write<D: Dataplane>(
    lb: &mut Balancer<D>,
    key: &Key,
    value: &PersistValue,
    new_only: bool,
) -> Result<bool, StateError> {
    let dp = lb.dataplane_mut();
    Ok(match key {
        Key::V4(k) => dp.persistence_v4_write(k, value, new_only)?,
        Key::V6(k) => dp.persistence_v6_write(k, value, new_only)?,
    })
}

#[cfg(test)]
mod tests;
