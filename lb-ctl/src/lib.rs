//! ikelb's userspace: the daemon (loader, health checks, map updates, control API, metrics)
//! and the operator commands, behind one binary, `lb-ctl`.
//!
//! One module per responsibility:
//!
//! * [`paths`] — every default filesystem location;
//! * [`config`] — schema v1, parsing and validation (`file:line: key: reason`);
//! * [`state`] — config → services and backends with stable ids → Maglev tables, written
//!   slot-by-slot into the inactive buffer and flipped;
//! * [`dataplane`] — the BPF maps behind a small trait (aya implementation, in-memory fake);
//! * [`neighbor`] — next-hop MAC and egress interface of each backend;
//! * [`own_addresses`] — the gateway's own addresses, listed so the data path drops them as
//!   sources;
//! * [`health`] — ICMP health checks, rise/fall verdicts;
//! * [`runtime`] — backend add/remove/drain, runtime changes under `state_dir`, lookups;
//! * [`bpf_sys`] — bpf(2) map commands aya lacks (batch lookups, raw keys);
//! * [`scan`] — bounded walks of the persistence maps, one shared scan at a time;
//! * [`api`] — the control socket's line-delimited JSON protocol (daemon and CLI);
//! * [`listen`] — connection slots, accept back-off and the descriptor limit of the listeners;
//! * [`metrics`] — Prometheus `/metrics`, read from the per-CPU maps when scraped;
//! * [`pin`] — bpffs pins: reuse, atomic program replacement, map migration;
//! * [`kernel`] — what the running kernel must offer the XDP program, probed at start;
//! * [`daemon`] — load, attach, fill, run until a signal, detach;
//! * [`operator`] — `lb-ctl backend/status/lookup`: requests and their tables;
//! * [`identity`] — service and interface numbers by name (`state_dir/identity.json`, pins);
//! * [`announce`] — host routes of the VIPs this node can serve, for BGP (docs/cluster.md);
//! * [`cli`] — the command line;
//! * [`docgen`] — its man pages and shell completions, for the Debian package.
//!
//! Data flows one way, from the operator's intent to the kernel, and counters flow back:
//!
//! ```text
//! config (YAML) ─► config::parse ─► identity ─► state::Balancer ──► dataplane ──► BPF maps
//! lb-ctl backend ─► api ─► runtime::Controller ─┘   (Maglev tables,     (aya or   ▲   │
//! health / neighbor reports ──────────────────────►  ids, next hops)     fake)    │   │
//!                                                                     XDP program ┘   │
//! /metrics, backend list, status, drains ◄── metrics, scan (shared walks) ◄───────────┘
//! ```
//!
//! `daemon` wires it together at start (`kernel` check, `pin` reuse or migration, attach)
//! and runs the loop (`runtime::Runtime`); `operator` is the client side of `api`.

pub mod announce;
pub mod api;
pub mod bpf_sys;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod docgen;
pub mod dataplane;
pub mod health;
pub mod identity;
pub mod kernel;
pub mod listen;
pub mod metrics;
pub mod neighbor;
pub mod netlink;
pub mod operator;
pub mod own_addresses;
pub mod paths;
pub mod pin;
pub mod runtime;
pub mod scan;
pub mod share;
pub mod state;

/// `e` and its sources on one line. Our errors already print their direct source; aya's
/// often do not (`SyscallError` names the call, its source the errno), so each source is
/// appended unless its text is already there.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The XDP object built from `lb-ebpf` by `build.rs`, embedded so `lb-ctl` is one file to
/// deploy.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Name of the XDP program (the `#[xdp]` function) inside [`EBPF_OBJECT`].
pub const XDP_PROGRAM: &str = "ikelb";
