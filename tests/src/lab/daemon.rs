//! The lab's `lb-ctl daemon` on the gateway: its configuration, its process, and the ways a
//! test talks to it (the `lb-ctl` CLI, the control socket, `/metrics`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::{
    patience, wait_for, Child, Lab, Mode, XdpAttachment, BACKEND_PORTS, GW_EXT, GW_INT, TCP_PORT,
    VIP, VIP6,
};

/// Port the daemon's Prometheus endpoint listens on, on the gateway's loopback.
const METRICS_PORT: u16 = 9435;

impl Lab {
    /// The daemon configuration for this lab (schema v1, docs/configuration.md): both gateway
    /// interfaces, native XDP, the lab's mode, one virtual server with every backend at weight
    /// 1 (IPv4, then IPv6), fast health checks — ICMP only (`probes: [icmp]`): the lab's
    /// backends run `ikelb-responder`, which answers UDP 500 with a text line, not IKE; the
    /// strongSwan lab turns the IKE probe on ([`crate::ike::IkeLab`]) — and every path inside
    /// this run's directory.
    /// With IPv6 the virtual server is dual-stack (`vip: [VIP, VIP6]`); with SSTP it has
    /// `tcp_ports`.
    pub fn daemon_config(&self) -> String {
        let dir = self.dir.path();
        let mode = match self.spec.mode {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
        };
        let mut vs = if self.spec.ipv6 {
            format!("    vip: [{VIP}, {VIP6}]\n")
        } else {
            format!("    vip: {VIP}\n")
        };
        if self.spec.sstp {
            writeln!(vs, "    tcp_ports: [{TCP_PORT}]").expect("write to String");
        }
        let [p0, p1] = BACKEND_PORTS;
        write!(
            vs,
            "    ports: [{p0}, {p1}]\n    esp: true\n    backends:\n"
        )
        .expect("write to String");
        for b in &self.backends {
            writeln!(vs, "      - address: {}", b.addr).expect("write to String");
        }
        for b in &self.backends6 {
            writeln!(vs, "      - address: {b}").expect("write to String");
        }
        format!(
            "# ikelb lab {prefix}: written by ikelb-tests\n\
             interfaces: [{GW_EXT}, {GW_INT}]\n\
             mode: {mode}\n\
             xdp_mode: native\n\
             persistence_timeout: 30m\n\
             hash_seed: 0x5eed\n\
             virtual_servers:\n\
             \x20 - name: aovpn\n\
             {vs}\
             health_check:\n\
             \x20 interval: 200ms\n\
             \x20 timeout: 150ms\n\
             \x20 fall: 3\n\
             \x20 rise: 1\n\
             \x20 probes: [icmp]\n\
             control:\n\
             \x20 socket: {sock}\n\
             metrics:\n\
             \x20 listen: 127.0.0.1:{METRICS_PORT}\n\
             state_dir: {state}\n\
             bpffs: {bpffs}\n\
             detach_on_exit: true\n",
            prefix = self.prefix.as_str(),
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

    /// The ids of the XDP programs attached to the gateway's `ext` and `int` (both in native
    /// mode, as the lab's config asks), panicking if either has none.
    pub fn prog_ids(&self) -> (u64, u64) {
        let get = |ifname| {
            let a: XdpAttachment = self
                .gateway
                .xdp(ifname)
                .expect("ip link")
                .unwrap_or_else(|| panic!("no XDP program on {ifname}"));
            assert_eq!(a.mode, XdpAttachment::MODE_NATIVE, "{ifname}: {a:?}");
            a.prog_id
        };
        (get(GW_EXT), get(GW_INT))
    }

    /// Waits (30 s at most) until the daemon's output holds `n` occurrences of `needle`;
    /// fails at once, with its last lines, if the daemon exits first.
    pub fn wait_daemon_log(&mut self, needle: &str, n: usize) -> Result<()> {
        let d = self.daemon.as_mut().context("daemon not started")?;
        wait_for(
            &format!("{n}× {needle:?} in the daemon log"),
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                if let Some(status) = d.exit_status() {
                    bail!("daemon exited ({status}):\n{}", d.output_tail(40));
                }
                Ok((d.output().matches(needle).count() >= n).then_some(()))
            },
        )
        .with_context(|| self.daemon_output_tail(40))
    }

    /// Sends `signal` to the daemon (SIGKILL to crash it, SIGTERM to stop it) and waits for it
    /// to exit.
    pub fn signal_daemon(&mut self, signal: libc::c_int) -> Result<std::process::ExitStatus> {
        let d = self.daemon.as_mut().context("daemon not started")?;
        // SAFETY: kill(2) on our own unreaped child (`ip netns exec` execs lb-ctl in place).
        ensure!(
            unsafe { libc::kill(d.pid() as libc::pid_t, signal) } == 0,
            "kill({}, {signal}): {}",
            d.pid(),
            std::io::Error::last_os_error()
        );
        wait_for(
            "the daemon to exit",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || Ok(d.exit_status()),
        )
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
        s.set_read_timeout(Some(patience(Duration::from_secs(5))))?;
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
            s.set_read_timeout(Some(patience(Duration::from_secs(2))))?;
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
}
