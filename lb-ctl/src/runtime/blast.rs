//! The blast radius of a change (docs/operations.md, "Blast radius"): per service and
//! backend, how many live clients would move and where they would start, computed from the
//! persistence and probation maps as they are and the tables the change would write
//! ([`Balancer::preview`]).
//!
//! A client is *live* when its deciding entry — the persistence entry, else the probation
//! entry, the data path's order — is not idle (`persistence_timeout`). Where it goes now and
//! after the change follows the data path's rule, the same function `lookup` uses
//! (`lookup::ignored_because`): to its entry's backend while that backend is usable and of
//! the service, else to the backend of its ring slot (client hash and seed of the data path).
//! Clients without an entry are not counted: nobody is connected there.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use lb_common::{
    hash::{client_hash_v4, client_hash_v6, ring_slot},
    PersistValue, BACKEND_NONE,
};

use super::{dp_error, lookup::ignored_because, Clock};
use crate::{
    api::{ApiError, BackendImpact, VsImpact},
    config::Config,
    dataplane::{probation_as_persist, Dataplane},
    state::{Balancer, Preview},
};

/// Per service index: (hash, deciding entry) of every client with an entry.
type Clients = BTreeMap<usize, Vec<(u32, PersistValue)>>;

/// Every client's deciding entry, per service index (entries of unknown services skipped).
fn clients<D: Dataplane>(lb: &Balancer<D>) -> Result<Clients, ApiError> {
    let dp = lb.dataplane();
    let seed = lb.seed();
    let mut out = Clients::new();
    let mut v4: HashMap<(u32, u32), PersistValue> = HashMap::new();
    for (k, v) in dp.probation_v4().map_err(dp_error)? {
        v4.insert((k.service, k.client), probation_as_persist(&v));
    }
    // A persistence entry hides the probation entry (the data path never looks there then).
    for (k, v) in dp.persistence_v4().map_err(dp_error)? {
        v4.insert((k.service, k.client), v);
    }
    for ((service, client), v) in v4 {
        if let Some(idx) = lb.service_index(service) {
            out.entry(idx)
                .or_default()
                .push((client_hash_v4(client, seed), v));
        }
    }
    let mut v6: HashMap<(u32, [u32; 4]), PersistValue> = HashMap::new();
    for (k, v) in dp.probation_v6().map_err(dp_error)? {
        v6.insert((k.service, k.client), probation_as_persist(&v));
    }
    for (k, v) in dp.persistence_v6().map_err(dp_error)? {
        v6.insert((k.service, k.client), v);
    }
    for ((service, client), v) in v6 {
        if let Some(idx) = lb.service_index(service) {
            out.entry(idx)
                .or_default()
                .push((client_hash_v6(&client, seed), v));
        }
    }
    Ok(out)
}

/// The blast radius of the change `preview` describes. `labels` names each backend's change
/// by address (`added`, `removed`, …); a service is listed when a backend of it has a label
/// or a client of it moves. `added` lists the new backends per service index, which hold no
/// client yet.
pub(super) fn blast_radius<D: Dataplane>(
    config: &Config,
    lb: &Balancer<D>,
    preview: &Preview,
    labels: &HashMap<IpAddr, String>,
    added: &[(usize, IpAddr)],
    now: Clock,
) -> Result<Vec<VsImpact>, ApiError> {
    let timeout = config.persist_timeout_ticks();
    let clients = clients(lb)?;
    let mut out = Vec::new();
    for (idx, s) in lb.services().iter().enumerate() {
        let id = s.value.id;
        // (clients, leaving, arriving) per backend id.
        let mut per: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
        let (mut live, mut moving, mut dropped) = (0, 0, 0);
        for (hash, e) in clients.get(&idx).map_or(&[][..], Vec::as_slice) {
            if !lb_common::is_live(now.tick, e.atime, timeout) {
                continue;
            }
            live += 1;
            let slot = ring_slot(*hash, lb.ring_size()) as usize;
            let before = match ignored_because(lb, id, e, now.tick, timeout) {
                None => e.backend,
                Some(_) => s.active_backend(slot),
            };
            let kept = preview.usable.contains(&e.backend)
                && lb.backend(e.backend).is_some_and(|b| b.service == id);
            let after = if kept {
                e.backend
            } else {
                preview.tables[idx][slot]
            };
            per.entry(before).or_default().0 += 1;
            if before != after {
                moving += 1;
                per.entry(before).or_default().1 += 1;
                if after == BACKEND_NONE {
                    dropped += 1;
                } else {
                    per.entry(after).or_default().2 += 1;
                }
            }
        }
        let label = |a: &IpAddr| labels.get(a).cloned().unwrap_or_default();
        let mut backends: Vec<BackendImpact> = s
            .members
            .iter()
            .filter_map(|m| lb.backend(*m))
            .map(|b| {
                let (clients, leaving, arriving) = per.get(&b.id).copied().unwrap_or_default();
                BackendImpact {
                    address: b.address,
                    change: label(&b.address),
                    clients,
                    leaving,
                    arriving,
                }
            })
            .collect();
        backends.extend(added.iter().filter(|(i, _)| *i == idx).map(|(_, address)| {
            BackendImpact {
                address: *address,
                change: label(address),
                clients: 0,
                leaving: 0,
                arriving: 0,
            }
        }));
        if moving == 0 && backends.iter().all(|b| b.change.is_empty()) {
            continue;
        }
        out.push(VsImpact {
            virtual_server: s.name.clone(),
            vip: crate::dataplane::words_addr(s.value.family, &s.value.vip),
            clients: live,
            moving,
            dropped,
            backends,
        });
    }
    Ok(out)
}
