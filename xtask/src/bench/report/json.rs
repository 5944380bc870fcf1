//! `results.json`: every figure, every closed-loop sample, the machine and the commit (the
//! keys docs/benchmarks.md, docs/bench-results.json and the chart read).

use lb_common::event;
use serde_json::{json, Map, Value};

use super::{bytes_per_entry, per_family, targets, All};
use crate::{
    closed_loop::{self, Variant, SIZES, VARIANTS, VARIANTS_V6},
    control::{self, MAGLEV_M},
    progcost::Memory,
};

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
        "hit_pairs_v6_v4": a.prog.pairs.iter().map(|p| {
            let (v4, v6) = p.median_ns();
            json!({"fast_path": p.fast_path, "clients": 65_536, "ratio_median": p.ratio(),
                   "v4_ns_median": v4, "v6_ns_median": v6,
                   "trials": p.costs.iter().map(|(a, b)| [*a, *b]).collect::<Vec<_>>()})
        }).collect::<Vec<_>>(),
        "closed_loop": closed,
        "default_path_check": {
            "what": "lever (the daemon's defaults) ÷ trivial at 64k clients, this run",
            "ratio": c.median("64k", "lever") / c.median("64k", "trivial"),
            "bound": super::table::DEFAULT_PATH_MIN,
        },
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
