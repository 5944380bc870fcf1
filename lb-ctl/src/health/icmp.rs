//! The ICMP prober: one socket per family, shared by every probe, read by one task that hands
//! each message to the probe it is about — or to nobody (see [`super::packet`] for the rule).
//!
//! * **Socket**: a raw ICMP socket when we may open one (root, `CAP_NET_RAW`: the daemon under
//!   systemd and under `ip netns exec`), else an unprivileged ping socket (`SOCK_DGRAM`, where
//!   `net.ipv4.ping_group_range` includes our group). A raw socket sees every ICMP message the
//!   host receives, errors included; a kernel filter (`ICMP_FILTER`, `ICMP6_FILTER`) keeps it to
//!   echo replies and error messages. A ping socket gets only echo replies carrying its
//!   identifier; ICMP errors about its requests come to its error queue (`IP_RECVERR`,
//!   `IPV6_RECVERR`: ip(7), ipv6(7)) with the sender, type, code, our request's destination
//!   and the quoted request, and go through the same rule.
//! * **Unpredictable probes**: the identifier is random per socket (a ping socket is bound to
//!   it), the sequence number starts at a random value, and every request carries a fresh
//!   random 16-byte token after the fixed text `ikelb health check `. The reply must return
//!   all three, from the probed address.
//! * A message that is not ours is ignored (logged at debug when it names a sequence number a
//!   probe waits for) and the probe keeps waiting: a forged or stale reply can neither bring a
//!   backend up nor end the probe of a live one.

use std::{
    collections::HashMap,
    io, mem,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{io::Interest, net::UdpSocket, sync::oneshot, task::JoinHandle};
use tracing::{debug, trace};

use super::packet::{self, Expected, Family, Received, Verdict};
use super::{HealthError, Probe, ProbeOutcome, Prober};

/// Fixed start of every echo request's data (for whoever reads a packet capture); the random
/// token follows.
pub const PAYLOAD_PREFIX: &[u8] = b"ikelb health check ";
/// Random bytes per echo request.
pub const TOKEN_LEN: usize = 16;

/// `ICMP_FILTER` (`linux/icmp.h`), at level `SOL_RAW`: a bit set drops that type (< 32).
const ICMP_FILTER: libc::c_int = 1;
/// `ICMP6_FILTER` (`linux/icmpv6.h`), at level `IPPROTO_ICMPV6`: 256 bits, a bit set blocks.
const ICMP6_FILTER: libc::c_int = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `SOCK_RAW`: IPv4 messages come with their IP header.
    Raw,
    /// `SOCK_DGRAM` ping socket: the kernel owns the identifier (the bound port).
    Ping,
}

/// What the receiving task tells a probe: alive, or the ICMP error that failed it.
type Answer = Result<(), String>;

struct Waiter {
    expected: Expected,
    tx: oneshot::Sender<Answer>,
}

/// Probes in flight on one socket, by sequence number (unique per socket until it wraps
/// after 65,536 probes, far more than one timeout ever sees).
type Waiting = Mutex<HashMap<u16, Waiter>>;

/// One socket of one family.
struct Pinger {
    family: Family,
    socket: Arc<UdpSocket>,
    ident: u16,
    seq: AtomicU16,
    waiting: Arc<Waiting>,
    receiver: JoinHandle<()>,
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// ICMP echo health checks (see the module doc).
pub struct IcmpProber {
    v4: Arc<Pinger>,
    /// `None` when the host has no IPv6 (only needed for IPv6 backends).
    v6: Option<Arc<Pinger>>,
}

impl IcmpProber {
    /// Opens the sockets. Must run inside a tokio runtime (the receiving tasks).
    pub fn new() -> Result<Self, HealthError> {
        let v4 = Pinger::open(Family::V4)?;
        let v6 = match Pinger::open(Family::V6) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                debug!("no ICMPv6 socket ({e}): IPv6 backends would fail their health checks");
                None
            }
        };
        Ok(Self {
            v4: Arc::new(v4),
            v6,
        })
    }
}

impl Prober for IcmpProber {
    fn probe(
        &self,
        addr: IpAddr,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Probe> + Send {
        let pinger = match addr {
            IpAddr::V4(_) => Some(Arc::clone(&self.v4)),
            IpAddr::V6(_) => self.v6.clone(),
        };
        async move {
            let start = Instant::now();
            let (outcome, error) = match pinger {
                Some(p) => p.ping(addr, timeout).await,
                None => (ProbeOutcome::Error, Some("no ICMPv6 socket".to_owned())),
            };
            if let Some(e) = &error {
                debug!(backend = %addr, "health check failed: {e}");
            }
            Probe {
                outcome,
                duration: start.elapsed().min(timeout),
                error,
            }
        }
    }
}

impl Pinger {
    fn open(family: Family) -> Result<Self, HealthError> {
        let socket_error = |source| HealthError::Socket {
            kind: family.name(),
            source,
        };
        let (kind, fd) = open_socket(family).map_err(socket_error)?;
        Self::start(family, kind, fd)
    }

    /// Takes `fd` (an ICMP socket of `kind`) into use: identifier, filter, receiving task.
    fn start(family: Family, kind: Kind, fd: OwnedFd) -> Result<Self, HealthError> {
        let socket_error = |source| HealthError::Socket {
            kind: family.name(),
            source,
        };
        let ident = match kind {
            Kind::Raw => {
                if let Err(e) = filter_raw(&fd, family) {
                    debug!(
                        "{} health-check socket: no kernel filter ({e})",
                        family.name()
                    );
                }
                random_u16().map_err(|source| HealthError::Random { source })?
            }
            Kind::Ping => {
                // ICMP errors about our requests come to the error queue (read by `receive`).
                let on: libc::c_int = 1;
                let (level, name) = match family {
                    Family::V4 => (libc::SOL_IP, libc::IP_RECVERR),
                    Family::V6 => (libc::SOL_IPV6, libc::IPV6_RECVERR),
                };
                if let Err(e) = setsockopt(&fd, level, name, &on) {
                    debug!(
                        "{} ping socket: no error queue ({e}): ICMP errors will look like timeouts",
                        family.name()
                    );
                }
                bind_ident(&fd, family)?
            }
        };
        let seq = random_u16().map_err(|source| HealthError::Random { source })?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(socket_error)?;
        let socket = Arc::new(socket);
        let waiting = Arc::new(Waiting::default());
        let receiver = tokio::spawn(receive(
            Arc::clone(&socket),
            family,
            kind,
            Arc::clone(&waiting),
        ));
        debug!(
            "{} health-check socket: {kind:?}, identifier {ident}",
            family.name()
        );
        Ok(Self {
            family,
            socket,
            ident,
            seq: AtomicU16::new(seq),
            waiting,
            receiver,
        })
    }

    async fn ping(&self, addr: IpAddr, timeout: Duration) -> (ProbeOutcome, Option<String>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut payload = PAYLOAD_PREFIX.to_vec();
        payload.resize(PAYLOAD_PREFIX.len() + TOKEN_LEN, 0);
        if let Err(e) = random_bytes(&mut payload[PAYLOAD_PREFIX.len()..]) {
            return (
                ProbeOutcome::Error,
                Some(format!("no random token for the echo request: {e}")),
            );
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let request = packet::echo_request(self.family, self.ident, seq, &payload);
        let expected = Expected {
            addr,
            ident: self.ident,
            seq,
            payload,
        };
        let (tx, rx) = oneshot::channel();
        let Some(_registered) = Registration::new(&self.waiting, Waiter { expected, tx }) else {
            return (
                ProbeOutcome::Error,
                Some(format!("sequence number {seq} still in use")),
            );
        };
        let sent = tokio::time::timeout_at(
            deadline,
            self.socket.send_to(&request, SocketAddr::new(addr, 0)),
        )
        .await;
        match sent {
            Err(_) => return (ProbeOutcome::Timeout, None),
            Ok(Err(e)) => {
                return (
                    ProbeOutcome::Error,
                    Some(format!("sending the echo request: {e}")),
                )
            }
            Ok(Ok(_)) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => (ProbeOutcome::Timeout, None),
            Ok(Ok(Ok(()))) => (ProbeOutcome::Success, None),
            Ok(Ok(Err(reason))) => (ProbeOutcome::Error, Some(reason)),
            Ok(Err(_)) => (
                ProbeOutcome::Error,
                Some("the ICMP receiving task stopped".to_owned()),
            ),
        }
    }
}

/// A probe's entry in [`Waiting`], removed when the probe ends however it ends (answer,
/// timeout, or the future dropped).
struct Registration<'a> {
    waiting: &'a Waiting,
    seq: u16,
}

impl<'a> Registration<'a> {
    fn new(waiting: &'a Waiting, waiter: Waiter) -> Option<Self> {
        let seq = waiter.expected.seq;
        let mut map = waiting.lock().expect("waiting map poisoned");
        if map.contains_key(&seq) {
            return None;
        }
        map.insert(seq, waiter);
        Some(Self { waiting, seq })
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.waiting.lock() {
            map.remove(&self.seq);
        }
    }
}

async fn receive(socket: Arc<UdpSocket>, family: Family, kind: Kind, waiting: Arc<Waiting>) {
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
fn dispatch(family: Family, kind: Kind, waiting: &Waiting, from: IpAddr, msg: &[u8]) {
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

fn open_socket(family: Family) -> io::Result<(Kind, OwnedFd)> {
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

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
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
fn filter_raw(fd: &OwnedFd, family: Family) -> io::Result<()> {
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
fn bind_ident(fd: &OwnedFd, family: Family) -> Result<u16, HealthError> {
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

fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
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

fn random_u16() -> io::Result<u16> {
    let mut b = [0u8; 2];
    random_bytes(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

#[cfg(test)]
mod tests;
