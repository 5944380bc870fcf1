//! The readable table on stdout, `target/bench/results.json`, and the performance targets
//! (docs/benchmarks.md, "Against the targets") checked against the figures (reported, never
//! asserted).

use lb_common::event;
use serde_json::{json, Map, Value};

use crate::{
    closed_loop::{self, Variant, SIZES, VARIANTS, VARIANTS_V6},
    control::{self, Health, MAGLEV_M},
    progcost::{Memory, ProgCost, Row},
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
    t.push(Target {
        what: "IPv6 ÷ IPv4 hit path at 64k (hit_64k_v6 ÷ hit_64k)".into(),
        value: row("hit_64k_v6") / row("hit_64k"),
        goal: 1.1,
        higher_is_better: false,
        unit: "×",
    });
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

/// What the row's frames did besides the verdict: the fast-path share (lever rows) and the
/// new-client events (rows of new sources), from the `EVENTS` deltas of the measured runs.
fn row_notes(r: &Row) -> String {
    let pct = |e: u32| format!("{:.1}%", r.share(e) * 100.0);
    let mut n = Vec::new();
    if let Some(f) = r.fast_path_share() {
        n.push(format!("fast path {:.1}%", f * 100.0));
    }
    if r.new_clients() {
        n.push(format!("probation insert {}", pct(event::PROBATION_INSERT)));
        n.push(format!("throttled {}", pct(event::PROBATION_THROTTLED)));
        if r.events[event::LOST as usize] > 0 {
            n.push(format!("lost {}", pct(event::LOST)));
        }
    }
    n.join(", ")
}

pub fn table(a: &All<'_>) -> String {
    let mut o = String::new();
    let m = a.machine;
    o += &format!(
        "ikelb benchmark — {}\n  machine: {} vCPU, {}, {:.0} GiB, Linux {}\n  \
         ikelb {} (BPF built with {}); load average at start {}, at end {}; {:.0} s\n\n",
        m.date,
        m.cpus,
        m.cpu,
        m.mem_gib,
        m.kernel,
        m.commit,
        m.nightly,
        m.load_start,
        m.load_end,
        m.seconds
    );

    let p = a.prog;
    o += &format!(
        "1. Program cost — BPF_PROG_TEST_RUN, stamp method, pinned to CPU {}, {} trials × {} \
         frames, medians\n",
        p.cpu, p.trials, p.repeat
    );
    o += &format!(
        "   new-client ration: new_client_rate {}/s over {} CPUs = NEW_CLIENT_QUOTA {} per CPU per \
         2^{} ns (rows *_unlimited: none)\n",
        p.ration.rate,
        p.ration.cpus,
        p.ration.quota,
        lb_common::QUOTA_WINDOW_SHIFT
    );
    o += &format!(
        "   {:<26} {:<90} {:>9} {:>8} {:>10} {:>9} {:>7} {:>8}  {}\n",
        "row", "path", "clients", "stamp", "stamp+lb", "ikelb", "spread", "resident", "events"
    );
    for r in &p.rows {
        o += &format!(
            "   {:<26} {:<90} {:>9} {:>6.0}ns {:>8.0}ns {:>7.0}ns {:>5.0}ns {:>8}  {}\n",
            r.key,
            r.what,
            r.clients,
            r.stamp_ns,
            r.lb_ns,
            r.cost_ns,
            r.spread_ns,
            r.resident
                .map_or(String::new(), |f| format!("{:.1}%", f * 100.0)),
            row_notes(r)
        );
    }
    o += "   (clients: distinct sources of the frames — 2^26 new ones for the rows of new sources; \
          resident: share of a sample of\n\
          \x20   the established clients in PERSIST_V4 (PERSIST_V6 for the *_v6 rows) after the row — \
          after the flood for the rows of new sources; events: shares of\n\
          \x20   the measured frames, from EVENTS; the fast path needs its ring slot's REFRESHED_V4 \
          stamp of this tick, written by\n\
          \x20   the slot's first packet of each tick, which refreshes its client's entry)\n";

    if !p.attribution.is_empty() {
        o += "\n1b. Where the forward hit path's time goes — variants of the forward path, each step \
               removed in turn (ns over stamp; Δ = copy − variant = that step's cost)\n";
        o += &format!("   {:<17} {:<50}", "program", "what");
        for at in &p.attribution {
            o += &format!(" {:>9} {:>7}", format!("{}", at.clients), "Δ");
        }
        o += "\n";
        o += &format!(
            "   {:<17} {:<50}",
            "bench_stamp_lb", "ikelb itself (same trials)"
        );
        for at in &p.attribution {
            o += &format!(" {:>7.0}ns {:>7}", at.real_ns, "");
        }
        o += "\n";
        let n = p.attribution[0].rows.len();
        for i in 0..n {
            let (prog, what, _) = &p.attribution[0].rows[i];
            o += &format!("   {prog:<17} {what:<50}");
            for at in &p.attribution {
                let full = at.rows[0].2;
                let v = at.rows[i].2;
                let delta = if i == 0 {
                    String::new()
                } else {
                    format!("{:+.0}", full - v)
                };
                o += &format!(" {v:>7.0}ns {delta:>7}");
            }
            o += "\n";
        }
    }

    let c = a.closed;
    o += &format!(
        "\n2. Closed loop — one core (CPU {}), 60-byte frames (64 on the wire), {} × {:.1} s per \
         point, variants alternating, medians, Mpps\n",
        c.opts_cpu, c.repeats, c.measure_secs
    );
    o += &format!("   {:<8}", "clients");
    for v in &VARIANTS {
        o += &format!(" {:>8}", v.key);
    }
    o += &format!(
        " {:>14} {:>10} {:>14} {:>10} {:>14}\n",
        "ikelb÷trivial", "ikelb÷nft", "lever÷trivial", "lever÷nft", "sink≠generated"
    );
    for (s, _) in SIZES {
        o += &format!("   {s:<8}");
        for v in &VARIANTS {
            o += &format!(" {:>8.3}", c.median(s, v.key));
        }
        let lost: u64 = VARIANTS.iter().map(|v| c.lost(s, v.key)).sum();
        let r = |a: &str, b: &str| c.median(s, a) / c.median(s, b);
        o += &format!(
            " {:>14.2} {:>9.2}× {:>14.2} {:>9.2}× {:>14}\n",
            r("ikelb", "trivial"),
            r("ikelb", "nft"),
            r("lever", "trivial"),
            r("lever", "nft"),
            if lost == 0 {
                "0".to_owned()
            } else {
                format!("{lost} lost")
            }
        );
    }
    o += "   (trivial = XDP MAC swap + redirect, the path's physical limit; ikelb = lb-ctl daemon;\n\
          \x20   nft = kernel forwarding + nft DNAT jhash ip saddr mod 10 + conntrack; kernel = plain\n\
          \x20   forwarding; lever = ikelb with the slot fast path on)\n";
    o += &format!("   lever loaded by: {}\n", c.lever_loaded_by);
    o += "   lever: share of frames through the slot fast path (median of the samples):";
    for (s, _) in SIZES {
        o += &format!(" {s} {:.1}%;", c.fast_path_share(s) * 100.0);
    }
    let news: u64 = c.samples.iter().filter_map(|s| s.new_clients).sum();
    o += &format!(
        "\n   clients established in both ikelb gateways before each size; frames counted as new \
         clients while measuring: {news}\n"
    );
    o += &closed6_table(a.closed6);

    let (mem, v4) = (&p.memory, &p.memory.v4);
    o += &format!(
        "\n3. Memory — PERSIST_V4 at its configured capacity ({} entries): memlock {} B = {:.1} B \
         per entry; 1,000,000 clients ≈ {:.1} MB.\n   PROBATION_V4 ({} entries): memlock {} B = \
         {:.1} B per entry. REFRESHED_V4 ({} slot stamps): {} B.\n   Every map of the daemon's \
         configuration (1 virtual server, M = {}): {:.1} MB.\n   Bytes per entry, IPv4 / IPv6 \
         (the IPv6 maps at the same sizes):",
        v4.persist_entries,
        v4.persist_memlock,
        bytes_per_entry(p),
        bytes_per_entry(p) * 1e6 / 1e6,
        v4.probation_entries,
        v4.probation_memlock,
        probation_bytes_per_entry(p),
        mem.refreshed_entries,
        mem.refreshed_memlock,
        MAGLEV_M,
        mem.all_maps_memlock as f64 / 1e6
    );
    for (map, v4, v6) in per_family(p) {
        o += &format!(" {map} {v4:.1} / {v6:.1};");
    }
    o += "\n";

    o += &format!("\n4. Control plane\n   Maglev table build (M = {MAGLEV_M}):");
    for (n, ms) in a.maglev {
        o += &format!(" {n} backends {ms:.1} ms;");
    }
    let h = a.health;
    o += &format!(
        "\n   Health checks, {} backends every {:.0} s (lb-ctl daemon, {:.0} s observed): \
         {:.0} ICMP echoes/s at the backends;\n   daemon {:.1}% of a core, plus {:.1}% in the \
         `ip` commands of its next-hop refresh; ICMP floor (one raw socket, 1,000 echoes) \
         {:.2}% of a core.\n",
        h.backends,
        h.interval_s,
        h.observed_s,
        h.echoes_per_s,
        h.daemon_cpu_pct,
        h.children_cpu_pct,
        h.floor_cpu_pct
    );
    if !h.note.is_empty() {
        o += &format!("   Note: {}\n", h.note);
    }
    o += &scans_table(a.scans);

    o += "\nTargets (docs/benchmarks.md; read, never asserted)\n";
    for t in targets(a) {
        o += &format!(
            "   {} {:<55} {:>8.2}{} (target {} {}{})\n",
            if t.met() { "met   " } else { "MISSED" },
            t.what,
            t.value,
            t.unit,
            if t.higher_is_better { "≥" } else { "≤" },
            t.goal,
            t.unit
        );
    }
    o
}

/// The IPv6 loop's lines (section 2b).
fn closed6_table(c: &closed_loop::Results) -> String {
    let mut o = format!(
        "\n2b. Closed loop over IPv6 — as above, 80-byte frames (84 on the wire), {} × {:.1} s per \
         point, medians, Mpps\n   {:<8}",
        c.repeats, c.measure_secs, "clients"
    );
    for v in &VARIANTS_V6 {
        o += &format!(" {:>10}", v.key);
    }
    o += &format!(
        " {:>17} {:>17} {:>14}\n",
        "ikelb_v6÷trivial", "lever_v6÷trivial", "sink≠generated"
    );
    for (s, _) in SIZES {
        o += &format!("   {s:<8}");
        for v in &VARIANTS_V6 {
            o += &format!(" {:>10.3}", c.median(s, v.key));
        }
        let lost: u64 = VARIANTS_V6.iter().map(|v| c.lost(s, v.key)).sum();
        let r = |v: &str| c.median(s, v) / c.median(s, "trivial_v6");
        o += &format!(
            " {:>17.2} {:>17.2} {:>14}\n",
            r("ikelb_v6"),
            r("lever_v6"),
            if lost == 0 {
                "0".to_owned()
            } else {
                format!("{lost} lost")
            }
        );
    }
    o += "   (trivial_v6 = bench_fwd6, XDP MAC swap + redirect of IPv6 frames; ikelb_v6 / lever_v6 = \
          lb-ctl daemon with an IPv6 VIP,\n\
          \x20   slot fast path off / on)\n   lever_v6: share of frames through the slot fast path:";
    for (s, _) in SIZES {
        o += &format!(" {s} {:.1}%;", c.fast_path_share(s) * 100.0);
    }
    let news: u64 = c.samples.iter().filter_map(|s| s.new_clients).sum();
    o += &format!("\n   frames counted as new clients while measuring: {news}\n");
    o
}

/// A duration in ms, or how long it was not done by.
fn ms_or_timeout(v: Option<f64>) -> String {
    match v {
        Some(ms) if ms.is_finite() => format!("{ms:.1} ms"),
        _ => format!("> {:.0} s (not done)", control::SCAN_TIMEOUT.as_secs_f64()),
    }
}

/// The persistence-scan lines of the control-plane section.
pub fn scans_table(s: &control::Scans) -> String {
    let w = &s.walks;
    let mut o = format!(
        "   Persistence scans at {} clients (PERSIST_V4, 2^20 entries):\n   full walk: \
         BPF_MAP_LOOKUP_BATCH {:.1} ms, GET_NEXT_KEY + lookups (before) {}\n   under churn \
         ({:.0} inserts/s): batch {:.1} ms ({} entries{}), GET_NEXT_KEY {} ({} keys read twice)\n",
        s.clients,
        w.batch_ms,
        ms_or_timeout(Some(w.next_key_ms)),
        w.churn_inserts_per_s,
        w.churn_batch_ms,
        w.churn_batch_entries,
        if w.churn_batch_truncated {
            ", truncated"
        } else {
            ""
        },
        ms_or_timeout(w.churn_next_key_ms),
        w.churn_next_key_duplicates,
    );
    for (label, d) in [
        ("this build", Some(&s.after)),
        ("before", s.before.as_ref()),
    ] {
        let Some(d) = d else { continue };
        o += &format!(
            "   daemon ({label}): scrape {} first, {} next; backend list {}; under churn \
             scrape {} first, {} next, backend list {}; ikelb_persistence_entries {}\n",
            ms_or_timeout(d.scrape_first_ms),
            ms_or_timeout(d.scrape_ms),
            ms_or_timeout(d.list_ms),
            ms_or_timeout(d.churn_scrape_first_ms),
            ms_or_timeout(d.churn_scrape_ms),
            ms_or_timeout(d.churn_list_ms),
            d.entries_scraped
                .map_or("?".to_owned(), |e| format!("{e:.0}")),
        );
    }
    o
}

/// The raw figures behind the bytes per entry: each map's `max_entries` and `memlock` per
/// family.
fn per_family_memlock(m: &Memory) -> Value {
    let (v4, v6) = (&m.v4, &m.v6);
    json!({
        "persistence": {"entries": v4.persist_entries, "v4": v4.persist_memlock,
                        "v6_entries": v6.persist_entries, "v6": v6.persist_memlock},
        "probation": {"entries": v4.probation_entries, "v4": v4.probation_memlock,
                      "v6_entries": v6.probation_entries, "v6": v6.probation_memlock},
        "proofs": {"entries": v4.probation_entries, "v4": v4.proofs_memlock,
                   "v6_entries": v6.probation_entries, "v6": v6.proofs_memlock},
    })
}

/// `closed_loop` / `closed_loop_v6` of the JSON: per size, each variant's median, the ratios
/// `a_over_b` of `ratios`, the frames lost and the lever's fast-path share.
fn closed_json(c: &closed_loop::Results, variants: &[Variant], ratios: &[(&str, &str)]) -> Value {
    let mut closed = Map::new();
    for (s, clients) in SIZES {
        let mut e = Map::new();
        e.insert("clients".into(), json!(clients));
        for v in variants {
            e.insert(format!("{}_mpps", v.key), json!(round3(c.median(s, v.key))));
        }
        for (a, b) in ratios {
            let r = c.median(s, a) / c.median(s, b);
            e.insert(format!("{a}_over_{b}"), json!(round3(r)));
        }
        let lost: u64 = variants.iter().map(|v| c.lost(s, v.key)).sum();
        e.insert("frames_lost".into(), json!(lost));
        for v in variants.iter().filter(|v| v.lever()) {
            let share = json!(round4(c.fast_path_share(s)));
            e.insert(format!("{}_fast_path_share", v.key), share);
        }
        closed.insert(s.into(), Value::Object(e));
    }
    Value::Object(closed)
}

fn samples_json(c: &closed_loop::Results) -> Vec<Value> {
    c.samples
        .iter()
        .map(|s| {
            json!({"clients": s.size, "variant": s.variant, "repeat": s.repeat,
                   "generated": s.generated, "received": s.received, "seconds": s.secs,
                   "mpps": s.mpps, "fast_path_share": s.fast_path_share,
                   "new_clients": s.new_clients})
        })
        .collect()
}

pub fn json(a: &All<'_>) -> Value {
    let mut program_ns = Map::new();
    let mut fast_path_share = Map::new();
    let mut rows = Vec::new();
    for r in &a.prog.rows {
        program_ns.insert(r.key.clone(), json!(round1(r.cost_ns)));
        if let Some(f) = r.fast_path_share() {
            fast_path_share.insert(r.key.clone(), json!(round4(f)));
        }
        let events: Map<String, Value> = event::LABELS
            .iter()
            .zip(r.events)
            .map(|(l, n)| ((*l).to_owned(), json!(n)))
            .collect();
        rows.push(json!({
            "key": r.key, "path": r.what, "clients": r.clients,
            "stamp_ns": r.stamp_ns, "stamp_plus_ikelb_ns": r.lb_ns, "ikelb_ns": r.cost_ns,
            "spread_ns": r.spread_ns, "resident_fraction": r.resident,
            "frames_measured": r.frames, "events": events,
            "fast_path_share": r.fast_path_share().map(round4),
            "probation_insert_share": round4(r.share(event::PROBATION_INSERT)),
            "probation_throttled_share": round4(r.share(event::PROBATION_THROTTLED)),
        }));
    }
    let mut attribution = Map::new();
    for at in &a.prog.attribution {
        let mut e = Map::new();
        e.insert("bench_stamp_lb".into(), json!(round1(at.real_ns)));
        let rows: Vec<Value> = at
            .rows
            .iter()
            .map(|(p, w, ns)| json!({"program": p, "what": w, "ns_over_stamp": round1(*ns)}))
            .collect();
        e.insert("variants".into(), Value::Array(rows));
        attribution.insert(at.clients.to_string(), Value::Object(e));
    }
    let c = a.closed;
    let closed = closed_json(
        c,
        &VARIANTS,
        &[
            ("ikelb", "trivial"),
            ("ikelb", "nft"),
            ("lever", "trivial"),
            ("lever", "nft"),
            ("ikelb", "kernel"),
        ],
    );
    let samples = samples_json(c);
    let mut maglev = Map::new();
    for (n, ms) in a.maglev {
        maglev.insert(n.to_string(), json!(round3(*ms)));
    }
    let h = a.health;
    let m = a.machine;
    // Per map, {"v4": bytes per entry, "v6": …}: the kernel's memlock ÷ max_entries.
    let family: Map<String, Value> = per_family(a.prog)
        .iter()
        .map(|(map, v4, v6)| {
            let v = json!({"v4": round1(*v4), "v6": round1(*v6)});
            ((*map).to_owned(), v)
        })
        .collect();
    let targets: Vec<Value> = targets(a)
        .iter()
        .map(|t| json!({"what": t.what, "value": t.value, "goal": t.goal, "met": t.met()}))
        .collect();
    json!({
        "machine": {
            "date": m.date, "kernel": m.kernel, "cpu": m.cpu, "cpus": m.cpus,
            "mem_gib": m.mem_gib, "load_average_start": m.load_start,
            "load_average_end": m.load_end, "commit": m.commit, "bpf_toolchain": m.nightly,
            "seconds": m.seconds,
        },
        "program_ns": program_ns,
        "program_rows": rows,
        "attribution": attribution,
        "program_method": {"trials": a.prog.trials, "repeat": a.prog.repeat, "cpu": a.prog.cpu,
                           "new_client_rate_per_s": a.prog.ration.rate,
                           "new_client_quota": a.prog.ration.quota,
                           "new_client_quota_cpus": a.prog.ration.cpus,
                           "quota_window_ns": 1u64 << lb_common::QUOTA_WINDOW_SHIFT},
        "fast_path_share": fast_path_share,
        "closed_loop": closed,
        "closed_loop_samples": samples,
        "closed_loop_v6": closed_json(
            a.closed6,
            &VARIANTS_V6,
            &[("ikelb_v6", "trivial_v6"), ("lever_v6", "trivial_v6")],
        ),
        "closed_loop_samples_v6": samples_json(a.closed6),
        "closed_loop_method_v6": {"seconds_per_point": a.closed6.measure_secs,
                                  "repeats": a.closed6.repeats,
                                  "frame_bytes": crate::frame::FRAME_LEN6},
        "closed_loop_method": {"cpu": c.opts_cpu, "seconds_per_point": c.measure_secs,
                               "repeats": c.repeats, "frame_bytes": crate::frame::FRAME_LEN,
                               "lever_loaded_by": c.lever_loaded_by},
        "persistence_bytes_per_entry": family["persistence"].clone(),
        "persistence_entries_configured": a.prog.memory.v4.persist_entries,
        "persistence_memlock_bytes": a.prog.memory.v4.persist_memlock,
        "persistence_bytes_1M_clients": (bytes_per_entry(a.prog) * 1e6).round(),
        "probation_bytes_per_entry": family["probation"].clone(),
        "proofs_bytes_per_entry": family["proofs"].clone(),
        "per_family_memlock_bytes": per_family_memlock(&a.prog.memory),
        "probation_entries_configured": a.prog.memory.v4.probation_entries,
        "probation_memlock_bytes": a.prog.memory.v4.probation_memlock,
        "refreshed_entries_configured": a.prog.memory.refreshed_entries,
        "refreshed_memlock_bytes": a.prog.memory.refreshed_memlock,
        "all_maps_memlock_bytes": a.prog.memory.all_maps_memlock,
        "maglev_build_ms": maglev,
        "maglev_table_size": MAGLEV_M,
        "health_checks": {
            "backends": h.backends, "interval_s": h.interval_s, "observed_s": h.observed_s,
            "echoes_per_s": h.echoes_per_s, "daemon_cpu_percent": h.daemon_cpu_pct,
            "next_hop_commands_cpu_percent": h.children_cpu_pct,
            "icmp_floor_cpu_percent": h.floor_cpu_pct, "note": h.note,
        },
        "persistence_scans": scans_json(a.scans),
        "targets": targets,
    })
}

fn scans_json(s: &control::Scans) -> Value {
    let daemon = |d: &control::DaemonScans| {
        json!({
            "binary": d.binary, "scrape_first_ms": d.scrape_first_ms, "scrape_ms": d.scrape_ms,
            "backend_list_ms": d.list_ms, "churn_scrape_first_ms": d.churn_scrape_first_ms,
            "churn_scrape_ms": d.churn_scrape_ms,
            "churn_backend_list_ms": d.churn_list_ms, "entries_scraped": d.entries_scraped,
        })
    };
    let w = &s.walks;
    json!({
        "clients": s.clients,
        "timeout_s": control::SCAN_TIMEOUT.as_secs_f64(),
        "full_walk_batch_ms": w.batch_ms,
        "full_walk_next_key_ms": w.next_key_ms.is_finite().then_some(w.next_key_ms),
        "churn_inserts_per_s": w.churn_inserts_per_s,
        "churn_walk_batch_ms": w.churn_batch_ms,
        "churn_walk_batch_entries": w.churn_batch_entries,
        "churn_walk_batch_truncated": w.churn_batch_truncated,
        "churn_walk_next_key_ms": w.churn_next_key_ms,
        "churn_walk_next_key_duplicates": w.churn_next_key_duplicates,
        "daemon": daemon(&s.after),
        "daemon_before": s.before.as_ref().map(daemon),
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round4(x: f64) -> f64 {
    (x * 10000.0).round() / 10000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
