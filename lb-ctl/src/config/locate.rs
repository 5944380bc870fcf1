//! Finds the line of a key such as `virtual_servers[0].backends[1].address` in the YAML
//! source, so semantic checks (which run on deserialized values, where serde's locations are
//! gone) still report `file:line`.
//!
//! This walks block-style YAML the way the config is written (mappings, `- ` sequences,
//! inline scalars and flow collections as leaves). It is a locator, not a parser: when a
//! segment cannot be found it answers with the line of the deepest ancestor it did find, and
//! `None` only when not even the first key is there.

/// One meaningful line: comments, blank lines and document markers are skipped.
struct Line<'a> {
    /// 1-based line number.
    no: usize,
    /// Column of a leading `- `, if the line starts a sequence item.
    dash: Option<usize>,
    /// Column where the content (after indentation and any dash) starts.
    col: usize,
    text: &'a str,
}

impl Line<'_> {
    /// Column that decides nesting: the dash's for an item line, the content's otherwise.
    fn indent(&self) -> usize {
        self.dash.unwrap_or(self.col)
    }
}

fn lines(source: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    for (i, raw) in source.lines().enumerate() {
        let indent = raw.len() - raw.trim_start().len();
        let rest = &raw[indent..];
        if rest.is_empty() || rest.starts_with('#') || rest == "---" || rest == "..." {
            continue;
        }
        let (dash, col, text) = match rest.strip_prefix('-') {
            Some(after) if after.is_empty() || after.starts_with([' ', '\t']) => {
                let t = after.trim_start();
                (Some(indent), indent + 1 + (after.len() - t.len()), t)
            }
            _ => (None, indent, rest),
        };
        out.push(Line {
            no: i + 1,
            dash,
            col,
            text,
        });
    }
    out
}

enum Seg<'k> {
    Key(&'k str),
    Index(usize),
}

fn segments(key: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { break };
            if let Ok(n) = r[..end].parse() {
                out.push(Seg::Index(n));
            }
            rest = &r[end + 1..];
        }
    }
    out
}

/// If `text` is the mapping entry `key: …`, returns what follows the colon.
fn entry_value<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let after = [("", ""), ("\"", "\""), ("'", "'")]
        .iter()
        .find_map(|(open, close)| {
            text.strip_prefix(open)?
                .strip_prefix(key)?
                .strip_prefix(close)?
                .strip_prefix(':')
        })?;
    (after.is_empty() || after.starts_with([' ', '\t'])).then_some(after)
}

/// 1-based line of `key` (dotted path with `[index]` for sequence items) in `source`.
pub fn line_of(source: &str, key: &str) -> Option<usize> {
    let lines = lines(source);
    let (mut start, mut end) = (0, lines.len());
    let mut found = None;
    for seg in segments(key) {
        if start >= end {
            break; // the value of the last match is inline (scalar or flow): its line it is
        }
        match seg {
            Seg::Key(k) => {
                let col = lines[start].col;
                let hit = (start..end).find(|&i| {
                    let l = &lines[i];
                    l.col == col
                        && (i == start || l.dash.is_none())
                        && entry_value(l.text, k).is_some()
                });
                let Some(i) = hit else { break };
                found = Some(lines[i].no);
                let inline = entry_value(lines[i].text, k)
                    .map(|v| v.split(" #").next().unwrap_or("").trim())
                    .is_some_and(|v| !v.is_empty());
                start = i + 1;
                end = if inline {
                    start
                } else {
                    (start..end)
                        .find(|&j| {
                            let l = &lines[j];
                            l.indent() < col || (l.dash.is_none() && l.col == col)
                        })
                        .unwrap_or(end)
                };
            }
            Seg::Index(n) => {
                let Some(d) = lines[start].dash else { break };
                let Some(i) = (start..end).filter(|&i| lines[i].dash == Some(d)).nth(n) else {
                    break;
                };
                found = Some(lines[i].no);
                start = i;
                end = (i + 1..end)
                    .find(|&j| lines[j].indent() <= d)
                    .unwrap_or(end);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const SRC: &str = "\
# comment
interfaces: [eth0, eth1]
hash_seed: 0x5eed
virtual_servers:
  - name: a          # first
    vip: 203.0.113.10
    ports: [500, 4500]
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
        weight: 2
  - name: b
    vip: 203.0.113.11
    backends:
    - address: 10.0.1.1

    - 'address': 10.0.1.2
health_check:
  interval: 5s
";

    #[test]
    fn finds_nested_keys_and_items() {
        assert_eq!(line_of(SRC, "interfaces"), Some(2));
        assert_eq!(line_of(SRC, "interfaces[1]"), Some(2));
        assert_eq!(line_of(SRC, "virtual_servers[0].name"), Some(5));
        assert_eq!(line_of(SRC, "virtual_servers[0].ports[1]"), Some(7));
        assert_eq!(
            line_of(SRC, "virtual_servers[0].backends[1].address"),
            Some(10)
        );
        assert_eq!(
            line_of(SRC, "virtual_servers[0].backends[1].weight"),
            Some(11)
        );
        assert_eq!(line_of(SRC, "virtual_servers[1].vip"), Some(13));
        assert_eq!(
            line_of(SRC, "virtual_servers[1].backends[1].address"),
            Some(17)
        );
        assert_eq!(line_of(SRC, "health_check.interval"), Some(19));
    }

    #[test]
    fn falls_back_to_the_deepest_ancestor() {
        assert_eq!(
            line_of(SRC, "virtual_servers[0].backends[0].weight"),
            Some(9)
        );
        assert_eq!(line_of(SRC, "health_check.timeout"), Some(18));
        assert_eq!(line_of(SRC, "metrics.listen"), None);
    }
}
