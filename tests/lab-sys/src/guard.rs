//! Child processes, directories, mounts and global sysctls, each undone on drop.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{run, RunPrefix, TEMP_DIR_STEM};

/// A child process, stopped on drop: SIGTERM, a grace period, then SIGKILL, always reaped by
/// PID. Output goes to a log file so a failing test can show it. The child runs in its own
/// process group, so a Ctrl-C at the terminal reaches only the parent, which then stops its
/// children in order (daemon before namespaces). If the parent is killed outright, the child
/// gets SIGTERM (`PR_SET_PDEATHSIG`), and the next run's [`crate::reap_stale`] removes whatever
/// is left in the dead run's namespaces.
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

    /// What it was spawned as (`lb-ctl daemon`, `responder b1`).
    pub fn name(&self) -> &str {
        &self.name
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
        Self::create(prefix.as_str())
    }

    /// `$TMPDIR/ikelb-lab-<prefix>-<what>`: one of several directories of a run.
    pub fn named(prefix: &RunPrefix, what: &str) -> Result<Self> {
        Self::create(&prefix.name(what))
    }

    fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{TEMP_DIR_STEM}{name}"));
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
/// visible to it (docs/configuration.md, `bpffs`), and unmounting it releases whatever the
/// daemon pinned even if the daemon was killed. Mounted at `<run dir>/bpffs`, where
/// [`crate::reap_stale`] looks for it.
#[derive(Debug)]
pub struct BpfFs(PathBuf);

impl BpfFs {
    /// A bpffs at `<dir>/bpffs`.
    pub fn mount_in(dir: &TempDir) -> Result<Self> {
        Self::mount(dir.path().join("bpffs"))
    }

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

pub(crate) fn umount(path: &Path) -> Result<()> {
    // Lazy: a process still holding a pinned fd must not keep the directory busy.
    run("umount", &["-l", &path.to_string_lossy()]).map(drop)
}

/// A global (root namespace) sysctl set for the run and restored on drop.
#[derive(Debug)]
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// Write `value` to `/proc/sys/KEY` (`KEY` with slashes), remembering what was there.
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
            eprintln!(
                "lab: cannot restore {}={}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}
