//! BIRD 2 (Debian `bird2`) inside a lab namespace, behind a guard: the routing daemon of
//! docs/cluster.md, for tests of route announcement.
//!
//! [`Bird::start`] checks the config (`bird -p`), runs `bird -f` in the namespace with its
//! control socket and log inside the run's directory, and stops it on drop (SIGTERM, then
//! SIGKILL: [`Child`]). [`Bird::birdc`] asks it through `birdc`. The configs come from
//! `deploy/bird/` ([`deploy_config`]), so the files operators copy are the ones tested.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use crate::lab::{self, Child, NetNs};

/// The BIRD 2 daemon and its client.
pub const BIRD: &str = "/usr/sbin/bird";
pub const BIRDC: &str = "/usr/sbin/birdc";

/// Whether BIRD 2 is installed (`cargo xtask bootstrap` installs `bird2`).
pub fn available() -> bool {
    Path::new(BIRD).is_file() && Path::new(BIRDC).is_file()
}

/// `deploy/bird/NAME` with each `(from, to)` replaced once; fails if a `from` is not in
/// the file (the shipped config changed under the test).
pub fn deploy_config(name: &str, edits: &[(&str, &str)]) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/bird")
        .join(name);
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

/// A running `bird -f`, stopped on drop.
#[derive(Debug)]
pub struct Bird {
    child: Child,
    socket: PathBuf,
}

impl Bird {
    /// Writes `config` to `dir/bird-NAME.conf`, checks it, and starts BIRD in `ns` with its
    /// control socket `dir/bird-NAME.ctl` and its output in `dir/bird-NAME.log`; returns
    /// once `birdc` gets an answer.
    pub fn start(ns: &NetNs, name: &str, config: &str, dir: &Path) -> Result<Self> {
        let conf = dir.join(format!("bird-{name}.conf"));
        std::fs::write(&conf, config).with_context(|| format!("write {}", conf.display()))?;
        let conf_s = conf.to_str().context("non-UTF-8 path")?;
        lab::run(BIRD, &["-p", "-c", conf_s]).with_context(|| format!("BIRD {name}'s config"))?;
        let socket = dir.join(format!("bird-{name}.ctl"));
        let mut cmd = ns.command(BIRD);
        cmd.args(["-f", "-c", conf_s, "-s"]).arg(&socket);
        let child = Child::spawn(
            &format!("bird {name}"),
            cmd,
            dir.join(format!("bird-{name}.log")),
        )?;
        let mut bird = Self { child, socket };
        lab::wait_for(
            &format!("BIRD {name} to answer on its control socket"),
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(50),
            || {
                if let Some(status) = bird.child.exit_status() {
                    anyhow::bail!(
                        "bird {name} exited ({status}):\n{}",
                        bird.child.output_tail(20)
                    );
                }
                Ok(bird.birdc(&["show", "status"]).ok())
            },
        )?;
        Ok(bird)
    }

    /// `birdc -s SOCKET ARGS…`; its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-s", self.socket.to_str().context("non-UTF-8 path")?];
        all.extend_from_slice(args);
        lab::run(BIRDC, &all)
    }

    /// Whether BGP protocol `name` is Established.
    pub fn established(&self, name: &str) -> Result<bool> {
        Ok(self
            .birdc(&["show", "protocols", name])?
            .lines()
            .any(|l| l.starts_with(name) && l.contains("Established")))
    }

    /// The last `n` lines BIRD logged.
    pub fn log_tail(&self, n: usize) -> String {
        self.child.output_tail(n)
    }
}
