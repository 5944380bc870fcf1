//! The Grafana dashboard `deploy/grafana/ikelb.json` as the tests read it: its panels, every
//! PromQL expression of their targets, its template variables, and the substitution of
//! Grafana's variables that turns an expression into a query Prometheus answers.
//!
//! `tests/prometheus_scrape.rs` runs every expression against a real Prometheus scraping the
//! daemon; the unit tests here check the file's shape without root (it parses, panel ids are
//! unique, every panel has the templated datasource, a description and a target, the
//! dashboard shows exactly the `ikelb_*` metrics docs/metrics.md documents, and its panel
//! descriptions name exactly the alerts of `deploy/prometheus/ikelb-alerts.yml`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// The datasource every panel and target names: the `DS_PROMETHEUS` template variable, so the
/// dashboard imports into any Grafana whatever its Prometheus datasource is called.
pub const DATASOURCE_UID: &str = "${DS_PROMETHEUS}";

/// `deploy/grafana/ikelb.json` in this checkout.
pub fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/ikelb.json")
}

/// One target of one panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `id` of the panel.
    pub panel_id: u64,
    /// Its title, for messages.
    pub panel: String,
    pub ref_id: String,
    /// The PromQL expression, Grafana variables unsubstituted.
    pub expr: String,
}

/// A template variable filled by `label_values(SELECTOR, LABEL)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelValues {
    pub name: String,
    /// The series selector, Grafana variables unsubstituted.
    pub selector: String,
    pub label: String,
}

/// The parsed dashboard.
#[derive(Clone, Debug)]
pub struct Dashboard {
    json: Value,
}

impl Dashboard {
    /// Reads and parses the dashboard at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the dashboard {}", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("parse the dashboard {} as JSON", path.display()))?;
        ensure!(
            json["panels"].is_array(),
            "dashboard {}: no panels array",
            path.display()
        );
        Ok(Self { json })
    }

    /// Every panel, those nested in collapsed rows included, rows themselves included.
    pub fn panels(&self) -> Vec<&Value> {
        let mut out = Vec::new();
        for p in self.json["panels"].as_array().into_iter().flatten() {
            out.push(p);
            out.extend(p["panels"].as_array().into_iter().flatten());
        }
        out
    }

    /// Every target of every panel that shows data (rows only group panels and have none).
    pub fn targets(&self) -> Vec<Target> {
        self.panels()
            .into_iter()
            .filter(|p| p["type"] != "row")
            .flat_map(|p| {
                p["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |t| Target {
                        panel_id: p["id"].as_u64().unwrap_or_default(),
                        panel: p["title"].as_str().unwrap_or_default().to_string(),
                        ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                        expr: t["expr"].as_str().unwrap_or_default().to_string(),
                    })
            })
            .collect()
    }

    /// The `query` variables filled by `label_values(…)`.
    pub fn label_values(&self) -> Result<Vec<LabelValues>> {
        let mut out = Vec::new();
        for v in self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if v["type"] != "query" {
                continue;
            }
            let name = v["name"].as_str().unwrap_or_default();
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .with_context(|| format!("variable {name}: no query"))?;
            let inner = q
                .trim()
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .with_context(|| format!("variable {name}: {q:?} is not label_values(…, …)"))?;
            let (selector, label) = inner
                .rsplit_once(',')
                .with_context(|| format!("variable {name}: {q:?} names no label"))?;
            out.push(LabelValues {
                name: name.to_string(),
                selector: selector.trim().to_string(),
                label: label.trim().to_string(),
            });
        }
        Ok(out)
    }

    /// What is wrong with the dashboard's shape, one line per problem (empty: nothing): a
    /// panel id used twice; a panel without the templated datasource or without a target; a
    /// target without an expression or the datasource; no `DS_PROMETHEUS` datasource variable.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut ids = BTreeSet::new();
        for p in self.panels() {
            let title = p["title"].as_str().unwrap_or("(untitled)");
            match p["id"].as_u64() {
                None => out.push(format!("panel {title:?}: no numeric id")),
                Some(id) if !ids.insert(id) => {
                    out.push(format!("panel {title:?}: id {id} used by another panel"))
                }
                Some(_) => {}
            }
            if p["type"] == "row" {
                continue;
            }
            if p["datasource"]["uid"] != DATASOURCE_UID {
                out.push(format!(
                    "panel {title:?}: datasource {} (want uid {DATASOURCE_UID})",
                    p["datasource"]
                ));
            }
            if p["description"].as_str().is_none_or(str::is_empty) {
                out.push(format!("panel {title:?}: no description"));
            }
            let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
            if targets.is_empty() {
                out.push(format!("panel {title:?}: no target"));
            }
            for t in targets {
                let ref_id = t["refId"].as_str().unwrap_or("?");
                if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                    out.push(format!("panel {title:?} target {ref_id}: no expr"));
                }
                if t["datasource"]["uid"] != DATASOURCE_UID {
                    out.push(format!(
                        "panel {title:?} target {ref_id}: datasource {} (want uid {DATASOURCE_UID})",
                        t["datasource"]
                    ));
                }
            }
        }
        let vars = self.json["templating"]["list"].as_array();
        let has_ds = vars.into_iter().flatten().any(|v| {
            v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus"
        });
        if !has_ds {
            out.push("no datasource variable DS_PROMETHEUS of type prometheus".into());
        }
        out
    }
}

/// `expr` with Grafana's variables replaced: each `(name, value)` of `vars` as `$name` and
/// `${name}`, longest names first (so `$__interval` does not eat `$__interval_ms`). Fails
/// naming the expression if a `$` is left: a variable the caller did not give a value.
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> Result<String> {
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_string();
    for (name, value) in &vars {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    if let Some(i) = out.find('$') {
        bail!(
            "dashboard expression {expr:?}: no value for the variable at {:?}",
            &out[i..]
        );
    }
    Ok(out)
}

/// Every `ikelb_*` metric name in `expr`, histogram suffixes (`_bucket`, `_sum`, `_count`)
/// of a `_seconds` histogram taken off.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ikelb_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if base.ends_with("_seconds") {
                    name = base;
                }
            }
        }
        out.insert(name.to_string());
        rest = &tail[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Dashboard {
        Dashboard::load(&path()).expect("deploy/grafana/ikelb.json")
    }

    #[test]
    fn the_shipped_dashboard_is_well_formed() {
        let d = shipped();
        let problems = d.problems();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let targets = d.targets();
        // Every section of docs/metrics.md has a panel: a dashboard cut down by mistake fails.
        assert!(targets.len() >= 30, "only {} targets", targets.len());
        let vars = d.label_values().unwrap();
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["node", "vs"]);
    }

    fn project_file(rel: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The metrics of docs/metrics.md's table (its rows begin with the name in backticks).
    fn documented_metrics() -> BTreeSet<String> {
        project_file("docs/metrics.md")
            .lines()
            .filter_map(|l| l.strip_prefix("| `ikelb_"))
            .filter_map(|l| l.split_once('`'))
            .map(|(rest, _)| format!("ikelb_{rest}"))
            .collect()
    }

    #[test]
    fn the_dashboard_shows_every_documented_metric_and_no_other() {
        let documented = documented_metrics();
        assert!(documented.len() >= 25, "docs/metrics.md: {documented:?}");
        let d = shipped();
        let mut used = BTreeSet::new();
        for t in d.targets() {
            used.extend(metric_names(&t.expr));
        }
        for v in d.label_values().unwrap() {
            used.extend(metric_names(&v.selector));
        }
        let undocumented: Vec<&String> = used.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "metrics the dashboard queries that docs/metrics.md's table does not list: {undocumented:?}"
        );
        let unshown: Vec<&String> = documented.difference(&used).collect();
        assert!(
            unshown.is_empty(),
            "metrics of docs/metrics.md that no panel of deploy/grafana/ikelb.json shows: \
             {unshown:?} (add a panel, with a description saying what to do when it looks wrong)"
        );
    }

    /// The descriptions name alerts that exist, and every alert has a panel that names it:
    /// the operator paged by one finds where to look.
    #[test]
    fn panel_descriptions_and_alert_rules_name_the_same_alerts() {
        let rules = project_file("deploy/prometheus/ikelb-alerts.yml");
        let alerts: BTreeSet<&str> = rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
            .map(str::trim)
            .collect();
        assert!(alerts.len() >= 9, "ikelb-alerts.yml: {alerts:?}");
        let d = shipped();
        let mut named = BTreeSet::new();
        for p in d.panels() {
            let text = p["description"].as_str().unwrap_or_default();
            for (i, _) in text.match_indices("Ikelb") {
                let word: String = text[i..]
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                named.insert(word);
            }
        }
        let unknown: Vec<&String> = named
            .iter()
            .filter(|n| !alerts.contains(n.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "panel descriptions name alerts deploy/prometheus/ikelb-alerts.yml does not have: {unknown:?}"
        );
        let unnamed: Vec<&&str> = alerts.iter().filter(|a| !named.contains(**a)).collect();
        assert!(
            unnamed.is_empty(),
            "alerts no panel description names (the panel to look at when it fires): {unnamed:?}"
        );
    }

    #[test]
    fn a_duplicate_id_or_a_panel_without_target_is_reported() {
        let json = serde_json::json!({
            "templating": {"list": [{"name": "DS_PROMETHEUS", "type": "datasource", "query": "prometheus"}]},
            "panels": [
                {"id": 1, "type": "row", "title": "r", "panels": []},
                {"id": 2, "type": "timeseries", "title": "a", "description": "d",
                 "datasource": {"uid": DATASOURCE_UID},
                 "targets": [{"refId": "A", "expr": "up", "datasource": {"uid": DATASOURCE_UID}}]},
                {"id": 2, "type": "stat", "title": "b", "description": "d",
                 "datasource": {"uid": "prom"}, "targets": []},
            ]
        });
        let problems = Dashboard { json }.problems();
        assert_eq!(
            problems,
            [
                "panel \"b\": id 2 used by another panel",
                "panel \"b\": datasource {\"uid\":\"prom\"} (want uid ${DS_PROMETHEUS})",
                "panel \"b\": no target",
            ]
        );
    }

    #[test]
    fn substitution_replaces_every_form_and_refuses_unknown_variables() {
        let vars = [
            ("node", "127.0.0.1:9435"),
            ("__interval", "15s"),
            ("__interval_ms", "15000"),
        ];
        assert_eq!(
            substitute(
                "x{instance=~\"$node\"}[$__interval] ${node} $__interval_ms",
                &vars
            )
            .unwrap(),
            "x{instance=~\"127.0.0.1:9435\"}[15s] 127.0.0.1:9435 15000"
        );
        let e = substitute("rate(x[$__rate_interval])", &vars).unwrap_err();
        assert!(e.to_string().contains("$__rate_interval"), "{e}");
    }

    #[test]
    fn metric_names_strip_histogram_suffixes_only() {
        let names = metric_names(
            "histogram_quantile(0.9, rate(ikelb_health_check_duration_seconds_bucket[1m])) / \
             ikelb_persistence_entries + ikelb_health_checks_total",
        );
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "ikelb_health_check_duration_seconds",
                "ikelb_health_checks_total",
                "ikelb_persistence_entries"
            ]
        );
    }
}
