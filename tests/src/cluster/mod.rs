//! The multi-node cluster lab (docs/cluster.md, "The cluster lab"): ikelb nodes active-active
//! behind a router's ECMP, each announcing the VIP over BGP, real strongSwan clients behind
//! NAT and real strongSwan responders behind the nodes.
//!
//! ```text
//!  ns c00…cNN            ns nat                   ns router (BIRD)          ns n1…nK (ikelb)        ns sw           ns b1…bM          ns host
//!  eth0 10.1.0.10+i ──┬─ lan 10.1.0.1/24          isp 198.51.100.1 ─┐       ext 192.0.2.1k ─┐       br0 ┬─ nK        eth0 10.0.0.1m ─ bM ┐
//!  charon initiator   └─ cNN ports                nodes 192.0.2.2/24 ├ nK ─┘ VIP on lo      int ───┘     ├─ bM       default via        br0 10.200.0.1
//!  ping 10.200.0.1       wan 198.51.100.2 ────────┘ (bridge)          │      10.0.0.(1+k)/24             │           10.0.0.1 (VRRP)    pools via bM
//!  through the tunnel    snat 10.1.0.10+i →          VIP/32 ECMP via  │      + 10.0.0.1 (VRRP master)    │           eth1 10.200.0.1m ─┘
//!                        100.64.1.1+i (one each)     every node       │      lb-ctl, BIRD, keepalived    │           charon responder
//!                                                    hash policy 0    │                                  │           pool 10.100.m.0/24
//! ```
//!
//! * **Router** (`deploy/bird/router.conf`): one eBGP session and BFD per node; `merge
//!   paths on` installs the nodes' equal routes as one multipath route in the kernel, which
//!   hashes on addresses only (`net.ipv4.fib_multipath_hash_policy = 0`): UDP 500, 4500 and
//!   fragments of one client reach the same node while the set of nodes holds.
//! * **Nodes** (`deploy/bird/ikelb-node.conf`, `deploy/keepalived/keepalived.conf`): the same
//!   daemon config everywhere (backends, `hash_seed`, `maglev_table_size`), `announce:
//!   {table: 100}`, BIRD exporting table 100, keepalived offering the backends' gateway
//!   10.0.0.1 on `int` (VRRP, no `use_vmac`). The VIP is on each node's `lo` (anycast): what
//!   the XDP program passes meets the node's own stack. The router and backend segments are
//!   bridges: a node whose links are cut is found out by BFD and VRRP, not by a carrier the
//!   router could see.
//! * **NAT**: one public address per client (`snat` by map), so the router's L3 hash has 24
//!   distinct sources to spread.
//! * **Backends** answer every client through the VRRP master, which rewrites replies also
//!   for clients other nodes forwarded (`reverse_stateless`); the host behind them routes each
//!   pool back to its responder, so a client's virtual IP names its responder.
//! * veth and XDP: GRO is on at the switch ports that receive frames the nodes' XDP
//!   redirects (router `nodes` ports, `sw` node ports); tx checksum offload is off where UDP
//!   originates (clients, responders), so checksums on the wire are real.

mod keepalived;
mod node;
mod ping;

pub use keepalived::{available as keepalived_available, Keepalived, KEEPALIVED};
pub use node::{Counters, Lookup, Node, EXT, INT};
pub use ping::{epoch, ping, LossSummary, PingRun, Pings};

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::bird::{self, Bird};
use crate::ike::{
    client_id, Charon, CharonFiles, Fragmentation, IkeSa, Initiation, Pki, HOST_ADDR, HOST_NET,
    LOGS_ENV,
};
use crate::lab::{reap_stale, wait_for, NetNs, RunPrefix, TempDir, Veth, VIP};

/// `announce.table` on every node (the shipped configs' example).
pub const TABLE: &str = "100";
/// `share.export_table` and `share.import_table` on every node when shared persistence is
/// on (the shipped configs' example): BIRD learns the node's divergent clients from the
/// first and writes the other nodes' into the second.
pub const SHARE_EXPORT: &str = "101";
pub const SHARE_IMPORT: &str = "102";
/// Every node's `hash_seed` and `maglev_table_size`: with the backends, what makes every
/// node's ring the same (and lets a test compute it, [`ClusterLab::ring_backend`]).
pub const HASH_SEED: u32 = 0x5eed;
pub const MAGLEV_SIZE: u32 = 65537;
/// The router's address on the nodes' segment (the shipped configs').
pub const ROUTER_NODES_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The backends' default gateway: the VRRP address.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The VRRP router id of the shipped keepalived config: its virtual MAC would be
/// 00:00:5e:00:01:33 (RFC 5798 §7.3), which the master must NOT use.
pub const VRRP_VMAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 51];

/// The router's address toward the clients' NAT.
pub const ROUTER_ISP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NAT_WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const NAT_LAN: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

/// Node `k`'s (0-based) address toward the router.
pub fn node_ext(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 11 + k as u8)
}

/// Node `k`'s own address toward the backends.
pub fn node_int(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 2 + k as u8)
}

/// Client `i`'s public (post-NAT) address.
pub fn public(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 1, 1 + i as u8)
}

/// Client `i`'s own address, behind the NAT.
pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + i as u8)
}

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 11 + i as u8)
}

fn responder_inner(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 11 + i as u8)
}

/// Responder `i`'s virtual IP pool: 10.100.(i+1).0/24.
pub fn pool(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 1 + i as u8, 0)
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// strongSwan initiators, each behind its own public address (at most 200).
    pub clients: usize,
    /// ikelb nodes built (at most 9) …
    pub nodes: usize,
    /// … of which the first `started` run their daemon, BIRD and keepalived from the start
    /// (the others are cabled, idle, for a test to start).
    pub started: usize,
    /// strongSwan responders (at most 9) …
    pub responders: usize,
    /// … of which the first `listed` are the daemons' configured backends (the others run,
    /// for a test to add with `lb-ctl backend add`).
    pub listed: usize,
    /// Shared persistence on every node: `share` in the daemon's config, the optional part
    /// of `deploy/bird/ikelb-node.conf` with iBGP sessions to every other node over `int`.
    pub share: bool,
}

/// What losing a node took, from the cut ([`ClusterLab::lose_node`]).
#[derive(Clone, Copy, Debug)]
pub struct Failover {
    /// Until the router's VIP route left the node out.
    pub route: Duration,
    /// When the node held the gateway: until its heir held the VRRP address, and until every
    /// backend's gateway entry named the heir's MAC.
    pub gateway: Option<(Duration, Duration)>,
}

/// Why the cluster lab cannot run here (root, strongSwan, BIRD 2, keepalived), if it
/// cannot; `cargo xtask bootstrap` installs what it needs.
pub fn unavailable() -> Option<String> {
    if let Some(why) = crate::ike::unavailable() {
        return Some(why);
    }
    if !bird::available() {
        return Some(format!(
            "needs BIRD 2 ({}, Debian package bird2)",
            bird::BIRD
        ));
    }
    if !keepalived::available() {
        return Some(format!(
            "needs keepalived ({KEEPALIVED}, Debian package keepalived)"
        ));
    }
    None
}

/// One initiator.
#[derive(Debug)]
pub struct Client {
    pub id: String,
    /// Its public (post-NAT) address: ikelb's persistence key and the router's hash input.
    pub public: Ipv4Addr,
    pub charon: Charon,
}

/// One responder.
#[derive(Debug)]
pub struct Responder {
    /// `b1`, `b2`, …
    pub name: String,
    pub addr: Ipv4Addr,
    pub charon: Charon,
}

/// The built lab. Fields drop in declaration order: charons, then the nodes (keepalived,
/// BIRD, daemon, pins, namespace each), the router's BIRD, links, namespaces, directory.
#[derive(Debug)]
pub struct ClusterLab {
    pub clients: Vec<Client>,
    pub responders: Vec<Responder>,
    pub nodes: Vec<Node>,
    router_bird: Bird,
    _veths: Vec<Veth>,
    client_ns: Vec<NetNs>,
    pub nat: NetNs,
    pub router: NetNs,
    pub switch: NetNs,
    pub backends: Vec<NetNs>,
    pub host: NetNs,
    lb_ctl: PathBuf,
    dir: TempDir,
    prefix: RunPrefix,
    listed: usize,
}

/// A client's IKE SA and CHILD_SA as both ends report them, and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The client's IKE SAs (of any state): one, unless it re-established.
    pub client_sas: usize,
    pub uniqueid: u32,
    pub initiator_spi: String,
    pub responder_spi: String,
    pub child_spi_in: String,
    pub child_spi_out: String,
    /// Responders holding an IKE SA with these SPIs.
    pub holders: Vec<usize>,
    /// The responder where it is ESTABLISHED with the client's identity.
    pub backend: Option<usize>,
}

impl Session {
    /// Why this is not one healthy session (up at one responder), if it is not.
    pub fn problem(&self) -> Option<String> {
        if self.client_sas != 1 {
            return Some(format!("{} IKE SAs on the client", self.client_sas));
        }
        if self.child_spi_in.is_empty() {
            return Some("no installed CHILD_SA".into());
        }
        match self.backend {
            Some(b) if self.holders == [b] => None,
            _ => Some(format!(
                "SPIs held by responders {:?}, established at {:?}",
                self.holders, self.backend
            )),
        }
    }
}

impl ClusterLab {
    /// Build every namespace, link, address and route, start the router's BIRD, the
    /// `started` nodes (each waited for: XDP attached, its BGP session up) and every charon
    /// (configuration loaded). No IKE SA exists yet; the VIP is routed over every started
    /// node.
    pub fn build(spec: &ClusterSpec, lb_ctl: &Path) -> Result<Self> {
        Self::build_as('k', spec, lb_ctl)
    }

    /// [`ClusterLab::build`] under another run-prefix role letter (the demo's `d`: its
    /// namespaces then never share a prefix with the tests').
    pub fn build_as(role: char, spec: &ClusterSpec, lb_ctl: &Path) -> Result<Self> {
        ensure!((1..=200).contains(&spec.clients), "1..=200 clients");
        ensure!((1..=9).contains(&spec.nodes), "1..=9 nodes");
        ensure!(spec.started <= spec.nodes, "started ≤ nodes");
        ensure!((1..=9).contains(&spec.responders), "1..=9 responders");
        ensure!(
            (1..=spec.responders).contains(&spec.listed),
            "1..=responders listed"
        );
        reap_stale();
        let pki = Pki::get(spec.clients)?;
        let prefix = RunPrefix::new(role);
        let dir = TempDir::new(&prefix)?;
        let netns = |what: &str| NetNs::new(prefix.name(what));
        let nat = netns("nat")?;
        let router = netns("router")?;
        let switch = netns("sw")?;
        let host = netns("host")?;
        let backends: Vec<NetNs> = (0..spec.responders)
            .map(|i| netns(&format!("b{}", i + 1)))
            .collect::<Result<_>>()?;
        let mut nodes = Vec::with_capacity(spec.nodes);
        for k in 0..spec.nodes {
            let name = format!("n{}", k + 1);
            let ns = netns(&name)?;
            let priority = 100 - 10 * k as u8;
            let node_dir = dir.path().join(&name);
            let peers = spec
                .share
                .then(|| (0..spec.nodes).filter(|&j| j != k).map(node_int).collect());
            nodes.push(Node::new(
                name,
                ns,
                node_ext(k),
                node_int(k),
                priority,
                peers,
                node_dir,
            )?);
        }
        let client_ns: Vec<NetNs> = (0..spec.clients)
            .map(|i| netns(&format!("c{i:02}")))
            .collect::<Result<_>>()?;

        let mut veths = vec![Veth::down((&nat, "wan"), (&router, "isp"))?];
        for n in &nodes {
            veths.push(Veth::down((&n.ns, EXT), (&router, &n.name))?);
            veths.push(Veth::down((&n.ns, INT), (&switch, &n.name))?);
        }
        for (i, b) in backends.iter().enumerate() {
            let port = format!("b{}", i + 1);
            veths.push(Veth::down((b, "eth0"), (&switch, &port))?);
            veths.push(Veth::down((b, "eth1"), (&host, &port))?);
        }
        for (i, c) in client_ns.iter().enumerate() {
            veths.push(Veth::down((c, "eth0"), (&nat, &format!("c{i:02}")))?);
        }

        // The router: the ISP link toward the clients' NAT, a bridge toward the nodes.
        let mut batch = format!(
            "link set isp up\n\
             addr add {ROUTER_ISP}/24 dev isp\n\
             route add 100.64.0.0/16 via {NAT_WAN}\n\
             link add nodes type bridge stp_state 0 forward_delay 0\n\
             link set nodes up\n\
             addr add {ROUTER_NODES_ADDR}/24 dev nodes\n"
        );
        for n in &nodes {
            writeln!(
                batch,
                "link set {} master nodes\nlink set {} up",
                n.name, n.name
            )
            .expect("write to String");
        }
        router.ip_batch(&batch)?;
        router.sysctl("net/ipv4/ip_forward", "1")?;
        // L3 only: every packet of a client (UDP 500, 4500, ESP, fragments) hashes alike.
        router.sysctl("net/ipv4/fib_multipath_hash_policy", "0")?;
        for n in &nodes {
            router.ethtool_features(&n.name, &[("gro", true)])?;
        }

        // The clients' NAT: one public address each.
        let mut batch = format!(
            "link set wan up\n\
             addr add {NAT_WAN}/24 dev wan\n\
             route add default via {ROUTER_ISP}\n\
             link add lan type bridge stp_state 0 forward_delay 0\n\
             link set lan up\n\
             addr add {NAT_LAN}/24 dev lan\n"
        );
        for i in 0..spec.clients {
            writeln!(batch, "link set c{i:02} master lan\nlink set c{i:02} up")
                .expect("write to String");
        }
        nat.ip_batch(&batch)?;
        nat.sysctl("net/ipv4/ip_forward", "1")?;
        let map: Vec<String> = (0..spec.clients)
            .map(|i| format!("{} : {}", client_addr(i), public(i)))
            .collect();
        nat.exec_stdin(
            "nft",
            &["-f", "-"],
            &format!(
                "table ip ikelb_cluster {{\n\
                 \x20 chain postrouting {{\n\
                 \x20   type nat hook postrouting priority srcnat; policy accept;\n\
                 \x20   oifname \"wan\" snat ip to ip saddr map {{ {} }}\n\
                 \x20 }}\n\
                 }}\n",
                map.join(", ")
            ),
        )?;
        for (i, c) in client_ns.iter().enumerate() {
            c.ip_batch(&format!(
                "link set eth0 up\naddr add {}/24 dev eth0\nroute add default via {NAT_LAN}\n",
                client_addr(i)
            ))?;
            c.ethtool_features("eth0", &[("tx", false)])?;
        }

        // The backends' switch.
        let mut batch =
            String::from("link add br0 type bridge stp_state 0 forward_delay 0\nlink set br0 up\n");
        let ports = nodes
            .iter()
            .map(|n| n.name.clone())
            .chain((1..=spec.responders).map(|i| format!("b{i}")));
        for port in ports {
            writeln!(batch, "link set {port} master br0\nlink set {port} up")
                .expect("write to String");
        }
        switch.ip_batch(&batch)?;
        for n in &nodes {
            switch.ethtool_features(&n.name, &[("gro", true)])?;
        }

        // The nodes.
        for n in &nodes {
            n.ns.ip_batch(&format!(
                "link set {EXT} up\n\
                 link set {INT} up\n\
                 addr add {ext}/24 dev {EXT}\n\
                 addr add {int}/24 dev {INT}\n\
                 addr add {VIP}/32 dev lo\n\
                 route add default via {ROUTER_NODES_ADDR}\n",
                ext = n.ext_addr,
                int = n.int_addr,
            ))?;
            n.ns.sysctl("net/ipv4/ip_forward", "1")?;
        }

        // Backends and the host behind them.
        let mut batch = String::from(
            "link add br0 type bridge stp_state 0 forward_delay 0\n\
             link set br0 up\n",
        );
        writeln!(batch, "addr add {HOST_ADDR}/24 dev br0").expect("write to String");
        for (i, b) in backends.iter().enumerate() {
            b.ip_batch(&format!(
                "link set eth0 up\n\
                 link set eth1 up\n\
                 addr add {}/24 dev eth0\n\
                 addr add {}/24 dev eth1\n\
                 route add default via {GATEWAY}\n",
                backend_addr(i),
                responder_inner(i)
            ))?;
            b.sysctl("net/ipv4/ip_forward", "1")?;
            b.ethtool_features("eth0", &[("tx", false)])?;
            b.ethtool_features("eth1", &[("tx", false)])?;
            writeln!(
                batch,
                "link set b{n} master br0\nlink set b{n} up\nroute add {}/24 via {}",
                pool(i),
                responder_inner(i),
                n = i + 1
            )
            .expect("write to String");
        }
        host.ip_batch(&batch)?;

        let router_config = router_bird_config(spec.nodes)?;
        let router_bird = Bird::start(&router, "router", &router_config, dir.path())?;

        let mut lab = Self {
            clients: Vec::new(),
            responders: Vec::new(),
            nodes,
            router_bird,
            _veths: veths,
            client_ns,
            nat,
            router,
            switch,
            backends,
            host,
            lb_ctl: lb_ctl.to_path_buf(),
            dir,
            prefix,
            listed: spec.listed,
        };
        // Each node's BGP session takes a few seconds (BIRD's connect delay and retry):
        // start them all, then wait.
        for k in 0..spec.started {
            lab.launch_node(k)?;
        }
        for k in 0..spec.started {
            lab.wait_session(k)?;
        }
        let started: Vec<usize> = (0..spec.started).collect();
        lab.wait_nexthops(&started, Duration::from_secs(20))?;

        // Every charon at once, then wait for all.
        for i in 0..spec.responders {
            let name = format!("b{}", i + 1);
            let cdir = lab.dir.path().join(format!("charon-{name}"));
            std::fs::create_dir_all(&cdir)?;
            let files =
                CharonFiles::responder(&cdir, &pki, &format!("{}/24", pool(i)), HOST_NET, false);
            let charon = Charon::spawn(&name, &lab.backends[i], cdir, &files)?;
            lab.responders.push(Responder {
                name,
                addr: backend_addr(i),
                charon,
            });
        }
        for i in 0..spec.clients {
            let cdir = lab.dir.path().join(format!("charon-c{i:02}"));
            std::fs::create_dir_all(&cdir)?;
            let files = CharonFiles::initiator(&cdir, &pki, i, VIP, HOST_NET, Fragmentation::Ip);
            let charon = Charon::spawn(&format!("c{i:02}"), &lab.client_ns[i], cdir, &files)?;
            lab.clients.push(Client {
                id: client_id(i),
                public: public(i),
                charon,
            });
        }
        for r in &mut lab.responders {
            r.charon.ready(Duration::from_secs(20))?;
        }
        for c in &mut lab.clients {
            c.charon.ready(Duration::from_secs(20))?;
        }
        Ok(lab)
    }

    pub fn prefix(&self) -> &RunPrefix {
        &self.prefix
    }

    /// This run's directory (configs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configured backends' addresses, in order (every node's config lists them alike).
    pub fn backend_addrs(&self) -> Vec<Ipv4Addr> {
        (0..self.listed).map(backend_addr).collect()
    }

    /// The responder whose address is `addr`.
    pub fn responder_of(&self, addr: Ipv4Addr) -> Option<usize> {
        self.responders.iter().position(|r| r.addr == addr)
    }

    /// The responder client `i`'s ring slot converges to when the nodes' backends are
    /// `backends` (all usable, weight 1): the same pure function every daemon computes
    /// (`lb_common::maglev::build` over the backends' addresses, the client's hash with
    /// [`HASH_SEED`], [`MAGLEV_SIZE`] slots); and the slot.
    pub fn ring_backend(&self, i: usize, backends: &[usize]) -> (usize, u32) {
        use lb_common::hash::{client_hash_v4, ring_slot};
        use lb_common::maglev::{build, Member};
        let members: Vec<Member> = backends
            .iter()
            .map(|&r| Member {
                id: r as u32 + 1,
                key: self.responders[r].addr.octets().to_vec(),
                weight: 1,
                usable: true,
            })
            .collect();
        let table = build(&members, MAGLEV_SIZE, HASH_SEED);
        let client = u32::from_ne_bytes(public(i).octets());
        let slot = ring_slot(client_hash_v4(client, HASH_SEED), MAGLEV_SIZE);
        (table[slot as usize] as usize - 1, slot)
    }

    /// Cuts responder `i`'s port on the backends' switch (health checks and its clients'
    /// traffic fail), or restores it.
    pub fn set_responder_link(&self, i: usize, up: bool) -> Result<()> {
        let port = format!("b{}", i + 1);
        self.switch
            .ip(&["link", "set", &port, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// `lb-ctl backend list --json` of node `k`: (address, state, ring slots) per backend.
    pub fn backend_list(&self, k: usize) -> Result<Vec<(Ipv4Addr, String, u32)>> {
        let out = self.nodes[k].lb_ctl(&self.lb_ctl, &["backend", "list", "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
        let list = v
            .as_array()
            .or_else(|| v["backends"].as_array())
            .with_context(|| format!("backend list: no array in {out}"))?;
        list.iter()
            .map(|b| {
                Ok((
                    b["address"]
                        .as_str()
                        .context("backend without address")?
                        .parse()?,
                    b["state"].as_str().unwrap_or("").to_owned(),
                    b["ring_slots"].as_u64().unwrap_or(0) as u32,
                ))
            })
            .collect()
    }

    /// Node `k`'s ring slots still held for their old backend (`lb-ctl status`,
    /// `held_slots`).
    pub fn held_slots(&self, k: usize) -> Result<u64> {
        let out = self.nodes[k].lb_ctl(&self.lb_ctl, &["status", "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
        v["virtual_servers"][0]["held_slots"]
            .as_u64()
            .with_context(|| format!("status: no held_slots in {out}"))
    }

    /// Start node `k`: its daemon (XDP attached), BIRD (its session with the router up) and
    /// keepalived.
    pub fn start_node(&mut self, k: usize) -> Result<()> {
        self.launch_node(k)?;
        self.wait_session(k)
    }

    /// Start node `k`'s daemon (XDP attached), BIRD and keepalived, without waiting for its
    /// BGP session.
    fn launch_node(&mut self, k: usize) -> Result<()> {
        let backends = self.backend_addrs();
        let node = &mut self.nodes[k];
        node.start_daemon(&self.lb_ctl, &backends)?;
        node.start_bird()?;
        node.start_keepalived()
    }

    /// Wait until the router's BGP session with node `k` is established.
    fn wait_session(&self, k: usize) -> Result<()> {
        let node = &self.nodes[k];
        let session = format!("node{}", k + 1);
        let router = &self.router_bird;
        wait_for(
            &format!("the router's BGP session {session}"),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || Ok(router.established(&session)?.then_some(())),
        )
        .with_context(|| {
            format!(
                "router:\n{}\n{}:\n{}",
                router.log_tail(20),
                node.name,
                node.bird().map_or_else(String::new, |b| b.log_tail(20))
            )
        })?;
        Ok(())
    }

    /// The router's next hops for the VIP (its ECMP route), sorted; empty without a route.
    pub fn nexthops(&self) -> Result<Vec<Ipv4Addr>> {
        let v =
            self.router
                .ip_json(&["-4", "route", "show", &format!("{VIP}/32"), "proto", "bird"])?;
        let mut hops: Vec<Ipv4Addr> = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                hops.push(g.parse()?);
            }
            for h in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = h["gateway"].as_str() {
                    hops.push(g.parse()?);
                }
            }
        }
        hops.sort();
        Ok(hops)
    }

    /// The router's next hops for the VIP, as node indices (unknown gateways fail).
    pub fn nexthop_nodes(&self) -> Result<Vec<usize>> {
        self.nexthops()?
            .into_iter()
            .map(|g| {
                self.nodes
                    .iter()
                    .position(|n| n.ext_addr == g)
                    .with_context(|| format!("next hop {g} is no node"))
            })
            .collect()
    }

    /// Waits until the router's VIP route goes over exactly `nodes`; how long it took.
    pub fn wait_nexthops(&self, nodes: &[usize], timeout: Duration) -> Result<Duration> {
        let mut want: Vec<usize> = nodes.to_vec();
        want.sort();
        let t0 = Instant::now();
        wait_for(
            &format!("the router's VIP route over nodes {want:?}"),
            timeout,
            Duration::from_millis(10),
            || Ok((self.nexthop_nodes()? == want).then_some(())),
        )
        .with_context(|| {
            format!(
                "the router has next hops {:?}\nrouter BIRD:\n{}",
                self.nexthops(),
                self.router_bird.log_tail(20)
            )
        })?;
        Ok(t0.elapsed())
    }

    /// The node the router's FIB picks for client `i`'s packets to the VIP (`ip route get`
    /// as for a packet arriving from the NAT: the same multipath hash as forwarding).
    pub fn node_of(&self, i: usize) -> Result<usize> {
        let v = self.router.ip_json(&[
            "-4",
            "route",
            "get",
            &VIP.to_string(),
            "from",
            &public(i).to_string(),
            "iif",
            "isp",
        ])?;
        let gw: Ipv4Addr = v[0]["gateway"]
            .as_str()
            .with_context(|| format!("route get for client {i}: no gateway in {v}"))?
            .parse()?;
        self.nodes
            .iter()
            .position(|n| n.ext_addr == gw)
            .with_context(|| format!("client {i} routed via {gw}, no node"))
    }

    /// [`ClusterLab::node_of`] for every client.
    pub fn nodes_of_clients(&self) -> Result<Vec<usize>> {
        (0..self.clients.len()).map(|i| self.node_of(i)).collect()
    }

    /// The nodes holding the VRRP address.
    pub fn vrrp_masters(&self) -> Result<Vec<usize>> {
        let mut v = Vec::new();
        for (k, n) in self.nodes.iter().enumerate() {
            if n.holds(GATEWAY)? {
                v.push(k);
            }
        }
        Ok(v)
    }

    /// Waits until node `k` alone holds the VRRP address; how long it took.
    pub fn wait_vrrp_master(&self, k: usize, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        wait_for(
            &format!(
                "{} to hold the VRRP address {GATEWAY} alone",
                self.nodes[k].name
            ),
            timeout,
            Duration::from_millis(10),
            || Ok((self.vrrp_masters()? == [k]).then_some(())),
        )
        .with_context(|| {
            format!(
                "masters now {:?}; keepalived {}:\n{}",
                self.vrrp_masters(),
                self.nodes[k].name,
                self.nodes[k].keepalived_tail(15)
            )
        })?;
        Ok(t0.elapsed())
    }

    /// Every configured backend's neighbour entry for its gateway: the MAC (if resolved).
    /// A spare responder (added at runtime) takes no new client, so it has none to resolve.
    pub fn gateway_macs(&self) -> Result<Vec<Option<[u8; 6]>>> {
        self.backends[..self.listed]
            .iter()
            .map(|b| {
                let v = b.ip_json(&["-4", "neigh", "show", &GATEWAY.to_string(), "dev", "eth0"])?;
                v[0]["lladdr"].as_str().map(lab_sys::parse_mac).transpose()
            })
            .collect()
    }

    /// Waits until every backend's gateway entry names node `k`'s `int` MAC (a new
    /// master's gratuitous ARP has reached them); how long it took.
    pub fn wait_gateway_mac(&self, k: usize, timeout: Duration) -> Result<Duration> {
        let mac = self.nodes[k].ns.mac(INT)?;
        let t0 = Instant::now();
        wait_for(
            &format!(
                "every backend's gateway entry on {}'s MAC",
                self.nodes[k].name
            ),
            timeout,
            Duration::from_millis(10),
            || {
                Ok(self
                    .gateway_macs()?
                    .iter()
                    .all(|m| *m == Some(mac))
                    .then_some(()))
            },
        )?;
        Ok(t0.elapsed())
    }

    /// Cuts node `k` off: its ports on both switches (the router's bridge, the backends'
    /// switch) go down, as a node that loses power or its cables. Its processes keep
    /// running, alone.
    pub fn cut_node(&self, k: usize) -> Result<()> {
        let port = &self.nodes[k].name;
        self.router.ip(&["link", "set", port, "down"])?;
        self.switch.ip(&["link", "set", port, "down"])?;
        Ok(())
    }

    /// The node that takes the VRRP address over when `gone` leaves: the highest priority
    /// among the others of `started`.
    pub fn next_master(&self, started: &[usize], gone: usize) -> Option<usize> {
        started
            .iter()
            .copied()
            .filter(|&k| k != gone)
            .max_by_key(|&k| self.nodes[k].priority)
    }

    /// Cuts node `lost` ([`ClusterLab::cut_node`]) and waits until the router's VIP route
    /// goes over `survivors` alone (BFD) and, when `heir` is given (the lost node held the
    /// gateway), until `heir` holds the VRRP address and every backend's gateway entry names
    /// its MAC; how long each took from the cut.
    pub fn lose_node(
        &self,
        lost: usize,
        survivors: &[usize],
        heir: Option<usize>,
    ) -> Result<Failover> {
        let t0 = Instant::now();
        self.cut_node(lost)?;
        self.wait_nexthops(survivors, Duration::from_secs(10))?;
        let route = t0.elapsed();
        let gateway = match heir {
            Some(heir) => {
                self.wait_vrrp_master(heir, Duration::from_secs(10))?;
                let held = t0.elapsed();
                self.wait_gateway_mac(heir, Duration::from_secs(10))?;
                Some((held, t0.elapsed()))
            }
            None => None,
        };
        Ok(Failover { route, gateway })
    }

    /// Client `i`'s namespace.
    pub fn client_ns(&self, i: usize) -> &NetNs {
        &self.client_ns[i]
    }

    /// `swanctl --initiate` on every client at once (one thread each).
    pub fn initiate_all(&self, timeout: Duration) -> Vec<Initiation> {
        thread::scope(|s| {
            let running: Vec<_> = self
                .clients
                .iter()
                .map(|c| s.spawn(move || c.charon.initiate("vpn", timeout)))
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("initiate thread panicked"))
                .collect()
        })
    }

    /// `count` pings through every tunnel, all clients at once: (sent, received) each.
    pub fn ping_all(&self, count: u32) -> Vec<(u32, u32)> {
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

    /// Continuous pings through every tunnel, until [`PingRun::stop`].
    pub fn start_pings(&self, interval: Duration, tag: &str) -> Result<PingRun> {
        let from: Vec<&NetNs> = self.client_ns.iter().collect();
        PingRun::start(&from, HOST_ADDR, interval, self.dir.path(), tag)
    }

    /// Every client's session as the client and every responder report it (vici).
    pub fn sessions(&self) -> Result<Vec<Session>> {
        let responder_sas: Vec<Vec<IkeSa>> = self
            .responders
            .iter()
            .map(|r| r.charon.list_sas())
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(self.clients.len());
        for c in &self.clients {
            let sas = c.charon.list_sas()?;
            let sa = sas
                .iter()
                .filter(|s| s.established())
                .max_by_key(|s| s.uniqueid)
                .or_else(|| sas.iter().max_by_key(|s| s.uniqueid));
            let Some(sa) = sa else {
                out.push(Session {
                    client_sas: 0,
                    uniqueid: 0,
                    initiator_spi: String::new(),
                    responder_spi: String::new(),
                    child_spi_in: String::new(),
                    child_spi_out: String::new(),
                    holders: Vec::new(),
                    backend: None,
                });
                continue;
            };
            let child = sa.installed_child();
            let mut holders = Vec::new();
            let mut backend = None;
            for (r, rsas) in responder_sas.iter().enumerate() {
                for rsa in rsas.iter().filter(|x| x.initiator_spi == sa.initiator_spi) {
                    holders.push(r);
                    if rsa.established() && rsa.remote_id == c.id {
                        backend = Some(r);
                    }
                }
            }
            out.push(Session {
                client_sas: sas.len(),
                uniqueid: sa.uniqueid,
                initiator_spi: sa.initiator_spi.clone(),
                responder_spi: sa.responder_spi.clone(),
                child_spi_in: child.map(|c| c.spi_in.clone()).unwrap_or_default(),
                child_spi_out: child.map(|c| c.spi_out.clone()).unwrap_or_default(),
                holders,
                backend,
            });
        }
        Ok(out)
    }

    /// Every started node's data-path counters (`None` for a node whose daemon does not
    /// answer).
    pub fn counters(&self) -> Vec<Option<Counters>> {
        self.nodes.iter().map(|n| n.counters().ok()).collect()
    }

    /// Logs for a failure message: the router's BIRD, and each node's daemon, BIRD and
    /// keepalived (last `n` lines each).
    pub fn log_tails(&self, n: usize) -> String {
        let mut s = format!("--- router BIRD\n{}\n", self.router_bird.log_tail(n));
        for node in &self.nodes {
            write!(
                s,
                "--- {} daemon\n{}\n--- {} BIRD\n{}\n--- {} keepalived\n{}\n",
                node.name,
                node.daemon_tail(n),
                node.name,
                node.bird()
                    .map_or_else(|| "not running".into(), |b| b.log_tail(n)),
                node.name,
                node.keepalived_tail(n),
            )
            .expect("write to String");
        }
        s
    }

    /// The router's BIRD.
    pub fn router_bird(&self) -> &Bird {
        &self.router_bird
    }

    /// Fails unless the router's VIP route goes over `nodes` now.
    pub fn ensure_nexthops(&self, nodes: &[usize]) -> Result<()> {
        let got = self.nexthop_nodes()?;
        if got != nodes {
            bail!("the router's VIP route is over nodes {got:?}, want {nodes:?}");
        }
        Ok(())
    }
}

impl ClusterLab {
    /// Copy every log and config of the run (charons, each node's daemon, BIRD and
    /// keepalived, the router's BIRD, the pings) to `dest/<run prefix>/`: the run's own
    /// directory disappears with the lab.
    pub fn save_logs(&self, dest: &Path) -> Result<PathBuf> {
        let to = dest.join(self.prefix.as_str());
        std::fs::create_dir_all(&to).with_context(|| format!("mkdir {}", to.display()))?;
        let wanted = |name: &str| {
            [".log", ".conf", ".yaml", ".out"]
                .iter()
                .any(|ext| name.ends_with(ext))
        };
        for entry in std::fs::read_dir(self.dir.path())?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                let peer = name.strip_prefix("charon-").unwrap_or(&name);
                for file in std::fs::read_dir(&path)?.flatten() {
                    let fname = file.file_name().to_string_lossy().into_owned();
                    if wanted(&fname) && file.path().is_file() {
                        let _ = std::fs::copy(file.path(), to.join(format!("{peer}-{fname}")));
                    }
                }
            } else if wanted(&name) {
                let _ = std::fs::copy(&path, to.join(&name));
            }
        }
        Ok(to)
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        // $IKELB_INTEROP_LOGS=DIR keeps every log, also when a test fails.
        if let Some(dest) = std::env::var_os(LOGS_ENV) {
            match self.save_logs(Path::new(&dest)) {
                Ok(to) => eprintln!("cluster lab: logs saved in {}", to.display()),
                Err(e) => eprintln!("cluster lab: cannot save logs: {e:#}"),
            }
        }
        // Signal every charon first so their shutdowns overlap; each guard then waits for its
        // own process as the fields drop.
        for c in self
            .clients
            .iter_mut()
            .map(|c| &mut c.charon)
            .chain(self.responders.iter_mut().map(|r| &mut r.charon))
        {
            c.request_stop();
        }
    }
}

/// The shipped router config with one session per node (`nodeK`, neighbour
/// [`node_ext`]`(K-1)`), logging to its file, and short reconnect timers; BFD and hold time
/// as shipped.
fn router_bird_config(nodes: usize) -> Result<String> {
    let mut sessions = String::new();
    for k in 0..nodes {
        write!(
            sessions,
            "protocol bgp node{} from ikelb_node {{\n\tneighbor {} as 65001;\n}}\n\n",
            k + 1,
            node_ext(k)
        )
        .expect("write to String");
    }
    bird::deploy_config(
        "router.conf",
        &[
            ("log syslog all;", "log stderr all;"),
            ("connect retry time 10;", "connect retry time 1;"),
            ("error wait time 5, 30;", "error wait time 1, 5;"),
            (
                "protocol bgp node1 from ikelb_node {\n\tneighbor 192.0.2.1 as 65001;\n}\n\n\
                 protocol bgp node2 from ikelb_node {\n\tneighbor 192.0.2.3 as 65001;\n}\n",
                &sessions,
            ),
        ],
    )
}
