//! `ikelb-responder --name b1 [--ports 500,4500] [--bind 0.0.0.0] [--bind6 ::] [--tcp 443]
//! [--esp]`: the lab's stand-in for a VPN server. Answers every UDP datagram (and ESP packet,
//! and TCP connection) with its name and the source address it saw; see
//! `ikelb_tests::lab::responder` for the format. `--bind6` serves IPv6 too; `--tcp` adds TCP
//! ports (the SSTP fallback of Always On VPN, answered one line per connection).

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};
use ikelb_tests::lab::responder::{self, Serve};

const USAGE: &str = "usage: ikelb-responder --name NAME [--ports 500,4500] [--bind ADDR] \
                     [--bind6 ADDR6] [--tcp 443] [--esp]";

fn ports(list: &str) -> Result<Vec<u16>> {
    list.split(',')
        .map(|p| p.parse().with_context(|| format!("bad port {p:?}")))
        .collect()
}

fn main() -> Result<()> {
    let mut name = None;
    let mut serve = Serve {
        name: String::new(),
        bind: Ipv4Addr::UNSPECIFIED,
        bind6: None,
        ports: vec![500, 4500],
        tcp_ports: Vec::new(),
        esp: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--ports" => serve.ports = ports(&value()?)?,
            "--tcp" => serve.tcp_ports = ports(&value()?)?,
            "--bind" => serve.bind = value()?.parse().context("bad --bind address")?,
            "--bind6" => {
                let a: Ipv6Addr = value()?.parse().context("bad --bind6 address")?;
                serve.bind6 = Some(a);
            }
            "--esp" => serve.esp = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    serve.name = name.context(USAGE)?;
    responder::serve_all(&serve)
}
