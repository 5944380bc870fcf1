//! The command line (docs/operations.md, "Commands").
//!
//! `lb-ctl daemon` runs the load balancer; the operator commands talk to it over its control
//! socket ([`crate::operator`], [`crate::api`]).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{api::Request, daemon, operator, paths};

#[derive(Debug, Parser)]
#[command(
    name = "lb-ctl",
    version,
    about = "ikelb: XDP load balancer for IKEv2 VPN servers",
    after_long_help = files_help()
)]
pub struct Cli {
    /// Control socket of the daemon (operator commands).
    #[arg(long, value_name = "PATH", default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// The FILES part of `lb-ctl --help` and of the man page (docs/packaging.md says where the
/// Debian package puts the rest).
fn files_help() -> String {
    let files = [
        (paths::CONFIG_FILE, "configuration (docs/configuration.md)"),
        (paths::CONTROL_SOCKET, "control socket (root only)"),
        (paths::STATE_DIR, "runtime backend changes"),
        (paths::BPFFS, "pins: maps, program, XDP links"),
    ];
    let mut text = String::from("Files:\n");
    for (path, what) in files {
        text.push_str(&format!("  {path:<24}{what}\n"));
    }
    text.push_str("\nDocumentation: /usr/share/doc/ikelb/ (README.md, docs/, examples/)");
    text
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
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read the daemon's config file again and apply the difference without a restart
    /// (SIGHUP does the same); keys only a restart applies are refused.
    Reload {
        /// Only print what would change and how many live clients would move; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Which backend a client address goes to, and why.
    Lookup {
        client: IpAddr,
        /// Print JSON instead of a table.
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
    /// On SIGINT/SIGTERM detach XDP and remove the pins, as if the config said
    /// `detach_on_exit: true` (by default the data path stays attached for the next daemon).
    #[arg(long, conflicts_with_all = ["check", "unload"])]
    pub detach_on_exit: bool,
    /// Detach XDP from this config's interfaces and remove every pin of its instance
    /// (`<bpffs>/<instance>`: maps, program, links), then exit. Stop the daemon first.
    #[arg(long, conflicts_with = "check")]
    pub unload: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a backend to a virtual server (name or VIP).
    Add {
        /// Virtual server name or VIP.
        vs: String,
        /// Backend address.
        addr: IpAddr,
        /// Relative weight.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_WEIGHT)))]
        weight: u32,
        /// Only print how many live clients would move and where; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of a sentence or table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a backend at once, or with --drain let its persisted clients stay until they
    /// are idle or the drain time is up (it takes no new client meanwhile).
    Remove {
        /// Virtual server name or VIP.
        vs: String,
        /// Backend address.
        addr: IpAddr,
        /// Drain for at most this long (`10m`, `1h`) instead of removing at once.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        drain: Option<Duration>,
        /// Only print how many live clients would move and where; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of a sentence or table.
        #[arg(long)]
        json: bool,
    },
    /// List backends and their state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error(transparent)]
    Operator(#[from] operator::OperatorError),
}

/// Runs a parsed command line. `Ok` means exit status 0.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Daemon(args) if args.unload => {
            // Interfaces may be gone by now: only the file has to be valid.
            let config = crate::config::load(&args.config).map_err(daemon::DaemonError::from)?;
            let detached = daemon::unload(&config)?;
            println!(
                "{}: detached from [{}], pins removed",
                config.bpffs.join(&config.instance).display(),
                detached.join(", ")
            );
            Ok(())
        }
        Command::Daemon(args) => {
            let (mut config, ifindexes) = daemon::check(&args.config)?;
            config.detach_on_exit |= args.detach_on_exit;
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
        Command::Backend(BackendCommand::Add {
            vs,
            addr,
            weight,
            dry_run,
            json,
        }) => {
            let request = Request::BackendAdd {
                virtual_server: vs,
                address: addr,
                weight,
                dry_run,
            };
            Ok(operator::run(&cli.socket, &request, json)?)
        }
        Command::Backend(BackendCommand::Remove {
            vs,
            addr,
            drain,
            dry_run,
            json,
        }) => {
            let request = Request::BackendRemove {
                virtual_server: vs,
                address: addr,
                drain,
                dry_run,
            };
            Ok(operator::run(&cli.socket, &request, json)?)
        }
        Command::Reload { dry_run, json } => {
            Ok(operator::run(&cli.socket, &Request::Reload { dry_run }, json)?)
        }
        Command::Backend(BackendCommand::List { json }) => {
            Ok(operator::run(&cli.socket, &Request::BackendList, json)?)
        }
        Command::Status { json } => Ok(operator::run(&cli.socket, &Request::Status, json)?),
        Command::Lookup { client, json } => {
            Ok(operator::run(&cli.socket, &Request::Lookup { client }, json)?)
        }
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
            "lb-ctl reload",
            "lb-ctl reload --dry-run --json",
            "lb-ctl backend add aovpn 10.0.0.13 --dry-run --json",
            "lb-ctl backend remove aovpn 10.0.0.13 --drain 1m --dry-run",
        ] {
            Cli::try_parse_from(line.split(' ')).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn operator_commands_without_a_daemon_say_where_they_looked() {
        let sock = std::env::temp_dir().join(format!("ikelb-no-daemon-{}.sock", std::process::id()));
        for line in [
            "status",
            "backend list",
            "lookup 192.0.2.1",
            "backend add aovpn 10.0.0.14",
            "backend remove aovpn 10.0.0.14 --drain 1m",
            "reload --dry-run",
        ] {
            let mut args = vec!["lb-ctl", "--socket", sock.to_str().unwrap()];
            args.extend(line.split(' '));
            let cli = Cli::try_parse_from(args).unwrap();
            let err = crate::error_chain(&run(cli).unwrap_err());
            assert!(
                err.contains("cannot connect to the daemon's control socket")
                    && err.contains(sock.to_str().unwrap())
                    && !err.contains('\n'),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn bad_operator_arguments_are_refused_by_the_parser() {
        for line in [
            "lb-ctl backend add aovpn 10.0.0.300",
            "lb-ctl backend add aovpn 10.0.0.14 --weight 0",
            "lb-ctl backend add aovpn 10.0.0.14 --weight 1001",
            "lb-ctl backend add aovpn 10.0.0.14 --weight x",
            "lb-ctl backend add aovpn",
            "lb-ctl backend add aovpn 10.0.0.14 --colour red",
            "lb-ctl backend remove aovpn 10.0.0.14 --drain soon",
            "lb-ctl backend remove aovpn 10.0.0.14 --drain",
            "lb-ctl backend list --yaml",
            "lb-ctl backend rename aovpn 10.0.0.14",
            "lb-ctl lookup not-an-address",
            "lb-ctl status extra",
        ] {
            assert!(
                Cli::try_parse_from(line.split(' ')).is_err(),
                "{line} should not parse"
            );
        }
    }
}
