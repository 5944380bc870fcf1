//! Just enough of the Prometheus text exposition format to read the daemon's counters.

use std::collections::BTreeMap;

/// One sample: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample of metric `name` in `text` (comments and other metrics skipped; label values
/// with escaped quotes are not needed by ikelb's metrics and not supported).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None, // a longer name with this one as prefix
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
                })
                .collect();
            Some(Sample { labels, value })
        })
        .collect()
}

/// Sum of the samples of `name` whose labels include every `(key, value)` of `matching`.
pub fn sum(text: &str, name: &str, matching: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .iter()
        .filter(|s| matching.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP ikelb_xdp_packets_total x\n\
        # TYPE ikelb_xdp_packets_total counter\n\
        ikelb_xdp_packets_total{action=\"redirect\",reason=\"forward\"} 750\n\
        ikelb_xdp_packets_total{action=\"pass\",reason=\"not_ip\"} 3\n\
        ikelb_xdp_packets_total_other 9\n\
        ikelb_persistence_entries 250\n";

    #[test]
    fn reads_labelled_and_plain_samples() {
        assert_eq!(
            sum(TEXT, "ikelb_xdp_packets_total", &[("reason", "forward")]),
            750.0
        );
        assert_eq!(sum(TEXT, "ikelb_xdp_packets_total", &[]), 753.0);
        assert_eq!(sum(TEXT, "ikelb_persistence_entries", &[]), 250.0);
        assert_eq!(
            samples(TEXT, "ikelb_xdp_packets_total")[1].label("action"),
            "pass"
        );
    }
}
