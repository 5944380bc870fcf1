//! The CLI's side of the control socket: [`call`] sends one request and reads one answer
//! of at most [`MAX_REPLY`] bytes, blocking (the CLI needs no async runtime).

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
};

use super::{Request, Response, CLIENT_TIMEOUT, MAX_REPLY};

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon's control socket {path}: {source} (is `lb-ctl daemon` running, and are you root?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon closed {path} without answering")]
    NoAnswer { path: PathBuf },
    #[error("the daemon's answer on {path} is not understood: {source}")]
    Garbled {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the daemon's answer on {path} is longer than {limit} bytes, lb-ctl's limit (MAX_REPLY in lb-ctl/src/api.rs)")]
    TooLong { path: PathBuf, limit: usize },
}

/// Sends one request to the daemon at `path` and waits for its answer (blocking: the CLI
/// needs no runtime).
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    call_with_limit(path, request, MAX_REPLY)
}

/// [`call`] reading an answer of at most `limit` bytes (newline included).
pub(super) fn call_with_limit(
    path: &Path,
    request: &Request,
    limit: usize,
) -> Result<Response, ClientError> {
    let stream = StdUnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    // A daemon that refuses the connection (forbidden, busy) answers and closes without
    // reading: the write may fail (EPIPE) while its answer waits to be read. Read first,
    // report the write error only when there is no answer.
    let wrote = (&stream).write_all(&line);
    // One byte more than the limit tells a line of exactly `limit` bytes from a longer one.
    let mut answer = Vec::new();
    let read = BufReader::with_capacity(1 << 16, &stream)
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut answer);
    match (wrote, read) {
        (Err(e), _) if answer.is_empty() => return Err(io(e)),
        (_, Err(e)) if answer.is_empty() => return Err(io(e)),
        _ => {}
    }
    if answer.is_empty() {
        return Err(ClientError::NoAnswer {
            path: path.to_owned(),
        });
    }
    if answer.len() > limit {
        return Err(ClientError::TooLong {
            path: path.to_owned(),
            limit,
        });
    }
    serde_json::from_slice(&answer).map_err(|source| ClientError::Garbled {
        path: path.to_owned(),
        source,
    })
}
