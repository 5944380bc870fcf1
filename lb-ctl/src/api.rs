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
//!
//! ## Modules
//!
//! * `api.rs` (this file): the bounds ([`MAX_LINE`], [`MAX_REPLY`], [`Limits`], the
//!   timeouts) and the re-exports of the pieces below.
//! * `api/messages.rs`: what is said — [`Request`], [`Response`], [`Reply`], [`ApiError`]
//!   and the payloads (`backend list`, `status`, `lookup`), and [`parse_request`].
//! * `api/server.rs`: the daemon's side — [`ControlSocket`] (binding, accepting, slots,
//!   peer credentials) and the framing of one connection.
//! * `api/client.rs`: the CLI's side — [`call`].

use std::time::Duration;

mod client;
mod messages;
mod server;

pub use client::{call, ClientError};
pub use messages::{
    parse_request, ApiError, BackendImpact, BackendInfo, ErrorCode, HealthCheckInfo, LookupResult,
    PersistedInfo, PersistenceInfo, Plan, ProbeHealth, Reply, Request, Response, Status,
    VirtualServerStatus, VsImpact,
};
pub use server::{ControlSocket, SocketError};

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

#[cfg(test)]
mod tests;
