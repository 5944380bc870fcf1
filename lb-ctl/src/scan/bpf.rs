//! The kernel's maps, by descriptors of their own: [`BpfMap`] answers a walk through bpf(2)
//! (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_GET_NEXT_KEY`, `BPF_MAP_LOOKUP_ELEM`), its key and
//! value sizes checked against the map's when it is opened.

use std::{
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
};

use aya::{
    maps::{MapData, MapError},
    Pod,
};

use super::MapWalk;
use crate::dataplane::DataplaneError;

use crate::bpf_sys::{
    sys_bpf, BatchAttr, ElemAttr, BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_BATCH, BPF_MAP_LOOKUP_ELEM,
};

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
        // SAFETY: `keys` and `values` have room for `room` keys and values of the map's sizes
        // (checked in `from_fd`); the batch tokens are 8 bytes.
        let r = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
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
        // SAFETY: `key` and `next` hold a key of the map's size (checked in `from_fd`).
        match unsafe { sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
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
        // SAFETY: `key` and `value` are of the map's sizes (checked in `from_fd`).
        match unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
            // SAFETY: the kernel wrote a value (Pod).
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
