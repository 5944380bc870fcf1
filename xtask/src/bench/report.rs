//! The readable table on stdout (`table`), `target/bench/results.json` (`json`), and the
//! performance targets (docs/benchmarks.md, "Against the targets") checked against the
//! figures (reported, never asserted).

mod json;
mod table;

pub use json::json;
pub use table::{scans_table, table};

use crate::{
    closed_loop,
    control::{self, Health},
    progcost::ProgCost,
};

/// Where and when the figures were taken.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub mem_gib: f64,
    pub load_start: String,
    pub load_end: String,
    pub commit: String,
    pub nightly: String,
    pub seconds: f64,
}

impl Machine {
    pub fn one_line(&self) -> String {
        format!(
            "{} · {} vCPU {} · {:.0} GiB · Linux {} · ikelb {} · {}",
            self.date,
            self.cpus,
            self.cpu,
            self.mem_gib,
            self.kernel,
            self.commit,
            "cargo xtask bench"
        )
    }
}

pub struct All<'a> {
    pub machine: &'a Machine,
    pub prog: &'a ProgCost,
    pub closed: &'a closed_loop::Results,
    /// The IPv6 loop (variants [`closed_loop::VARIANTS_V6`]).
    pub closed6: &'a closed_loop::Results,
    pub maglev: &'a [(u32, f64)],
    pub health: &'a Health,
    pub scans: &'a control::Scans,
}

struct Target {
    what: String,
    value: f64,
    goal: f64,
    higher_is_better: bool,
    unit: &'static str,
}

impl Target {
    fn met(&self) -> bool {
        if self.higher_is_better {
            self.value >= self.goal
        } else {
            self.value <= self.goal
        }
    }
}

fn targets(a: &All<'_>) -> Vec<Target> {
    let c = a.closed;
    let ratio = |s: &str, v: &str, w: &str| c.median(s, v) / c.median(s, w);
    let row = |key: &str| {
        a.prog
            .rows
            .iter()
            .find(|r| r.key == key)
            .map_or(f64::NAN, |r| r.cost_ns)
    };
    let mut t = Vec::new();
    for (variant, label) in [("ikelb", "fast path off"), ("lever", "fast path on")] {
        t.push(Target {
            what: format!("ikelb ÷ trivial at 64k clients ({label})"),
            value: ratio("64k", variant, "trivial"),
            goal: 0.85,
            higher_is_better: true,
            unit: "",
        });
        t.push(Target {
            what: format!("ikelb ÷ trivial at 1M clients ({label})"),
            value: ratio("1M", variant, "trivial"),
            goal: 0.70,
            higher_is_better: true,
            unit: "",
        });
        t.push(Target {
            what: format!("ikelb ÷ nft at 64k clients ({label})"),
            value: ratio("64k", variant, "nft"),
            goal: 4.0,
            higher_is_better: true,
            unit: "×",
        });
    }
    t.push(Target {
        what: "trivial forwarder ÷ nft at 64k (the loop's ceiling)".into(),
        value: ratio("64k", "trivial", "nft"),
        goal: 4.0,
        higher_is_better: true,
        unit: "×",
    });
    t.push(Target {
        what: "bytes per persistence entry".into(),
        value: bytes_per_entry(a.prog),
        goal: 100.0,
        higher_is_better: false,
        unit: " B",
    });
    t.push(Target {
        what: "hit path over stamp at 64k (fast path off)".into(),
        value: row("hit_64k"),
        goal: 60.0,
        higher_is_better: false,
        unit: " ns",
    });
    t.push(Target {
        what: "hit path over stamp at 64k (fast path on)".into(),
        value: row("lever_hit_64k"),
        goal: 60.0,
        higher_is_better: false,
        unit: " ns",
    });
    // Measured in pairs (`progcost::paired`): the rows' own ratio moves with the machine.
    for p in &a.prog.pairs {
        let label = if p.fast_path {
            "fast path on"
        } else {
            "fast path off"
        };
        t.push(Target {
            what: format!("IPv6 ÷ IPv4 hit path at 64k, paired trials ({label})"),
            value: p.ratio(),
            goal: 1.1,
            higher_is_better: false,
            unit: "×",
        });
    }
    let c6 = a.closed6;
    for (variant, label) in [("ikelb_v6", "fast path off"), ("lever_v6", "fast path on")] {
        t.push(Target {
            what: format!("IPv6 ikelb ÷ trivial at 64k clients ({label})"),
            value: c6.median("64k", variant) / c6.median("64k", "trivial_v6"),
            goal: 0.85,
            higher_is_better: true,
            unit: "",
        });
    }
    t
}

pub fn bytes_per_entry(p: &ProgCost) -> f64 {
    p.memory.v4.per_entry()[0].1
}

pub fn probation_bytes_per_entry(p: &ProgCost) -> f64 {
    p.memory.v4.per_entry()[1].1
}

/// Bytes per entry of each per-client map, (IPv4, IPv6): persistence, probation, proofs.
fn per_family(p: &ProgCost) -> [(&'static str, f64, f64); 3] {
    let (v4, v6) = (p.memory.v4.per_entry(), p.memory.v6.per_entry());
    [0, 1, 2].map(|i| (v4[i].0, v4[i].1, v6[i].1))
}
