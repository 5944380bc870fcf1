//! IPv4 raw sockets for ESP (IP protocol 50): the lab kernel has no `INET_ESP`, so a raw socket
//! is the only receiver of ESP, and it lets the responder answer ESP with ESP — enough to see
//! that ikelb steers a client's ESP to its backend and rewrites the replies. Payloads are not
//! real ESP (no SA, no encryption): an 8-byte header (SPI, sequence number, RFC 4303 §2)
//! followed by text, which is all a load balancer may look at anyway.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// IP protocol number of ESP (RFC 4303).
pub const IPPROTO_ESP: i32 = 50;
/// SPI (RFC 4303 §2.1) the lab's ESP packets carry; any non-zero value would do.
pub const LAB_SPI: u32 = 0x1ce1_b000;
/// Length of the ESP header: SPI and sequence number.
pub const ESP_HEADER: usize = 8;

/// A raw IPv4 socket for one protocol. Received buffers start with the IPv4 header (raw(7));
/// sent ones do not (the kernel builds it).
#[derive(Debug)]
pub struct RawSocket(OwnedFd);

impl RawSocket {
    pub fn new(protocol: i32) -> Result<Self> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, protocol) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("raw socket for protocol {protocol}"));
        }
        // SAFETY: fd is a fresh socket nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Bind to a local address: outgoing packets take it as source, and only packets to it are
    /// received.
    pub fn bind(&self, addr: Ipv4Addr) -> Result<()> {
        let sin = sockaddr(addr);
        // SAFETY: a valid sockaddr_in of the length passed.
        let rc = unsafe {
            libc::bind(
                self.0.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("bind {addr}"));
        }
        Ok(())
    }

    /// Send `payload` as the body of an IPv4 packet to `dst`.
    pub fn send_to(&self, payload: &[u8], dst: Ipv4Addr) -> Result<()> {
        let sin = sockaddr(dst);
        // SAFETY: buffer and address valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&sin as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("send to {dst}"));
        }
        Ok(())
    }

    /// Receive one packet, waiting until `deadline` (`None`: forever). Returns the packet's
    /// source address and its body (after the IPv4 header), or `None` on timeout or signal.
    pub fn recv<'b>(
        &self,
        buf: &'b mut [u8],
        deadline: Option<Instant>,
    ) -> Result<Option<(Ipv4Addr, &'b [u8])>> {
        if !super::sock::wait_readable(&self.0, deadline)? {
            return Ok(None);
        }
        let flags = if deadline.is_some() {
            libc::MSG_DONTWAIT
        } else {
            0
        };
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                return Ok(None);
            }
            return Err(e).context("recv (raw)");
        }
        let packet = &buf[..n as usize];
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            bail!(
                "raw socket returned a non-IPv4 packet of {} bytes",
                packet.len()
            );
        }
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        Ok(Some((
            src,
            packet.get(ihl..).context("IHL beyond the packet")?,
        )))
    }
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// An ESP packet body: [`LAB_SPI`], `seq`, then `data`.
pub fn esp_packet(seq: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(ESP_HEADER + data.len());
    p.extend_from_slice(&LAB_SPI.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(data);
    p
}
