//! The messages of the control API: [`Request`] (tagged by `command`), [`Response`]
//! (`ok` or `error`), [`Reply`] and its payloads, [`ApiError`] with its [`ErrorCode`] —
//! also the `--json` output of `lb-ctl` — and [`parse_request`], which turns a line that
//! does not parse into the `bad_request` answer.

use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::health::HealthState;

fn default_weight() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One request. `virtual_server` is a name or a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    BackendAdd {
        virtual_server: String,
        address: IpAddr,
        #[serde(default = "default_weight")]
        weight: u32,
        /// Only say which live clients would move (the blast radius); change nothing.
        #[serde(default, skip_serializing_if = "is_false")]
        dry_run: bool,
    },
    BackendRemove {
        virtual_server: String,
        address: IpAddr,
        /// Let persisted clients drain for at most this long (humantime, e.g. `"10m"`).
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        drain: Option<Duration>,
        /// Only say which live clients would move (the blast radius); change nothing.
        #[serde(default, skip_serializing_if = "is_false")]
        dry_run: bool,
    },
    /// Read the config file again and apply the difference (docs/operations.md, "Reload").
    Reload {
        /// Only say what would change and which live clients would move; change nothing.
        #[serde(default, skip_serializing_if = "is_false")]
        dry_run: bool,
    },
    BackendList,
    Status,
    Lookup {
        client: IpAddr,
    },
}

/// One answer: `{"ok": Reply}` or `{"error": ApiError}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "one answer per operator command, moved once: its size does not matter"
)]
pub enum Response {
    Ok(Reply),
    Error(ApiError),
}

impl From<Result<Reply, ApiError>> for Response {
    fn from(r: Result<Reply, ApiError>) -> Self {
        match r {
            Ok(reply) => Response::Ok(reply),
            Err(e) => Response::Error(e),
        }
    }
}

/// What a successful request returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// The backend as it is now (health unknown until its first probe, unless it was
    /// draining: then the drain was cancelled and it is back in the table).
    BackendAdded {
        backend: BackendInfo,
        drain_cancelled: bool,
    },
    /// `backend` as it was; `draining_until` set when it drains instead of leaving at once.
    BackendRemoved {
        backend: BackendInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        draining_until: Option<String>,
    },
    Backends {
        backends: Vec<BackendInfo>,
    },
    Status(Status),
    Lookup {
        client: IpAddr,
        results: Vec<LookupResult>,
    },
    /// A reload, or a `--dry-run` of a reload or `backend add/remove`.
    Plan(Plan),
}

/// What a change does (or, with `dry_run`, would do) and its blast radius: per virtual
/// server and backend, the live clients that move and where they start
/// (docs/operations.md, "Blast radius").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `true`: nothing was changed.
    pub dry_run: bool,
    /// The changes, one line each (`aovpn: 10.0.0.14 added (weight 1)`); empty when the file
    /// says what the daemon runs.
    pub changes: Vec<String>,
    /// Every virtual server (service) a change touches or a client of which moves.
    pub virtual_servers: Vec<VsImpact>,
}

/// One service's blast radius.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsImpact {
    pub virtual_server: String,
    pub vip: IpAddr,
    /// Live clients (persistence and probation entries the data path follows or that are not
    /// idle).
    pub clients: u64,
    /// Live clients whose backend changes.
    pub moving: u64,
    /// Moving clients that would have no backend (every backend gone: dropped).
    pub dropped: u64,
    pub backends: Vec<BackendImpact>,
}

/// One backend's share of a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendImpact {
    pub address: IpAddr,
    /// `added`, `removed`, `draining`, `drain cancelled`, `weight 1 → 2`, or empty.
    pub change: String,
    /// Live clients it serves now.
    pub clients: u64,
    /// Of those, the ones that move to another backend.
    pub leaving: u64,
    /// Live clients of other backends that would start on it.
    pub arriving: u64,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a request this daemon understands (JSON, command, field, value).
    BadRequest,
    UnknownVirtualServer,
    UnknownBackend,
    DuplicateBackend,
    /// Not usable as a backend address (not unicast, a VIP, wrong family, …).
    InvalidAddress,
    InvalidWeight,
    InvalidDrain,
    /// No backend id left (the `BACKENDS` map is full).
    CapacityExhausted,
    /// Saving the runtime state or writing the maps failed.
    Internal,
    /// The peer is not allowed to use the socket.
    Forbidden,
    /// Every connection slot is serving a request: try again.
    Busy,
    /// The config file does not validate (`file:line: key: reason`); nothing was changed.
    InvalidConfig,
    /// The file changes a key only a restart applies; nothing was changed.
    RestartRequired,
}

/// A backend as the daemon sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub virtual_server: String,
    pub address: IpAddr,
    /// Backend id in the maps (`BACKENDS`, persistence entries).
    pub id: u32,
    pub weight: u32,
    /// `active` (takes new clients), `draining` (keeps its persisted clients only) or
    /// `unusable` (health not up, or next hop unresolved: its clients are re-balanced).
    pub state: String,
    /// Every configured probe type together: up only while each is up.
    pub health: HealthState,
    /// Each configured probe type's own state, in `health_check.probes` order (absent from
    /// older daemons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeHealth>,
    /// `aa:bb:cc:dd:ee:ff on int`, or `None` while unresolved.
    pub next_hop: Option<String>,
    /// RFC 3339 drain deadline while draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_until: Option<String>,
    /// Slots of the active Maglev table it holds.
    pub ring_slots: u32,
    /// Persisted clients that are not idle (`persistence_timeout`) and would still be sent
    /// here.
    pub clients: u64,
    /// `config` or `runtime` (added with `lb-ctl backend add`).
    pub origin: String,
}

/// `lb-ctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub config: String,
    pub interfaces: Vec<String>,
    pub mode: String,
    pub health_check: HealthCheckInfo,
    pub persistence: PersistenceInfo,
    pub virtual_servers: Vec<VirtualServerStatus>,
    /// Host routes of the VIPs this node announces (`203.0.113.10/32`, config order; empty
    /// when none, or without `announce`; absent from older daemons).
    #[serde(default)]
    pub announced: Vec<String>,
    /// `announce.table`, when the config announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_table: Option<u32>,
}

/// One probe type's verdict on a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeHealth {
    /// `icmp` or `ike`.
    pub probe: String,
    pub health: HealthState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckInfo {
    pub interval: String,
    pub timeout: String,
    pub fall: u32,
    pub rise: u32,
    /// `health_check.probes` (absent from older daemons, which only pinged).
    #[serde(default)]
    pub probes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistenceInfo {
    /// Entries in `PERSIST_V4`/`_V6`, the established clients (idle ones included, until
    /// the LRU evicts them).
    pub entries: u64,
    pub capacity: u32,
    pub timeout: String,
    /// Entries in `PROBATION_V4`/`_V6`, new clients (0 from older daemons).
    #[serde(default)]
    pub probation_entries: u64,
    #[serde(default)]
    pub probation_capacity: u32,
    /// Config `new_client_rate` (0 = unlimited).
    #[serde(default)]
    pub new_client_rate: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualServerStatus {
    pub name: String,
    pub vip: IpAddr,
    pub ports: Vec<u16>,
    /// TCP ports of the persistency group (SSTP fallback); absent from older daemons.
    #[serde(default)]
    pub tcp_ports: Vec<u16>,
    pub esp: bool,
    /// Backends holding slots in the active table (0: every packet is dropped as
    /// `no_backend`).
    pub active: usize,
    /// Ring slots that keep their old backend until their move is due (`slot_move_delay`;
    /// absent from older daemons).
    #[serde(default)]
    pub held_slots: usize,
    pub backends: Vec<BackendInfo>,
}

/// Where the next packet of a client to one virtual server goes, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResult {
    pub virtual_server: String,
    pub vip: IpAddr,
    /// The backend, or `None` when the packet would be dropped (`no_backend`).
    pub backend: Option<IpAddr>,
    pub backend_id: Option<u32>,
    /// `persistence` (a live entry of an established client), `probation` (a live entry of
    /// a new client that has not proven return routability yet), `maglev` (the client's ring
    /// slot) or `none` (empty table).
    pub source: String,
    /// The client's slot in the active Maglev table.
    pub slot: u32,
    /// The persistence entry, if any, also when it no longer decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted: Option<PersistedInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedInfo {
    pub backend_id: u32,
    /// Its address, when the id still names a backend.
    pub backend: Option<IpAddr>,
    pub idle_seconds: u64,
    /// Why it no longer decides (`idle`, `backend unusable`, `backend removed`), or `None`
    /// when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_because: Option<String>,
    /// Which map holds it: `persistence` (established) or `probation` (new client).
    /// Daemons before two-tier persistence had only the former.
    #[serde(default = "tier_persistence")]
    pub tier: String,
    /// A probation entry only: whether the backend's proof (IKE responder SPI, TCP ISN) is
    /// recorded, i.e. the entry waits for the client to echo it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof_recorded: Option<bool>,
    /// The last IKE stage the data path saw of the client (`lb_common::ike::stage_name`:
    /// `ike_sa_init_sent`, `ike_sa_init_answered`, `ike_auth_sent`, `ike_auth_fragmented`,
    /// `established`), `None` when none was seen (or the entry predates the stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike_stage: Option<String>,
    /// The entry was made for a packet steered by its SA's SPI (the client's address changed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub steered: bool,
}

fn tier_persistence() -> String {
    "persistence".to_owned()
}

/// Parses one request line; the error is the `bad_request` answer.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    serde_json::from_slice(line)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad request: {e}")))
}
