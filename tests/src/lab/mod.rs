//! Network-namespace lab: RAII guards for namespaces, veth pairs, child processes, temporary
//! directories and bpffs mounts, plus the helpers the tests and the demo use to act inside a
//! namespace without a subprocess.
//!
//! Every guard undoes what it made when dropped — also while a failing test unwinds — so a run
//! leaves no namespace, link, process or mount behind. A run that was killed outright (SIGKILL,
//! power loss) cannot run its destructors; [`reap_stale`] removes such leftovers the next time a
//! lab is built: every name starts with a prefix that carries the owning PID
//! ([`RunPrefix`]), and a prefix whose PID is gone is fair game.
//!
//! Only namespaces made here carry traffic: nothing touches the root namespace's links or
//! routes.

pub mod control;
pub mod dual;
pub mod flood;
pub mod metrics;
pub mod raw;
pub mod responder;
pub mod sock;
mod topology;
mod traffic;
pub mod traffic6;

pub use topology::{Lab, LabSpec, BACKEND_PORTS, GW_EXT, GW_INT, VIP};
pub use traffic::{send_bad_checksum, tcp_ask, EspProbe, Reply, UdpProbe};

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

/// Where `ip netns add` keeps the namespace handles.
const NETNS_RUN_DIR: &str = "/run/netns";

/// True when this process may build namespaces and attach XDP programs. The root-only tests
/// check it first and say why they skip.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A per-run name prefix: `ik` + role letter + PID + a per-process counter, e.g. `ikt4711n0`.
/// Namespaces are named `<prefix>-<what>`, so two test processes (or two labs of one process)
/// never collide, and [`reap_stale`] can tell whose leftovers a name is. Interfaces live inside
/// those namespaces and need no prefix (interface names are per namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPrefix(String);

impl RunPrefix {
    /// A fresh prefix for `role` (`t` tests, `d` demo, `6` protocol tests, …: one lowercase
    /// letter or digit).
    pub fn new(role: char) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(format!("ik{role}{}n{n}", std::process::id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of one of this run's objects: `<prefix>-<what>`.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.0)
    }
}

/// PID encoded in a name made by [`RunPrefix`] (`ik?<pid>n<k>` or `ik?<pid>n<k>-…`), if it
/// is one.
fn prefix_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ik")?;
    let mut chars = rest.chars();
    chars
        .next()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())?;
    let rest = chars.as_str();
    let (pid, rest) = rest.split_once('n')?;
    let counter = rest.split_once('-').map_or(rest, |(counter, _)| counter);
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Delete the namespaces (and with them their links and the processes' network) left behind by
/// lab runs whose process no longer exists. Also unmounts their bpffs mounts and removes their
/// directories under the system temp dir.
pub fn reap_stale() {
    let dead = |name: &str| {
        prefix_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                eprintln!("lab: removing stale namespace {name} and its processes");
                // Children of the dead run that outlived it (they normally die with it: see
                // `Child`): only processes inside this run's own namespace.
                if let Ok(pids) = run("ip", &["netns", "pids", &name]) {
                    for pid in pids
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        // SAFETY: kill(2) has no memory-safety preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_prefix("ikelb-lab-") {
                if dead(stem) {
                    eprintln!("lab: removing stale directory {}", entry.path().display());
                    let _ = umount(&entry.path().join("bpffs"));
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// Run a command, fail with its stderr if it does not exit 0, return its stdout.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    let shown = || {
        let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        format!("{program} {}", args.join(" "))
    };
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        shown(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", shown()))
}

/// Feed `ip -batch -` the given commands (one per line), optionally inside a namespace.
fn ip_batch(netns: Option<&str>, commands: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip (is iproute2 installed?)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "`ip -batch` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A network namespace made with `ip netns add` (so `ip netns exec` and `ip -n` reach it),
/// deleted with `ip netns del` on drop. Loopback is brought up and IPv6 is disabled on
/// creation: the lab is IPv4 only and router solicitations/DAD would only add noise to the
/// counters the tests read.
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
        ip_batch(Some(&self.name), commands)
    }

    /// `ip netns exec NAME PROGRAM ARGS…`; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
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

    /// This namespace's `/proc/net/snmp` counters, keyed `Proto.Field` (`Udp.InCsumErrors`).
    pub fn snmp(&self) -> Result<Snmp> {
        // /proc/net is /proc/self/net, which follows the main thread's namespace; the thread
        // that joined this one must look at its own.
        let text = self
            .run(|| fs::read_to_string("/proc/thread-self/net/snmp"))?
            .with_context(|| format!("{}: read /proc/net/snmp", self.name))?;
        Snmp::parse(&text)
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

/// A veth pair with each end in a namespace of this run, optionally addressed. Deleting one end
/// deletes both; dropping the guard deletes them (deleting the namespace would as well: the
/// guard only makes the order explicit).
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

/// A child process, stopped on drop: SIGTERM, a grace period, then SIGKILL, always reaped by
/// PID. Output goes to a log file so a failing test can show it. The child runs in its own
/// process group, so a Ctrl-C at the terminal reaches only the parent, which then stops its
/// children in order (daemon before namespaces). If the parent is killed outright, the child
/// gets SIGTERM (`PR_SET_PDEATHSIG`), and the next lab's [`reap_stale`] removes whatever is
/// left in the dead run's namespaces.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Child {
    /// Spawn `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // If this process dies without running destructors (SIGKILL), the child is told
                // to stop too. The signal follows the *thread* that spawned the child, so guards
                // are created on the thread that owns the lab (never inside `NetNs::run`).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited (reaped).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The last `n` lines the process printed, for error messages.
    pub fn output_tail(&self, n: usize) -> String {
        let all = self.output();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Ok(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "lab: {} (pid {}) ignored SIGTERM for {grace:?}: SIGKILL",
            self.name,
            self.pid()
        );
        self.signal(libc::SIGKILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("wait {}", self.name))?;
        self.exited = Some(status);
        Ok(status)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own unreaped child's PID: the PID cannot have been reused.
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(3)) {
            eprintln!("lab: cannot stop {}: {e:#}", self.name);
        }
    }
}

/// A directory under the system temp dir, removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/ikelb-lab-<prefix>`.
    pub fn new(prefix: &RunPrefix) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("ikelb-lab-{}", prefix.as_str()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("lab: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A bpffs mounted in the root mount namespace, unmounted on drop (which frees every pin in
/// it). The daemon runs under `ip netns exec`, which remounts /sys; a bpffs outside /sys stays
/// visible to it (docs/configuration.md, `bpffs`), and unmounting it releases whatever the daemon
/// pinned even if the daemon was killed.
#[derive(Debug)]
pub struct BpfFs(PathBuf);

impl BpfFs {
    pub fn mount(path: PathBuf) -> Result<Self> {
        fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        run("mount", &["-t", "bpf", "bpf", &path.to_string_lossy()])?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Err(e) = umount(&self.0) {
            eprintln!("lab: cannot unmount {}: {e:#}", self.0.display());
        }
    }
}

fn umount(path: &Path) -> Result<()> {
    // Lazy: a process still holding a pinned fd must not keep the directory busy.
    run("umount", &["-l", &path.to_string_lossy()]).map(drop)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_round_trips_its_pid() {
        let p = RunPrefix::new('t');
        assert_eq!(prefix_pid(&p.name("gw")), Some(std::process::id()));
        assert!(p.name("client").len() <= 32);
        assert_eq!(prefix_pid("ikt12n3-gw"), Some(12));
        assert_eq!(prefix_pid("ikt12n3"), Some(12));
        assert_eq!(prefix_pid("ikt12-gw"), None);
        assert_eq!(prefix_pid("ikt12n-gw"), None);
        assert_eq!(prefix_pid("other"), None);
        assert_eq!(prefix_pid("ikT12n3-gw"), None);
        // Role `6` (netns_protocols): `ik6<pid>n<k>`.
        assert_eq!(prefix_pid("ik6412n0-b1"), Some(412));
        assert_eq!(
            prefix_pid(&RunPrefix::new('6').name("gw")),
            Some(std::process::id())
        );
    }

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
}
