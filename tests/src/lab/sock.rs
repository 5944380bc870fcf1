//! Sockets the standard library cannot make as the lab needs them: IPv6-only UDP and TCP
//! sockets (so `[::]:500` and `0.0.0.0:500` coexist whatever `net.ipv6.bindv6only` says),
//! raw IPv6 sockets for ESP, and TCP connections from a chosen local address (a client of
//! the lab is an address, not a process).

use std::io::ErrorKind;
use std::mem::size_of;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Waits until `fd` is readable or `deadline` passes (`None`: no wait, the caller blocks in
/// its receive). False on timeout or when a signal interrupted the wait.
pub(crate) fn wait_readable(fd: &OwnedFd, deadline: Option<Instant>) -> Result<bool> {
    let Some(deadline) = deadline else {
        return Ok(true);
    };
    let ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms.min(i32::MAX as u128) as libc::c_int) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e).context("poll");
    }
    Ok(rc > 0)
}

fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("socket({domain}, {ty}, {protocol})"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> Result<()> {
    // SAFETY: an int option of the size passed, on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setsockopt({level}, {name})"));
    }
    Ok(())
}

/// A `sockaddr_storage` holding `addr`, and its length.
fn raw_addr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the family-specific view is written below.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> Result<()> {
    let (ss, len) = raw_addr(addr);
    // SAFETY: a valid address of the length passed.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const ss).cast(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind {addr}"));
    }
    Ok(())
}

fn domain(addr: SocketAddr) -> libc::c_int {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// A UDP socket bound to `addr`; an IPv6 one is IPv6-only.
pub fn udp_bind(addr: SocketAddr) -> Result<UdpSocket> {
    let fd = socket(domain(addr), libc::SOCK_DGRAM, 0)?;
    if addr.is_ipv6() {
        set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    bind(&fd, addr)?;
    Ok(UdpSocket::from(fd))
}

/// A TCP listener on `addr` (SO_REUSEADDR; an IPv6 one is IPv6-only).
pub fn tcp_listen(addr: SocketAddr) -> Result<TcpListener> {
    let fd = socket(domain(addr), libc::SOCK_STREAM, 0)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    bind(&fd, addr)?;
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("listen {addr}"));
    }
    Ok(TcpListener::from(fd))
}

/// A TCP connection from `local` (port chosen by the kernel) to `to`, giving up after
/// `timeout` (the connect honours `SO_SNDTIMEO`).
pub fn tcp_connect(local: IpAddr, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let fd = socket(domain(to), libc::SOCK_STREAM, 0)?;
    bind(&fd, SocketAddr::new(local, 0))?;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a timeval option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_SNDTIMEO");
    }
    let (ss, len) = raw_addr(to);
    // SAFETY: a valid address of the length passed.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const ss).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("connect {local} → {to}"));
    }
    // SAFETY: the fd is a connected stream socket we own.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    stream.set_read_timeout(Some(timeout))?;
    Ok(stream)
}

/// A raw IPv6 socket for one protocol. Unlike IPv4 raw sockets, neither received nor sent
/// buffers carry the IPv6 header (RFC 3542 §3): a buffer is the protocol's own bytes.
#[derive(Debug)]
pub struct RawSocket6(OwnedFd);

impl RawSocket6 {
    pub fn new(protocol: i32) -> Result<Self> {
        Ok(Self(socket(libc::AF_INET6, libc::SOCK_RAW, protocol)?))
    }

    /// Bind to a local address: outgoing packets take it as source, and only packets to it
    /// are received.
    pub fn bind(&self, addr: Ipv6Addr) -> Result<()> {
        bind(&self.0, SocketAddrV6::new(addr, 0, 0, 0).into())
    }

    pub fn send_to(&self, payload: &[u8], dst: Ipv6Addr) -> Result<()> {
        let (ss, len) = raw_addr(SocketAddrV6::new(dst, 0, 0, 0).into());
        // SAFETY: buffer and address valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&raw const ss).cast(),
                len,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("send to {dst}"));
        }
        Ok(())
    }

    /// Receive one packet, waiting until `deadline` (`None`: forever): its source and body,
    /// or `None` on timeout or signal.
    pub fn recv<'b>(
        &self,
        buf: &'b mut [u8],
        deadline: Option<Instant>,
    ) -> Result<Option<(Ipv6Addr, &'b [u8])>> {
        if !super::sock::wait_readable(&self.0, deadline)? {
            return Ok(None);
        }
        // SAFETY: all-zero is a valid sockaddr_in6 to receive into.
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let flags = if deadline.is_some() {
            libc::MSG_DONTWAIT
        } else {
            0
        };
        // SAFETY: buffer and address valid for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                return Ok(None);
            }
            return Err(e).context("recv (raw IPv6)");
        }
        Ok(Some((
            Ipv6Addr::from(from.sin6_addr.s6_addr),
            &buf[..n as usize],
        )))
    }
}
