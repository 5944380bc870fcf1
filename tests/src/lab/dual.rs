//! The protocol lab (`tests/netns_protocols.rs`): the standard lab of `topology.rs`
//! with IPv6 beside IPv4 in every namespace, a dual-stack virtual server (UDP 500/4500, TCP
//! 443, ESP), responders that answer all of it over both families, and a DSR variant.
//!
//! ```text
//!  ns client                   ns gw (ikelb)                      ns bridge      ns b1..bN
//!  eth0 192.0.2.2/24 ─────── ext 192.0.2.1/24                int ─── gw ┐
//!       2001:db8:e::2/64         2001:db8:e::1/64            10.0.0.1/24 br0 ├ bN eth0 10.0.0.1N/24
//!   + 100.64.1.x/32              VIP 203.0.113.10/32         2001:db8:1::1/64 │   2001:db8:1::1N/64
//!   + 2001:db8:c::x/128          VIP6 2001:db8:ffff::10/128                   │   default via the gw
//!   default via the gw           2001:db8:c::/64 via 2001:db8:e::2            │
//!  DSR only: bk 10.0.0.254/24, 2001:db8:1::fe/64 ──────────────────────── cl ┘
//! ```
//!
//! * IPv6 is switched on after `Lab::build` (which builds IPv4-only namespaces) with duplicate
//!   address detection and router solicitations off: addresses are usable at once and the
//!   counters see no autoconfiguration noise. Neighbour discovery is real and crosses the
//!   XDP program (`pass/icmpv6`).
//! * Checksums are real as in the standard lab (senders have tx checksum offload off);
//!   receivers count IPv6 UDP checksum failures in `Udp6InCsumErrors` (`/proc/net/snmp6`).
//! * DSR (`Mode::Dsr`): the backends own both VIPs on `lo` (with `arp_ignore`/`arp_announce`,
//!   as a DSR real server must), their responders bind the VIPs (so replies leave from them),
//!   and their default routes point at the client namespace's second link `bk`, which joins
//!   the backends' segment: replies go straight to the clients and never cross the gateway.
//!   The client namespace has `rp_filter` off (replies from the VIP arrive on `bk`, while
//!   the route to the VIP leaves by `eth0`).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::traffic6::snmp6;
use super::{wait_for, Child, Lab, LabSpec, NetNs, Veth, GW_EXT, GW_INT, VIP};

/// The virtual server's IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10);
/// SSTP (the Always On VPN fallback) in the persistency group.
pub const TCP_PORT: u16 = 443;

const GW_EXT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 1);
const CLIENT_LINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 2);
const GW_INT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The client namespace's addresses on the backends' segment (DSR only).
const DSR_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const DSR_ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);

/// How the virtual server forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `mode: nat`: the gateway rewrites both ways.
    Nat,
    /// `mode: dsr`: MAC rewrite only, backends answer from the VIPs directly.
    Dsr,
}

/// Client `i`'s IPv6 address (2001:db8:c::1 onward).
pub fn client6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0xc,
        0,
        0,
        0,
        (i / 0xfff0) as u16,
        (i % 0xfff0) as u16 + 1,
    )
}

/// Backend `i`'s IPv6 address (2001:db8:1::11 onward, beside 10.0.0.11 onward).
pub fn backend6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11 + i as u16)
}

/// The built protocol lab. Fields drop in order: responders, the extra link, then the lab.
#[derive(Debug)]
pub struct DualLab {
    responders: Vec<Child>,
    _extra: Vec<Veth>,
    pub lab: Lab,
    pub mode: Mode,
    /// IPv6 client addresses, in order (beside `lab.clients`).
    pub clients6: Vec<Ipv6Addr>,
    /// IPv6 backend addresses, in `lab.backends` order.
    pub backends6: Vec<Ipv6Addr>,
}

/// Switches IPv6 on in `ns` for `ifaces` (made while it was off), without DAD and router
/// solicitations.
fn enable_ipv6(ns: &NetNs, ifaces: &[&str]) -> Result<()> {
    for conf in ["all", "default"].iter().chain(ifaces) {
        ns.sysctl(&format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
        ns.sysctl(&format!("net/ipv6/conf/{conf}/router_solicitations"), "0")?;
        ns.sysctl(&format!("net/ipv6/conf/{conf}/accept_ra"), "0")?;
        ns.sysctl(&format!("net/ipv6/conf/{conf}/disable_ipv6"), "0")?;
    }
    Ok(())
}

impl DualLab {
    /// Build the standard lab for `spec` (role `6`: namespaces `ik6<pid>n<k>-…`), then add
    /// IPv6 and, for DSR, the backends' own VIPs and their direct path to the clients.
    pub fn build(spec: &LabSpec, mode: Mode) -> Result<Self> {
        let spec = LabSpec {
            role: '6',
            ..spec.clone()
        };
        let lab = Lab::build(&spec)?;
        let clients6: Vec<Ipv6Addr> = (0..spec.clients).map(client6).collect();
        let backends6: Vec<Ipv6Addr> = (0..spec.backends).map(backend6).collect();

        enable_ipv6(&lab.client_ns, &["lo", "eth0"])?;
        enable_ipv6(&lab.gateway, &["lo", GW_EXT, GW_INT])?;
        let mut bridge_ports = vec!["gw", "br0"];
        bridge_ports.extend(lab.backends.iter().map(|b| b.name.as_str()));
        enable_ipv6(&lab.bridge, &bridge_ports)?;
        for b in &lab.backends {
            enable_ipv6(&b.ns, &["lo", "eth0"])?;
        }

        let mut batch = format!(
            "addr add {CLIENT_LINK6}/64 dev eth0 nodad\n\
             route add default via {GW_EXT6}\n"
        );
        for c in &clients6 {
            writeln!(batch, "addr add {c}/128 dev eth0 nodad").expect("write to String");
        }
        lab.client_ns.ip_batch(&batch)?;
        lab.gateway.ip_batch(&format!(
            "addr add {GW_EXT6}/64 dev {GW_EXT} nodad\n\
             addr add {VIP6}/128 dev {GW_EXT} nodad\n\
             addr add {GW_INT6}/64 dev {GW_INT} nodad\n\
             route add 2001:db8:c::/64 via {CLIENT_LINK6}\n"
        ))?;
        lab.gateway.sysctl("net/ipv6/conf/all/forwarding", "1")?;
        for (b, addr) in lab.backends.iter().zip(&backends6) {
            b.ns.ip_batch(&format!(
                "addr add {addr}/64 dev eth0 nodad\nroute add default via {GW_INT6}\n"
            ))?;
        }

        let mut extra = Vec::new();
        if mode == Mode::Dsr {
            extra.push(Veth::new((&lab.client_ns, "bk"), (&lab.bridge, "cl"))?);
            lab.bridge.ip(&["link", "set", "cl", "master", "br0"])?;
            enable_ipv6(&lab.client_ns, &["bk"])?;
            enable_ipv6(&lab.bridge, &["cl"])?;
            lab.client_ns.ip_batch(&format!(
                "addr add {DSR_ROUTER}/24 dev bk\naddr add {DSR_ROUTER6}/64 dev bk nodad\n"
            ))?;
            for conf in ["all", "default", "eth0", "bk"] {
                lab.client_ns
                    .sysctl(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
            }
            // The client namespace stands for the clients' side of the world: let its
            // second link take the replies to them (it forwards nothing itself).
            lab.client_ns.ethtool_features("bk", &[("gro", true)])?;
            for b in &lab.backends {
                b.ns.ip_batch(&format!(
                    "addr add {VIP}/32 dev lo\n\
                     addr add {VIP6}/128 dev lo nodad\n\
                     route replace default via {DSR_ROUTER}\n\
                     route replace default via {DSR_ROUTER6}\n"
                ))?;
                // A DSR real server must not answer ARP for the VIP it holds (the gateway
                // owns it on the wire): reply only for addresses of the asking interface,
                // announce with the interface's own address.
                b.ns.sysctl("net/ipv4/conf/all/arp_ignore", "1")?;
                b.ns.sysctl("net/ipv4/conf/all/arp_announce", "2")?;
            }
        }
        Ok(Self {
            responders: Vec::new(),
            _extra: extra,
            lab,
            mode,
            clients6,
            backends6,
        })
    }

    /// The daemon configuration: the standard lab's, with the dual-stack virtual server
    /// (both VIPs, TCP 443, the IPv6 backends) and the lab's mode.
    pub fn daemon_config(&self) -> String {
        let mut backends6 = String::new();
        for b in &self.backends6 {
            writeln!(backends6, "      - address: {b}").expect("write to String");
        }
        let base = self.lab.daemon_config();
        let mode = match self.mode {
            Mode::Nat => "mode: nat\n",
            Mode::Dsr => "mode: dsr\n",
        };
        base.replacen("mode: nat\n", mode, 1)
            .replacen(
                &format!("    vip: {VIP}\n"),
                &format!("    vip: [{VIP}, {VIP6}]\n    tcp_ports: [{TCP_PORT}]\n"),
                1,
            )
            .replacen("health_check:\n", &format!("{backends6}health_check:\n"), 1)
    }

    /// Start a responder in every backend (UDP 500/4500 and TCP 443 over both families, and
    /// ESP; bound to the VIPs in DSR) and wait until each listens.
    pub fn start_responders(&mut self, responder: &Path) -> Result<()> {
        for b in &self.lab.backends {
            let mut cmd = b.ns.command(responder);
            cmd.args(["--name", &b.name, "--ports", "500,4500", "--esp"]);
            cmd.args(["--tcp", &TCP_PORT.to_string()]);
            match self.mode {
                Mode::Nat => cmd.args(["--bind6", "::"]),
                Mode::Dsr => cmd.args(["--bind", &VIP.to_string(), "--bind6", &VIP6.to_string()]),
            };
            let log = self.lab.dir().join(format!("responder-{}.log", b.name));
            self.responders
                .push(Child::spawn(&format!("responder {}", b.name), cmd, log)?);
        }
        for (b, child) in self.lab.backends.iter().zip(&mut self.responders) {
            wait_for(
                &format!("responder {} to listen", b.name),
                Duration::from_secs(10),
                Duration::from_millis(20),
                || {
                    if let Some(status) = child.exit_status() {
                        anyhow::bail!(
                            "responder {} exited ({status}): {}",
                            b.name,
                            child.output_tail(10)
                        );
                    }
                    // UDP 500, 4500 and TCP 443, each over IPv4 and IPv6.
                    let out = b.ns.exec("ss", &["-Hln", "-u", "-t"])?;
                    let listening = out
                        .lines()
                        .filter(|l| [":500 ", ":4500 ", ":443 "].iter().any(|p| l.contains(p)))
                        .count();
                    Ok((listening == 6).then_some(()))
                },
            )?;
        }
        Ok(())
    }

    /// Start the daemon with [`DualLab::daemon_config`].
    pub fn start_daemon(&mut self, lb_ctl: &Path) -> Result<()> {
        let config = self.daemon_config();
        self.lab.start_daemon_with_config(lb_ctl, &config)
    }

    /// `Udp6InCsumErrors` of every namespace, as (role, count).
    pub fn udp6_csum_errors(&self) -> Result<Vec<(String, i64)>> {
        self.lab
            .namespaces()
            .into_iter()
            .map(|(role, ns)| {
                let snmp = ns.run(snmp6)??;
                let n = snmp
                    .iter()
                    .find(|(k, _)| k == "Udp6InCsumErrors")
                    .map_or(0, |(_, v)| *v);
                Ok((role.to_string(), n))
            })
            .collect()
    }

    /// `ip -s -j link` counters of `ifname` in `ns`: (rx packets, tx packets).
    pub fn link_packets(ns: &NetNs, ifname: &str) -> Result<(u64, u64)> {
        let v = ns.ip_json(&["-s", "link", "show", "dev", ifname])?;
        let stats = &v[0]["stats64"];
        let get = |dir: &str| stats[dir]["packets"].as_u64().context("no packet counter");
        let (rx, tx) = (get("rx")?, get("tx")?);
        ensure!(
            v.as_array().is_some_and(|a| a.len() == 1),
            "ip -s -j link show dev {ifname}: not one link"
        );
        Ok((rx, tx))
    }
}
