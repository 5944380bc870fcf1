//! The prober against responders on loopback: a fake IKE responder that answers from a
//! script, a closed port, and one that never answers.

use std::net::{Ipv4Addr, UdpSocket as StdUdpSocket};

use super::message::{self, COOKIE, HEADER_LEN};
use super::*;

const TIMEOUT: Duration = Duration::from_secs(2);

/// A UDP socket on 127.0.0.1 that answers the first datagram it receives with
/// `answer(request)` (nothing when `None`); its port.
fn responder(answer: impl FnOnce(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> u16 {
    let sock = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = sock.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).expect("recv");
        if let Some(reply) = answer(&buf[..n]) {
            sock.send_to(&reply, from).expect("send");
        }
        // Keep the port bound (no port unreachable) until the probe is over.
        std::thread::sleep(TIMEOUT + Duration::from_millis(500));
    });
    port
}

/// N(COOKIE) answering `request` (its SPI), as a loaded strongSwan sends it.
fn cookie_for(request: &[u8]) -> Vec<u8> {
    let mut m = request[..8].to_vec();
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&[41, 0x20, 34, 0x20, 0, 0, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&[0, 0, 0, 28, 0, 0]);
    m.extend_from_slice(&COOKIE.to_be_bytes());
    m.extend_from_slice(&[0xc0; 20]);
    let len = (m.len() as u32).to_be_bytes();
    m[24..28].copy_from_slice(&len);
    assert_eq!(m.len(), HEADER_LEN + 28);
    m
}

async fn probe(port: u16) -> Probe {
    IkeProber::with_port(port)
        .probe(ProbeKind::Ike, Ipv4Addr::LOCALHOST.into(), TIMEOUT)
        .await
}

#[tokio::test]
async fn a_responder_that_answers_our_spi_is_alive() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = std::sync::Arc::clone(&seen);
    let port = responder(move |req| {
        seen2.lock().unwrap().extend_from_slice(req);
        Some(cookie_for(req))
    });
    let p = probe(port).await;
    assert_eq!(p.outcome, ProbeOutcome::Success, "{:?}", p.error);
    let req = seen.lock().unwrap().clone();
    assert_eq!(req.len(), 388, "the whole IKE_SA_INIT request arrived");
    assert_eq!(&req[8..16], &[0; 8], "responder SPI 0");
    assert_eq!((req[18], req[19]), (34, 0x08), "IKE_SA_INIT, Initiator");
}

#[tokio::test]
async fn two_probes_use_different_spis() {
    let mut spis = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = std::sync::mpsc::channel();
        let port = responder(move |req| {
            tx.send(req[..8].to_vec()).unwrap();
            Some(cookie_for(req))
        });
        assert!(probe(port).await.outcome.is_success());
        spis.push(rx.recv().unwrap());
    }
    assert_ne!(spis[0], spis[1]);
}

#[tokio::test]
async fn an_answer_with_another_spi_is_an_error() {
    let port = responder(|req| {
        let mut r = cookie_for(req);
        r[7] ^= 0xff;
        Some(r)
    });
    let p = probe(port).await;
    assert_eq!(p.outcome, ProbeOutcome::Error);
    let e = p.error.unwrap();
    assert!(e.contains("is not ours"), "{e}");
}

#[tokio::test]
async fn an_echo_of_the_request_is_an_error() {
    let port = responder(|req| Some(req.to_vec()));
    let p = probe(port).await;
    assert_eq!(p.outcome, ProbeOutcome::Error);
    assert!(p.error.unwrap().contains("not a response"));
}

#[tokio::test]
async fn a_closed_port_is_an_error_at_once() {
    // Bind and drop: a port nobody listens on (the kernel answers port unreachable).
    let port = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = probe(port).await;
    assert_eq!(p.outcome, ProbeOutcome::Error);
    let e = p.error.unwrap();
    assert!(e.contains("ICMP port unreachable"), "{e}");
}

#[tokio::test]
async fn ipv6_backends_are_probed_over_ipv6() {
    // A host without IPv6 on loopback cannot run this.
    let Ok(sock) = StdUdpSocket::bind((std::net::Ipv6Addr::LOCALHOST, 0)) else {
        return;
    };
    let port = sock.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).expect("recv");
        sock.send_to(&cookie_for(&buf[..n]), from).expect("send");
    });
    let p = IkeProber::with_port(port)
        .probe(
            ProbeKind::Ike,
            std::net::Ipv6Addr::LOCALHOST.into(),
            TIMEOUT,
        )
        .await;
    assert_eq!(p.outcome, ProbeOutcome::Success, "{:?}", p.error);
}

#[tokio::test]
async fn silence_is_a_timeout() {
    let port = responder(|_| None);
    let p = IkeProber::with_port(port)
        .probe(
            ProbeKind::Ike,
            Ipv4Addr::LOCALHOST.into(),
            Duration::from_millis(200),
        )
        .await;
    assert_eq!(p.outcome, ProbeOutcome::Timeout);
    assert_eq!(p.error, None);
}

#[test]
fn the_request_built_for_a_probe_is_well_formed() {
    let r = message::sa_init_request([1; 8], &[0; message::KE_LEN], &[0; message::NONCE_LEN]);
    assert_eq!(
        u32::from_be_bytes(r[24..28].try_into().unwrap()) as usize,
        r.len()
    );
}
