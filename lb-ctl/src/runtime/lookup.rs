//! `lb-ctl lookup CLIENT`: where the client's next packet goes for each virtual server of
//! its family, and why — the data path's own chain, read from the maps:
//!
//! 1. a `PERSIST_*` entry (an established client) decides when its backend is usable, still
//!    of this service, and the entry is not idle; otherwise the ring re-selects and the
//!    entry is rewritten in place (the probation map is not consulted then);
//! 2. without one, a `PROBATION_*` entry (a new client that has not echoed its backend's
//!    proof yet) decides by the same rules;
//! 3. without either, the client's Maglev slot.
//!
//! With an entry, also the last IKE stage the data path saw of the client and whether it was
//! steered by its SA's SPI (`lb_common::ike`): where a client that fails to connect stopped.

use std::net::IpAddr;

use lb_common::{
    hash::{client_hash_v4, client_hash_v6},
    ike, PersistKeyV4, PersistKeyV6, PersistValue, BACKEND_NONE,
};

use super::{dp_error, Clock, TICK};
use crate::{
    api::{ApiError, ErrorCode, LookupResult, PersistedInfo, Reply},
    config::Config,
    dataplane::{addr_words, probation_as_persist, Dataplane},
    state::{Balancer, ServiceState},
};

/// `lookup`'s answer for `client` (see the module doc).
pub(super) fn lookup<D: Dataplane>(
    config: &Config,
    lb: &Balancer<D>,
    client: IpAddr,
    now: Clock,
) -> Result<Reply, ApiError> {
    if !config
        .virtual_servers
        .iter()
        .any(|vs| vs.vip.is_ipv4() == client.is_ipv4())
    {
        let family = if client.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(ApiError::new(
            ErrorCode::InvalidAddress,
            format!("{client}: no virtual server has an {family} VIP"),
        ));
    }
    let timeout = config.persist_timeout_ticks();
    let mut results = Vec::new();
    for (s, vs) in lb.services().iter().zip(&config.virtual_servers) {
        if vs.vip.is_ipv4() != client.is_ipv4() {
            continue;
        }
        let (hash, entry) = entry_of(lb, s, client)?;
        let slot = lb_common::hash::ring_slot(hash, lb.ring_size());
        let ring_id = s.active_backend(slot as usize);
        let mut persisted = None;
        let mut chosen = None;
        if let Some(Entry {
            value: e,
            tier,
            proof,
        }) = entry
        {
            let idle = lb_common::idle_ticks(now.tick, e.atime);
            let b = lb.backend(e.backend).filter(|b| b.service == s.value.id);
            let ignored = ignored_because(lb, s.value.id, &e, now.tick, timeout);
            if ignored.is_none() {
                chosen = Some((e.backend, tier));
            }
            persisted = Some(PersistedInfo {
                backend_id: e.backend,
                backend: b.map(|b| b.address),
                idle_seconds: (TICK * idle).as_secs(),
                ignored_because: ignored.map(str::to_owned),
                tier: tier.to_owned(),
                proof_recorded: proof,
                ike_stage: match ike::stage(e.flags) {
                    ike::STAGE_NONE => None,
                    stage => Some(ike::stage_name(stage).to_owned()),
                },
                steered: e.flags & ike::CLIENT_F_STEERED != 0,
            });
        }
        let (source, id) = match chosen {
            Some((id, tier)) => (tier, Some(id)),
            None if ring_id == BACKEND_NONE => ("none", None),
            None => ("maglev", Some(ring_id)),
        };
        results.push(LookupResult {
            virtual_server: s.name.clone(),
            vip: vs.vip,
            backend: id.and_then(|id| lb.backend(id)).map(|b| b.address),
            backend_id: id,
            source: source.to_owned(),
            slot,
            persisted,
        });
    }
    Ok(Reply::Lookup { client, results })
}

/// Why the data path would not follow entry `e` of service `service` at `tick` (`None`: it
/// sends the client to `e.backend`): the rule of `lookup` and of the dry runs' blast radius.
pub(super) fn ignored_because<D: Dataplane>(
    lb: &Balancer<D>,
    service: u32,
    e: &PersistValue,
    tick: u32,
    timeout: u32,
) -> Option<&'static str> {
    match lb.backend(e.backend).filter(|b| b.service == service) {
        None => Some("backend removed"),
        Some(b) if !b.usable() => Some("backend unusable"),
        Some(_) if lb_common::idle_ticks(tick, e.atime) > timeout => Some("idle"),
        Some(_) => None,
    }
}

/// The entry that decides for a client, as the data path finds it.
struct Entry {
    value: PersistValue,
    /// `persistence` or `probation`: the `source` it gives when it decides.
    tier: &'static str,
    /// For a probation entry: whether the backend's proof is recorded (the client has yet
    /// to echo it); `None` for an established one.
    proof: Option<bool>,
}

/// The client's hash and its deciding entry in service `s`: the persistence entry if there
/// is one, else the probation entry.
fn entry_of<D: Dataplane>(
    lb: &Balancer<D>,
    s: &ServiceState,
    client: IpAddr,
) -> Result<(u32, Option<Entry>), ApiError> {
    let words = addr_words(client);
    let dp = lb.dataplane();
    let established = |value| Entry {
        value,
        tier: "persistence",
        proof: None,
    };
    let probation = |p: lb_common::ProbationValue| Entry {
        value: probation_as_persist(&p),
        tier: "probation",
        proof: Some(p.proof != 0),
    };
    if client.is_ipv4() {
        let key = PersistKeyV4 {
            service: s.value.id,
            client: words[0],
        };
        let hash = client_hash_v4(words[0], lb.seed());
        let entry = match dp.persistence_v4_get(&key).map_err(dp_error)? {
            Some(v) => Some(established(v)),
            None => dp.probation_v4_get(&key).map_err(dp_error)?.map(probation),
        };
        Ok((hash, entry))
    } else {
        let key = PersistKeyV6 {
            service: s.value.id,
            client: words,
        };
        let hash = client_hash_v6(&words, lb.seed());
        let entry = match dp.persistence_v6_get(&key).map_err(dp_error)? {
            Some(v) => Some(established(v)),
            None => dp.probation_v6_get(&key).map_err(dp_error)?.map(probation),
        };
        Ok((hash, entry))
    }
}
