//! `cargo xtask`: what needs privilege or orchestration — toolchain bootstrap, the demo, the
//! full test suite (host unit tests + root-only namespace and BPF_PROG_TEST_RUN tests) and the
//! benchmark.

mod bootstrap;
mod cmd;
mod deb;
mod fuzz;
mod kernels;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ikelb development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building, testing and packaging ikelb needs (apt packages, nightly
    /// rust-src, bpf-linker, cargo-deb), saying what it installs. Run by `test`, `run` and
    /// `deb` too.
    Bootstrap,
    /// Run every test: host unit tests, then (as root) BPF_PROG_TEST_RUN and namespace tests,
    /// then the kernel matrix: the tests that exercise the kernel, inside QEMU on Debian 12's
    /// 6.1 and the 6.12 LTS (docs/kernels.md).
    Test {
        /// Run the kernel matrix on this kernel image instead of the default ones (repeatable).
        #[arg(long = "kernel", value_name = "PATH")]
        kernels: Vec<PathBuf>,
        /// Skip the kernel matrix (a quick run on the host kernel only; CI never skips it).
        #[arg(long, conflicts_with = "kernels")]
        no_kernels: bool,
        /// Extra arguments for the root-only test run (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Without arguments: a self-contained demo in network namespaces. With `--cluster`: the
    /// cluster demo (docs/cluster.md). With `--config FILE`: run the daemon for real.
    Run {
        /// Run `lb-ctl daemon --config FILE` instead of the demo.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cluster demo: 3 ikelb nodes behind a BGP router's ECMP, one cut off; exits
        /// non-zero unless every VPN session survives.
        #[arg(long, conflicts_with = "config")]
        cluster: bool,
    },
    /// Build the Debian package `ikelb` (release lb-ctl, unit, example config, Prometheus
    /// rules, examples, man pages, completions) into <target>/debian/ (docs/packaging.md).
    Deb,
    /// Benchmark (root, < 10 min, not part of `test`): program cost, closed-loop throughput
    /// against a trivial forwarder and nftables, memory, control plane. Prints a table,
    /// writes target/bench/results.json and docs/bench-closed-loop.png (docs/benchmarks.md).
    Bench {
        /// Extra arguments for `ikelb-bench` (e.g. `--seconds 5 --repeats 5`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Fuzz the XDP program (root, not part of `test`): `tests/fuzz_frames.rs` for a time
    /// budget, `-- --seconds N [--seed S]`; prints the seed and frames/s.
    Fuzz {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The command line without a `--` right after `run`: `cargo xtask run -- --cluster` (the form
/// README documents, as for `cargo run -- ARGS`) reaches xtask as `run -- --cluster`, because
/// the alias in .cargo/config.toml already ends cargo's own options with `--`; clap would then
/// read `--cluster` as a positional argument, which `run` has none of.
fn command_line(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "run") && args.get(2).is_some_and(|a| a == "--") {
        args.remove(2);
    }
    args
}

fn main() -> Result<()> {
    let cli = Cli::parse_from(command_line(std::env::args_os()));
    // Every task runs cargo with the pinned stable toolchain, whichever built xtask.
    bootstrap::stable()?;
    match cli.task {
        Task::Bootstrap => bootstrap::all().and_then(|()| bootstrap::packaging()),
        Task::Test {
            kernels,
            no_kernels,
            args,
        } => test(&kernels, no_kernels, &args),
        Task::Run { config, cluster } => run(config, cluster),
        Task::Deb => deb::build().map(drop),
        Task::Bench { args } => bench(&args),
        Task::Fuzz { args } => fuzz::run(&args),
    }
}

/// Builds `lb-ctl` and `ikelb-bench` in release and runs the benchmark as root.
fn bench(args: &[String]) -> Result<()> {
    bootstrap::all()?;
    if !cmd::is_root() {
        anyhow::bail!(
            "the benchmark loads XDP programs and builds network namespaces: run it as root"
        );
    }
    // The chart's font (plotters renders text with ab_glyph from a TrueType file).
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    if !std::path::Path::new(FONT).exists() {
        bootstrap::apt_install(
            &["fonts-dejavu-core"],
            " for the benchmark chart's font",
            "apt-install-bench-font",
        )?;
    }
    cmd::step("build lb-ctl and ikelb-bench (release)");
    cmd::cargo(&["build", "--release", "-p", "lb-ctl", "--bin", "lb-ctl"])?;
    cmd::cargo(&[
        "build",
        "--release",
        "-p",
        "xtask",
        "--features",
        "bench",
        "--bin",
        "ikelb-bench",
    ])?;
    let release = cmd::target_dir().join("release");
    let out = cmd::target_dir().join("bench");
    let chart = cmd::workspace_root().join("docs/bench-closed-loop.png");
    cmd::step("ikelb-bench (about 5 minutes)");
    let mut all: Vec<std::ffi::OsString> = vec![
        "--lb-ctl".into(),
        release.join("lb-ctl").into(),
        "--out".into(),
        out.into(),
        "--chart".into(),
        chart.into(),
    ];
    all.extend(args.iter().map(Into::into));
    cmd::exec(&release.join("ikelb-bench"), &all)
}

/// Host tests need no root; the `ikelb-tests` crate needs root (XDP, namespaces) and is
/// given the Debian package to install (`IKELB_DEB`); then the kernel matrix (unless
/// `no_kernels`).
fn test(kernels: &[PathBuf], no_kernels: bool, args: &[String]) -> Result<()> {
    bootstrap::all()?;
    if !no_kernels {
        bootstrap::kernel_matrix(kernels.is_empty())?;
    }
    cmd::step("host unit tests (cargo test --workspace --exclude ikelb-tests)");
    cmd::cargo(&["test", "--workspace", "--exclude", "ikelb-tests"])?;
    if !cmd::is_root() {
        anyhow::bail!(
            "the BPF_PROG_TEST_RUN and namespace tests need root (CAP_NET_ADMIN, CAP_BPF, \
             CAP_SYS_ADMIN): run `cargo xtask test` as root"
        );
    }
    // The package test (tests/tests/deb_package.rs) installs this one under a scratch root.
    let deb = deb::build()?;
    std::env::set_var("IKELB_DEB", &deb);
    cmd::step("build lb-ctl for the namespace tests");
    cmd::cargo(&["build", "-p", "lb-ctl", "-p", "ikelb-tests", "--bins"])?;
    cmd::step("root tests (cargo test -p ikelb-tests)");
    let mut cargo_args = vec!["test", "-p", "ikelb-tests", "--"];
    cargo_args.extend(args.iter().map(String::as_str));
    cmd::cargo(&cargo_args)?;
    if no_kernels {
        cmd::step("kernel matrix skipped (--no-kernels)");
        return Ok(());
    }
    let tests = kernels::build_tests()?;
    let images: Vec<(String, PathBuf)> = if kernels.is_empty() {
        kernels::MATRIX
            .iter()
            .map(|(pkg, label)| Ok((label.to_string(), kernels::image_of_package(pkg)?)))
            .collect::<Result<_>>()?
    } else {
        kernels
            .iter()
            .map(|k| ("--kernel".to_string(), k.clone()))
            .collect()
    };
    // The guests run side by side: much of a guest's time is the tests' own waiting (ticks,
    // restarts), which the other guest's emulation fills.
    for (label, image) in &images {
        cmd::step(&format!(
            "kernel matrix: booting {} ({label}) under QEMU",
            image.display()
        ));
    }
    cmd::step("kernel matrix: the guests run side by side, ~10 min");
    let outcomes = std::thread::scope(|s| {
        let running: Vec<_> = images
            .iter()
            .map(|(label, image)| s.spawn(|| kernels::run(label, image, &tests)))
            .collect();
        running
            .into_iter()
            .map(|h| h.join().expect("a kernel matrix thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    kernels::summary(&kernels::host_verifier(&tests), &outcomes)
}

fn run(config: Option<PathBuf>, cluster: bool) -> Result<()> {
    bootstrap::all()?;
    if !cmd::is_root() {
        anyhow::bail!("ikelb attaches XDP programs and builds network namespaces: run as root");
    }
    cmd::step("build lb-ctl and the demo (release)");
    cmd::cargo(&[
        "build",
        "--release",
        "-p",
        "lb-ctl",
        "-p",
        "ikelb-tests",
        "--bins",
    ])?;
    let lb_ctl = cmd::target_dir().join("release/lb-ctl");
    match config {
        Some(config) => {
            cmd::step(&format!("lb-ctl daemon --config {}", config.display()));
            cmd::exec(
                &lb_ctl,
                &["daemon".as_ref(), "--config".as_ref(), config.as_os_str()],
            )
        }
        None => {
            let demo = cmd::target_dir().join("release/ikelb-demo");
            let mut args = vec!["--lb-ctl".as_ref(), lb_ctl.as_os_str()];
            if cluster {
                cmd::step(
                    "cluster demo: a BGP router, 3 ikelb nodes, 3 backends, 24 VPN clients; one \
                     node cut off",
                );
                args.push("--cluster".as_ref());
            } else {
                cmd::step("demo: namespace lab with clients, the ikelb gateway and 3 backends");
            }
            cmd::exec(&demo, &args)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{command_line, Cli, Task};

    #[test]
    fn run_takes_cluster_or_config_not_both() {
        let run = |args: &[&str]| {
            let line = ["xtask", "run"].iter().chain(args).map(Into::into);
            Cli::try_parse_from(command_line(line))
        };
        assert!(matches!(
            run(&["--cluster"]).map(|c| c.task),
            Ok(Task::Run {
                config: None,
                cluster: true
            })
        ));
        // `cargo xtask run -- --cluster`: the `--` after `run` is cargo's, not an argument.
        assert!(matches!(
            run(&["--", "--cluster"]).map(|c| c.task),
            Ok(Task::Run {
                config: None,
                cluster: true
            })
        ));
        assert!(matches!(
            run(&[]).map(|c| c.task),
            Ok(Task::Run {
                config: None,
                cluster: false
            })
        ));
        let err = run(&["--cluster", "--config", "x.yaml"])
            .err()
            .expect("both accepted");
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{err}"
        );
        let err = run(&["--", "--config", "x.yaml", "--cluster"])
            .err()
            .expect("both accepted after --");
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{err}"
        );
    }
}
