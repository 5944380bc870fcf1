//! The checks that turn a parsed file into a valid [`Config`]: the limits of every value,
//! and the problems found, each one line naming `file:line`, the key and the reason.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{MAX_IFACES, MAX_PORTS};

use crate::health::{ProbeKind, ProbeKinds};

use super::{
    interfaces, line_of, schema::RawConfig, tables, Announce, BackendConfig, Config, HealthCheck,
    InterfaceSpec, Share, VirtualServer,
};

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
/// Linux `IFNAMSIZ` − 1.
const MAX_IFNAME_LEN: usize = 15;

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

/// Where a configuration came from: the file name and its text, to locate problems.
#[derive(Clone, Debug)]
pub(super) struct Origin {
    pub(super) file: String,
    pub(super) source: String,
}

impl Origin {
    pub(super) fn problem(&self, key: String, reason: String) -> Problem {
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

/// location moves to the front (`file:line:`) so all problems read alike.
pub(super) fn serde_problem(file: &str, e: &serde_yaml::Error) -> Problem {
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

    /// A map capacity: 1..=[`MAX_PERSISTENCE_ENTRIES`].
    fn entries(&mut self, key: &str, n: u32) {
        if n == 0 || n > MAX_PERSISTENCE_ENTRIES {
            self.refuse(key, format!("{n} is outside 1..={MAX_PERSISTENCE_ENTRIES}"));
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

    /// `health_check.probes`: at least one, each a known type, none twice.
    fn probes(&mut self, key: &str, names: &[String]) -> ProbeKinds {
        let known = || {
            ProbeKind::ALL
                .iter()
                .map(|k| k.label())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if names.is_empty() {
            self.refuse(
                key,
                format!("at least one probe type is required ({})", known()),
            );
        }
        let mut kinds = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            match ProbeKind::from_label(name) {
                None => self.refuse(
                    format!("{key}[{i}]"),
                    format!("unknown probe type {name:?} (known: {})", known()),
                ),
                Some(k) if kinds.contains(&k) => {
                    self.refuse(format!("{key}[{i}]"), format!("{name:?} is listed twice"))
                }
                Some(k) => kinds.push(k),
            }
        }
        ProbeKinds::of(&kinds)
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

pub(super) fn validate(raw: RawConfig, origin: Origin) -> Result<Config, ConfigError> {
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
    let slot_move_delay = match raw.slot_move_delay {
        Some(d) if d > raw.persistence_timeout => {
            c.refuse(
                "slot_move_delay",
                format!(
                    "{} is longer than persistence_timeout ({}): entries idle out before the move",
                    humantime::format_duration(d),
                    humantime::format_duration(raw.persistence_timeout)
                ),
            );
            d
        }
        Some(d) => d,
        None => super::schema::default_slot_move_delay(raw.persistence_timeout),
    };
    if raw.reload_drain > crate::runtime::MAX_DRAIN {
        c.refuse(
            "reload_drain",
            format!(
                "{} is longer than the maximum drain {}",
                humantime::format_duration(raw.reload_drain),
                humantime::format_duration(crate::runtime::MAX_DRAIN)
            ),
        );
    }
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
    c.entries("persistence_entries", raw.persistence_entries);

    // Probation holds clients for the seconds of a handshake; by default a quarter of the
    // established capacity, which is sized for the clients expected.
    let probation_entries = raw
        .probation_entries
        .unwrap_or_else(|| (raw.persistence_entries / 4).max(MIN_DEFAULT_PROBATION_ENTRIES));
    c.entries("probation_entries", probation_entries);
    // The IPv6 maps by default as large as the IPv4 ones (what every build before these keys
    // did). Only a value given is checked: a derived one was checked as its source.
    let persistence_entries_v6 = raw
        .persistence_entries_v6
        .inspect(|&n| c.entries("persistence_entries_v6", n))
        .unwrap_or(raw.persistence_entries);
    let probation_entries_v6 = raw
        .probation_entries_v6
        .inspect(|&n| c.entries("probation_entries_v6", n))
        .unwrap_or(probation_entries);

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
    let probes = c.probes("health_check.probes", &hc.probes);

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

    let announce = raw.announce.as_ref().map(|a| Announce {
        table: a.table,
        withdraw_on_stop: a.withdraw_on_stop,
    });
    let share = raw.share.as_ref().map(|s| Share {
        export_table: s.export_table,
        import_table: s.import_table,
    });
    for (key, why) in tables::problems(
        announce.map(|a| a.table),
        share.map(|s| (s.export_table, s.import_table)),
    ) {
        c.refuse(key, why);
    }

    if !c.problems.is_empty() {
        return Err(ConfigError::Invalid {
            problems: c.problems,
        });
    }
    // Without an IPv6 service the IPv6 maps hold 1 entry whatever is set (nothing is ever
    // inserted there): a v6 key then has no effect, which the operator should hear of, but
    // it is no reason to refuse a file that runs as written (docs/configuration.md).
    let mut warnings = Vec::new();
    if !servers.iter().any(|vs| vs.vip.is_ipv6()) {
        for (key, set) in [
            (
                "persistence_entries_v6",
                raw.persistence_entries_v6.is_some(),
            ),
            ("probation_entries_v6", raw.probation_entries_v6.is_some()),
        ] {
            if set {
                warnings.push(
                    origin.problem(
                        key.to_owned(),
                        "has no effect: no virtual server has an IPv6 VIP, so the IPv6 maps \
                     keep 1 entry"
                            .to_owned(),
                    ),
                );
            }
        }
    }
    // A detached node cannot serve: its routes go with the data path on every clean stop.
    if raw.detach_on_exit && announce.is_some_and(|a| !a.withdraw_on_stop) {
        warnings.push(
            origin.problem(
                "announce.withdraw_on_stop".to_owned(),
                "has no effect with detach_on_exit: true: the routes are withdrawn with the data \
             path on every clean stop"
                    .to_owned(),
            ),
        );
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
        persistence_entries_v6,
        probation_entries_v6,
        new_client_rate: raw.new_client_rate,
        virtual_servers: servers,
        health_check: HealthCheck {
            interval: hc.interval,
            timeout: hc.timeout,
            fall: hc.fall,
            rise: hc.rise,
            probes,
        },
        control_socket: raw.control.socket,
        metrics_listen: metrics_listen.expect("checked above"),
        state_dir: raw.state_dir,
        bpffs: raw.bpffs,
        instance: raw.instance,
        detach_on_exit: raw.detach_on_exit,
        slot_fast_path: raw.slot_fast_path,
        sa_steering: raw.sa_steering,
        slot_move_delay,
        reload_drain: raw.reload_drain,
        announce,
        share,
        warnings,
        origin,
    })
}
