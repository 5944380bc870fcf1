//! Property-based fuzzing of the XDP program through `BPF_PROG_TEST_RUN`: about 100,000
//! mutated frames (half with the slot fast path off, half on), each of which must keep the
//! invariants of `ikelb_tests::fuzz` — nothing malformed is forwarded (Ethernet, IPv4 / IPv6
//! and transport lengths, checksums, TTL, fragment end), nothing from a martian client or to
//! a MAC not ours, a passed frame is unchanged, exactly one verdict counter grows, never
//! XDP_ABORTED. A violation fails the test listing each class found with its simplest frame
//! (input and output in hex, the seed frame, the mutations, the seed to replay).
//!
//! `IKELB_FUZZ_SEED`, `IKELB_FUZZ_FRAMES`, `IKELB_FUZZ_SECONDS` and `IKELB_FUZZ_ONLY` change
//! the run (`ikelb_tests::fuzz`, module doc); `cargo xtask fuzz -- --seconds N` is the long run.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it the test says so and returns.

use std::time::Duration;

use ikelb_tests::{
    fuzz::{self, Config},
    xdp::{Fixture, Setup},
};

#[test]
fn mutated_frames_keep_the_invariants() {
    let cfg = Config::from_env();
    // Half of the frames and of the time for each fast path setting.
    let frames = cfg.frames.div_ceil(2);
    let budget = cfg.seconds.map(|s| Duration::from_secs_f64(s / 2.0));
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let report = fuzz::run(lb, &cfg, frames, budget);
        println!("{}", report.summary());
        assert!(
            report.violations.is_empty(),
            "{}\n{}\nreplay: IKELB_FUZZ_SEED={:#x} IKELB_FUZZ_FRAMES={} (the same frames in this run)",
            report.summary(),
            report.details(),
            cfg.seed,
            2 * report.frames,
        );
    });
}
