//! One strongSwan IKE daemon: its files, its process, and swanctl pointed at it.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::pki::{client_id, Pki, SERVER_ID};
use super::sas::{parse_list_sas, IkeSa};
use super::{CharonLog, CHARON, PLUGINS};
use crate::lab::{wait_for, Child, NetNs};

/// Subdirectories swanctl reads credentials from; all are created so that `--load-all` does
/// not warn about the ones a test does not use.
const SWANCTL_SUBDIRS: &[&str] = &[
    "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private", "rsa",
    "ecdsa", "bliss", "pkcs8", "pkcs12",
];

/// IKE and ESP proposals: the 5.9.8 defaults spelled out (x25519, and AES-GCM for ESP, which
/// libipsec implements), so a distribution default change cannot change what is measured.
const IKE_PROPOSALS: &str = "aes128-sha256-x25519";
const ESP_PROPOSALS: &str = "aes128gcm16";

/// How the initiators carry their ~1.8 kB IKE_AUTH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragmentation {
    /// `fragmentation = no`: IKE_AUTH leaves the client as IP fragments, and the responder
    /// answers the same way (it fragments IKE only when the client announced support).
    Ip,
    /// `fragmentation = yes` with a small `fragment_size`: RFC 7383 IKE fragments, every
    /// datagram below the MTU.
    Ike,
}

/// What one charon instance reads: its strongswan.conf, its swanctl.conf, and the files under
/// its swanctl directory (credentials), by path relative to that directory.
#[derive(Clone, Debug)]
pub struct CharonFiles {
    pub strongswan_conf: String,
    pub swanctl_conf: String,
    pub files: Vec<(String, String)>,
}

impl CharonFiles {
    /// A responder behind the VIP: certificate [`SERVER_ID`], virtual IPs from `pool`, traffic
    /// selector `local_ts` (the network behind the responders), MOBIKE (RFC 4555) on when
    /// `mobike`. Its log also has `mgr = 2`, which records the SPIs of messages that found no
    /// IKE SA (see [`CharonLog::orphans`]).
    ///
    /// Behind a VIP, MOBIKE must not announce this server's own addresses: in IKE_AUTH and in
    /// every address update charon lists each address of each interface it uses, except the
    /// SA's own, as ADDITIONAL_IP4_ADDRESS, and a roaming client may move its SA to one of
    /// them, straight past the load balancer. So with MOBIKE on, charon uses no interface but
    /// `eth0` (strongswan.conf `charon.interfaces_use`), whose only address is the one the
    /// balancer forwards to: it announces none (N(NO_ADD_ADDR)), and never learns the address
    /// of `eth1` toward the network it serves, which the kernel routes to all the same.
    /// (`interfaces_ignore = eth1` would do here too, but would let any interface added later
    /// be announced.)
    pub fn responder(dir: &Path, pki: &Pki, pool: &str, local_ts: &str, mobike: bool) -> Self {
        let mobike_lines = if mobike {
            "    # Announcing no address of its own: interfaces_use in strongswan.conf.\n    \
             mobike = yes\n"
        } else {
            "    # Behind a VIP: MOBIKE would announce this server's own addresses to the\n    \
             # client, which would then bypass the load balancer.\n    mobike = no\n"
        };
        let swanctl_conf = format!(
            "# responder: written by ikelb-tests\n\
             connections {{\n\
             \x20 rw {{\n\
             \x20   version = 2\n\
             \x20   proposals = {IKE_PROPOSALS}\n\
             \x20   pools = pool\n\
             {mobike_lines}\
             \x20   fragmentation = yes\n\
             \x20   local {{\n\
             \x20     auth = pubkey\n\
             \x20     certs = server.pem\n\
             \x20     id = {SERVER_ID}\n\
             \x20   }}\n\
             \x20   remote {{\n\
             \x20     auth = pubkey\n\
             \x20     cacerts = ca.pem\n\
             \x20   }}\n\
             \x20   children {{\n\
             \x20     net {{\n\
             \x20       local_ts = {local_ts}\n\
             \x20       esp_proposals = {ESP_PROPOSALS}\n\
             \x20     }}\n\
             \x20   }}\n\
             \x20 }}\n\
             }}\n\
             pools {{\n\
             \x20 pool {{\n\
             \x20   addrs = {pool}\n\
             \x20 }}\n\
             }}\n"
        );
        let mut strongswan_conf = strongswan_conf(dir, None, &[("mgr", 2)]);
        if mobike {
            strongswan_conf = strongswan_conf.replacen(
                "  load_modular = no\n",
                "  load_modular = no\n  \
                 # MOBIKE behind a VIP: use, and so announce, no interface but the one the\n  \
                 # load balancer forwards to (see CharonFiles::responder).\n  \
                 interfaces_use = eth0\n",
                1,
            );
        }
        Self {
            strongswan_conf,
            swanctl_conf,
            files: vec![
                ("x509ca/ca.pem".into(), pki.ca_cert.clone()),
                ("x509/server.pem".into(), pki.server_cert.clone()),
                ("private/server.key".into(), pki.server_key.clone()),
            ],
        }
    }

    /// Client `index`: certificate [`client_id`]`(index)`, asks `vip` for a virtual IP and a
    /// tunnel to `remote_ts`. Connection and child are both named `vpn`.
    pub fn initiator(
        dir: &Path,
        pki: &Pki,
        index: usize,
        vip: Ipv4Addr,
        remote_ts: &str,
        fragmentation: Fragmentation,
    ) -> Self {
        let id = client_id(index);
        let frag = match fragmentation {
            Fragmentation::Ip => "no",
            Fragmentation::Ike => "yes",
        };
        let swanctl_conf = format!(
            "# initiator {id}: written by ikelb-tests\n\
             connections {{\n\
             \x20 vpn {{\n\
             \x20   version = 2\n\
             \x20   remote_addrs = {vip}\n\
             \x20   vips = 0.0.0.0\n\
             \x20   proposals = {IKE_PROPOSALS}\n\
             \x20   fragmentation = {frag}\n\
             \x20   local {{\n\
             \x20     auth = pubkey\n\
             \x20     certs = client.pem\n\
             \x20     id = {id}\n\
             \x20   }}\n\
             \x20   remote {{\n\
             \x20     auth = pubkey\n\
             \x20     id = {SERVER_ID}\n\
             \x20   }}\n\
             \x20   children {{\n\
             \x20     vpn {{\n\
             \x20       remote_ts = {remote_ts}\n\
             \x20       esp_proposals = {ESP_PROPOSALS}\n\
             \x20     }}\n\
             \x20   }}\n\
             \x20 }}\n\
             }}\n"
        );
        let fragment_size = (fragmentation == Fragmentation::Ike).then_some(1200);
        Self {
            strongswan_conf: strongswan_conf(dir, fragment_size, &[]),
            swanctl_conf,
            files: vec![
                ("x509ca/ca.pem".into(), pki.ca_cert.clone()),
                ("x509/client.pem".into(), pki.client_certs[index].clone()),
                ("private/client.key".into(), pki.client_key.clone()),
            ],
        }
    }
}

impl CharonFiles {
    /// An initiator's config with MOBIKE (RFC 4555) spelled out: `mobike = yes`, the swanctl
    /// default, negotiated only with a responder that has it on too. When the address its SA
    /// uses vanishes, charon 5.9.8 probes the new path with an empty INFORMATIONAL request and,
    /// once that is answered, moves the IKE SA and its CHILD_SAs with an UPDATE_SA_ADDRESSES
    /// request from the new address (§3.5); unanswered, it gives up after 10 probes 2.5 s
    /// apart and destroys the SA.
    pub fn with_mobike(mut self) -> Self {
        self.swanctl_conf = self.swanctl_conf.replacen(
            "    version = 2\n",
            "    version = 2\n    mobike = yes\n",
            1,
        );
        self
    }

    /// An initiator's config with dead peer detection every `delay` of silence (swanctl
    /// `dpd_delay`): an INFORMATIONAL request whenever nothing came from the peer for that
    /// long, which is also how a client behind a NAT that rebound tells its responder where
    /// it is now (RFC 7296 §2.23).
    pub fn with_dpd(mut self, delay: Duration) -> Self {
        self.swanctl_conf = self.swanctl_conf.replacen(
            "    version = 2\n",
            &format!(
                "    version = 2\n    dpd_delay = {}s\n",
                delay.as_secs().max(1)
            ),
            1,
        );
        self
    }
}

/// strongswan.conf for an instance living in `dir`; its file log at level 1 except for the
/// `(subsystem, level)` pairs in `log_levels`.
fn strongswan_conf(dir: &Path, fragment_size: Option<u32>, log_levels: &[(&str, i32)]) -> String {
    let dir = dir.display();
    let mut s = format!(
        "# written by ikelb-tests\n\
         charon {{\n\
         \x20 # Userspace ESP (the kernel has none): kernel-libipsec must come before\n\
         \x20 # kernel-netlink, hence no modular loading and an explicit list.\n\
         \x20 load_modular = no\n\
         \x20 load = {plugins}\n\
         \x20 # Many clients share a NAT address: lift the per-IP half-open limits\n\
         \x20 # (cookie_threshold_ip 3, block_threshold 5 by default) and the global ones.\n\
         \x20 cookie_threshold = 100000\n\
         \x20 cookie_threshold_ip = 100000\n\
         \x20 block_threshold = 100000\n\
         \x20 init_limit_half_open = 0\n\
         \x20 # An initiator whose exchange goes unanswered gives up after ~7 s\n\
         \x20 # (1 + 1.4 + 1.96 + 2.74 s) instead of ~165 s.\n\
         \x20 retransmit_timeout = 1.0\n\
         \x20 retransmit_base = 1.4\n\
         \x20 retransmit_tries = 3\n",
        plugins = PLUGINS.join(" "),
    );
    if let Some(size) = fragment_size {
        writeln!(s, "  fragment_size = {size}").expect("write to String");
    }
    write!(
        s,
        "  filelog {{\n\
         \x20   ike {{\n\
         \x20     path = {dir}/charon.log\n\
         \x20     time_format = %s\n\
         \x20     time_add_ms = yes\n\
         \x20     ike_name = yes\n\
         \x20     flush_line = yes\n\
         \x20     append = no\n\
         \x20     default = 1\n\
         {levels}\
         \x20   }}\n\
         \x20 }}\n\
         \x20 syslog {{\n\
         \x20   daemon {{\n\
         \x20     default = -1\n\
         \x20   }}\n\
         \x20 }}\n\
         \x20 plugins {{\n\
         \x20   vici {{\n\
         \x20     socket = unix://{dir}/charon.vici\n\
         \x20   }}\n\
         \x20   socket-default {{\n\
         \x20     use_ipv6 = no\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n",
        levels = log_levels
            .iter()
            .map(|(sub, l)| format!("      {sub} = {l}\n"))
            .collect::<String>(),
    )
    .expect("write to String");
    s
}

/// The result of `swanctl --initiate`.
#[derive(Clone, Debug)]
pub struct Initiation {
    /// swanctl exited 0: IKE SA and CHILD_SA are up.
    pub ok: bool,
    /// Wall time of the swanctl call.
    pub elapsed: Duration,
    /// What swanctl printed (charon's log of the attempt), for failure messages.
    pub output: String,
}

/// A charon running in a network namespace, stopped (SIGTERM, then SIGKILL, by PID) on drop.
#[derive(Debug)]
pub struct Charon {
    name: String,
    dir: PathBuf,
    child: Child,
}

impl Charon {
    /// Write `files` under `dir` and start charon in `ns`, in its own mount namespace with a
    /// private `/run` (charon's pid file is compiled in as `/var/run/charon.pid`). Returns at
    /// once; [`Charon::ready`] waits for it and loads the configuration.
    pub fn spawn(name: &str, ns: &NetNs, dir: PathBuf, files: &CharonFiles) -> Result<Self> {
        let swanctl = dir.join("swanctl");
        for sub in SWANCTL_SUBDIRS {
            fs::create_dir_all(swanctl.join(sub))
                .with_context(|| format!("mkdir {}", swanctl.join(sub).display()))?;
        }
        fs::write(dir.join("strongswan.conf"), &files.strongswan_conf)?;
        fs::write(swanctl.join("swanctl.conf"), &files.swanctl_conf)?;
        for (rel, text) in &files.files {
            fs::write(swanctl.join(rel), text)?;
        }
        // `ip netns exec` → `unshare` → `sh` → charon: each execs the next, so the PID the
        // guard holds is charon's own.
        let mut cmd = ns.command("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m,mode=0755 ikelb-charon-run /run && exec \"$0\"",
            CHARON,
        ]);
        cmd.env("STRONGSWAN_CONF", dir.join("strongswan.conf"));
        let child = Child::spawn(&format!("charon {name}"), cmd, dir.join("charon.out"))?;
        Ok(Self {
            name: name.to_string(),
            dir,
            child,
        })
    }

    /// Wait until the vici socket accepts swanctl, then `swanctl --load-all` (credentials,
    /// pools, connections). Fails with charon's output if it exits.
    pub fn ready(&mut self, timeout: Duration) -> Result<()> {
        let vici = self.dir.join("charon.vici");
        wait_for(
            &format!("charon {}'s vici socket", self.name),
            timeout,
            Duration::from_millis(10),
            || {
                if let Some(status) = self.child.exit_status() {
                    bail!(
                        "charon {} exited ({status}):\n{}\n{}",
                        self.name,
                        self.child.output_tail(20),
                        self.log_tail(20)
                    );
                }
                Ok(vici.exists().then_some(()))
            },
        )?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.swanctl(&["--load-all"]) {
                Ok(out) => {
                    ensure!(
                        out.contains("successfully loaded 1 connections"),
                        "charon {}: --load-all loaded no connection:\n{out}",
                        self.name
                    );
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Ask charon to stop (SIGTERM to its PID) without waiting: stopping many instances then
    /// overlaps their shutdown; the guard's drop waits and escalates.
    pub fn request_stop(&mut self) {
        if self.child.exit_status().is_none() {
            // SAFETY: kill(2) on our own unreaped child's PID: the PID cannot have been reused.
            unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Kill charon with SIGKILL, as a crash would (no DELETE reaches its peers), and wait
    /// until it has exited: its UDP ports close, its namespace still answers ping.
    pub fn kill(&mut self, timeout: Duration) -> Result<()> {
        if self.child.exit_status().is_none() {
            // SAFETY: kill(2) on our own unreaped child's PID: the PID cannot have been reused.
            unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGKILL) };
        }
        let name = self.name.clone();
        wait_for(
            &format!("charon {name} to exit"),
            timeout,
            Duration::from_millis(10),
            || Ok(self.child.exit_status().map(drop)),
        )
    }

    /// `unix://DIR/charon.vici`.
    pub fn vici_uri(&self) -> String {
        format!("unix://{}", self.dir.join("charon.vici").display())
    }

    fn swanctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("swanctl");
        cmd.args(args)
            .args(["--uri", &self.vici_uri()])
            .env("STRONGSWAN_CONF", self.dir.join("strongswan.conf"))
            .env("SWANCTL_DIR", self.dir.join("swanctl"))
            .stdin(Stdio::null());
        cmd
    }

    /// `swanctl ARGS --uri …`; stdout on success.
    pub fn swanctl(&self, args: &[&str]) -> Result<String> {
        let out = self
            .swanctl_command(args)
            .output()
            .context("cannot run swanctl (strongswan-swanctl)")?;
        ensure!(
            out.status.success(),
            "charon {}: swanctl {args:?} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8(out.stdout).context("swanctl printed non-UTF-8")
    }

    /// `swanctl --initiate --child CHILD --timeout …`: blocks until the CHILD_SA is up or
    /// charon gives up (or `timeout` passes).
    pub fn initiate(&self, child: &str, timeout: Duration) -> Initiation {
        let secs = timeout.as_secs().max(1).to_string();
        let start = Instant::now();
        let out = self
            .swanctl_command(&["--initiate", "--child", child, "--timeout", &secs])
            .output();
        let elapsed = start.elapsed();
        match out {
            Ok(out) => Initiation {
                ok: out.status.success(),
                elapsed,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            },
            Err(e) => Initiation {
                ok: false,
                elapsed,
                output: format!("cannot run swanctl: {e}"),
            },
        }
    }

    /// Forget every IKE SA of connection `ike` without waiting for the peer, the way a
    /// client whose server vanished starts over: `--force` without `--timeout` sends the
    /// DELETE and destroys the SA at once (with `--timeout 1` swanctl waits that second and
    /// then reports failure although the SA is gone).
    pub fn terminate_ike(&self, ike: &str) -> Result<()> {
        self.swanctl(&["--terminate", "--ike", ike, "--force"])?;
        let left: Vec<u32> = self
            .list_sas()?
            .iter()
            .filter(|s| s.name == ike)
            .map(|s| s.uniqueid)
            .collect();
        ensure!(
            left.is_empty(),
            "charon {}: IKE SAs {left:?} of {ike} survived --terminate --force",
            self.name
        );
        Ok(())
    }

    /// Every IKE SA charon holds, half-open ones included.
    pub fn list_sas(&self) -> Result<Vec<IkeSa>> {
        let text = self.swanctl(&["--list-sas", "--pretty"])?;
        parse_list_sas(&text).with_context(|| format!("charon {}: list-sas", self.name))
    }

    /// charon's file log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    /// charon's file log so far, by IKE SA.
    pub fn log(&self) -> CharonLog {
        CharonLog::parse(&self.log_text())
    }

    /// The last `n` lines of the file log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}
