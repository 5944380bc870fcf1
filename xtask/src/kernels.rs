//! The kernel matrix: the tests that exercise the kernel (BPF_PROG_TEST_RUN tables, the
//! verifier's headroom, forwarding with the daemon, restart without loss, the slot fast path),
//! run again inside QEMU on each kernel operators run — Debian 12's stock 6.1 and the 6.12
//! LTS — besides the host's own (docs/kernels.md).
//!
//! The guest is booted with virtme-ng (`vng`): it sees this machine's root file system, so
//! the test binaries built on the host run inside as they are, and the workspace is writable
//! through (`--rwdir`) for the logs. QEMU runs under TCG (`--disable-kvm`): KVM aborts on the
//! virtual machines this project is developed on, and TCG works everywhere. A kernel that
//! does not boot is reported as skipped with the reason; it never counts as passed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// The Debian packages of the default matrix: (package, what operators run it as).
pub const MATRIX: &[(&str, &str)] = &[
    ("linux-image-amd64", "Debian 12 stock"),
    (
        "linux-image-6.12-amd64",
        "6.12 LTS (Debian 13 / RHEL 10 generation)",
    ),
];

/// The test binaries (`tests/tests/*.rs`) that run in every guest, in this order.
const VM_TESTS: &[&str] = &[
    "verifier_headroom",
    "prog_test_run",
    "prog_test_run_protocols",
    "prog_test_run_edge",
    "prog_test_run_router",
    "fuzz_frames",
    "netns_forwarding",
    "restart_no_loss",
    "slot_fast_path",
];

/// How many times longer the tests' waits are in a guest (`lab::patience`): TCG emulation,
/// with two guests side by side on 2 cores, runs CPU-bound tests ~38 times slower than the
/// host; waiting on a daemon's start or a scan needs far less than that.
const TIME_SCALE: u32 = 5;

/// Frames of `fuzz_frames` per guest (the host runs its default, 100,000): its checks run in a
/// debug build under emulation at ~500-900 frames/s, so 100,000 would take about 3 minutes of
/// each guest. The same fixed seed and every mutation class; the long run is `cargo xtask fuzz`.
const FUZZ_FRAMES: u32 = 20_000;

/// A guest's whole run may take this long before it is stopped (TCG: ~6 min alone on 2
/// cores, ~10 side by side with another guest).
const VM_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// One kernel's result.
pub struct Outcome {
    pub label: String,
    pub release: String,
    pub verdict: Verdict,
    pub elapsed: Duration,
    /// `verifier: …` lines the headroom test printed.
    pub verifier: Vec<String>,
}

pub enum Verdict {
    /// Every test binary ran; (passed, failed) tests and the binaries that failed.
    Ran {
        passed: u32,
        failed: u32,
        failing: Vec<String>,
    },
    /// The guest never ran the tests: why.
    Skipped(String),
}

/// The kernel image a Debian kernel package (or the meta-package naming it) installed.
pub fn image_of_package(package: &str) -> Result<PathBuf> {
    let mut candidates = vec![package.to_owned()];
    if let Some(deps) = cmd::output("dpkg-query", &["-W", "-f=${Depends}", package]) {
        candidates.extend(
            deps.split(',')
                .filter_map(|d| d.split_whitespace().next())
                .filter(|d| d.starts_with("linux-image-"))
                .map(str::to_owned),
        );
    }
    for pkg in &candidates {
        if let Some(files) = cmd::output("dpkg", &["-L", pkg]) {
            if let Some(img) = files.lines().find(|l| l.starts_with("/boot/vmlinuz-")) {
                return Ok(PathBuf::from(img));
            }
        }
    }
    bail!("package {package} installed no /boot/vmlinuz-* (dpkg -L {package})")
}

/// The test executables of `ikelb-tests` that the guests run, built now.
pub fn build_tests() -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "test",
            "-p",
            "ikelb-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(cmd::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("could not run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if msg["target"]["kind"][0] == "test" && VM_TESTS.contains(&name) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    found.sort_by_key(|(n, _)| VM_TESTS.iter().position(|t| t == n));
    if found.len() != VM_TESTS.len() {
        bail!(
            "cargo built {} of the {} matrix test binaries",
            found.len(),
            VM_TESTS.len()
        );
    }
    Ok(found)
}

/// The script a guest runs: mount a bpffs, run each binary from `tests/` (as cargo would),
/// logging to `logs/`, and print one marker line per binary.
fn guest_script(tests: &[(String, PathBuf)], logs: &Path) -> String {
    let root = cmd::workspace_root();
    let mut s = format!(
        "set -u\nmount -t bpf bpf /sys/fs/bpf\necho \"IKELB-KERNEL $(uname -r)\"\ncd {}/tests\n\
         export IKELB_TEST_TIME_SCALE={TIME_SCALE} IKELB_FUZZ_FRAMES={FUZZ_FRAMES}\n",
        root.display()
    );
    for (name, exe) in tests {
        // The headroom test prints its figures; the others speak only when they fail.
        let extra = if name == "verifier_headroom" {
            " --nocapture"
        } else {
            ""
        };
        s += &format!(
            "t0=$(date +%s); {exe}{extra} > {log} 2>&1; rc=$?; \
             echo \"IKELB-TEST {name} rc=$rc secs=$(( $(date +%s) - t0 ))\"\n",
            exe = exe.display(),
            log = logs.join(format!("{name}.log")).display(),
        );
    }
    s
}

/// Boots `image` and runs the matrix's tests in it.
pub fn run(label: &str, image: &Path, tests: &[(String, PathBuf)]) -> Result<Outcome> {
    let logs = cmd::target_dir().join("kernel-matrix").join(
        image
            .file_name()
            .map_or_else(|| "kernel".into(), |n| n.to_string_lossy().into_owned()),
    );
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let script = logs.join("guest.sh");
    std::fs::write(&script, guest_script(tests, &logs))?;
    let started = Instant::now();
    let mut child = Command::new("vng")
        .arg("--run")
        .arg(image)
        .args([
            "--user",
            "root",
            "--disable-kvm",
            "--memory",
            "4G",
            "--cpus",
            "2",
            "--rwdir",
        ])
        .arg(cmd::workspace_root())
        .args(["--", "sh"])
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start vng (virtme-ng)")?;
    // Read both pipes on threads; stop the guest at the deadline.
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if started.elapsed() > VM_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    std::fs::write(
        logs.join("console.log"),
        format!("{out}\n--- stderr ---\n{err}"),
    )?;
    let release = out
        .lines()
        .find_map(|l| l.strip_prefix("IKELB-KERNEL "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let verdict = verdict(tests, &out, &err, &logs, timed_out);
    let verifier = std::fs::read_to_string(logs.join("verifier_headroom.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("verifier: "))
        .map(str::to_owned)
        .collect();
    Ok(Outcome {
        label: label.to_owned(),
        release,
        verdict,
        elapsed: started.elapsed(),
        verifier,
    })
}

fn verdict(
    tests: &[(String, PathBuf)],
    out: &str,
    err: &str,
    logs: &Path,
    timed_out: bool,
) -> Verdict {
    let ran: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("IKELB-TEST "))
        .collect();
    if !out.contains("IKELB-KERNEL ") {
        let why = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Verdict::Skipped(format!("the guest did not boot: {why}"));
    }
    let (mut passed, mut failed, mut failing) = (0, 0, Vec::new());
    for (name, _) in tests {
        let line = ran
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name.as_str()));
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
        let (p, f) = libtest_counts(&log);
        passed += p;
        failed += f;
        let ok = line.is_some_and(|l| l.contains(" rc=0 "));
        if !ok {
            let why = if line.is_none() && timed_out {
                "stopped at the deadline"
            } else {
                "failed"
            };
            failing.push(format!(
                "{name} ({why}; {})",
                logs.join(format!("{name}.log")).display()
            ));
            failed += u32::from(f == 0);
        }
    }
    Verdict::Ran {
        passed,
        failed,
        failing,
    }
}

/// (passed, failed) from libtest's `test result:` line.
fn libtest_counts(log: &str) -> (u32, u32) {
    let Some(line) = log.lines().rev().find(|l| l.starts_with("test result:")) else {
        return (0, 0);
    };
    let count = |what: &str| {
        line.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches("test result: ok.")
                    .trim_start_matches("test result: FAILED.")
                    .trim()
                    .strip_suffix(what)
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("passed"), count("failed"))
}

/// Prints the matrix's summary (the host first: it ran the whole suite above); fails when a
/// test failed on any kernel.
pub fn summary(host_verifier: &[String], outcomes: &[Outcome]) -> Result<()> {
    eprintln!("\n==> kernel matrix");
    let host = cmd::output("uname", &["-r"]).unwrap_or_default();
    eprintln!(
        "    {:<28} {:<44} the whole suite, above",
        host.trim(),
        "host"
    );
    for v in host_verifier {
        eprintln!("        {v}");
    }
    let mut bad = Vec::new();
    for o in outcomes {
        let line = match &o.verdict {
            Verdict::Ran {
                passed,
                failed,
                failing,
            } => {
                if *failed > 0 {
                    bad.push(format!("{}: {}", o.release, failing.join(", ")));
                }
                let state = if *failed == 0 { "ok" } else { "FAILED" };
                format!(
                    "{state}: {passed} passed, {failed} failed in {} s",
                    o.elapsed.as_secs()
                )
            }
            Verdict::Skipped(why) => format!("SKIPPED: {why}"),
        };
        eprintln!("    {:<28} {:<44} {line}", o.release, o.label);
        for v in &o.verifier {
            eprintln!("        {v}");
        }
    }
    if !bad.is_empty() {
        bail!("kernel matrix: tests failed on {}", bad.join("; "));
    }
    Ok(())
}

/// The host's `verifier: …` lines (the headroom test, run once more to print them).
pub fn host_verifier(tests: &[(String, PathBuf)]) -> Vec<String> {
    let Some((_, exe)) = tests.iter().find(|(n, _)| n == "verifier_headroom") else {
        return Vec::new();
    };
    let out = Command::new(exe)
        .arg("--nocapture")
        .current_dir(cmd::workspace_root().join("tests"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.starts_with("verifier: "))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_that_never_booted_is_skipped_with_the_reason() {
        let tests = vec![("prog_test_run".to_string(), PathBuf::from("/x"))];
        let logs = std::env::temp_dir().join(format!("ikelb-xtask-{}", std::process::id()));
        let v = verdict(&tests, "", "qemu: could not load kernel '/boot/nope'\n", &logs, false);
        assert!(matches!(&v, Verdict::Skipped(why) if why.contains("could not load kernel")));
        // Booted, but the binary never reported: a failure, not a pass.
        let v = verdict(&tests, "IKELB-KERNEL 6.1.0\n", "", &logs, true);
        assert!(matches!(&v, Verdict::Ran { failed: 1, .. }));
        let v = verdict(&tests, "IKELB-KERNEL 6.1.0\nIKELB-TEST prog_test_run rc=0 secs=3\n", "", &logs, false);
        assert!(matches!(&v, Verdict::Ran { failed: 0, .. }));
    }

    #[test]
    fn libtest_counts_read_the_result_line() {
        let ok = "running 3 tests\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; \
                  0 filtered out; finished in 1.2s\n";
        assert_eq!(libtest_counts(ok), (3, 0));
        let bad = "test result: FAILED. 15 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(libtest_counts(bad), (15, 2));
        assert_eq!(libtest_counts("thread main panicked"), (0, 0));
    }
}
