//! The readable table on stdout.

use lb_common::event;

use super::{bytes_per_entry, per_family, probation_bytes_per_entry, targets, All};
use crate::{
    closed_loop::{self, SIZES, VARIANTS, VARIANTS_V6},
    control::{self, MAGLEV_M},
    progcost::Row,
};

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

    if !p.pairs.is_empty() {
        o += "\n1c. IPv6 ÷ IPv4 hit path at 64k established clients, in pairs — both objects \
               loaded, the families' trials back to back (ns over stamp, medians)\n";
        for pr in &p.pairs {
            let (v4, v6) = pr.median_ns();
            o += &format!(
                "   fast path {:<3}  IPv4 {v4:>5.0} ns  IPv6 {v6:>5.0} ns  ratio {:.2}× (median of {} \
                 per-trial ratios)\n",
                if pr.fast_path { "on" } else { "off" },
                pr.ratio(),
                pr.costs.len()
            );
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
    o += &default_path_check(c);
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

/// The closed loop's check at 64k clients, from this run: the daemon's default path (the lever:
/// `slot_fast_path` and `sa_steering` on, IKE stages included) must forward at least 95 % of
/// the trivial forwarder's rate.
fn default_path_check(c: &closed_loop::Results) -> String {
    let ratio = c.median("64k", "lever") / c.median("64k", "trivial");
    let verdict = if ratio.is_nan() {
        "not measured"
    } else if ratio >= DEFAULT_PATH_MIN {
        "ok"
    } else {
        "BELOW the bound"
    };
    format!(
        "   check: default path (lever) ÷ trivial at 64k clients = {ratio:.3} (bound ≥ \
         {DEFAULT_PATH_MIN}): {verdict}\n"
    )
}

/// Lowest default path ÷ trivial ratio at 64k clients the closed loop accepts.
pub const DEFAULT_PATH_MIN: f64 = 0.95;
