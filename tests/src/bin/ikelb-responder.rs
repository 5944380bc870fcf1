//! `ikelb-responder --name b1 [--ports 500,4500] [--bind 0.0.0.0] [--esp]`: the lab's stand-in for a
//! VPN server. Answers every UDP datagram with its name and the source address it saw; see
//! `ikelb_tests::lab::responder` for the format.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use ikelb_tests::lab::responder;

const USAGE: &str = "usage: ikelb-responder --name NAME [--ports 500,4500] [--bind ADDR] [--esp]";

fn main() -> Result<()> {
    let mut name = None;
    let mut ports = vec![500, 4500];
    let mut bind = Ipv4Addr::UNSPECIFIED;
    let mut esp = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--ports" => {
                ports = value()?
                    .split(',')
                    .map(|p| p.parse().with_context(|| format!("bad port {p:?}")))
                    .collect::<Result<_>>()?
            }
            "--bind" => bind = value()?.parse().context("bad --bind address")?,
            "--esp" => esp = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let name = name.context(USAGE)?;
    responder::serve(&name, bind, &ports, esp)
}
