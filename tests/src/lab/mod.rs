//! Network-namespace lab: the standard topology ([`Lab`]), the traffic the tests and the demo
//! send through it, the backends' responder, and the helpers to act inside a namespace without
//! a subprocess.
//!
//! The guards for namespaces, veth pairs, child processes, temporary directories and bpffs
//! mounts come from `lab-sys` (`tests/lab-sys`), which the benchmark shares: every guard undoes
//! what it made when dropped — also while a failing test unwinds — and [`reap_stale`] removes
//! what a killed run left behind (every name carries the owning PID: [`RunPrefix`]).
//!
//! Only namespaces made here carry traffic: nothing touches the root namespace's links or
//! routes.

pub mod control;
mod daemon;
pub mod flood;
pub mod metrics;
pub mod raw;
pub mod responder;
pub mod sock;
pub mod stream;
mod topology;
mod traffic;

pub use lab_sys::{
    is_root, reap_stale, run, run_stdin, BpfFs, Child, NetNs, RunPrefix, Snmp, TempDir, Veth,
    XdpAttachment,
};
pub use topology::{
    backend6, client6, BackendNs, Lab, LabSpec, Mode, BACKEND_PORTS, GW_EXT, GW_INT, TCP_PORT, VIP,
    VIP6,
};
pub use traffic::{send_bad_checksum, tcp_ask, EspProbe, Reply, UdpProbe};

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// How long to wait for something that takes `d` on an ordinary machine: `d` times
/// `$IKELB_TEST_TIME_SCALE` (default 1). The kernel matrix sets it for its guests, where
/// QEMU's emulation runs everything several times slower; a bound stays a bound on progress,
/// never on speed.
pub fn patience(d: Duration) -> Duration {
    let scale = std::env::var("IKELB_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * scale
}

/// Poll `f` every `every` until it returns `Some`, or fail after `timeout` with `what`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let timeout = patience(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(every);
    }
}

/// A sibling of this executable (or of its parent directory: integration tests run from
/// `target/<profile>/deps/`), e.g. `lb-ctl` or `ikelb-responder`.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// The `lb-ctl` to test: `$IKELB_LB_CTL`, else the one built next to this executable.
pub fn lb_ctl_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("IKELB_LB_CTL") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "IKELB_LB_CTL={} is not a file", p.display());
        return Ok(p);
    }
    sibling_binary("lb-ctl").context(
        "no lb-ctl next to this executable: build it (`cargo build -p lb-ctl`) or set \
         IKELB_LB_CTL=/path/to/lb-ctl",
    )
}
