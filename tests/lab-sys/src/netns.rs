//! Network namespaces and the veth pairs between them.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{run, run_stdin, NETNS_RUN_DIR};

/// A network namespace made with `ip netns add` (so `ip netns exec` and `ip -n` reach it),
/// deleted with `ip netns del` on drop, which takes its links with it. Loopback is brought up
/// and IPv6 is disabled on creation: router solicitations and DAD would only add noise to the
/// counters a test or a measurement reads; [`NetNs::enable_ipv6`] switches it on without them.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
        ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Switch IPv6 on for the namespace's future links and for `ifaces` (links made while it
    /// was off), without duplicate address detection, router solicitations or router
    /// advertisements: addresses are usable at once and no autoconfiguration adds traffic.
    pub fn enable_ipv6(&self, ifaces: &[&str]) -> Result<()> {
        for conf in ["all", "default"].iter().chain(ifaces) {
            for (key, value) in [
                ("accept_dad", "0"),
                ("router_solicitations", "0"),
                ("accept_ra", "0"),
                ("disable_ipv6", "0"),
            ] {
                self.sysctl(&format!("net/ipv6/conf/{conf}/{key}"), value)?;
            }
        }
        Ok(())
    }

    /// `ip -n NAME ARGS…`; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -j -n NAME ARGS…`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all)?;
        serde_json::from_str(&out).with_context(|| format!("ip -j {args:?}: not JSON: {out}"))
    }

    /// Many `ip` commands in one process (`ip -n NAME -batch -`), one per line.
    pub fn ip_batch(&self, commands: &str) -> Result<()> {
        run_stdin("ip", &["-n", &self.name, "-batch", "-"], commands)
    }

    /// `ip netns exec NAME PROGRAM ARGS…`; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// [`NetNs::exec`] with `input` on the program's stdin (`nft -f -`).
    pub fn exec_stdin(&self, program: &str, args: &[&str], input: &str) -> Result<()> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run_stdin("ip", &all, input)
    }

    /// A `Command` that runs `program` inside this namespace (`ip netns exec`, which execs, so
    /// the child's PID is the program's own).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Run `f` on a fresh thread that has joined this namespace (setns on
    /// `/run/netns/NAME`), and return its result. Sockets opened there belong to this
    /// namespace for their whole life, wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new(NETNS_RUN_DIR).join(&self.name);
        thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                enter_netns(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|panic| {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                anyhow!("thread in namespace {} panicked: {msg}", self.name)
            })?
        })
    }

    /// Write `value` to `/proc/sys/KEY` as seen from this namespace (`KEY` with slashes, e.g.
    /// `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| fs::write(&path, value))?
            .with_context(|| format!("{}: sysctl {key}={value}", self.name))
    }

    /// A file of this namespace's `/proc/net` (`snmp`, `snmp6`, `dev`, …).
    pub fn proc_net(&self, file: &str) -> Result<String> {
        // /proc/net is /proc/self/net, which follows the main thread's namespace; the thread
        // that joined this one must look at its own.
        let path = Path::new("/proc/thread-self/net").join(file);
        self.run(|| fs::read_to_string(&path))?
            .with_context(|| format!("{}: read /proc/net/{file}", self.name))
    }

    /// This namespace's `/proc/net/snmp` counters, keyed `Proto.Field` (`Udp.InCsumErrors`).
    pub fn snmp(&self) -> Result<Snmp> {
        Snmp::parse(&self.proc_net("snmp")?)
    }

    /// `ethtool -K IF FEATURE on|off …` inside this namespace.
    pub fn ethtool_features(&self, ifname: &str, features: &[(&str, bool)]) -> Result<()> {
        let mut args = vec!["-K", ifname];
        for (feature, on) in features {
            args.push(feature);
            args.push(if *on { "on" } else { "off" });
        }
        self.exec("ethtool", &args).map(drop)
    }

    /// The `ip -j link show` object of `ifname`.
    pub fn link(&self, ifname: &str) -> Result<serde_json::Value> {
        let mut v = self.ip_json(&["link", "show", "dev", ifname])?;
        match v.as_array_mut().and_then(|a| a.pop()) {
            Some(link) => Ok(link),
            None => bail!("{}: no link {ifname}", self.name),
        }
    }

    /// The ifindex of `ifname` in this namespace (if_nametoindex there: no process).
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let c = CString::new(ifname)?;
        // SAFETY: a valid NUL-terminated string; if_nametoindex asks the thread's namespace.
        let i = self.run(|| unsafe { libc::if_nametoindex(c.as_ptr()) })?;
        ensure!(i != 0, "{}: no interface {ifname}", self.name);
        Ok(i)
    }

    /// The MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let link = self.link(ifname)?;
        let address = link["address"]
            .as_str()
            .with_context(|| format!("{}: no address for {ifname} in {link}", self.name))?;
        parse_mac(address).with_context(|| format!("{}: MAC of {ifname}", self.name))
    }

    /// XDP attachment of `ifname` from `ip -j link`: `None` when nothing is attached, else
    /// the attach mode (1 native/driver, 2 generic/skb, 3 offload, 4 several) and the
    /// program id.
    pub fn xdp(&self, ifname: &str) -> Result<Option<XdpAttachment>> {
        let link = self.link(ifname)?;
        let Some(xdp) = link.get("xdp") else {
            return Ok(None);
        };
        let mode = xdp.get("mode").and_then(|m| m.as_u64()).unwrap_or(0);
        let prog_id = xdp
            .get("prog")
            .and_then(|p| p.get("id"))
            .and_then(|i| i.as_u64())
            .unwrap_or(0);
        Ok(Some(XdpAttachment { mode, prog_id }))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("lab: cannot delete namespace {}: {e:#}", self.name);
        }
    }
}

fn enter_netns(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: plain syscall on a valid fd; CLONE_NEWNET moves only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns {}", path.display()));
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    ensure!(parts.len() == 6, "not a MAC: {s}");
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC: {s}"))?;
    }
    Ok(mac)
}

/// What `ip -j link` says about an XDP attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpAttachment {
    /// `XDP_ATTACHED_*`: 1 driver (native), 2 skb (generic), 3 hardware, 4 multiple.
    pub mode: u64,
    pub prog_id: u64,
}

impl XdpAttachment {
    pub const MODE_NATIVE: u64 = 1;
    pub const MODE_GENERIC: u64 = 2;
}

/// `/proc/net/snmp`, keyed `Proto.Field`.
#[derive(Clone, Debug, Default)]
pub struct Snmp(pub HashMap<String, i64>);

impl Snmp {
    /// The file alternates a header line and a value line per protocol:
    /// `Udp: InDatagrams NoPorts …` / `Udp: 12 0 …`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut map = HashMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [header, values] = pair else {
                bail!("odd line count in /proc/net/snmp")
            };
            let (proto, names) = header.split_once(':').context("snmp: no ':'")?;
            let (_, values) = values.split_once(':').context("snmp: no ':'")?;
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                map.insert(format!("{proto}.{name}"), value.parse().unwrap_or(0));
            }
        }
        Ok(Self(map))
    }

    /// A counter, 0 when the kernel does not have it.
    pub fn get(&self, key: &str) -> i64 {
        self.0.get(key).copied().unwrap_or(0)
    }
}

/// A veth pair with each end in a namespace of this run. Deleting one end deletes both;
/// dropping the guard deletes them (deleting the namespace would as well: the guard only
/// makes the order explicit).
#[derive(Debug)]
pub struct Veth {
    ns: String,
    ifname: String,
}

impl Veth {
    /// `ip link add A netns NS_A type veth peer name B netns NS_B`, both ends up. Names need no
    /// run prefix: they are created directly inside the namespaces.
    pub fn new(a: (&NetNs, &str), b: (&NetNs, &str)) -> Result<Self> {
        let veth = Self::down(a, b)?;
        a.0.ip(&["link", "set", a.1, "up"])?;
        b.0.ip(&["link", "set", b.1, "up"])?;
        Ok(veth)
    }

    /// As [`Veth::new`], both ends left down: for a caller that sets them up in its own
    /// `ip -batch` of each namespace (one process instead of two more per pair).
    pub fn down(a: (&NetNs, &str), b: (&NetNs, &str)) -> Result<Self> {
        run(
            "ip",
            &[
                "link",
                "add",
                a.1,
                "netns",
                a.0.name(),
                "type",
                "veth",
                "peer",
                "name",
                b.1,
                "netns",
                b.0.name(),
            ],
        )?;
        Ok(Self {
            ns: a.0.name().to_string(),
            ifname: a.1.to_string(),
        })
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Quietly: the namespace may already be gone, which took the pair with it.
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.ifname])
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_parses_header_value_pairs() {
        let s = Snmp::parse(
            "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InCsumErrors\n\
             Udp: 5 1 2\n",
        )
        .unwrap();
        assert_eq!(s.get("Udp.InCsumErrors"), 2);
        assert_eq!(s.get("Ip.Forwarding"), 1);
        assert_eq!(s.get("Tcp.Nope"), 0);
    }

    #[test]
    fn mac_parses_six_hex_octets_only() {
        assert_eq!(
            parse_mac("02:00:0a:FF:00:01\n").unwrap(),
            [2, 0, 0x0a, 0xff, 0, 1]
        );
        assert!(parse_mac("02:00:0a:ff:00").is_err());
        assert!(parse_mac("02:00:0a:ff:00:zz").is_err());
    }
}
