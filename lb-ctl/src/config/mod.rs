//! Configuration schema v1 (DESIGN.md, "Config schema v1") and its validation.
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
//! * `persistence_entries` — capacity of each persistence map (default 1048576).
//! * `slot_fast_path` — bulk packets (ESP) of clients whose Maglev slot never changed skip
//!   the persistence lookup (load-time global `SLOT_FAST_PATH`; default true).
//! * `tcp_ports` per virtual server — TCP ports in the same persistency group (SSTP
//!   fallback, issue 6), at most [`MAX_PORTS`].
//! * `vip` may be a list of one IPv4 and one IPv6 address: a dual-stack virtual server
//!   (issue 6). Each VIP becomes a service of its own (one [`VirtualServer`] per VIP, same
//!   name) with the backends of its family; a single address stays valid as before.
//! * `interfaces` items may be `{name, role}` mappings ([`interfaces`]): where clients may
//!   reach the VIPs; a plain list keeps its meaning.
//! * `probation_entries` — capacity of the probation maps, where new clients wait until
//!   they prove return routability (default `persistence_entries / 4`, at least 1024).
//! * `new_client_rate` — probation inserts per second for the whole gateway (default 20000,
//!   0 = unlimited; load-time global `NEW_CLIENT_QUOTA`, [`Config::new_client_quota`]).
//!
//! Defaults for keys the schema leaves optional: `mode: nat`, `xdp_mode: auto`,
//! `persistence_timeout: 30m`, `hash_seed: 0`, `ports: [500, 4500]`, `esp: true`,
//! `weight: 1`, `health_check: {interval: 5s, timeout: 2s, fall: 3, rise: 2}`, and the paths
//! of [`crate::paths`].

mod interfaces;
mod locate;

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{MAX_IFACES, MAX_PORTS, QUOTA_WINDOW_SHIFT, TICK_SHIFT};
use serde::Deserialize;

use crate::paths;

pub use interfaces::{InterfaceSpec, Role};
pub use locate::line_of;

/// Largest accepted backend weight. Weights are relative: with the default table of 65537
/// slots a 1000:1 ratio still leaves the light backend ~65 slots; beyond that the ratio is
/// noise and a typo (an extra zero) is more likely than intent.
pub const MAX_WEIGHT: u32 = 1000;
/// Smallest accepted Maglev table size: below this the balance between backends is coarse
/// (the Maglev paper uses M ≫ 100 × backends).
pub const MIN_TABLE_SIZE: u32 = 251;
/// Largest accepted Maglev table size: ring indices must fit the 24-bit slot value space
/// and `RINGS` stays addressable by a `u32` index.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;
/// Largest accepted persistence map capacity (2^28 entries ≈ 10 GiB of LRU hash).
pub const MAX_PERSISTENCE_ENTRIES: u32 = 1 << 28;
/// Smallest default probation capacity: a small gateway still absorbs a burst of new
/// clients (a reconnect storm after an outage) without evicting ones mid-handshake.
pub const MIN_DEFAULT_PROBATION_ENTRIES: u32 = 1024;
/// Default `new_client_rate`: well above any legitimate reconnect storm of a gateway this
/// size (20,000 handshakes a second), far below what a spoofed flood sends.
pub const DEFAULT_NEW_CLIENT_RATE: u32 = 20_000;
/// Linux `IFNAMSIZ` − 1.
const MAX_IFNAME_LEN: usize = 15;

/// Address family handling mode (`mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Gateway mode: destination NAT to the backend, reverse path rewrites the source back.
    #[default]
    Nat,
    /// Direct server return: MAC rewrite only, backends hold the VIP on loopback.
    Dsr,
}

/// How the XDP program is attached (`xdp_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) mode where the driver supports it, generic (skb) mode otherwise.
    #[default]
    Auto,
    /// Native mode or fail.
    Native,
    /// Generic mode (works on every interface, slower).
    Generic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Vec<interfaces::RawInterface>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    xdp_mode: XdpAttachMode,
    #[serde(default = "default_persistence_timeout", with = "humantime_serde")]
    persistence_timeout: Duration,
    #[serde(default)]
    hash_seed: u32,
    #[serde(default = "default_table_size")]
    maglev_table_size: u32,
    #[serde(default = "default_persistence_entries")]
    persistence_entries: u32,
    /// `None`: derived from `persistence_entries`.
    #[serde(default)]
    probation_entries: Option<u32>,
    #[serde(default = "default_new_client_rate")]
    new_client_rate: u32,
    virtual_servers: Vec<RawVirtualServer>,
    #[serde(default)]
    health_check: RawHealthCheck,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_bpffs")]
    bpffs: PathBuf,
    #[serde(default = "default_instance")]
    instance: String,
    #[serde(default)]
    detach_on_exit: bool,
    #[serde(default = "default_slot_fast_path")]
    slot_fast_path: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVirtualServer {
    name: String,
    vip: RawVips,
    #[serde(default = "default_ports")]
    ports: Vec<u16>,
    #[serde(default)]
    tcp_ports: Vec<u16>,
    #[serde(default = "default_true")]
    esp: bool,
    #[serde(default)]
    backends: Vec<RawBackend>,
}

/// `vip`: one address (schema v1), or a list of them — at most one per family.
#[derive(Debug)]
struct RawVips(Vec<String>);

impl<'de> Deserialize<'de> for RawVips {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawVips;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address, or a list of one IPv4 and one IPv6 address")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawVips, E> {
                Ok(RawVips(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawVips, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(v);
                }
                Ok(RawVips(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_fall")]
    fall: u32,
    #[serde(default = "default_rise")]
    rise: u32,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            timeout: default_timeout(),
            fall: default_fall(),
            rise: default_rise(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    #[serde(default = "default_socket")]
    socket: PathBuf,
}

impl Default for RawControl {
    fn default() -> Self {
        Self {
            socket: default_socket(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_listen")]
    listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_persistence_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_slot_fast_path() -> bool {
    true
}
fn default_table_size() -> u32 {
    lb_common::DEFAULT_RING_SIZE
}
fn default_persistence_entries() -> u32 {
    1 << 20
}
fn default_new_client_rate() -> u32 {
    DEFAULT_NEW_CLIENT_RATE
}
fn default_ports() -> Vec<u16> {
    vec![500, 4500]
}
fn default_true() -> bool {
    true
}
fn default_weight() -> u32 {
    1
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    2
}
fn default_socket() -> PathBuf {
    PathBuf::from(paths::CONTROL_SOCKET)
}
fn default_listen() -> String {
    "127.0.0.1:9435".to_owned()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(paths::STATE_DIR)
}
fn default_bpffs() -> PathBuf {
    PathBuf::from(paths::BPFFS)
}
fn default_instance() -> String {
    paths::INSTANCE.to_owned()
}

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
    pub persistence_entries: u32,
    /// Capacity of `PROBATION_V4` (and `PROBATION_V6` with an IPv6 service): new clients
    /// that have not proven return routability yet.
    pub probation_entries: u32,
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
    /// Where it came from, for reporting problems found after validation.
    origin: Origin,
}

/// Why an address cannot be a VIP or a backend, if it cannot: not unicast, or an IPv6
/// address the data path could not tell from an IPv4 one or from "none" (config and
/// `lb-ctl backend add` share this rule).
pub fn address_problem(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => {
            (v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast())
                .then(|| format!("{ip} is not a unicast address"))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() {
                Some(format!("{ip} is not a unicast address"))
            } else if s[0] == 0 && s[1] == 0 {
                // IPv4-mapped (::ffff:0:0/96) and -compatible addresses live here; the maps
                // also take a zero first word for "no backend".
                Some(format!(
                    "{ip} is in ::/32 (IPv4-mapped or reserved): use the IPv4 address"
                ))
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some(format!(
                    "{ip} is link-local: it names no host beyond one link"
                ))
            } else if s[4..] == [0, 0, 0, 0] {
                Some(format!(
                    "{ip} has interface identifier 0: the subnet-router anycast address \
                     (RFC 4291 §2.6.1), not a host"
                ))
            } else {
                None
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Origin {
    file: String,
    source: String,
}

/// One VIP of a virtual server with its persistency group of ports and the backends of its
/// family — a *service*. A dual-stack virtual server (`vip: [v4, v6]`) is two of these with
/// the same name, in file order (IPv4 first when listed first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub name: String,
    pub vip: IpAddr,
    /// UDP ports, in configured order, no duplicates, none 0, at most [`MAX_PORTS`].
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
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

impl Origin {
    fn problem(&self, key: String, reason: String) -> Problem {
        Problem {
            file: self.file.clone(),
            line: line_of(&self.source, &key),
            key,
            reason,
        }
    }
}

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based; `None` when the key is absent (a required key missing).
    pub line: Option<usize>,
    /// Dotted key, e.g. `virtual_servers[0].backends[1].address`; empty for errors serde
    /// reports (their reason names the key).
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One or more problems, one per line.
    #[error("{}", display_lines(problems))]
    Invalid { problems: Vec<Problem> },
}

fn display_lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&path.display().to_string(), &source)
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

/// serde_yaml's message carries the key path and ends with " at line L column C"; the
/// location moves to the front (`file:line:`) so all problems read alike.
fn serde_problem(file: &str, e: &serde_yaml::Error) -> Problem {
    let mut reason = e.to_string();
    let line = e.location().map(|loc| {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = reason.strip_suffix(&suffix) {
            reason = stripped.to_owned();
        }
        loc.line()
    });
    Problem {
        file: file.to_owned(),
        line,
        key: String::new(),
        reason,
    }
}

/// Collects problems while walking the raw config.
struct Checker<'o> {
    origin: &'o Origin,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn refuse(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems
            .push(self.origin.problem(key.into(), reason.into()));
    }

    fn duration(&mut self, key: &str, d: Duration) {
        if d.is_zero() {
            self.refuse(key, "must be greater than 0");
        }
    }

    fn absolute(&mut self, key: &str, p: &Path) {
        if !p.is_absolute() {
            self.refuse(
                key,
                format!("{:?} is not an absolute path", p.display().to_string()),
            );
        }
    }

    fn address(&mut self, key: &str, text: &str) -> Option<IpAddr> {
        let Ok(ip) = text.parse::<IpAddr>() else {
            self.refuse(key, format!("{text:?} is not an IP address"));
            return None;
        };
        if let Some(why) = address_problem(ip) {
            self.refuse(key, why);
            return None;
        }
        Some(ip)
    }

    fn ports(&mut self, key: &str, ports: &[u16]) {
        if ports.len() > MAX_PORTS {
            self.refuse(
                key,
                format!(
                    "{} ports given, at most {MAX_PORTS} per protocol",
                    ports.len()
                ),
            );
        }
        for (i, &p) in ports.iter().enumerate() {
            if p == 0 {
                self.refuse(format!("{key}[{i}]"), "port 0 is not a valid port");
            } else if ports[..i].contains(&p) {
                self.refuse(format!("{key}[{i}]"), format!("port {p} is listed twice"));
            }
        }
    }
}

fn validate(raw: RawConfig, origin: Origin) -> Result<Config, ConfigError> {
    let mut c = Checker {
        origin: &origin,
        problems: Vec::new(),
    };

    if raw.interfaces.is_empty() {
        c.refuse("interfaces", "at least one interface is required");
    }
    if raw.interfaces.len() > MAX_IFACES as usize {
        c.refuse(
            "interfaces",
            format!(
                "{} interfaces given, at most {MAX_IFACES}",
                raw.interfaces.len()
            ),
        );
    }
    let if_names: Vec<&str> = raw.interfaces.iter().map(|i| i.name()).collect();
    for (i, &name) in if_names.iter().enumerate() {
        let key = format!("interfaces[{i}]");
        if name.is_empty()
            || name.len() > MAX_IFNAME_LEN
            || name.contains(['/', ':'])
            || name.contains(char::is_whitespace)
        {
            c.refuse(key, format!("{name:?} is not a valid interface name"));
        } else if if_names[..i].contains(&name) {
            c.refuse(key, format!("interface {name:?} is listed twice"));
        }
    }

    let roles = interfaces::roles(&raw.interfaces);
    if !roles.is_empty() {
        if let Some(why) = interfaces::role_problem(&roles) {
            c.refuse("interfaces", why);
        }
    }

    c.duration("persistence_timeout", raw.persistence_timeout);
    let raw_vips: usize = raw.virtual_servers.iter().map(|vs| vs.vip.0.len()).sum();
    if !lb_common::maglev::is_prime(raw.maglev_table_size) {
        c.refuse(
            "maglev_table_size",
            format!("{} is not a prime", raw.maglev_table_size),
        );
    } else if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&raw.maglev_table_size) {
        c.refuse(
            "maglev_table_size",
            format!(
                "{} is outside {MIN_TABLE_SIZE}..={MAX_TABLE_SIZE}",
                raw.maglev_table_size
            ),
        );
    } else if u64::from(raw.maglev_table_size) * 2 * raw_vips as u64 > u64::from(u32::MAX) {
        c.refuse(
            "maglev_table_size",
            format!(
                "{} × 2 tables × {raw_vips} VIPs exceeds the ring array",
                raw.maglev_table_size,
            ),
        );
    }
    if raw.persistence_entries == 0 || raw.persistence_entries > MAX_PERSISTENCE_ENTRIES {
        c.refuse(
            "persistence_entries",
            format!(
                "{} is outside 1..={MAX_PERSISTENCE_ENTRIES}",
                raw.persistence_entries
            ),
        );
    }

    // Probation holds clients for the seconds of a handshake; by default a quarter of the
    // established capacity, which is sized for the clients expected.
    let probation_entries = raw
        .probation_entries
        .unwrap_or_else(|| (raw.persistence_entries / 4).max(MIN_DEFAULT_PROBATION_ENTRIES));
    if probation_entries == 0 || probation_entries > MAX_PERSISTENCE_ENTRIES {
        c.refuse(
            "probation_entries",
            format!("{probation_entries} is outside 1..={MAX_PERSISTENCE_ENTRIES}"),
        );
    }

    let hc = &raw.health_check;
    c.duration("health_check.interval", hc.interval);
    c.duration("health_check.timeout", hc.timeout);
    if !hc.interval.is_zero() && !hc.timeout.is_zero() && hc.timeout >= hc.interval {
        c.refuse(
            "health_check.timeout",
            format!(
                "{} must be shorter than health_check.interval ({})",
                humantime::format_duration(hc.timeout),
                humantime::format_duration(hc.interval)
            ),
        );
    }
    if hc.fall == 0 {
        c.refuse("health_check.fall", "must be at least 1");
    }
    if hc.rise == 0 {
        c.refuse("health_check.rise", "must be at least 1");
    }

    c.absolute("control.socket", &raw.control.socket);
    c.absolute("state_dir", &raw.state_dir);
    c.absolute("bpffs", &raw.bpffs);
    // A bpffs directory name: bpffs refuses dots ("reserved for future use").
    if raw.instance.is_empty()
        || raw.instance.len() > 64
        || !raw
            .instance
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
    {
        c.refuse(
            "instance",
            format!(
                "{:?} is not a valid instance name (1–64 letters, digits, - _)",
                raw.instance
            ),
        );
    }
    let metrics_listen = match raw.metrics.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.refuse(
                "metrics.listen",
                format!("{:?} is not an address:port", raw.metrics.listen),
            );
            None
        }
    };

    if raw.virtual_servers.is_empty() {
        c.refuse("virtual_servers", "at least one virtual server is required");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut vips: HashMap<IpAddr, usize> = HashMap::new();
    // Backend address → (virtual server, backend index): the reverse path maps a backend
    // address to one backend id, so an address may serve one virtual server per family.
    let mut backend_owner: HashMap<IpAddr, (usize, usize)> = HashMap::new();
    let mut servers = Vec::new();
    for (v, vs) in raw.virtual_servers.iter().enumerate() {
        let key = format!("virtual_servers[{v}]");
        if vs.name.is_empty()
            || !vs
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            c.refuse(
                format!("{key}.name"),
                format!("{:?} is not a valid name (letters, digits, - _ .)", vs.name),
            );
        } else if let Some(first) = names.insert(&vs.name, v) {
            c.refuse(
                format!("{key}.name"),
                format!(
                    "{:?} is already the name of virtual_servers[{first}]",
                    vs.name
                ),
            );
        }
        // One VIP per family; `None` where the address itself was refused.
        let mut vs_vips: Vec<Option<IpAddr>> = Vec::new();
        let texts = &vs.vip.0;
        if texts.is_empty() || texts.len() > 2 {
            c.refuse(
                format!("{key}.vip"),
                format!(
                    "{} addresses given: one VIP, or one IPv4 and one IPv6 VIP",
                    texts.len()
                ),
            );
        }
        for (i, text) in texts.iter().enumerate() {
            let vkey = if texts.len() == 1 {
                format!("{key}.vip")
            } else {
                format!("{key}.vip[{i}]")
            };
            let vip = c.address(&vkey, text);
            if let Some(vip) = vip {
                if vs_vips
                    .iter()
                    .flatten()
                    .any(|o| o.is_ipv4() == vip.is_ipv4())
                {
                    c.refuse(
                        vkey,
                        format!("{vip}: a virtual server has one VIP per address family"),
                    );
                    continue;
                }
                if let Some(first) = vips.insert(vip, v) {
                    c.refuse(
                        vkey,
                        format!("{vip} is already the VIP of virtual_servers[{first}]"),
                    );
                }
            }
            vs_vips.push(vip);
        }
        c.ports(&format!("{key}.ports"), &vs.ports);
        c.ports(&format!("{key}.tcp_ports"), &vs.tcp_ports);
        if vs.ports.is_empty() && vs.tcp_ports.is_empty() && !vs.esp {
            c.refuse(
                format!("{key}.ports"),
                "no ports and esp: false — the virtual server would forward nothing",
            );
        }
        let mut backends = Vec::new();
        for (b, be) in vs.backends.iter().enumerate() {
            let bkey = format!("{key}.backends[{b}]");
            if be.weight == 0 || be.weight > MAX_WEIGHT {
                c.refuse(
                    format!("{bkey}.weight"),
                    format!("{} is outside 1..={MAX_WEIGHT}", be.weight),
                );
            }
            let Some(addr) = c.address(&format!("{bkey}.address"), &be.address) else {
                continue;
            };
            if vs_vips.iter().all(Option::is_some)
                && !vs_vips
                    .iter()
                    .flatten()
                    .any(|v| v.is_ipv4() == addr.is_ipv4())
            {
                let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                c.refuse(
                    format!("{bkey}.address"),
                    format!("{addr}: the virtual server has no {family} VIP"),
                );
                continue;
            }
            match backend_owner.get(&addr) {
                Some(&(ov, ob)) if ov == v => {
                    c.refuse(
                        format!("{bkey}.address"),
                        format!("{addr} is already {key}.backends[{ob}]"),
                    );
                    continue;
                }
                Some(&(ov, ob)) => {
                    c.refuse(
                        format!("{bkey}.address"),
                        format!("{addr} is already a backend of virtual_servers[{ov}] (backends[{ob}]); a backend address may serve one virtual server"),
                    );
                    continue;
                }
                None => {
                    backend_owner.insert(addr, (v, b));
                }
            }
            backends.push(BackendConfig {
                address: addr,
                weight: be.weight,
            });
        }
        for vip in vs_vips.into_iter().flatten() {
            servers.push(VirtualServer {
                name: vs.name.clone(),
                vip,
                ports: vs.ports.clone(),
                tcp_ports: vs.tcp_ports.clone(),
                esp: vs.esp,
                backends: backends
                    .iter()
                    .filter(|b| b.address.is_ipv4() == vip.is_ipv4())
                    .copied()
                    .collect(),
            });
        }
    }
    // A VIP that is also a backend would loop packets back into the load balancer.
    for (v, vs) in raw.virtual_servers.iter().enumerate() {
        for (b, be) in vs.backends.iter().enumerate() {
            let Ok(addr) = be.address.parse::<IpAddr>() else {
                continue;
            };
            if let Some(&owner) = vips.get(&addr) {
                c.refuse(
                    format!("virtual_servers[{v}].backends[{b}].address"),
                    format!("{addr} is the VIP of virtual_servers[{owner}]"),
                );
            }
        }
    }

    if !c.problems.is_empty() {
        return Err(ConfigError::Invalid {
            problems: c.problems,
        });
    }
    let interfaces = if_names
        .iter()
        .zip(roles)
        .map(|(name, role)| InterfaceSpec {
            name: (*name).to_owned(),
            role,
        })
        .collect();
    Ok(Config {
        interfaces,
        mode: raw.mode,
        xdp_mode: raw.xdp_mode,
        persistence_timeout: raw.persistence_timeout,
        hash_seed: raw.hash_seed,
        maglev_table_size: raw.maglev_table_size,
        persistence_entries: raw.persistence_entries,
        probation_entries,
        new_client_rate: raw.new_client_rate,
        virtual_servers: servers,
        health_check: HealthCheck {
            interval: hc.interval,
            timeout: hc.timeout,
            fall: hc.fall,
            rise: hc.rise,
        },
        control_socket: raw.control.socket,
        metrics_listen: metrics_listen.expect("checked above"),
        state_dir: raw.state_dir,
        bpffs: raw.bpffs,
        instance: raw.instance,
        detach_on_exit: raw.detach_on_exit,
        slot_fast_path: raw.slot_fast_path,
        origin,
    })
}

#[cfg(test)]
mod tests;
