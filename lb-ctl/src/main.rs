//! `lb-ctl`: the ikelb daemon and operator commands. Exit status 0 on success; otherwise
//! non-zero with the reason on stderr (one line per problem).

use std::io::IsTerminal;

use clap::Parser;
use lb_ctl::cli::{self, Cli};
use lb_ctl::docgen;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // The hidden `lb-ctl generate-docs DIR` (packaging) stays out of `Cli`, whose completions
    // would offer it (lb_ctl::docgen).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == docgen::COMMAND)
    {
        return generate_docs();
    }
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

/// `lb-ctl generate-docs DIR`: the man pages and completions, one written file a line.
fn generate_docs() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(2);
    let result = match (args.next(), args.next()) {
        (Some(dir), None) => docgen::generate(std::path::Path::new(&dir)),
        _ => Err(docgen::DocgenError::Usage),
    };
    match result {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb-ctl: {}", lb_ctl::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
