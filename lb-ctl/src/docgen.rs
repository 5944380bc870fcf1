//! Man pages and shell completions, generated from the command line's own definition
//! ([`crate::cli::Cli`]) so they never drift from what `lb-ctl` parses.
//!
//! `cargo xtask deb` runs the hidden `lb-ctl generate-docs DIR` on the release binary it
//! packages and installs the result (docs/packaging.md). The command is not a variant of
//! [`crate::cli::Command`]: clap_complete lists hidden subcommands too, and an operator's
//! Tab should not offer it. `main` dispatches it before parsing [`crate::cli::Cli`].

use std::{
    fs,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// The hidden command's name: `lb-ctl generate-docs DIR`.
pub const COMMAND: &str = "generate-docs";

/// Section of the manual: lb-ctl runs the daemon and needs root (Debian puts such commands
/// in section 8, "System administration commands and daemons").
pub const MAN_SECTION: &str = "8";

/// Shells whose completions are written, with the file name each one loads by command name.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Why the man pages or completions could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DocgenError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("usage: lb-ctl {COMMAND} DIR (writes DIR/man{MAN_SECTION}/*.{MAN_SECTION} and DIR/completions/<shell>/)")]
    Usage,
}

/// Writes `out/man8/lb-ctl.8` and one page per subcommand (`lb-ctl-backend-add.8`, …), and
/// `out/completions/{bash,zsh,fish}/<file>`; returns every file written.
pub fn generate(out: &Path) -> Result<Vec<PathBuf>, DocgenError> {
    let mut written = Vec::new();
    let man_dir = out.join(format!("man{MAN_SECTION}"));
    create_dir(&man_dir)?;
    man_pages(&public_command(), &man_dir, &mut written)?;
    for shell in SHELLS {
        let dir = out.join("completions").join(shell.to_string());
        create_dir(&dir)?;
        let mut cmd = Cli::command();
        let path = clap_complete::generate_to(shell, &mut cmd, "lb-ctl", &dir)
            .map_err(|source| DocgenError::Write { path: dir, source })?;
        written.push(path);
    }
    Ok(written)
}

/// The command line as documented: built (so subcommands carry their display names) and
/// without clap's `help` subcommand, which needs no page.
fn public_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The name of every man page [`generate`] writes (`lb-ctl`, `lb-ctl-backend-add`, …), without
/// the section: what the package must hold (tests/tests/deb_package.rs).
pub fn man_page_names() -> Vec<String> {
    fn walk(cmd: &clap::Command, names: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, names);
        }
        names.push(
            cmd.get_display_name()
                .unwrap_or_else(|| cmd.get_name())
                .to_owned(),
        );
    }
    let mut names = Vec::new();
    walk(&public_command(), &mut names);
    names
}

/// `cmd`'s page and, recursively, its subcommands' (named `lb-ctl-backend-add` by clap's
/// display names once built).
fn man_pages(
    cmd: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), DocgenError> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section(MAN_SECTION)
        .manual("ikelb")
        .source(format!("ikelb {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .and_then(|()| fs::write(&path, page))
        .map_err(|source| DocgenError::Write {
            path: path.clone(),
            source,
        })?;
    written.push(path);
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), DocgenError> {
    fs::create_dir_all(dir).map_err(|source| DocgenError::Write {
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_command_has_a_page_and_every_shell_a_file() {
        let dir = std::env::temp_dir().join(format!("ikelb-docgen-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let written = generate(&dir).expect("generates");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        for expected in [
            "man8/lb-ctl.8",
            "man8/lb-ctl-daemon.8",
            "man8/lb-ctl-backend.8",
            "man8/lb-ctl-backend-add.8",
            "man8/lb-ctl-backend-remove.8",
            "man8/lb-ctl-backend-list.8",
            "man8/lb-ctl-status.8",
            "man8/lb-ctl-lookup.8",
            "man8/lb-ctl-reload.8",
            "completions/bash/lb-ctl.bash",
            "completions/zsh/_lb-ctl",
            "completions/fish/lb-ctl.fish",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} not in {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let pages: Vec<String> = man_page_names()
            .iter()
            .map(|n| format!("man8/{n}.8"))
            .collect();
        let written: Vec<&String> = names.iter().filter(|n| n.starts_with("man8/")).collect();
        assert_eq!(
            pages.iter().collect::<std::collections::BTreeSet<_>>(),
            written.into_iter().collect(),
            "man_page_names() and the pages written differ"
        );
        let page = fs::read_to_string(dir.join("man8/lb-ctl.8")).unwrap();
        assert!(page.contains(".TH lb-ctl 8"), "{page}");
        assert!(
            page.contains("/etc/ikelb/ikelb.yaml"),
            "the FILES text is missing:\n{page}"
        );
        let bash = fs::read_to_string(dir.join("completions/bash/lb-ctl.bash")).unwrap();
        assert!(
            bash.contains("lookup") && bash.contains("--drain"),
            "{bash}"
        );
        assert!(
            !bash.contains(COMMAND),
            "the hidden command is offered:\n{bash}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
