//! What is wrong with a config file, said so that an operator finds it: each [`Problem`] one
//! line naming `file:line`, the dotted key and the reason; serde's own errors moved into the
//! same shape.

use std::{fmt, path::PathBuf};

use super::line_of;

/// Where a configuration came from: the file name and its text, to locate problems.
#[derive(Clone, Debug)]
pub(super) struct Origin {
    pub(super) file: String,
    pub(super) source: String,
}

impl Origin {
    pub(super) fn problem(&self, key: String, reason: String) -> Problem {
        Problem {
            file: self.file.clone(),
            line: line_of(&self.source, &key),
            key,
            reason,
        }
    }
}

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based; `None` when the key is absent (a required key missing).
    pub line: Option<usize>,
    /// Dotted key, e.g. `virtual_servers[0].backends[1].address`; empty for errors serde
    /// reports (their reason names the key).
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One or more problems, one per line.
    #[error("{}", display_lines(problems))]
    Invalid { problems: Vec<Problem> },
}

fn display_lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// location moves to the front (`file:line:`) so all problems read alike.
pub(super) fn serde_problem(file: &str, e: &serde_yaml::Error) -> Problem {
    let mut reason = e.to_string();
    let line = e.location().map(|loc| {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = reason.strip_suffix(&suffix) {
            reason = stripped.to_owned();
        }
        loc.line()
    });
    Problem {
        file: file.to_owned(),
        line,
        key: String::new(),
        reason,
    }
}
