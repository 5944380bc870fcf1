//! `lb-ctl`: the ikelb daemon and operator commands. Exit status 0 on success; otherwise
//! non-zero with the reason on stderr (one line per problem).

use std::io::IsTerminal;

use clap::Parser;
use lb_ctl::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-ctl: {}", lb_ctl::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
