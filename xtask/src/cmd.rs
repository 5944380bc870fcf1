//! Running commands and saying what is being done.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Announces a step on stderr, so a user sees what xtask is doing (and installing).
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .into()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Runs a command with inherited stdio; fails naming the command when it fails.
pub fn run<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Result<()> {
    let mut c = Command::new(program.as_ref());
    c.args(args).current_dir(workspace_root());
    let status = c
        .status()
        .with_context(|| format!("could not start {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

/// How many lines of a failed step's log are shown (the rest stays in the file).
const LOG_TAIL_LINES: usize = 20;

/// Runs a noisy step (apt-get, cargo install, pip) with its output in
/// `<target>/bootstrap-logs/<log>.log` instead of the terminal: one line says what is done
/// and where the log is; a failure shows the log's last lines and its path.
pub fn run_logged(what: &str, log: &str, command: &mut Command) -> Result<()> {
    run_logged_in(&target_dir().join("bootstrap-logs"), what, log, command)
}

/// [`run_logged`] with its log in `dir`.
fn run_logged_in(dir: &Path, what: &str, log: &str, command: &mut Command) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{log}.log"));
    step(&format!("{what} (log: {})", path.display()));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    command
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let status = command
        .status()
        .with_context(|| format!("could not start `{}`", shown(command)))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    eprintln!("--- last {LOG_TAIL_LINES} lines of {} ---", path.display());
    for line in tail(&text, LOG_TAIL_LINES) {
        eprintln!("{line}");
    }
    eprintln!("---");
    bail!(
        "{what}: `{}` failed ({status}); full log: {}",
        shown(command),
        path.display()
    )
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> impl Iterator<Item = &str> {
    let lines = text.lines().count();
    text.lines().skip(lines.saturating_sub(n))
}

/// `program args…` of `command`, without the environment or directory its Debug form shows.
fn shown(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cargo(args: &[&str]) -> Result<()> {
    run(
        std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
        args,
    )
}

/// Runs a command and returns its stdout (stderr passes through), or None when it could not
/// be started or failed.
pub fn output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces this process with `program` (execve): Ctrl-C then reaches the program alone, which
/// cleans up (the demo removes its namespaces) before the shell prompt returns.
pub fn exec<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("could not start {}", program.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_step_keeps_its_output_in_the_file_and_names_it_on_failure() {
        let dir = std::env::temp_dir().join(format!("ikelb-xtask-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run_logged_in(
            &dir,
            "quiet",
            "ok",
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
        )
        .expect("exit 0 is success");
        let log = std::fs::read_to_string(dir.join("ok.log")).unwrap();
        assert!(log.contains("out\n") && log.contains("err\n"), "{log:?}");

        let err = run_logged_in(
            &dir,
            "noisy",
            "fails",
            Command::new("sh").args(["-c", "seq 1 30; exit 3"]),
        )
        .expect_err("exit 3 is a failure")
        .to_string();
        let path = dir.join("fails.log");
        assert!(
            err.contains("sh -c seq 1 30; exit 3")
                && err.contains("exit status: 3")
                && err.contains(&path.display().to_string())
                && !err.contains('\n'),
            "{err}"
        );
        let log = std::fs::read_to_string(&path).unwrap();
        assert_eq!(log.lines().count(), 30, "{log}");
        let shown: Vec<&str> = tail(&log, LOG_TAIL_LINES).collect();
        assert_eq!(shown.first(), Some(&"11"), "{shown:?}");
        assert_eq!(shown.last(), Some(&"30"), "{shown:?}");
        assert_eq!(tail("a\nb", 20).collect::<Vec<_>>(), ["a", "b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
