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

use std::{
    collections::HashSet,
    hash::{BuildHasherDefault, Hash, Hasher},
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, MapError},
    Pod,
};
use lb_common::{maps, PersistKeyV4, PersistKeyV6, PersistValue, ProbationValue};
use tokio::sync::watch;
use tracing::warn;

use crate::dataplane::{probation_as_persist, DataplaneError, PersistEntry};

/// Entries one `BPF_MAP_LOOKUP_BATCH` call asks for at first (a bucket longer than the room
/// left, `ENOSPC`, doubles it).
pub const BATCH: usize = 65_536;

/// How a map answers a walk: the kernel's ([`BpfMap`]) or the fake data path's.
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

// ---------------------------------------------------------------------------------------
// The kernel's maps

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr` for the element commands (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value` or `next_key`.
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// bpf(2); the kernel reads the first `size_of::<T>()` bytes of its attribute union.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr` for `cmd`, and every
    // pointer in it is valid for the kernel's reads and writes during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A hash map of the kernel, by its own descriptor.
pub struct BpfMap<K, V> {
    data: MapData,
    name: &'static str,
    max_entries: u32,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Pod, V: Pod> BpfMap<K, V> {
    /// The map behind `fd` (a descriptor of its own: a duplicate or a pin's), checked to
    /// have `K` and `V`'s sizes.
    pub fn from_fd(fd: OwnedFd, name: &'static str) -> Result<Self, DataplaneError> {
        let err = |source| DataplaneError::Read {
            map: name,
            source: Box::new(source),
        };
        let data = MapData::from_fd(fd).map_err(err)?;
        let info = data.info().map_err(err)?;
        let (key, value) = (info.key_size() as usize, info.value_size() as usize);
        let mismatch = if key != size_of::<K>() {
            Some(MapError::InvalidKeySize {
                size: size_of::<K>(),
                expected: key,
            })
        } else if value != size_of::<V>() {
            Some(MapError::InvalidValueSize {
                size: size_of::<V>(),
                expected: value,
            })
        } else {
            None
        };
        if let Some(source) = mismatch {
            return Err(DataplaneError::MapType {
                map: name,
                source: Box::new(source),
            });
        }
        Ok(Self {
            data,
            name,
            max_entries: info.max_entries(),
            _types: PhantomData,
        })
    }

    /// The map pinned at `path`.
    pub fn from_pin(path: &Path, name: &'static str) -> Result<Self, DataplaneError> {
        let data = MapData::from_pin(path).map_err(|source| DataplaneError::Read {
            map: name,
            source: Box::new(source),
        })?;
        let fd =
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|io_error| DataplaneError::Read {
                    map: name,
                    source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
                        call: "dup",
                        io_error,
                    })),
                })?;
        Self::from_fd(fd, name)
    }

    fn fd(&self) -> u32 {
        self.data.fd().as_fd().as_raw_fd() as u32
    }
}

impl<K: Pod, V: Pod> MapWalk<K, V> for BpfMap<K, V> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn lookup_batch(
        &self,
        cursor: Option<u64>,
        room: usize,
        keys: &mut Vec<K>,
        values: &mut Vec<V>,
    ) -> io::Result<Option<u64>> {
        keys.clear();
        values.clear();
        keys.reserve(room);
        values.reserve(room);
        // A hash map's batch token is a bucket index (u32); 8 bytes hold it.
        let in_batch = cursor.unwrap_or(0);
        let mut out_batch = 0u64;
        let mut attr = BatchAttr {
            in_batch: if cursor.is_some() {
                std::ptr::from_ref(&in_batch) as u64
            } else {
                0
            },
            out_batch: std::ptr::from_mut(&mut out_batch) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: room as u32,
            map_fd: self.fd(),
            ..BatchAttr::default()
        };
        let r = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(room);
        let end = match r {
            Ok(()) => false,
            // The end of the map; `count` entries were still copied.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        // SAFETY: the kernel wrote `n` ≤ `room` keys and values (K and V are the map's key
        // and value, checked in `from_fd`; Pod: any bytes are valid).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        Ok((!end).then_some(out_batch))
    }

    fn next_key(&self, key: Option<&K>) -> io::Result<Option<K>> {
        let mut next = std::mem::MaybeUninit::<K>::uninit();
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: key.map_or(0, |k| std::ptr::from_ref(k) as u64),
            value: next.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            // SAFETY: the kernel wrote a key (Pod).
            Ok(()) => Ok(Some(unsafe { next.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn lookup(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = std::mem::MaybeUninit::<V>::uninit();
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: std::ptr::from_ref(key) as u64,
            value: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            // SAFETY: the kernel wrote a value (Pod).
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------
// One scan of the four maps

/// What one scan of the four maps read.
#[derive(Clone, Debug, Default)]
pub struct Scanned {
    /// Every entry, as the control plane counts clients and drains ([`PersistEntry::all`]).
    pub entries: Vec<PersistEntry>,
    /// `PERSIST_V4` then `PROBATION_V4` (its values as their `PersistValue` part), with
    /// keys: what the slot flag sweep reads. Empty from a source that does not keep keys.
    pub v4: Vec<(PersistKeyV4, PersistValue)>,
    /// One per map walked.
    pub maps: Vec<WalkStats>,
}

impl Scanned {
    /// From the four walks.
    pub fn from_walks(
        v4: Walked<PersistKeyV4, PersistValue>,
        v6: Walked<PersistKeyV6, PersistValue>,
        p4: Walked<PersistKeyV4, ProbationValue>,
        p6: Walked<PersistKeyV6, ProbationValue>,
    ) -> Self {
        let entries = PersistEntry::all(&v4.entries, &v6.entries, &p4.entries, &p6.entries);
        let maps = vec![v4.stats, v6.stats, p4.stats, p6.stats];
        let mut keyed = v4.entries;
        keyed.extend(
            p4.entries
                .iter()
                .map(|(k, v)| (*k, probation_as_persist(v))),
        );
        Self {
            entries,
            v4: keyed,
            maps,
        }
    }

    /// Some walk stopped at its map's `max_entries` before the end.
    pub fn truncated(&self) -> bool {
        self.maps.iter().any(|m| m.truncated)
    }
}

/// Reads the four maps (its own descriptors; called on the scanner's thread).
pub type ScanSource = Box<dyn Fn() -> Result<Scanned, DataplaneError> + Send + Sync>;

/// The four maps of the kernel, by descriptors of their own.
pub struct PersistMaps {
    pub v4: BpfMap<PersistKeyV4, PersistValue>,
    pub v6: BpfMap<PersistKeyV6, PersistValue>,
    pub p4: BpfMap<PersistKeyV4, ProbationValue>,
    pub p6: BpfMap<PersistKeyV6, ProbationValue>,
}

impl PersistMaps {
    /// The maps pinned in `maps_dir` (`pin::Pins::maps_dir`).
    pub fn from_pins(maps_dir: &Path) -> Result<Self, DataplaneError> {
        Ok(Self {
            v4: BpfMap::from_pin(&maps_dir.join(maps::PERSIST_V4), maps::PERSIST_V4)?,
            v6: BpfMap::from_pin(&maps_dir.join(maps::PERSIST_V6), maps::PERSIST_V6)?,
            p4: BpfMap::from_pin(&maps_dir.join(maps::PROBATION_V4), maps::PROBATION_V4)?,
            p6: BpfMap::from_pin(&maps_dir.join(maps::PROBATION_V6), maps::PROBATION_V6)?,
        })
    }

    /// One scan of the four maps.
    pub fn scan(&self) -> Result<Scanned, DataplaneError> {
        Ok(Scanned::from_walks(
            walk(&self.v4)?,
            walk(&self.v6)?,
            walk(&self.p4)?,
            walk(&self.p6)?,
        ))
    }

    /// A [`ScanSource`] over these maps.
    pub fn into_source(self) -> ScanSource {
        Box::new(move || self.scan())
    }
}

// ---------------------------------------------------------------------------------------
// The shared scanner

/// A finished scan: when it started, and what it read or why it failed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Scans finished before this one (0 for the first).
    pub seq: u64,
    /// When the scan started: every entry present from then to its end was read.
    pub started: Instant,
    pub took: Duration,
    pub result: Result<Arc<Scanned>, Arc<DataplaneError>>,
}

impl Outcome {
    /// Age of the data (since the scan started).
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

#[derive(Default)]
struct State {
    latest: Option<Outcome>,
    /// Start of the scan in flight.
    running: Option<Instant>,
    /// Somebody waits for a scan newer than the last one and the one in flight.
    wanted: bool,
    closed: bool,
}

struct Inner {
    source: ScanSource,
    state: Mutex<State>,
    changed: Condvar,
    published: watch::Sender<Option<Outcome>>,
}

/// Runs the scans of the persistence and probation maps, one at a time, and shares them.
pub struct Scanner {
    inner: Arc<Inner>,
}

impl Scanner {
    /// A scanner reading through `source`, with its thread (which ends when the scanner is
    /// dropped, after the scan in flight).
    pub fn new(source: ScanSource) -> Arc<Self> {
        let inner = Arc::new(Inner {
            source,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            published: watch::channel(None).0,
        });
        let thread = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("ikelb-scan".into())
            .spawn(move || thread.run())
            .expect("spawning the persistence scan thread");
        Arc::new(Self { inner })
    }

    /// The last finished scan, however old (never waits, never scans).
    pub fn latest(&self) -> Option<Outcome> {
        self.inner.lock().latest.clone()
    }

    /// A scan started at or after `not_before` (at most now): the last one, the one in
    /// flight, or the next one. Blocks; call off the event loop.
    pub fn get_blocking(&self, not_before: Instant) -> Outcome {
        let not_before = not_before.min(Instant::now());
        let mut s = self.inner.lock();
        loop {
            if let Some(o) = self.inner.ask(&mut s, not_before) {
                return o;
            }
            s = self.inner.changed.wait(s).expect("scan state not poisoned");
        }
    }

    /// As [`get_blocking`](Self::get_blocking), without blocking the caller's thread.
    pub async fn get(&self, not_before: Instant) -> Outcome {
        let not_before = not_before.min(Instant::now());
        let mut rx = self.inner.published.subscribe();
        let ready = {
            let mut s = self.inner.lock();
            self.inner.ask(&mut s, not_before)
        };
        if let Some(o) = ready {
            return o;
        }
        let o = rx
            .wait_for(|o| o.as_ref().is_some_and(|o| o.started >= not_before))
            .await
            .expect("the sender lives as long as the scanner");
        o.clone().expect("checked by wait_for")
    }

    /// A scan no older than `max_age` (see [`get_blocking`](Self::get_blocking)).
    pub fn within_blocking(&self, max_age: Duration) -> Outcome {
        self.get_blocking(ago(max_age))
    }
}

/// `now − d` (now when the monotonic clock is younger than `d`).
pub fn ago(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(d).unwrap_or(now)
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.changed.notify_all();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("scan state not poisoned")
    }

    /// The last scan if it started at or after `not_before`; else asks for one (unless the
    /// one in flight started late enough) and returns None.
    fn ask(&self, s: &mut State, not_before: Instant) -> Option<Outcome> {
        if let Some(o) = s.latest.as_ref().filter(|o| o.started >= not_before) {
            return Some(o.clone());
        }
        if s.running.is_none_or(|t| t < not_before) && !s.wanted {
            s.wanted = true;
            self.changed.notify_all();
        }
        None
    }

    fn run(&self) {
        let mut seq = 0;
        loop {
            let started = {
                let mut s = self.lock();
                while !s.wanted && !s.closed {
                    s = self.changed.wait(s).expect("scan state not poisoned");
                }
                if s.closed {
                    return;
                }
                s.wanted = false;
                let now = Instant::now();
                s.running = Some(now);
                now
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.source)()))
                .unwrap_or_else(|_| {
                    Err(DataplaneError::Read {
                        map: maps::PERSIST_V4,
                        source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
                            call: "persistence scan",
                            io_error: io::Error::other("the scan panicked"),
                        })),
                    })
                });
            if let Ok(scanned) = &result {
                for m in scanned.maps.iter().filter(|m| m.truncated) {
                    warn!(
                        map = m.map,
                        max_entries = m.max_entries,
                        "persistence scan stopped at max_entries visits before the end of the map \
                         (heavy insert churn): counts are a lower bound; drains and the slot \
                         flag sweep wait for a complete scan"
                    );
                }
            }
            let outcome = Outcome {
                seq,
                started,
                took: started.elapsed(),
                result: result.map(Arc::new).map_err(Arc::new),
            };
            seq += 1;
            let mut s = self.lock();
            s.latest = Some(outcome.clone());
            s.running = None;
            self.published.send_replace(Some(outcome));
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests;
