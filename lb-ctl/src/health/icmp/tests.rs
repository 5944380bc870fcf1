use super::receive::dispatch;
use super::socket::{random_bytes, socket};
use super::*;
use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 20);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    h[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(icmp);
    h
}

/// The backend's echo reply to `e` (the request with type 0 and a fixed checksum).
fn reply(e: &Expected) -> Vec<u8> {
    let mut m = packet::echo_request(Family::V4, e.ident, e.seq, &e.payload);
    m[0] = packet::ECHO_REPLY_V4;
    m[2..4].copy_from_slice(&[0, 0]);
    let sum = packet::checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(BACKEND, GATEWAY, &m)
}

fn unreachable(e: &Expected) -> Vec<u8> {
    let request = packet::echo_request(Family::V4, e.ident, e.seq, &e.payload);
    let mut m = vec![3, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&ipv4(GATEWAY, BACKEND, &request));
    let sum = packet::checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(ROUTER, GATEWAY, &m)
}

fn waiting_for(e: &Expected) -> (Waiting, oneshot::Receiver<Answer>) {
    let (tx, rx) = oneshot::channel();
    let w = Waiting::default();
    w.lock().unwrap().insert(
        e.seq,
        Waiter {
            expected: e.clone(),
            tx,
        },
    );
    (w, rx)
}

fn expected() -> Expected {
    let mut payload = PAYLOAD_PREFIX.to_vec();
    payload.extend_from_slice(&[7; TOKEN_LEN]);
    Expected {
        addr: BACKEND.into(),
        ident: 0x5a5a,
        seq: 0xfffe,
        payload,
    }
}

#[test]
fn forged_replies_leave_the_probe_waiting_for_the_real_one() {
    let e = expected();
    let (waiting, mut rx) = waiting_for(&e);
    let mut forged = e.clone();
    forged.payload[PAYLOAD_PREFIX.len()] ^= 1;
    dispatch(
        Family::V4,
        Kind::Raw,
        &waiting,
        BACKEND.into(),
        &reply(&forged),
    );
    let mut other = e.clone();
    other.ident = 0x1234;
    dispatch(
        Family::V4,
        Kind::Raw,
        &waiting,
        BACKEND.into(),
        &reply(&other),
    );
    assert!(rx.try_recv().is_err(), "a forged reply answered the probe");
    assert_eq!(waiting.lock().unwrap().len(), 1);
    dispatch(Family::V4, Kind::Raw, &waiting, BACKEND.into(), &reply(&e));
    assert_eq!(rx.try_recv(), Ok(Ok(())));
    assert!(waiting.lock().unwrap().is_empty());
}

#[test]
fn host_unreachable_ends_the_probe_with_the_reason() {
    let e = expected();
    let (waiting, mut rx) = waiting_for(&e);
    dispatch(
        Family::V4,
        Kind::Raw,
        &waiting,
        ROUTER.into(),
        &unreachable(&e),
    );
    assert_eq!(
        rx.try_recv(),
        Ok(Err(
            "ICMP destination unreachable (host unreachable) from 10.0.0.254".to_owned()
        ))
    );
    // A reply arriving afterwards finds nobody.
    dispatch(Family::V4, Kind::Raw, &waiting, BACKEND.into(), &reply(&e));
}

#[test]
fn probes_differ_in_token_and_sequence() {
    let mut a = [0u8; TOKEN_LEN];
    let mut b = [0u8; TOKEN_LEN];
    random_bytes(&mut a).unwrap();
    random_bytes(&mut b).unwrap();
    assert_ne!(a, b, "two random tokens alike");
}

/// Loads an nftables ruleset in the calling thread's network namespace; `false` (and
/// why) when `nft` is missing or refuses.
fn nft(ruleset: &str) -> bool {
    use std::io::Write as _;
    let child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("note: no nft ({e})");
            return false;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        eprintln!("note: nft failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// The ping-socket path (what a daemon without CAP_NET_RAW uses): in a private network
/// namespace whose `ping_group_range` admits root, on a thread of its own. Echo replies
/// make it succeed; an nftables rule that rejects our echo requests with host
/// (address) unreachable makes it fail at once with that reason, read from the socket's
/// error queue. Root only.
#[test]
fn a_ping_socket_gets_replies_and_icmp_errors() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP a_ping_socket_gets_replies_and_icmp_errors: needs root (a private network namespace)");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: moves only this thread into a fresh network namespace.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare: {}",
            io::Error::last_os_error()
        );
        // /proc/sys/net follows the opening thread's namespace.
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0").unwrap();
        let lo = std::ffi::CString::new("lo").unwrap();
        let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP).unwrap();
        // SAFETY: ifreq is plain old data; SIOCGIFFLAGS/SIOCSIFFLAGS read and write it.
        unsafe {
            let mut ifr: libc::ifreq = mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(lo.as_bytes()) {
                *d = *s as libc::c_char;
            }
            assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr), 0);
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr), 0);
        }
        let fd6 = socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6).ok();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pinger = Pinger::start(Family::V4, Kind::Ping, fd).expect("ping socket");
            assert_ne!(pinger.ident, 0);
            let v6 = fd6.map(|fd| Arc::new(Pinger::start(Family::V6, Kind::Ping, fd).unwrap()));
            let prober = IcmpProber {
                v4: Arc::new(pinger),
                v6,
            };
            let timeout = Duration::from_secs(2);
            let mut targets = vec![IpAddr::from(Ipv4Addr::LOCALHOST)];
            if prober.v6.is_some() {
                targets.push(Ipv6Addr::LOCALHOST.into());
            } else {
                eprintln!("note: no ICMPv6 ping socket, ::1 not probed");
            }
            for &t in &targets {
                for _ in 0..2 {
                    let p = prober.probe(ProbeKind::Icmp, t, timeout).await;
                    assert_eq!(p.outcome, ProbeOutcome::Success, "{t}: {p:?}");
                }
            }
            if !nft("table ip ikelb_test {\n\
                   chain inp {\n\
                     type filter hook input priority 0; policy accept;\n\
                     icmp type echo-request reject with icmp type host-unreachable\n\
                   }\n\
                 }\n\
                 table ip6 ikelb_test {\n\
                   chain inp {\n\
                     type filter hook input priority 0; policy accept;\n\
                     icmpv6 type echo-request reject with icmpv6 type addr-unreachable\n\
                   }\n\
                 }\n")
            {
                eprintln!("note: ICMP errors on ping sockets not tested");
                return;
            }
            let reasons = [
                "ICMP destination unreachable (host unreachable) from 127.0.0.1",
                "ICMPv6 destination unreachable (address unreachable) from ::1",
            ];
            for (&t, reason) in targets.iter().zip(reasons) {
                let p = prober.probe(ProbeKind::Icmp, t, timeout).await;
                assert_eq!(p.outcome, ProbeOutcome::Error, "{t}: {p:?}");
                assert_eq!(p.error.as_deref(), Some(reason));
                assert!(p.duration < timeout, "{p:?}");
            }
            assert!(prober.v4.waiting.lock().unwrap().is_empty());
        });
    })
    .join()
    .expect("the namespace thread");
}

/// The real socket against the kernel's own echo replies on loopback. Needs a raw socket
/// (root, CAP_NET_RAW) or a ping socket (ping_group_range); says why when it has neither.
#[tokio::test]
async fn loopback_answers_real_probes() {
    let prober = match IcmpProber::new() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIP loopback_answers_real_probes: {e}");
            return;
        }
    };
    let timeout = Duration::from_secs(2);
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(prober.v4.seq.load(Ordering::Relaxed));
        let p = prober
            .probe(ProbeKind::Icmp, Ipv4Addr::LOCALHOST.into(), timeout)
            .await;
        assert_eq!(p.outcome, ProbeOutcome::Success, "{p:?}");
    }
    assert_eq!(seqs[1], seqs[0].wrapping_add(1));
    assert!(prober.v4.waiting.lock().unwrap().is_empty());
    match &prober.v6 {
        Some(v6) if std::net::UdpSocket::bind("[::1]:0").is_ok() => {
            let p = prober
                .probe(ProbeKind::Icmp, Ipv6Addr::LOCALHOST.into(), timeout)
                .await;
            assert_eq!(p.outcome, ProbeOutcome::Success, "{p:?}");
            assert!(v6.waiting.lock().unwrap().is_empty());
        }
        _ => eprintln!("note: no IPv6 loopback, ::1 not probed"),
    }
}
