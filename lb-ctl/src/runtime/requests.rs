//! The requests of `lb-ctl backend add/remove/list`, `status` and `lookup`: validated, saved,
//! then applied to the balancer, and answered.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use tracing::info;

use super::{
    changes::check_weight, dp_error, drain::count_active, lookup, Clock, Controller, Effects,
    MAX_DRAIN,
};
use crate::{
    api::{
        ApiError, BackendInfo, ErrorCode, HealthCheckInfo, PersistenceInfo, Plan, ProbeHealth,
        Reply, Request, Response, Status, VirtualServerStatus,
    },
    config::Mode,
    dataplane::{Dataplane, PersistEntry, Tier},
    state::{BackendState, Balancer, Edit, StateError},
};

impl Controller {
    /// Handles one API request. Mutations are validated completely, a new backend gets its
    /// id, then the change is saved, then applied to `lb`; an error at any step up to the
    /// save leaves everything unchanged (a new backend's id is given back). A save that
    /// may not be durable (runtime/store.rs) makes the change and answers with that error.
    pub fn handle<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        request: Request,
        now: Clock,
    ) -> (Response, Effects) {
        let mut effects = Effects::default();
        let result = match request {
            Request::BackendAdd {
                virtual_server,
                address,
                weight,
                dry_run,
            } if dry_run => self.add_dry_run(lb, &virtual_server, address, weight, now),
            Request::BackendAdd {
                virtual_server,
                address,
                weight,
                ..
            } => self.add(lb, &virtual_server, address, weight, &mut effects, now),
            Request::BackendRemove {
                virtual_server,
                address,
                drain,
                dry_run,
            } if dry_run => self.remove_dry_run(lb, &virtual_server, address, drain, now),
            Request::BackendRemove {
                virtual_server,
                address,
                drain,
                ..
            } => self.remove(lb, &virtual_server, address, drain, &mut effects, now),
            Request::Reload { dry_run } => self.reload(lb, dry_run, &mut effects, now),
            Request::BackendList | Request::Status => {
                let response = lb
                    .dataplane()
                    .persistence()
                    .map_err(dp_error)
                    .map(|entries| self.answer_with(lb, &request, &entries, now));
                return (response.unwrap_or_else(Response::Error), effects);
            }
            Request::Lookup { client } => self.lookup(lb, client, now),
        };
        (result.into(), effects)
    }

    /// Whether `request` reads the whole persistence map (the daemon answers it with
    /// [`answer_with`](Controller::answer_with) once a scan off the loop is done).
    pub fn needs_scan(request: &Request) -> bool {
        matches!(request, Request::BackendList | Request::Status)
    }

    /// Answers a read-only request with `entries`, a read of the persistence maps.
    pub fn answer_with<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        request: &Request,
        entries: &[PersistEntry],
        now: Clock,
    ) -> Response {
        match request {
            Request::BackendList => Response::Ok(Reply::Backends {
                backends: self.list(lb, entries, now),
            }),
            Request::Status => Response::Ok(Reply::Status(self.status(lb, entries, now))),
            other => Response::Error(ApiError::new(
                ErrorCode::Internal,
                format!("{other:?} is not answered from a persistence scan"),
            )),
        }
    }

    fn add<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        vs: &str,
        address: IpAddr,
        weight: u32,
        effects: &mut Effects,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        let service = self.service(lb, vs, address)?;
        let name = lb.services()[service].name.clone();
        let existing = self.member(lb, service, address);
        let draining = existing
            .and_then(|id| lb.backend(id))
            .is_some_and(BackendState::draining);
        if !draining {
            self.check_new_backend(lb, service, address, weight)?;
        } else {
            check_weight(weight)?;
        }
        let mut next = self.changes.clone();
        next.record_add(&name, address, weight, self.config_weight(service, address));
        // Allocate, then save, then apply: an add that gets no id saves nothing, and one
        // whose change cannot be saved gives its id back.
        let (id, not_durable) = match existing {
            Some(id) => {
                let not_durable = self.save(next)?;
                lb.set_drain(id, None).expect("member");
                lb.set_weight(id, weight).expect("member");
                info!(virtual_server = %name, backend = %address, id, weight, "drain cancelled: back in the table");
                (id, not_durable)
            }
            None => {
                let id = lb
                    .add_backend(service as u32, address, weight)
                    .map_err(|e| match e {
                        StateError::IdsExhausted { .. } => ApiError::new(
                            ErrorCode::CapacityExhausted,
                            format!(
                                "no backend id left for {address} (the BACKENDS map holds {} backends; a removed backend's id is free once the maps have forgotten it); nothing was changed",
                                lb_capacity(lb)
                            ),
                        ),
                        e => internal(e),
                    })?;
                let not_durable = match self.save(next) {
                    Ok(n) => n,
                    Err(e) => {
                        lb.cancel_add(id).expect("added just now, never applied");
                        return Err(e);
                    }
                };
                info!(virtual_server = %name, backend = %address, id, weight, "backend added; it takes clients after its first successful health check");
                effects.targets_changed = true;
                effects.resolve = true;
                (id, not_durable)
            }
        };
        if let Some(e) = not_durable {
            return Err(e);
        }
        let clients = self.active_clients(lb, now).unwrap_or_default();
        let b = lb.backend(id).expect("just added");
        Ok(Reply::BackendAdded {
            backend: self.info(lb, b, &clients),
            drain_cancelled: draining,
        })
    }

    fn remove<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        vs: &str,
        address: IpAddr,
        drain: Option<Duration>,
        effects: &mut Effects,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        let service = self.service(lb, vs, address)?;
        let name = lb.services()[service].name.clone();
        let id = self.removal_target(lb, service, address, drain)?;
        let clients = self.active_clients(lb, now).unwrap_or_default();
        let before = self.info(lb, lb.backend(id).expect("member"), &clients);
        let in_config = self.config_weight(service, address).is_some();
        let mut next = self.changes.clone();
        match drain.filter(|d| !d.is_zero()) {
            Some(d) => {
                let until = now.wall + d;
                next.record_drain(&name, address, until);
                let not_durable = self.save(next)?;
                lb.set_drain(id, Some(until)).expect("member");
                let rfc = humantime::format_rfc3339_seconds(until).to_string();
                info!(virtual_server = %name, backend = %address, id, until = %rfc, "draining: no new clients; removed when its clients are idle or at the deadline");
                if let Some(e) = not_durable {
                    return Err(e);
                }
                Ok(Reply::BackendRemoved {
                    backend: before,
                    draining_until: Some(rfc),
                })
            }
            None => {
                next.record_remove(&name, address, in_config);
                let not_durable = self.save(next)?;
                lb.remove_backend(id).expect("member");
                self.trackers.remove(&id);
                effects.targets_changed = true;
                info!(virtual_server = %name, backend = %address, id, "backend removed");
                if let Some(e) = not_durable {
                    return Err(e);
                }
                Ok(Reply::BackendRemoved {
                    backend: before,
                    draining_until: None,
                })
            }
        }
    }

    /// `backend add --dry-run`: the same checks as the add, then its blast radius.
    fn add_dry_run<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        vs: &str,
        address: IpAddr,
        weight: u32,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        let service = self.service(lb, vs, address)?;
        let name = lb.services()[service].name.clone();
        let existing = self
            .member(lb, service, address)
            .filter(|id| lb.backend(*id).is_some_and(BackendState::draining));
        let mut edit = Edit::default();
        let (line, label) = match existing {
            Some(id) => {
                check_weight(weight)?;
                edit.undrain.push(id);
                edit.weight.push((id, weight));
                (
                    format!("{name}: {address} drain cancelled (weight {weight})"),
                    "drain cancelled",
                )
            }
            None => {
                self.check_new_backend(lb, service, address, weight)?;
                edit.add.push((service, address, weight));
                (format!("{name}: {address} added (weight {weight}; takes clients after its first successful health check)"), "added")
            }
        };
        let added: Vec<(usize, IpAddr)> = edit.add.iter().map(|&(i, a, _)| (i, a)).collect();
        self.dry_run_plan(lb, &edit, line, (address, label), &added, now)
    }

    /// `backend remove --dry-run`: the same checks as the remove, then its blast radius.
    fn remove_dry_run<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        vs: &str,
        address: IpAddr,
        drain: Option<Duration>,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        let service = self.service(lb, vs, address)?;
        let name = lb.services()[service].name.clone();
        let id = self.removal_target(lb, service, address, drain)?;
        let mut edit = Edit::default();
        let (line, label) = match drain.filter(|d| !d.is_zero()) {
            Some(d) => {
                edit.drain.push((id, now.wall + d));
                (
                    format!(
                        "{name}: {address} draining for {}",
                        humantime::format_duration(d)
                    ),
                    "draining",
                )
            }
            None => {
                edit.remove.push(id);
                (format!("{name}: {address} removed"), "removed")
            }
        };
        self.dry_run_plan(lb, &edit, line, (address, label), &[], now)
    }

    fn dry_run_plan<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        edit: &Edit,
        line: String,
        (address, label): (IpAddr, &str),
        added: &[(usize, IpAddr)],
        now: Clock,
    ) -> Result<Reply, ApiError> {
        let preview = lb.preview(edit, std::time::Instant::now());
        let labels = HashMap::from([(address, label.to_owned())]);
        Ok(Reply::Plan(Plan {
            dry_run: true,
            changes: vec![line],
            virtual_servers: super::blast::blast_radius(
                &self.config,
                lb,
                &preview,
                &labels,
                added,
                now,
            )?,
        }))
    }

    /// The backend `backend remove` names, after its checks (member, drain bound).
    fn removal_target<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        service: usize,
        address: IpAddr,
        drain: Option<Duration>,
    ) -> Result<u32, ApiError> {
        let name = &lb.services()[service].name;
        let id = self.member(lb, service, address).ok_or_else(|| {
            let elsewhere = lb
                .backend_by_address(address)
                .map(|b| format!(" (it is a backend of {})", lb.service(b.service).name))
                .unwrap_or_default();
            ApiError::new(
                ErrorCode::UnknownBackend,
                format!("{address} is not a backend of {name}{elsewhere}"),
            )
        })?;
        if let Some(d) = drain {
            if d > MAX_DRAIN {
                return Err(ApiError::new(
                    ErrorCode::InvalidDrain,
                    format!(
                        "drain {} is longer than the maximum {}",
                        humantime::format_duration(d),
                        humantime::format_duration(MAX_DRAIN)
                    ),
                ));
            }
        }
        Ok(id)
    }

    fn list<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        entries: &[PersistEntry],
        now: Clock,
    ) -> Vec<BackendInfo> {
        let clients = count_active(lb, entries, now.tick, self.config.persist_timeout_ticks());
        lb.services()
            .iter()
            .flat_map(|s| s.members.iter())
            .filter_map(|id| lb.backend(*id))
            .map(|b| self.info(lb, b, &clients))
            .collect()
    }

    fn status<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        entries: &[PersistEntry],
        now: Clock,
    ) -> Status {
        let backends = self.list(lb, entries, now);
        let announced = self
            .announced
            .as_ref()
            .map(|v| v.read().expect("not poisoned").clone());
        let c = &self.config;
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            config: c.file().to_owned(),
            interfaces: c.interface_names(),
            mode: match c.mode {
                Mode::Nat => "nat",
                Mode::Dsr => "dsr",
            }
            .to_owned(),
            health_check: HealthCheckInfo {
                interval: fmt(c.health_check.interval),
                timeout: fmt(c.health_check.timeout),
                fall: c.health_check.fall,
                rise: c.health_check.rise,
                probes: c.health_check.probes.labels(),
            },
            persistence: PersistenceInfo {
                entries: tier_count(entries, Tier::Established),
                capacity: c.persistence_entries,
                timeout: fmt(c.persistence_timeout),
                probation_entries: tier_count(entries, Tier::Probation),
                probation_capacity: c.probation_entries,
                new_client_rate: c.new_client_rate,
            },
            virtual_servers: lb
                .services()
                .iter()
                .zip(&c.virtual_servers)
                .map(|(s, vs)| {
                    // A dual-stack virtual server is one service per family.
                    let mine: Vec<BackendInfo> = backends
                        .iter()
                        .filter(|b| {
                            b.virtual_server == s.name && b.address.is_ipv4() == vs.vip.is_ipv4()
                        })
                        .cloned()
                        .collect();
                    VirtualServerStatus {
                        name: s.name.clone(),
                        vip: vs.vip,
                        ports: vs.ports.clone(),
                        tcp_ports: vs.tcp_ports.clone(),
                        esp: vs.esp,
                        active: mine.iter().filter(|b| b.ring_slots > 0).count(),
                        held_slots: s.held_slots(),
                        backends: mine,
                    }
                })
                .collect(),
            announced: announced
                .as_ref()
                .map_or_else(Vec::new, crate::announce::View::prefixes),
            announce_table: c.announce.map(|a| a.table),
        }
    }

    fn lookup<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        client: IpAddr,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        lookup::lookup(&self.config, lb, client, now)
    }

    /// Active persisted clients per backend id (entries of the backend's own service that
    /// the data path would still honour). In the daemon: from the last shared scan, however
    /// old (none yet: no count) — `backend add/remove` never scan on the event loop.
    fn active_clients<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        now: Clock,
    ) -> Result<HashMap<u32, u64>, ApiError> {
        let timeout = self.config.persist_timeout_ticks();
        if let Some(scans) = &self.scans {
            let last = scans.latest().and_then(|o| o.result.ok());
            return Ok(last.map_or_else(HashMap::new, |s| {
                count_active(lb, &s.entries, now.tick, timeout)
            }));
        }
        let entries = lb.dataplane().persistence().map_err(dp_error)?;
        Ok(count_active(lb, &entries, now.tick, timeout))
    }

    fn info<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        b: &BackendState,
        clients: &HashMap<u32, u64>,
    ) -> BackendInfo {
        let svc = lb.service(b.service);
        let state = if b.in_ring() {
            "active"
        } else if b.draining() && b.usable() {
            "draining"
        } else {
            "unusable"
        };
        let in_config = lb
            .service_index(b.service)
            .is_some_and(|i| self.config_weight(i, b.address).is_some());
        BackendInfo {
            virtual_server: svc.name.clone(),
            address: b.address,
            id: b.id,
            weight: b.weight,
            state: state.to_owned(),
            health: b.health,
            probes: {
                let trackers = self.trackers.get(&b.id).copied().unwrap_or_default();
                self.config
                    .health_check
                    .probes
                    .iter()
                    .map(|k| ProbeHealth {
                        probe: k.label().to_owned(),
                        health: trackers.of(k),
                    })
                    .collect()
            },
            next_hop: b.next_hop.map(|nh| {
                let m = nh.mac;
                let dev = lb.iface(nh.port).map_or("?", |i| i.name.as_str());
                format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} on {dev}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )
            }),
            drain_until: b
                .drain_until
                .map(|u| humantime::format_rfc3339_seconds(u).to_string()),
            ring_slots: svc
                .active_table()
                .iter()
                .filter(|&&v| v & lb_common::RING_BACKEND_MASK == b.id)
                .count() as u32,
            clients: clients.get(&b.id).copied().unwrap_or(0),
            origin: if in_config { "config" } else { "runtime" }.to_owned(),
        }
    }
}

/// Entries of `tier` (idle ones included, until the LRU recycles them).
fn tier_count(entries: &[PersistEntry], tier: Tier) -> u64 {
    entries.iter().filter(|e| e.tier == tier).count() as u64
}

fn lb_capacity<D: Dataplane>(lb: &Balancer<D>) -> usize {
    lb.capacity() as usize - 1
}

fn internal(e: StateError) -> ApiError {
    ApiError::new(ErrorCode::Internal, crate::error_chain(&e))
}
