//! `lb-ctl reload` and SIGHUP (docs/operations.md, "Reload"): the config file read again, and
//! the difference applied without a restart.
//!
//! * The file is validated as at start; a file that does not validate changes nothing and
//!   is answered with its problems (`file:line: key: reason`).
//! * Keys only a restart can apply (`runtime/restart_only.rs`: map sizes, interfaces, the
//!   other load-time globals, paths, a virtual server's VIP and ports, virtual servers added
//!   or removed) are refused, each with its line and the reason, and nothing changes.
//! * What a reload applies: backends added and removed (a removed one drains for
//!   `reload_drain`, 0 removes at once), weights, and `health_check` (the monitor restarts
//!   with the new parameters), `reload_drain` itself, and `persistence_timeout` (a load-time
//!   global: the program is loaded again with it and swapped in on every interface with
//!   `BPF_LINK_UPDATE`, first, so a swap that fails changes nothing; `state/timeout.rs`).
//! * Runtime changes (`backends.json`) keep the precedence they have at start: the desired
//!   backends of a virtual server are the file's, with the runtime changes replayed over them
//!   — runtime removals stay removed, runtime additions and weight overrides win, runtime
//!   drains go on. A reload is what a restart with the new file would run, minus what only a
//!   restart can change.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
    time::Instant,
};

use tracing::info;

use super::{blast, restart_only::restart_only, Clock, Controller, Effects};
use crate::{
    api::{ApiError, ErrorCode, Plan, Reply},
    config::{self, Config},
    dataplane::Dataplane,
    state::{Balancer, Edit, ServiceState},
};

/// A virtual server a reload adds: its service, the id it takes and its backends (address,
/// weight).
pub(super) type NewService = (config::VirtualServer, u32, Vec<(IpAddr, u32)>);

/// What a reload would do: the edit of the backends, a line per change, and the labels of
/// the blast radius.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) edit: Edit,
    pub(super) lines: Vec<String>,
    pub(super) labels: HashMap<IpAddr, String>,
    pub(super) added: Vec<(usize, IpAddr)>,
    pub(super) health: bool,
    /// `persistence_timeout` changed: the program is swapped (`state/timeout.rs`).
    pub(super) timeout: bool,
    /// Virtual servers (services) added: the service, its id and its backends.
    pub(super) services: Vec<NewService>,
}

impl Controller {
    /// Reads the config file again; with `dry_run` answers what would change, else applies
    /// it (see the module doc).
    pub(super) fn reload<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        dry_run: bool,
        effects: &mut Effects,
        now: Clock,
    ) -> Result<Reply, ApiError> {
        let path = self.config.file().to_owned();
        let new = config::load(Path::new(&path)).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidConfig,
                format!("{}\nnothing was changed", crate::error_chain(&e)),
            )
        })?;
        let refused = restart_only(&self.config, &new);
        if !refused.is_empty() {
            let lines: Vec<String> = refused.iter().map(ToString::to_string).collect();
            return Err(ApiError::new(
                ErrorCode::RestartRequired,
                format!(
                    "{}\nnothing was changed: restart the daemon to apply these keys (docs/configuration.md, \"What a reload applies\")",
                    lines.join("\n")
                ),
            ));
        }
        let changes = self.reload_changes(lb, &new, now)?;
        let preview = lb.preview(&changes.edit, Instant::now());
        let impact = blast::blast_radius(
            &self.config,
            lb,
            &preview,
            &changes.labels,
            &changes.added,
            now,
        )?;
        let plan = Plan {
            dry_run,
            changes: changes.lines.clone(),
            virtual_servers: impact,
        };
        if dry_run {
            return Ok(Reply::Plan(plan));
        }
        // The program swap first: one that fails changes nothing.
        if changes.timeout {
            lb.set_persist_timeout(new.persist_timeout_ticks())
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::Internal,
                        format!(
                            "persistence_timeout: {}\nnothing was changed: every interface runs the program it ran",
                            crate::error_chain(&e)
                        ),
                    )
                })?;
            effects.persistence = true;
        }
        self.apply_edit(lb, &changes.edit, effects);
        self.apply_services(lb, &changes.services, effects);
        effects.health = changes.health;
        self.config = in_service_order(new, lb);
        info!(file = %path, changes = changes.lines.len(), "configuration reloaded");
        for line in &changes.lines {
            info!("reload: {line}");
        }
        Ok(Reply::Plan(plan))
    }

    /// Adds the new virtual servers' services and their backends, and records their ids in
    /// `state_dir/identity.json` (the pins would give them back anyway: the file is a record).
    fn apply_services<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        services: &[NewService],
        effects: &mut Effects,
    ) {
        if services.is_empty() {
            return;
        }
        let path = self.config.state_dir.join(crate::identity::IDENTITY_FILE);
        let mut identity = crate::identity::load(&path).unwrap_or_default();
        for (vs, id, backends) in services {
            let pos = lb.add_service(vs, *id);
            let edit = Edit {
                add: backends.iter().map(|&(a, w)| (pos, a, w)).collect(),
                ..Edit::default()
            };
            self.apply_edit(lb, &edit, effects);
            identity
                .services
                .insert(crate::identity::service_key(vs), *id);
            info!(virtual_server = %vs.name, vip = %vs.vip, id, "virtual server added");
        }
        if let Err(e) = crate::identity::save(&path, &identity) {
            tracing::warn!("reload: recording the new services' ids: {e}");
        }
    }

    /// Makes `edit` in `lb` (validated by its maker) and records what the daemon must do.
    pub(super) fn apply_edit<D: Dataplane>(
        &mut self,
        lb: &mut Balancer<D>,
        edit: &Edit,
        effects: &mut Effects,
    ) {
        for &id in &edit.remove {
            lb.remove_backend(id).expect("member");
            self.trackers.remove(&id);
            effects.targets_changed = true;
        }
        for &(id, until) in &edit.drain {
            lb.set_drain(id, Some(until)).expect("member");
        }
        for &id in &edit.undrain {
            lb.set_drain(id, None).expect("member");
        }
        for &(id, w) in &edit.weight {
            lb.set_weight(id, w).expect("member");
        }
        for &(idx, address, weight) in &edit.add {
            match lb.add_backend(idx as u32, address, weight) {
                Ok(_) => {
                    effects.targets_changed = true;
                    effects.resolve = true;
                }
                Err(e) => tracing::warn!("reload: adding {address}: {e}"),
            }
        }
        // Last: removing a service shifts the index of the services after it.
        let mut gone = edit.remove_services.clone();
        gone.sort_unstable();
        for &idx in gone.iter().rev() {
            for id in lb.remove_service(idx).expect("a service of lb") {
                self.trackers.remove(&id);
            }
            effects.targets_changed = true;
        }
    }

    /// The backends of `vs` (from the new file) with the runtime changes replayed over them,
    /// as at start: runtime removals dropped, runtime additions and weight overrides applied.
    fn desired(&self, vs: &config::VirtualServer) -> Vec<(IpAddr, u32)> {
        let mut desired: Vec<(IpAddr, u32)> =
            vs.backends.iter().map(|b| (b.address, b.weight)).collect();
        if let Some(r) = self.changes.virtual_servers.get(&vs.name) {
            desired.retain(|(a, _)| !r.removed.contains(a));
            for a in &r.added {
                if a.address.is_ipv4() != vs.vip.is_ipv4() {
                    continue;
                }
                match desired.iter_mut().find(|(d, _)| *d == a.address) {
                    Some(d) => d.1 = a.weight,
                    None => desired.push((a.address, a.weight)),
                }
            }
        }
        desired
    }

    /// The difference between what `lb` runs and `new` with the runtime changes replayed
    /// over it (module doc).
    fn reload_changes<D: Dataplane>(
        &self,
        lb: &Balancer<D>,
        new: &Config,
        now: Clock,
    ) -> Result<Changes, ApiError> {
        let mut c = Changes {
            health: format!("{:?}", new.health_check) != format!("{:?}", self.config.health_check),
            ..Changes::default()
        };
        if c.health {
            let h = &new.health_check;
            c.lines.push(format!(
                "health_check: interval {}, timeout {}, fall {}, rise {}, probes [{}]",
                humantime::format_duration(h.interval),
                humantime::format_duration(h.timeout),
                h.fall,
                h.rise,
                h.probes.labels().join(", ")
            ));
        }
        if new.persistence_timeout != self.config.persistence_timeout {
            c.timeout = true;
            c.lines.push(timeout_line(&self.config, new));
        }
        if new.reload_drain != self.config.reload_drain {
            c.lines.push(format!(
                "reload_drain: {}",
                humantime::format_duration(new.reload_drain)
            ));
        }
        let mut removed_now: HashSet<IpAddr> = HashSet::new();
        let mut adds: Vec<(usize, IpAddr, u32)> = Vec::new();
        for (idx, s) in lb.services().iter().enumerate() {
            let vs = &self.config.virtual_servers[idx];
            let Some(nvs) = new
                .virtual_servers
                .iter()
                .find(|n| n.name == vs.name && n.vip == vs.vip)
            else {
                // Gone from the file (a changed VIP is refused by `restart_only`).
                c.edit.remove_services.push(idx);
                c.lines.push(format!(
                    "{}: virtual server {} removed with its {} backends",
                    vs.name,
                    vs.vip,
                    s.members.len()
                ));
                for b in s.members.iter().filter_map(|id| lb.backend(*id)) {
                    removed_now.insert(b.address);
                    c.labels.insert(b.address, "removed".into());
                }
                continue;
            };
            let runtime = self.changes.virtual_servers.get(&vs.name);
            let runtime_drain =
                |a: IpAddr| runtime.is_some_and(|r| r.draining.iter().any(|d| d.address == a));
            let desired = self.desired(nvs);
            for b in s.members.iter().filter_map(|id| lb.backend(*id)) {
                let name = &vs.name;
                match desired.iter().find(|(a, _)| *a == b.address) {
                    Some(&(_, w)) => {
                        if w != b.weight {
                            c.edit.weight.push((b.id, w));
                            c.lines
                                .push(format!("{name}: {} weight {} → {w}", b.address, b.weight));
                            c.labels
                                .insert(b.address, format!("weight {} → {w}", b.weight));
                        }
                        if b.draining() && !runtime_drain(b.address) {
                            c.edit.undrain.push(b.id);
                            c.lines
                                .push(format!("{name}: {} drain cancelled", b.address));
                            c.labels.insert(b.address, "drain cancelled".into());
                        }
                    }
                    // Draining already (a runtime drain, or an earlier reload's): it goes on.
                    None if b.draining() => {}
                    None if new.reload_drain.is_zero() => {
                        c.edit.remove.push(b.id);
                        removed_now.insert(b.address);
                        c.lines.push(format!("{name}: {} removed", b.address));
                        c.labels.insert(b.address, "removed".into());
                    }
                    None => {
                        let until = now.wall + new.reload_drain;
                        c.edit.drain.push((b.id, until));
                        c.lines.push(format!(
                            "{name}: {} draining until {}",
                            b.address,
                            humantime::format_rfc3339_seconds(until)
                        ));
                        c.labels.insert(b.address, "draining".into());
                    }
                }
            }
            for &(a, w) in &desired {
                if !s
                    .members
                    .iter()
                    .any(|id| lb.backend(*id).is_some_and(|b| b.address == a))
                {
                    adds.push((idx, a, w));
                }
            }
        }
        // Virtual servers new in the file: an id the maps hold, then their backends.
        let mut pending: Vec<(u32, bool)> = Vec::new();
        for nvs in &new.virtual_servers {
            let known = lb.services().iter().enumerate().any(|(i, _)| {
                let vs = &self.config.virtual_servers[i];
                vs.name == nvs.name && vs.vip == nvs.vip
            });
            if known {
                continue;
            }
            let id = lb.free_service_id(nvs, &pending).map_err(|why| {
                let i = new
                    .virtual_servers
                    .iter()
                    .map(|v| v.name.as_str())
                    .fold(Vec::<&str>::new(), |mut names, n| {
                        if !names.contains(&n) {
                            names.push(n);
                        }
                        names
                    })
                    .iter()
                    .position(|n| *n == nvs.name)
                    .unwrap_or(0);
                let p = new.problem(
                    format!("virtual_servers[{i}]"),
                    format!(
                        "virtual server {} ({}) is new and {why}: needs a restart",
                        nvs.name, nvs.vip
                    ),
                );
                ApiError::new(
                    ErrorCode::RestartRequired,
                    format!("{p}\nnothing was changed: restart the daemon to add it"),
                )
            })?;
            pending.push((id, nvs.vip.is_ipv6()));
            let desired = self.desired(nvs);
            for &(a, _) in &desired {
                if let Some(b) = lb
                    .backend_by_address(a)
                    .filter(|_| !removed_now.contains(&a))
                {
                    return Err(still_a_backend(a, lb.service(b.service), b.id, &nvs.name));
                }
                c.labels.insert(a, "added".into());
            }
            c.lines.push(format!(
                "{}: virtual server {} added with {} backends (they take clients after their first successful health check)",
                nvs.name,
                nvs.vip,
                desired.len()
            ));
            c.services.push((nvs.clone(), id, desired));
        }
        for (idx, a, w) in adds {
            // An address serves one virtual server: one still draining elsewhere moves in a
            // later reload, once it is gone.
            if let Some(b) = lb.backend_by_address(a) {
                if !removed_now.contains(&a) {
                    let joining = &lb.services()[idx].name;
                    return Err(still_a_backend(a, lb.service(b.service), b.id, joining));
                }
            }
            c.edit.add.push((idx, a, w));
            c.added.push((idx, a));
            c.lines.push(format!(
                "{}: {a} added (weight {w}; takes clients after its first successful health check)",
                lb.services()[idx].name
            ));
            c.labels.insert(a, "added".into());
        }
        Ok(c)
    }
}

/// The line of a `persistence_timeout` change: what it does to clients (none moves).
fn timeout_line(old: &Config, new: &Config) -> String {
    let f = |d| humantime::format_duration(d).to_string();
    let (o, n) = (f(old.persistence_timeout), f(new.persistence_timeout));
    let what = if new.persistence_timeout > old.persistence_timeout {
        format!(
            "entries idle between {o} and {n} at the change are live again, as after a restart \
             with {n}; every ring slot is flagged until the next sweep"
        )
    } else {
        format!(
            "entries idle longer than {n} at the change are no longer live: such a client is \
             re-balanced on its next packet"
        )
    };
    format!(
        "persistence_timeout: {o} → {n} (the XDP program swapped on every interface, \
         BPF_LINK_UPDATE; moves no client: {what})"
    )
}

/// `new` with its virtual servers in the order of `lb`'s services (the controller pairs them
/// by position; a file may list them in another order: the services keep their ids by name).
/// Every one of them has its service (`restart_only` refuses others).
fn in_service_order<D: Dataplane>(mut new: Config, lb: &Balancer<D>) -> Config {
    let pos = |vs: &config::VirtualServer| {
        lb.services()
            .iter()
            .position(|s| {
                s.name == vs.name
                    && crate::dataplane::words_addr(s.value.family, &s.value.vip) == vs.vip
            })
            .unwrap_or(usize::MAX)
    };
    new.virtual_servers.sort_by_key(pos);
    new
}

/// An address that is still a backend of another virtual server (draining, or not removed by
/// this file) cannot join `joining` in the same reload.
fn still_a_backend(a: IpAddr, of: &ServiceState, id: u32, joining: &str) -> ApiError {
    ApiError::new(
        ErrorCode::DuplicateBackend,
        format!(
            "{a} is still a backend of {} (id {id}): it can join {joining} once it has left; nothing was changed",
            of.name
        ),
    )
}
