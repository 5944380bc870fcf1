use std::{
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
};

use tokio::sync::{mpsc, oneshot};

use super::client::call_with_limit;
use super::*;
use crate::health::HealthState;

#[test]
fn requests_round_trip_and_read_as_documented() {
    let add = Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: "10.0.0.14".parse().unwrap(),
        weight: 2,
        dry_run: false,
    };
    let json = serde_json::to_string(&add).unwrap();
    assert_eq!(
        json,
        r#"{"command":"backend_add","virtual_server":"aovpn","address":"10.0.0.14","weight":2}"#
    );
    assert_eq!(parse_request(json.as_bytes()).unwrap(), add);
    let rm = parse_request(
        br#"{"command":"backend_remove","virtual_server":"203.0.113.10","address":"10.0.0.12","drain":"10m"}"#,
    )
    .unwrap();
    assert_eq!(
        rm,
        Request::BackendRemove {
            virtual_server: "203.0.113.10".into(),
            address: "10.0.0.12".parse().unwrap(),
            drain: Some(Duration::from_secs(600)),
            dry_run: false
        }
    );
    assert_eq!(
        parse_request(br#"{"command":"backend_add","virtual_server":"a","address":"10.0.0.1"}"#)
            .unwrap(),
        Request::BackendAdd {
            virtual_server: "a".into(),
            address: "10.0.0.1".parse().unwrap(),
            weight: 1,
            dry_run: false
        }
    );
    assert_eq!(
        parse_request(br#"{"command":"status"}"#).unwrap(),
        Request::Status
    );
}

#[test]
fn malformed_requests_are_bad_requests() {
    for line in [
        &b"not json"[..],
        br#"{"command":"reboot"}"#,
        br#"{"command":"backend_add","virtual_server":"a","address":"10.0.0.300"}"#,
        br#"{"command":"backend_add","virtual_server":"a","address":"10.0.0.1","wieght":2}"#,
        br#"{"command":"backend_remove","virtual_server":"a","address":"10.0.0.1","drain":"soon"}"#,
        br#"{"command":"lookup"}"#,
    ] {
        let e = parse_request(line).unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::BadRequest,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn responses_are_ok_or_error_objects() {
    let r = Response::Error(ApiError::new(ErrorCode::UnknownVirtualServer, "no"));
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"error":{"code":"unknown_virtual_server","message":"no"}}"#
    );
    let r = Response::Ok(Reply::Backends { backends: vec![] });
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"ok":{"kind":"backends","backends":[]}}"#
    );
}

#[tokio::test]
async fn the_socket_is_0600_serves_requests_and_answers_bad_ones_itself() {
    let dir = std::env::temp_dir().join(format!("ikelb-api-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("sub/ctl.sock");
    let mut sock = ControlSocket::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(dir.join("sub"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    assert!(matches!(
        ControlSocket::bind(&path),
        Err(SocketError::InUse { .. })
    ));

    let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(4);
    let server = tokio::spawn(async move {
        sock.serve(tx).await;
        sock
    });
    let daemon = tokio::spawn(async move {
        while let Some((req, reply)) = rx.recv().await {
            assert_eq!(req, Request::BackendList);
            let _ = reply.send(Response::Ok(Reply::Backends { backends: vec![] }));
        }
    });
    let p = path.clone();
    let (good, bad) = tokio::task::spawn_blocking(move || {
        let good = call(&p, &Request::BackendList).unwrap();
        let stream = StdUnixStream::connect(&p).unwrap();
        (&stream).write_all(b"{\"command\":\"nope\"}\n").unwrap();
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).unwrap();
        (good, answer)
    })
    .await
    .unwrap();
    assert_eq!(good, Response::Ok(Reply::Backends { backends: vec![] }));
    assert!(
        bad.starts_with(r#"{"error":{"code":"bad_request""#),
        "{bad}"
    );

    daemon.abort();
    let _ = daemon.await;
    let sock = server.await.unwrap();
    drop(sock);
    assert!(!path.exists(), "socket file removed on drop");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A `backend list` of 8,000 backends is over 1 MiB (the old limit): read whole.
#[test]
fn the_client_reads_an_answer_over_one_mebibyte_and_refuses_one_over_its_limit() {
    let dir = std::env::temp_dir().join(format!("ikelb-api-big-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ctl.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let backends: Vec<BackendInfo> = (0..8000u32)
        .map(|i| BackendInfo {
            virtual_server: "aovpn".into(),
            address: IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1]),
            id: i + 1,
            weight: 1,
            state: "active".into(),
            health: HealthState::Up,
            probes: Vec::new(),
            next_hop: Some("02:00:00:00:00:0b on int".into()),
            drain_until: None,
            ring_slots: 13,
            clients: 1000,
            origin: "config".into(),
        })
        .collect();
    let reply = Response::Ok(Reply::Backends { backends });
    let mut line = serde_json::to_vec(&reply).unwrap();
    line.push(b'\n');
    let size = line.len();
    assert!(size > 1 << 20, "the answer is {size} bytes");
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (s, _) = listener.accept().unwrap();
            let mut req = String::new();
            BufReader::new(&s).read_line(&mut req).unwrap();
            assert_eq!(req, "{\"command\":\"backend_list\"}\n");
            // The client may close early (over its limit): ignore a broken pipe.
            let _ = (&s).write_all(&line);
        }
    });
    let got = call(&path, &Request::BackendList).unwrap();
    assert_eq!(got, reply, "8,000 backends, {size} bytes");
    let e = call_with_limit(&path, &Request::BackendList, 1 << 20).unwrap_err();
    assert!(matches!(e, ClientError::TooLong { limit, .. } if limit == 1 << 20));
    assert_eq!(
        e.to_string(),
        format!(
            "the daemon's answer on {} is longer than 1048576 bytes, lb-ctl's limit (MAX_REPLY in lb-ctl/src/api.rs)",
            path.display()
        )
    );
    server.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Serves `sock` with `limits`, answering every request with an empty backend list.
fn serve_empty(
    mut sock: ControlSocket,
    limits: Limits,
) -> (
    tokio::task::JoinHandle<ControlSocket>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(4);
    let server = tokio::spawn(async move {
        sock.serve_with(tx, limits).await;
        sock
    });
    let daemon = tokio::spawn(async move {
        while let Some((_, reply)) = rx.recv().await {
            let _ = reply.send(Response::Ok(Reply::Backends { backends: vec![] }));
        }
    });
    (server, daemon)
}

/// Blocks until the daemon closes `s` (EOF or reset); false when `limit` passes first.
fn closed_by_daemon(s: &StdUnixStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match (&*s).read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Two slots held by idle connections: a new command is still answered (the oldest
/// idle connection makes room); an idle connection is closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_lock_out_a_command() {
    let dir = std::env::temp_dir().join(format!("ikelb-api-bounds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("ctl.sock");
    let sock = ControlSocket::bind(&path).unwrap();
    let limits = Limits {
        max_connections: 2,
        idle_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_secs(5),
    };
    let (server, daemon) = serve_empty(sock, limits);
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        let first = StdUnixStream::connect(&p).unwrap();
        let second = StdUnixStream::connect(&p).unwrap();
        // Both slots idle: the command takes the first one's slot and is answered.
        let got = call(&p, &Request::BackendList).unwrap();
        assert_eq!(got, Response::Ok(Reply::Backends { backends: vec![] }));
        assert!(
            closed_by_daemon(&first, Duration::from_secs(10)),
            "the oldest idle connection was closed to make room"
        );
        assert!(crate::listen::EVICTED.with_label_values(&["control"]).get() >= 1);
        // The second one, idle past the timeout, is closed too.
        assert!(
            closed_by_daemon(&second, Duration::from_secs(10)),
            "an idle connection is closed after the idle timeout"
        );
    })
    .await
    .unwrap();
    daemon.abort();
    let _ = daemon.await;
    drop(server.await.unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SO_PEERCRED: a peer that is neither root nor the daemon's user gets one `forbidden`
/// line and nothing reaches the daemon. The socket's mode would stop it earlier; it is
/// opened up here so the credential check is what refuses. Root only (the child
/// switches to uid 65534).
#[test]
fn a_non_root_peer_is_refused_by_its_credentials() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP a_non_root_peer_is_refused_by_its_credentials: needs root to run a child as uid 65534");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("ikelb-api-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("ctl.sock");
    let mut sock = rt.block_on(async { ControlSocket::bind(&path) }).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(4);
    let server = rt.spawn(async move {
        sock.serve(tx).await;
        sock
    });
    let reached = rt.spawn(async move { rx.recv().await.is_some() });

    // Everything the child needs is prepared here: after fork it makes raw syscalls only.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    let request = b"{\"command\":\"status\"}\n";
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array we pass.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let mut buf = vec![0u8; 4096];
    // SAFETY: the child calls only async-signal-safe functions (setgroups, setgid,
    // setuid, socket, connect, write, read, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        unsafe {
            libc::close(fds[0]);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                libc::_exit(2);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0
                || libc::connect(
                    fd,
                    std::ptr::addr_of!(addr).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                ) != 0
            {
                libc::_exit(3);
            }
            libc::write(fd, request.as_ptr().cast(), request.len());
            let mut got = 0usize;
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().add(got).cast(), buf.len() - got);
                if n <= 0 {
                    break;
                }
                got += n as usize;
                if buf[got - 1] == b'\n' || got == buf.len() {
                    break;
                }
            }
            libc::write(fds[1], buf.as_ptr().cast(), got);
            libc::_exit(0);
        }
    }
    // SAFETY: our own descriptors and child.
    unsafe { libc::close(fds[1]) };
    let mut answer = String::new();
    // SAFETY: fds[0] is the pipe's read end, owned from here on.
    let mut pipe = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    pipe.read_to_string(&mut answer).unwrap();
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child status {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child failed (2: setuid, 3: connect)"
    );
    assert_eq!(
        answer,
        "{\"error\":{\"code\":\"forbidden\",\"message\":\"uid 65534 may not use this socket (only root and uid 0)\"}}\n"
    );
    let e: Response = serde_json::from_str(&answer).unwrap();
    let Response::Error(e) = e else {
        panic!("{answer}")
    };
    assert_eq!(e.to_string().lines().count(), 1, "one line: {e}");
    server.abort();
    rt.block_on(async {
        let _ = server.await;
    });
    assert!(
        !rt.block_on(reached).unwrap(),
        "the refused request never reached the daemon"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every slot mid-request (the daemon has not answered yet): a new connection gets one
/// `busy` line and is closed; the held request is still answered afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_told_busy_when_every_slot_is_mid_request() {
    let dir = std::env::temp_dir().join(format!("ikelb-api-busy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("ctl.sock");
    let mut sock = ControlSocket::bind(&path).unwrap();
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(4);
    let server = tokio::spawn(async move {
        sock.serve_with(tx, limits).await;
        sock
    });
    let p = path.clone();
    let first = tokio::task::spawn_blocking(move || call(&p, &Request::Status));
    // The request is with the daemon: its connection is busy.
    let (req, reply) = rx.recv().await.unwrap();
    assert_eq!(req, Request::Status);
    let p = path.clone();
    let second = tokio::task::spawn_blocking(move || call(&p, &Request::BackendList))
        .await
        .unwrap()
        .unwrap();
    let Response::Error(e) = second else {
        panic!("{second:?}")
    };
    assert_eq!(e.code, ErrorCode::Busy);
    assert_eq!(
        e.message,
        "the daemon is serving 1 control connections, each in the middle of a request; try again"
    );
    let _ = reply.send(Response::Ok(Reply::Backends { backends: vec![] }));
    assert_eq!(
        first.await.unwrap().unwrap(),
        Response::Ok(Reply::Backends { backends: vec![] })
    );
    drop(rx);
    drop(server.await.unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}
