//! Verifier headroom: how many instructions the kernel's verifier processes to accept the
//! `ikelb` program, loaded with the globals the daemon gives it by default, with the slot
//! fast path on and off.
//!
//! The verifier walks every path the program's constants leave open (the daemon's globals
//! are frozen read-only data, so a branch on `SLOT_FAST_PATH` or `MODE_DSR` is pruned), and
//! refuses a program whose walk exceeds 1,000,000 processed instructions. Older kernels prune
//! less well, so growth shows here first: `cargo xtask test` runs this on every kernel of its
//! matrix and prints the lines `verifier: …` in its summary (figures in docs/benchmarks.md).

use aya::{programs::Xdp, EbpfLoader};
use lb_common::maps;

/// The verifier's limit on processed instructions (`BPF_COMPLEXITY_LIMIT_INSNS`, Linux 5.2+).
const LIMIT: u32 = 1_000_000;

/// The globals `lb-ctl daemon` sets from a configuration with every default
/// (`lb_ctl::daemon::program_globals`), with the slot fast path as given.
fn default_globals(slot_fast_path: bool) -> Vec<(&'static str, u32)> {
    let yaml = format!(
        "interfaces: [eth0]\nslot_fast_path: {slot_fast_path}\nvirtual_servers:\n  - name: vpn\n    \
         vip: 203.0.113.10\n    backends:\n      - address: 10.0.0.11\n"
    );
    let c = lb_ctl::config::parse("defaults.yaml", &yaml).expect("a valid default config");
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.get());
    lb_ctl::daemon::program_globals(&c, cpus).to_vec()
}

/// Loads the program (small maps: their size does not change the verifier's walk) and
/// returns (processed instructions, translated size in bytes).
fn verify(slot_fast_path: bool) -> (u32, u32) {
    let globals = default_globals(slot_fast_path);
    let mut loader = EbpfLoader::new();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    for name in [
        maps::PERSIST_V4,
        maps::PERSIST_V6,
        maps::PROBATION_V4,
        maps::PROBATION_V6,
    ] {
        loader.map_max_entries(name, 64);
    }
    let mut ebpf = loader
        .load(lb_ctl::EBPF_OBJECT)
        .expect("load the XDP object (maps)");
    let prog: &mut Xdp = ebpf
        .program_mut(lb_ctl::XDP_PROGRAM)
        .expect("the ikelb program")
        .try_into()
        .expect("an XDP program");
    prog.load()
        .unwrap_or_else(|e| panic!("the verifier refused the program: {e:#?}"));
    let info = prog.info().expect("bpf_prog_info of the loaded program");
    let processed = info
        .verified_instruction_count()
        .expect("bpf_prog_info.verified_insns (Linux 5.16+)");
    (processed, info.size_translated().unwrap_or(0))
}

#[test]
fn verifier_processes_the_program_well_below_its_limit() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: loading an XDP program needs root; run `cargo xtask test`");
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    for fast in [true, false] {
        let (processed, bytes) = verify(fast);
        println!(
            "verifier: kernel {} slot_fast_path={} processed {processed} insns ({:.1}% of \
             {LIMIT}), {bytes} B translated",
            release.trim(),
            if fast { "on " } else { "off" },
            f64::from(processed) * 100.0 / f64::from(LIMIT),
        );
        // Half the limit: a warning line long before a kernel refuses the program.
        assert!(
            processed < LIMIT / 2,
            "the verifier processed {processed} instructions (slot_fast_path={fast}): past half \
             its limit of {LIMIT}; an older kernel is close to refusing the program"
        );
    }
}
