//! bpf(2) for the map commands aya does not offer or offers one element at a time
//! (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_GET_NEXT_KEY` on raw keys, `BPF_MAP_*_ELEM` on maps
//! whose value type is only known at run time): the attribute layouts of
//! include/uapi/linux/bpf.h and the call. Used by [`crate::scan`] and by the tests' fixtures.

use std::{io, mem::size_of};

pub const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
pub const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
pub struct ElemAttr {
    pub map_fd: u32,
    pub _pad: u32,
    pub key: u64,
    /// `value` or `next_key`.
    pub value: u64,
    pub flags: u64,
}

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
pub struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// bpf(2); the kernel reads the first `size_of::<T>()` bytes of its attribute union.
///
/// # Safety
///
/// `attr` is the attribute layout of `cmd`, and every pointer in it is valid for the
/// kernel's reads and writes of the map's key and value sizes (times the count, for a
/// batch) during the call.
pub unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: the caller's contract.
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
