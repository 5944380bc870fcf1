//! Walks against the fake data path's maps (which model the kernel's answers under churn)
//! and the sharing rules of the scanner.

use std::{
    collections::HashSet,
    hash::BuildHasherDefault,
    io,
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::MapData;
use lb_common::{maps, PersistKeyV4, PersistValue};

use super::*;
use crate::dataplane::{
    fake::{FakeDataplane, FakeMap, FakeScan},
    Dataplane, DataplaneError, Tier,
};

fn key(i: u32) -> PersistKeyV4 {
    PersistKeyV4 {
        service: 0,
        client: i,
    }
}

fn entries(n: u32) -> Vec<(PersistKeyV4, PersistValue)> {
    (0..n)
        .map(|i| {
            (
                key(i),
                PersistValue {
                    backend: 1 + i % 3,
                    atime: i,
                    ..PersistValue::default()
                },
            )
        })
        .collect()
}

fn map(n: u32, scan: FakeScan) -> FakeMap<PersistKeyV4, PersistValue> {
    FakeMap::new(maps::PERSIST_V4, entries(n), scan)
}

fn sorted_keys(w: &Walked<PersistKeyV4, PersistValue>) -> Vec<u32> {
    let mut k: Vec<u32> = w.entries.iter().map(|e| e.0.client).collect();
    k.sort_unstable();
    k
}

#[test]
fn a_batch_walk_reads_every_key_once_and_drops_repeated_ones() {
    let plain = walk(&map(1000, FakeScan::default())).unwrap();
    assert_eq!(sorted_keys(&plain), (0..1000).collect::<Vec<_>>());
    assert!(plain.stats.batched && !plain.stats.truncated);
    assert_eq!((plain.stats.visited, plain.stats.duplicates), (1000, 0));

    // Buckets of 3, every batch re-sending the previous bucket: duplicates, dropped.
    let scan = FakeScan {
        bucket: 3,
        repeat: true,
        ..FakeScan::default()
    };
    let w = walk(&map(100_000, scan)).unwrap();
    assert_eq!(sorted_keys(&w), (0..100_000).collect::<Vec<_>>());
    assert!(w.stats.duplicates > 0, "{:?}", w.stats);
    assert_eq!(w.stats.visited, 100_000 + w.stats.duplicates);
    assert!(!w.stats.truncated);
}

#[test]
fn a_bucket_longer_than_a_batch_grows_the_batch() {
    let scan = FakeScan {
        bucket: BATCH * 2 + 1,
        ..FakeScan::default()
    };
    let n = (BATCH * 3) as u32;
    let w = walk(&map(n, scan)).unwrap();
    assert_eq!(sorted_keys(&w), (0..n).collect::<Vec<_>>());
    assert!(!w.stats.truncated);
}

#[test]
fn an_endless_walk_stops_at_max_entries_and_says_it_is_truncated() {
    let scan = FakeScan {
        max_entries: 500,
        endless: true,
        ..FakeScan::default()
    };
    let w = walk(&map(300, scan)).unwrap();
    assert!(w.stats.truncated && w.stats.batched);
    assert_eq!(w.stats.visited, 500);
    assert_eq!(sorted_keys(&w), (0..300).collect::<Vec<_>>());
    assert_eq!(w.stats.duplicates, 200);

    // The same through GET_NEXT_KEY (no batch command): the same cap.
    let w = walk(&map(
        300,
        FakeScan {
            no_batch: true,
            ..scan
        },
    ))
    .unwrap();
    assert!(w.stats.truncated && !w.stats.batched);
    assert_eq!(w.stats.visited, 500);
    assert_eq!(w.entries.len(), 300);
}

#[test]
fn a_full_map_is_complete_and_a_bucket_past_the_cap_truncates() {
    // Exactly max_entries entries: all read, not truncated.
    let full = FakeScan {
        max_entries: 64,
        ..FakeScan::default()
    };
    let w = walk(&map(64, full)).unwrap();
    assert_eq!(w.entries.len(), 64);
    assert!(!w.stats.truncated);
    // Buckets of 4 with a cap of 6: the second bucket does not fit.
    let scan = FakeScan {
        max_entries: 6,
        bucket: 4,
        ..FakeScan::default()
    };
    let w = walk(&map(10, scan)).unwrap();
    assert!(w.stats.truncated);
    assert_eq!(w.entries.len(), 4);
}

#[test]
fn without_batch_lookups_the_next_key_walk_restarting_under_churn_is_capped_and_deduplicated() {
    // No churn: everything, once.
    let scan = FakeScan {
        no_batch: true,
        ..FakeScan::default()
    };
    let w = walk(&map(200, scan)).unwrap();
    assert_eq!(sorted_keys(&w), (0..200).collect::<Vec<_>>());
    assert!(!w.stats.batched && !w.stats.truncated);
    // The cursor evicted every 50th call: the walk starts over and over (never ending
    // without the cap); it stops at max_entries visits with each key once.
    let scan = FakeScan {
        no_batch: true,
        restart_every: Some(50),
        max_entries: 1000,
        ..FakeScan::default()
    };
    let w = walk(&map(200, scan)).unwrap();
    assert!(w.stats.truncated);
    assert_eq!(w.stats.visited, 1000);
    let keys = sorted_keys(&w);
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(keys, unique, "no key twice");
    assert_eq!(w.stats.visited, w.entries.len() as u64 + w.stats.duplicates);
}

#[test]
fn a_scan_of_the_fake_data_path_reads_the_four_maps() {
    let mut dp = FakeDataplane {
        persist_v4: entries(10),
        probation_v4: vec![(key(100), lb_common::ProbationValue::default())],
        ..FakeDataplane::default()
    };
    let s = dp.persistence_scan().unwrap()().unwrap();
    assert_eq!(s.entries.len(), 11);
    assert_eq!(
        s.entries
            .iter()
            .filter(|e| e.tier == Tier::Probation)
            .count(),
        1
    );
    assert_eq!(s.v4.len(), 11, "PERSIST_V4 and PROBATION_V4 with keys");
    assert!(s.v6.is_empty());
    // The IPv6 maps' entries, with keys, for the IPv6 services' flag sweep.
    let k6 = |i: u32| lb_common::PersistKeyV6 {
        service: 3,
        client: [0x20010db8u32.to_be(), 0, 0, i],
    };
    let v = |backend| lb_common::PersistValue {
        backend,
        ..lb_common::PersistValue::default()
    };
    dp.persist_v6 = vec![(k6(1), v(5)), (k6(2), v(6))];
    dp.probation_v6 = vec![(
        k6(3),
        lb_common::ProbationValue {
            backend: 7,
            proof: 9,
            ..lb_common::ProbationValue::default()
        },
    )];
    let s = dp.persistence_scan().unwrap()().unwrap();
    assert_eq!(s.entries.len(), 14);
    assert_eq!(s.v4.len(), 11);
    assert_eq!(
        s.v6,
        [(k6(1), v(5)), (k6(2), v(6)), (k6(3), v(7))],
        "PERSIST_V6 then PROBATION_V6 (its PersistValue part) with keys"
    );
    assert_eq!(s.maps.len(), 4);
    assert!(!s.truncated());
    dp.scan = FakeScan {
        max_entries: 5,
        ..FakeScan::default()
    };
    let s = dp.persistence_scan().unwrap()().unwrap();
    assert!(s.truncated());
    assert_eq!(s.entries.len(), 5 + 1 + 3);
}

/// A source that counts its scans and, while `gate` is on, holds each one until released.
struct Gated {
    scans: Arc<AtomicUsize>,
    entered: mpsc::Receiver<usize>,
    release: mpsc::Sender<()>,
}

fn gated(dp: FakeDataplane) -> (Arc<Scanner>, Gated) {
    let scans = Arc::new(AtomicUsize::new(0));
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let entered_tx = Mutex::new(entered_tx);
    let count = Arc::clone(&scans);
    let scanner = Scanner::new(Box::new(move || {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        entered_tx.lock().unwrap().send(n).unwrap();
        release_rx.lock().unwrap().recv().unwrap();
        dp.scan_now()
    }));
    (
        scanner,
        Gated {
            scans,
            entered,
            release,
        },
    )
}

#[test]
fn callers_share_the_scan_in_flight_and_the_last_result() {
    let (scanner, g) = gated(FakeDataplane {
        persist_v4: entries(50),
        ..FakeDataplane::default()
    });
    assert!(scanner.latest().is_none());
    let hour = Duration::from_secs(3600);
    // Five scrapes at once, accepting an hour-old result: one scan.
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let s = Arc::clone(&scanner);
            thread::spawn(move || s.within_blocking(hour))
        })
        .collect();
    assert_eq!(g.entered.recv().unwrap(), 1);
    // Give the others time to queue behind it (not a timing assertion: they share whether
    // they come before or after the release).
    thread::sleep(Duration::from_millis(50));
    g.release.send(()).unwrap();
    let outcomes: Vec<Outcome> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(outcomes.iter().all(|o| o.seq == 0));
    assert_eq!(outcomes[0].result.as_ref().unwrap().entries.len(), 50);
    assert_eq!(g.scans.load(Ordering::SeqCst), 1);
    // Recent enough: the last result, no scan.
    assert_eq!(scanner.within_blocking(hour).seq, 0);
    assert_eq!(scanner.latest().unwrap().seq, 0);
    assert_eq!(g.scans.load(Ordering::SeqCst), 1);
}

#[test]
fn callers_needing_newer_than_the_scan_in_flight_wait_for_one_more_and_share_it() {
    let (scanner, g) = gated(FakeDataplane::default());
    let first = {
        let s = Arc::clone(&scanner);
        thread::spawn(move || s.get_blocking(Instant::now()))
    };
    assert_eq!(g.entered.recv().unwrap(), 1);
    // Three callers that need a scan started after the one in flight.
    let after = Instant::now();
    let later: Vec<_> = (0..3)
        .map(|_| {
            let s = Arc::clone(&scanner);
            thread::spawn(move || s.get_blocking(after))
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    g.release.send(()).unwrap();
    assert_eq!(first.join().unwrap().seq, 0);
    // One more scan for all three.
    assert_eq!(g.entered.recv().unwrap(), 2);
    g.release.send(()).unwrap();
    for c in later {
        assert_eq!(c.join().unwrap().seq, 1);
    }
    assert_eq!(g.scans.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_async_get_shares_with_blocking_callers() {
    let (scanner, g) = gated(FakeDataplane {
        persist_v4: entries(7),
        ..FakeDataplane::default()
    });
    let blocking = {
        let s = Arc::clone(&scanner);
        thread::spawn(move || s.get_blocking(Instant::now()))
    };
    let entered = tokio::task::spawn_blocking(move || {
        let n = g.entered.recv().unwrap();
        (n, g)
    });
    let (n, g) = entered.await.unwrap();
    assert_eq!(n, 1);
    let s = Arc::clone(&scanner);
    let waiting = tokio::spawn(async move { s.get(ago(Duration::from_secs(60))).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    g.release.send(()).unwrap();
    let o = waiting.await.unwrap();
    assert_eq!(o.seq, 0);
    assert_eq!(o.result.unwrap().entries.len(), 7);
    assert_eq!(blocking.join().unwrap().seq, 0);
    assert_eq!(g.scans.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_scan_is_shared_as_an_error_and_the_next_caller_retries() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let scanner = Scanner::new(Box::new(move || {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(DataplaneError::MissingMap {
                map: maps::PERSIST_V4,
            })
        } else {
            Ok(Scanned::default())
        }
    }));
    let o = scanner.get_blocking(Instant::now());
    assert!(o.result.is_err());
    let o = scanner.get_blocking(Instant::now());
    assert!(o.result.is_ok());
    assert_eq!(o.seq, 1);
}

// ---------------------------------------------------------------------------------------
// A real LRU hash map (root)

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A standalone `BPF_MAP_TYPE_LRU_HASH` of `PersistKeyV4 → PersistValue`.
fn lru_map(max_entries: u32) -> MapData {
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
        size_of::<PersistKeyV4>() as u32,
        size_of::<PersistValue>() as u32,
        max_entries,
        0,
    );
    MapData::create(obj, "scan_test", None).expect("creating an LRU hash map")
}

fn dup(data: &MapData) -> OwnedFd {
    data.fd().as_fd().try_clone_to_owned().unwrap()
}

fn writer(data: &MapData) -> aya::maps::HashMap<MapData, PersistKeyV4, PersistValue> {
    let m = aya::maps::Map::LruHashMap(MapData::from_fd(dup(data)).unwrap());
    aya::maps::HashMap::try_from(m).unwrap()
}

fn insert_range(
    m: &mut aya::maps::HashMap<MapData, PersistKeyV4, PersistValue>,
    keys: std::ops::Range<u32>,
) {
    for i in keys {
        let v = PersistValue {
            backend: 1,
            atime: i,
            ..PersistValue::default()
        };
        m.insert(&key(i), &v, 0).unwrap();
    }
}

/// The kernel's map with the batch command refused, as on a kernel without it.
struct NoBatch<'a>(&'a BpfMap<PersistKeyV4, PersistValue>);

impl MapWalk<PersistKeyV4, PersistValue> for NoBatch<'_> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn max_entries(&self) -> u32 {
        self.0.max_entries()
    }
    fn lookup_batch(
        &self,
        _: Option<u64>,
        _: usize,
        _: &mut Vec<PersistKeyV4>,
        _: &mut Vec<PersistValue>,
    ) -> io::Result<Option<u64>> {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
    fn next_key(&self, key: Option<&PersistKeyV4>) -> io::Result<Option<PersistKeyV4>> {
        self.0.next_key(key)
    }
    fn lookup(&self, key: &PersistKeyV4) -> io::Result<Option<PersistValue>> {
        self.0.lookup(key)
    }
}

const FILL: u32 = 100_000;

#[test]
fn root_a_batch_walk_of_a_real_lru_map_reads_each_key_exactly_once() {
    if !is_root() {
        eprintln!("skipped: needs root (creates a BPF map)");
        return;
    }
    // Twice the room: nothing is evicted while filling.
    let data = lru_map(2 * FILL);
    insert_range(&mut writer(&data), 0..FILL);
    let map = BpfMap::<PersistKeyV4, PersistValue>::from_fd(dup(&data), "scan_test").unwrap();
    assert_eq!(map.max_entries(), 2 * FILL);
    let w = walk(&map).unwrap();
    assert!(
        w.stats.batched,
        "BPF_MAP_LOOKUP_BATCH is used: {:?}",
        w.stats
    );
    assert!(!w.stats.truncated);
    assert_eq!(w.stats.duplicates, 0);
    assert_eq!(w.stats.visited, u64::from(FILL));
    assert_eq!(sorted_keys(&w), (0..FILL).collect::<Vec<_>>());
    assert!(w.entries.iter().all(|(k, v)| v.atime == k.client));
    // The fallback reads the same.
    let f = walk(&NoBatch(&map)).unwrap();
    assert!(!f.stats.batched && !f.stats.truncated);
    assert_eq!(sorted_keys(&f), (0..FILL).collect::<Vec<_>>());
}

#[test]
fn root_batch_walks_under_insert_churn_end_with_no_duplicates_and_at_most_max_entries() {
    if !is_root() {
        eprintln!("skipped: needs root (creates a BPF map)");
        return;
    }
    use std::sync::atomic::AtomicBool;
    // A full map, and a thread inserting fresh keys (each evicting an older one) meanwhile.
    let data = lru_map(FILL);
    insert_range(&mut writer(&data), 0..FILL);
    let map = BpfMap::<PersistKeyV4, PersistValue>::from_fd(dup(&data), "scan_test").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (stop, inserted) = (Arc::clone(&stop), Arc::clone(&inserted));
        let mut m = writer(&data);
        thread::spawn(move || {
            let mut next = FILL;
            while !stop.load(Ordering::Relaxed) {
                insert_range(&mut m, next..next + 64);
                next += 64;
                inserted.fetch_add(64, Ordering::Relaxed);
            }
        })
    };
    // Walk until the churn has replaced the whole map twice (at least three walks).
    let mut walks = Vec::new();
    let mut fallback = Vec::new();
    while walks.len() < 3 || inserted.load(Ordering::Relaxed) < 2 * FILL as usize {
        let w = walk(&map).unwrap();
        assert!(w.stats.batched);
        assert_eq!(
            w.stats.duplicates, 0,
            "a batch walk reads each bucket once: {:?}",
            w.stats
        );
        assert!(w.stats.visited <= u64::from(FILL), "{:?}", w.stats);
        assert!(w.entries.len() <= FILL as usize);
        walks.push(w.stats);
        // The GET_NEXT_KEY fallback under the same churn: capped just the same.
        let f = walk(&NoBatch(&map)).unwrap();
        assert!(f.stats.visited <= u64::from(FILL), "{:?}", f.stats);
        assert_eq!(f.stats.visited, f.entries.len() as u64 + f.stats.duplicates);
        fallback.push(f.stats);
        assert!(walks.len() < 10_000, "the churn thread stalled");
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    eprintln!(
        "{} batch walks under churn ({} inserts): entries {:?}, truncated {}; GET_NEXT_KEY \
         walks: duplicates {:?}, truncated {}",
        walks.len(),
        inserted.load(Ordering::Relaxed),
        walks.iter().map(|w| w.visited).collect::<Vec<_>>(),
        walks.iter().filter(|w| w.truncated).count(),
        fallback.iter().map(|w| w.duplicates).collect::<Vec<_>>(),
        fallback.iter().filter(|w| w.truncated).count(),
    );
}

#[test]
#[ignore = "timing breakdown for development (root, release)"]
fn root_timing_breakdown() {
    let n = 1_000_000;
    let data = lru_map(1 << 20);
    insert_range(&mut writer(&data), 0..n);
    let map = BpfMap::<PersistKeyV4, PersistValue>::from_fd(dup(&data), "scan_test").unwrap();
    for room in [16_384usize, 65_536, 262_144, 65_536] {
        let start = Instant::now();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut cursor = None;
        let mut total = 0;
        loop {
            let next = map
                .lookup_batch(cursor, room, &mut keys, &mut values)
                .unwrap();
            total += keys.len();
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        eprintln!(
            "syscalls only, room {room}: {total} in {:?}",
            start.elapsed()
        );
    }
    for _ in 0..3 {
        let start = Instant::now();
        let w = walk(&map).unwrap();
        eprintln!("walk: {} in {:?}", w.entries.len(), start.elapsed());
        let start = Instant::now();
        let mut seen: HashSet<PersistKeyV4, BuildHasherDefault<KeyHasher>> =
            HashSet::with_capacity_and_hasher(w.entries.len(), Default::default());
        for e in &w.entries {
            seen.insert(e.0);
        }
        eprintln!("dedup alone: {:?}", start.elapsed());
    }
}
