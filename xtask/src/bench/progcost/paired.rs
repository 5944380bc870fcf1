//! IPv6 ÷ IPv4 hit-path cost measured in pairs. The `hit_64k` and `hit_64k_v6` rows are taken
//! minutes apart, on objects loaded one after the other: a change in what the machine is doing
//! between them (a host's neighbour, a frequency step) moves their ratio by more than the
//! families differ — published runs put it anywhere from 0.77 to 1.34 on the same code. Here
//! both families' objects stay loaded side by side with 64k established clients each, and
//! every trial runs stamp and stamp + ikelb of one family right after the other's (the order
//! alternating), so each ratio compares two costs taken under the same conditions; the figure
//! reported is the median of the per-trial ratios. Once with the slot fast path off (the
//! persistence lookup), once with it on (the default path).

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use lb_ctl::state::IfaceInfo;

use super::{
    fwd_cfg,
    testrun::{Bench, Expect, Fast},
    Frames, IFACES, REPEAT,
};
use crate::{
    family::Family,
    frame::{BenchCfg, Template},
    lb,
    stats::median,
};

/// Trials of each pair: more than a row's, as one ratio is the row.
pub const MIN_TRIALS: usize = 15;

/// One path's pairs.
#[derive(Clone, Debug)]
pub struct Pairs {
    /// Whether the slot fast path was on.
    pub fast_path: bool,
    /// ns over stamp of each trial, (IPv4, IPv6).
    pub costs: Vec<(f64, f64)>,
}

impl Pairs {
    /// Median of the per-trial IPv6 ÷ IPv4 ratios.
    pub fn ratio(&self) -> f64 {
        let r: Vec<f64> = self.costs.iter().map(|(v4, v6)| v6 / v4).collect();
        median(&r)
    }

    pub fn median_ns(&self) -> (f64, f64) {
        let v4: Vec<f64> = self.costs.iter().map(|c| c.0).collect();
        let v6: Vec<f64> = self.costs.iter().map(|c| c.1).collect();
        (median(&v4), median(&v6))
    }
}

/// One family's object with its established clients and the frame of their hit path.
struct Side<F> {
    bench: Bench<F>,
    frame: Template,
    cfg: BenchCfg,
    expect: Expect,
}

impl<F: Family> Side<F> {
    fn new(ifaces: &[IfaceInfo], fast_path: bool) -> Result<Self> {
        let config = lb::family_config::<F>(&IFACES)?;
        let mut bench = Bench::<F>::new(ifaces, 1, &config, fast_path)?;
        let cfg = fwd_cfg(65_536, F::ESTABLISHED.base);
        let frame = Frames::new::<F>(ifaces).fwd;
        let expect = Expect {
            fast: if fast_path { Fast::Any } else { Fast::Never },
            ..Expect::FORWARDED
        };
        bench.establish(cfg)?;
        let ext = bench.ext;
        bench.run(
            F::STAMP_LB,
            &frame,
            cfg,
            ext,
            cfg.clients.max(REPEAT),
            Some(expect),
        )?;
        Ok(Self {
            bench,
            frame,
            cfg,
            expect,
        })
    }

    /// One trial: stamp + ikelb minus stamp, ns per frame.
    fn cost(&mut self) -> Result<f64> {
        let ext = self.bench.ext;
        let (stamp, per) =
            self.bench
                .trials(&self.frame, self.cfg, ext, &[(F::STAMP_LB, self.expect)])?;
        Ok(per[0][0] - stamp[0])
    }
}

/// The pairs with the fast path off, then on.
pub fn hit_pairs(ifaces: &[IfaceInfo], trials: usize) -> Result<Vec<Pairs>> {
    let trials = trials.max(MIN_TRIALS);
    let mut out = Vec::new();
    for fast_path in [false, true] {
        eprintln!(
            "  program cost: IPv6 ÷ IPv4 hit path in pairs (fast path {})",
            if fast_path { "on" } else { "off" }
        );
        let mut v4 = Side::<Ipv4Addr>::new(ifaces, fast_path)?;
        let mut v6 = Side::<Ipv6Addr>::new(ifaces, fast_path)?;
        let mut costs = Vec::with_capacity(trials);
        for i in 0..trials {
            let pair = if i % 2 == 0 {
                let a = v4.cost()?;
                (a, v6.cost()?)
            } else {
                let b = v6.cost()?;
                (v4.cost()?, b)
            };
            costs.push(pair);
        }
        out.push(Pairs { fast_path, costs });
    }
    Ok(out)
}
