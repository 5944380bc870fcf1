//! The runtime changes file, `state_dir/backends.json`: its format, its versions, and how it
//! is read and written (docs/restart-and-upgrade.md, "Runtime state file").
//!
//! * **Format**: `{"version": 1, "virtual_servers": {NAME: {"added": [...], "removed": [...],
//!   "draining": [...]}}}`. A file without `version` (written before the field existed) is
//!   read as version 1, the current format; any other version is refused with a one-line
//!   error naming the file, before its content is interpreted (a newer lb-ctl may have
//!   changed it). Unknown fields are refused too: nothing is silently ignored.
//! * **Corrupt or unreadable**: the daemon does not start; the one-line error names the file,
//!   the line and the reason, and the recovery (`mv FILE FILE.bad` starts from the config
//!   alone). The file is never discarded or rewritten on its own.
//! * **Writing**: a temporary file is written and fsynced, renamed over the old one, and the
//!   directory is fsynced. A failure before the rename changes nothing
//!   ([`StoreError::Write`]); a failure of the directory fsync after it leaves the new file in
//!   place, possibly not durable ([`StoreError::NotDurable`]): the change is made (the file
//!   a restart reads has it) and the request is answered with that error.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

/// File under `state_dir` holding the runtime changes.
pub const STATE_FILE: &str = "backends.json";

/// The content of `backends.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeChanges {
    /// Format version; a file without it is read as the current one.
    #[serde(default = "RuntimeChanges::current")]
    pub version: u32,
    #[serde(default)]
    pub virtual_servers: BTreeMap<String, VsChanges>,
}

impl Default for RuntimeChanges {
    fn default() -> Self {
        Self {
            version: Self::VERSION,
            virtual_servers: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsChanges {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<AddedBackend>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<Draining>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedBackend {
    pub address: IpAddr,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draining {
    pub address: IpAddr,
    /// RFC 3339 (UTC).
    pub until: String,
}

impl VsChanges {
    pub(super) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.draining.is_empty()
    }
}

impl RuntimeChanges {
    /// The format this lb-ctl reads and writes.
    pub const VERSION: u32 = 1;

    fn current() -> u32 {
        Self::VERSION
    }

    pub(super) fn vs(&mut self, name: &str) -> &mut VsChanges {
        self.virtual_servers.entry(name.to_owned()).or_default()
    }

    pub(super) fn tidy(&mut self) {
        self.version = Self::VERSION;
        self.virtual_servers.retain(|_, v| !v.is_empty());
    }

    /// `address` is (again) a backend of `vs` with `weight`; `in_config` says whether the
    /// config lists it (with `config_weight`).
    pub(super) fn record_add(
        &mut self,
        vs: &str,
        address: IpAddr,
        weight: u32,
        config_weight: Option<u32>,
    ) {
        let v = self.vs(vs);
        v.removed.retain(|a| *a != address);
        v.draining.retain(|d| d.address != address);
        v.added.retain(|a| a.address != address);
        if config_weight != Some(weight) {
            v.added.push(AddedBackend { address, weight });
        }
        self.tidy();
    }

    /// `address` is no backend of `vs` any more.
    pub(super) fn record_remove(&mut self, vs: &str, address: IpAddr, in_config: bool) {
        let v = self.vs(vs);
        v.added.retain(|a| a.address != address);
        v.draining.retain(|d| d.address != address);
        if in_config && !v.removed.contains(&address) {
            v.removed.push(address);
        }
        self.tidy();
    }

    pub(super) fn record_drain(&mut self, vs: &str, address: IpAddr, until: SystemTime) {
        let v = self.vs(vs);
        v.draining.retain(|d| d.address != address);
        v.draining.push(Draining {
            address,
            until: humantime::format_rfc3339_seconds(until).to_string(),
        });
        self.tidy();
    }
}

/// Why the runtime state could not be read or written. Every message is one line that names
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading the runtime state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the runtime state {} is corrupt (line {line}, column {column}: {reason}): fix it, or move it aside to start from the config alone: mv {} {}.bad",
        path.display(), path.display(), path.display()
    )]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "the runtime state {} has version {found}, and this lb-ctl reads version {}: run the lb-ctl that wrote it, or move it aside to start from the config alone: mv {} {}.bad",
        path.display(), RuntimeChanges::VERSION, path.display(), path.display()
    )]
    Version { path: PathBuf, found: String },
    #[error("writing the runtime state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the runtime state {path} was replaced, but syncing its directory failed ({source}): the change is in effect and may not survive a power loss")]
    NotDurable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `backends.json` on disk.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
    /// fsync of the directory after the rename (replaced in tests to make it fail).
    sync_dir: fn(&Path) -> std::io::Result<()>,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(STATE_FILE),
            sync_dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the directory fsync after the rename fail (or succeed) with `f` (tests).
    #[cfg(test)]
    pub(super) fn set_sync_dir(&mut self, f: fn(&Path) -> std::io::Result<()>) {
        self.sync_dir = f;
    }

    /// The saved changes; none when the file does not exist. See the module doc for the
    /// versions and errors.
    pub fn load(&self) -> Result<RuntimeChanges, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RuntimeChanges::default())
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let parse = |e: serde_json::Error| {
            // serde_json's message ends with " at line L column C": said once, up front.
            let full = e.to_string();
            let reason = match full.rfind(" at line ") {
                Some(i) => full[..i].to_owned(),
                None => full,
            };
            StoreError::Parse {
                path: self.path.clone(),
                line: e.line(),
                column: e.column(),
                reason,
            }
        };
        // The version first: a newer format is refused as such, not as a syntax error.
        let value: serde_json::Value = serde_json::from_str(&text).map_err(parse)?;
        let Some(object) = value.as_object() else {
            return Err(StoreError::Parse {
                path: self.path.clone(),
                line: 1,
                column: 1,
                reason: "not a JSON object".to_owned(),
            });
        };
        if let Some(v) = object.get("version") {
            if v.as_u64() != Some(u64::from(RuntimeChanges::VERSION)) {
                return Err(StoreError::Version {
                    path: self.path.clone(),
                    found: match v.as_u64() {
                        Some(n) => n.to_string(),
                        None => format!("{v} (not a whole number)"),
                    },
                });
            }
        }
        let mut changes: RuntimeChanges = serde_json::from_str(&text).map_err(parse)?;
        changes.version = RuntimeChanges::VERSION;
        Ok(changes)
    }

    /// Replaces the file atomically: write a temporary file, fsync it, rename it over the
    /// old one, fsync the directory (so the rename itself survives a power loss).
    /// [`StoreError::Write`]: the old file is in place, nothing changed.
    /// [`StoreError::NotDurable`]: the new file is in place, but may be lost on power loss.
    pub fn save(&self, changes: &RuntimeChanges) -> Result<(), StoreError> {
        let mut text = serde_json::to_vec_pretty(changes).expect("state always serializes");
        text.push(b'\n');
        write_atomic(&self.path, &text, self.sync_dir).map_err(|e| match e {
            AtomicWriteError::Write(source) => StoreError::Write {
                path: self.path.clone(),
                source,
            },
            AtomicWriteError::NotDurable(source) => StoreError::NotDurable {
                path: self.path.clone(),
                source,
            },
        })
    }
}

/// Why [`write_atomic`] failed: before the rename (nothing changed) or after it (the new
/// file is in place, its directory entry possibly not durable).
#[derive(Debug)]
pub(crate) enum AtomicWriteError {
    Write(std::io::Error),
    NotDurable(std::io::Error),
}

/// Replaces `path` with `text` atomically (the pattern of [`Store::save`], shared with
/// `state_dir/identity.json`, `crate::identity`): the directory is created (mode 0700) if
/// missing, a temporary file `path.tmp` (mode 0600) is written and fsynced, renamed over
/// `path`, and the directory is fsynced with `sync_dir`.
pub(crate) fn write_atomic(
    path: &Path,
    text: &[u8],
    sync_dir: fn(&Path) -> std::io::Result<()>,
) -> Result<(), AtomicWriteError> {
    let err = AtomicWriteError::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    sync_dir(dir).map_err(AtomicWriteError::NotDurable)
}

/// fsync of a directory (after a rename in it).
pub(crate) fn sync_dir_default(dir: &Path) -> std::io::Result<()> {
    sync_dir(dir)
}
