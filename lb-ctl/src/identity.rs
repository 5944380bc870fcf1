//! Identity by name: the service id of every VIP and the port of every interface, stable
//! across restarts and config edits (docs/restart-and-upgrade.md, "Identity: services and
//! ports by name").
//!
//! The data path knows services and interfaces by number: persistence keys carry the service
//! id, `RINGS` holds service `id`'s tables at `id * 2 * M`, persistence entries record the
//! client's ingress port, `TX_PORTS`/`IFACES`/`INGRESS` map ports. Positions in the config
//! would re-key every later service's clients when a virtual server is inserted or the list
//! reordered, and misroute replies when `interfaces` is reordered. So the numbers follow
//! names instead:
//!
//! * **Keys**: a service is `NAME/ipv4` or `NAME/ipv6` (a dual-stack virtual server is two
//!   services); an interface is its name.
//! * **Assignment** ([`assign`]): a configured service or interface keeps the number the
//!   pinned maps give it (the running truth: its VIP in `SERVICES`, its ifindex in
//!   `IFINDEX_PORTS`), else the one `state_dir/identity.json` records, else it takes the
//!   lowest free number. Numbers of services and interfaces no longer configured are
//!   released. Where pins and file disagree the pins win, and it is logged. A lost
//!   `state_dir` therefore keeps every identity the pins know.
//! * **File**: `{"version": 1, "services": {KEY: ID}, "ports": {NAME: PORT}}`, written
//!   atomically (temporary file, fsync, rename, directory fsync: `runtime::write_atomic`).
//!   A corrupt file stops the daemon with a one-line error naming the file and the recovery
//!   (`mv FILE FILE.bad`: the pins then give the identities back).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_common::MAX_IFACES;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, VirtualServer},
    dataplane::addr_words,
    runtime::{write_atomic, AtomicWriteError},
};

/// File under `state_dir` holding the identities.
pub const IDENTITY_FILE: &str = "identity.json";

/// Service ids by service key and interface ports by interface name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default = "Identity::current")]
    pub version: u32,
    #[serde(default)]
    pub services: BTreeMap<String, u32>,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            version: Self::VERSION,
            services: BTreeMap::new(),
            ports: BTreeMap::new(),
        }
    }
}

impl Identity {
    /// The format this lb-ctl reads and writes.
    pub const VERSION: u32 = 1;

    fn current() -> u32 {
        Self::VERSION
    }

    /// Numbers by position, as a first start with no file and no pins assigns them: service
    /// `i` of `config.virtual_servers` gets id `i`, interface `i` of `interfaces` port `i`.
    pub fn positional<'a>(config: &Config, interfaces: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            version: Self::VERSION,
            services: config
                .virtual_servers
                .iter()
                .enumerate()
                .map(|(i, vs)| (service_key(vs), i as u32))
                .collect(),
            ports: interfaces
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.to_owned(), i as u32))
                .collect(),
        }
    }

    /// Id of a configured service.
    pub fn service(&self, vs: &VirtualServer) -> Option<u32> {
        self.services.get(&service_key(vs)).copied()
    }

    /// Highest service id + 1: what the maps indexed by service id are sized for (0 with no
    /// service).
    pub fn service_slots(&self) -> u32 {
        self.services.values().max().map_or(0, |&m| m + 1)
    }
}

/// The key of a service: its virtual server's name and the family of its VIP.
pub fn service_key(vs: &VirtualServer) -> String {
    let family = if vs.vip.is_ipv4() { "ipv4" } else { "ipv6" };
    format!("{}/{family}", vs.name)
}

/// What the pinned maps say about identities (`crate::pin::read_identity`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedIds {
    /// Written `SERVICES` entries: (service id, VIP). A VIP is one service.
    pub services: Vec<(u32, IpAddr)>,
    /// `IFINDEX_PORTS`: ifindex → port.
    pub ports: BTreeMap<u32, u32>,
}

impl PinnedIds {
    /// From `SERVICES` values (index = id; entries never written, family 0, are skipped).
    pub fn from_services(values: &[lb_common::Service]) -> Vec<(u32, IpAddr)> {
        values
            .iter()
            .enumerate()
            .filter(|(_, s)| s.family != 0)
            .map(|(id, s)| (id as u32, crate::dataplane::words_addr(s.family, &s.vip)))
            .collect()
    }
}

/// The outcome of [`assign`]: the identities, and what to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub identity: Identity,
    /// One line per decision worth telling: newcomers, releases, pins overriding the file.
    pub notes: Vec<String>,
}

/// Why the identities could not be read, assigned or saved. One line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is corrupt ({reason}): fix it, or move it aside (the pinned maps give the identities back): mv {} {}.bad",
        path.display(), path.display(), path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{} has version {found}, and this lb-ctl reads version {}: run the lb-ctl that wrote it, or move it aside: mv {} {}.bad",
        path.display(), Identity::VERSION, path.display(), path.display()
    )]
    Version { path: PathBuf, found: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} was replaced, but syncing its directory failed: {source}")]
    NotDurable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("service ids reach {max}: the ring array would need ({max} + 1) × 2 × {ring_size} slots, more than 2^32; move {path} aside and restart with fresh maps (lb-ctl daemon --unload) to renumber")]
    TooManyIds {
        max: u32,
        ring_size: u32,
        path: PathBuf,
    },
}

/// `state_dir/identity.json`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(IDENTITY_FILE)
}

/// The saved identities; empty when the file does not exist.
pub fn load(path: &Path) -> Result<Identity, IdentityError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Identity::default()),
        Err(source) => {
            return Err(IdentityError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let corrupt = |reason: String| IdentityError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let Some(object) = value.as_object() else {
        return Err(corrupt("not a JSON object".to_owned()));
    };
    match object.get("version") {
        Some(v) if v.as_u64() == Some(u64::from(Identity::VERSION)) => {}
        Some(v) => {
            return Err(IdentityError::Version {
                path: path.to_owned(),
                found: v.to_string(),
            })
        }
        None => return Err(corrupt("no \"version\"".to_owned())),
    }
    let identity: Identity = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let mut seen = BTreeSet::new();
    for (k, &id) in &identity.services {
        if !seen.insert(id) {
            return Err(corrupt(format!(
                "service id {id} given twice (again to {k:?})"
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for (k, &port) in &identity.ports {
        if port >= MAX_IFACES || !seen.insert(port) {
            return Err(corrupt(format!(
                "port {port} of {k:?} is given twice or is not below {MAX_IFACES}"
            )));
        }
    }
    Ok(identity)
}

/// Saves `identity` atomically (see the module doc).
pub fn save(path: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let mut text = serde_json::to_vec_pretty(identity).expect("identity always serializes");
    text.push(b'\n');
    write_atomic(path, &text, crate::runtime::sync_dir_default).map_err(|e| match e {
        AtomicWriteError::Write(source) => IdentityError::Write {
            path: path.to_owned(),
            source,
        },
        AtomicWriteError::NotDurable(source) => IdentityError::NotDurable {
            path: path.to_owned(),
            source,
        },
    })
}

/// One kind of number (service ids or ports): `items` are (key, pinned number) in config
/// order; `saved` what the file says; numbers must be below `limit`.
fn assign_kind(
    what: &str,
    items: &[(String, Option<u32>)],
    saved: &BTreeMap<String, u32>,
    limit: u32,
    notes: &mut Vec<String>,
) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut taken = BTreeSet::new();
    // 1. The pins: the running truth.
    for (key, pinned) in items {
        let Some(p) = *pinned else { continue };
        if p >= limit || !taken.insert(p) {
            continue;
        }
        match saved.get(key) {
            Some(&f) if f != p => notes.push(format!(
                "{what} {key}: the pinned maps give {p}, {IDENTITY_FILE} said {f}: keeping {p}"
            )),
            Some(_) => {}
            None => notes.push(format!(
                "{what} {key}: {p} from the pinned maps ({IDENTITY_FILE} has none)"
            )),
        }
        out.insert(key.clone(), p);
    }
    // 2. The file.
    for (key, _) in items {
        if out.contains_key(key) {
            continue;
        }
        if let Some(&f) = saved.get(key) {
            if f < limit && taken.insert(f) {
                out.insert(key.clone(), f);
            } else {
                notes.push(format!(
                    "{what} {key}: {f} of {IDENTITY_FILE} is taken in the pinned maps: a new one"
                ));
            }
        }
    }
    // 3. Newcomers: the lowest free number.
    let mut next = 0;
    for (key, _) in items {
        if out.contains_key(key) {
            continue;
        }
        while taken.contains(&next) {
            next += 1;
        }
        taken.insert(next);
        notes.push(format!("{what} {key}: new, takes {next}"));
        out.insert(key.clone(), next);
    }
    for (key, n) in saved {
        if !out.contains_key(key) {
            notes.push(format!("{what} {key}: no longer configured, {n} released"));
        }
    }
    out
}

/// Assigns every configured service its id and every interface its port (module doc).
/// `ifindexes` are the config's interfaces' (same order).
pub fn assign(
    config: &Config,
    ifindexes: &[u32],
    saved: &Identity,
    pinned: &PinnedIds,
) -> Assigned {
    let mut notes = Vec::new();
    let services: Vec<(String, Option<u32>)> = config
        .virtual_servers
        .iter()
        .map(|vs| {
            let words = addr_words(vs.vip);
            let pinned = pinned
                .services
                .iter()
                .find(|(_, vip)| addr_words(*vip) == words && vip.is_ipv4() == vs.vip.is_ipv4())
                .map(|&(id, _)| id);
            (service_key(vs), pinned)
        })
        .collect();
    let ports: Vec<(String, Option<u32>)> = config
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            let pinned = ifindexes.get(i).and_then(|x| pinned.ports.get(x)).copied();
            (iface.name.clone(), pinned)
        })
        .collect();
    let services = assign_kind("service", &services, &saved.services, u32::MAX, &mut notes);
    let ports = assign_kind("interface", &ports, &saved.ports, MAX_IFACES, &mut notes);
    Assigned {
        identity: Identity {
            version: Identity::VERSION,
            services,
            ports,
        },
        notes,
    }
}

/// Checks that the ring array of `identity`'s highest service id fits (config validation
/// bounds the count; gaps left by released ids could push the highest id beyond it).
pub fn check_bounds(identity: &Identity, ring_size: u32, path: &Path) -> Result<(), IdentityError> {
    let slots = u64::from(identity.service_slots());
    if slots * 2 * u64::from(ring_size) > u64::from(u32::MAX) {
        return Err(IdentityError::TooManyIds {
            max: identity.service_slots() - 1,
            ring_size,
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
