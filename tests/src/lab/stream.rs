//! A paced stream of datagrams through the VIPs, each answered by a backend's
//! `ikelb-responder`, for the tests that change the daemon under traffic (restarts, upgrades,
//! reordered configs): every datagram's answer is awaited, and the [`Tally`] says how many
//! were lost, answered wrongly (not from the VIP, or not showing the client's own address) and
//! which clients were answered by more than one backend.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{patience, responder::Answer, NetNs, BACKEND_PORTS};

/// How long a reply may take before its datagram counts as lost (scaled by
/// [`patience`] on an emulated kernel).
pub const REPLY_GRACE: Duration = Duration::from_secs(2);

/// What the sender saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub answered: u64,
    /// Answers not from the VIP or not showing the client's own address.
    pub wrong: u64,
    /// Clients answered by more than one backend.
    pub moved: Vec<(Ipv4Addr, Vec<String>)>,
    /// Datagrams never answered: (sequence number, seconds since start).
    pub lost: Vec<(u64, f64)>,
    pub per_backend: BTreeMap<String, u64>,
}

/// A running stream: [`Stream::stop`] ends it and returns its tally.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<Tally>,
}

impl Stream {
    /// Sends `rate` datagrams a second, round-robin from `clients` (address, the VIP it talks
    /// to), alternately to the first two service ports, from a thread in namespace `ns`.
    pub fn start(ns: &NetNs, clients: Vec<(Ipv4Addr, Ipv4Addr)>, rate: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let (ns, stop) = (ns.name().to_owned(), Arc::clone(&stop));
            thread::spawn(move || send_until(&ns, &clients, rate, &stop))
        };
        Self { stop, sender }
    }

    /// Stops sending, waits [`REPLY_GRACE`] at most for the last answers, and tallies.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.sender.join().expect("the sender thread panicked")
    }
}

/// Joins the network namespace `name` (this thread only).
fn enter_netns(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).expect("open the namespace handle");
    // SAFETY: setns on a valid fd; CLONE_NEWNET moves only the calling thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
}

fn send_until(
    netns: &str,
    clients: &[(Ipv4Addr, Ipv4Addr)],
    rate: u64,
    stop: &AtomicBool,
) -> Tally {
    enter_netns(netns);
    let socks: Vec<UdpSocket> = clients
        .iter()
        .map(|&(c, _)| {
            let s = UdpSocket::bind((c, 0)).expect("bind client");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut tally = Tally::default();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); clients.len()];
    // seq → (client index, sent at)
    let mut outstanding: BTreeMap<u64, (usize, Instant)> = BTreeMap::new();
    let start = Instant::now();
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let mut next_send = start;
    let mut stopped_at: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(now);
        }
        match stopped_at {
            Some(t) if outstanding.is_empty() || now - t > patience(REPLY_GRACE) => break,
            Some(_) => {}
            None => {
                while next_send <= now {
                    let seq = tally.sent;
                    let i = (seq % clients.len() as u64) as usize;
                    let port = BACKEND_PORTS[(seq / clients.len() as u64 % 2) as usize];
                    let mut payload = format!("r{seq} ").into_bytes();
                    payload.resize(120, b'x');
                    socks[i]
                        .send_to(&payload, SocketAddrV4::new(clients[i].1, port))
                        .expect("send");
                    outstanding.insert(seq, (i, now));
                    tally.sent += 1;
                    next_send += period;
                }
            }
        }
        // Wait for answers until the next send is due.
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(200));
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().max(1) as libc::c_int,
            )
        };
        for (i, s) in socks.iter().enumerate() {
            loop {
                let (n, from) = match s.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                    Err(e) => panic!("recv: {e}"),
                };
                let Ok(Answer::Echo(echo)) = Answer::parse(&String::from_utf8_lossy(&buf[..n]))
                else {
                    continue;
                };
                let Some(seq) = echo
                    .tag
                    .strip_prefix('r')
                    .and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                if outstanding.remove(&seq).is_none() {
                    continue; // a duplicate
                }
                tally.answered += 1;
                let from_vip = matches!(from, SocketAddr::V4(a) if *a.ip() == clients[i].1);
                if !from_vip || echo.seen != IpAddr::V4(clients[i].0) {
                    tally.wrong += 1;
                }
                *tally.per_backend.entry(echo.backend.clone()).or_default() += 1;
                if !seen[i].contains(&echo.backend) {
                    seen[i].push(echo.backend);
                }
            }
        }
    }
    tally.lost = outstanding
        .iter()
        .map(|(&seq, &(_, at))| (seq, (at - start).as_secs_f64()))
        .collect();
    tally.moved = clients
        .iter()
        .zip(seen)
        .filter(|(_, b)| b.len() > 1)
        .map(|(&(c, _), b)| (c, b))
        .collect();
    tally
}
