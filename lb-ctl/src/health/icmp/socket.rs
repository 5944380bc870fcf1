//! The ICMP sockets: a raw socket when we may open one, else a ping socket; the kernel
//! filter that keeps a raw socket to echo replies and errors; a ping socket bound to a
//! random identifier; and random bytes from getrandom(2).

use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::Kind;
use crate::health::{
    packet::{self, Family},
    HealthError,
};

/// `ICMP_FILTER` (`linux/icmp.h`), at level `SOL_RAW`: a bit set drops that type (< 32).
const ICMP_FILTER: libc::c_int = 1;
/// `ICMP6_FILTER` (`linux/icmpv6.h`), at level `IPPROTO_ICMPV6`: 256 bits, a bit set blocks.
const ICMP6_FILTER: libc::c_int = 1;

pub(super) fn open_socket(family: Family) -> io::Result<(Kind, OwnedFd)> {
    let (domain, proto) = match family {
        Family::V4 => (libc::AF_INET, libc::IPPROTO_ICMP),
        Family::V6 => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    let raw_error = match socket(domain, libc::SOCK_RAW, proto) {
        Ok(fd) => return Ok((Kind::Raw, fd)),
        Err(e) => e,
    };
    if !matches!(raw_error.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
        return Err(raw_error);
    }
    socket(domain, libc::SOCK_DGRAM, proto)
        .map(|fd| (Kind::Ping, fd))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("raw socket: {raw_error}; ping socket: {e}"),
            )
        })
}

pub(super) fn socket(
    domain: libc::c_int,
    ty: libc::c_int,
    proto: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points at `size_of::<T>()` readable bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets only echo replies and error messages into a raw socket.
pub(super) fn filter_raw(fd: &OwnedFd, family: Family) -> io::Result<()> {
    match family {
        Family::V4 => {
            let mut drop: u32 = !0;
            for t in [packet::ECHO_REPLY_V4, 3, 4, 11, 12] {
                drop &= !(1u32 << t);
            }
            setsockopt(fd, libc::SOL_RAW, ICMP_FILTER, &drop)
        }
        Family::V6 => {
            let mut block = [u32::MAX; 8];
            for t in [1u8, 2, 3, 4, packet::ECHO_REPLY_V6] {
                block[usize::from(t >> 5)] &= !(1u32 << (t & 31));
            }
            setsockopt(fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &block)
        }
    }
}

/// Binds a ping socket to a random identifier (its "port"); returns it.
pub(super) fn bind_ident(fd: &OwnedFd, family: Family) -> Result<u16, HealthError> {
    let mut last = None;
    for _ in 0..16 {
        // 0 would let the kernel pick the next free identifier: predictable.
        let ident = random_u16()
            .map_err(|source| HealthError::Random { source })?
            .max(1);
        let rc = match family {
            Family::V4 => {
                // SAFETY: sockaddr_in is plain old data; all zeroes is INADDR_ANY.
                let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = ident.to_be();
                // SAFETY: `sa` is a valid sockaddr_in of the length given.
                unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sa as *const libc::sockaddr_in).cast(),
                        mem::size_of_val(&sa) as libc::socklen_t,
                    )
                }
            }
            Family::V6 => {
                // SAFETY: sockaddr_in6 is plain old data; all zeroes is in6addr_any.
                let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = ident.to_be();
                // SAFETY: `sa` is a valid sockaddr_in6 of the length given.
                unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sa as *const libc::sockaddr_in6).cast(),
                        mem::size_of_val(&sa) as libc::socklen_t,
                    )
                }
            }
        };
        if rc == 0 {
            return Ok(ident);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EADDRINUSE) {
            return Err(HealthError::Socket {
                kind: family.name(),
                source: e,
            });
        }
        last = Some(e);
    }
    Err(HealthError::Socket {
        kind: family.name(),
        source: last.expect("16 tries"),
    })
}

pub(in crate::health) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is writable for `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

pub(super) fn random_u16() -> io::Result<u16> {
    let mut b = [0u8; 2];
    random_bytes(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
