//! The kernel's view of next hops through iproute2: [`Kernel`] (`ip` runs and resolution
//! probes), the real [`System`] (`ip` by absolute path, found once; UDP probes to the discard
//! port), and the parsing of `ip -j route get` and `ip -j neigh show` output.

use std::{
    collections::HashMap,
    net::{IpAddr, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde::Deserialize;
use tracing::{info, warn};

use super::{ResolveError, PROBE_PORT};
use crate::paths;

/// What [`IpCommand`](super::IpCommand) asks of the system: `ip` runs and resolution
/// probes. The seam for tests (a fake that fails on demand).
pub trait Kernel: Send + Sync + std::fmt::Debug {
    /// `ip ARGS`: its stdout when it exits 0.
    fn ip(&self, args: &[&str]) -> Result<String, ResolveError>;
    /// Makes the kernel resolve the next hop toward `addr`.
    fn probe(&self, addr: IpAddr) -> Result<(), ResolveError>;
}

/// The real system: iproute2's `ip` by absolute path, UDP probes.
#[derive(Debug)]
pub struct System;

/// The `ip` binary: the first executable of [`paths::IP_COMMANDS`], looked for once.
pub(super) fn ip_binary() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = paths::IP_COMMANDS.iter().map(PathBuf::from).find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
            match &found {
                Some(p) => info!("next hops are looked up with {}", p.display()),
                None => warn!(
                    "iproute2's ip is in none of {}: backends' next hops cannot be resolved",
                    paths::IP_COMMANDS.join(", ")
                ),
            }
            found
        })
        .as_deref()
}

impl Kernel for System {
    fn ip(&self, args: &[&str]) -> Result<String, ResolveError> {
        let Some(bin) = ip_binary() else {
            return Err(ResolveError::Spawn {
                command: format!("ip {}", args.join(" ")),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("not found in {}", paths::IP_COMMANDS.join(", ")),
                ),
            });
        };
        let command = format!("{} {}", bin.display(), args.join(" "));
        let out = Command::new(bin)
            .args(args)
            .output()
            .map_err(|source| ResolveError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if stderr.is_empty() {
                stderr = out.status.to_string();
            }
            return Err(ResolveError::Command { command, stderr });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One UDP datagram to the discard port; unprivileged, and harmless to the backend.
    fn probe(&self, addr: IpAddr) -> Result<(), ResolveError> {
        let bind: IpAddr = if addr.is_ipv4() {
            [0u8; 4].into()
        } else {
            [0u8; 16].into()
        };
        let sock =
            UdpSocket::bind((bind, 0)).map_err(|source| ResolveError::Probe { addr, source })?;
        // EHOSTUNREACH from an earlier failed resolution is expected; the look-up that
        // follows tells the real outcome.
        let _ = sock.send_to(b"ikelb neighbour probe", (addr, PROBE_PORT));
        Ok(())
    }
}

/// One entry of `ip -j route get`.
#[derive(Debug, Deserialize)]
struct RouteEntry {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    dev: Option<String>,
    gateway: Option<IpAddr>,
}

/// One entry of `ip -j neigh show`.
#[derive(Debug, Deserialize)]
struct NeighEntry {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// (egress device, address to resolve) from `ip -j route get ADDR` output.
pub(super) fn parse_route(
    addr: IpAddr,
    json: &str,
) -> Result<Result<(String, IpAddr), ResolveError>, serde_json::Error> {
    let routes: Vec<RouteEntry> = serde_json::from_str(json)?;
    let Some(r) = routes.into_iter().next() else {
        return Ok(Err(ResolveError::NoRoute { addr }));
    };
    if let Some(kind) = r.kind.filter(|k| k != "unicast") {
        return Ok(Err(ResolveError::NotUnicast { addr, kind }));
    }
    let Some(dev) = r.dev else {
        return Ok(Err(ResolveError::NoRoute { addr }));
    };
    Ok(Ok((dev, r.gateway.unwrap_or(addr))))
}

/// A neighbour entry with a usable address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Neigh {
    pub(super) mac: [u8; 6],
    /// Not confirmed lately. The kernel re-verifies a STALE entry only when it sends through
    /// it, which forwarded traffic never makes it do (XDP bypasses the stack), so the daemon
    /// sends a probe: a backend whose MAC changed is then re-learnt, one that is gone turns
    /// FAILED.
    pub(super) stale: bool,
}

/// The neighbour from `ip -j neigh show to VIA dev DEV` output, or the entry's state when it
/// has no usable address. REACHABLE, STALE, DELAY, PROBE, PERMANENT and NOARP entries carry
/// a valid address; INCOMPLETE and FAILED do not.
#[cfg(test)]
pub(super) fn parse_neigh(json: &str) -> Result<Result<Neigh, String>, serde_json::Error> {
    let entries: Vec<NeighEntry> = serde_json::from_str(json)?;
    Ok(entries
        .into_iter()
        .next()
        .map_or_else(|| Err("none".to_owned()), neigh_of))
}

/// One neighbour entry: its address, or its state when it has none usable.
fn neigh_of(e: NeighEntry) -> Result<Neigh, String> {
    let state = if e.state.is_empty() {
        "unknown".to_owned()
    } else {
        e.state.join(",")
    };
    if e.state.iter().any(|s| s == "INCOMPLETE" || s == "FAILED") {
        return Err(state);
    }
    let stale = e.state.iter().any(|s| s == "STALE");
    e.lladdr
        .as_deref()
        .and_then(parse_mac)
        .map(|mac| Neigh { mac, stale })
        .ok_or(state)
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The neighbour table as one `ip -j neigh show` dump (both families, every device), keyed
/// by (device, address): a link-local gateway means something only on its device.
#[derive(Debug, Default)]
pub(super) struct NeighTable(pub(super) HashMap<(String, IpAddr), Result<Neigh, String>>);

/// One entry of the `ip -j neigh show` dump (no filter: each entry names its device).
#[derive(Debug, Deserialize)]
struct NeighDumpEntry {
    dst: IpAddr,
    dev: Option<String>,
    #[serde(flatten)]
    neigh: NeighEntry,
}

impl NeighTable {
    /// Parses a whole dump; entries without a device are skipped (a dump without filter
    /// always names it).
    pub(super) fn parse(json: &str) -> Result<Self, serde_json::Error> {
        let entries: Vec<NeighDumpEntry> = serde_json::from_str(json)?;
        let mut table = HashMap::with_capacity(entries.len());
        for e in entries {
            if let Some(dev) = e.dev {
                table.insert((dev, e.dst), neigh_of(e.neigh));
            }
        }
        Ok(Self(table))
    }

    /// The neighbour `via` on `dev`, or the entry's state ("none" when there is no entry).
    pub(super) fn get(&self, via: IpAddr, dev: &str) -> Result<Neigh, String> {
        self.0
            .get(&(dev.to_owned(), via))
            .cloned()
            .unwrap_or_else(|| Err("none".to_owned()))
    }
}
