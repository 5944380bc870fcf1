//! The backends' UDP responder (`ikelb-responder`) and its wire format, shared by the binary and
//! the clients that parse its answers.
//!
//! Every datagram is answered, to its source, with one line:
//!
//! ```text
//! b2 100.64.1.17 len=4000 port=4500 tag=q17
//! ```
//!
//! the responder's name, the source address it saw (with "Use Client IP" that is the client's
//! own), the datagram's length (a fragmented datagram reports its reassembled length), the
//! local port it arrived on (0 for ESP, answered in ESP), and the request's first word (so a client can tell the reply to a
//! retry from a stale one). The same line answers a TCP connection (`--tcp`, the SSTP
//! stand-in): the client sends one line, the responder answers one line and closes. The request `?stats` is answered with counters instead and not
//! counted:
//!
//! ```text
//! b2 stats datagrams=512 bytes=40960 clients=170
//! ```

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::raw::{esp_packet, RawSocket, ESP_HEADER, IPPROTO_ESP};
use super::sock::{self, RawSocket6};

/// The request that asks for counters.
pub const STATS_QUERY: &[u8] = b"?stats";
/// Largest tag echoed back.
const MAX_TAG: usize = 32;

/// A parsed answer to an ordinary datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echo {
    pub backend: String,
    pub seen: IpAddr,
    pub len: usize,
    pub port: u16,
    pub tag: String,
}

/// A parsed answer to [`STATS_QUERY`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub backend: String,
    pub datagrams: u64,
    pub bytes: u64,
    pub clients: u64,
}

/// A responder's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Echo(Echo),
    Stats(Stats),
}

impl Answer {
    pub fn parse(text: &str) -> Result<Self> {
        let mut words = text.split_whitespace();
        let backend = words.next().context("empty answer")?.to_string();
        let second = words.next().context("answer has one word")?;
        let mut field = |name: &str| -> Result<String> {
            let w = words
                .next()
                .with_context(|| format!("no {name}= in {text:?}"))?;
            match w.strip_prefix(name).and_then(|w| w.strip_prefix('=')) {
                Some(v) => Ok(v.to_string()),
                None => bail!("expected {name}= in {text:?}, found {w:?}"),
            }
        };
        if second == "stats" {
            return Ok(Self::Stats(Stats {
                backend,
                datagrams: field("datagrams")?.parse()?,
                bytes: field("bytes")?.parse()?,
                clients: field("clients")?.parse()?,
            }));
        }
        Ok(Self::Echo(Echo {
            backend,
            seen: second
                .parse()
                .with_context(|| format!("bad address in {text:?}"))?,
            len: field("len")?.parse()?,
            port: field("port")?.parse()?,
            tag: field("tag")?,
        }))
    }
}

/// The request's first word (up to [`MAX_TAG`] bytes), `-` if it has none.
fn tag_of(request: &[u8]) -> String {
    let word: Vec<u8> = request
        .iter()
        .take(MAX_TAG)
        .take_while(|b| b.is_ascii_graphic())
        .copied()
        .collect();
    if word.is_empty() {
        "-".into()
    } else {
        String::from_utf8(word).expect("ASCII")
    }
}

#[derive(Default)]
struct Counters {
    datagrams: u64,
    bytes: u64,
    clients: HashSet<IpAddr>,
}

/// Serve `ports` on `bind` (one thread per port) as `name`, and ESP too when `esp` (answered
/// in ESP, with `port=0`; see [`super::raw`]), forever. Fails only if a socket cannot be
/// opened.
pub fn serve(name: &str, bind: Ipv4Addr, ports: &[u16], esp: bool) -> Result<()> {
    serve_all(&Serve {
        name: name.to_string(),
        bind,
        bind6: None,
        ports: ports.to_vec(),
        tcp_ports: Vec::new(),
        esp,
    })
}

/// What a responder serves (the flags of `ikelb-responder`).
#[derive(Clone, Debug)]
pub struct Serve {
    pub name: String,
    /// IPv4 address of every socket (`0.0.0.0`: any). In DSR labs the VIP, so that replies
    /// leave from it (an unconnected UDP socket and a raw socket answer from their bound
    /// address, else from the route's preferred source).
    pub bind: Ipv4Addr,
    /// Serve IPv6 too, on this address (`::`: any), with IPv6-only sockets beside the IPv4
    /// ones.
    pub bind6: Option<Ipv6Addr>,
    pub ports: Vec<u16>,
    /// TCP ports answered with one line per connection (the SSTP stand-in).
    pub tcp_ports: Vec<u16>,
    pub esp: bool,
}

/// Serve everything `s` names, one thread per socket, forever. Fails only if a socket
/// cannot be opened.
pub fn serve_all(s: &Serve) -> Result<()> {
    let counters = Arc::new(Mutex::new(Counters::default()));
    let mut addrs: Vec<IpAddr> = vec![s.bind.into()];
    addrs.extend(s.bind6.map(IpAddr::from));
    let mut threads = Vec::new();
    for &addr in &addrs {
        for &port in &s.ports {
            let sock = sock::udp_bind(SocketAddr::new(addr, port))?;
            let (name, counters) = (s.name.clone(), Arc::clone(&counters));
            threads.push(thread::spawn(move || {
                answer_loop(&sock, &name, port, &counters)
            }));
        }
        for &port in &s.tcp_ports {
            let listener = sock::tcp_listen(SocketAddr::new(addr, port))?;
            let (name, counters) = (s.name.clone(), Arc::clone(&counters));
            threads.push(thread::spawn(move || {
                tcp_loop(&listener, &name, port, &counters)
            }));
        }
    }
    if s.esp {
        let raw = RawSocket::new(IPPROTO_ESP)?;
        if !s.bind.is_unspecified() {
            raw.bind(s.bind)?;
        }
        let (name, c) = (s.name.clone(), Arc::clone(&counters));
        threads.push(thread::spawn(move || esp_loop(&raw, &name, &c)));
        if let Some(bind6) = s.bind6 {
            let raw = RawSocket6::new(IPPROTO_ESP)?;
            if !bind6.is_unspecified() {
                raw.bind(bind6)?;
            }
            let (name, c) = (s.name.clone(), Arc::clone(&counters));
            threads.push(thread::spawn(move || esp6_loop(&raw, &name, &c)));
        }
    }
    println!(
        "{}: answering on {addrs:?} UDP ports {:?}, TCP ports {:?}{}",
        s.name,
        s.ports,
        s.tcp_ports,
        if s.esp { " and ESP" } else { "" }
    );
    for t in threads {
        t.join().expect("responder thread panicked")?;
    }
    Ok(())
}

/// ESP over IPv6: as [`esp_loop`]; the raw socket hands over the ESP bytes alone.
fn esp6_loop(sock: &RawSocket6, name: &str, counters: &Mutex<Counters>) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Some((from, body)) = sock.recv(&mut buf, None)? else {
            continue;
        };
        let Some(data) = body.get(ESP_HEADER..) else {
            continue;
        };
        let seq = u32::from_be_bytes(body[4..8].try_into().expect("4 bytes"));
        count(counters, IpAddr::V6(from), body.len());
        let line = echo_line(name, (from, 0).into(), body.len(), 0, &tag_of(data));
        let reply = esp_packet(seq, line.as_bytes());
        if let Err(e) = sock.send_to(&reply, from) {
            eprintln!("{name}: ESP reply to {from}: {e:#}");
        }
    }
}

/// TCP: one line in, one line out, per connection (each on its own thread).
fn tcp_loop(
    listener: &TcpListener,
    name: &str,
    port: u16,
    counters: &Arc<Mutex<Counters>>,
) -> Result<()> {
    loop {
        let (stream, from) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{name}: accept on TCP {port}: {e}");
                continue;
            }
        };
        let (name, counters) = (name.to_string(), Arc::clone(counters));
        thread::spawn(move || {
            if let Err(e) = tcp_answer(stream, from, &name, port, &counters) {
                eprintln!("{name}: TCP {port} from {from}: {e:#}");
            }
        });
    }
}

fn tcp_answer(
    mut stream: TcpStream,
    from: SocketAddr,
    name: &str,
    port: u16,
    counters: &Mutex<Counters>,
) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 512];
    while !request.contains(&b'\n') && request.len() < 4096 {
        let n = stream.read(&mut buf).context("read")?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    count(counters, from.ip(), request.len());
    let line = echo_line(name, from, request.len(), port, &tag_of(&request));
    stream
        .write_all(format!("{line}\n").as_bytes())
        .context("write")?;
    Ok(())
}

fn count(counters: &Mutex<Counters>, from: IpAddr, bytes: usize) {
    let mut c = counters.lock().expect("poisoned");
    c.datagrams += 1;
    c.bytes += bytes as u64;
    c.clients.insert(from);
}

fn esp_loop(sock: &RawSocket, name: &str, counters: &Mutex<Counters>) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Some((from, body)) = sock.recv(&mut buf, None)? else {
            continue;
        };
        let Some(data) = body.get(ESP_HEADER..) else {
            continue;
        };
        let seq = u32::from_be_bytes(body[4..8].try_into().expect("4 bytes"));
        count(counters, IpAddr::V4(from), body.len());
        let line = echo_line(name, (from, 0).into(), body.len(), 0, &tag_of(data));
        let reply = esp_packet(seq, line.as_bytes());
        if let Err(e) = sock.send_to(&reply, from) {
            eprintln!("{name}: ESP reply to {from}: {e:#}");
        }
    }
}

fn answer_loop(sock: &UdpSocket, name: &str, port: u16, counters: &Mutex<Counters>) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = sock.recv_from(&mut buf).context("recv")?;
        let request = &buf[..n];
        let answer = if request == STATS_QUERY {
            let c = counters.lock().expect("poisoned");
            format!(
                "{name} stats datagrams={} bytes={} clients={}",
                c.datagrams,
                c.bytes,
                c.clients.len()
            )
        } else {
            count(counters, from.ip(), n);
            echo_line(name, from, n, port, &tag_of(request))
        };
        // A reply that cannot be sent (no route, full buffer) is the client's problem to
        // notice; the responder keeps serving.
        if let Err(e) = sock.send_to(answer.as_bytes(), from) {
            eprintln!("{name}: reply to {from}: {e}");
        }
    }
}

/// The line the responder sends for an ordinary datagram.
pub fn echo_line(name: &str, from: SocketAddr, len: usize, port: u16, tag: &str) -> String {
    format!("{name} {} len={len} port={port} tag={tag}", from.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trips() {
        let line = echo_line("b2", "100.64.1.17:1234".parse().unwrap(), 4000, 4500, "q17");
        assert_eq!(line, "b2 100.64.1.17 len=4000 port=4500 tag=q17");
        assert_eq!(
            Answer::parse(&line).unwrap(),
            Answer::Echo(Echo {
                backend: "b2".into(),
                seen: "100.64.1.17".parse().unwrap(),
                len: 4000,
                port: 4500,
                tag: "q17".into()
            })
        );
    }

    #[test]
    fn stats_parse() {
        let a = Answer::parse("b1 stats datagrams=3 bytes=40 clients=2").unwrap();
        assert_eq!(
            a,
            Answer::Stats(Stats {
                backend: "b1".into(),
                datagrams: 3,
                bytes: 40,
                clients: 2
            })
        );
        assert!(Answer::parse("b1").is_err());
        assert!(Answer::parse("b1 1.2.3.4 len=x port=1 tag=a").is_err());
    }

    #[test]
    fn tag_is_first_word() {
        assert_eq!(tag_of(b"q17 xxxxx"), "q17");
        assert_eq!(tag_of(b""), "-");
        assert_eq!(tag_of(&[0u8; 10]), "-");
    }
}
