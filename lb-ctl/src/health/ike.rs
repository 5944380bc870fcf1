//! The IKE prober: one IKE_SA_INIT request to the backend's UDP 500, and the strict reading
//! of the answer ([`message`]). A ping says the server is up, not that its IKE service is:
//! a client sent to a server whose charon (or RRAS) is dead fails with Windows error 809.
//!
//! * **Socket**: a fresh unprivileged UDP socket per probe, on an ephemeral port of the
//!   wildcard address (the kernel picks the source address and interface from the route to
//!   the backend, as for the ICMP probe), `connect()`ed to `backend:500`: the kernel then
//!   delivers only that peer's datagrams, and an ICMP port unreachable from it comes back as
//!   `ECONNREFUSED` on the next receive (udp(7)) — the IKE service is not listening.
//! * **One answer**: the first datagram decides. A well-formed response to our request
//!   ([`message::Alive`]) is a success; anything else from the backend's port 500 (another
//!   SPI, not a response, truncated, malformed) is an error with the reason. No datagram
//!   within the timeout is a timeout.
//! * **Nothing is completed**: the probe never sends IKE_AUTH, so a responder that accepts
//!   keeps one half-open IKE SA per probe until its own timeout (strongSwan's
//!   `half_open_timeout`, 30 s by default; docs/configuration.md says what that adds up to).
//!   Responders that answer with a notify keep nothing.
//! * **Unpredictable**: SPI, KE value and nonce are random per probe (getrandom(2)); the
//!   answer must carry the SPI.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;
use tracing::debug;

use super::{icmp::random_bytes, Probe, ProbeKind, ProbeOutcome, Prober};

mod message;

pub use message::IKE_PORT;
use message::{KE_LEN, NONCE_LEN, SPI_LEN};

/// Receive buffer: larger than any datagram, so a truncated read cannot pass for a message.
const RECV_BUF: usize = 65_536;

/// Sends IKE_SA_INIT health checks (see the module doc).
pub struct IkeProber {
    port: u16,
}

impl IkeProber {
    /// A prober of UDP [`IKE_PORT`].
    pub fn new() -> Self {
        Self { port: IKE_PORT }
    }

    /// A prober of another port (tests run their responders on unprivileged ports).
    #[cfg(test)]
    fn with_port(port: u16) -> Self {
        Self { port }
    }
}

impl Default for IkeProber {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober for IkeProber {
    fn probe(
        &self,
        _kind: ProbeKind,
        addr: IpAddr,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Probe> + Send {
        let peer = SocketAddr::new(addr, self.port);
        async move {
            let start = Instant::now();
            let (outcome, error) = match tokio::time::timeout(timeout, exchange(peer)).await {
                Err(_) => (ProbeOutcome::Timeout, None),
                Ok(Ok(alive)) => {
                    debug!(backend = %addr, "IKE health check: {alive}");
                    (ProbeOutcome::Success, None)
                }
                Ok(Err(e)) => (ProbeOutcome::Error, Some(e)),
            };
            if let Some(e) = &error {
                debug!(backend = %addr, "IKE health check failed: {e}");
            }
            Probe {
                outcome,
                duration: start.elapsed().min(timeout),
                error,
            }
        }
    }
}

/// One request and its answer; `Err` says in one line what went wrong.
async fn exchange(peer: SocketAddr) -> Result<message::Alive, String> {
    let mut spi = [0u8; SPI_LEN];
    let mut ke = [0u8; KE_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    for buf in [&mut spi[..], &mut ke[..], &mut nonce[..]] {
        random_bytes(buf).map_err(|e| format!("no random bytes for the IKE probe: {e}"))?;
    }
    let request = message::sa_init_request(spi, &ke, &nonce);
    let local: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("opening a UDP socket for the IKE probe: {e}"))?;
    socket
        .connect(peer)
        .await
        .map_err(|e| format!("connecting the IKE probe's socket to {peer}: {e}"))?;
    socket
        .send(&request)
        .await
        .map_err(|e| sock_error(peer, "sending IKE_SA_INIT", &e))?;
    let mut buf = vec![0u8; RECV_BUF];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(|e| sock_error(peer, "receiving the IKE_SA_INIT response", &e))?;
    message::classify(spi, &buf[..n]).map_err(|why| format!("from {peer}: {why}"))
}

/// One line for a socket error; a refused connection is the ICMP port unreachable of a host
/// whose IKE service does not listen.
fn sock_error(peer: SocketAddr, doing: &str, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ECONNREFUSED) {
        format!("{doing}: ICMP port unreachable from {peer}: nothing listens there ({e})")
    } else {
        format!("{doing} ({peer}): {e}")
    }
}

#[cfg(test)]
mod tests;
