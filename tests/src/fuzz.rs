//! A property-based fuzzer of the XDP program through `BPF_PROG_TEST_RUN`
//! (`tests/fuzz_frames.rs`): valid seed frames (`seeds`) mutated (`mutate`: bit flips,
//! truncation, inconsistent IP / UDP / IPv6 payload lengths and TCP data offsets, IPv4 options
//! and IPv6 extension-header chains, wrong checksums, TTL / hop limit 0 and 1, martian
//! addresses, VLAN tags, foreign and group destination MACs, bytes past the IP length,
//! fragment offsets up to the 65,535-byte limit, other protocols) and run one at a time on the
//! `crate::xdp` fixture; every run must keep the invariants of `check`.
//!
//! A run first truncates every seed at every offset, then mutates seeds at random. It is
//! deterministic: frame `i` of a run comes from a SplitMix64 generator seeded with the run's
//! seed, its slot fast path setting and `i` (only the maps' ages depend on the clock), so a
//! violation is replayed by the seed and frame count it prints — and its hex is printed too.
//! A run does not stop at the first violation: it counts every class it finds, keeps the
//! simplest example of each (fewest mutations), and fails at the end listing them all.
//!
//! Environment: `IKELB_FUZZ_SEED` (decimal or 0x-hex), `IKELB_FUZZ_FRAMES` (frames over both
//! fast path settings; default 100,000), `IKELB_FUZZ_SECONDS` (a time budget over both;
//! without `IKELB_FUZZ_FRAMES` the frames are then unbounded), `IKELB_FUZZ_ONLY` (a comma list
//! of `check::Class` names: report only those; for narrowing a search, never the default).

mod check;
mod counters;
mod frame;
mod mutate;
mod seeds;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub use check::Class;

use crate::xdp::{Fixture, XDP_REDIRECT, XDP_TX};

/// `BPF_PROG_TEST_RUN` refuses XDP input shorter than an Ethernet header (`bpf_test_init`,
/// net/bpf/test_run.c): truncation stops there.
pub const MIN_FRAME: usize = 14;

/// The suite's seed (any fixed value: the run is the same every time).
pub const DEFAULT_SEED: u64 = 0x1ce1_b0f2_2026;
pub const DEFAULT_FRAMES: u64 = 100_000;

/// SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// What to run, from the environment (module doc).
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// Frames over both fast path settings.
    pub frames: u64,
    /// Time budget over both settings.
    pub seconds: Option<f64>,
    /// Classes to report (`None`: all).
    pub only: Option<Vec<Class>>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_u64(name: &str, v: &str) -> u64 {
    let v = v.trim().replace('_', "");
    let r = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    r.unwrap_or_else(|e| panic!("{name}={v}: {e}"))
}

impl Config {
    pub fn from_env() -> Config {
        let seed =
            env("IKELB_FUZZ_SEED").map_or(DEFAULT_SEED, |v| parse_u64("IKELB_FUZZ_SEED", &v));
        let seconds = env("IKELB_FUZZ_SECONDS").map(|v| {
            v.trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("IKELB_FUZZ_SECONDS={v}: {e}"))
        });
        let frames = env("IKELB_FUZZ_FRAMES").map_or(
            if seconds.is_some() {
                u64::MAX
            } else {
                DEFAULT_FRAMES
            },
            |v| parse_u64("IKELB_FUZZ_FRAMES", &v),
        );
        let only = env("IKELB_FUZZ_ONLY").map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    Class::by_name(n).unwrap_or_else(|| {
                        let all: Vec<_> = Class::ALL.iter().map(|c| c.name()).collect();
                        panic!(
                            "IKELB_FUZZ_ONLY: no class {n:?} (classes: {})",
                            all.join(", ")
                        )
                    })
                })
                .collect()
        });
        Config {
            seed,
            frames,
            seconds,
            only,
        }
    }
}

/// One class's count and its simplest example: the first frame made by the fewest
/// mutations.
pub struct Seen {
    pub count: u64,
    pub mutations: usize,
    pub example: String,
}

/// The outcome of one run (one fast path setting).
pub struct Report {
    pub seed: u64,
    pub fast_path: bool,
    pub frames: u64,
    pub sweep: u64,
    pub elapsed: Duration,
    pub violations: BTreeMap<Class, Seen>,
    /// Frames forwarded (XDP_TX, XDP_REDIRECT), and of those, how many came with a right
    /// transport checksum (which the output must keep).
    pub forwarded: u64,
    pub l4_checked: u64,
    /// Growth of each verdict counter and of each event (`EVENTS`: `fast_path` shows the
    /// slot fast path ran) over the run.
    pub verdicts: Vec<u64>,
    pub events: Vec<u64>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// One line: seed, frames, rate, violations per class.
    pub fn summary(&self) -> String {
        let v: Vec<String> = self
            .violations
            .iter()
            .map(|(c, s)| format!("{c} {}", s.count))
            .collect();
        let mut verdicts: Vec<(u64, String)> = self
            .verdicts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n != 0)
            .map(|(i, n)| {
                let (a, r) = lb_common::counter::LABELS[i];
                (*n, format!("{a}/{r} {n}"))
            })
            .collect();
        verdicts.sort_by_key(|v| std::cmp::Reverse(v.0));
        let verdicts: Vec<String> = verdicts.into_iter().map(|(_, s)| s).collect();
        let events: Vec<String> = self
            .events
            .iter()
            .enumerate()
            .filter(|(_, n)| **n != 0)
            .map(|(i, n)| format!("{} {n}", lb_common::event::LABELS[i]))
            .collect();
        format!(
            "fuzz SLOT_FAST_PATH={}: seed {:#x}, {} frames ({} truncation sweep) in {:.2} s = \
             {:.0} frames/s; {} forwarded, {} of them with a transport checksum to keep; \
             verdicts: {}; events: {}; violations: {}",
            u32::from(self.fast_path),
            self.seed,
            self.frames,
            self.sweep,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.forwarded,
            self.l4_checked,
            verdicts.join(", "),
            events.join(", "),
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        )
    }

    /// Every class found, with its simplest example (input and output in hex).
    pub fn details(&self) -> String {
        let mut out = String::new();
        for (c, s) in &self.violations {
            let _ = writeln!(
                out,
                "\n== {c}: {} frame(s); the simplest:\n{}",
                s.count, s.example
            );
        }
        out
    }
}

/// The generator of frame `i` of the run with this seed and fast path setting.
fn frame_rng(seed: u64, fast_path: bool, i: u64) -> Rng {
    let mut r = Rng::new(seed ^ u64::from(fast_path).wrapping_mul(0xa076_1d64_78bd_642f));
    let salt = r.next_u64();
    Rng::new(salt ^ i.wrapping_mul(0xe703_7ed1_a0b4_28db))
}

/// Runs up to `frames` frames (or until `budget` is spent) on `lb`.
pub fn run(lb: &mut Fixture, cfg: &Config, frames: u64, budget: Option<Duration>) -> Report {
    let fast_path = lb.setup.slot_fast_path;
    let seeds = seeds::all(lb);
    let counters = counters::Counters::new(lb);
    counters.cross_check(lb);
    let first = counters.read();
    let start = Instant::now();
    let mut report = Report {
        seed: cfg.seed,
        fast_path,
        frames: 0,
        sweep: 0,
        elapsed: Duration::ZERO,
        violations: BTreeMap::new(),
        forwarded: 0,
        l4_checked: 0,
        verdicts: Vec::new(),
        events: Vec::new(),
    };
    let first_events = lb.events();
    // The seeds themselves: a forwarded seed that stopped being forwarded would leave the
    // rewrite unfuzzed, silently.
    for s in &seeds {
        let what = ["none (the seed itself)".to_string()];
        let action = one(lb, &counters, s, &s.frame, &what, &mut report, cfg);
        assert_eq!(
            matches!(action, XDP_TX | XDP_REDIRECT),
            s.forwarded,
            "seed {:?}: {}, but the fuzzer expects it {}",
            s.name,
            check::action_name(action),
            if s.forwarded { "forwarded" } else { "passed" }
        );
    }
    let over =
        |report: &Report| report.frames >= frames || budget.is_some_and(|b| start.elapsed() >= b);
    'sweep: for s in &seeds {
        for cut in MIN_FRAME..s.frame.len() {
            if over(&report) {
                break 'sweep;
            }
            let what = vec![format!("truncate: to {cut} bytes (sweep)")];
            one(lb, &counters, s, &s.frame[..cut], &what, &mut report, cfg);
            report.sweep += 1;
        }
    }
    let mut i = 0u64;
    while !over(&report) {
        let mut rng = frame_rng(cfg.seed, fast_path, i);
        let s = &seeds[rng.below(seeds.len())];
        let mut f = s.frame.clone();
        let what = mutate::mutate(&mut f, &mut rng, s.reverse);
        one(lb, &counters, s, &f, &what, &mut report, cfg);
        i += 1;
    }
    report.elapsed = start.elapsed();
    counters.cross_check(lb);
    report.verdicts = counters
        .read()
        .iter()
        .zip(&first)
        .map(|(a, b)| a - b)
        .collect();
    report.events = (lb.events().iter().zip(&first_events))
        .map(|(a, b)| a - b)
        .collect();
    report
}

/// Runs one frame and records what it broke; returns the action.
fn one(
    lb: &mut Fixture,
    counters: &counters::Counters,
    s: &seeds::Seed,
    input: &[u8],
    what: &[String],
    report: &mut Report,
    cfg: &Config,
) -> u32 {
    if let Some((client, backend)) = s.persist {
        lb.persist(client, seeds::entry(backend));
    }
    let before = counters.read();
    let (action, output) = lb.run_on(input, s.side);
    let after = counters.read();
    let deltas: Vec<i128> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| i128::from(*a) - i128::from(*b))
        .collect();
    let run = check::Run {
        input,
        side: s.side,
        action,
        output: &output,
        deltas: &deltas,
    };
    let index = report.frames;
    report.frames += 1;
    if matches!(action, XDP_TX | XDP_REDIRECT) {
        report.forwarded += 1;
        if frame::l4_checksum_ok(input, &frame::Layout::of(input)) == Some(true) {
            report.l4_checked += 1;
        }
    }
    for (class, detail) in check::check(&run) {
        if cfg.only.as_ref().is_some_and(|o| !o.contains(&class)) {
            continue;
        }
        let fast_path = report.fast_path;
        let make = || example(&run, &detail, s, what, index, cfg.seed, fast_path);
        match report.violations.get_mut(&class) {
            None => {
                report.violations.insert(
                    class,
                    Seen {
                        count: 1,
                        mutations: what.len(),
                        example: make(),
                    },
                );
            }
            Some(seen) => {
                seen.count += 1;
                if what.len() < seen.mutations {
                    seen.mutations = what.len();
                    seen.example = make();
                }
            }
        }
    }
    action
}

fn example(
    run: &check::Run,
    detail: &str,
    s: &seeds::Seed,
    what: &[String],
    index: u64,
    seed: u64,
    fast_path: bool,
) -> String {
    let grown: Vec<String> = run
        .deltas
        .iter()
        .enumerate()
        .filter(|(_, d)| **d != 0)
        .map(|(i, d)| {
            let (a, r) = lb_common::counter::LABELS
                .get(i)
                .copied()
                .unwrap_or(("?", "?"));
            format!("{a}/{r} {d:+}")
        })
        .collect();
    format!(
        "  {detail}\n  frame {index} of the run with seed {seed:#x}, SLOT_FAST_PATH={}; seed frame \
         {:?} arriving on {:?}\n  mutations: {}\n  {} ({}), counters: {}\n  in  ({} bytes): {}\n  \
         out ({} bytes): {}",
        u32::from(fast_path),
        s.name,
        s.side,
        what.join("; "),
        check::action_name(run.action),
        run.action,
        grown.join(", "),
        run.input.len(),
        frame::hex(run.input),
        run.output.len(),
        frame::hex(run.output),
    )
}
