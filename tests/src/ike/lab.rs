//! The interop lab: strongSwan initiators behind a NAT router reach strongSwan responders
//! through the gateway's VIP, and ping a host behind the responders through their tunnels.
//!
//! ```text
//!  ns c00…cNN              ns router (the lab's        ns gw             ns b1…bM                ns host
//!                          "internet" namespace)
//!  eth0 10.1.0.10+i/24 ─┐  lan 10.1.0.1/24 (bridge)    ext 192.0.2.1     eth0 10.0.0.11…/24      br0 10.200.0.1/24
//!  charon: initiator    ├─ cNN ports                   + VIP             eth1 10.200.0.11… ───── bM ports
//!  ping 10.200.0.1      │  eth0 192.0.2.2/24 ───────── int 10.0.0.1 ──── charon: responder       10.100.i.0/24 via bi
//!  through the tunnel   ┘  + 100.64.1.1…K/32           ikelb, or nft      pool 10.100.i.0/24
//!                          snat to 100.64.1.1-K persistent                default via 10.0.0.1
//! ```
//!
//! * The gateway, the backends and the router's uplink are the standard [`Lab`]: the gateway is
//!   configured and started exactly as an operator would ([`Lab::start_daemon`] writes a config
//!   file and runs `lb-ctl daemon --config`), with both health probe types (`probes: [icmp,
//!   ike]`: the responders speak IKE). For the control runs an nft DNAT takes ikelb's place
//!   ([`Gateway`]).
//! * The router masquerades the clients onto K public addresses with `persistent`, so a client
//!   keeps one public address for UDP 500 and 4500 and several clients share each address, as
//!   behind a carrier NAT. ikelb's persistence key is that public address.
//! * Every client is NATed, so every client and responder sees NAT and IKE moves to UDP 4500
//!   after IKE_SA_INIT; ESP travels inside UDP 4500 (kernel-libipsec does no raw ESP).
//! * Responder i hands out virtual IPs from 10.100.i.0/24, so a client's inner address says
//!   which responder serves it; the host routes each pool back to its responder.
//! * Checksums are real on the wire: tx checksum offload is off on every interface where UDP
//!   originates (clients' and responders' `eth0`, the latter done by [`Lab`]; the gateway's
//!   `int`, where ikelb's IKE health probes leave), so a receiver
//!   verifies every UDP checksum and counts failures in `Udp: InCsumErrors`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::charon::{Charon, CharonFiles, Fragmentation, Initiation};
use super::log::{CharonLog, Received};
use super::pki::{client_id, Pki};
use super::sas::IkeSa;
use crate::lab::{control, wait_for, Child, Lab, LabSpec, NetNs, Snmp, Veth, GW_INT, VIP};

/// The network behind the responders: what clients reach through their tunnels.
pub const HOST_NET: &str = "10.200.0.0/24";
/// The host behind the responders that clients ping.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The router's client-side address; client i is 10.1.0.(10 + i).
const ROUTER_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The router's address on the second client subnet, the network clients roam to
/// ([`IkeLab::roam`]).
const ROUTER_ROAMED_ADDR: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
/// Name of the environment variable that, set to a directory, makes every lab save its
/// peers' logs there when it is torn down.
pub const LOGS_ENV: &str = "IKELB_INTEROP_LOGS";
/// Seed of the nft control gateways' hash (any constant: it only has to be the same for
/// both ports).
const NFT_SEED: &str = "0x5eed";

/// What stands between the clients and the responders.
#[derive(Clone, Debug)]
pub enum Gateway {
    /// ikelb: `lb-ctl daemon --config FILE` with this `lb-ctl`.
    Ikelb(PathBuf),
    /// Control: nft DNAT that hashes the client's source address alone to pick the responder,
    /// for both ports (what ikelb does, done by netfilter).
    NftSourceHash,
    /// Negative control: the same hash, but UDP 4500 goes to the *next* responder, so every
    /// client's IKE_AUTH reaches a responder that never saw its IKE_SA_INIT (an L4 balancer
    /// without a persistency group across ports).
    NftSplitPorts,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct IkeLabSpec {
    /// Initiators (at most 200).
    pub clients: usize,
    /// Public addresses the router masquerades them onto (at least 2).
    pub nat_addrs: usize,
    /// Responders behind the gateway (at most 9).
    pub responders: usize,
    pub fragmentation: Fragmentation,
    pub gateway: Gateway,
    /// The initiators' dead peer detection delay (`dpd_delay`); none by default.
    pub client_dpd: Option<Duration>,
    /// MOBIKE (RFC 4555) on the responders and the initiators, the responders announcing no
    /// address of their own ([`CharonFiles::responder`]); off on the responders otherwise.
    pub mobike: bool,
}

/// One initiator.
#[derive(Debug)]
pub struct Client {
    pub id: String,
    /// Its private address behind the router.
    pub addr: Ipv4Addr,
    pub charon: Charon,
}

/// One responder.
#[derive(Debug)]
pub struct Responder {
    /// The lab's backend name (`b1`, …).
    pub name: String,
    pub addr: Ipv4Addr,
    /// The virtual IPs it hands out.
    pub pool: (Ipv4Addr, u8),
    pub charon: Charon,
}

/// The built lab. Fields drop in declaration order: charons first, then links and namespaces,
/// then the standard lab (daemon, gateway, backends, directory).
#[derive(Debug)]
pub struct IkeLab {
    pub clients: Vec<Client>,
    pub responders: Vec<Responder>,
    _veths: Vec<Veth>,
    client_ns: Vec<NetNs>,
    pub host: NetNs,
    pub lab: Lab,
    pub spec: IkeLabSpec,
}

/// A ping through one tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
}

impl IkeLab {
    /// Build the namespaces and links, set up the gateway, start every charon and load its
    /// configuration. No IKE SA exists yet.
    pub fn build(spec: IkeLabSpec) -> Result<Self> {
        Self::build_as('s', spec)
    }

    /// [`IkeLab::build`] under another run-prefix role letter (the demo's `d`: its namespaces
    /// then never share a prefix with the tests').
    pub fn build_as(role: char, spec: IkeLabSpec) -> Result<Self> {
        Self::build_with_config(role, spec, |config| config)
    }

    /// [`IkeLab::build_as`] with the daemon's configuration ([`Lab::daemon_config`]) passed
    /// through `config` first (extra keys, a backend left out to add at runtime, …). Only
    /// [`Gateway::Ikelb`] runs a daemon; the other gateways ignore it.
    pub fn build_with_config(
        role: char,
        spec: IkeLabSpec,
        config: impl FnOnce(String) -> String,
    ) -> Result<Self> {
        ensure!((1..=200).contains(&spec.clients), "1..=200 clients");
        ensure!((2..=250).contains(&spec.nat_addrs), "2..=250 NAT addresses");
        ensure!((1..=9).contains(&spec.responders), "1..=9 responders");
        let pki = Pki::get(spec.clients)?;
        let mut lab = Lab::build(&LabSpec {
            role,
            clients: spec.nat_addrs,
            backends: spec.responders,
            ..LabSpec::default()
        })?;
        let mut veths = Vec::new();

        // The router: the lab's internet namespace, which already holds the public addresses.
        let router = &lab.client_ns;
        router.ip_batch(&format!(
            "link add lan type bridge stp_state 0 forward_delay 0\n\
             link set lan up\n\
             addr add {ROUTER_LAN_ADDR}/24 dev lan\n"
        ))?;
        router.sysctl("net/ipv4/ip_forward", "1")?;
        let (first, last) = (lab.clients[0], lab.clients[spec.nat_addrs - 1]);
        nft(
            router,
            &format!(
                "table ip ikelb_interop {{\n\
                 \x20 chain postrouting {{\n\
                 \x20   type nat hook postrouting priority srcnat; policy accept;\n\
                 \x20   ip saddr 10.1.0.0/24 oifname \"eth0\" snat to {first}-{last} persistent\n\
                 \x20 }}\n\
                 }}\n"
            ),
        )?;

        let mut client_ns = Vec::with_capacity(spec.clients);
        let mut ports = String::new();
        for i in 0..spec.clients {
            let port = format!("c{i:02}");
            let ns = NetNs::new(lab.prefix().name(&port))?;
            veths.push(Veth::new((router, &port), (&ns, "eth0"))?);
            writeln!(ports, "link set {port} master lan").expect("write to String");
            ns.ip_batch(&format!(
                "addr add {}/24 dev eth0\nroute add default via {ROUTER_LAN_ADDR}\n",
                client_addr(i)
            ))?;
            ns.ethtool_features("eth0", &[("tx", false)])?;
            client_ns.push(ns);
        }
        router.ip_batch(&ports)?;

        // The host behind the responders, one link to each.
        let host = NetNs::new(lab.prefix().name("host"))?;
        host.ip_batch(&format!(
            "link add br0 type bridge stp_state 0 forward_delay 0\n\
             link set br0 up\n\
             addr add {HOST_ADDR}/24 dev br0\n"
        ))?;
        for (i, b) in lab.backends.iter().enumerate() {
            veths.push(Veth::new((&b.ns, "eth1"), (&host, &b.name))?);
            let (pool, len) = pool(i);
            host.ip_batch(&format!(
                "link set {} master br0\nroute add {pool}/{len} via {}\n",
                b.name,
                responder_inner_addr(i)
            ))?;
            b.ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", responder_inner_addr(i)),
                "dev",
                "eth1",
            ])?;
            b.ns.ethtool_features("eth1", &[("tx", false)])?;
            b.ns.sysctl("net/ipv4/ip_forward", "1")?;
        }

        // The gateway originates UDP too: ikelb's IKE health probes leave from `int`.
        lab.gateway.ethtool_features(GW_INT, &[("tx", false)])?;

        let identity: Vec<usize> = (0..spec.responders).collect();
        match &spec.gateway {
            Gateway::Ikelb(lb_ctl) => {
                // Real IKE responders: both probe types, the product's default (the plain
                // lab's backends answer no IKE and ping only).
                let text = config(control::with_probes(&lab.daemon_config(), "[icmp, ike]"));
                lab.start_daemon_with_config(lb_ctl, &text)?
            }
            Gateway::NftSourceHash => nft(&lab.gateway, &nft_dnat(&lab, &identity, 0))?,
            Gateway::NftSplitPorts => nft(&lab.gateway, &nft_dnat(&lab, &identity, 1))?,
        }

        // Start every charon, then wait for all: their start-ups overlap.
        let mut responders = Vec::with_capacity(spec.responders);
        for (i, b) in lab.backends.iter().enumerate() {
            let dir = lab.dir().join(format!("charon-{}", b.name));
            std::fs::create_dir_all(&dir)?;
            let (net, len) = pool(i);
            let files =
                CharonFiles::responder(&dir, &pki, &format!("{net}/{len}"), HOST_NET, spec.mobike);
            responders.push(Responder {
                name: b.name.clone(),
                addr: b.addr,
                pool: pool(i),
                charon: Charon::spawn(&b.name, &b.ns, dir, &files)?,
            });
        }
        let mut clients = Vec::with_capacity(spec.clients);
        for (i, ns) in client_ns.iter().enumerate() {
            let dir = lab.dir().join(format!("charon-c{i:02}"));
            std::fs::create_dir_all(&dir)?;
            let files = CharonFiles::initiator(&dir, &pki, i, VIP, HOST_NET, spec.fragmentation);
            let files = match spec.client_dpd {
                Some(delay) => files.with_dpd(delay),
                None => files,
            };
            let files = if spec.mobike {
                files.with_mobike()
            } else {
                files
            };
            clients.push(Client {
                id: client_id(i),
                addr: client_addr(i),
                charon: Charon::spawn(&format!("c{i:02}"), ns, dir, &files)?,
            });
        }
        let mut this = Self {
            clients,
            responders,
            _veths: veths,
            client_ns,
            host,
            lab,
            spec,
        };
        for charon in this.charons_mut() {
            charon.ready(Duration::from_secs(20))?;
        }
        Ok(this)
    }

    fn charons_mut(&mut self) -> impl Iterator<Item = &mut Charon> {
        self.responders
            .iter_mut()
            .map(|r| &mut r.charon)
            .chain(self.clients.iter_mut().map(|c| &mut c.charon))
    }

    /// Client `i`'s namespace.
    pub fn client_ns(&self, i: usize) -> &NetNs {
        &self.client_ns[i]
    }

    /// `swanctl --initiate` on the given clients, all at once (one thread each), each given
    /// `timeout`; results in the order of `which`.
    pub fn initiate(&self, which: &[usize], timeout: Duration) -> Vec<Initiation> {
        thread::scope(|s| {
            let running: Vec<_> = which
                .iter()
                .map(|&i| s.spawn(move || self.clients[i].charon.initiate("vpn", timeout)))
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("initiate thread panicked"))
                .collect()
        })
    }

    /// [`IkeLab::initiate`] on every client.
    pub fn initiate_all(&self, timeout: Duration) -> Vec<Initiation> {
        let all: Vec<usize> = (0..self.clients.len()).collect();
        self.initiate(&all, timeout)
    }

    /// From every client, `count` echo requests to [`HOST_ADDR`] (through the tunnel: the
    /// route to it exists only via the virtual IP), all clients at once.
    pub fn ping_all(&self, count: u32) -> Vec<PingResult> {
        thread::scope(|s| {
            let running: Vec<_> = self
                .client_ns
                .iter()
                .map(|ns| s.spawn(move || ping(ns, HOST_ADDR, count)))
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("ping thread panicked"))
                .collect()
        })
    }

    /// The router rebinds client `i` to public address `public` (added to its uplink if it
    /// is new), as a NAT that lost its mapping or moved the client to another address of its
    /// pool: a rule ahead of the masquerade, and the client's conntrack entries flushed, so its
    /// next packet leaves from `public`. The gateway routes all of 100.64.0.0/16 to the router.
    pub fn rebind(&self, i: usize, public: Ipv4Addr) -> Result<()> {
        let router = &self.lab.client_ns;
        let has = router.ip(&["-4", "addr", "show", "dev", "eth0"])?;
        if !has.contains(&format!(" {public}/32 ")) {
            router.ip(&["addr", "add", &format!("{public}/32"), "dev", "eth0"])?;
        }
        let client = client_addr(i);
        nft(
            router,
            &format!(
                "insert rule ip ikelb_interop postrouting ip saddr {client} oifname \"eth0\" \
                 snat to {public}\n"
            ),
        )?;
        // Exit status 1 when nothing matched: not an error here.
        let _ = router
            .command("conntrack")
            .args(["-D", "-s", &client.to_string()])
            .output()
            .context("cannot run conntrack")?;
        Ok(())
    }

    /// Client `i` moves to another network, as a laptop going from Wi-Fi to LTE: it gets
    /// address [`roamed_addr`]`(i)` on a second subnet of the router's LAN, its default route
    /// goes through the router's address there, and its old address is removed — one `ip`
    /// batch, so its charon sees the address it used vanish. The router NATs the new address
    /// to `public` (added to its uplink if it is new). With MOBIKE, charon moves its SAs to the
    /// new path with UPDATE_SA_ADDRESSES (RFC 4555 §3.5); without, its SA is stuck on an
    /// address it no longer has. Once per client. The new private address.
    pub fn roam(&self, i: usize, public: Ipv4Addr) -> Result<Ipv4Addr> {
        let router = &self.lab.client_ns;
        let lan = router.ip(&["-4", "addr", "show", "dev", "lan"])?;
        if !lan.contains(&format!(" {ROUTER_ROAMED_ADDR}/24 ")) {
            router.ip(&[
                "addr",
                "add",
                &format!("{ROUTER_ROAMED_ADDR}/24"),
                "dev",
                "lan",
            ])?;
        }
        let uplink = router.ip(&["-4", "addr", "show", "dev", "eth0"])?;
        if !uplink.contains(&format!(" {public}/32 ")) {
            router.ip(&["addr", "add", &format!("{public}/32"), "dev", "eth0"])?;
        }
        let (old, new) = (client_addr(i), roamed_addr(i));
        nft(
            router,
            &format!(
                "insert rule ip ikelb_interop postrouting ip saddr {new} oifname \"eth0\" \
                 snat to {public}\n"
            ),
        )?;
        self.client_ns[i].ip_batch(&format!(
            "addr add {new}/24 dev eth0\n\
             route replace default via {ROUTER_ROAMED_ADDR}\n\
             addr del {old}/24 dev eth0\n"
        ))?;
        Ok(new)
    }

    /// Kill responder `i`'s charon as a crash would (SIGKILL: no DELETE reaches its
    /// clients). The server stays up: it answers ping, and UDP 500 with port unreachable.
    pub fn kill_responder_charon(&mut self, i: usize) -> Result<()> {
        self.responders[i].charon.kill(Duration::from_secs(10))
    }

    /// Start responder `i`'s charon again with the configuration it had (no SAs: its
    /// clients went elsewhere) and wait until it has loaded it.
    pub fn restart_responder_charon(&mut self, i: usize) -> Result<()> {
        let pki = Pki::get(self.spec.clients)?;
        let b = &self.lab.backends[i];
        let dir = self.lab.dir().join(format!("charon-{}", b.name));
        // The dead instance's vici socket: `ready` must wait for the new one.
        let _ = std::fs::remove_file(dir.join("charon.vici"));
        let (net, len) = pool(i);
        let files = CharonFiles::responder(
            &dir,
            &pki,
            &format!("{net}/{len}"),
            HOST_NET,
            self.spec.mobike,
        );
        let mut charon = Charon::spawn(&b.name, &b.ns, dir, &files)?;
        charon.ready(Duration::from_secs(20))?;
        // The old guard drops here: its charon has exited already.
        self.responders[i].charon = charon;
        Ok(())
    }

    /// Cut responder `i`'s link to the gateway (its port on the internal switch goes down),
    /// as a failed server or cable would.
    pub fn cut_responder(&self, i: usize) -> Result<()> {
        let port = &self.lab.backends[i].name;
        self.lab.bridge.ip(&["link", "set", port, "down"]).map(drop)
    }

    /// Control gateway only ([`Gateway::NftSourceHash`]): do what health checks make ikelb do
    /// when responder `dead` fails — send its hash slot to the next responder and forget its
    /// flows (conntrack entries whose replies come from it) — so the failover harness can be
    /// proven without ikelb.
    pub fn nft_fail_over(&self, dead: usize) -> Result<()> {
        ensure!(
            matches!(self.spec.gateway, Gateway::NftSourceHash),
            "not an nft source-hash gateway"
        );
        let n = self.responders.len();
        ensure!(n >= 2, "no survivor");
        let slots: Vec<usize> = (0..n)
            .map(|k| if k == dead { (k + 1) % n } else { k })
            .collect();
        let ruleset = format!(
            "flush table ip ikelb_interop\n{}",
            nft_dnat(&self.lab, &slots, 0)
        );
        nft(&self.lab.gateway, &ruleset)?;
        let addr = self.responders[dead].addr.to_string();
        // Exit status 1 when nothing matched: not an error here.
        let _ = self
            .lab
            .gateway
            .command("conntrack")
            .args(["-D", "-p", "udp", "--reply-src", &addr])
            .output()
            .context("cannot run conntrack")?;
        Ok(())
    }

    /// Interfaces where UDP originates (clients' `eth0`, responders' `eth0`, the gateway's
    /// `int`) whose tx checksum offload is still on: each would put unverifiable partial
    /// checksums on the wire.
    pub fn tx_checksum_offloaded(&self) -> Result<Vec<String>> {
        let mut on = Vec::new();
        let interfaces = self
            .client_ns
            .iter()
            .chain(self.lab.backends.iter().map(|b| &b.ns))
            .map(|ns| (ns, "eth0"))
            .chain([(&self.lab.gateway, GW_INT)]);
        for (ns, ifname) in interfaces {
            let features = ns.exec("ethtool", &["-k", ifname])?;
            let tx = features
                .lines()
                .find_map(|l| l.trim().strip_prefix("tx-checksumming:"))
                .context("ethtool -k: no tx-checksumming line")?;
            if !tx.trim().starts_with("off") {
                on.push(format!("{}/{ifname}", ns.name()));
            }
        }
        Ok(on)
    }

    /// Collect the evidence: every peer's SAs (vici) and log, and every namespace's IP/UDP
    /// counters. `initiations` and `pings`, when given, are indexed by client.
    pub fn snapshot(
        &self,
        initiations: Option<&[Initiation]>,
        pings: Option<&[PingResult]>,
    ) -> Result<Snapshot> {
        let responder_sas: Vec<Vec<IkeSa>> = self
            .responders
            .iter()
            .map(|r| r.charon.list_sas())
            .collect::<Result<_>>()?;
        let responder_logs: Vec<CharonLog> =
            self.responders.iter().map(|r| r.charon.log()).collect();
        let mut clients = Vec::with_capacity(self.clients.len());
        for (i, c) in self.clients.iter().enumerate() {
            let sas = c.charon.list_sas()?;
            // After a re-initiation the newest SA is the one that counts.
            let sa = sas
                .iter()
                .filter(|s| s.established())
                .max_by_key(|s| s.uniqueid)
                .or_else(|| sas.iter().max_by_key(|s| s.uniqueid))
                .cloned();
            let log = c.charon.log();
            let setup = sa
                .as_ref()
                .and_then(|s| log.sas.get(&s.uniqueid))
                .and_then(|l| l.setup_time());
            let vip: Option<Ipv4Addr> = sa
                .as_ref()
                .and_then(|s| s.local_vips.first())
                .and_then(|v| v.parse().ok());
            let pool_responder =
                vip.and_then(|v| self.responders.iter().position(|r| in_net(v, r.pool)));
            let mut report = ClientReport {
                index: i,
                id: c.id.clone(),
                initiation: initiations.map(|v| v[i].clone()),
                ping: pings.map(|v| v[i]),
                sa,
                vip,
                pool_responder,
                setup,
                ..Default::default()
            };
            if let Some(sa) = &report.sa {
                for (r, rsas) in responder_sas.iter().enumerate() {
                    for rsa in rsas.iter().filter(|x| x.initiator_spi == sa.initiator_spi) {
                        report.holders.push(r);
                        if rsa.established() && rsa.remote_id == c.id {
                            report.established_at = Some(r);
                            report.public = format!("{}:{}", rsa.remote_host, rsa.remote_port)
                                .parse()
                                .ok();
                            report.esp_in = rsa.installed_child().map_or(0, |ch| ch.packets_in);
                        }
                        if let Some(l) = responder_logs[r].sas.get(&rsa.uniqueid) {
                            report
                                .init_at
                                .extend(l.requests("IKE_SA_INIT").map(|m| (r, m.clone())));
                            report
                                .auth_at
                                .extend(l.requests("IKE_AUTH").map(|m| (r, m.clone())));
                        }
                    }
                }
            }
            clients.push(report);
        }
        let mut snmp = Vec::new();
        let named = self
            .lab
            .namespaces()
            .into_iter()
            .map(|(role, ns)| (role.replace("client", "router"), ns))
            .chain([("host".to_string(), &self.host)])
            .chain(
                self.client_ns
                    .iter()
                    .enumerate()
                    .map(|(i, ns)| (format!("c{i:02}"), ns)),
            );
        for (role, ns) in named {
            snmp.push((role, ns.snmp()?));
        }
        Ok(Snapshot {
            responders: self.responders.iter().map(|r| r.name.clone()).collect(),
            clients,
            responder_sas,
            responder_logs,
            snmp,
        })
    }

    /// The last `n` lines of every responder's log, for failure messages.
    pub fn responder_log_tails(&self, n: usize) -> String {
        let mut s = String::new();
        for r in &self.responders {
            writeln!(
                s,
                "--- responder {} (charon.log, last {n} lines)\n{}",
                r.name,
                r.charon.log_tail(n)
            )
            .expect("write to String");
        }
        s
    }
}

/// A `tcpdump` of UDP on one interface, written to a file; [`Capture::checksums`] stops it
/// and decodes it.
#[derive(Debug)]
pub struct Capture {
    /// Where: `namespace/interface`.
    pub at: String,
    file: PathBuf,
    child: Child,
}

/// UDP checksums tcpdump verified in a capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumTally {
    /// `[udp sum ok]`.
    pub ok: usize,
    /// `[bad udp cksum …]`.
    pub bad: usize,
}

impl Capture {
    /// Start capturing UDP on `ifname` in `ns` into `file`; returns once tcpdump listens.
    pub fn start(ns: &NetNs, ifname: &str, file: PathBuf) -> Result<Self> {
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", ifname, "-n", "-U", "--immediate-mode", "-w"])
            .arg(&file)
            .arg("udp");
        let log = file.with_extension("log");
        let at = format!("{}/{ifname}", ns.name());
        let mut child = Child::spawn(&format!("tcpdump {at}"), cmd, log)?;
        wait_for(
            &format!("tcpdump on {at}"),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                if let Some(status) = child.exit_status() {
                    anyhow::bail!(
                        "tcpdump on {at} exited ({status}): {}",
                        child.output_tail(5)
                    );
                }
                Ok(child.output().contains("listening on").then_some(()))
            },
        )?;
        Ok(Self { at, file, child })
    }

    /// Stop the capture and count the UDP checksums tcpdump could verify (whole datagrams:
    /// it cannot check a fragmented one).
    pub fn checksums(mut self) -> Result<ChecksumTally> {
        self.child.stop(Duration::from_secs(3))?;
        let file = self.file.to_str().context("non-UTF-8 path")?;
        let text = crate::lab::run("tcpdump", &["-nn", "-vv", "-r", file])?;
        Ok(ChecksumTally {
            ok: text.matches("[udp sum ok]").count(),
            bad: text.matches("[bad udp cksum").count(),
        })
    }
}

impl IkeLab {
    /// Capture UDP where it has just crossed ikelb: every responder's `eth0` (forward path,
    /// destination rewritten) and the router's uplink (reverse path, source rewritten; also the
    /// clients' packets after the router's NAT).
    pub fn start_captures(&self) -> Result<Vec<Capture>> {
        let mut caps = vec![Capture::start(
            &self.lab.client_ns,
            "eth0",
            self.lab.dir().join("router-eth0.pcap"),
        )?];
        for b in &self.lab.backends {
            caps.push(Capture::start(
                &b.ns,
                "eth0",
                self.lab.dir().join(format!("{}-eth0.pcap", b.name)),
            )?);
        }
        Ok(caps)
    }

    /// Copy every charon's log (and the daemon's, if any) to `dest/<run prefix>/`: the lab's
    /// own directory disappears with the lab.
    pub fn save_logs(&self, dest: &Path) -> Result<PathBuf> {
        let to = dest.join(self.lab.prefix().as_str());
        std::fs::create_dir_all(&to).with_context(|| format!("mkdir {}", to.display()))?;
        for entry in std::fs::read_dir(self.lab.dir())?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(peer) = name.strip_prefix("charon-") {
                for file in ["charon.log", "charon.out"] {
                    let _ = std::fs::copy(path.join(file), to.join(format!("{peer}-{file}")));
                }
            } else if name.ends_with(".log") || name.ends_with(".yaml") {
                let _ = std::fs::copy(&path, to.join(&name));
            }
        }
        Ok(to)
    }
}

impl Drop for IkeLab {
    fn drop(&mut self) {
        // $IKELB_INTEROP_LOGS=DIR keeps every peer's log, also when a test fails.
        if let Some(dest) = std::env::var_os(LOGS_ENV) {
            match self.save_logs(Path::new(&dest)) {
                Ok(to) => eprintln!("ike lab: logs saved in {}", to.display()),
                Err(e) => eprintln!("ike lab: cannot save logs: {e:#}"),
            }
        }
        // Signal every charon first so their shutdowns overlap; each guard then waits for its
        // own process (and SIGKILLs it if need be) as the fields drop.
        for charon in self.charons_mut() {
            charon.request_stop();
        }
    }
}

/// What every peer and namespace reported at one moment, per client.
#[derive(Debug)]
pub struct Snapshot {
    /// Responder names, by index.
    pub responders: Vec<String>,
    pub clients: Vec<ClientReport>,
    pub responder_sas: Vec<Vec<IkeSa>>,
    pub responder_logs: Vec<CharonLog>,
    /// `/proc/net/snmp` of every namespace: `router`, `gw`, `bridge`, `b1`…, `host`, `c00`….
    pub snmp: Vec<(String, Snmp)>,
}

/// The evidence about one client.
#[derive(Clone, Debug, Default)]
pub struct ClientReport {
    pub index: usize,
    pub id: String,
    pub initiation: Option<Initiation>,
    pub ping: Option<PingResult>,
    /// The client's own IKE SA (the newest established one, else the newest).
    pub sa: Option<IkeSa>,
    /// The virtual IP it got.
    pub vip: Option<Ipv4Addr>,
    /// The responder whose pool `vip` is from.
    pub pool_responder: Option<usize>,
    /// IKE SA + CHILD_SA setup time, from the client's own log.
    pub setup: Option<Duration>,
    /// Responders holding an IKE SA (any state) with this client's SPIs: the ones its
    /// IKE_SA_INIT reached.
    pub holders: Vec<usize>,
    /// The responder where that SA is ESTABLISHED with this client's identity.
    pub established_at: Option<usize>,
    /// The client's public (NAT) address and port, as that responder sees it.
    pub public: Option<SocketAddrV4>,
    /// IKE_SA_INIT / IKE_AUTH requests of that SA in each holder's log.
    pub init_at: Vec<(usize, Received)>,
    pub auth_at: Vec<(usize, Received)>,
    /// ESP packets the responder received in this client's CHILD_SA.
    pub esp_in: u64,
}

impl ClientReport {
    /// IKE SA established and CHILD_SA installed, on the client's side.
    pub fn up(&self) -> bool {
        self.sa
            .as_ref()
            .is_some_and(|s| s.established() && s.installed_child().is_some())
    }

    /// Why this client breaks assertion 1 (up, a virtual IP from a known pool, every ping
    /// answered), if it does.
    pub fn connectivity_problem(&self) -> Option<String> {
        if let Some(init) = self.initiation.as_ref().filter(|i| !i.ok) {
            let last = init
                .output
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Some(format!("initiate failed after {:?}: {last}", init.elapsed));
        }
        if !self.up() {
            return Some(format!(
                "no established IKE SA with an installed CHILD_SA (state {})",
                self.sa.as_ref().map_or("none", |s| s.state.as_str())
            ));
        }
        if self.pool_responder.is_none() {
            return Some(format!(
                "virtual IP {:?} is from no responder's pool",
                self.vip
            ));
        }
        match self.ping {
            Some(p) if p.sent == 0 || p.received < p.sent => Some(format!(
                "ping through the tunnel: {}/{} answered",
                p.received, p.sent
            )),
            _ => None,
        }
    }

    /// Why this client breaks assertion 2, if it does: its IKE_SA_INIT (UDP 500), IKE_AUTH
    /// and ESP (UDP 4500) must all have reached one responder — the one that holds its SA and
    /// whose pool its virtual IP is from — and no other responder may know its SPIs.
    pub fn same_responder_problem(&self) -> Option<String> {
        let Some(at) = self.established_at else {
            return Some(format!(
                "no responder holds its SA established (SPIs seen at {:?})",
                self.holders
            ));
        };
        if self.holders != [at] {
            return Some(format!(
                "its SPIs are known to responders {:?}, not only {at}",
                self.holders
            ));
        }
        if self.pool_responder != Some(at) {
            return Some(format!(
                "SA at responder {at}, virtual IP from {:?}'s pool",
                self.pool_responder
            ));
        }
        let ports = |msgs: &[(usize, Received)]| -> Vec<(usize, u16)> {
            msgs.iter().map(|(r, m)| (*r, m.to.port())).collect()
        };
        let init = ports(&self.init_at);
        let auth = ports(&self.auth_at);
        if init.is_empty() || init.iter().any(|&(r, p)| r != at || p != 500) {
            return Some(format!(
                "IKE_SA_INIT seen at (responder, port) {init:?}, want only ({at}, 500)"
            ));
        }
        if auth.is_empty() || auth.iter().any(|&(r, p)| r != at || p != 4500) {
            return Some(format!(
                "IKE_AUTH seen at (responder, port) {auth:?}, want only ({at}, 4500)"
            ));
        }
        let from_init: Vec<_> = self.init_at.iter().map(|(_, m)| *m.from.ip()).collect();
        let from_auth: Vec<_> = self.auth_at.iter().map(|(_, m)| *m.from.ip()).collect();
        if from_init
            .iter()
            .chain(&from_auth)
            .any(|a| Some(a) != self.public.as_ref().map(|p| p.ip()))
        {
            return Some(format!(
                "messages from {from_init:?} (500) and {from_auth:?} (4500), SA with {:?}",
                self.public
            ));
        }
        let encap = self
            .sa
            .as_ref()
            .and_then(|s| s.installed_child())
            .is_some_and(|c| c.encap);
        if !encap || self.esp_in == 0 {
            return Some(format!(
                "ESP-in-UDP: encap {encap}, {} packets in at responder {at}",
                self.esp_in
            ));
        }
        None
    }
}

impl Snapshot {
    /// Clients served by each responder (by where their SA is established).
    pub fn clients_per_responder(&self) -> Vec<usize> {
        let mut n = vec![0; self.responders.len()];
        for c in &self.clients {
            if let Some(r) = c.established_at {
                n[r] += 1;
            }
        }
        n
    }

    /// Distinct public (NAT) addresses each responder's clients came from.
    pub fn public_addrs_per_responder(&self) -> Vec<Vec<Ipv4Addr>> {
        let mut v = vec![Vec::new(); self.responders.len()];
        for c in &self.clients {
            if let (Some(r), Some(p)) = (c.established_at, c.public) {
                if !v[r].contains(p.ip()) {
                    v[r].push(*p.ip());
                }
            }
        }
        v.iter_mut().for_each(|a: &mut Vec<Ipv4Addr>| a.sort());
        v
    }

    /// `(client, problem)` for every client that breaks assertion 1.
    pub fn connectivity_problems(&self) -> Vec<(String, String)> {
        self.clients
            .iter()
            .filter_map(|c| c.connectivity_problem().map(|p| (c.id.clone(), p)))
            .collect()
    }

    /// `(client, problem)` for every client that breaks assertion 2.
    pub fn same_responder_problems(&self) -> Vec<(String, String)> {
        self.clients
            .iter()
            .filter_map(|c| c.same_responder_problem().map(|p| (c.id.clone(), p)))
            .collect()
    }

    /// A counter of one namespace (`"b1"`, `"gw"`, `"c03"`, …).
    pub fn counter(&self, ns: &str, key: &str) -> i64 {
        self.snmp
            .iter()
            .find(|(n, _)| n == ns)
            .map_or(0, |(_, s)| s.get(key))
    }

    /// `(namespace, value)` of one counter wherever it is non-zero.
    pub fn nonzero(&self, key: &str) -> Vec<(String, i64)> {
        self.snmp
            .iter()
            .filter(|(_, s)| s.get(key) != 0)
            .map(|(n, s)| (n.clone(), s.get(key)))
            .collect()
    }

    /// Sum of one counter over the namespaces whose names start with `prefix`.
    pub fn sum(&self, prefix: &str, key: &str) -> i64 {
        self.snmp
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, s)| s.get(key))
            .sum()
    }

    /// Setup times of the clients that came up, sorted.
    pub fn setup_times(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.clients.iter().filter_map(|c| c.setup).collect();
        v.sort();
        v
    }

    /// One line per client: where its messages went and how it fared.
    pub fn table(&self) -> String {
        let name = |r: Option<usize>| r.map_or("-".to_string(), |r| self.responders[r].clone());
        let mut s = String::from(
            "client                public               SA at  vip           init→      auth→       esp_in  ping  setup\n",
        );
        for c in &self.clients {
            let msgs = |v: &[(usize, Received)]| {
                let parts: Vec<String> = v
                    .iter()
                    .map(|(r, m)| format!("{}:{}", self.responders[*r], m.to.port()))
                    .collect();
                if parts.is_empty() {
                    "-".into()
                } else {
                    parts.join(",")
                }
            };
            writeln!(
                s,
                "{:<21} {:<20} {:<6} {:<13} {:<10} {:<11} {:<7} {:<5} {}",
                c.id,
                c.public.map_or("-".into(), |p| p.to_string()),
                name(c.established_at),
                c.vip.map_or("-".into(), |v| v.to_string()),
                msgs(&c.init_at),
                msgs(&c.auth_at),
                c.esp_in,
                c.ping
                    .map_or("-".into(), |p| format!("{}/{}", p.received, p.sent)),
                c.setup
                    .map_or("-".into(), |d| format!("{} ms", d.as_millis())),
            )
            .expect("write to String");
        }
        s
    }
}

/// Client i's private address.
fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + i as u8)
}

/// Client i's private address after [`IkeLab::roam`]: the same host number on the second
/// subnet.
fn roamed_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, 0, 10 + i as u8)
}

/// Responder i's address toward the host.
fn responder_inner_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 11 + i as u8)
}

/// Responder i's virtual IP pool: 10.100.(i+1).0/24.
fn pool(i: usize) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 100, 1 + i as u8, 0), 24)
}

fn in_net(a: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(net) & mask
}

/// The control gateways' DNAT: slot = jhash(client source address) mod N picks
/// `lab.backends[slots[slot]]`, for UDP 500; for UDP 4500 the slot is shifted by `shift_4500`
/// first. `slots` is the identity at start; a failover points the dead responder's slot at a
/// survivor (only its clients move, as with Maglev).
fn nft_dnat(lab: &Lab, slots: &[usize], shift_4500: usize) -> String {
    let n = slots.len();
    let map = |shift: usize| {
        (0..n)
            .map(|k| format!("{k} : {}", lab.backends[slots[(k + shift) % n]].addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "table ip ikelb_interop {{\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   ip daddr {VIP} udp dport 500 dnat to jhash ip saddr mod {n} seed {NFT_SEED} map {{ {m500} }}\n\
         \x20   ip daddr {VIP} udp dport 4500 dnat to jhash ip saddr mod {n} seed {NFT_SEED} map {{ {m4500} }}\n\
         \x20 }}\n\
         }}\n",
        m500 = map(0),
        m4500 = map(shift_4500),
    )
}

/// Load an nft ruleset into `ns` (`nft -f -`). One statement per line: nft 1.0.6 rejects
/// `… persistent; }` on one line.
fn nft(ns: &NetNs, ruleset: &str) -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (nftables)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(ruleset.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{}: nft -f failed: {}\n{ruleset}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `count` echo requests from `ns` to `to`, 200 ms apart, each given 2 s.
fn ping(ns: &NetNs, to: Ipv4Addr, count: u32) -> PingResult {
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &to.to_string(),
        ])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "3 packets transmitted, 3 received, 0% packet loss, time 402ms"
    let stats = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("");
    let num = |word: &str| -> u32 {
        stats
            .split(", ")
            .find(|p| p.ends_with(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    PingResult {
        sent: num("packets transmitted"),
        received: num("received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_distinct_and_contain_their_addresses() {
        assert!(in_net(Ipv4Addr::new(10, 100, 2, 7), pool(1)));
        assert!(!in_net(Ipv4Addr::new(10, 100, 2, 7), pool(0)));
        assert!(in_net(
            Ipv4Addr::new(10, 1, 2, 3),
            (Ipv4Addr::new(0, 0, 0, 0), 0)
        ));
    }
}
