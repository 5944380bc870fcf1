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
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").into()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Runs a command with inherited stdio; fails naming the command when it fails.
pub fn run<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Result<()> {
    let mut c = Command::new(program.as_ref());
    c.args(args).current_dir(workspace_root());
    let status = c.status().with_context(|| format!("could not start {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    run(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()), args)
}

/// Runs a command and returns its stdout (stderr passes through), or None when it could not
/// be started or failed.
pub fn output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Option<String> {
    let out = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces this process with `program` (execve): Ctrl-C then reaches the program alone, which
/// cleans up (the demo removes its namespaces) before the shell prompt returns.
pub fn exec<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("could not start {}", program.display()))
}
