//! One loaded object and its test runs: each run's verdict counter and events checked against
//! what every frame must have done ([`Expect`]), trials of stamp and stamp + ikelb, the
//! established clients and reverse addresses the rows start from, and the lever's checks.

use std::{collections::HashMap as StdHashMap, marker::PhantomData, time::Instant};

use anyhow::{ensure, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use lb_common::{counter, event, PersistValue, QUOTA_WINDOW_SHIFT, RING_F_CHANGED};
use lb_ctl::{
    config::Config,
    dataplane::{AyaDataplane, Dataplane},
    state::{Balancer, IfaceInfo},
};

use super::{Row, BACKEND_MAC, EVENTS, EXT_PORT, REPEAT, ROUTER_MAC, XDP_REDIRECT, XDP_TX};
use crate::{
    family::{wire_word, Clients, Family},
    frame::{self, BenchCfg, Template},
    lb,
    stats::median,
    sys,
};

/// `BENCH_REV` entries: the reverse row's clients.
pub const REV_ENTRIES: u32 = 1 << 16;

/// The object of one family, loaded and filled like the daemon does, its bench programs
/// loaded.
pub struct Bench<F> {
    pub lb: Balancer<AyaDataplane>,
    pub ext: u32,
    pub int: u32,
    trials: usize,
    /// `NEW_CLIENT_QUOTA` this object was loaded with (0 = unlimited).
    pub quota: u32,
    /// Event deltas summed over the checked runs since the last reset (`row`).
    acc: [u64; EVENTS],
    family: PhantomData<F>,
}

/// What every frame of a run must have done.
#[derive(Clone, Copy)]
pub struct Expect {
    /// Counter each frame bumps (`None`: the program does not count).
    pub counter: Option<u32>,
    pub action: u32,
    /// New-client events (`PROBATION_*`, `LOST`).
    pub news: News,
    /// `FAST_PATH` events.
    pub fast: Fast,
}

impl Expect {
    /// Established clients: forwarded, no new-client event, no MAC move, no fast path.
    pub const FORWARDED: Self = Self {
        counter: Some(counter::FORWARD),
        action: XDP_REDIRECT,
        news: News::None,
        fast: Fast::Never,
    };
    /// The reverse path of established clients.
    pub const REVERSED: Self = Self {
        counter: Some(counter::REVERSE),
        ..Self::FORWARDED
    };

    /// Frames of new sources: every one a probation insert or, past the ration, throttled.
    pub fn rationed(lost: bool) -> Self {
        Self {
            news: News::Rationed { lost },
            ..Self::FORWARDED
        }
    }

    /// Frames of new sources without a ration: every one a probation insert.
    pub fn inserted(lost: bool) -> Self {
        Self {
            news: News::Inserted { lost },
            ..Self::FORWARDED
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// None at all (established clients, the reverse path, pass-through).
    None,
    /// Every frame a new client: a probation insert or, past this CPU's ration, throttled
    /// (and no more inserts than the ration allows in the windows the run spans); `lost`:
    /// every frame also counted lost (mid-session: ESP).
    Rationed { lost: bool },
    /// Every frame a probation insert (no ration).
    Inserted { lost: bool },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fast {
    /// No frame may take the slot fast path.
    Never,
    /// Any share (reported, not asserted).
    Any,
}

impl<F: Family> Bench<F> {
    /// The object loaded with `config`'s globals and sizes (the lever on or off whatever it
    /// says) and filled ([`Self::fill`]).
    pub fn new(
        ifaces: &[IfaceInfo],
        trials: usize,
        config: &Config,
        fast_path: bool,
    ) -> Result<Self> {
        let ebpf = lb::load_like_daemon(config, REV_ENTRIES, fast_path)?;
        Self::fill(ebpf, ifaces, trials, config, &[])
    }

    /// `ebpf` filled like the daemon does for `config` (every backend usable via
    /// `BACKEND_MAC`), the stamp, stamp + ikelb and `extra` loaded.
    pub fn fill(
        ebpf: Ebpf,
        ifaces: &[IfaceInfo],
        trials: usize,
        config: &Config,
        extra: &[&str],
    ) -> Result<Self> {
        let quota = config.new_client_quota(lb::quota_cpus());
        let mut lb = lb::fill_like_daemon(ebpf, config, ifaces.to_vec(), BACKEND_MAC)?;
        {
            let ebpf = lb.dataplane_mut().ebpf_mut();
            for p in [F::STAMP, F::STAMP_LB].iter().chain(extra) {
                lb::load_prog(ebpf, p)?;
            }
        }
        Ok(Self {
            lb,
            ext: ifaces[0].ifindex,
            int: ifaces[1].ifindex,
            trials,
            quota,
            acc: [0; EVENTS],
            family: PhantomData,
        })
    }

    /// `trials` rounds of stamp + ikelb after the stamp alone: one measured row, its events
    /// summed over the stamp + ikelb runs.
    pub fn row(
        &mut self,
        key: String,
        what: String,
        t: &Template,
        cfg: BenchCfg,
        ingress: u32,
        expect: Expect,
    ) -> Result<Row> {
        self.acc = [0; EVENTS];
        let (stamp, per) = self.trials(t, cfg, ingress, &[(F::STAMP_LB, expect)])?;
        let events = self.acc;
        let lb = &per[0];
        let (s, l) = (median(&stamp), median(lb));
        let spread = lb.iter().cloned().fold(f64::MIN, f64::max)
            - lb.iter().cloned().fold(f64::MAX, f64::min);
        Ok(Row {
            key,
            what,
            clients: cfg.clients,
            stamp_ns: s,
            lb_ns: l,
            cost_ns: l - s,
            spread_ns: spread,
            resident: None,
            events,
            frames: self.trials as u64 * u64::from(REPEAT),
            fast_path_on: false,
        })
    }

    /// `trials` rounds of: stamp only, then each program; ns per frame of each run.
    pub fn trials(
        &mut self,
        t: &Template,
        cfg: BenchCfg,
        ingress: u32,
        progs: &[(&str, Expect)],
    ) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        let mut stamp = Vec::new();
        let mut per = vec![Vec::new(); progs.len()];
        let stamp_only = Expect {
            counter: None,
            action: XDP_TX,
            news: News::None,
            fast: Fast::Never,
        };
        for _ in 0..self.trials {
            stamp.push(self.run(F::STAMP, t, cfg, ingress, REPEAT, Some(stamp_only))?);
            for (i, (p, e)) in progs.iter().enumerate() {
                per[i].push(self.run(p, t, cfg, ingress, REPEAT, Some(*e))?);
            }
        }
        Ok((stamp, per))
    }

    /// One test_run of `prog`: ns per frame. With `expect`, checks the last run's action and
    /// that every frame bumped the expected counter.
    pub fn run(
        &mut self,
        prog: &str,
        t: &Template,
        cfg: BenchCfg,
        ingress: u32,
        repeat: u32,
        expect: Option<Expect>,
    ) -> Result<f64> {
        sys::check_interrupted()?;
        F::set_template(self.lb.dataplane_mut().ebpf_mut(), &t.block)?;
        lb::set_cfg(self.lb.dataplane_mut().ebpf_mut(), cfg)?;
        let before = self.counters()?;
        let events_before = self.events()?;
        let md = frame::xdp_md(ingress, t.frame.len());
        let started = Instant::now();
        let r = lb::prog(self.lb.dataplane_mut().ebpf_mut(), prog)?
            .test_run(TestRunOptions {
                data_in: Some(&t.frame),
                ctx_in: Some(&md),
                repeat,
                ..TestRunOptions::new()
            })
            .with_context(|| format!("test_run {prog}"))?;
        let elapsed = started.elapsed();
        if let Some(e) = expect {
            ensure!(
                r.return_value == e.action,
                "{prog}: returned action {}, expected {}",
                r.return_value,
                e.action
            );
            if let Some(c) = e.counter {
                let after = self.counters()?;
                let d = after[c as usize] - before[c as usize];
                ensure!(
                    d == u64::from(repeat),
                    "{prog}: {d} of {repeat} frames counted as {:?} (counters before {before:?}, after {after:?})",
                    counter::LABELS[c as usize]
                );
            }
            let after = self.events()?;
            let mut d = [0u64; EVENTS];
            for (i, x) in d.iter_mut().enumerate() {
                *x = after[i] - events_before[i];
                self.acc[i] += *x;
            }
            self.check_events(prog, &d, u64::from(repeat), e, elapsed)?;
        }
        Ok(r.duration.as_nanos() as f64)
    }

    /// The event deltas of one run against what `e` says every frame did.
    fn check_events(
        &self,
        prog: &str,
        d: &[u64; EVENTS],
        repeat: u64,
        e: Expect,
        elapsed: std::time::Duration,
    ) -> Result<()> {
        let ev = |i: u32| d[i as usize];
        let fail = |what: &str| {
            let all: Vec<String> = event::LABELS
                .iter()
                .zip(d)
                .filter(|(_, n)| **n != 0)
                .map(|(l, n)| format!("{l} {n}"))
                .collect();
            anyhow::anyhow!(
                "{prog}: {what} (events of {repeat} frames: {})",
                all.join(", ")
            )
        };
        for i in [
            event::PROMOTED,
            event::MAC_MOVE_ACCEPTED,
            event::MAC_MOVE_REJECTED,
            event::REVERSE_STATELESS,
        ] {
            if ev(i) != 0 {
                return Err(fail(&format!("unexpected {}", event::LABELS[i as usize])));
            }
        }
        if e.fast == Fast::Never && ev(event::FAST_PATH) != 0 {
            return Err(fail("frames took the fast path"));
        }
        let (ins, thr, lost) = (
            ev(event::PROBATION_INSERT),
            ev(event::PROBATION_THROTTLED),
            ev(event::LOST),
        );
        let want_lost = |l: bool| if l { repeat } else { 0 };
        match e.news {
            News::None => {
                if ins + thr + lost != 0 {
                    return Err(fail("new-client events from established clients"));
                }
            }
            News::Rationed { lost: l } => {
                ensure!(self.quota != 0, "{prog}: a rationed row without a ration");
                // Windows the run touched: the one it began in (partly used before), the
                // ones it spanned, the one it ended in.
                let windows = (elapsed.as_nanos() >> QUOTA_WINDOW_SHIFT) as u64 + 2;
                if ins + thr != repeat || lost != want_lost(l) {
                    return Err(fail("not every frame a new client"));
                }
                if ins > u64::from(self.quota) * windows {
                    return Err(fail(&format!(
                        "more inserts than the ration ({} per window, ≤ {windows} windows)",
                        self.quota
                    )));
                }
            }
            News::Inserted { lost: l } => {
                if ins != repeat || thr != 0 || lost != want_lost(l) {
                    return Err(fail("not every frame a probation insert"));
                }
            }
        }
        Ok(())
    }

    /// `EVENTS`, summed over the CPUs.
    pub fn events(&mut self) -> Result<[u64; EVENTS]> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.lb
                .dataplane_mut()
                .ebpf_mut()
                .map(lb_common::maps::EVENTS)
                .context("EVENTS")?,
        )?;
        let mut out = [0u64; EVENTS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = m.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    fn counters(&self) -> Result<Vec<u64>> {
        self.lb
            .dataplane()
            .counters()
            .map_err(|e| anyhow::anyhow!("{}", lb_ctl::error_chain(&e)))
    }

    /// The established clients of `cfg` (low words from `cfg.base` under
    /// `Family::ESTABLISHED`'s prefix) in `PERSIST_*` (`lb::establish`): their router's MAC,
    /// the clients' interface.
    pub fn establish(&mut self, cfg: BenchCfg) -> Result<()> {
        let svc = self.lb.services()[0].value;
        let m = self.lb.ring_size();
        let ebpf = self.lb.dataplane_mut().ebpf_mut();
        let ring: Vec<u32> = {
            let rings: Array<&MapData, u32> = Array::try_from(ebpf.map("RINGS").context("RINGS")?)?;
            (svc.ring_base..svc.ring_base + m)
                .map(|i| rings.get(&i, 0))
                .collect::<Result<_, _>>()?
        };
        let mut persist: HashMap<&mut MapData, F::Key, PersistValue> =
            HashMap::try_from(ebpf.map_mut(F::PERSIST).context(F::PERSIST)?)?;
        let clients = Clients {
            base: cfg.base,
            ..F::ESTABLISHED
        };
        lb::establish(
            &mut persist,
            svc.id,
            &ring,
            clients,
            cfg.clients,
            ROUTER_MAC,
            EXT_PORT,
        )
    }

    /// Client `i` of the established clients of `cfg`, wire order.
    fn client(cfg: BenchCfg, i: u32) -> F::Wire {
        F::client(F::ESTABLISHED.prefix, cfg.base, i)
    }

    /// Fraction of 4096 clients spread over the key space of `cfg` that have an entry.
    pub fn resident(&mut self, cfg: BenchCfg) -> Result<f64> {
        let service = self.lb.services()[0].value.id;
        let m: HashMap<&MapData, F::Key, PersistValue> = HashMap::try_from(
            self.lb
                .dataplane_mut()
                .ebpf_mut()
                .map(F::PERSIST)
                .context(F::PERSIST)?,
        )?;
        let samples = 4096u32.min(cfg.clients);
        let step = cfg.clients / samples;
        let mut present = 0;
        for s in 0..samples {
            let key = F::key(service, Self::client(cfg, s * step));
            if m.get(&key, 0).is_ok() {
                present += 1;
            }
        }
        Ok(f64::from(present) / f64::from(samples))
    }

    /// `BENCH_REV[i]` = the address of the backend client `i` is persisted to (its low word:
    /// `Family::rev_word`).
    pub fn fill_rev(&mut self, cfg: BenchCfg) -> Result<()> {
        let addrs: StdHashMap<u32, u32> = self
            .lb
            .backends()
            .map(|b| Ok((b.id, F::rev_word(b.address)?)))
            .collect::<Result<_>>()?;
        let service = self.lb.services()[0].value.id;
        let ebpf = self.lb.dataplane_mut().ebpf_mut();
        let mut rev_vals = Vec::with_capacity(cfg.clients as usize);
        {
            let m: HashMap<&MapData, F::Key, PersistValue> =
                HashMap::try_from(ebpf.map(F::PERSIST).context(F::PERSIST)?)?;
            for i in 0..cfg.clients {
                let v = m
                    .get(&F::key(service, Self::client(cfg, i)), 0)
                    .with_context(|| format!("client {i} has no persistence entry"))?;
                rev_vals.push(*addrs.get(&v.backend).context("unknown backend id")?);
            }
        }
        let mut rev: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut("BENCH_REV").context("BENCH_REV")?)?;
        for (i, a) in rev_vals.into_iter().enumerate() {
            rev.set(i as u32, &a, 0)?;
        }
        Ok(())
    }

    /// With the lever on, a bulk frame must leave exactly as it does through the persistence
    /// path: the same frame of 256 established clients through `ikelb` with their slots
    /// unflagged (fast path) and flagged (persistence path), output and action compared byte
    /// for byte. The unflagged pass runs after one that refreshed the clients' tags, and must
    /// have taken the fast path for all 256 (retried if a tick began in between).
    pub fn lever_equivalence(&mut self, t: &Template, cfg: BenchCfg) -> Result<()> {
        let frames: Vec<Vec<u8>> = (0..256)
            .map(|i| frame::with_source::<F>(t, wire_word(cfg.base, i * (cfg.clients / 256))))
            .collect();
        let n = frames.len() as u64;
        let mut outs = Vec::new();
        for flagged in [false, true] {
            self.flag_ring(flagged)?;
            let mut attempts = 0;
            let out = loop {
                let before = self.events()?;
                let out = self.run_each(&frames)?;
                let fast =
                    self.events()?[event::FAST_PATH as usize] - before[event::FAST_PATH as usize];
                attempts += 1;
                if flagged {
                    ensure!(
                        fast == 0,
                        "lever: {fast} frames of flagged slots took the fast path"
                    );
                    break out;
                }
                if fast == n {
                    break out;
                }
                ensure!(
                    attempts < 4,
                    "lever: only {fast} of {n} refreshed clients took the fast path"
                );
            };
            outs.push(out);
        }
        self.flag_ring(false)?;
        for (i, (fast, slow)) in outs[0].iter().zip(&outs[1]).enumerate() {
            ensure!(
                fast == slow && fast.0 == XDP_REDIRECT,
                "lever: client {i} leaves differently through the fast path ({:?}) and the \
                 persistence path ({:?})",
                fast,
                slow
            );
        }
        eprintln!("  lever: 256 clients leave identically through both paths");
        Ok(())
    }

    /// Each frame once through `ikelb` (no stamp): (action, frame out).
    fn run_each(&mut self, frames: &[Vec<u8>]) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for f in frames {
            let mut data = vec![0u8; f.len()];
            let md = frame::xdp_md(self.ext, f.len());
            let r = lb::prog(self.lb.dataplane_mut().ebpf_mut(), lb_ctl::XDP_PROGRAM)?
                .test_run(TestRunOptions {
                    data_in: Some(f),
                    data_out: Some(&mut data),
                    ctx_in: Some(&md),
                    ..TestRunOptions::new()
                })
                .context("test_run ikelb")?;
            out.push((r.return_value, data));
        }
        Ok(out)
    }

    /// Sets or clears the lever's RING_F_CHANGED bit on every slot of the active table.
    pub fn flag_ring(&mut self, on: bool) -> Result<()> {
        let base = self.lb.services()[0].value.ring_base;
        let m = self.lb.ring_size();
        let mut rings: Array<&mut MapData, u32> = Array::try_from(
            self.lb
                .dataplane_mut()
                .ebpf_mut()
                .map_mut("RINGS")
                .context("RINGS")?,
        )?;
        for i in base..base + m {
            let v = rings.get(&i, 0)?;
            rings.set(
                i,
                &if on {
                    v | RING_F_CHANGED
                } else {
                    v & !RING_F_CHANGED
                },
                0,
            )?;
        }
        Ok(())
    }
}
