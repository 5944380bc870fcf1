//! The `/metrics` endpoint: HTTP/1.1 with hyper, one task per connection.
//!
//! `GET /metrics` renders the registry on the blocking pool (a scrape reads the data path's
//! counters and takes the shared persistence scan's recent result, or waits for the one in
//! flight, [`crate::scan`]; the daemon's event loop must not wait for either). `GET /` says where the
//! metrics are; anything else is 404, any other method 405.
//!
//! Bounded (docs/operations.md, "Limits and faults"): at most [`MAX_CONNECTIONS`] at once
//! ([`crate::listen`]: over the cap the connection waiting longest for a request is closed
//! to make room, and when every one is mid-request the new one gets a 503); a request's
//! headers must arrive within [`HEADER_READ_TIMEOUT`] of the connection opening or of the
//! previous response (hyper's header timer, driven by [`TokioTimer`], also runs while a
//! kept-alive connection waits: it is the idle timeout too); failed accepts back off.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, warn};

use super::Metrics;
use crate::listen::{out_of_descriptors, AcceptErrors, Admit, Slots, EVICT_PAUSE, TIMED_OUT};

/// Connections served at once. Prometheus keeps one per server; 64 leaves room for several
/// servers and people with curl, and bounds the descriptors a flood of connections can take.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take to send a request's headers, counted from the connection
/// opening or the previous response. Prometheus sends at once; a kept-alive connection idle
/// longer than this (scrape intervals are usually longer) is closed and Prometheus opens a
/// new one for the next scrape.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds of one `/metrics` listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// What a connection over the cap gets before it is closed, when every slot is serving a
/// request.
fn busy_response() -> Vec<u8> {
    const BODY: &str = "ikelb: too many metrics connections, retry\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// Content type of the Prometheus text exposition format 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binding `metrics.listen` failed.
#[derive(Debug, thiserror::Error)]
#[error("listening on {addr} for /metrics (metrics.listen): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `addr`. Done before the data path is touched, so a taken port stops the start
/// early.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves `/metrics` on `listener` until the task is aborted, with the default [`Limits`].
/// Registers the listeners' counters ([`crate::listen::counters`]) and the next-hop fault
/// counter with `metrics`.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> JoinHandle<()> {
    register_daemon_counters(&metrics);
    serve_with(listener, metrics, Limits::default())
}

/// The daemon's counters kept outside this module's registry: connection bounds and
/// next-hop faults. A second registration (a second server on the same registry) is
/// ignored.
fn register_daemon_counters(metrics: &Metrics) {
    let mut all: Vec<Box<dyn prometheus::core::Collector>> = crate::listen::counters()
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn prometheus::core::Collector>)
        .collect();
    all.push(Box::new(crate::neighbor::FAULTS.clone()));
    for c in all {
        if let Err(e) = metrics.registry.register(c) {
            debug!("metrics: registering the daemon's counters: {e}");
        }
    }
}

/// [`serve`] with explicit bounds.
pub fn serve_with(listener: TcpListener, metrics: Arc<Metrics>, limits: Limits) -> JoinHandle<()> {
    let slots = Slots::new("metrics", limits.max_connections);
    tokio::spawn(async move {
        let mut errors = AcceptErrors::new("metrics");
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => {
                    errors.accepted();
                    c
                }
                Err(e) => {
                    let pause = errors.failed(&e);
                    // Out of descriptors: the connection idle longest gives its up.
                    if out_of_descriptors(&e) && slots.evict_idle() {
                        tokio::time::sleep(EVICT_PAUSE).await;
                    } else {
                        // Other errors (or nothing to evict): keep serving once the
                        // pressure is gone.
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
            };
            let slot = match slots.admit() {
                Admit::Slot(s) => s,
                Admit::Busy => {
                    // A fresh socket's send buffer takes these few bytes without waiting.
                    let _ = stream.try_write(&busy_response());
                    continue;
                }
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let slot = Arc::new(slot);
                let in_service = Arc::clone(&slot);
                let service = service_fn(move |req| {
                    let busy = in_service.busy();
                    let metrics = Arc::clone(&metrics);
                    async move {
                        let r = handle(req, metrics).await;
                        drop(busy);
                        r
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => match r {
                        Ok(()) => {}
                        Err(e) if e.is_timeout() => {
                            TIMED_OUT.with_label_values(&["metrics"]).inc();
                            debug!(%peer, "metrics connection: no request within {:?}", limits.header_read_timeout);
                        }
                        Err(e) => debug!(%peer, "metrics connection: {e}"),
                    },
                    () = slot.evicted() => {
                        debug!(%peer, "metrics connection closed to make room for a newer one");
                    }
                }
            });
        }
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid header"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        r.headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("valid header"));
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/metrics" => match tokio::task::spawn_blocking(move || metrics.render()).await {
            Ok(Ok(body)) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut()
                    .insert(CONTENT_TYPE, TEXT_FORMAT.parse().expect("valid header"));
                r
            }
            Ok(Err(e)) => {
                warn!("metrics: {}", crate::error_chain(&e));
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/" => text(StatusCode::OK, "ikelb: metrics at /metrics\n"),
        _ => text(StatusCode::NOT_FOUND, "not found; metrics at /metrics\n"),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::{
        dataplane::{DataplaneError, PersistEntry},
        metrics::{Capacity, StatsSource},
    };

    /// A data path with nothing in it.
    struct Empty;

    impl StatsSource for Empty {
        fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
            Ok(vec![])
        }
        fn events(&self) -> Result<Vec<u64>, DataplaneError> {
            Ok(vec![])
        }
        fn ike_stages(&self) -> Result<Vec<u64>, DataplaneError> {
            Ok(vec![])
        }
        fn backend_traffic(&self, _: u32) -> Result<[lb_common::Traffic; 2], DataplaneError> {
            Ok(Default::default())
        }
        fn persistence(&self) -> Result<Vec<PersistEntry>, DataplaneError> {
            Ok(vec![])
        }
    }

    async fn server(limits: Limits) -> (SocketAddr, JoinHandle<()>) {
        let metrics = Arc::new(
            Metrics::new(
                Arc::new(Empty),
                1,
                Capacity {
                    persistence: 1,
                    probation: 1,
                },
            )
            .unwrap(),
        );
        register_daemon_counters(&metrics);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, serve_with(listener, metrics, limits))
    }

    /// Blocks until the server closes `s`; false when `limit` passes first.
    fn closed_by_server(s: &mut std::net::TcpStream, limit: Duration) -> bool {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 1024];
        loop {
            match s.read(&mut b) {
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

    fn scrape(addr: SocketAddr) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// hyper's header timer is on (it needs a timer: without one the timeout is silently
    /// off): a connection that sends nothing, or half a request, is closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_without_a_complete_request_is_closed() {
        let (addr, task) = server(Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(300),
        })
        .await;
        tokio::task::spawn_blocking(move || {
            let mut idle = std::net::TcpStream::connect(addr).unwrap();
            let mut slow = std::net::TcpStream::connect(addr).unwrap();
            slow.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();
            assert!(closed_by_server(&mut idle, Duration::from_secs(20)), "idle");
            assert!(
                closed_by_server(&mut slow, Duration::from_secs(20)),
                "half a request"
            );
            // Counted right after the close the client saw.
            let counted = (0..200).any(|_| {
                std::thread::sleep(Duration::from_millis(10));
                TIMED_OUT.with_label_values(&["metrics"]).get() >= 2
            });
            assert!(counted, "timeouts counted");
            // Kept alive after a response, then idle: closed as well.
            let mut kept = std::net::TcpStream::connect(addr).unwrap();
            kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut b = [0u8; 512];
            let n = kept.read(&mut b).unwrap();
            assert!(
                b[..n].starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&b[..n])
            );
            assert!(
                closed_by_server(&mut kept, Duration::from_secs(20)),
                "kept-alive idle"
            );
        })
        .await
        .unwrap();
        task.abort();
    }

    /// Every slot held by an idle connection: a scrape still gets its answer (the oldest
    /// idle connection makes room), and the counters are in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_lock_out_a_scrape() {
        let (addr, task) = server(Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(60),
        })
        .await;
        tokio::task::spawn_blocking(move || {
            let mut held: Vec<std::net::TcpStream> = (0..16)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            let out = scrape(addr);
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            assert!(
                out.contains("ikelb_connections_evicted_total{listener=\"metrics\"}"),
                "{out}"
            );
            assert!(out.contains("ikelb_next_hop_faults_total"), "{out}");
            // 16 idle + the scrape on 4 slots: the 13 oldest were closed to make room.
            let mut closed = 0;
            for s in held.iter_mut().take(13) {
                closed += usize::from(closed_by_server(s, Duration::from_secs(20)));
            }
            assert_eq!(closed, 13);
        })
        .await
        .unwrap();
        task.abort();
    }

    /// A data path whose counters are read only when the gate opens: a scrape in progress.
    /// `entered` says the scrape has begun.
    struct Gated {
        entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
        gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl StatsSource for Gated {
        fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
            let _ = self.entered.lock().unwrap().send(());
            // Bounded: a broken test must not hang the suite.
            let _ = self
                .gate
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20));
            Ok(vec![])
        }
        fn events(&self) -> Result<Vec<u64>, DataplaneError> {
            Ok(vec![])
        }
        fn ike_stages(&self) -> Result<Vec<u64>, DataplaneError> {
            Ok(vec![])
        }
        fn backend_traffic(&self, _: u32) -> Result<[lb_common::Traffic; 2], DataplaneError> {
            Ok(Default::default())
        }
        fn persistence(&self) -> Result<Vec<PersistEntry>, DataplaneError> {
            Ok(vec![])
        }
    }

    /// The only slot mid-scrape: a new connection gets a well-formed 503 and is closed; the
    /// scrape in progress completes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_over_the_cap_gets_503_when_every_slot_is_mid_request() {
        let (open, gate) = std::sync::mpsc::channel();
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let metrics = Arc::new(
            Metrics::new(
                Arc::new(Gated {
                    entered: std::sync::Mutex::new(entered_tx),
                    gate: std::sync::Mutex::new(gate),
                }),
                1,
                Capacity {
                    persistence: 1,
                    probation: 1,
                },
            )
            .unwrap(),
        );
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve_with(
            listener,
            metrics,
            Limits {
                max_connections: 1,
                header_read_timeout: Duration::from_secs(60),
            },
        );
        tokio::task::spawn_blocking(move || {
            let mut first = std::net::TcpStream::connect(addr).unwrap();
            first
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            first
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            entered
                .recv_timeout(Duration::from_secs(20))
                .expect("the first scrape began");
            let mut second = std::net::TcpStream::connect(addr).unwrap();
            second
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut out = String::new();
            second.read_to_string(&mut out).unwrap();
            assert!(out.starts_with("HTTP/1.1 503"), "{out}");
            let (head, body) = out.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{out}"
            );
            assert_eq!(body, "ikelb: too many metrics connections, retry\n");
            open.send(()).unwrap();
            let mut text = String::new();
            first.read_to_string(&mut text).unwrap();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        })
        .await
        .unwrap();
        task.abort();
    }
}
