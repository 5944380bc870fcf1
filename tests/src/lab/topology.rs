//! The standard lab: IKEv2 clients, the ikelb gateway, and VPN servers behind it — over IPv4,
//! and over IPv6 beside it when [`LabSpec::ipv6`] asks (the protocol lab of
//! `tests/netns_protocols.rs`).
//!
//! ```text
//!  ns client                   ns gw (ikelb)                    ns bridge      ns b1..bN
//!  eth0 192.0.2.2/24 ─────── ext 192.0.2.1/24              int ─── gw ┐
//!      [2001:db8:e::2/64]        [2001:db8:e::1/64]        10.0.0.1/24 br0 ├ bN eth0 10.0.0.1N/24
//!   + 100.64.1.1–…/32            + VIP 203.0.113.10/32     [2001:db8:1::1/64] │  [2001:db8:1::1N/64]
//!   [+ 2001:db8:c::1–…/128]      [+ VIP6 2001:db8:ffff::10/128]               │  default via the gw
//!   default via the gw           100.64/16 via 192.0.2.2                      │
//!                                [2001:db8:c::/64 via 2001:db8:e::2]          │
//!                                forwarding on                                │
//!  DSR only: bk 10.0.0.254/24 [2001:db8:1::fe/64] ──────────────────────── cl ┘
//! ```
//!
//! (In brackets: with IPv6.)
//!
//! * **Clients**: one namespace stands for the internet: its single veth carries every client
//!   address (100.64.1.1, .2, … as /32s, 250 per /24; 2001:db8:c::1 onward as /128s), the way
//!   a NATing ISP router would present many subscribers. A client is a socket bound to one of
//!   those addresses.
//! * **VIP on the gateway's external interface** (a /32 on `ext`, VIP6 a /128), as an
//!   appliance owns its VIP: the gateway answers ARP/ND and ping for it, and what the XDP
//!   program passes (other ports, other protocols) meets the gateway's own stack — a
//!   port-unreachable — instead of being routed back out. It also makes the negative control
//!   sharp: before the daemon runs, a datagram to VIP:500 is the gateway's own business and no
//!   backend ever answers.
//! * **Backends use the client's real address** ("Use Client IP"): their default routes point
//!   at the gateway's internal addresses, so their replies to the clients return through it.
//! * **veth and XDP**: a frame that XDP_REDIRECT puts into a veth is dropped unless the
//!   *receiving* end has an XDP program or GRO (it needs NAPI), so GRO is on at the ends that
//!   receive redirected frames: the client's `eth0` (replies) and the bridge's `gw` port
//!   (requests). Locally generated UDP on veth carries only the pseudo-header sum
//!   (CHECKSUM_PARTIAL), which would hide a wrong incremental checksum update, so the senders
//!   (client `eth0`, backend `eth0`) have tx checksum offload off and every UDP checksum on the
//!   wire is real; receivers verify it and count failures in `Udp: InCsumErrors` (IPv6:
//!   `Udp6InCsumErrors` in `/proc/net/snmp6`).
//! * **IPv6** is off unless asked for (router solicitations would only add noise). When asked,
//!   it is switched on in every namespace before any link exists, without duplicate address
//!   detection and router solicitations: addresses are usable at once and the counters see no
//!   autoconfiguration. Neighbour discovery is real and crosses the XDP program
//!   (`pass/icmpv6`).
//! * **DSR** ([`Mode::Dsr`]): the backends own the VIPs on `lo` (with
//!   `arp_ignore`/`arp_announce`, as a DSR real server must), their responders bind the VIPs
//!   (so replies leave from them), and their default routes point at the client namespace's
//!   second link `bk`, which joins the backends' segment: replies go straight to the clients
//!   and never cross the gateway. The client namespace has `rp_filter` off (replies from the
//!   VIP arrive on `bk`, while the route to the VIP leaves by `eth0`).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::responder::Stats;
use super::{reap_stale, wait_for, BpfFs, Child, NetNs, RunPrefix, TempDir, UdpProbe, Veth};

/// The virtual server's address.
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The virtual server's IPv6 address (with [`LabSpec::ipv6`]).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10);
/// The gateway's interface toward the clients.
pub const GW_EXT: &str = "ext";
/// The gateway's interface toward the backends.
pub const GW_INT: &str = "int";
/// The persistency group: IKE and NAT-T.
pub const BACKEND_PORTS: [u16; 2] = [500, 4500];
/// SSTP (the Always On VPN fallback) in the persistency group (with [`LabSpec::sstp`]).
pub const TCP_PORT: u16 = 443;

const GW_EXT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT_LINK_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const GW_INT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GW_EXT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 1);
const CLIENT_LINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 2);
const GW_INT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The client namespace's addresses on the backends' segment (DSR only).
const DSR_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const DSR_ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);

/// How the virtual server forwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// `mode: nat`: the gateway rewrites both ways.
    #[default]
    Nat,
    /// `mode: dsr`: MAC rewrite only, backends answer from the VIPs directly.
    Dsr,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Prefix role letter: `t` tests, `d` demo, `6` protocol tests (see [`RunPrefix`]).
    pub role: char,
    /// Number of clients (100.64.1.1 onward; with IPv6 as many more from 2001:db8:c::1).
    pub clients: usize,
    /// Number of backends (10.0.0.11 onward, with IPv6 also 2001:db8:1::11 onward), at most
    /// 200.
    pub backends: usize,
    /// IPv6 beside IPv4 in every namespace, and a dual-stack virtual server
    /// (`vip: [VIP, VIP6]`, the IPv6 backends after the IPv4 ones).
    pub ipv6: bool,
    /// TCP [`TCP_PORT`] in the persistency group (`tcp_ports`), answered by the responders.
    pub sstp: bool,
    /// The virtual server's `mode`, and the backends' side of it.
    pub mode: Mode,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            role: 't',
            clients: 250,
            backends: 3,
            ipv6: false,
            sstp: false,
            mode: Mode::Nat,
        }
    }
}

/// One VPN server.
#[derive(Debug)]
pub struct BackendNs {
    /// `b1`, `b2`, …: the name its responder answers with.
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: NetNs,
}

/// The built lab. Fields drop in declaration order: processes first, then links, namespaces,
/// the bpffs and the directory.
#[derive(Debug)]
pub struct Lab {
    pub(super) daemon: Option<Child>,
    responders: Vec<Child>,
    _veths: Vec<Veth>,
    /// The internet: every client address lives here.
    pub client_ns: NetNs,
    /// The ikelb gateway.
    pub gateway: NetNs,
    /// The internal segment's switch.
    pub bridge: NetNs,
    pub backends: Vec<BackendNs>,
    /// Client addresses, in order.
    pub clients: Vec<Ipv4Addr>,
    /// IPv6 client addresses, in order (empty without [`LabSpec::ipv6`]).
    pub clients6: Vec<Ipv6Addr>,
    /// IPv6 backend addresses, in `backends` order (empty without [`LabSpec::ipv6`]).
    pub backends6: Vec<Ipv6Addr>,
    pub(super) spec: LabSpec,
    pub(super) bpffs: BpfFs,
    pub(super) dir: TempDir,
    pub(super) prefix: RunPrefix,
}

fn client_addr(i: usize) -> Ipv4Addr {
    assert!(i < 250 * 254, "too many clients");
    Ipv4Addr::new(100, 64, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
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

/// `line` appended to `batch` (a `String` never fails to take it).
fn push(batch: &mut String, line: std::fmt::Arguments) {
    batch.write_fmt(line).expect("write to String");
    batch.push('\n');
}

impl Lab {
    /// Build the namespaces, links, addresses and routes of both families asked for. No
    /// process runs yet.
    pub fn build(spec: &LabSpec) -> Result<Self> {
        ensure!(
            spec.backends >= 1 && spec.backends <= 200,
            "lab spec: {} backends (1..=200)",
            spec.backends
        );
        ensure!(spec.clients >= 1, "lab spec: at least one client");
        let (v6, dsr) = (spec.ipv6, spec.mode == Mode::Dsr);
        reap_stale();
        let prefix = RunPrefix::new(spec.role);
        let dir = TempDir::new(&prefix)?;
        let bpffs = BpfFs::mount_in(&dir)?;

        let netns = |what: &str| -> Result<NetNs> {
            let ns = NetNs::new(prefix.name(what))?;
            if v6 {
                // Before any link exists: every link made from now on inherits `default`.
                ns.enable_ipv6(&["lo"])?;
            }
            Ok(ns)
        };
        let client_ns = netns("client")?;
        let gateway = netns("gw")?;
        let bridge = netns("bridge")?;
        let mut backends = Vec::with_capacity(spec.backends);
        for i in 0..spec.backends {
            let name = format!("b{}", i + 1);
            backends.push(BackendNs {
                addr: Ipv4Addr::new(10, 0, 0, 11 + i as u8),
                ns: netns(&name)?,
                name,
            });
        }
        let clients: Vec<Ipv4Addr> = (0..spec.clients).map(client_addr).collect();
        let (clients6, backends6): (Vec<Ipv6Addr>, Vec<Ipv6Addr>) = if v6 {
            (
                (0..spec.clients).map(client6).collect(),
                (0..spec.backends).map(backend6).collect(),
            )
        } else {
            (Vec::new(), Vec::new())
        };

        let mut veths = vec![
            Veth::down((&client_ns, "eth0"), (&gateway, GW_EXT))?,
            Veth::down((&gateway, GW_INT), (&bridge, "gw"))?,
        ];
        let mut ports = vec!["gw".to_string()];
        for b in &backends {
            veths.push(Veth::down((&b.ns, "eth0"), (&bridge, &b.name))?);
            ports.push(b.name.clone());
        }
        if dsr {
            veths.push(Veth::down((&client_ns, "bk"), (&bridge, "cl"))?);
            ports.push("cl".into());
        }
        let mut batch = String::from("link add br0 type bridge stp_state 0 forward_delay 0\n");
        for port in &ports {
            push(&mut batch, format_args!("link set {port} up"));
            push(&mut batch, format_args!("link set {port} master br0"));
        }
        batch.push_str("link set br0 up\n");
        bridge.ip_batch(&batch)?;

        let mut batch = format!(
            "link set eth0 up\naddr add {CLIENT_LINK_ADDR}/24 dev eth0\n\
             route add default via {GW_EXT_ADDR}\n"
        );
        for c in &clients {
            push(&mut batch, format_args!("addr add {c}/32 dev eth0"));
        }
        if v6 {
            push(
                &mut batch,
                format_args!("addr add {CLIENT_LINK6}/64 dev eth0 nodad"),
            );
            push(&mut batch, format_args!("route add default via {GW_EXT6}"));
            for c in &clients6 {
                push(&mut batch, format_args!("addr add {c}/128 dev eth0 nodad"));
            }
        }
        if dsr {
            push(&mut batch, format_args!("link set bk up"));
            push(&mut batch, format_args!("addr add {DSR_ROUTER}/24 dev bk"));
            if v6 {
                push(
                    &mut batch,
                    format_args!("addr add {DSR_ROUTER6}/64 dev bk nodad"),
                );
            }
        }
        client_ns.ip_batch(&batch)?;

        let mut batch = format!(
            "link set {GW_EXT} up\n\
             link set {GW_INT} up\n\
             addr add {GW_EXT_ADDR}/24 dev {GW_EXT}\n\
             addr add {VIP}/32 dev {GW_EXT}\n\
             addr add {GW_INT_ADDR}/24 dev {GW_INT}\n\
             route add 100.64.0.0/16 via {CLIENT_LINK_ADDR}\n"
        );
        if v6 {
            write!(
                batch,
                "addr add {GW_EXT6}/64 dev {GW_EXT} nodad\n\
                 addr add {VIP6}/128 dev {GW_EXT} nodad\n\
                 addr add {GW_INT6}/64 dev {GW_INT} nodad\n\
                 route add 2001:db8:c::/64 via {CLIENT_LINK6}\n"
            )
            .expect("write to String");
        }
        gateway.ip_batch(&batch)?;
        gateway.sysctl("net/ipv4/ip_forward", "1")?;
        if v6 {
            gateway.sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }

        for (i, b) in backends.iter().enumerate() {
            let (via, via6) = if dsr {
                (DSR_ROUTER, DSR_ROUTER6)
            } else {
                (GW_INT_ADDR, GW_INT6)
            };
            let mut batch = format!(
                "link set eth0 up\naddr add {}/24 dev eth0\nroute add default via {via}\n",
                b.addr
            );
            if v6 {
                push(
                    &mut batch,
                    format_args!("addr add {}/64 dev eth0 nodad", backends6[i]),
                );
                push(&mut batch, format_args!("route add default via {via6}"));
            }
            if dsr {
                push(&mut batch, format_args!("addr add {VIP}/32 dev lo"));
                if v6 {
                    push(&mut batch, format_args!("addr add {VIP6}/128 dev lo nodad"));
                }
            }
            b.ns.ip_batch(&batch)?;
            if dsr {
                // A DSR real server must not answer ARP for the VIP it holds (the gateway
                // owns it on the wire): reply only for addresses of the asking interface,
                // announce with the interface's own address.
                b.ns.sysctl("net/ipv4/conf/all/arp_ignore", "1")?;
                b.ns.sysctl("net/ipv4/conf/all/arp_announce", "2")?;
            }
            b.ns.ethtool_features("eth0", &[("tx", false)])?;
        }
        client_ns.ethtool_features("eth0", &[("tx", false), ("gro", true)])?;
        bridge.ethtool_features("gw", &[("gro", true)])?;
        if dsr {
            for conf in ["all", "default", "eth0", "bk"] {
                client_ns.sysctl(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
            }
            // The client namespace stands for the clients' side of the world: let its
            // second link take the replies to them (it forwards nothing itself).
            client_ns.ethtool_features("bk", &[("gro", true)])?;
        }

        Ok(Self {
            daemon: None,
            responders: Vec::new(),
            _veths: veths,
            client_ns,
            gateway,
            bridge,
            backends,
            clients,
            clients6,
            backends6,
            spec: spec.clone(),
            bpffs,
            dir,
            prefix,
        })
    }

    pub fn prefix(&self) -> &RunPrefix {
        &self.prefix
    }

    /// What the lab was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// This run's scratch directory (config, logs, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every namespace of the lab with a short role name, for per-namespace checks.
    pub fn namespaces(&self) -> Vec<(&str, &NetNs)> {
        let mut v = vec![
            ("client", &self.client_ns),
            ("gw", &self.gateway),
            ("bridge", &self.bridge),
        ];
        v.extend(self.backends.iter().map(|b| (b.name.as_str(), &b.ns)));
        v
    }

    /// Start `ikelb-responder` in every backend namespace: [`BACKEND_PORTS`] and ESP, with
    /// [`LabSpec::sstp`] TCP [`TCP_PORT`], over both families with [`LabSpec::ipv6`], bound to
    /// the VIPs in DSR. Waits until each answers: in NAT mode, asked on every UDP port directly
    /// from the gateway (which is on their segment), and, where that cannot see every listener
    /// (TCP, IPv6, the VIPs of DSR), until `ss` lists them all.
    pub fn start_responders(&mut self, responder: &Path) -> Result<()> {
        let LabSpec {
            ipv6, sstp, mode, ..
        } = self.spec;
        let ports: Vec<String> = BACKEND_PORTS.iter().map(u16::to_string).collect();
        for b in &self.backends {
            let mut cmd = b.ns.command(responder);
            cmd.args(["--name", &b.name, "--ports", &ports.join(","), "--esp"]);
            if sstp {
                cmd.args(["--tcp", &TCP_PORT.to_string()]);
            }
            match (mode, ipv6) {
                (Mode::Nat, false) => {}
                (Mode::Nat, true) => {
                    cmd.args(["--bind6", "::"]);
                }
                (Mode::Dsr, _) => {
                    cmd.args(["--bind", &VIP.to_string()]);
                    if ipv6 {
                        cmd.args(["--bind6", &VIP6.to_string()]);
                    }
                }
            }
            let log = self.dir.path().join(format!("responder-{}.log", b.name));
            self.responders
                .push(Child::spawn(&format!("responder {}", b.name), cmd, log)?);
        }
        if sstp || ipv6 || mode == Mode::Dsr {
            self.wait_for_listeners()?;
        }
        if mode == Mode::Dsr {
            return Ok(());
        }
        let targets: Vec<(String, SocketAddrV4)> = self
            .backends
            .iter()
            .flat_map(|b| BACKEND_PORTS.map(|p| (b.name.clone(), SocketAddrV4::new(b.addr, p))))
            .collect();
        self.gateway.run(|| -> Result<()> {
            let probe = UdpProbe::bind(GW_INT_ADDR)?;
            for (name, to) in &targets {
                let reply = wait_for(
                    &format!("responder {name} on {to}"),
                    Duration::from_secs(10),
                    Duration::from_millis(20),
                    || probe.stats(*to, Duration::from_millis(100)),
                )?;
                ensure!(reply.backend == *name, "{to} answered as {}", reply.backend);
            }
            Ok(())
        })?
    }

    /// Until `ss` lists every responder's UDP (and TCP) sockets of every family; fails at
    /// once, with its output, when a responder has exited.
    fn wait_for_listeners(&mut self) -> Result<()> {
        let mut ports: Vec<String> = BACKEND_PORTS.iter().map(|p| format!(":{p} ")).collect();
        if self.spec.sstp {
            ports.push(format!(":{TCP_PORT} "));
        }
        let want = ports.len() * if self.spec.ipv6 { 2 } else { 1 };
        for (b, child) in self.backends.iter().zip(&mut self.responders) {
            wait_for(
                &format!("responder {} to listen", b.name),
                Duration::from_secs(10),
                Duration::from_millis(20),
                || {
                    if let Some(status) = child.exit_status() {
                        bail!(
                            "responder {} exited ({status}): {}",
                            b.name,
                            child.output_tail(10)
                        );
                    }
                    let out = b.ns.exec("ss", &["-Hln", "-u", "-t"])?;
                    let listening = out
                        .lines()
                        .filter(|l| ports.iter().any(|p| l.contains(p.as_str())))
                        .count();
                    Ok((listening == want).then_some(()))
                },
            )?;
        }
        Ok(())
    }

    /// Every backend's responder counters, asked directly from the gateway (which reaches
    /// them on the internal segment without going through the VIP); `None` where a responder
    /// does not answer.
    pub fn responder_stats(&self) -> Result<Vec<Option<Stats>>> {
        let targets: Vec<SocketAddrV4> = self
            .backends
            .iter()
            .map(|b| SocketAddrV4::new(b.addr, BACKEND_PORTS[0]))
            .collect();
        self.gateway.run(|| -> Result<Vec<Option<Stats>>> {
            let probe = UdpProbe::bind(GW_INT_ADDR)?;
            targets
                .iter()
                .map(|&to| probe.stats(to, Duration::from_millis(200)))
                .collect()
        })?
    }

    /// Stop the responder of backend `i` (e.g. to see health checks take it out).
    pub fn stop_responder(&mut self, i: usize) -> Result<()> {
        self.responders[i].stop(Duration::from_secs(2)).map(drop)
    }

    /// `Udp: InCsumErrors` of every namespace, as (role, count).
    pub fn udp_csum_errors(&self) -> Result<Vec<(String, i64)>> {
        self.namespaces()
            .into_iter()
            .map(|(role, ns)| Ok((role.to_string(), ns.snmp()?.get("Udp.InCsumErrors"))))
            .collect()
    }

    /// `Udp6InCsumErrors` of every namespace (`/proc/net/snmp6`: one `name value` per line),
    /// as (role, count).
    pub fn udp6_csum_errors(&self) -> Result<Vec<(String, i64)>> {
        self.namespaces()
            .into_iter()
            .map(|(role, ns)| {
                let text = ns.proc_net("snmp6")?;
                let n = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
                    .map_or(Ok(0), |v| v.trim().parse())
                    .with_context(|| format!("{role}: Udp6InCsumErrors in /proc/net/snmp6"))?;
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
