//! ikelb's userspace: the daemon (loader, health checks, map updates, control API, metrics)
//! and the operator commands, behind one binary, `lb-ctl`.

/// The XDP object built from `lb-ebpf` by `build.rs`, embedded so `lb-ctl` is one file to
/// deploy.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Name of the XDP program (the `#[xdp]` function) inside [`EBPF_OBJECT`].
pub const XDP_PROGRAM: &str = "ikelb";
