//! The receiving task of one ICMP socket: each message read — and, on a ping socket, each
//! ICMP error from its error queue (`IP_RECVERR`, `IPV6_RECVERR`) — is parsed and handed to
//! the probe it answers, by sequence number and [`packet::classify`]'s rule, or dropped.

use std::{
    io, mem,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use tokio::{io::Interest, net::UdpSocket};
use tracing::{debug, trace};

use super::{Kind, Waiting};
use crate::health::packet::{self, Family, Received, Verdict};

pub(super) async fn receive(
    socket: Arc<UdpSocket>,
    family: Family,
    kind: Kind,
    waiting: Arc<Waiting>,
) {
    let mut buf = vec![0u8; 4096];
    let mut quoted = vec![0u8; 2048];
    let fd = socket.as_raw_fd();
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => dispatch(family, kind, &waiting, from.ip(), &buf[..n]),
                Err(e) => {
                    // On a ping socket, an ICMP error also sets the socket's pending error,
                    // which one receive returns: the error queue has the details. Read it
                    // now rather than rely on the error readiness alone.
                    debug!("{} health-check socket: receiving: {e}", family.name());
                    if kind == Kind::Ping {
                        while let Ok(queued) = read_error_queue(fd, &mut quoted) {
                            dispatch_queued(family, &waiting, &queued, &quoted);
                        }
                    }
                    // Never spin on an error that repeats.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            },
            r = socket.async_io(Interest::ERROR, || read_error_queue(fd, &mut quoted)),
                if kind == Kind::Ping =>
            {
                match r {
                    Ok(queued) => dispatch_queued(family, &waiting, &queued, &quoted),
                    Err(e) => {
                        debug!("{} health-check socket: error queue: {e}", family.name());
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
    }
}

/// Hands one received message to the probe it answers, if any (see [`packet::classify`]).
pub(super) fn dispatch(family: Family, kind: Kind, waiting: &Waiting, from: IpAddr, msg: &[u8]) {
    let with_ip_header = kind == Kind::Raw && family == Family::V4;
    match packet::parse(family, with_ip_header, msg) {
        Ok(received) => deliver(family, waiting, from, &received),
        Err(e) => trace!(%from, "{} message ignored: {e}", family.name()),
    }
}

fn deliver(family: Family, waiting: &Waiting, from: IpAddr, received: &Received<'_>) {
    let Some(seq) = received.seq() else {
        return;
    };
    let mut map = waiting.lock().expect("waiting map poisoned");
    let Some(waiter) = map.get(&seq) else {
        trace!(%from, seq, "{} message for no probe of ours", family.name());
        return;
    };
    let answer = match packet::classify(&waiter.expected, from, received) {
        Verdict::Alive => Ok(()),
        Verdict::Failed(reason) => Err(reason),
        Verdict::NotOurs(why) => {
            debug!(backend = %waiter.expected.addr, %from, seq, "health check: ignored {why}");
            return;
        }
    };
    let waiter = map.remove(&seq).expect("looked up above");
    // The probe may have timed out meanwhile: nobody to tell.
    let _ = waiter.tx.send(answer);
}

/// An ICMP error from a ping socket's error queue (`IP_RECVERR`, `IPV6_RECVERR`; ip(7),
/// ipv6(7)): who sent it, its type and code, where our request went, and how many bytes of
/// the request (ICMP header and data, as quoted) were read.
#[derive(Debug)]
struct Queued {
    offender: Option<IpAddr>,
    origin: u8,
    icmp_type: u8,
    code: u8,
    dst: Option<IpAddr>,
    len: usize,
}

/// Turns a queued error into the [`Received::Error`] of [`packet::parse`] and delivers it.
fn dispatch_queued(family: Family, waiting: &Waiting, q: &Queued, quoted: &[u8]) {
    let origin = match family {
        Family::V4 => libc::SO_EE_ORIGIN_ICMP,
        Family::V6 => libc::SO_EE_ORIGIN_ICMP6,
    };
    let request = match family {
        Family::V4 => packet::ECHO_REQUEST_V4,
        Family::V6 => packet::ECHO_REQUEST_V6,
    };
    let quoted = &quoted[..q.len.min(quoted.len())];
    let (Some(from), Some(dst)) = (q.offender, q.dst) else {
        trace!("{} error queue: no addresses ({q:?})", family.name());
        return;
    };
    if q.origin != origin || quoted.len() < 8 || quoted[0] != request {
        trace!(
            "{} error queue: not an ICMP error about an echo request ({q:?})",
            family.name()
        );
        return;
    }
    let received = Received::Error {
        error: packet::IcmpError {
            family,
            icmp_type: q.icmp_type,
            code: q.code,
        },
        quoted_dst: dst,
        ident: u16::from_be_bytes([quoted[4], quoted[5]]),
        seq: u16::from_be_bytes([quoted[6], quoted[7]]),
        payload: &quoted[8..],
    };
    deliver(family, waiting, from, &received);
}

fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the kernel wrote a sockaddr_in or sockaddr_in6 here, as `sa_family` says; read
    // unaligned (inside a control message or a sockaddr_storage).
    unsafe {
        match i32::from(std::ptr::read_unaligned(sa).sa_family) {
            libc::AF_INET => {
                let sin = std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>());
                Some(IpAddr::V4(u32::from_be(sin.sin_addr.s_addr).into()))
            }
            libc::AF_INET6 => {
                let sin6 = std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in6>());
                Some(IpAddr::V6(sin6.sin6_addr.s6_addr.into()))
            }
            _ => None,
        }
    }
}

/// Reads one message of `fd`'s error queue into `quoted` (`WouldBlock` when empty).
fn read_error_queue(fd: RawFd, quoted: &mut [u8]) -> io::Result<Queued> {
    // SAFETY: plain old data; every pointer handed to recvmsg points into these locals,
    // valid for the lengths given; control messages are read within msg_controllen through
    // the CMSG_* helpers, and the extended error (and the offender address behind it) with
    // unaligned reads.
    unsafe {
        let mut name: libc::sockaddr_storage = mem::zeroed();
        let mut control = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: quoted.as_mut_ptr().cast(),
            iov_len: quoted.len(),
        };
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = mem::size_of_val(&name) as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut queued = Queued {
            offender: None,
            origin: 0,
            icmp_type: 0,
            code: 0,
            dst: sockaddr_ip((&name as *const libc::sockaddr_storage).cast()),
            len: n as usize,
        };
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = std::ptr::read_unaligned(cmsg);
            if (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR)
            {
                let ee = libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>();
                let e = std::ptr::read_unaligned(ee);
                queued.origin = e.ee_origin;
                queued.icmp_type = e.ee_type;
                queued.code = e.ee_code;
                queued.offender = sockaddr_ip(libc::SO_EE_OFFENDER(ee));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(queued)
    }
}
