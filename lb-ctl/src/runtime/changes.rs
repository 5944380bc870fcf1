//! The runtime changes applied to the balancer: replayed at start, saved before a request's
//! change takes effect, and the checks both share (which service and backend a request
//! names, what the config says of it, whether a new backend is allowed).

use std::{net::IpAddr, time::SystemTime};

use tracing::{info, warn};

use super::{Controller, RuntimeChanges, StoreError};
use crate::{
    api::{ApiError, ErrorCode},
    config::{self, Config, MAX_WEIGHT},
    dataplane::Dataplane,
    state::Balancer,
};

impl Controller {
    /// Loads the saved runtime changes and applies them to `lb` (built from the config, not
    /// yet applied to the maps). Returns one warning per change that could not be applied.
    /// Such a change is *kept* in the file as it is — the config may be wrong only for now
    /// (a virtual server missing or renamed, an address given another role) — and is applied
    /// again at a start whose config allows it. The file is rewritten only when a drain whose
    /// deadline passed while the daemon was down becomes a removal.
    pub fn replay<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let saved = self.store.load()?;
        let file = self.store.path().display().to_string();
        let keep = |what: String| {
            format!("{what}: not applied, kept in {file} for a start whose config allows it (delete it from the file to forget it)")
        };
        let mut warnings = Vec::new();
        let mut kept = saved.clone();
        for (vs, changes) in &saved.virtual_servers {
            if !lb.services().iter().any(|s| s.name == *vs) {
                warnings.push(keep(format!(
                    "runtime changes of virtual server {vs}, which is not in the config"
                )));
                continue;
            }
            // A dual-stack virtual server is a service per family: each address goes to its own.
            let service_of = |lb: &Balancer<D>, address| {
                service_by_name(lb, &self.config, vs, address).expect("the name exists")
            };
            for &address in &changes.removed {
                let service = service_of(lb, address);
                match self.member(lb, service, address) {
                    Some(id) => {
                        lb.remove_backend(id).expect("member exists");
                    }
                    None => warnings.push(keep(format!(
                        "runtime removal of {address} from {vs}, which the config does not list there"
                    ))),
                }
            }
            for added in &changes.added {
                let address = added.address;
                let service = service_of(lb, address);
                if let Err(e) = self.check_new_backend(lb, service, address, added.weight) {
                    // A duplicate in this virtual server is a weight override of a config
                    // backend; anything else (another virtual server's backend too) waits.
                    let own = e.code == ErrorCode::DuplicateBackend
                        && self.member(lb, service, address).is_some();
                    if !own {
                        warnings.push(keep(format!(
                            "runtime backend {address} of {vs} ({})",
                            e.message
                        )));
                        continue;
                    }
                }
                match self.member(lb, service, address) {
                    Some(id) => {
                        lb.set_weight(id, added.weight).expect("member exists");
                    }
                    None => {
                        if let Err(e) = lb.add_backend(service as u32, address, added.weight) {
                            warnings.push(keep(format!("runtime backend {address} of {vs} ({e})")));
                            continue;
                        }
                    }
                }
            }
            for d in &changes.draining {
                let service = service_of(lb, d.address);
                let Some(id) = self.member(lb, service, d.address) else {
                    warnings.push(keep(format!(
                        "drain of {} in {vs}, which is not one of its backends",
                        d.address
                    )));
                    continue;
                };
                let until = match humantime::parse_rfc3339_weak(&d.until) {
                    Ok(t) => t,
                    Err(e) => {
                        warnings.push(format!(
                            "drain of {} in {vs}: bad deadline {:?} ({e}): it ends now",
                            d.address, d.until
                        ));
                        now
                    }
                };
                if until <= now {
                    info!(virtual_server = %vs, backend = %d.address, "drain deadline passed while the daemon was down: removed");
                    lb.remove_backend(id).expect("member exists");
                    kept.record_remove(
                        vs,
                        d.address,
                        self.config_weight(service, d.address).is_some(),
                    );
                } else {
                    lb.set_drain(id, Some(until)).expect("member exists");
                }
            }
        }
        kept.tidy();
        let mut normalized = saved.clone();
        normalized.tidy();
        if kept != normalized {
            match self.store.save(&kept) {
                Ok(()) => {}
                // The new file is in place: what this start did is what a restart replays.
                Err(e @ StoreError::NotDurable { .. }) => warnings.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        self.changes = kept;
        Ok(warnings)
    }

    // -- helpers, shared with the requests and drains -----------------------------------

    /// Saves `next` as the runtime changes (the store's write order: runtime/store.rs).
    /// `Err`: nothing was saved, the caller changes nothing. `Ok(None)`: saved.
    /// `Ok(Some(e))`: the file is replaced but may not be durable (the directory fsync
    /// failed): the caller makes the change — the file a restart reads has it — and answers
    /// with `e`.
    pub(super) fn save(&mut self, next: RuntimeChanges) -> Result<Option<ApiError>, ApiError> {
        if next == self.changes {
            return Ok(None);
        }
        match self.store.save(&next) {
            Ok(()) => {
                self.changes = next;
                Ok(None)
            }
            Err(e @ StoreError::NotDurable { .. }) => {
                warn!("{e}");
                self.changes = next;
                Ok(Some(ApiError::new(ErrorCode::Internal, e.to_string())))
            }
            Err(e) => Err(ApiError::new(
                ErrorCode::Internal,
                format!("{e}; nothing was changed"),
            )),
        }
    }

    /// Service index of `vs`, a name or a VIP, for a backend at `address` (see
    /// [`service_by_name`]).
    pub(super) fn service<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        vs: &str,
        address: IpAddr,
    ) -> Result<usize, ApiError> {
        let by_name = service_by_name(lb, &self.config, vs, address);
        let by_vip = || {
            let ip: IpAddr = vs.parse().ok()?;
            self.config.virtual_servers.iter().position(|v| v.vip == ip)
        };
        by_name.or_else(by_vip).ok_or_else(|| {
            let known: Vec<String> = self
                .config
                .virtual_servers
                .iter()
                .map(|v| format!("{} {}", v.name, v.vip))
                .collect();
            ApiError::new(
                ErrorCode::UnknownVirtualServer,
                format!("no virtual server {vs:?} (known: {})", known.join(", ")),
            )
        })
    }

    /// Id of `address` among `service`'s backends.
    pub(super) fn member<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        service: usize,
        address: IpAddr,
    ) -> Option<u32> {
        lb.services()[service]
            .members
            .iter()
            .copied()
            .find(|id| lb.backend(*id).is_some_and(|b| b.address == address))
    }

    pub(super) fn config_weight(&self, service: usize, address: IpAddr) -> Option<u32> {
        self.config.virtual_servers[service]
            .backends
            .iter()
            .find(|b| b.address == address)
            .map(|b| b.weight)
    }

    /// The config's rules for a backend (`config::validate`), against the running state.
    pub(super) fn check_new_backend<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        service: usize,
        address: IpAddr,
        weight: u32,
    ) -> Result<(), ApiError> {
        let vs = &self.config.virtual_servers[service];
        let invalid = |why: String| Err(ApiError::new(ErrorCode::InvalidAddress, why));
        if let Some(why) = config::address_problem(address) {
            return invalid(why);
        }
        if address.is_ipv4() != vs.vip.is_ipv4() {
            return invalid(format!(
                "{address} is not of the address family of {} ({})",
                vs.name, vs.vip
            ));
        }
        if let Some(owner) = self
            .config
            .virtual_servers
            .iter()
            .find(|v| v.vip == address)
        {
            return invalid(format!(
                "{address} is the VIP of virtual server {}",
                owner.name
            ));
        }
        if let Some(b) = lb.backend_by_address(address) {
            let owner = &lb.service(b.service).name;
            let msg = if lb.service_index(b.service) == Some(service) {
                format!("{address} is already a backend of {owner} (id {})", b.id)
            } else {
                format!(
                    "{address} is already a backend of {owner}; a backend address may serve one virtual server"
                )
            };
            return Err(ApiError::new(ErrorCode::DuplicateBackend, msg));
        }
        check_weight(weight)
    }
}

/// The service named `name` for a backend at `address`: of a dual-stack virtual server, the
/// one of `address`'s family (the first of that name when there is none, so the family check
/// reports the mismatch).
pub(super) fn service_by_name<D: Dataplane>(
    lb: &Balancer<D>,
    config: &Config,
    name: &str,
    address: IpAddr,
) -> Option<usize> {
    let named = |i: &usize| lb.services()[*i].name == name;
    (0..lb.services().len())
        .filter(named)
        .find(|&i| config.virtual_servers[i].vip.is_ipv4() == address.is_ipv4())
        .or_else(|| (0..lb.services().len()).find(named))
}

pub(super) fn check_weight(weight: u32) -> Result<(), ApiError> {
    if weight == 0 || weight > MAX_WEIGHT {
        return Err(ApiError::new(
            ErrorCode::InvalidWeight,
            format!("weight {weight} is outside 1..={MAX_WEIGHT}"),
        ));
    }
    Ok(())
}
