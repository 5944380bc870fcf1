//! Client side of the protocol tests (`tests/netns_protocols.rs`): UDP and ESP over IPv6 from
//! one client address, a TCP exchange from a chosen address over either family, and a
//! deliberately corrupted IPv6 UDP datagram (the receivers' checksum verification control).
//! Answers are the responder's lines ([`super::responder`]), as for the IPv4 probes of
//! `traffic.rs`.

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::raw::{esp_packet, ESP_HEADER, IPPROTO_ESP};
use super::responder::{Answer, Echo};
use super::sock::{self, RawSocket6};

/// An answer and the address it came from (the VIP when ikelb rewrote it or in DSR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply6 {
    pub from: SocketAddr,
    pub echo: Echo,
}

/// A UDP socket bound to `[addr]:0`. IPv6 senders fragment datagrams above the path MTU
/// themselves (RFC 8200 §5; Linux does unless `IPV6_DONTFRAG`), as an IKE_AUTH with
/// certificates is.
#[derive(Debug)]
pub struct Udp6Probe {
    sock: UdpSocket,
    local: SocketAddrV6,
    sent: Cell<u64>,
}

impl Udp6Probe {
    pub fn bind(addr: Ipv6Addr) -> Result<Self> {
        let sock = sock::udp_bind(SocketAddrV6::new(addr, 0, 0, 0).into())?;
        sock.set_nonblocking(true)?;
        let SocketAddr::V6(local) = sock.local_addr()? else {
            bail!("not IPv6")
        };
        Ok(Self {
            sock,
            local,
            sent: Cell::new(0),
        })
    }

    /// Send a `len`-byte datagram to `to` and wait up to `timeout` for its echo; resend up to
    /// `tries` times in all. `Ok(None)`: no answer.
    pub fn ask(
        &self,
        to: SocketAddrV6,
        len: usize,
        tries: u32,
        timeout: Duration,
    ) -> Result<Option<Reply6>> {
        let mut buf = [0u8; 512];
        for _ in 0..tries {
            let n = self.sent.get();
            self.sent.set(n + 1);
            let tag = format!("u{}.{n}", self.local.port());
            let mut payload = format!("{tag} ").into_bytes();
            payload.resize(len.max(payload.len()), b'x');
            self.sock
                .send_to(&payload, to)
                .with_context(|| format!("send to {to}"))?;
            let deadline = Instant::now() + timeout;
            loop {
                match self.sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if let Ok(Answer::Echo(echo)) = Answer::parse(&text) {
                            if echo.tag == tag {
                                return Ok(Some(Reply6 { from, echo }));
                            }
                        }
                        continue; // an earlier try's answer
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::ConnectionRefused
                        ) => {}
                    Err(e) => return Err(e).context("recv"),
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let mut pfd = libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = (deadline - now).as_millis().clamp(1, 10_000) as libc::c_int;
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
        }
        Ok(None)
    }
}

/// ESP over IPv6 from one client address (see [`super::raw`] for the lab's ESP).
#[derive(Debug)]
pub struct Esp6Probe {
    raw: RawSocket6,
    local: Ipv6Addr,
    seq: Cell<u32>,
}

impl Esp6Probe {
    pub fn bind(addr: Ipv6Addr) -> Result<Self> {
        let raw = RawSocket6::new(IPPROTO_ESP)?;
        raw.bind(addr)?;
        Ok(Self {
            raw,
            local: addr,
            seq: Cell::new(1),
        })
    }

    /// Send an ESP packet of `len` bytes (header included) to `to` and wait up to `timeout`
    /// for the echo; resend up to `tries` times. The reply's `from` has port 0.
    pub fn ask(
        &self,
        to: Ipv6Addr,
        len: usize,
        tries: u32,
        timeout: Duration,
    ) -> Result<Option<Reply6>> {
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
                match Answer::parse(&String::from_utf8_lossy(text)) {
                    Ok(Answer::Echo(echo)) if echo.tag == tag => {
                        return Ok(Some(Reply6 {
                            from: SocketAddr::new(from.into(), 0),
                            echo,
                        }))
                    }
                    _ => continue,
                }
            }
        }
        Ok(None)
    }
}

/// One TCP exchange from `local` to `to`: connect, send a line with a tag, read the
/// responder's line. `Ok(None)`: no connection or no answer within `timeout` per try, after
/// `tries` tries.
pub fn tcp_ask(
    local: IpAddr,
    to: SocketAddr,
    tries: u32,
    timeout: Duration,
) -> Result<Option<Reply6>> {
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
                return Ok(Some(Reply6 {
                    from: stream.peer_addr()?,
                    echo,
                }));
            }
        }
    }
    Ok(None)
}

/// Send one UDP datagram from `src` to `dst` over IPv6 with a deliberately wrong checksum,
/// through a raw socket of the calling thread's namespace (the kernel leaves a raw UDP
/// socket's checksum alone unless `IPV6_CHECKSUM` asks). The receiver must count it in
/// `Udp6InCsumErrors`: proof that checksums are really verified there.
pub fn send_bad_checksum6(src: SocketAddrV6, dst: SocketAddrV6) -> Result<()> {
    let payload = b"bad checksum";
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(udp_len as usize);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // RFC 8200 §8.1 pseudo-header: addresses, upper-layer length, next header.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&udp);
    let good = lb_common::csum::checksum(&pseudo).to_ne_bytes();
    let bad = if good == [0xde, 0xad] {
        [0xbe, 0xef]
    } else {
        [0xde, 0xad]
    };
    udp[6..8].copy_from_slice(&bad);
    let raw = RawSocket6::new(libc::IPPROTO_UDP)?;
    raw.bind(*src.ip())?;
    raw.send_to(&udp, *dst.ip())
}

/// `/proc/net/snmp6` of the calling thread's namespace, as (name, value) pairs
/// (`Udp6InCsumErrors 0`, one per line).
pub fn snmp6() -> Result<Vec<(String, i64)>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp6").context("read snmp6")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect())
}
