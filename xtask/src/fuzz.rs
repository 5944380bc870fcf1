//! `cargo xtask fuzz -- --seconds N [--seed S]`: the long run of the XDP program's fuzz test
//! (`tests/tests/fuzz_frames.rs`, `tests/src/fuzz.rs`). It builds the test binary, runs it
//! as root with the time budget (`IKELB_FUZZ_SECONDS`, half with the slot fast path off and
//! half on) and the seed (`IKELB_FUZZ_SEED`; by default a new one from the clock, printed so
//! a failure can be replayed), echoes the test's output, and ends with the seed and the
//! frames per second.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};

use crate::{bootstrap, cmd};

const USAGE: &str = "usage: cargo xtask fuzz -- --seconds N [--seed S]";

/// `--seconds N [--seed S]` (S decimal or 0x-hex).
fn parse(args: &[String]) -> Result<(f64, u64)> {
    let mut seconds = None;
    let mut seed = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--seconds" => {
                let v = value("--seconds")?;
                let s: f64 = v.parse().with_context(|| format!("--seconds {v}"))?;
                if !s.is_finite() || s <= 0.0 {
                    bail!("--seconds {v}: must be positive");
                }
                seconds = Some(s);
            }
            "--seed" => {
                let v = value("--seed")?.replace('_', "");
                let s = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                seed = Some(s.with_context(|| format!("--seed {v}"))?);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let seconds = seconds.with_context(|| USAGE.to_string())?;
    let seed = seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64
    });
    Ok((seconds, seed))
}

pub fn run(args: &[String]) -> Result<()> {
    let (seconds, seed) = parse(args)?;
    bootstrap::all()?;
    if !cmd::is_root() {
        bail!("the fuzz test loads the XDP program and builds a network namespace: run it as root");
    }
    let test = ["test", "-p", "ikelb-tests", "--test", "fuzz_frames"];
    cmd::step("build the fuzz test (lb-ctl embeds the XDP object)");
    cmd::cargo(&[&test[..], &["--no-run"]].concat())?;
    cmd::step(&format!(
        "fuzz for {seconds} s with seed {seed:#x} (half with the slot fast path off, half on)"
    ));
    let start = Instant::now();
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(test)
        .args(["--", "--nocapture", "--test-threads", "1"])
        .env("IKELB_FUZZ_SECONDS", seconds.to_string())
        .env("IKELB_FUZZ_SEED", format!("{seed:#x}"))
        .env_remove("IKELB_FUZZ_FRAMES")
        .current_dir(cmd::workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    // Echo the test's output; add up the frames of its summary lines
    // ("fuzz SLOT_FAST_PATH=…: seed …, N frames …").
    let mut frames = 0u64;
    let mut fuzzing = 0f64;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        // (libtest may print "test … ... " in front of the first line of output.)
        if let Some((_, rest)) = line.split_once("fuzz SLOT_FAST_PATH=") {
            let n = rest
                .split(", ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok());
            let s = rest
                .split(" in ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse::<f64>().ok());
            frames += n.unwrap_or(0);
            fuzzing += s.unwrap_or(0.0);
        }
    }
    let status = child.wait()?;
    let rate = if fuzzing > 0.0 {
        frames as f64 / fuzzing
    } else {
        0.0
    };
    cmd::step(&format!(
        "fuzz: seed {seed:#x}, {frames} frames in {fuzzing:.1} s of fuzzing ({:.1} s in all): {rate:.0} frames/s; {}",
        start.elapsed().as_secs_f64(),
        if status.success() { "no violation" } else { "FAILED" }
    ));
    if !status.success() {
        bail!(
            "the fuzz test failed with seed {seed:#x}: its report above names each violation's \
             frame and the IKELB_FUZZ_SEED / IKELB_FUZZ_FRAMES that replay it \
             (cargo test -p ikelb-tests --test fuzz_frames)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn seconds_and_seed() {
        assert_eq!(
            parse(&args(&["--seconds", "60", "--seed", "0x1f"])).unwrap(),
            (60.0, 31)
        );
        assert_eq!(
            parse(&args(&["--seed", "7", "--seconds", "1.5"])).unwrap(),
            (1.5, 7)
        );
        assert!(parse(&args(&["--seconds", "60"])).is_ok());
        for bad in [
            &["--seed", "1"][..],
            &["--seconds"],
            &["--seconds", "0"],
            &["--seconds", "x"],
            &["--frames", "9"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
