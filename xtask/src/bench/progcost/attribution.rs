//! Where the forward hit path's time goes: copies of it with one step removed at a time
//! (`lb-ebpf/src/bench/variants.rs`, IPv4 only), each run in the same trials as the real
//! program.

use anyhow::Result;
use lb_common::counter;

use super::{
    testrun::{Bench, Expect},
    XDP_REDIRECT, XDP_TX,
};
use crate::{
    family::Family,
    frame::{BenchCfg, Template},
    stats::median,
};

/// One attribution program: stamp + ikelb's forward path with a step removed (or the lever).
pub struct Variant {
    pub prog: &'static str,
    pub what: &'static str,
    counts: bool,
    redirects: bool,
}

#[rustfmt::skip]
pub const VARIANTS: [Variant; 8] = [
    Variant { prog: "bench_v_full", what: "copy of the forward path, nothing removed", counts: true, redirects: true },
    Variant { prog: "bench_v_novip", what: "VIP hash lookup → array read", counts: true, redirects: true },
    Variant { prog: "bench_v_nopers", what: "no persistence lookup (ring only)", counts: true, redirects: true },
    Variant { prog: "bench_v_notime", what: "no clock read / atime", counts: true, redirects: true },
    Variant { prog: "bench_v_nocount", what: "no counters (COUNTERS, BACKEND_STATS)", counts: false, redirects: true },
    Variant { prog: "bench_v_norewr", what: "no header rewrite", counts: true, redirects: true },
    Variant { prog: "bench_v_noredir", what: "XDP_TX instead of devmap redirect", counts: true, redirects: false },
    Variant { prog: "bench_v_parse", what: "parse + VIP + classify only", counts: false, redirects: false },
];

/// Attribution at one client count: every variant's cost over stamp, same trials.
#[derive(Clone, Debug)]
pub struct Attribution {
    pub clients: u32,
    /// bench_stamp_lb (the real program) over stamp, in the same trials.
    pub real_ns: f64,
    /// (program, description, ns over stamp).
    pub rows: Vec<(&'static str, String, f64)>,
}

impl<F: Family> Bench<F> {
    /// The real program and every [`VARIANTS`] program on the established clients of `cfg`
    /// (the object must have the variants loaded).
    pub fn attribution(
        &mut self,
        clients: u32,
        cfg: BenchCfg,
        esp: &Template,
    ) -> Result<Attribution> {
        let real = Expect::FORWARDED;
        let fwd = |v: &Variant| Expect {
            counter: v.counts.then_some(counter::FORWARD),
            action: if v.redirects { XDP_REDIRECT } else { XDP_TX },
            ..real
        };
        let mut progs: Vec<(&str, Expect)> = vec![(F::STAMP_LB, real)];
        progs.extend(VARIANTS.iter().map(|v| (v.prog, fwd(v))));
        let (stamp, per) = self.trials(esp, cfg, self.ext, &progs)?;
        let s = median(&stamp);
        let real_ns = median(&per[0]) - s;
        let rows: Vec<(&'static str, String, f64)> = VARIANTS
            .iter()
            .zip(&per[1..])
            .map(|(v, t)| (v.prog, v.what.to_owned(), median(t) - s))
            .collect();
        Ok(Attribution {
            clients,
            real_ns,
            rows,
        })
    }
}
