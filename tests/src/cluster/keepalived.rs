//! keepalived (Debian `keepalived`) on a cluster node, behind a guard: VRRP among the
//! nodes' interfaces toward the backends, which hold the backends' one default gateway
//! (`deploy/keepalived/keepalived.conf`, docs/cluster.md).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::lab::{Child, NetNs};

/// The VRRP daemon.
pub const KEEPALIVED: &str = "/usr/sbin/keepalived";

/// Whether keepalived is installed (`cargo xtask bootstrap` installs `keepalived`).
pub fn available() -> bool {
    Path::new(KEEPALIVED).is_file()
}

/// `deploy/keepalived/keepalived.conf` with each `(from, to)` replaced once; fails if a
/// `from` is not in the file (the shipped config changed under the test).
pub fn deploy_config(edits: &[(&str, &str)]) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/keepalived/keepalived.conf");
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    for (from, to) in edits {
        ensure!(
            text.contains(from),
            "{}: no {from:?} to replace",
            path.display()
        );
        text = text.replacen(from, to, 1);
    }
    Ok(text)
}

/// A running keepalived (VRRP subsystem only, in the foreground, logging to its file),
/// stopped on drop: SIGTERM, on which it sends a priority-0 advertisement so that a backup
/// takes over at once (RFC 5798 §6.4.3), and removes the address.
#[derive(Debug)]
pub struct Keepalived {
    child: Child,
}

impl Keepalived {
    /// Writes `config` to `dir/keepalived.conf`, checks it inside `ns` (`keepalived -t`:
    /// the interfaces it names must exist there) and starts it in `ns`, its pid files in
    /// `dir` (two instances on one host must not share `/run/keepalived.pid`).
    pub fn start(ns: &NetNs, name: &str, config: &str, dir: &Path) -> Result<Self> {
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, config).with_context(|| format!("write {}", conf.display()))?;
        let conf_s = conf.to_str().context("non-UTF-8 path")?;
        ns.exec(KEEPALIVED, &["-t", "-f", conf_s])
            .with_context(|| format!("keepalived {name}'s config"))?;
        let pid = |what: &str| -> PathBuf { dir.join(format!("keepalived-{what}.pid")) };
        let mut cmd = ns.command(KEEPALIVED);
        cmd.args([
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--no-syslog",
            "--vrrp",
            "--use-file",
            conf_s,
        ])
        .arg("--pid")
        .arg(pid("main"))
        .arg("--vrrp_pid")
        .arg(pid("vrrp"));
        let child = Child::spawn(
            &format!("keepalived {name}"),
            cmd,
            dir.join("keepalived.log"),
        )?;
        Ok(Self { child })
    }

    /// SIGTERM without waiting: the VRRP process sends its priority-0 advertisement and
    /// removes the address at once, while the parent takes about a second more to exit.
    pub fn terminate(&mut self) {
        if self.child.exit_status().is_none() {
            // SAFETY: kill(2) on our own unreaped child's PID.
            unsafe { libc::kill(self.child.pid() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after 5 s); how it ended.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.child.stop(Duration::from_secs(5))
    }

    /// `Some(status)` once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.exit_status()
    }

    /// The last `n` lines it logged.
    pub fn log_tail(&self, n: usize) -> String {
        self.child.output_tail(n)
    }
}
