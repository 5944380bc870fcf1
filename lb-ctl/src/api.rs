//! The control API between `lb-ctl daemon` and the operator commands: line-delimited JSON
//! over a Unix stream socket (`control.socket`, mode 0600, root only).
//!
//! ## Protocol
//!
//! The client sends one [`Request`] per line, the daemon answers each with one [`Response`]
//! line, in order; a connection may carry several requests (`lb-ctl` sends one). Every line is
//! a single JSON object; a request of at most [`MAX_LINE`] bytes, an answer of at most
//! [`MAX_REPLY`] (what `lb-ctl` reads). Requests are tagged by `command`:
//!
//! ```text
//! → {"command":"backend_add","virtual_server":"aovpn","address":"10.0.0.14","weight":2}
//! ← {"ok":{"kind":"backend_added","backend":{"virtual_server":"aovpn","address":"10.0.0.14",…}}}
//! → {"command":"backend_remove","virtual_server":"203.0.113.10","address":"10.0.0.12","drain":"10m"}
//! → {"command":"backend_list"}      {"command":"status"}      {"command":"lookup","client":"100.64.1.7"}
//! ← {"error":{"code":"unknown_virtual_server","message":"no virtual server \"vpn\" (known: aovpn 203.0.113.10)"}}
//! ```
//!
//! Unknown commands or fields, bad addresses and malformed JSON are answered with
//! `bad_request` by the connection task without reaching the daemon's state. Every error
//! leaves the daemon's state unchanged. The daemon checks the peer's credentials
//! (`SO_PEERCRED`): only root and the daemon's own user are served, in addition to the
//! socket's mode.
//!
//! Bounds (docs/operations.md, "Limits and faults"): at most [`MAX_CONNECTIONS`]
//! connections at once ([`crate::listen`]: over the cap the connection waiting longest for a
//! request is closed to make room; when all are mid-request the new one is answered `busy`);
//! a connection that sends no complete request line within [`IDLE_TIMEOUT`] of opening or
//! of its previous answer is closed, and so is one that does not take its answer within
//! [`WRITE_TIMEOUT`]; failed accepts back off.
//!
//! The same types are the `--json` output of `lb-ctl` (the `ok` payload), so scripts see
//! exactly what the daemon said.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::unix::{
        fs::{DirBuilderExt, PermissionsExt},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    time::timeout,
};
use tracing::debug;

use crate::{
    health::HealthState,
    listen::{out_of_descriptors, AcceptErrors, Admit, Slot, Slots, EVICT_PAUSE, TIMED_OUT},
};

/// Longest request line the daemon accepts, newline included.
pub const MAX_LINE: usize = 1 << 20;

/// Longest answer `lb-ctl` reads, newline included. `backend list` costs about 190 bytes
/// per backend (IPv4, no drain; up to ~350 with IPv6 addresses, long names and drain
/// deadlines), so the former 1 MiB ran out at a few thousand backends; 64 MiB holds more
/// than 180,000 — more than one gateway health-checks — and still stops a runaway peer
/// before it fills the memory.
pub const MAX_REPLY: usize = 64 << 20;

/// Control connections served at once: `lb-ctl` uses one per command; scripts running
/// commands in parallel rarely need more than a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection must send a complete request line within this of opening or of its
/// previous answer (`lb-ctl` sends at once), else it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection must take its answer within this (a `backend list` of a large deployment
/// is megabytes), else it is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of one control socket.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// How long the CLI waits for the daemon's answer (a `backend list` on a full persistence
/// map reads every entry).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn default_weight() -> u32 {
    1
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
    pub health: HealthState,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckInfo {
    pub interval: String,
    pub timeout: String,
    pub fall: u32,
    pub rise: u32,
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
}

fn tier_persistence() -> String {
    "persistence".to_owned()
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating the control socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another daemon is serving the control socket {path}")]
    InUse { path: PathBuf },
    #[error("removing the stale control socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("restricting the control socket {path} to mode 0600: {source}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The daemon's listening socket; the file is removed when this is dropped.
pub struct ControlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` with mode 0600. The parent directory is created (mode 0700) when missing.
    /// A socket file nobody answers on is a leftover of a killed daemon and is replaced; one
    /// that answers belongs to a running daemon and is an error.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    // The mode above passes through the umask, which another thread may
                    // have changed for a moment (the bind below does): set it outright.
                    .and_then(|()| {
                        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    })
                    .map_err(|source| SocketError::CreateDir {
                        path: dir.to_owned(),
                        source,
                    })?;
            }
        }
        if path.exists() {
            if StdUnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        // Created 0600 from the start (no window in which others could connect), then set
        // explicitly in case the umask was already stricter/looser than expected.
        // SAFETY: umask(2) cannot fail; the previous mask is restored right after the bind.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|source| SocketError::Bind {
            path: path.to_owned(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| SocketError::Chmod {
                path: path.to_owned(),
                source,
            },
        )?;
        Ok(Self {
            listener: Some(listener),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the daemon's end of `requests` closes: each request line
    /// that parses is sent, with a reply channel, to the daemon's loop; everything else is
    /// answered here.
    pub async fn serve(&mut self, requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>) {
        self.serve_with(requests, Limits::default()).await;
    }

    /// [`serve`](Self::serve) with explicit bounds.
    pub async fn serve_with(
        &mut self,
        requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
        limits: Limits,
    ) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let slots = Slots::new("control", limits.max_connections);
        let mut errors = AcceptErrors::new("control");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        errors.accepted();
                        match slots.admit() {
                            Admit::Slot(slot) => {
                                tokio::spawn(connection(stream, requests.clone(), slot, limits));
                            }
                            Admit::Busy => {
                                let e = ApiError::new(
                                    ErrorCode::Busy,
                                    format!(
                                        "the daemon is serving {} control connections, each in the middle of a request; try again",
                                        slots.cap()
                                    ),
                                );
                                let mut line = serde_json::to_vec(&Response::Error(e))
                                    .expect("responses always serialize");
                                line.push(b'\n');
                                // A fresh socket's buffer takes one short line without waiting.
                                let _ = stream.try_write(&line);
                            }
                        }
                    }
                    Err(e) => {
                        let mut pause = errors.failed(&e);
                        // Out of descriptors: the connection idle longest gives its up.
                        if out_of_descriptors(&e) && slots.evict_idle() {
                            pause = EVICT_PAUSE;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = requests.closed() => return,
                        }
                    }
                },
                () = requests.closed() => return,
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves one connection until it closes, times out or is evicted ([`Slot::evicted`]).
async fn connection(
    stream: UnixStream,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
    slot: Slot,
    limits: Limits,
) {
    tokio::select! {
        () = serve_connection(stream, requests, &slot, limits) => {}
        () = slot.evicted() => debug!("control connection closed to make room for a newer one"),
    }
}

/// Request lines in, response lines out.
async fn serve_connection(
    stream: UnixStream,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
    slot: &Slot,
    limits: Limits,
) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (read, mut write) = stream.into_split();
    let peer = write.as_ref().peer_cred().ok();
    // Root, and the daemon's own user when it runs as another one with capabilities.
    if !peer.is_some_and(|c| c.uid() == 0 || c.uid() == me) {
        let e = ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "uid {} may not use this socket (only root and uid {me})",
                peer.map_or_else(|| "unknown".to_owned(), |c| c.uid().to_string())
            ),
        );
        let _ = timeout(
            limits.write_timeout,
            write_line(&mut write, &Response::Error(e)),
        )
        .await;
        return;
    }
    let mut lines = TokioBufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = timeout(
            limits.idle_timeout,
            (&mut lines)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf),
        )
        .await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                debug!("control socket: read failed: {e}");
                return;
            }
            Err(_) => {
                TIMED_OUT.with_label_values(&[slot.listener()]).inc();
                debug!(
                    "control socket: no complete request within {:?}: closed",
                    limits.idle_timeout
                );
                return;
            }
        };
        let _busy = slot.busy();
        if n == 0 {
            return;
        }
        if buf.last() != Some(&b'\n') && n >= MAX_LINE {
            let e = ApiError::new(
                ErrorCode::BadRequest,
                format!("request longer than {MAX_LINE} bytes"),
            );
            let _ = timeout(
                limits.write_timeout,
                write_line(&mut write, &Response::Error(e)),
            )
            .await;
            return;
        }
        let response = match parse_request(&buf) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if requests.send((request, tx)).await.is_err() {
                    return; // the daemon is stopping
                }
                match rx.await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Err(e) => Response::Error(e),
        };
        match timeout(limits.write_timeout, write_line(&mut write, &response)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                TIMED_OUT.with_label_values(&[slot.listener()]).inc();
                debug!(
                    "control socket: the answer was not taken within {:?}: closed",
                    limits.write_timeout
                );
                return;
            }
        }
    }
}

/// Parses one request line; the error is the `bad_request` answer.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    serde_json::from_slice(line)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad request: {e}")))
}

async fn write_line(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("responses always serialize");
    line.push(b'\n');
    w.write_all(&line).await
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon's control socket {path}: {source} (is `lb-ctl daemon` running, and are you root?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon closed {path} without answering")]
    NoAnswer { path: PathBuf },
    #[error("the daemon's answer on {path} is not understood: {source}")]
    Garbled {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the daemon's answer on {path} is longer than {limit} bytes, lb-ctl's limit (MAX_REPLY in lb-ctl/src/api.rs)")]
    TooLong { path: PathBuf, limit: usize },
}

/// Sends one request to the daemon at `path` and waits for its answer (blocking: the CLI
/// needs no runtime).
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    call_with_limit(path, request, MAX_REPLY)
}

/// [`call`] reading an answer of at most `limit` bytes (newline included).
fn call_with_limit(path: &Path, request: &Request, limit: usize) -> Result<Response, ClientError> {
    let stream = StdUnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    // A daemon that refuses the connection (forbidden, busy) answers and closes without
    // reading: the write may fail (EPIPE) while its answer waits to be read. Read first,
    // report the write error only when there is no answer.
    let wrote = (&stream).write_all(&line);
    // One byte more than the limit tells a line of exactly `limit` bytes from a longer one.
    let mut answer = Vec::new();
    let read = BufReader::with_capacity(1 << 16, &stream)
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut answer);
    match (wrote, read) {
        (Err(e), _) if answer.is_empty() => return Err(io(e)),
        (_, Err(e)) if answer.is_empty() => return Err(io(e)),
        _ => {}
    }
    if answer.is_empty() {
        return Err(ClientError::NoAnswer {
            path: path.to_owned(),
        });
    }
    if answer.len() > limit {
        return Err(ClientError::TooLong {
            path: path.to_owned(),
            limit,
        });
    }
    serde_json::from_slice(&answer).map_err(|source| ClientError::Garbled {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_read_as_documented() {
        let add = Request::BackendAdd {
            virtual_server: "aovpn".into(),
            address: "10.0.0.14".parse().unwrap(),
            weight: 2,
        };
        let json = serde_json::to_string(&add).unwrap();
        assert_eq!(
            json,
            r#"{"command":"backend_add","virtual_server":"aovpn","address":"10.0.0.14","weight":2}"#
        );
        assert_eq!(parse_request(json.as_bytes()).unwrap(), add);
        let rm = parse_request(
            br#"{"command":"backend_remove","virtual_server":"203.0.113.10","address":"10.0.0.12","drain":"10m"}"#,
        )
        .unwrap();
        assert_eq!(
            rm,
            Request::BackendRemove {
                virtual_server: "203.0.113.10".into(),
                address: "10.0.0.12".parse().unwrap(),
                drain: Some(Duration::from_secs(600)),
            }
        );
        assert_eq!(
            parse_request(
                br#"{"command":"backend_add","virtual_server":"a","address":"10.0.0.1"}"#
            )
            .unwrap(),
            Request::BackendAdd {
                virtual_server: "a".into(),
                address: "10.0.0.1".parse().unwrap(),
                weight: 1
            }
        );
        assert_eq!(
            parse_request(br#"{"command":"status"}"#).unwrap(),
            Request::Status
        );
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        for line in [
            &b"not json"[..],
            br#"{"command":"reboot"}"#,
            br#"{"command":"backend_add","virtual_server":"a","address":"10.0.0.300"}"#,
            br#"{"command":"backend_add","virtual_server":"a","address":"10.0.0.1","wieght":2}"#,
            br#"{"command":"backend_remove","virtual_server":"a","address":"10.0.0.1","drain":"soon"}"#,
            br#"{"command":"lookup"}"#,
        ] {
            let e = parse_request(line).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn responses_are_ok_or_error_objects() {
        let r = Response::Error(ApiError::new(ErrorCode::UnknownVirtualServer, "no"));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"error":{"code":"unknown_virtual_server","message":"no"}}"#
        );
        let r = Response::Ok(Reply::Backends { backends: vec![] });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":{"kind":"backends","backends":[]}}"#
        );
    }

    #[tokio::test]
    async fn the_socket_is_0600_serves_requests_and_answers_bad_ones_itself() {
        let dir = std::env::temp_dir().join(format!("ikelb-api-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/ctl.sock");
        let mut sock = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(dir.join("sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(SocketError::InUse { .. })
        ));

        let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(4);
        let server = tokio::spawn(async move {
            sock.serve(tx).await;
            sock
        });
        let daemon = tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                assert_eq!(req, Request::BackendList);
                let _ = reply.send(Response::Ok(Reply::Backends { backends: vec![] }));
            }
        });
        let p = path.clone();
        let (good, bad) = tokio::task::spawn_blocking(move || {
            let good = call(&p, &Request::BackendList).unwrap();
            let stream = StdUnixStream::connect(&p).unwrap();
            (&stream).write_all(b"{\"command\":\"nope\"}\n").unwrap();
            let mut answer = String::new();
            BufReader::new(&stream).read_line(&mut answer).unwrap();
            (good, answer)
        })
        .await
        .unwrap();
        assert_eq!(good, Response::Ok(Reply::Backends { backends: vec![] }));
        assert!(
            bad.starts_with(r#"{"error":{"code":"bad_request""#),
            "{bad}"
        );

        daemon.abort();
        let _ = daemon.await;
        let sock = server.await.unwrap();
        drop(sock);
        assert!(!path.exists(), "socket file removed on drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `backend list` of 8,000 backends is over 1 MiB (the old limit): read whole.
    #[test]
    fn the_client_reads_an_answer_over_one_mebibyte_and_refuses_one_over_its_limit() {
        let dir = std::env::temp_dir().join(format!("ikelb-api-big-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let backends: Vec<BackendInfo> = (0..8000u32)
            .map(|i| BackendInfo {
                virtual_server: "aovpn".into(),
                address: IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1]),
                id: i + 1,
                weight: 1,
                state: "active".into(),
                health: HealthState::Up,
                next_hop: Some("02:00:00:00:00:0b on int".into()),
                drain_until: None,
                ring_slots: 13,
                clients: 1000,
                origin: "config".into(),
            })
            .collect();
        let reply = Response::Ok(Reply::Backends { backends });
        let mut line = serde_json::to_vec(&reply).unwrap();
        line.push(b'\n');
        let size = line.len();
        assert!(size > 1 << 20, "the answer is {size} bytes");
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                let mut req = String::new();
                BufReader::new(&s).read_line(&mut req).unwrap();
                assert_eq!(req, "{\"command\":\"backend_list\"}\n");
                // The client may close early (over its limit): ignore a broken pipe.
                let _ = (&s).write_all(&line);
            }
        });
        let got = call(&path, &Request::BackendList).unwrap();
        assert_eq!(got, reply, "8,000 backends, {size} bytes");
        let e = call_with_limit(&path, &Request::BackendList, 1 << 20).unwrap_err();
        assert!(matches!(e, ClientError::TooLong { limit, .. } if limit == 1 << 20));
        assert_eq!(
            e.to_string(),
            format!(
                "the daemon's answer on {} is longer than 1048576 bytes, lb-ctl's limit (MAX_REPLY in lb-ctl/src/api.rs)",
                path.display()
            )
        );
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Serves `sock` with `limits`, answering every request with an empty backend list.
    fn serve_empty(
        mut sock: ControlSocket,
        limits: Limits,
    ) -> (
        tokio::task::JoinHandle<ControlSocket>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(4);
        let server = tokio::spawn(async move {
            sock.serve_with(tx, limits).await;
            sock
        });
        let daemon = tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(Response::Ok(Reply::Backends { backends: vec![] }));
            }
        });
        (server, daemon)
    }

    /// Blocks until the daemon closes `s` (EOF or reset); false when `limit` passes first.
    fn closed_by_daemon(s: &StdUnixStream, limit: Duration) -> bool {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 256];
        loop {
            match (&*s).read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// Two slots held by idle connections: a new command is still answered (the oldest
    /// idle connection makes room); an idle connection is closed after the idle timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_lock_out_a_command() {
        let dir = std::env::temp_dir().join(format!("ikelb-api-bounds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ctl.sock");
        let sock = ControlSocket::bind(&path).unwrap();
        let limits = Limits {
            max_connections: 2,
            idle_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_secs(5),
        };
        let (server, daemon) = serve_empty(sock, limits);
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let first = StdUnixStream::connect(&p).unwrap();
            let second = StdUnixStream::connect(&p).unwrap();
            // Both slots idle: the command takes the first one's slot and is answered.
            let got = call(&p, &Request::BackendList).unwrap();
            assert_eq!(got, Response::Ok(Reply::Backends { backends: vec![] }));
            assert!(
                closed_by_daemon(&first, Duration::from_secs(10)),
                "the oldest idle connection was closed to make room"
            );
            assert!(crate::listen::EVICTED.with_label_values(&["control"]).get() >= 1);
            // The second one, idle past the timeout, is closed too.
            assert!(
                closed_by_daemon(&second, Duration::from_secs(10)),
                "an idle connection is closed after the idle timeout"
            );
        })
        .await
        .unwrap();
        daemon.abort();
        let _ = daemon.await;
        drop(server.await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// SO_PEERCRED: a peer that is neither root nor the daemon's user gets one `forbidden`
    /// line and nothing reaches the daemon. The socket's mode would stop it earlier; it is
    /// opened up here so the credential check is what refuses. Root only (the child
    /// switches to uid 65534).
    #[test]
    fn a_non_root_peer_is_refused_by_its_credentials() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP a_non_root_peer_is_refused_by_its_credentials: needs root to run a child as uid 65534");
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("ikelb-api-peer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ctl.sock");
        let mut sock = rt.block_on(async { ControlSocket::bind(&path) }).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(4);
        let server = rt.spawn(async move {
            sock.serve(tx).await;
            sock
        });
        let reached = rt.spawn(async move { rx.recv().await.is_some() });

        // Everything the child needs is prepared here: after fork it makes raw syscalls only.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_encoded_bytes();
        assert!(bytes.len() < addr.sun_path.len());
        for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
            *d = b as libc::c_char;
        }
        let request = b"{\"command\":\"status\"}\n";
        let mut fds = [0i32; 2];
        // SAFETY: pipe writes two descriptors into the array we pass.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut buf = vec![0u8; 4096];
        // SAFETY: the child calls only async-signal-safe functions (setgroups, setgid,
        // setuid, socket, connect, write, read, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            unsafe {
                libc::close(fds[0]);
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0
                    || libc::connect(
                        fd,
                        std::ptr::addr_of!(addr).cast(),
                        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                    ) != 0
                {
                    libc::_exit(3);
                }
                libc::write(fd, request.as_ptr().cast(), request.len());
                let mut got = 0usize;
                loop {
                    let n = libc::read(fd, buf.as_mut_ptr().add(got).cast(), buf.len() - got);
                    if n <= 0 {
                        break;
                    }
                    got += n as usize;
                    if buf[got - 1] == b'\n' || got == buf.len() {
                        break;
                    }
                }
                libc::write(fds[1], buf.as_ptr().cast(), got);
                libc::_exit(0);
            }
        }
        // SAFETY: our own descriptors and child.
        unsafe { libc::close(fds[1]) };
        let mut answer = String::new();
        // SAFETY: fds[0] is the pipe's read end, owned from here on.
        let mut pipe = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        pipe.read_to_string(&mut answer).unwrap();
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child status {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "child failed (2: setuid, 3: connect)"
        );
        assert_eq!(
            answer,
            "{\"error\":{\"code\":\"forbidden\",\"message\":\"uid 65534 may not use this socket (only root and uid 0)\"}}\n"
        );
        let e: Response = serde_json::from_str(&answer).unwrap();
        let Response::Error(e) = e else {
            panic!("{answer}")
        };
        assert_eq!(e.to_string().lines().count(), 1, "one line: {e}");
        server.abort();
        rt.block_on(async {
            let _ = server.await;
        });
        assert!(
            !rt.block_on(reached).unwrap(),
            "the refused request never reached the daemon"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every slot mid-request (the daemon has not answered yet): a new connection gets one
    /// `busy` line and is closed; the held request is still answered afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_over_the_cap_is_told_busy_when_every_slot_is_mid_request() {
        let dir = std::env::temp_dir().join(format!("ikelb-api-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ctl.sock");
        let mut sock = ControlSocket::bind(&path).unwrap();
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(4);
        let server = tokio::spawn(async move {
            sock.serve_with(tx, limits).await;
            sock
        });
        let p = path.clone();
        let first = tokio::task::spawn_blocking(move || call(&p, &Request::Status));
        // The request is with the daemon: its connection is busy.
        let (req, reply) = rx.recv().await.unwrap();
        assert_eq!(req, Request::Status);
        let p = path.clone();
        let second = tokio::task::spawn_blocking(move || call(&p, &Request::BackendList))
            .await
            .unwrap()
            .unwrap();
        let Response::Error(e) = second else {
            panic!("{second:?}")
        };
        assert_eq!(e.code, ErrorCode::Busy);
        assert_eq!(
            e.message,
            "the daemon is serving 1 control connections, each in the middle of a request; try again"
        );
        let _ = reply.send(Response::Ok(Reply::Backends { backends: vec![] }));
        assert_eq!(
            first.await.unwrap().unwrap(),
            Response::Ok(Reply::Backends { backends: vec![] })
        );
        drop(rx);
        drop(server.await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
