//! `ikelb-bench`: what `cargo xtask bench` runs (as root, built in release). Method, pitfalls
//! and how to read the figures: `docs/benchmarks.md`.
//!
//! 1. program cost (`progcost`): BPF_PROG_TEST_RUN with the stamp method;
//! 2. closed loop (`closed_loop`): live-frame generator → gateway → XDP sink on one core,
//!    ikelb against a trivial forwarder, nftables DNAT + conntrack and plain forwarding; then
//!    the same over IPv6 against a trivial IPv6 forwarder (one code path for both families:
//!    `family`);
//! 3. memory of the persistence and probation maps (`progcost::Memory`);
//! 4. control plane (`control`): Maglev builds, health-check CPU with 1,000 backends, and
//!    persistence scans at 1M clients (scrape, `backend list`, full walk; idle and under
//!    insert churn; `--lb-ctl-before` runs another build's daemon beside this one's).
//!
//! Everything it creates (namespaces, XDP attachments, a bpffs mount, processes, global
//! sysctls) is undone on exit, on error and on SIGINT/SIGTERM.

mod chart;
mod closed_loop;
mod control;
mod family;
mod frame;
mod lb;
mod progcost;
mod report;
mod stats;
mod sys;

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
    time::Instant,
};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "ikelb benchmark (run through `cargo xtask bench`)")]
struct Args {
    /// The lb-ctl binary to run as the daemon under test.
    #[arg(long)]
    lb_ctl: PathBuf,
    /// Directory for results.json.
    #[arg(long)]
    out: PathBuf,
    /// Where to write the closed-loop chart (PNG).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Seconds measured per closed-loop point.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Closed-loop repeats per point (alternating the variants).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Program-cost trials per row.
    #[arg(long, default_value_t = 9)]
    trials: usize,
    /// Development: skip the closed loop (its figures print as NaN, no chart).
    #[arg(long, hide = true)]
    skip_loop: bool,
    /// Development: skip the control-plane section.
    #[arg(long, hide = true)]
    skip_control: bool,
    /// An earlier lb-ctl whose daemon's scrape and `backend list` times at 1M clients are
    /// reported beside this build's.
    #[arg(long)]
    lb_ctl_before: Option<PathBuf>,
    /// Only the persistence-scan figures of the control-plane section (printed; no
    /// results.json).
    #[arg(long)]
    scans_only: bool,
    /// Only redraw the chart from an earlier results.json (no measurement, no root needed).
    #[arg(long)]
    redraw: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(json) = &args.redraw {
        let chart = args.chart.as_ref().context("--redraw needs --chart")?;
        let (results, machine) = closed_loop::Results::from_json(&fs::read_to_string(json)?)?;
        return chart::draw(&results, &machine, chart);
    }
    ensure!(
        args.trials >= 7 && args.repeats >= 3,
        "at least 7 trials and 3 repeats"
    );
    let started = Instant::now();
    sys::install_signal_handlers();
    sys::reap_stale();
    let prefix = sys::RunPrefix::new('b');
    // bpf_stats_enabled adds ~70 ns to every program run: off, whatever it was, and restored.
    let _stats = sys::Sysctl::set("kernel/bpf_stats_enabled", "0")?;
    let cpus = sys::cpus();
    ensure!(
        cpus >= 2,
        "the benchmark needs 2 CPUs (one measured, one for the rest)"
    );
    let cpu = cpus - 1;
    let mut machine = machine();
    if args.scans_only {
        eprintln!("==> persistence scans at {} clients", control::SCAN_CLIENTS);
        let scans = control::scans(&prefix, &args.lb_ctl, args.lb_ctl_before.as_ref())?;
        print!("{}\n{}", machine.one_line(), report::scans_table(&scans));
        return Ok(());
    }

    eprintln!("==> 1/4 program cost (BPF_PROG_TEST_RUN, stamp method)");
    let prog = progcost::run(&prefix, cpu, args.trials)?;
    eprintln!("==> 2/4 closed loop (generator → gateway → sink on CPU {cpu})");
    let loop_opts = closed_loop::Options {
        cpu,
        daemon_cpu: 0,
        measure: Duration::from_secs_f64(args.seconds),
        repeats: args.repeats,
        lb_ctl: args.lb_ctl.clone(),
    };
    let closed = if args.skip_loop {
        closed_loop::Results::default()
    } else {
        closed_loop::run::<Ipv4Addr>(&prefix, &loop_opts)?
    };
    eprintln!("==> 2/4 closed loop over IPv6 (generator → gateway → sink on CPU {cpu})");
    let closed6 = if args.skip_loop {
        closed_loop::Results::default()
    } else {
        closed_loop::run::<Ipv6Addr>(&prefix, &loop_opts)?
    };
    eprintln!("==> 3/4 Maglev builds");
    let maglev: Vec<(u32, f64)> = control::MAGLEV_SIZES
        .iter()
        .map(|&n| (n, control::maglev_ms(n)))
        .collect();
    eprintln!("==> 4/4 health checks of {} backends", control::HC_BACKENDS);
    let health = if args.skip_control {
        control::Health::default()
    } else {
        control::health(&prefix, &args.lb_ctl, 0)?
    };
    eprintln!(
        "==> 4/4 persistence scans at {} clients",
        control::SCAN_CLIENTS
    );
    let scans = if args.skip_control {
        control::Scans::default()
    } else {
        control::scans(&prefix, &args.lb_ctl, args.lb_ctl_before.as_ref())?
    };

    machine.load_end = loadavg();
    machine.seconds = started.elapsed().as_secs_f64();
    let all = report::All {
        machine: &machine,
        prog: &prog,
        closed: &closed,
        closed6: &closed6,
        maglev: &maglev,
        health: &health,
        scans: &scans,
    };
    print!("{}", report::table(&all));
    fs::create_dir_all(&args.out)?;
    let json_path = args.out.join("results.json");
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&report::json(&all))? + "\n",
    )?;
    println!("\nwrote {}", json_path.display());
    if let (Some(chart), false) = (&args.chart, args.skip_loop) {
        chart::draw(&closed, &machine.one_line(), chart)
            .with_context(|| format!("drawing {}", chart.display()))?;
        println!("wrote {}", chart.display());
    }
    Ok(())
}

fn machine() -> report::Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let mem_kib: f64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let commit = sys::run("git", &["-C", root, "describe", "--always", "--dirty"])
        .map_or("unknown".to_owned(), |s| s.trim().to_owned());
    // The nightly the XDP object was built with (pinned in lb-ebpf/rust-toolchain.toml).
    let pinned = fs::read_to_string(format!("{root}/lb-ebpf/rust-toolchain.toml"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map_or("nightly".to_owned(), |v| v.trim_matches('"').to_owned());
    let nightly = sys::run("rustc", &[&format!("+{pinned}"), "-V"])
        .map_or("unknown".to_owned(), |s| s.trim().to_owned());
    report::Machine {
        date: sys::run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .map_or(String::new(), |s| s.trim().to_owned()),
        kernel: sys::run("uname", &["-r"]).map_or(String::new(), |s| s.trim().to_owned()),
        cpu,
        cpus: sys::cpus(),
        mem_gib: mem_kib / 1024.0 / 1024.0,
        load_start: loadavg(),
        load_end: String::new(),
        commit,
        nightly,
        seconds: 0.0,
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
