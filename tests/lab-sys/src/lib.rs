//! The system side of ikelb's labs: network namespaces, veth pairs, child processes,
//! sysctls, bpffs mounts and temporary directories, each behind a guard that undoes what it
//! made when dropped — also while a failing test or an interrupted benchmark unwinds — so a
//! run leaves no namespace, link, process or mount behind. The test lab
//! (`ikelb-tests`, `tests/src/lab`) and the benchmark (`ikelb-bench`, `xtask/src/bench`) both
//! build on it.
//!
//! A run that was killed outright (SIGKILL, power loss) cannot run its destructors;
//! [`reap_stale`] removes such leftovers the next time a lab is built: every name starts with
//! a prefix that carries the owning PID ([`RunPrefix`]), and a prefix whose PID is gone is fair
//! game.
//!
//! Only namespaces made here carry traffic: nothing touches the root namespace's links or
//! routes (global sysctls only through [`Sysctl`], which restores them).

mod guard;
mod netns;

pub use guard::{BpfFs, Child, Sysctl, TempDir};
pub use netns::{parse_mac, NetNs, Snmp, Veth, XdpAttachment};

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{ensure, Context, Result};

/// Where `ip netns add` keeps the namespace handles.
const NETNS_RUN_DIR: &str = "/run/netns";

/// What every run directory under the system temp dir starts with ([`TempDir`]).
const TEMP_DIR_STEM: &str = "ikelb-lab-";

/// True when this process may build namespaces and attach XDP programs. The root-only tests
/// check it first and say why they skip.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A per-run name prefix: `ik` + role letter + PID + a per-process counter, e.g. `ikt4711n0`.
/// Namespaces are named `<prefix>-<what>`, so two processes (or two labs of one process)
/// never collide, and [`reap_stale`] can tell whose leftovers a name is. Interfaces live inside
/// those namespaces and need no prefix (interface names are per namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPrefix(String);

impl RunPrefix {
    /// A fresh prefix for `role` (`t` tests, `d` demo, `b` benchmark, `6` protocol tests, …:
    /// one lowercase letter or digit).
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
/// runs whose process no longer exists, and the processes still inside them. Also unmounts
/// their bpffs mounts and removes their directories under the system temp dir.
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
            if let Some(stem) = name.strip_prefix(TEMP_DIR_STEM) {
                if dead(stem) {
                    eprintln!("lab: removing stale directory {}", entry.path().display());
                    let _ = guard::umount(&entry.path().join("bpffs"));
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// `program args…` as shown in error messages.
fn shown<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    format!("{program} {}", args.join(" "))
}

/// Run a command, fail with its stderr if it does not exit 0, return its stdout.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        shown(program, args),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8", shown(program, args)))
}

/// Run a command with `input` on its stdin (`ip -batch -`, `nft -f -`); fail with its stderr if
/// it does not exit 0.
pub fn run_stdin<S: AsRef<OsStr>>(program: &str, args: &[S], input: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        shown(program, args),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
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
        // The benchmark's run directories: `ikelb-lab-ikb<pid>n0-<what>`.
        let dir = format!("{TEMP_DIR_STEM}{}", RunPrefix::new('b').name("loop"));
        assert_eq!(
            prefix_pid(dir.strip_prefix(TEMP_DIR_STEM).unwrap()),
            Some(std::process::id())
        );
    }

    #[test]
    fn run_reports_the_command_and_its_stderr() {
        let e = run("sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("`sh -c echo nope >&2; exit 3` failed"), "{e}");
        assert!(e.ends_with(": nope"), "{e}");
        assert_eq!(run("sh", &["-c", "echo yes"]).unwrap(), "yes\n");
        let e = run_stdin("sh", &["-c", "read l; echo \"got $l\" >&2; exit 1"], "x\n");
        assert!(format!("{:#}", e.unwrap_err()).ends_with(": got x"));
        run_stdin("sh", &["-c", "read l; test \"$l\" = ok"], "ok\n").unwrap();
    }
}
