//! The command line (DESIGN.md, "Operator interface").
//!
//! `lb-ctl daemon` is implemented. The operator commands talk to the daemon over its
//! control socket, which arrives with the next issue; until then each of them says so and
//! exits non-zero rather than pretend.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{daemon, paths};

#[derive(Debug, Parser)]
#[command(
    name = "lb-ctl",
    version,
    about = "ikelb: XDP load balancer for IKEv2 VPN servers"
)]
pub struct Cli {
    /// Control socket of the daemon (operator commands).
    #[arg(long, value_name = "PATH", default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer: load and attach the XDP program, fill its maps, serve until
    /// SIGINT/SIGTERM, then detach.
    Daemon(DaemonArgs),
    /// Add, remove or list backends of a running daemon.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Show virtual servers, backends and their health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Which backend a client address goes to, and why.
    Lookup {
        client: IpAddr,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Configuration file (schema v1).
    #[arg(long, value_name = "FILE", default_value = paths::CONFIG_FILE)]
    pub config: PathBuf,
    /// Validate the configuration (including that every interface exists) and exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a backend to a virtual server (name or VIP).
    Add {
        vs: String,
        addr: IpAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend, optionally letting its clients drain first.
    Remove {
        vs: String,
        addr: IpAddr,
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        drain: Option<Duration>,
    },
    /// List backends and their state.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "{command}: not implemented yet (the daemon's control socket comes with the next release)"
    )]
    NotImplemented { command: &'static str },
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
}

/// Runs a parsed command line. `Ok` means exit status 0.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Daemon(args) => {
            let (config, ifindexes) = daemon::check(&args.config)?;
            if args.check {
                println!(
                    "{}: OK ({} virtual servers, {} backends, {} interfaces)",
                    config.file(),
                    config.virtual_servers.len(),
                    config.backend_count(),
                    config.interfaces.len()
                );
                return Ok(());
            }
            Ok(daemon::run(config, ifindexes)?)
        }
        Command::Backend(BackendCommand::Add { .. }) => Err(CliError::NotImplemented {
            command: "backend add",
        }),
        Command::Backend(BackendCommand::Remove { .. }) => Err(CliError::NotImplemented {
            command: "backend remove",
        }),
        Command::Backend(BackendCommand::List { .. }) => Err(CliError::NotImplemented {
            command: "backend list",
        }),
        Command::Status { .. } => Err(CliError::NotImplemented { command: "status" }),
        Command::Lookup { .. } => Err(CliError::NotImplemented { command: "lookup" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_command_lines_parse() {
        for line in [
            "lb-ctl daemon --config /tmp/x.yaml",
            "lb-ctl daemon --config /tmp/x.yaml --check",
            "lb-ctl --socket /tmp/s backend add aovpn 10.0.0.13 --weight 2",
            "lb-ctl backend remove 203.0.113.10 10.0.0.13 --drain 10m",
            "lb-ctl backend list --json",
            "lb-ctl status --json",
            "lb-ctl lookup 198.51.100.7 --json",
        ] {
            Cli::try_parse_from(line.split(' ')).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn operator_commands_say_not_implemented() {
        for line in [
            "lb-ctl status",
            "lb-ctl backend list",
            "lb-ctl lookup 192.0.2.1",
        ] {
            let cli = Cli::try_parse_from(line.split(' ')).unwrap();
            let err = run(cli).unwrap_err();
            assert!(
                err.to_string().contains("not implemented yet"),
                "{line}: {err}"
            );
        }
    }
}
