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
mod tests;
