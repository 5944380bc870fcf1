//! The standard lab: IKEv2 clients, the ikelb gateway, and VPN servers behind it.
//!
//! ```text
//!  ns client                 ns gw (ikelb)                ns bridge           ns b1..bN
//!  eth0 192.0.2.2/24 ───── ext 192.0.2.1/24          int ───── gw ┐
//!   + 100.64.1.1–…/32        + VIP 203.0.113.10/32   10.0.0.1/24  br0 ├ b1 ── eth0 10.0.0.11/24
//!   default via 192.0.2.1    100.64/16 via 192.0.2.2              ├ b2 ── eth0 10.0.0.12/24
//!                            ip_forward=1                         └ b3 ── eth0 10.0.0.13/24
//!                                                                   default via 10.0.0.1
//! ```
//!
//! * **Clients**: one namespace stands for the internet: its single veth carries every client
//!   address (100.64.1.1, .2, … as /32s, 250 per /24), the way a NATing ISP router would
//!   present many subscribers. A client is a socket bound to one of those addresses.
//! * **VIP on the gateway's external interface** (a /32 on `ext`), as an appliance owns its
//!   VIP: the gateway answers ARP and ping for it, and what the XDP program passes (other
//!   ports, other protocols) meets the gateway's own stack — a port-unreachable — instead of
//!   being routed back out. It also makes the negative control sharp: before the daemon
//!   runs, a datagram to VIP:500 is the gateway's own business and no backend ever answers.
//! * **Backends use the client's real address** ("Use Client IP"): their default route is the
//!   gateway's internal address, so their replies to 100.64.x.y return through it.
//! * **veth and XDP**: a frame that XDP_REDIRECT puts into a veth is dropped unless the
//!   *receiving* end has an XDP program or GRO (it needs NAPI), so GRO is on at the two ends that
//!   receive redirected frames: the client's `eth0` (replies) and the bridge's `gw` port
//!   (requests). Locally generated UDP on veth carries only the pseudo-header sum
//!   (CHECKSUM_PARTIAL), which would hide a wrong incremental checksum update, so the senders
//!   (client `eth0`, backend `eth0`) have tx checksum offload off and every UDP checksum on the
//!   wire is real; receivers verify it and count failures in `Udp: InCsumErrors`.
//! * IPv6 is off everywhere (the lab is IPv4; router solicitations would only add noise).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::responder::Stats;
use super::{
    reap_stale, wait_for, BpfFs, Child, NetNs, RunPrefix, TempDir, UdpProbe, Veth, XdpAttachment,
};

/// The virtual server's address.
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The gateway's interface toward the clients.
pub const GW_EXT: &str = "ext";
/// The gateway's interface toward the backends.
pub const GW_INT: &str = "int";
/// The persistency group: IKE and NAT-T.
pub const BACKEND_PORTS: [u16; 2] = [500, 4500];

const GW_EXT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT_LINK_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const GW_INT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Port the daemon's Prometheus endpoint listens on, on the gateway's loopback.
const METRICS_PORT: u16 = 9435;

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Prefix role letter: `t` tests, `d` demo (see [`RunPrefix`]).
    pub role: char,
    /// Number of client addresses (100.64.1.1 onward).
    pub clients: usize,
    /// Number of backends (10.0.0.11 onward), at most 200.
    pub backends: usize,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            role: 't',
            clients: 250,
            backends: 3,
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
    daemon: Option<Child>,
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
    bpffs: BpfFs,
    dir: TempDir,
    prefix: RunPrefix,
}

fn client_addr(i: usize) -> Ipv4Addr {
    assert!(i < 250 * 254, "too many clients");
    Ipv4Addr::new(100, 64, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

impl Lab {
    /// Build the namespaces, links, addresses and routes. No process runs yet.
    pub fn build(spec: &LabSpec) -> Result<Self> {
        ensure!(
            spec.backends >= 1 && spec.backends <= 200,
            "1..=200 backends"
        );
        ensure!(spec.clients >= 1, "at least one client");
        reap_stale();
        let prefix = RunPrefix::new(spec.role);
        let dir = TempDir::new(&prefix)?;
        let bpffs = BpfFs::mount(dir.path().join("bpffs"))?;

        let client_ns = NetNs::new(prefix.name("client"))?;
        let gateway = NetNs::new(prefix.name("gw"))?;
        let bridge = NetNs::new(prefix.name("bridge"))?;
        let mut backends = Vec::with_capacity(spec.backends);
        for i in 0..spec.backends {
            let name = format!("b{}", i + 1);
            backends.push(BackendNs {
                addr: Ipv4Addr::new(10, 0, 0, 11 + i as u8),
                ns: NetNs::new(prefix.name(&name))?,
                name,
            });
        }

        let mut veths = vec![
            Veth::down((&client_ns, "eth0"), (&gateway, GW_EXT))?,
            Veth::down((&gateway, GW_INT), (&bridge, "gw"))?,
        ];
        let mut ports = String::from(
            "link add br0 type bridge stp_state 0 forward_delay 0\n\
             link set gw up\n\
             link set gw master br0\n",
        );
        for b in &backends {
            veths.push(Veth::down((&b.ns, "eth0"), (&bridge, &b.name))?);
            writeln!(ports, "link set {0} up\nlink set {0} master br0", b.name)
                .expect("write to String");
        }
        ports.push_str("link set br0 up\n");
        bridge.ip_batch(&ports)?;

        let clients: Vec<Ipv4Addr> = (0..spec.clients).map(client_addr).collect();
        let mut batch = format!(
            "link set eth0 up\naddr add {CLIENT_LINK_ADDR}/24 dev eth0\n\
             route add default via {GW_EXT_ADDR}\n"
        );
        for c in &clients {
            writeln!(batch, "addr add {c}/32 dev eth0").expect("write to String");
        }
        client_ns.ip_batch(&batch)?;

        gateway.ip_batch(&format!(
            "link set {GW_EXT} up\n\
             link set {GW_INT} up\n\
             addr add {GW_EXT_ADDR}/24 dev {GW_EXT}\n\
             addr add {VIP}/32 dev {GW_EXT}\n\
             addr add {GW_INT_ADDR}/24 dev {GW_INT}\n\
             route add 100.64.0.0/16 via {CLIENT_LINK_ADDR}\n"
        ))?;
        gateway.sysctl("net/ipv4/ip_forward", "1")?;

        for b in &backends {
            b.ns.ip_batch(&format!(
                "link set eth0 up\naddr add {}/24 dev eth0\nroute add default via {GW_INT_ADDR}\n",
                b.addr
            ))?;
            b.ns.ethtool_features("eth0", &[("tx", false)])?;
        }
        client_ns.ethtool_features("eth0", &[("tx", false), ("gro", true)])?;
        bridge.ethtool_features("gw", &[("gro", true)])?;

        Ok(Self {
            daemon: None,
            responders: Vec::new(),
            _veths: veths,
            client_ns,
            gateway,
            bridge,
            backends,
            clients,
            bpffs,
            dir,
            prefix,
        })
    }

    pub fn prefix(&self) -> &RunPrefix {
        &self.prefix
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

    /// Start `ikelb-responder` in every backend namespace on [`BACKEND_PORTS`] and ESP, and wait until
    /// each answers on every port (asked directly from the gateway, which is on their segment).
    pub fn start_responders(&mut self, responder: &Path) -> Result<()> {
        let ports: Vec<String> = BACKEND_PORTS.iter().map(u16::to_string).collect();
        for b in &self.backends {
            let mut cmd = b.ns.command(responder);
            cmd.args(["--name", &b.name, "--ports", &ports.join(","), "--esp"]);
            let log = self.dir.path().join(format!("responder-{}.log", b.name));
            self.responders
                .push(Child::spawn(&format!("responder {}", b.name), cmd, log)?);
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

    /// The daemon configuration for this lab (schema v1, docs/configuration.md): both gateway interfaces,
    /// native XDP, every backend with weight 1, fast health checks, and every path inside this
    /// run's directory.
    pub fn daemon_config(&self) -> String {
        let dir = self.dir.path();
        let mut backends = String::new();
        for b in &self.backends {
            writeln!(backends, "      - address: {}", b.addr).expect("write to String");
        }
        format!(
            "# ikelb lab {prefix}: written by ikelb-tests\n\
             interfaces: [{GW_EXT}, {GW_INT}]\n\
             mode: nat\n\
             xdp_mode: native\n\
             persistence_timeout: 30m\n\
             hash_seed: 0x5eed\n\
             virtual_servers:\n\
             \x20 - name: aovpn\n\
             \x20   vip: {VIP}\n\
             \x20   ports: [{p0}, {p1}]\n\
             \x20   esp: true\n\
             \x20   backends:\n\
             {backends}\
             health_check:\n\
             \x20 interval: 200ms\n\
             \x20 timeout: 150ms\n\
             \x20 fall: 3\n\
             \x20 rise: 1\n\
             control:\n\
             \x20 socket: {sock}\n\
             metrics:\n\
             \x20 listen: 127.0.0.1:{METRICS_PORT}\n\
             state_dir: {state}\n\
             bpffs: {bpffs}\n\
             detach_on_exit: true\n",
            prefix = self.prefix.as_str(),
            p0 = BACKEND_PORTS[0],
            p1 = BACKEND_PORTS[1],
            sock = dir.join("ctl.sock").display(),
            state = dir.join("state").display(),
            bpffs = self.bpffs.path().display(),
        )
    }

    /// Path of the control socket named in [`Lab::daemon_config`].
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// Write [`Lab::daemon_config`] and start `lb-ctl daemon --config` in the gateway
    /// namespace, then wait until an XDP program is attached to both gateway interfaces in
    /// native mode. Fails early, with the daemon's output, if it exits.
    pub fn start_daemon(&mut self, lb_ctl: &Path) -> Result<()> {
        let config = self.daemon_config();
        self.start_daemon_with_config(lb_ctl, &config)
    }

    /// [`Lab::start_daemon`] with another config text (e.g. [`Lab::daemon_config`] edited).
    /// A daemon that has exited (or was killed) may be started again: its output goes on in
    /// the same log. On a restart over pinned maps XDP is already attached, so this returns
    /// as soon as the process runs; wait for its log line to know it took over.
    pub fn start_daemon_with_config(&mut self, lb_ctl: &Path, config_text: &str) -> Result<()> {
        if let Some(d) = self.daemon.as_mut() {
            ensure!(d.exit_status().is_some(), "daemon already running");
        }
        let config = self.dir.path().join("ikelb.yaml");
        std::fs::write(&config, config_text)?;
        let mut cmd = self.gateway.command(lb_ctl);
        cmd.arg("daemon").arg("--config").arg(&config);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.env("NO_COLOR", "1");
        let log = self.dir.path().join("daemon.log");
        self.daemon = Some(Child::spawn("lb-ctl daemon", cmd, log)?);
        let attached = wait_for(
            "the daemon to attach XDP to ext and int",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let daemon = self.daemon.as_mut().expect("just set");
                if let Some(status) = daemon.exit_status() {
                    bail!(
                        "lb-ctl daemon exited ({status}):\n{}",
                        daemon.output_tail(40)
                    );
                }
                let ext = self.gateway.xdp(GW_EXT)?;
                let int = self.gateway.xdp(GW_INT)?;
                Ok(ext.zip(int))
            },
        );
        let (ext, int) = attached.with_context(|| self.daemon_output_tail(40))?;
        for (ifname, a) in [(GW_EXT, ext), (GW_INT, int)] {
            ensure!(
                a.mode == XdpAttachment::MODE_NATIVE,
                "XDP on {ifname} is attached in mode {} (want native, 1)",
                a.mode
            );
        }
        Ok(())
    }

    /// The daemon, if started.
    pub fn daemon(&mut self) -> Option<&mut Child> {
        self.daemon.as_mut()
    }

    /// The daemon's last `n` lines of output, or a note that it never ran.
    pub fn daemon_output_tail(&self, n: usize) -> String {
        match &self.daemon {
            Some(d) => format!("daemon output (last {n} lines):\n{}", d.output_tail(n)),
            None => "daemon not started".into(),
        }
    }

    /// Stop the daemon (SIGTERM), returning whether it exited cleanly.
    pub fn stop_daemon(&mut self) -> Result<std::process::ExitStatus> {
        let d = self.daemon.as_mut().context("daemon not started")?;
        d.stop(Duration::from_secs(5))
    }

    /// `lb-ctl --socket … ARGS`; stdout on success. The control socket is a path in the
    /// filesystem, reachable from any network namespace, so `lb-ctl` runs as an operator's
    /// shell would start it, without `ip netns exec` (which costs a mount namespace per run).
    pub fn lb_ctl(&self, lb_ctl: &Path, args: &[&str]) -> Result<String> {
        let sock = self.control_socket();
        let mut all = vec!["--socket", sock.to_str().context("non-UTF-8 path")?];
        all.extend_from_slice(args);
        super::run(lb_ctl.to_str().context("non-UTF-8 path")?, &all)
    }

    /// One request of the control protocol (docs/operations.md, "Control socket": a JSON
    /// line out, a JSON line back), sent by the test itself: the reply's `ok` object, or the
    /// daemon's error as an `Err`. For polls and bulk reads, where starting `lb-ctl` per
    /// request would be most of the test's time in an emulated guest (docs/kernels.md).
    pub fn request(&self, request: &serde_json::Value) -> Result<serde_json::Value> {
        let mut replies = self.requests(std::slice::from_ref(request))?;
        Ok(replies.remove(0))
    }

    /// Several requests on one connection, written at once and answered in order (the
    /// protocol's pipelining): each reply's `ok` object, or the first error.
    pub fn requests(&self, requests: &[serde_json::Value]) -> Result<Vec<serde_json::Value>> {
        let path = self.control_socket();
        let mut s = UnixStream::connect(&path)
            .with_context(|| format!("connect to the control socket {}", path.display()))?;
        s.set_read_timeout(Some(super::patience(Duration::from_secs(5))))?;
        let mut out = String::new();
        for r in requests {
            writeln!(out, "{r}").expect("write to String");
        }
        s.write_all(out.as_bytes())?;
        let mut reader = BufReader::new(&s);
        let mut replies = Vec::with_capacity(requests.len());
        for request in requests {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .with_context(|| format!("read the control reply to {request}"))?;
            let reply: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("reply to {request} not JSON: {line:?}"))?;
            match (reply.get("ok"), reply.get("error")) {
                (Some(ok), None) => replies.push(ok.clone()),
                (None, Some(err)) => bail!("{request}: the daemon refused it: {err}"),
                _ => bail!("{request}: unexpected reply {reply}"),
            }
        }
        Ok(replies)
    }

    /// The daemon's `/metrics` page (HTTP/1.0 GET on the gateway's loopback).
    pub fn metrics(&self) -> Result<String> {
        self.gateway.run(|| -> Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT))
                .context("connect to the daemon's metrics endpoint")?;
            s.set_read_timeout(Some(super::patience(Duration::from_secs(2))))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
            ensure!(
                head.starts_with("HTTP/1.") && head.contains(" 200"),
                "metrics: {head}"
            );
            Ok(body.to_string())
        })?
    }

    /// `Udp: InCsumErrors` of every namespace, as (role, count).
    pub fn udp_csum_errors(&self) -> Result<Vec<(String, i64)>> {
        self.namespaces()
            .into_iter()
            .map(|(role, ns)| Ok((role.to_string(), ns.snmp()?.get("Udp.InCsumErrors"))))
            .collect()
    }
}
