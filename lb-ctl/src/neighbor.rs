//! Next hop of each backend: which interface the kernel routes it out of, and the MAC
//! address to put in the frame (the backend's own when it is on-link, its gateway's
//! otherwise).
//!
//! The XDP program does no FIB or neighbour lookup on the forward path: the daemon resolves
//! the next hop here and writes it into `BACKENDS`. The kernel stays the authority (`ip -j
//! route get`, `ip -j neigh show`); when the neighbour entry is missing or incomplete a UDP
//! datagram to the backend's discard port makes the kernel ARP for it, and the look-up is
//! retried briefly. A backend that cannot be resolved stays unusable; the daemon retries it.

use std::{
    net::{IpAddr, UdpSocket},
    process::Command,
    thread,
    time::Duration,
};

use serde::Deserialize;

use crate::paths;

/// UDP discard port (RFC 863): the probe that triggers neighbour resolution goes there.
const PROBE_PORT: u16 = 9;
/// After a probe, how often and how long to look for the neighbour entry.
const PROBE_POLL: Duration = Duration::from_millis(50);
const PROBE_POLLS: u32 = 20;

/// A resolved next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Egress interface name.
    pub dev: String,
    /// Address that was resolved: the gateway, or the backend itself when on-link.
    pub via: IpAddr,
    pub mac: [u8; 6],
}

/// Why a backend's next hop is unknown.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("parsing the output of `{command}`: {source}")]
    Parse {
        command: String,
        source: serde_json::Error,
    },
    #[error("no route to {addr}")]
    NoRoute { addr: IpAddr },
    #[error("{addr} is routed as {kind}, not to a neighbour")]
    NotUnicast { addr: IpAddr, kind: String },
    #[error("{addr} is routed out of {dev}, which is not one of the configured interfaces")]
    ForeignInterface { addr: IpAddr, dev: String },
    #[error("neighbour {via} on {dev} did not resolve (state {state})")]
    Unresolved {
        via: IpAddr,
        dev: String,
        state: String,
    },
    #[error("sending the resolution probe to {addr}: {source}")]
    Probe {
        addr: IpAddr,
        source: std::io::Error,
    },
}

/// Resolves backend next hops; a trait so the daemon's loop can be tested without a kernel.
pub trait Resolver {
    /// Next hop of each of `addrs` (in order), which must leave through one of
    /// `interfaces`.
    fn resolve_all(
        &self,
        addrs: &[IpAddr],
        interfaces: &[String],
    ) -> Vec<Result<Resolved, ResolveError>>;
}

/// The kernel's view through iproute2's JSON output.
#[derive(Clone, Debug, Default)]
pub struct IpCommand;

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
fn parse_route(
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
struct Neigh {
    mac: [u8; 6],
    /// Not confirmed lately. The kernel re-verifies a STALE entry only when it sends through
    /// it, which forwarded traffic never makes it do (XDP bypasses the stack), so the daemon
    /// sends a probe: a backend whose MAC changed is then re-learnt, one that is gone turns
    /// FAILED.
    stale: bool,
}

/// The neighbour from `ip -j neigh show to VIA dev DEV` output, or the entry's state when it
/// has no usable address. REACHABLE, STALE, DELAY, PROBE, PERMANENT and NOARP entries carry
/// a valid address; INCOMPLETE and FAILED do not.
fn parse_neigh(json: &str) -> Result<Result<Neigh, String>, serde_json::Error> {
    let entries: Vec<NeighEntry> = serde_json::from_str(json)?;
    let Some(e) = entries.into_iter().next() else {
        return Ok(Err("none".to_owned()));
    };
    let state = if e.state.is_empty() {
        "unknown".to_owned()
    } else {
        e.state.join(",")
    };
    if e.state.iter().any(|s| s == "INCOMPLETE" || s == "FAILED") {
        return Ok(Err(state));
    }
    let stale = e.state.iter().any(|s| s == "STALE");
    Ok(e.lladdr
        .as_deref()
        .and_then(parse_mac)
        .map(|mac| Neigh { mac, stale })
        .ok_or(state))
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

impl IpCommand {
    fn run(args: &[&str]) -> Result<String, ResolveError> {
        let command = format!("{} {}", paths::IP_COMMAND, args.join(" "));
        let out = Command::new(paths::IP_COMMAND)
            .args(args)
            .output()
            .map_err(|source| ResolveError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(ResolveError::Command { command, stderr });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn route(addr: IpAddr) -> Result<(String, IpAddr), ResolveError> {
        let a = addr.to_string();
        let args = ["-j", "route", "get", a.as_str()];
        let json = Self::run(&args)?;
        parse_route(addr, &json).map_err(|source| ResolveError::Parse {
            command: args.join(" "),
            source,
        })?
    }

    fn neigh(via: IpAddr, dev: &str) -> Result<Result<Neigh, String>, ResolveError> {
        let v = via.to_string();
        let args = ["-j", "neigh", "show", "to", v.as_str(), "dev", dev];
        let json = Self::run(&args)?;
        parse_neigh(&json).map_err(|source| ResolveError::Parse {
            command: args.join(" "),
            source,
        })
    }

    /// Makes the kernel resolve the next hop toward `addr` by sending it one UDP datagram to
    /// the discard port; unprivileged, and harmless to the backend.
    fn probe(addr: IpAddr) -> Result<(), ResolveError> {
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

/// A route look-up that found the egress interface, waiting for the neighbour.
struct Pending {
    dev: String,
    via: IpAddr,
    state: String,
}

impl Resolver for IpCommand {
    /// Looks every address up once; probes all that lack a neighbour entry at the same time,
    /// then polls those for up to `PROBE_POLL * PROBE_POLLS` (one second) in total.
    fn resolve_all(
        &self,
        addrs: &[IpAddr],
        interfaces: &[String],
    ) -> Vec<Result<Resolved, ResolveError>> {
        let mut out: Vec<Result<Resolved, ResolveError>> = Vec::with_capacity(addrs.len());
        let mut pending: Vec<(usize, Pending)> = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let first = Self::route(addr).and_then(|(dev, via)| {
                if !interfaces.contains(&dev) {
                    return Err(ResolveError::ForeignInterface { addr, dev });
                }
                match Self::neigh(via, &dev)? {
                    Ok(n) => {
                        if n.stale {
                            Self::probe(addr)?;
                        }
                        Ok(Ok(Resolved {
                            dev,
                            via,
                            mac: n.mac,
                        }))
                    }
                    Err(state) => Ok(Err(Pending { dev, via, state })),
                }
            });
            match first {
                Ok(Ok(r)) => out.push(Ok(r)),
                Ok(Err(p)) => {
                    // Placeholder until the polls below settle it.
                    out.push(Err(ResolveError::Unresolved {
                        via: p.via,
                        dev: p.dev.clone(),
                        state: p.state.clone(),
                    }));
                    match Self::probe(addr) {
                        Ok(()) => pending.push((i, p)),
                        Err(e) => out[i] = Err(e),
                    }
                }
                Err(e) => out.push(Err(e)),
            }
        }
        for _ in 0..PROBE_POLLS {
            if pending.is_empty() {
                break;
            }
            thread::sleep(PROBE_POLL);
            pending.retain_mut(|(i, p)| match Self::neigh(p.via, &p.dev) {
                Ok(Ok(n)) => {
                    out[*i] = Ok(Resolved {
                        dev: p.dev.clone(),
                        via: p.via,
                        mac: n.mac,
                    });
                    false
                }
                Ok(Err(state)) => {
                    p.state = state;
                    true
                }
                Err(e) => {
                    out[*i] = Err(e);
                    false
                }
            });
        }
        for (i, p) in pending {
            out[i] = Err(ResolveError::Unresolved {
                via: p.via,
                dev: p.dev,
                state: p.state,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_direct_and_via_gateway() {
        let addr: IpAddr = "10.0.0.11".parse().unwrap();
        let direct = r#"[{"dst":"10.0.0.11","dev":"int0","prefsrc":"10.0.0.1","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(
            parse_route(addr, direct).unwrap().unwrap(),
            ("int0".to_owned(), addr)
        );
        let gw = r#"[{"dst":"10.0.0.11","gateway":"10.9.0.1","dev":"eth1","prefsrc":"10.9.0.2","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(
            parse_route(addr, gw).unwrap().unwrap(),
            ("eth1".to_owned(), "10.9.0.1".parse().unwrap())
        );
        let local = r#"[{"type":"local","dst":"10.0.0.11","dev":"lo","prefsrc":"10.0.0.11","flags":[],"uid":0,"cache":["local"]}]"#;
        assert!(matches!(
            parse_route(addr, local).unwrap(),
            Err(ResolveError::NotUnicast { .. })
        ));
        assert!(matches!(
            parse_route(addr, "[]").unwrap(),
            Err(ResolveError::NoRoute { .. })
        ));
        assert!(parse_route(addr, "not json").is_err());
    }

    #[test]
    fn neighbour_states() {
        let ok = r#"[{"dst":"10.0.0.11","lladdr":"02:00:00:00:00:0b","state":["STALE"]}]"#;
        assert_eq!(
            parse_neigh(ok).unwrap(),
            Ok(Neigh {
                mac: [2, 0, 0, 0, 0, 0x0b],
                stale: true
            })
        );
        let reachable =
            r#"[{"dst":"10.0.0.11","lladdr":"02:00:00:00:00:0b","state":["REACHABLE"]}]"#;
        assert_eq!(
            parse_neigh(reachable).unwrap(),
            Ok(Neigh {
                mac: [2, 0, 0, 0, 0, 0x0b],
                stale: false
            })
        );
        let incomplete = r#"[{"dst":"10.0.0.11","state":["INCOMPLETE"]}]"#;
        assert_eq!(
            parse_neigh(incomplete).unwrap(),
            Err("INCOMPLETE".to_owned())
        );
        let failed = r#"[{"dst":"10.0.0.11","lladdr":"02:00:00:00:00:0b","state":["FAILED"]}]"#;
        assert_eq!(parse_neigh(failed).unwrap(), Err("FAILED".to_owned()));
        assert_eq!(parse_neigh("[]").unwrap(), Err("none".to_owned()));
    }

    /// IPv6 backends: `ip -j route get` and `ip -j neigh show` as iproute2 prints them (taken
    /// from a namespace pair): a backend on the link, one behind a link-local gateway (which
    /// is resolved on the egress device, where alone it means something), and its neighbour.
    #[test]
    fn ipv6_routes_and_neighbours() {
        let addr: IpAddr = "2001:db8:1::11".parse().unwrap();
        let direct = r#"[{"dst":"2001:db8:1::11","from":"::","dev":"v0","protocol":"kernel","prefsrc":"2001:db8:1::1","metric":256,"flags":[],"pref":"medium"}]"#;
        assert_eq!(
            parse_route(addr, direct).unwrap().unwrap(),
            ("v0".to_owned(), addr)
        );
        let far: IpAddr = "2001:db8:9::5".parse().unwrap();
        let via = r#"[{"dst":"2001:db8:9::5","from":"::","gateway":"fe80::1","dev":"v0","prefsrc":"2001:db8:1::1","metric":1024,"flags":[],"pref":"medium"}]"#;
        assert_eq!(
            parse_route(far, via).unwrap().unwrap(),
            ("v0".to_owned(), "fe80::1".parse().unwrap())
        );
        let neigh = r#"[{"dst":"2001:db8:1::11","lladdr":"2a:81:3c:9a:a4:ef","state":["REACHABLE"]}]"#;
        assert_eq!(
            parse_neigh(neigh).unwrap(),
            Ok(Neigh {
                mac: [0x2a, 0x81, 0x3c, 0x9a, 0xa4, 0xef],
                stale: false
            })
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("aa:BB:0c:00:00:01"),
            Some([0xaa, 0xbb, 0x0c, 0, 0, 1])
        );
        assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
        assert_eq!(parse_mac("zz:bb:cc:dd:ee:ff"), None);
    }
}
