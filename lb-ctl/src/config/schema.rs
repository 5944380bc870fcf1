//! The YAML schema v1 as serde reads it: the `Raw*` structs (`deny_unknown_fields`,
//! humantime durations), the enums of `mode` and `xdp_mode`, and the default of every
//! optional key. Nothing here judges a value; that is [`super::validation`].

use std::{fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::interfaces;
use crate::paths;

/// Default `new_client_rate`: well above any legitimate reconnect storm of a gateway this
/// size (20,000 handshakes a second), far below what a spoofed flood sends.
pub const DEFAULT_NEW_CLIENT_RATE: u32 = 20_000;

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
pub(super) struct RawConfig {
    pub(super) interfaces: Vec<interfaces::RawInterface>,
    #[serde(default)]
    pub(super) mode: Mode,
    #[serde(default)]
    pub(super) xdp_mode: XdpAttachMode,
    #[serde(default = "default_persistence_timeout", with = "humantime_serde")]
    pub(super) persistence_timeout: Duration,
    #[serde(default)]
    pub(super) hash_seed: u32,
    #[serde(default = "default_table_size")]
    pub(super) maglev_table_size: u32,
    #[serde(default = "default_persistence_entries")]
    pub(super) persistence_entries: u32,
    /// `None`: derived from `persistence_entries`.
    #[serde(default)]
    pub(super) probation_entries: Option<u32>,
    /// `None`: `persistence_entries`.
    #[serde(default)]
    pub(super) persistence_entries_v6: Option<u32>,
    /// `None`: the (derived) `probation_entries`.
    #[serde(default)]
    pub(super) probation_entries_v6: Option<u32>,
    #[serde(default = "default_new_client_rate")]
    pub(super) new_client_rate: u32,
    pub(super) virtual_servers: Vec<RawVirtualServer>,
    #[serde(default)]
    pub(super) health_check: RawHealthCheck,
    #[serde(default)]
    pub(super) control: RawControl,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default = "default_state_dir")]
    pub(super) state_dir: PathBuf,
    #[serde(default = "default_bpffs")]
    pub(super) bpffs: PathBuf,
    #[serde(default = "default_instance")]
    pub(super) instance: String,
    #[serde(default)]
    pub(super) detach_on_exit: bool,
    #[serde(default = "default_slot_fast_path")]
    pub(super) slot_fast_path: bool,
    #[serde(default = "default_sa_steering")]
    pub(super) sa_steering: bool,
    #[serde(default, with = "humantime_serde")]
    pub(super) slot_move_delay: Option<Duration>,
    #[serde(default = "default_reload_drain", with = "humantime_serde")]
    pub(super) reload_drain: Duration,
    #[serde(default)]
    pub(super) announce: Option<RawAnnounce>,
    #[serde(default)]
    pub(super) share: Option<RawShare>,
}

/// `announce`: keep a host route for every VIP this node can serve in kernel routing table
/// `table`, for a routing daemon to export (docs/cluster.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    pub(super) table: u32,
    #[serde(default = "default_true")]
    pub(super) withdraw_on_stop: bool,
}

/// `share`: the kernel tables of shared persistence between the nodes of a cluster
/// (docs/cluster.md). Both keys are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShare {
    pub(super) export_table: u32,
    pub(super) import_table: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVirtualServer {
    pub(super) name: String,
    pub(super) vip: RawVips,
    #[serde(default = "default_ports")]
    pub(super) ports: Vec<u16>,
    #[serde(default)]
    pub(super) tcp_ports: Vec<u16>,
    #[serde(default = "default_true")]
    pub(super) esp: bool,
    #[serde(default)]
    pub(super) backends: Vec<RawBackend>,
}

/// `vip`: one address (schema v1), or a list of them — at most one per family.
#[derive(Debug)]
pub(super) struct RawVips(pub(super) Vec<String>);

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
pub(super) struct RawBackend {
    pub(super) address: String,
    #[serde(default = "default_weight")]
    pub(super) weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub(super) interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(default = "default_fall")]
    pub(super) fall: u32,
    #[serde(default = "default_rise")]
    pub(super) rise: u32,
    /// Names as written: validation reports unknown ones and duplicates with their index.
    #[serde(default = "default_probes")]
    pub(super) probes: Vec<String>,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            timeout: default_timeout(),
            fall: default_fall(),
            rise: default_rise(),
            probes: default_probes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    #[serde(default = "default_socket")]
    pub(super) socket: PathBuf,
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
pub(super) struct RawMetrics {
    #[serde(default = "default_listen")]
    pub(super) listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

/// `reload_drain` when the config sets none: backends a reload removes drain for up to an
/// hour.
fn default_reload_drain() -> Duration {
    Duration::from_secs(3600)
}

fn default_persistence_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_slot_fast_path() -> bool {
    true
}
fn default_sa_steering() -> bool {
    true
}
/// `slot_move_delay` when the config sets none: 5 s, or `persistence_timeout` if shorter.
pub(super) fn default_slot_move_delay(persistence_timeout: Duration) -> Duration {
    Duration::from_secs(5).min(persistence_timeout)
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
fn default_probes() -> Vec<String> {
    crate::health::ProbeKinds::DEFAULT.labels()
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
