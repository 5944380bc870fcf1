//! The benchmark's contact with the system: namespaces, veth pairs, child processes, sysctls,
//! mounts and temporary directories, each behind a guard that undoes it on drop — also while
//! an error unwinds, and after SIGINT/SIGTERM (the handler only sets a flag; the measuring
//! loops poll it and return an error, so every destructor runs).
//!
//! Names start with [`Prefix`] (`ikb<pid>n0`), the format the test lab's reaper also
//! recognises; [`reap_stale`] removes what a killed earlier run left behind.
//!
//! These are small on purpose (the test lab under `tests/src/lab` has richer ones, but the
//! benchmark must not depend on the test crate).

use std::{
    ffi::CString,
    fs::{self, File},
    io::Write as _,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

const NETNS_RUN_DIR: &str = "/run/netns";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag that [`check_interrupted`] turns into an error.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) on SIGINT/SIGTERM.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// `ikb<pid>n0`: this run's name prefix.
#[derive(Clone, Debug)]
pub struct Prefix(String);

impl Prefix {
    pub fn new() -> Self {
        Self(format!("ikb{}n0", std::process::id()))
    }

    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.0)
    }
}

/// Removes namespaces and temporary directories of benchmark runs whose process is gone.
pub fn reap_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("ikb") else {
            return false;
        };
        let Some((pid, _)) = rest.split_once('n') else {
            return false;
        };
        pid.parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                eprintln!("bench: removing stale namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_prefix("ikelb-bench-") {
                if dead(stem) {
                    eprintln!("bench: removing stale directory {}", e.path().display());
                    let _ = Command::new("umount").arg(e.path().join("bpffs")).status();
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on its stdin.
pub fn run_stdin(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Moves the calling thread into namespace `name`.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: a plain syscall on a valid fd; CLONE_NEWNET moves only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {name}"));
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity(0)
    // reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// Number of online CPUs.
pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// A network namespace (`ip netns add`), deleted on drop with everything in it.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // IPv4 only: no router solicitations or DAD in the measured paths.
        ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
        ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Many `ip` commands in one process.
    pub fn ip_batch(&self, commands: &str) -> Result<()> {
        run_stdin("ip", &["-n", &self.name, "-batch", "-"], commands)
    }

    /// `ip netns exec NAME PROGRAM ARGS…`.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&self.name)?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in namespace {} panicked", self.name))?
        })
    }

    /// Writes `/proc/sys/KEY` as this namespace sees it.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| fs::write(&path, value).map_err(Into::into))
            .with_context(|| format!("{}: sysctl {key}={value}", self.name))
    }

    /// Reads a file of `/proc/thread-self/net/` (per namespace) from inside.
    pub fn proc_net(&self, file: &str) -> Result<String> {
        let path = Path::new("/proc/thread-self/net").join(file);
        self.run(|| fs::read_to_string(&path).map_err(Into::into))
    }

    /// ifindex of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let c = CString::new(ifname)?;
        // SAFETY: a valid NUL-terminated string; if_nametoindex asks the thread's namespace.
        let i = self.run(|| Ok(unsafe { libc::if_nametoindex(c.as_ptr()) }))?;
        ensure!(i != 0, "{}: no interface {ifname}", self.name);
        Ok(i)
    }

    /// MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let out = self.ip(&["-j", "link", "show", "dev", ifname])?;
        let key = "\"address\":\"";
        let at = out.find(key).context("no address in ip -j link")? + key.len();
        parse_mac(&out[at..at + 17]).with_context(|| format!("{}: MAC of {ifname}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("bench: cannot delete namespace {}: {e:#}", self.name);
        }
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    ensure!(parts.len() == 6, "not a MAC: {s}");
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC: {s}"))?;
    }
    Ok(mac)
}

/// A veth pair, one end in each namespace (deleted with the namespaces).
pub fn veth(a: (&NetNs, &str), b: (&NetNs, &str)) -> Result<()> {
    run(
        "ip",
        &[
            "link", "add", a.1, "netns", a.0.name(), "type", "veth", "peer", "name", b.1,
            "netns", b.0.name(),
        ],
    )?;
    a.0.ip(&["link", "set", a.1, "up"])?;
    b.0.ip(&["link", "set", b.1, "up"])?;
    Ok(())
}

/// A global sysctl set for the run and restored on drop.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    pub fn set(key: &str, value: &str) -> Result<Self> {
        let path = Path::new("/proc/sys").join(key);
        let old = fs::read_to_string(&path)
            .with_context(|| format!("read {}", path.display()))?
            .trim()
            .to_owned();
        fs::write(&path, value).with_context(|| format!("sysctl {key}={value}"))?;
        Ok(Self { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.old) {
            eprintln!("bench: cannot restore {}={}: {e}", self.path.display(), self.old);
        }
    }
}

/// A child process stopped with SIGTERM (then SIGKILL after 5 s) on drop.
pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM and wait (SIGKILL after 5 s); the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} did not stop on SIGTERM; killing it", self.what);
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `/tmp/ikelb-bench-<prefix>`, removed on drop (after unmounting its `bpffs`, if mounted).
pub struct TempDir {
    pub path: PathBuf,
    bpffs: bool,
}

impl TempDir {
    pub fn new(prefix: &Prefix, what: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("ikelb-bench-{}", prefix.name(what)));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path, bpffs: false })
    }

    /// Mounts a bpffs at `<dir>/bpffs` (the daemon's pin root; under `ip netns exec` /sys is
    /// remounted, a bpffs mounted here in the root mount namespace stays visible).
    pub fn mount_bpffs(&mut self) -> Result<PathBuf> {
        let p = self.path.join("bpffs");
        fs::create_dir_all(&p)?;
        run("mount", &["-t", "bpf", "bpf", p.to_str().context("utf-8 path")?])?;
        self.bpffs = true;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.bpffs {
            let _ = Command::new("umount").arg(self.path.join("bpffs")).status();
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// utime + stime of a process (children it has waited for included) in seconds.
pub fn process_cpu_seconds(pid: u32, with_children: bool) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14–17 of stat(5) (utime stime cutime cstime) are 11–14 after the command.
    let ticks = |i: usize| -> Result<f64> { Ok(f[i].parse::<f64>()?) };
    let mut t = ticks(11)? + ticks(12)?;
    if with_children {
        t += ticks(13)? + ticks(14)?;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(t / hz)
}

/// CPU seconds of the calling thread.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
