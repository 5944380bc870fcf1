//! A spoofed-source flood on the clients' segment: pre-built Ethernet frames sent in a tight
//! loop (`sendmmsg` on `AF_PACKET` sockets, one per thread) from a namespace of its own.
//!
//! Every source address sends two frames per pass: an IKE_SA_INIT-shaped datagram to VIP:500
//! (28-byte IKE header, random initiator SPI, responder SPI 0 — what a new client's first
//! message looks like) and an ESP-in-UDP datagram to VIP:4500 with a random SPI (what an
//! established client's bulk traffic looks like). The flooder cannot receive anything sent to
//! those addresses: it can never echo what a backend answered, so it can only ever make
//! *new-client* state.
//!
//! [`attach_macvlan`] puts the flooder on an existing link as a host of its own (a macvlan of
//! the router's uplink moved into the flood namespace): its frames reach the gateway exactly as
//! the router's do, without crossing the router's stack (no forwarding, no conntrack in the
//! way), so the gateway sees as many as the machine can make.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use etherparse::PacketBuilder;

use super::NetNs;

/// IKE header (RFC 7296 §3.1) length: what the flood's IKE_SA_INIT carries and nothing more.
pub const IKE_HEADER: usize = 28;
/// Payload of a flood ESP-in-UDP datagram: SPI, sequence number, 16 bytes of "ciphertext".
pub const ESP_PAYLOAD: usize = 24;
/// Frames per `sendmmsg` call.
const BATCH: usize = 256;

/// What to send.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    /// Source addresses `first_source`, `first_source + 1`, … (`sources` of them).
    pub first_source: Ipv4Addr,
    pub sources: u32,
    /// Destination (the VIP).
    pub dst: Ipv4Addr,
    /// The gateway's MAC on the segment.
    pub dst_mac: [u8; 6],
    /// The flooder's own MAC.
    pub src_mac: [u8; 6],
    /// Sending threads (one socket each); sources are split between them.
    pub threads: usize,
    /// Seed of the random SPIs (xorshift), so a failing run can be repeated.
    pub seed: u64,
}

/// A running flood ([`Flood::start`]); [`Flood::stop`] ends it and says what it sent.
pub struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Tally>>>,
    started: Instant,
    spec: FloodSpec,
}

/// One thread's count.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    /// Frames the kernel took (`sendmmsg` counted them).
    sent: u64,
    /// `sendmmsg` calls refused (ENOBUFS and the like; the batch is retried).
    errors: u64,
    /// Distinct sources whose frames were all sent at least once.
    sources: u64,
    /// Completed passes over this thread's sources.
    passes: u64,
}

/// What a flood sent.
#[derive(Clone, Debug)]
pub struct FloodReport {
    /// Frames sent (IKE and ESP together).
    pub frames: u64,
    /// IKE_SA_INIT frames among them (the rest are ESP-in-UDP).
    pub ike_frames: u64,
    /// Refused `sendmmsg` calls (retried).
    pub errors: u64,
    /// Distinct source addresses that sent at least one IKE and one ESP frame.
    pub sources: u64,
    /// Fewest complete passes over its sources any thread made.
    pub min_passes: u64,
    pub elapsed: Duration,
    pub threads: usize,
}

impl FloodReport {
    /// Frames per second.
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} frames ({} IKE_SA_INIT, {} ESP-in-UDP) from {} spoofed sources in {:.2?} = {:.0} \
             frames/s on {} threads ({} full passes at least, {} refused sendmmsg calls)",
            self.frames,
            self.ike_frames,
            self.frames - self.ike_frames,
            self.sources,
            self.elapsed,
            self.rate(),
            self.threads,
            self.min_passes,
            self.errors
        )
    }
}

/// A macvlan of `lower` (a link in `host`) named `name`, moved into `ns` and up: a host of its
/// own on `lower`'s segment. Returns its MAC. It disappears with either namespace.
pub fn attach_macvlan(host: &NetNs, lower: &str, ns: &NetNs, name: &str) -> Result<[u8; 6]> {
    host.ip(&[
        "link", "add", "link", lower, "name", name, "type", "macvlan", "mode", "private",
    ])?;
    host.ip(&["link", "set", name, "netns", ns.name()])?;
    ns.ip(&["link", "set", name, "up"])?;
    link_mac(ns, name)
}

/// The MAC address of `ifname` in `ns`.
pub fn link_mac(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let link = ns.link(ifname)?;
    let text = link["address"]
        .as_str()
        .with_context(|| format!("{}: {ifname} has no address", ns.name()))?;
    parse_mac(text)
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("not a MAC: {text}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("not a MAC: {text}"))
}

/// xorshift64*: fast, seedable, good enough for SPIs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The two frames of one source: IKE_SA_INIT to 500, ESP-in-UDP to 4500 (real IPv4 and UDP
/// checksums).
pub fn source_frames(
    spec: &FloodSpec,
    src: Ipv4Addr,
    rng: &mut impl FnMut() -> u64,
) -> [Vec<u8>; 2] {
    let mut ike = [0u8; IKE_HEADER];
    let spi_i = rng().max(1);
    ike[0..8].copy_from_slice(&spi_i.to_be_bytes());
    // Responder SPI 0 (bytes 8..16), next payload SA (33), version 2.0, IKE_SA_INIT (34),
    // flags: initiator; message ID 0; length.
    ike[16] = 33;
    ike[17] = 0x20;
    ike[18] = 34;
    ike[19] = 0x08;
    ike[24..28].copy_from_slice(&(IKE_HEADER as u32).to_be_bytes());
    let mut esp = [0u8; ESP_PAYLOAD];
    let r = rng();
    // SPI: never 0 (the non-ESP marker) nor 1..=255 (reserved).
    let spi = ((r >> 32) as u32).max(256);
    esp[0..4].copy_from_slice(&spi.to_be_bytes());
    esp[4..8].copy_from_slice(&((r as u32) | 1).to_be_bytes());
    let fill = rng().to_be_bytes();
    esp[8..16].copy_from_slice(&fill);
    esp[16..24].copy_from_slice(&fill);
    let frame = |port: u16, payload: &[u8]| {
        let b = PacketBuilder::ethernet2(spec.src_mac, spec.dst_mac)
            .ipv4(src.octets(), spec.dst.octets(), 64)
            .udp(port, port);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).expect("write to Vec");
        out
    };
    [frame(500, &ike), frame(4500, &esp)]
}

/// An `AF_PACKET` socket in the calling thread's namespace that sends on `ifname` as is
/// (`PACKET_QDISC_BYPASS`: straight to the driver).
fn packet_socket(ifname: &str) -> Result<(OwnedFd, i32)> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: plain syscalls on values owned here.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        ensure!(ifindex != 0, "no interface {ifname}");
        // Protocol 0: this socket receives nothing.
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        ensure!(
            fd >= 0,
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let _ = libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
        let buf: libc::c_int = 8 << 20;
        let _ = libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&buf as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        ensure!(
            rc == 0,
            "bind AF_PACKET to {ifname}: {}",
            std::io::Error::last_os_error()
        );
        Ok((fd, ifindex as i32))
    }
}

impl Flood {
    /// Build every frame, open one socket per thread on `ifname` in `ns`, and start sending.
    pub fn start(ns: &NetNs, ifname: &str, spec: FloodSpec) -> Result<Self> {
        ensure!(spec.threads >= 1 && spec.sources >= 1, "nothing to send");
        let first = u32::from(spec.first_source);
        ensure!(
            first.checked_add(spec.sources - 1).is_some(),
            "source range wraps"
        );
        let mut rng = Rng(spec.seed | 1);
        let mut next = || rng.next();
        // Thread t sends sources t, t + threads, …: disjoint, interleaved.
        let mut per_thread: Vec<Vec<Vec<u8>>> = vec![Vec::new(); spec.threads];
        for i in 0..spec.sources {
            let [ike, esp] = source_frames(&spec, Ipv4Addr::from(first + i), &mut next);
            let frames = &mut per_thread[i as usize % spec.threads];
            frames.push(ike);
            frames.push(esp);
        }
        let sockets = ns.run(|| {
            (0..spec.threads)
                .map(|_| packet_socket(ifname))
                .collect::<Result<Vec<_>>>()
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = sockets
            .into_iter()
            .zip(per_thread)
            .map(|((fd, _), frames)| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || send_loop(&fd, &frames, &stop))
            })
            .collect();
        Ok(Self {
            stop,
            threads,
            started,
            spec,
        })
    }

    /// How long it has been sending.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stop every thread and report.
    pub fn stop(self) -> Result<FloodReport> {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut total = Tally::default();
        let mut min_passes = u64::MAX;
        for t in self.threads {
            let tally = match t.join() {
                Ok(r) => r?,
                Err(_) => bail!("a flood thread panicked"),
            };
            total.sent += tally.sent;
            total.errors += tally.errors;
            total.sources += tally.sources;
            min_passes = min_passes.min(tally.passes);
        }
        Ok(FloodReport {
            frames: total.sent,
            // Frames go out in (IKE, ESP) pairs, IKE first.
            ike_frames: total.sent.div_ceil(2),
            errors: total.errors,
            sources: total.sources.min(u64::from(self.spec.sources)),
            min_passes,
            elapsed,
            threads: self.spec.threads,
        })
    }
}

/// Send `frames` round and round in batches until `stop`.
fn send_loop(fd: &OwnedFd, frames: &[Vec<u8>], stop: &AtomicBool) -> Result<Tally> {
    let mut tally = Tally::default();
    if frames.is_empty() {
        return Ok(tally);
    }
    let mut iov: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr is "no name, no control"; only the iovec is set below.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut pos = 0usize;
    let mut first_pass = true;
    while !stop.load(Ordering::Relaxed) {
        let n = BATCH.min(frames.len() - pos);
        for (k, m) in msgs[..n].iter_mut().enumerate() {
            m.msg_hdr.msg_iov = &mut iov[pos + k];
            m.msg_hdr.msg_iovlen = 1;
            m.msg_len = 0;
        }
        // SAFETY: `msgs[..n]` point into `iov`, which points into `frames`: all alive here.
        let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    tally.errors += 1;
                    thread::yield_now();
                    continue;
                }
                _ => return Err(e).context("sendmmsg on the flood socket"),
            }
        }
        let sent = rc as usize;
        tally.sent += sent as u64;
        pos += sent;
        if first_pass {
            // Pairs (IKE, ESP) of one source each.
            tally.sources = (pos / 2) as u64;
        }
        if pos >= frames.len() {
            pos = 0;
            tally.passes += 1;
            first_pass = false;
        }
    }
    Ok(tally)
}

/// Sends `frames` once each, as they are, out of `ifname` in `ns` (one spoofed frame at a
/// time, for tests that forge a single packet).
pub fn send_frames(ns: &NetNs, ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    let ifname = ifname.to_string();
    let frames = frames.to_vec();
    ns.run(move || -> Result<()> {
        let (fd, _) = packet_socket(&ifname)?;
        for f in &frames {
            // SAFETY: a bound AF_PACKET socket and a buffer owned here.
            let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            ensure!(
                n == f.len() as isize,
                "send on {ifname}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};

    #[test]
    fn frames_are_ike_sa_init_and_esp_in_udp_with_good_checksums() {
        let spec = FloodSpec {
            first_source: Ipv4Addr::new(198, 18, 0, 1),
            sources: 1,
            dst: Ipv4Addr::new(203, 0, 113, 10),
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            threads: 1,
            seed: 7,
        };
        let mut rng = Rng(7);
        let [ike, esp] = source_frames(&spec, spec.first_source, &mut || rng.next());
        for (frame, port, len) in [(&ike, 500, IKE_HEADER), (&esp, 4500, ESP_PAYLOAD)] {
            let p = SlicedPacket::from_ethernet(frame).unwrap();
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (port, port));
            assert_eq!(udp.payload().len(), len);
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4")
            };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            let udp_h = udp.to_header();
            assert_eq!(
                udp_h.checksum,
                udp_h.calc_checksum_ipv4(&h, udp.payload()).unwrap()
            );
        }
        let p = SlicedPacket::from_ethernet(&ike).unwrap();
        let Some(TransportSlice::Udp(udp)) = p.transport else {
            unreachable!()
        };
        let hdr = udp.payload();
        assert_ne!(&hdr[0..8], &[0; 8], "initiator SPI set");
        assert_eq!(&hdr[8..16], &[0; 8], "responder SPI 0");
        assert_eq!((hdr[17], hdr[18], hdr[19]), (0x20, 34, 0x08));
        assert_eq!(u32::from_be_bytes(hdr[24..28].try_into().unwrap()), 28);
        assert_eq!(
            parse_mac("02:0a:ff:00:10:9b").unwrap(),
            [2, 10, 255, 0, 16, 155]
        );
    }
}
