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
//! * [`daemon`] — load, attach, fill, run until a signal, detach;
//! * [`cli`] — the command line.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod neighbor;
pub mod paths;
pub mod state;

/// The XDP object built from `lb-ebpf` by `build.rs`, embedded so `lb-ctl` is one file to
/// deploy.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Name of the XDP program (the `#[xdp]` function) inside [`EBPF_OBJECT`].
pub const XDP_PROGRAM: &str = "ikelb";
