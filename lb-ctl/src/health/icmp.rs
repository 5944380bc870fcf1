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
//!
//! ## Modules
//!
//! * `icmp.rs` (this file): [`IcmpProber`], one `Pinger` per family, and a probe: its echo
//!   request sent, its entry among the probes waiting, its answer or timeout.
//! * `icmp/receive.rs`: the receiving task — messages and queued ICMP errors, each handed
//!   to the probe it is about (or to none).
//! * `icmp/socket.rs`: the sockets — raw or ping, the kernel filter, the bound identifier —
//!   and random numbers from getrandom(2).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, sync::oneshot, task::JoinHandle};
use tracing::debug;

use super::packet::{self, Expected, Family};
use super::{HealthError, Probe, ProbeKind, ProbeOutcome, Prober};

mod receive;
mod socket;

use receive::receive;
/// getrandom(2), also for the IKE probe's SPI, KE value and nonce.
pub(super) use socket::random_bytes;
use socket::{bind_ident, filter_raw, open_socket, random_u16, setsockopt};

/// Fixed start of every echo request's data (for whoever reads a packet capture); the random
/// token follows.
pub const PAYLOAD_PREFIX: &[u8] = b"ikelb health check ";
/// Random bytes per echo request.
pub const TOKEN_LEN: usize = 16;

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
        _kind: ProbeKind,
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

#[cfg(test)]
mod tests;
