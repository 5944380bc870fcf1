//! Client side of the lab, for either address family ([`Family`]): a UDP socket or a raw ESP
//! socket bound to one client address that asks a responder (through the VIP or directly)
//! and matches the answer to the question; a TCP exchange from a chosen address; and a
//! datagram with a deliberately corrupted UDP checksum (the receivers' checksum control).
//! Answers are the responder's lines ([`super::responder`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::raw::{esp_packet, ESP_HEADER, IPPROTO_ESP};
use super::responder::{Answer, Echo, Stats, STATS_QUERY};
use super::sock;
use crate::family::{udp_with_bad_checksum, Family, FamilySock, RawIp};

/// An answer and where it came from (the address the client saw: the VIP when ikelb rewrote
/// it or in DSR, the backend's own address when the kernel merely routed it). `S` is the
/// socket address type: `SocketAddrV4` (the default), `SocketAddrV6`, or `SocketAddr` for
/// answers of either family ([`Reply::any`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply<S = SocketAddrV4> {
    pub from: S,
    pub echo: Echo,
}

impl<S: Into<SocketAddr>> Reply<S> {
    /// The same answer with a family-neutral address.
    pub fn any(self) -> Reply<SocketAddr> {
        Reply {
            from: self.from.into(),
            echo: self.echo,
        }
    }
}

/// A UDP socket bound to `addr:0` ([`Family::udp_socket`]: a datagram larger than the path
/// MTU is fragmented by the sender, as an IKE_AUTH with certificates is). The socket is
/// non-blocking; waits use poll(2), so many probes can have questions in flight at once
/// ([`UdpProbe::send`] then [`UdpProbe::collect`]).
#[derive(Debug)]
pub struct UdpProbe<A: Family = Ipv4Addr> {
    sock: UdpSocket,
    local: A::Sock,
    sent: Cell<u64>,
    /// Echoes read while waiting for another tag: with several questions in flight, answers
    /// may come in any order.
    early: RefCell<VecDeque<Reply<A::Sock>>>,
}

/// Echoes kept for a later [`UdpProbe::collect`]; older ones (answers to abandoned tries) are
/// dropped.
const MAX_EARLY: usize = 16;

impl<A: Family> UdpProbe<A> {
    pub fn bind(addr: A) -> Result<Self> {
        let sock = A::udp_socket(addr)?;
        sock.set_nonblocking(true)?;
        let bound = sock.local_addr()?;
        let Some(local) = A::of_sock(bound) else {
            bail!("{addr}: bound to {bound}, not {}", A::NAME)
        };
        Ok(Self {
            sock,
            local,
            sent: Cell::new(0),
            early: RefCell::default(),
        })
    }

    pub fn local(&self) -> A::Sock {
        self.local
    }

    /// Send a `len`-byte datagram to `to` and return its tag (the word the responder echoes).
    pub fn send(&self, to: A::Sock, len: usize) -> Result<String> {
        let n = self.sent.get();
        self.sent.set(n + 1);
        let tag = format!("q{}.{n}", self.local.port_number());
        let mut payload = format!("{tag} ").into_bytes();
        payload.resize(len.max(payload.len()), b'x');
        self.sock
            .send_to(&payload, to.into())
            .with_context(|| format!("send to {to}"))?;
        Ok(tag)
    }

    /// Wait until `deadline` for the echo of the datagram tagged `tag`, keeping the others for
    /// their own `collect`. `Ok(None)`: it did not come.
    pub fn collect(&self, tag: &str, deadline: Instant) -> Result<Option<Reply<A::Sock>>> {
        let mut early = self.early.borrow_mut();
        if let Some(i) = early.iter().position(|r| r.echo.tag == tag) {
            return Ok(early.remove(i));
        }
        while let Some((from, answer)) = self.recv(deadline)? {
            let Answer::Echo(echo) = answer else { continue };
            let reply = Reply { from, echo };
            if reply.echo.tag == tag {
                return Ok(Some(reply));
            }
            if early.len() == MAX_EARLY {
                early.pop_front();
            }
            early.push_back(reply);
        }
        Ok(None)
    }

    /// Send a `len`-byte datagram to `to` and wait up to `timeout` for its echo; resend up to
    /// `tries` times in all. `Ok(None)`: no answer at all.
    pub fn ask(
        &self,
        to: A::Sock,
        len: usize,
        tries: u32,
        timeout: Duration,
    ) -> Result<Option<Reply<A::Sock>>> {
        for _ in 0..tries {
            let tag = self.send(to, len)?;
            if let Some(reply) = self.collect(&tag, Instant::now() + timeout)? {
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }

    /// Ask the responder at `to` for its counters; `Ok(None)` if it does not answer within
    /// `timeout`.
    pub fn stats(&self, to: A::Sock, timeout: Duration) -> Result<Option<Stats>> {
        self.sock
            .send_to(STATS_QUERY, to.into())
            .with_context(|| format!("send to {to}"))?;
        let deadline = Instant::now() + timeout;
        while let Some((from, answer)) = self.recv(deadline)? {
            // A late answer to an earlier query (to another responder, on a slow machine such
            // as an emulated kernel of the matrix) is not this one's.
            if let (Answer::Stats(s), true) = (answer, from == to) {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// The next answer, waiting until `deadline` (not at all once it has passed: then only
    /// what is already queued).
    fn recv(&self, deadline: Instant) -> Result<Option<(A::Sock, Answer)>> {
        let mut buf = [0u8; 512];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let Some(from) = A::of_sock(from) else {
                        bail!("answer from non-{} {from}", A::NAME)
                    };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let answer = Answer::parse(&text).with_context(|| {
                        format!("{} got a garbled answer from {from}", self.local)
                    })?;
                    return Ok(Some((from, answer)));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // An ICMP error (port unreachable) reported on the socket: no answer.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(None),
                Err(e) => return Err(e).context("recv"),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    // A signal (the demo's Ctrl-C) ends the wait.
                    return Ok(None);
                }
                return Err(e).context("poll");
            }
        }
    }
}

/// ESP (IP protocol 50) from one client address: raw packets with the lab's SPI whose text the
/// responder echoes back in ESP (see [`super::raw`]).
#[derive(Debug)]
pub struct EspProbe<A: Family = Ipv4Addr> {
    raw: A::Raw,
    local: A,
    seq: Cell<u32>,
}

impl<A: Family> EspProbe<A> {
    /// A raw ESP socket bound to `addr`: it sends from `addr` and sees only ESP to `addr`.
    pub fn bind(addr: A) -> Result<Self> {
        Ok(Self {
            raw: A::Raw::open(IPPROTO_ESP, addr)?,
            local: addr,
            seq: Cell::new(1),
        })
    }

    /// Send an ESP packet of `len` bytes (header included) to `to` and wait up to `timeout`
    /// for the echo; resend up to `tries` times in all. The reply's `from` has port 0.
    pub fn ask(
        &self,
        to: A,
        len: usize,
        tries: u32,
        timeout: Duration,
    ) -> Result<Option<Reply<A::Sock>>> {
        let mut buf = vec![0u8; 2048];
        for _ in 0..tries {
            let seq = self.seq.get();
            self.seq.set(seq + 1);
            let tag = format!("e{}.{seq}", self.local);
            let mut data = format!("{tag} ").into_bytes();
            data.resize(len.saturating_sub(ESP_HEADER).max(data.len()), b'x');
            self.raw.send(&esp_packet(seq, &data), to)?;
            let deadline = Instant::now() + timeout;
            while let Some((from, body)) = self.raw.receive(&mut buf, Some(deadline))? {
                let Some(text) = body.get(ESP_HEADER..) else {
                    continue;
                };
                match Answer::parse(&String::from_utf8_lossy(text)) {
                    Ok(Answer::Echo(echo)) if echo.tag == tag => {
                        return Ok(Some(Reply {
                            from: from.sock(0),
                            echo,
                        }))
                    }
                    _ => continue, // an earlier try's answer, or not the responder's
                }
            }
        }
        Ok(None)
    }
}

/// One TCP exchange from `local` to `to` (either family): connect, send a line with a tag,
/// read the responder's line. `Ok(None)`: no connection or no answer within `timeout` per
/// try, after `tries` tries.
pub fn tcp_ask(
    local: IpAddr,
    to: SocketAddr,
    tries: u32,
    timeout: Duration,
) -> Result<Option<Reply<SocketAddr>>> {
    for i in 0..tries {
        let Ok(mut stream) = sock::tcp_connect(local, to, timeout) else {
            continue;
        };
        let tag = format!("t{}.{i}", stream.local_addr()?.port());
        stream.write_all(format!("{tag} SSTP_DUPLEX_POST\n").as_bytes())?;
        let mut text = String::new();
        match stream.read_to_string(&mut text) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => continue,
            Err(e) => return Err(e).context("read the TCP answer"),
        }
        if let Ok(Answer::Echo(echo)) = Answer::parse(text.trim()) {
            if echo.tag == tag {
                return Ok(Some(Reply {
                    from: stream.peer_addr()?,
                    echo,
                }));
            }
        }
    }
    Ok(None)
}

/// Send one UDP datagram from `src` to `dst` (`SocketAddrV4` or `SocketAddrV6`) whose UDP
/// checksum is deliberately wrong, through a raw socket of the calling thread's namespace.
/// The receiver must count it in `Udp: InCsumErrors` (`Udp6InCsumErrors` over IPv6): the
/// lab's proof that checksums are really verified there (so a zero count after ikelb's
/// rewrites means something). Sent through ikelb, it also shows that the incremental checksum
/// update keeps a bad checksum bad.
pub fn send_bad_checksum<S: FamilySock>(src: S, dst: S) -> Result<()> {
    let udp = udp_with_bad_checksum(src, dst, b"bad checksum");
    S::Ip::send_raw_udp(src, dst, &udp)
}
