//! The daemon's side of the control socket: [`ControlSocket`] binds it (mode 0600, a stale
//! file replaced, a live one refused), accepts within the connection slots, checks each
//! peer's credentials, and frames one connection — request lines in, within the idle
//! timeout and [`MAX_LINE`], response lines out, within the write timeout.

use std::{
    os::unix::{
        fs::{DirBuilderExt, PermissionsExt},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    time::timeout,
};
use tracing::debug;

use super::{parse_request, ApiError, ErrorCode, Limits, Request, Response, MAX_LINE};
use crate::listen::{out_of_descriptors, AcceptErrors, Admit, Slot, Slots, EVICT_PAUSE, TIMED_OUT};

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating the control socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another daemon is serving the control socket {path}")]
    InUse { path: PathBuf },
    #[error("removing the stale control socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("restricting the control socket {path} to mode 0600: {source}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The daemon's listening socket; the file is removed when this is dropped.
pub struct ControlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` with mode 0600. The parent directory is created (mode 0700) when missing.
    /// A socket file nobody answers on is a leftover of a killed daemon and is replaced; one
    /// that answers belongs to a running daemon and is an error.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    // The mode above passes through the umask, which another thread may
                    // have changed for a moment (the bind below does): set it outright.
                    .and_then(|()| {
                        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    })
                    .map_err(|source| SocketError::CreateDir {
                        path: dir.to_owned(),
                        source,
                    })?;
            }
        }
        if path.exists() {
            if StdUnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        // Created 0600 from the start (no window in which others could connect), then set
        // explicitly in case the umask was already stricter/looser than expected.
        // SAFETY: umask(2) cannot fail; the previous mask is restored right after the bind.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|source| SocketError::Bind {
            path: path.to_owned(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| SocketError::Chmod {
                path: path.to_owned(),
                source,
            },
        )?;
        Ok(Self {
            listener: Some(listener),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the daemon's end of `requests` closes: each request line
    /// that parses is sent, with a reply channel, to the daemon's loop; everything else is
    /// answered here.
    pub async fn serve(&mut self, requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>) {
        self.serve_with(requests, Limits::default()).await;
    }

    /// [`serve`](Self::serve) with explicit bounds.
    pub async fn serve_with(
        &mut self,
        requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
        limits: Limits,
    ) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let slots = Slots::new("control", limits.max_connections);
        let mut errors = AcceptErrors::new("control");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        errors.accepted();
                        match slots.admit() {
                            Admit::Slot(slot) => {
                                tokio::spawn(connection(stream, requests.clone(), slot, limits));
                            }
                            Admit::Busy => {
                                let e = ApiError::new(
                                    ErrorCode::Busy,
                                    format!(
                                        "the daemon is serving {} control connections, each in the middle of a request; try again",
                                        slots.cap()
                                    ),
                                );
                                let mut line = serde_json::to_vec(&Response::Error(e))
                                    .expect("responses always serialize");
                                line.push(b'\n');
                                // A fresh socket's buffer takes one short line without waiting.
                                let _ = stream.try_write(&line);
                            }
                        }
                    }
                    Err(e) => {
                        let mut pause = errors.failed(&e);
                        // Out of descriptors: the connection idle longest gives its up.
                        if out_of_descriptors(&e) && slots.evict_idle() {
                            pause = EVICT_PAUSE;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = requests.closed() => return,
                        }
                    }
                },
                () = requests.closed() => return,
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves one connection until it closes, times out or is evicted ([`Slot::evicted`]).
async fn connection(
    stream: UnixStream,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
    slot: Slot,
    limits: Limits,
) {
    tokio::select! {
        () = serve_connection(stream, requests, &slot, limits) => {}
        () = slot.evicted() => debug!("control connection closed to make room for a newer one"),
    }
}

/// Request lines in, response lines out.
async fn serve_connection(
    stream: UnixStream,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
    slot: &Slot,
    limits: Limits,
) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (read, mut write) = stream.into_split();
    let peer = write.as_ref().peer_cred().ok();
    // Root, and the daemon's own user when it runs as another one with capabilities.
    if !peer.is_some_and(|c| c.uid() == 0 || c.uid() == me) {
        let e = ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "uid {} may not use this socket (only root and uid {me})",
                peer.map_or_else(|| "unknown".to_owned(), |c| c.uid().to_string())
            ),
        );
        let _ = timeout(
            limits.write_timeout,
            write_line(&mut write, &Response::Error(e)),
        )
        .await;
        return;
    }
    let mut lines = TokioBufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = timeout(
            limits.idle_timeout,
            (&mut lines)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf),
        )
        .await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                debug!("control socket: read failed: {e}");
                return;
            }
            Err(_) => {
                TIMED_OUT.with_label_values(&[slot.listener()]).inc();
                debug!(
                    "control socket: no complete request within {:?}: closed",
                    limits.idle_timeout
                );
                return;
            }
        };
        let _busy = slot.busy();
        if n == 0 {
            return;
        }
        if buf.last() != Some(&b'\n') && n >= MAX_LINE {
            let e = ApiError::new(
                ErrorCode::BadRequest,
                format!("request longer than {MAX_LINE} bytes"),
            );
            let _ = timeout(
                limits.write_timeout,
                write_line(&mut write, &Response::Error(e)),
            )
            .await;
            return;
        }
        let response = match parse_request(&buf) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if requests.send((request, tx)).await.is_err() {
                    return; // the daemon is stopping
                }
                match rx.await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Err(e) => Response::Error(e),
        };
        match timeout(limits.write_timeout, write_line(&mut write, &response)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                TIMED_OUT.with_label_values(&[slot.listener()]).inc();
                debug!(
                    "control socket: the answer was not taken within {:?}: closed",
                    limits.write_timeout
                );
                return;
            }
        }
    }
}

async fn write_line(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("responses always serialize");
    line.push(b'\n');
    w.write_all(&line).await
}
