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
//! Probation entries are published too, tagged as such, and taken into the other nodes'
//! probation maps, never into their persistence: a node promotes a client when the client
//! echoes the proof its backend's reply carried, and only the node the backends' gateway
//! address lives on (the VRRP master) sees those replies, so the clients every other node
//! forwards stay in probation there. A probation entry is also what a spoofed source can
//! create, so what a node publishes of them is capped ([`PROBATION_LIMIT`], the most
//! recently active first), and a node under a flood of them fills only the other nodes'
//! probation maps, which a flood churns anyway (`docs/security.md`, "Shared persistence
//! between cluster nodes").
//!
//! This module decides what to publish and what to take ([`divergent`], [`import`]); the
//! route tables are read and written by the daemon.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    hash::{client_hash_v4, client_hash_v6, ring_slot},
    PersistKeyV4, PersistKeyV6, ProbationValue, FAMILY_V4, FAMILY_V6, PORT_SHARED,
};

use crate::{
    dataplane::{Dataplane, Tier},
    scan::Scanned,
    state::{Balancer, StateError},
};

pub mod netlink;

/// Most probation clients one node publishes a round: the most recently active of them.
/// Real clients in probation at a backup node are those that began on it since the last
/// ring change, a few per second per node even in a reconnect storm; a flood of spoofed
/// sources that was under way when a slot moved is what could make many more.
pub const PROBATION_LIMIT: usize = 4096;

/// One divergent client of one node: the route `client via backend`, and which of the
/// node's maps the client is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shared {
    pub client: IpAddr,
    pub backend: IpAddr,
    pub tier: Tier,
}

impl Shared {
    /// An established client of the publishing node.
    pub fn established(client: IpAddr, backend: IpAddr) -> Self {
        Self {
            client,
            backend,
            tier: Tier::Established,
        }
    }

    /// A client in probation at the publishing node.
    pub fn probation(client: IpAddr, backend: IpAddr) -> Self {
        Self {
            tier: Tier::Probation,
            ..Self::established(client, backend)
        }
    }
}

/// What a node publishes: its divergent clients, one route per client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Divergent {
    pub clients: BTreeSet<Shared>,
    /// Divergent probation clients left out by [`PROBATION_LIMIT`].
    pub over_limit: usize,
}

/// What one [`import`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Entries written: new, or over a shared entry of another backend.
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

/// The clients of `scanned`, either tier, that are live at `tick` (the data path's idle test
/// with `timeout_ticks`) and whose entry names another backend than their ring slot: the
/// one the slot will name once every pending move is done (`Balancer::converged_backend`),
/// so that a client is published before its slot moves, not after. One route per client
/// (an established entry wins over a probation one of the same address), and at most
/// [`PROBATION_LIMIT`] probation clients.
pub fn divergent<D: Dataplane>(
    lb: &Balancer<D>,
    scanned: &Scanned,
    tick: u32,
    timeout_ticks: u32,
) -> Divergent {
    let (seed, m) = (lb.seed(), lb.ring_size());
    let tier = |i: usize, established: usize| {
        if i < established {
            Tier::Established
        } else {
            Tier::Probation
        }
    };
    let v4 = scanned.v4.iter().enumerate().map(|(i, (k, v))| {
        (
            k.service,
            FAMILY_V4,
            ring_slot(client_hash_v4(k.client, seed), m),
            v4_addr(k.client),
            v,
            tier(i, scanned.established_v4),
        )
    });
    let v6 = scanned.v6.iter().enumerate().map(|(i, (k, v))| {
        (
            k.service,
            FAMILY_V6,
            ring_slot(client_hash_v6(&k.client, seed), m),
            v6_addr(&k.client),
            v,
            tier(i, scanned.established_v6),
        )
    });
    let mut established = BTreeMap::new();
    // (idle ticks, the route): the most recently active first.
    let mut probation = Vec::new();
    for (service, family, slot, client, v, tier) in v4.chain(v6) {
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
        // Not a client of a backend that is not usable here: its next packet re-selects it,
        // and what another node took of it would outlive that (a failover).
        let Some(b) = lb
            .backend(v.backend)
            .filter(|b| b.service == service && b.usable())
        else {
            continue;
        };
        let shared = Shared {
            client,
            backend: b.address,
            tier,
        };
        match tier {
            Tier::Established => {
                established.entry(client).or_insert(shared);
            }
            Tier::Probation => probation.push((tick.wrapping_sub(v.atime), shared)),
        }
    }
    probation.sort_unstable();
    let mut seen: BTreeSet<IpAddr> = established.keys().copied().collect();
    let mut probation: Vec<Shared> = probation
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| seen.insert(s.client))
        .collect();
    let over_limit = probation.len().saturating_sub(PROBATION_LIMIT);
    probation.truncate(PROBATION_LIMIT);
    let mut clients: BTreeSet<Shared> = established.into_values().collect();
    clients.extend(probation);
    Divergent {
        clients,
        over_limit,
    }
}

/// Writes an entry marked `PORT_SHARED` with `atime = tick` for every shared client that has
/// none here — established or probation as the other node has it — (and refreshes such an
/// entry of an earlier import the client has not used here yet), on every usable backend of
/// ours with the route's backend address and a service of the client's family (a backend
/// address in two virtual servers of one family gives the client an entry in each; only the
/// one it uses is read). The client's ring slot is flagged first (`Balancer::flag_slot`)
/// when the entry disagrees with it. An entry of this node's own, in either map, is left
/// alone: what this node learned from the client's own packets wins; a shared entry not used
/// here yet follows the other node's latest backend.
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
            let (slot, key) = match (s.client, lb.services()[i].value.family) {
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
            let entry = Entry {
                backend: id,
                atime: tick,
                client_mac: [0; 6],
                port: PORT_SHARED,
                flags: 0,
                proof: 0,
            };
            match here(lb, &key, s.tier)? {
                // Still only shared (the client has not come here): kept alive while the
                // other node keeps publishing it, or it would idle out here after
                // `persistence_timeout` however long the client stays with that node. A
                // proof a reply recorded in it is kept.
                Here::Shared(e) if e.backend == id => {
                    if e.atime != tick {
                        let _ = write(lb, &key, s.tier, &Entry { atime: tick, ..e }, false)?;
                    }
                    report.refreshed += 1;
                }
                Here::Own => report.present += 1,
                // Nothing here yet; or still only shared, and the other node now names
                // another backend (its client moved there: a failover, a re-establishment):
                // that node's latest word wins.
                here @ (Here::None | Here::Shared(_)) => {
                    if lb.services()[i].active_backend(slot as usize) != id {
                        lb.flag_slot(service, slot)?;
                    }
                    let fresh = matches!(here, Here::None);
                    if write(lb, &key, s.tier, &entry, fresh)? {
                        report.inserted += 1;
                    } else if fresh {
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

/// An entry of either map (a persistence entry has no proof).
type Entry = ProbationValue;

/// What a node has of a client before it takes another node's entry of `tier`.
enum Here {
    /// Nothing in either map.
    None,
    /// An earlier import of the same tier, not used here yet.
    Shared(Entry),
    /// An entry this node learned (or one of the other tier, which the data path reads
    /// first or which a promotion here made).
    Own,
}

fn here<D: Dataplane>(lb: &Balancer<D>, key: &Key, tier: Tier) -> Result<Here, StateError> {
    let dp = lb.dataplane();
    let persist = match key {
        Key::V4(k) => dp.persistence_v4_get(k)?,
        Key::V6(k) => dp.persistence_v6_get(k)?,
    };
    let probation = match key {
        Key::V4(k) => dp.probation_v4_get(k)?,
        Key::V6(k) => dp.probation_v6_get(k)?,
    };
    let persist = persist.map(|e| Entry {
        backend: e.backend,
        atime: e.atime,
        client_mac: e.client_mac,
        port: e.port,
        flags: 0,
        proof: 0,
    });
    let shared = |e: Entry| {
        if e.port == PORT_SHARED {
            Here::Shared(e)
        } else {
            Here::Own
        }
    };
    Ok(match (tier, persist, probation) {
        (Tier::Established, Some(e), _) => shared(e),
        // A shared probation entry of an earlier round, now established at the other node:
        // the established entry is taken (the data path reads it first).
        (Tier::Established, None, Some(p)) if p.port == PORT_SHARED => Here::None,
        (Tier::Probation, None, Some(p)) => shared(p),
        (_, None, None) => Here::None,
        _ => Here::Own,
    })
}

enum Key {
    V4(PersistKeyV4),
    V6(PersistKeyV6),
}

fn write<D: Dataplane>(
    lb: &mut Balancer<D>,
    key: &Key,
    tier: Tier,
    e: &Entry,
    new_only: bool,
) -> Result<bool, StateError> {
    let dp = lb.dataplane_mut();
    let persist = crate::dataplane::probation_as_persist(e);
    Ok(match (key, tier) {
        (Key::V4(k), Tier::Established) => dp.persistence_v4_write(k, &persist, new_only)?,
        (Key::V6(k), Tier::Established) => dp.persistence_v6_write(k, &persist, new_only)?,
        (Key::V4(k), Tier::Probation) => dp.probation_v4_write(k, e, new_only)?,
        (Key::V6(k), Tier::Probation) => dp.probation_v6_write(k, e, new_only)?,
    })
}

#[cfg(test)]
mod tests;
