//! Scans of the persistence and probation maps (`PERSIST_V4/_V6`, `PROBATION_V4/_V6`):
//! bounded walks, and one shared scanner for the whole daemon.
//!
//! ## A walk
//!
//! [`walk`] reads a map with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): the kernel copies whole hash
//! buckets, in bucket order, each under its bucket lock, so a walk visits every bucket once
//! and ends — concurrent inserts, deletes and LRU evictions cannot send it back to the start.
//! (`BPF_MAP_GET_NEXT_KEY` restarts from bucket 0 when the cursor's entry was evicted
//! meanwhile: under insert churn such a walk takes unbounded time and collects duplicates.)
//! Only when the kernel refuses the batch command (`EINVAL`, `ENOTSUPP`, `EOPNOTSUPP`) does a
//! walk fall back to `GET_NEXT_KEY` + `LOOKUP_ELEM`.
//!
//! Every walk, either way, visits at most the map's `max_entries` entries: one that would
//! visit more stops there and says so ([`WalkStats::truncated`]); keys are deduplicated (the
//! last value read wins). A truncated read is a partial one: drains and the slot flag sweep
//! do not act on it (a missed entry could be a live client), counts are a lower bound.
//!
//! ## The shared scanner
//!
//! [`Scanner`] runs scans on a thread of its own, one at a time, only when somebody asks,
//! and keeps the last result with the time its scan started. A caller asks for a result
//! started no earlier than some instant: the last one when it is recent enough, else the
//! scan in flight when that started late enough, else the next scan (several callers waiting
//! share it). Scrapes (a result up to 5 s old), `backend list` and `status` (a scan started
//! after the request: the next one, shared by every request waiting), drain checks (up to a
//! health interval old) and the slot flag sweep (started after its grace) all go through it;
//! `backend add/remove` only read the last result.
//!
//! ## Modules
//!
//! * `scan.rs` (this file): the module doc, and the re-exports of the pieces below.
//! * `scan/walk.rs`: [`walk`] — the bounded, deduplicating walk of one map over [`MapWalk`],
//!   batched or by `GET_NEXT_KEY`.
//! * `scan/bpf.rs`: [`BpfMap`] — the kernel's maps through bpf(2): `BPF_MAP_LOOKUP_BATCH`,
//!   `GET_NEXT_KEY`, `LOOKUP_ELEM`.
//! * `scan/scanner.rs`: one scan of the four maps ([`Scanned`], [`PersistMaps`]) and the
//!   shared [`Scanner`].

mod bpf;
mod scanner;
mod walk;

pub use bpf::BpfMap;
pub use scanner::{ago, Outcome, PersistMaps, ScanSource, Scanned, Scanner};
pub use walk::{walk, KeyHasher, MapWalk, WalkStats, Walked, BATCH};

#[cfg(test)]
mod tests;
