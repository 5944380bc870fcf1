//! Verified programs, reused by the rows of one test binary.
//!
//! Loading the object is almost all of a fixture's cost: the verifier walks ~120k–190k
//! instructions per load (docs/benchmarks.md, "Verifier headroom"), about 3.5 s in an
//! emulated guest of the kernel matrix (docs/kernels.md) and ~0.1 s on the host. What the
//! verifier sees differs between fixtures only by the load-time globals of [`Globals`]; the
//! maps are the same. So a fixture that ends gives its program back here, and the next
//! fixture with the same globals takes it, with every map emptied (arrays zeroed, hashes and
//! the devmap cleared) before [`super::Fixture`] fills them again: a row never sees another
//! row's entries or counters. Tests run on parallel threads; each takes a program of its
//! own, so at most one program per thread and set of globals is ever loaded.
//!
//! `IKELB_TEST_FRESH_PROGRAMS=1` turns the reuse off (every fixture loads and verifies its
//! own program), to tell a reuse artefact from a data-path bug.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;

use aya::{maps::Map, Ebpf};
use lb_ctl::bpf_sys::{
    sys_bpf, ElemAttr, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_MAP_UPDATE_ELEM,
};

/// The load-time globals of a fixture: what makes two loads differ.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Globals {
    pub persist_timeout_ticks: u32,
    pub dsr: bool,
    pub slot_fast_path: bool,
    pub new_client_quota: u32,
    pub sa_steering: bool,
}

/// Programs no fixture holds now.
static IDLE: Mutex<Vec<(Globals, Ebpf)>> = Mutex::new(Vec::new());

fn reuse() -> bool {
    std::env::var_os("IKELB_TEST_FRESH_PROGRAMS").is_none_or(|v| v != "1")
}

/// A verified program loaded with `globals`, its maps empty, if one is idle.
pub(super) fn take(globals: Globals) -> Option<Ebpf> {
    if !reuse() {
        return None;
    }
    let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
    let i = idle.iter().position(|(g, _)| *g == globals)?;
    let (_, mut ebpf) = idle.swap_remove(i);
    drop(idle);
    for (name, map) in ebpf.maps_mut() {
        empty(name, map).unwrap_or_else(|e| panic!("emptying map {name} for reuse: {e}"));
    }
    Some(ebpf)
}

/// Gives back a program a fixture no longer needs.
pub(super) fn give(globals: Globals, ebpf: Ebpf) {
    if reuse() {
        IDLE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((globals, ebpf));
    }
}

/// Empties `map`: every array element zeroed, every hash or devmap entry deleted. The
/// program's read-only globals (`.rodata`, frozen at load) are left alone.
fn empty(name: &str, map: &mut Map) -> std::io::Result<()> {
    if name.starts_with('.') {
        return Ok(());
    }
    match map {
        Map::Array(d) | Map::PerCpuArray(d) => {
            let info = d.info().map_err(std::io::Error::other)?;
            let per_cpu = matches!(map, Map::PerCpuArray(_));
            let cpus = if per_cpu {
                aya::util::nr_cpus().map_err(|(_, e)| e)?.get() as usize
            } else {
                1
            };
            let size = if per_cpu {
                (info.value_size() as usize).next_multiple_of(8) * cpus
            } else {
                info.value_size() as usize
            };
            let zeros = vec![0u8; size];
            let fd = map_fd(map);
            for key in 0..info.max_entries() {
                elem(
                    BPF_MAP_UPDATE_ELEM,
                    fd,
                    &key.to_ne_bytes(),
                    zeros.as_ptr() as u64,
                )?;
            }
            Ok(())
        }
        Map::DevMap(d) => {
            let max = d.info().map_err(std::io::Error::other)?.max_entries();
            let fd = map_fd(map);
            for key in 0..max {
                // An index that was never set is already empty.
                let _ = elem(BPF_MAP_DELETE_ELEM, fd, &key.to_ne_bytes(), 0);
            }
            Ok(())
        }
        Map::HashMap(d) | Map::LruHashMap(d) => {
            let key_size = d.info().map_err(std::io::Error::other)?.key_size() as usize;
            let fd = map_fd(map);
            let mut key = vec![0u8; key_size];
            // With no key, BPF_MAP_GET_NEXT_KEY names the first one; delete until none is left.
            while next_key(fd, &mut key)? {
                elem(BPF_MAP_DELETE_ELEM, fd, &key, 0)?;
            }
            Ok(())
        }
        _ => Err(std::io::Error::other(
            "a map type the fixture cannot empty: add it here",
        )),
    }
}

/// Deletes `key` of an array-like map with u32 keys (aya's `DevMap` has no remove).
pub(super) fn delete_u32(map: &Map, key: u32) -> std::io::Result<()> {
    elem(BPF_MAP_DELETE_ELEM, map_fd(map), &key.to_ne_bytes(), 0)
}

fn map_fd(map: &Map) -> u32 {
    let data = match map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::DevMap(d) | Map::HashMap(d) => d,
        Map::LruHashMap(d) => d,
        _ => panic!("map_fd: unexpected map type"),
    };
    data.fd().as_fd().as_raw_fd() as u32
}

/// `cmd` on one element: `key` and the buffer `value` points at (0 for a delete) hold the
/// map's key and value sizes (every caller sizes them from the map's info or its u32 keys).
fn elem(cmd: libc::c_long, fd: u32, key: &[u8], value: u64) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd,
        key: key.as_ptr() as u64,
        value,
        ..ElemAttr::default()
    };
    // SAFETY: the buffers are the map's sizes (above) and outlive the call.
    unsafe { sys_bpf(cmd, &mut attr) }
}

/// The map's first key into `key`; false when it is empty.
fn next_key(fd: u32, key: &mut [u8]) -> std::io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd,
        value: key.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: `key` is the map's key size and outlives the call.
    match unsafe { sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
