//! The `/metrics` endpoint: HTTP/1.1 with hyper, one task per connection.
//!
//! `GET /metrics` renders the registry on the blocking pool (a scrape walks the persistence
//! map with syscalls; the daemon's event loop must not wait for it). `GET /` says where the
//! metrics are; anything else is 404, any other method 405.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, warn};

use super::Metrics;

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

/// Serves `/metrics` on `listener` until the task is aborted.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: keep serving once the pressure is gone.
                    warn!("metrics: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, Arc::clone(&metrics)));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, "metrics connection: {e}");
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
