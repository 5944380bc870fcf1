//! Client side of the lab: a UDP socket bound to one client address that asks a responder
//! (through the VIP or directly) and matches the answer to the question.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::raw::{esp_packet, RawSocket, ESP_HEADER, IPPROTO_ESP};
use super::responder::{Answer, Echo, Stats, STATS_QUERY};

/// An answer and where it came from (the address the client saw: the VIP when ikelb rewrote
/// it, the backend's own address when the kernel merely routed it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub from: SocketAddrV4,
    pub echo: Echo,
}

/// A UDP socket bound to `addr:0` that never sets DF: a datagram larger than the path MTU is
/// fragmented by the sender, as an IKE_AUTH with certificates is. The socket is non-blocking;
/// waits use poll(2), so many probes can have questions in flight at once ([`UdpProbe::send`]
/// then [`UdpProbe::collect`]).
#[derive(Debug)]
pub struct UdpProbe {
    sock: UdpSocket,
    local: SocketAddrV4,
    sent: Cell<u64>,
    /// Echoes read while waiting for another tag: with several questions in flight, answers
    /// may come in any order.
    early: RefCell<VecDeque<Reply>>,
}

/// Echoes kept for a later [`UdpProbe::collect`]; older ones (answers to abandoned tries) are
/// dropped.
const MAX_EARLY: usize = 16;

impl UdpProbe {
    pub fn bind(addr: Ipv4Addr) -> Result<Self> {
        let sock = UdpSocket::bind((addr, 0)).with_context(|| format!("bind {addr}:0"))?;
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: setsockopt on an open socket with a correctly sized int option.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&dont as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("IP_MTU_DISCOVER");
        }
        sock.set_nonblocking(true)?;
        let SocketAddr::V4(local) = sock.local_addr()? else {
            bail!("not IPv4")
        };
        Ok(Self {
            sock,
            local,
            sent: Cell::new(0),
            early: RefCell::default(),
        })
    }

    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// Send a `len`-byte datagram to `to` and return its tag (the word the responder echoes).
    pub fn send(&self, to: SocketAddrV4, len: usize) -> Result<String> {
        let n = self.sent.get();
        self.sent.set(n + 1);
        let tag = format!("q{}.{n}", self.local.port());
        let mut payload = format!("{tag} ").into_bytes();
        payload.resize(len.max(payload.len()), b'x');
        self.sock
            .send_to(&payload, to)
            .with_context(|| format!("send to {to}"))?;
        Ok(tag)
    }

    /// Wait until `deadline` for the echo of the datagram tagged `tag`, keeping the others for
    /// their own `collect`. `Ok(None)`: it did not come.
    pub fn collect(&self, tag: &str, deadline: Instant) -> Result<Option<Reply>> {
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
        to: SocketAddrV4,
        len: usize,
        tries: u32,
        timeout: Duration,
    ) -> Result<Option<Reply>> {
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
    pub fn stats(&self, to: SocketAddrV4, timeout: Duration) -> Result<Option<Stats>> {
        self.sock
            .send_to(STATS_QUERY, to)
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
    fn recv(&self, deadline: Instant) -> Result<Option<(SocketAddrV4, Answer)>> {
        let mut buf = [0u8; 512];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let answer = Answer::parse(&text).with_context(|| {
                        format!("{} got a garbled answer from {from}", self.local)
                    })?;
                    return Ok(Some((from, answer)));
                }
                Ok((_, from)) => bail!("answer from non-IPv4 {from}"),
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
pub struct EspProbe {
    raw: RawSocket,
    local: Ipv4Addr,
    seq: Cell<u32>,
}

impl EspProbe {
    /// A raw ESP socket bound to `addr`: it sends from `addr` and sees only ESP to `addr`.
    pub fn bind(addr: Ipv4Addr) -> Result<Self> {
        let raw = RawSocket::new(IPPROTO_ESP)?;
        raw.bind(addr)?;
        Ok(Self {
            raw,
            local: addr,
            seq: Cell::new(1),
        })
    }

    /// Send an ESP packet of `len` bytes (header included) to `to` and wait up to `timeout`
    /// for the echo; resend up to `tries` times in all. The reply's `from` has port 0.
    pub fn ask(
        &self,
        to: Ipv4Addr,
        len: usize,
        tries: u32,
        timeout: Duration,
    ) -> Result<Option<Reply>> {
        let mut buf = vec![0u8; 2048];
        for _ in 0..tries {
            let seq = self.seq.get();
            self.seq.set(seq + 1);
            let tag = format!("e{}.{seq}", self.local);
            let mut data = format!("{tag} ").into_bytes();
            data.resize(len.saturating_sub(ESP_HEADER).max(data.len()), b'x');
            self.raw.send_to(&esp_packet(seq, &data), to)?;
            let deadline = Instant::now() + timeout;
            while let Some((from, body)) = self.raw.recv(&mut buf, Some(deadline))? {
                let Some(text) = body.get(ESP_HEADER..) else {
                    continue;
                };
                let text = String::from_utf8_lossy(text);
                match Answer::parse(&text) {
                    Ok(Answer::Echo(echo)) if echo.tag == tag => {
                        return Ok(Some(Reply {
                            from: SocketAddrV4::new(from, 0),
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

/// Send one UDP datagram from `src` to `dst` whose UDP checksum is deliberately wrong, through
/// a raw socket of the calling thread's namespace. The receiver must count it in
/// `Udp: InCsumErrors`: the lab's proof that checksums are really verified there (so a zero
/// count after ikelb's rewrites means something). Sent through ikelb, it also shows that the
/// incremental checksum update keeps a bad checksum bad.
pub fn send_bad_checksum(src: SocketAddrV4, dst: SocketAddrV4) -> Result<()> {
    let (sport, port) = (src.port(), dst.port());
    let (src, dst) = (*src.ip(), *dst.ip());
    let payload = b"bad checksum";
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(udp_len as usize);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // RFC 768: one's complement sum over the pseudo-header and the datagram.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    pseudo.extend_from_slice(&udp);
    let good = internet_checksum(&pseudo);
    let bad: u16 = if good == 0xdead { 0xbeef } else { 0xdead };
    udp[6..8].copy_from_slice(&bad.to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, libc::IPPROTO_UDP as u8, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let ip_sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    ip.extend_from_slice(&udp);

    RawSocket::new(libc::IPPROTO_RAW)?.send_to(&ip, dst)
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2, complemented 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(super::internet_checksum(&data), !0xddf2);
    }
}
