//! `COUNTERS` in one system call per read: `BPF_MAP_LOOKUP_BATCH` (Linux 5.6) over the
//! per-CPU array, summed over the CPUs. `Fixture::counters` reads one key per call (23
//! calls), which was four fifths of a fuzzed frame's time; this reader is checked against it
//! at the start and the end of every run ([`Counters::cross_check`]).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::Map;
use lb_common::{counter, maps};
use lb_ctl::bpf_sys::{sys_bpf, BatchAttr, BPF_MAP_LOOKUP_BATCH};

use crate::xdp::Fixture;

pub struct Counters {
    fd: OwnedFd,
    cpus: usize,
}

impl Counters {
    pub fn new(lb: &mut Fixture) -> Counters {
        let map: &mut Map = lb.map(maps::COUNTERS);
        let Map::PerCpuArray(data) = map else {
            panic!("{} is not a per-CPU array", maps::COUNTERS);
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .expect("dup the COUNTERS fd");
        let cpus = aya::util::nr_cpus().expect("possible CPUs").get() as usize;
        Counters { fd, cpus }
    }

    /// Every counter, summed over the CPUs.
    pub fn read(&self) -> Vec<u64> {
        let n = counter::COUNT as usize;
        let mut keys = vec![0u32; n];
        let mut values = vec![0u64; n * self.cpus];
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            out_batch: &raw mut out_batch as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: n as u32,
            map_fd: self.fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers sized for `count` keys and per-CPU values, which
        // outlive the call.
        let r = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        // ENOENT: the batch reached the end of the map (it may, having read every key).
        if let Err(err) = r {
            assert!(
                err.raw_os_error() == Some(libc::ENOENT),
                "BPF_MAP_LOOKUP_BATCH on COUNTERS: {err}"
            );
        }
        assert_eq!(
            attr.count as usize, n,
            "COUNTERS batch read {} keys",
            attr.count
        );
        let mut sums = vec![0u64; n];
        for (i, &k) in keys.iter().enumerate() {
            let per_cpu = &values[i * self.cpus..(i + 1) * self.cpus];
            sums[k as usize] = per_cpu.iter().sum();
        }
        sums
    }

    /// Panics unless this reader and `Fixture::counters` agree.
    pub fn cross_check(&self, lb: &mut Fixture) {
        assert_eq!(
            self.read(),
            lb.counters(),
            "COUNTERS: batch read ≠ Fixture::counters"
        );
    }
}
