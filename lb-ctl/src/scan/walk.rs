//! One walk of one map: [`walk`] reads every entry once, by `BPF_MAP_LOOKUP_BATCH` or, when
//! the kernel has no batch lookup for the map, by `GET_NEXT_KEY` + `LOOKUP_ELEM`, visiting
//! at most the map's `max_entries` entries and dropping repeated keys; [`MapWalk`] is how a
//! map answers it.

use std::{
    collections::HashSet,
    hash::{BuildHasherDefault, Hash, Hasher},
    io,
};

use aya::maps::MapError;

use crate::dataplane::DataplaneError;

/// Entries one `BPF_MAP_LOOKUP_BATCH` call asks for at first (a bucket longer than the room
/// left, `ENOSPC`, doubles it).
pub const BATCH: usize = 65_536;

/// How a map answers a walk: the kernel's ([`BpfMap`](super::BpfMap)) or the fake data path's.
pub trait MapWalk<K, V> {
    /// The map's name, for errors.
    fn name(&self) -> &'static str;
    /// The map's `max_entries`: the most entries a walk visits.
    fn max_entries(&self) -> u32;
    /// One `BPF_MAP_LOOKUP_BATCH` from `cursor` (`None`: the first bucket) for at most
    /// `room` entries, written to `keys` and `values` (cleared first). Returns the cursor to
    /// continue from, `None` when this call reached the end. Errors are the syscall's
    /// (`ENOSPC`: the next bucket holds more than `room` entries).
    fn lookup_batch(
        &self,
        cursor: Option<u64>,
        room: usize,
        keys: &mut Vec<K>,
        values: &mut Vec<V>,
    ) -> io::Result<Option<u64>>;
    /// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (`None`: the first), `None` at the end.
    fn next_key(&self, key: Option<&K>) -> io::Result<Option<K>>;
    /// `BPF_MAP_LOOKUP_ELEM`; `None` when the key is not there (any more).
    fn lookup(&self, key: &K) -> io::Result<Option<V>>;
}

/// What one walk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    pub map: &'static str,
    pub max_entries: u32,
    /// Entries read (duplicates included).
    pub visited: u64,
    /// Entries read more than once (dropped).
    pub duplicates: u64,
    /// The walk stopped at `max_entries` visits before the end of the map.
    pub truncated: bool,
    /// `BPF_MAP_LOOKUP_BATCH` (false: the `GET_NEXT_KEY` fallback).
    pub batched: bool,
}

/// The entries of one map, each key once, and how they were read.
#[derive(Clone, Debug, Default)]
pub struct Walked<K, V> {
    pub entries: Vec<(K, V)>,
    pub stats: WalkStats,
}

/// Whether a batch error means "this kernel has no batch lookup for this map" (fall back).
fn batch_unsupported(e: &io::Error) -> bool {
    // ENOTSUPP (524) is the kernel-internal code the batch commands return for map types
    // without batch ops; EINVAL before 5.6 (unknown command).
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(524)
    )
}

/// A cheap hasher for map keys (a few 32-bit words); keys come from the kernel, not from an
/// attacker who could pick colliding ones faster than the LRU recycles them.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_ne_bytes(w));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        // splitmix64's finaliser: every input bit reaches the low bits the table indexes by.
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
}

/// Reads every entry of `m`, each key once, visiting at most `m.max_entries()` entries.
pub fn walk<K, V, M>(m: &M) -> Result<Walked<K, V>, DataplaneError>
where
    K: Copy + Eq + Hash,
    V: Copy,
    M: MapWalk<K, V> + ?Sized,
{
    let cap = m.max_entries() as usize;
    // Room for a full map up front (untouched pages cost no memory): no copy while growing.
    let mut raw: Vec<(K, V)> = Vec::with_capacity(cap.min(1 << 24));
    let mut stats = WalkStats {
        map: m.name(),
        max_entries: m.max_entries(),
        batched: true,
        ..WalkStats::default()
    };
    let read_err = |io_error: io::Error, call: &'static str| DataplaneError::Read {
        map: m.name(),
        source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
            call,
            io_error,
        })),
    };
    match batch_walk(m, cap, &mut raw) {
        Ok(truncated) => stats.truncated = truncated,
        Err(e) if raw.is_empty() && batch_unsupported(&e) => {
            stats.batched = false;
            stats.truncated =
                next_key_walk(m, cap, &mut raw).map_err(|(e, call)| read_err(e, call))?;
        }
        Err(e) => return Err(read_err(e, "bpf_map_lookup_batch")),
    }
    stats.visited = raw.len() as u64;
    // The last read of a key is the freshest; keep it, in walk order otherwise.
    let mut seen: HashSet<K, BuildHasherDefault<KeyHasher>> =
        HashSet::with_capacity_and_hasher(raw.len(), Default::default());
    let mut entries: Vec<(K, V)> = Vec::with_capacity(raw.len());
    for e in raw.into_iter().rev() {
        if seen.insert(e.0) {
            entries.push(e);
        }
    }
    entries.reverse();
    stats.duplicates = stats.visited - entries.len() as u64;
    Ok(Walked { entries, stats })
}

/// The batch walk: appends to `out`; whether it stopped at `cap` before the end.
fn batch_walk<K: Copy, V: Copy, M: MapWalk<K, V> + ?Sized>(
    m: &M,
    cap: usize,
    out: &mut Vec<(K, V)>,
) -> io::Result<bool> {
    let mut room = BATCH.min(cap.max(1));
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut cursor = None;
    loop {
        let left = cap - out.len();
        if left == 0 {
            // At the cap: one more entry would be one too many.
            return match m.lookup_batch(cursor, 1, &mut keys, &mut values) {
                Ok(_) => Ok(!keys.is_empty()),
                // A bucket of two or more is left: there is more.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Ok(true),
                Err(e) => Err(e),
            };
        }
        let ask = room.min(left);
        match m.lookup_batch(cursor, ask, &mut keys, &mut values) {
            Ok(next) => {
                out.extend(keys.iter().copied().zip(values.iter().copied()));
                match next {
                    Some(c) => cursor = Some(c),
                    None => return Ok(false),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if ask < room {
                    // The bucket does not fit in what the cap leaves.
                    return Ok(true);
                }
                room = room.saturating_mul(2);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The `GET_NEXT_KEY` walk: appends to `out` (an entry evicted between its key and its
/// lookup is skipped); whether it stopped at `cap` visits before the end.
fn next_key_walk<K: Copy, V: Copy, M: MapWalk<K, V> + ?Sized>(
    m: &M,
    cap: usize,
    out: &mut Vec<(K, V)>,
) -> Result<bool, (io::Error, &'static str)> {
    let mut key: Option<K> = None;
    let mut visited = 0usize;
    loop {
        let next = m
            .next_key(key.as_ref())
            .map_err(|e| (e, "bpf_map_get_next_key"))?;
        let Some(k) = next else {
            return Ok(false);
        };
        if visited == cap {
            return Ok(true);
        }
        visited += 1;
        if let Some(v) = m.lookup(&k).map_err(|e| (e, "bpf_map_lookup_elem"))? {
            out.push((k, v));
        }
        key = Some(k);
    }
}
