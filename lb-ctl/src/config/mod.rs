//! Configuration schema v1 (docs/configuration.md) and its validation.
//!
//! Two stages, as pingora's `-t`: serde reads the file into `Raw*` structs
//! (`deny_unknown_fields`, humantime durations; serde_yaml reports type errors and unknown
//! keys with their location), then [`validate`] checks the meaning of every value and turns
//! the raw structs into [`Config`]. Every refusal is one line naming the file, the line, the
//! key and the reason, e.g.
//!
//! ```text
//! ikelb.yaml:14: virtual_servers[0].backends[1].address: "10.0.0.300" is not an IP address
//! ```
//!
//! All problems of a file are reported at once. The only check that needs the running
//! system — that every interface exists — is [`Config::resolve_interfaces`], which the daemon
//! (and `--check`) call before anything is loaded or attached.
//!
//! ## Extensions to schema v1 (documented in README)
//!
//! * `maglev_table_size` — Maglev table size M per service, a prime (default 65537).
//! * `persistence_entries` — capacity of the IPv4 persistence map (default 1048576).
//! * `persistence_entries_v6`, `probation_entries_v6` — capacity of the IPv6 persistence and
//!   probation maps (default `persistence_entries`, `probation_entries`); with no IPv6 VIP
//!   those maps hold 1 entry whatever is set, and a set key is warned about
//!   ([`Config::warnings`]).
//! * `slot_fast_path` — bulk packets (ESP) of clients whose Maglev slot never changed skip
//!   the persistence lookup (load-time global `SLOT_FAST_PATH`; default true).
//! * `sa_steering` — a packet of an IKE or ESP SA established through ikelb, from an address
//!   without any entry (the client moved), goes to the SA's backend (load-time global
//!   `SA_STEERING`; default true; `docs/configuration.md`).
//! * `slot_move_delay` — with the fast path on, how long a slot whose backend changes keeps
//!   its old, still usable backend (flagged) before it moves (default 5s or
//!   `persistence_timeout` if shorter; 0 at once; at most
//!   `persistence_timeout`).
//! * `tcp_ports` per virtual server — TCP ports in the same persistency group (SSTP
//!   fallback), at most [`MAX_PORTS`](lb_common::MAX_PORTS).
//! * `vip` may be a list of one IPv4 and one IPv6 address: a dual-stack virtual server.
//!   Each VIP becomes a service of its own (one [`VirtualServer`] per VIP, same
//!   name) with the backends of its family; a single address stays valid as before.
//! * `interfaces` items may be `{name, role}` mappings ([`interfaces`]): where clients may
//!   reach the VIPs; a plain list keeps its meaning.
//! * `probation_entries` — capacity of the IPv4 probation maps, where new clients wait until
//!   they prove return routability (default `persistence_entries / 4`, at least 1024).
//! * `new_client_rate` — probation inserts per second for the whole gateway (default 20000,
//!   0 = unlimited; load-time global `NEW_CLIENT_QUOTA`, [`Config::new_client_quota`]).
//! * `announce: {table, withdraw_on_stop}` — a host route per VIP this node can serve in
//!   kernel routing table `table` (1..=2^32-1, not 253/254/255), for BIRD or FRR to export
//!   over BGP; withdrawn on a clean stop unless `withdraw_on_stop: false` ([`Announce`],
//!   `crate::announce`, docs/cluster.md).
//! * `share: {export_table, import_table}` — shared persistence between the nodes of a
//!   cluster: this node's divergent clients as routes `CLIENT via BACKEND proto 76` in
//!   `export_table`, the other nodes' read from `import_table` where BIRD writes them; both
//!   required, the same tables refused as for `announce.table`, all three different
//!   ([`Share`], `config/tables.rs`, docs/cluster.md).
//! * `health_check.probes` — the probe types, a non-empty list of distinct names out of
//!   `icmp` (echo) and `ike` (an IKE_SA_INIT request to UDP 500); a backend is up only while
//!   every listed type says up, each with its own `rise`/`fall` counts (default
//!   `[icmp, ike]`; `[icmp]` is the ping-only behaviour of earlier versions; `crate::health`).
//!
//! Defaults for keys the schema leaves optional: `mode: nat`, `xdp_mode: auto`,
//! `persistence_timeout: 30m`, `hash_seed: 0`, `ports: [500, 4500]`, `esp: true`,
//! `weight: 1`, `health_check: {interval: 5s, timeout: 2s, fall: 3, rise: 2, probes: [icmp, ike]}`,
//! and the paths
//! of [`crate::paths`].

//!
//! ## Modules
//!
//! * `config/schema.rs` — the serde structs and enums of the YAML schema, with their defaults;
//! * `config/validation.rs` — the checks that turn a parsed file into a [`Config`], and the
//!   problems (`file:line: key: reason`) they report;
//! * `config/interfaces.rs` — `interfaces` items and their roles;
//! * `config/tables.rs` — the routing tables of `announce` and `share`;
//! * `config/locate.rs` — the line of a key in the YAML source.

mod interfaces;
mod locate;
mod schema;
mod tables;
mod validation;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{QUOTA_WINDOW_SHIFT, TICK_SHIFT};

use crate::health::ProbeKinds;

use schema::RawConfig;
use validation::{serde_problem, validate, Origin};

pub use interfaces::{InterfaceSpec, Role};
pub use locate::line_of;
pub use schema::{Mode, XdpAttachMode, DEFAULT_NEW_CLIENT_RATE};
pub use tables::{table_problem, TABLE_PROBLEMS};
pub use validation::{
    address_problem, ConfigError, Problem, MAX_PERSISTENCE_ENTRIES, MAX_TABLE_SIZE, MAX_WEIGHT,
    MIN_DEFAULT_PROBATION_ENTRIES, MIN_TABLE_SIZE,
};

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Interfaces to attach to, with their roles; a backend's `tx_port` is its egress
    /// interface's index here.
    pub interfaces: Vec<InterfaceSpec>,
    pub mode: Mode,
    pub xdp_mode: XdpAttachMode,
    pub persistence_timeout: Duration,
    pub hash_seed: u32,
    pub maglev_table_size: u32,
    /// Capacity of `PERSIST_V4`: the established IPv4 clients.
    pub persistence_entries: u32,
    /// Capacity of `PROBATION_V4` and `PROOFS_V4`: new IPv4 clients that have not proven
    /// return routability yet.
    pub probation_entries: u32,
    /// Capacity of `PERSIST_V6` while an IPv6 service exists (1 without); default
    /// `persistence_entries`.
    pub persistence_entries_v6: u32,
    /// Capacity of `PROBATION_V6` and `PROOFS_V6` while an IPv6 service exists (1 without);
    /// default `probation_entries`.
    pub probation_entries_v6: u32,
    /// New clients (probation inserts) per second for the whole gateway; 0 = unlimited.
    pub new_client_rate: u32,
    /// One entry per VIP — the services, whose ids are positions here. A dual-stack virtual
    /// server appears twice under its name, once per family, in the order its VIPs are listed.
    pub virtual_servers: Vec<VirtualServer>,
    pub health_check: HealthCheck,
    pub control_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    /// Name of this daemon's pin directory under `bpffs` (extension, see `crate::pin`).
    pub instance: String,
    /// Detach the data path and remove the pins on SIGTERM/SIGINT (extension; default
    /// false: the data path keeps forwarding across a restart).
    pub detach_on_exit: bool,
    /// Skip the persistence lookup for bulk packets of clients in unchanged ring slots
    /// (extension; load-time global `SLOT_FAST_PATH`, see `state`, "Slot flags").
    pub slot_fast_path: bool,
    /// Send a packet of a known SA from an address without any entry to the SA's backend
    /// (extension; load-time global `SA_STEERING`, see `lb-ebpf/src/steer.rs`).
    pub sa_steering: bool,
    /// With `slot_fast_path` on: how long a ring slot whose backend changes while the old one
    /// is still usable keeps that backend, flagged, before it moves (extension; default 5 s,
    /// 0 moves at once; see `state`, "Slot moves").
    pub slot_move_delay: Duration,
    /// How long a backend that a reload removes from the file drains before it leaves
    /// (extension; default 1 h, 0 removes at once; docs/operations.md, "Reload").
    pub reload_drain: Duration,
    /// Route announcement of the VIPs this node can serve (extension; `None`: no routes are
    /// written).
    pub announce: Option<Announce>,
    /// Shared persistence between the nodes of a cluster: the kernel tables of its routes
    /// (extension; `None`: nothing is published or read).
    pub share: Option<Share>,
    /// What is valid but probably not meant (a v6 size without an IPv6 VIP), one line each
    /// like a problem; [`load`] logs them.
    warnings: Vec<Problem>,
    /// Where it came from, for reporting problems found after validation.
    origin: Origin,
}

/// One VIP of a virtual server with its persistency group of ports and the backends of its
/// family — a *service*. A dual-stack virtual server (`vip: [v4, v6]`) is two of these with
/// the same name, in file order (IPv4 first when listed first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub name: String,
    pub vip: IpAddr,
    /// UDP ports, in configured order, no duplicates, none 0, at most
    /// [`MAX_PORTS`](lb_common::MAX_PORTS).
    pub ports: Vec<u16>,
    /// TCP ports in the same persistency group (SSTP fallback), same rules as `ports`.
    pub tcp_ports: Vec<u16>,
    pub esp: bool,
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: IpAddr,
    pub weight: u32,
}

/// `announce`: where the daemon keeps the host routes of the VIPs it can serve
/// (`crate::announce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    /// Kernel routing table (`ip route … table N`): 1..=2^32-1 but not 253 (`default`),
    /// 254 (`main`) or 255 (`local`), see [`TABLE_PROBLEMS`].
    pub table: u32,
    /// Remove the routes on a clean stop (SIGTERM/SIGINT; default true). A daemon that is
    /// killed leaves them, with the data path, in place.
    pub withdraw_on_stop: bool,
}

/// `share`: where the daemon publishes its divergent clients and reads the other nodes'
/// (`crate::share`, docs/cluster.md). Each a table of ikelb's own (see [`TABLE_PROBLEMS`]),
/// different from each other and from `announce.table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// Where this node writes `CLIENT/32 via BACKEND proto 76` (`/128` for IPv6), one route
    /// per divergent client, for BIRD to export over iBGP.
    pub export_table: u32,
    /// Where BIRD writes the routes it learned from the other nodes; the daemon reads it.
    pub import_table: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    /// Per probe type: consecutive failures that take a backend down.
    pub fall: u32,
    /// Per probe type: consecutive successes that bring a down backend back.
    pub rise: u32,
    /// `probes` (extension): the probe types; a backend is up only while every one says up
    /// (`health::Trackers`). Default `[icmp, ike]`.
    pub probes: ProbeKinds,
}

impl Config {
    /// `persistence_timeout` in the XDP program's ticks (2^[`TICK_SHIFT`] ns), rounded up so
    /// a client is never re-balanced before the configured idle time.
    pub fn persist_timeout_ticks(&self) -> u32 {
        let ns = self.persistence_timeout.as_nanos();
        let ticks = ns.div_ceil(1u128 << TICK_SHIFT);
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// The interface names, in order (port = index).
    pub fn interface_names(&self) -> Vec<String> {
        self.interfaces.iter().map(|i| i.name.clone()).collect()
    }

    /// `NEW_CLIENT_QUOTA`: probation inserts each of `cpus` CPUs may make per window of
    /// 2^[`QUOTA_WINDOW_SHIFT`] ns so that the gateway as a whole makes `new_client_rate` a
    /// second, rounded up (at least 1 when the rate is not 0; 0 = unlimited). The data path
    /// counts per CPU to need no shared counter; a flood spread over every CPU is held to
    /// the rate, one that RSS steers onto fewer CPUs to less.
    pub fn new_client_quota(&self, cpus: u32) -> u32 {
        if self.new_client_rate == 0 {
            return 0;
        }
        let per_window =
            (u128::from(self.new_client_rate) << QUOTA_WINDOW_SHIFT).div_ceil(1_000_000_000);
        let per_cpu = per_window.div_ceil(u128::from(cpus.max(1)));
        u32::try_from(per_cpu).unwrap_or(u32::MAX).max(1)
    }

    /// Whether any service has an IPv6 VIP: the IPv6 persistence and probation maps are
    /// sized by `persistence_entries_v6` / `probation_entries_v6` only then, and hold one
    /// entry otherwise (an LRU hash preallocates every entry; nothing is ever inserted).
    pub fn has_ipv6(&self) -> bool {
        self.virtual_servers.iter().any(|vs| vs.vip.is_ipv6())
    }

    /// `max_entries` of (`PERSIST_V6`, `PROBATION_V6` and `PROOFS_V6`): the configured sizes
    /// with an IPv6 service, 1 without ([`Config::has_ipv6`]).
    pub fn v6_map_entries(&self) -> (u32, u32) {
        if self.has_ipv6() {
            (self.persistence_entries_v6, self.probation_entries_v6)
        } else {
            (1, 1)
        }
    }

    /// Keys that are valid but have no effect, one line each (`file:line: key: reason`).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// A problem with key `key` of this file, at the key's line (`file:line: key: reason`).
    pub fn problem(&self, key: impl Into<String>, reason: impl Into<String>) -> Problem {
        self.origin.problem(key.into(), reason.into())
    }

    /// The file this configuration was read from, as given.
    pub fn file(&self) -> &str {
        &self.origin.file
    }

    /// ifindex of every interface, in `interfaces` order, looked up with `lookup`
    /// (`if_nametoindex` in the daemon). Refuses, with the interface's line, any that does
    /// not exist.
    pub fn resolve_interfaces(
        &self,
        lookup: impl Fn(&str) -> Option<u32>,
    ) -> Result<Vec<u32>, ConfigError> {
        let mut problems = Vec::new();
        let mut out = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let name = &iface.name;
            match lookup(name) {
                Some(ifindex) => out.push(ifindex),
                None => problems.push(self.origin.problem(
                    format!("interfaces[{i}]"),
                    format!("interface {name:?} does not exist"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// Number of backends over all virtual servers.
    pub fn backend_count(&self) -> usize {
        self.virtual_servers
            .iter()
            .map(|vs| vs.backends.len())
            .sum()
    }
}

/// Reads and validates the config file at `path`, and logs its [`Config::warnings`] (once
/// per process: at daemon start and for `--check`).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse(&path.display().to_string(), &source)?;
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    Ok(config)
}

/// Validates `source`; `file` is the name used in problem reports.
pub fn parse(file: &str, source: &str) -> Result<Config, ConfigError> {
    let origin = Origin {
        file: file.to_owned(),
        source: source.to_owned(),
    };
    let raw: RawConfig = serde_yaml::from_str(source).map_err(|e| ConfigError::Invalid {
        problems: vec![serde_problem(file, &e)],
    })?;
    validate(raw, origin)
}

#[cfg(test)]
mod tests;
