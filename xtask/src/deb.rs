//! `cargo xtask deb`: the Debian package `ikelb` (docs/packaging.md).
//!
//! cargo-deb packages what `[package.metadata.deb]` in lb-ctl/Cargo.toml lists. Two kinds of
//! file are not in the source tree as the package wants them, so this step stages them under
//! `<target>/release/ikelb-deb/usr/`, in the package's own layout, for the one glob that
//! asset list has for them:
//!
//! * the man pages and shell completions, which the release `lb-ctl` writes from its own
//!   clap definition (`lb-ctl generate-docs DIR`, lb-ctl/src/docgen.rs); man pages gzipped
//!   as Debian policy wants;
//! * the Grafana dashboards, `deploy/grafana/*.json`, when there are any: cargo-deb fails on a
//!   glob that matches nothing, so an optional directory is looked at here.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{bootstrap, cmd};

/// Where the package's man pages, completions and dashboards go, relative to `/usr`.
const MAN_DIR: &str = "share/man/man8";
const GRAFANA_DIR: &str = "share/ikelb/grafana";
/// Each shell's completion directory (relative to `/usr`) and the file name it loads
/// `lb-ctl`'s completions from, by the directory `lb-ctl generate-docs` writes it to.
const COMPLETIONS: &[(&str, &str, &str)] = &[
    ("bash", "share/bash-completion/completions", "lb-ctl"),
    ("zsh", "share/zsh/vendor-completions", "_lb-ctl"),
    ("fish", "share/fish/vendor_completions.d", "lb-ctl.fish"),
];

/// Builds the package and returns its path (`<target>/debian/ikelb_<version>-1_<arch>.deb`).
pub fn build() -> Result<PathBuf> {
    bootstrap::all()?;
    bootstrap::packaging()?;
    cmd::step("build lb-ctl (release) for the Debian package");
    cmd::cargo(&["build", "--release", "-p", "lb-ctl", "--bin", "lb-ctl"])?;
    let release = cmd::target_dir().join("release");
    let stage = release.join("ikelb-deb");
    stage_generated(&release.join("lb-ctl"), &stage)?;
    let out_dir = cmd::target_dir().join("debian");
    cmd::step("cargo deb -p lb-ctl (package ikelb)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(cmd::workspace_root())
        .args(["deb", "-p", "lb-ctl", "--no-build", "--output"])
        .arg(&out_dir)
        .output()
        .context("could not run `cargo deb` (cargo-deb is installed by `cargo xtask bootstrap`)")?;
    if !out.status.success() {
        bail!(
            "`cargo deb -p lb-ctl` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // cargo-deb prints the package's path as its last line of standard output.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("`cargo deb` named no .deb on its output: {stdout}"))?;
    cmd::step(&format!("Debian package: {}", deb.display()));
    Ok(deb)
}

/// Fills `stage/usr/` with the man pages and completions `lb_ctl` writes, and the Grafana
/// dashboards if `deploy/grafana/` has any.
fn stage_generated(lb_ctl: &Path, stage: &Path) -> Result<()> {
    if stage.exists() {
        fs::remove_dir_all(stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let generated = stage.join("generated");
    // It prints every file it writes; only a failure is worth showing here.
    let out = Command::new(lb_ctl)
        .arg("generate-docs")
        .arg(&generated)
        .output()
        .with_context(|| format!("could not start {}", lb_ctl.display()))?;
    if !out.status.success() {
        bail!(
            "`{} generate-docs {}` failed ({}): {}",
            lb_ctl.display(),
            generated.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let usr = stage.join("usr");

    let man_dir = usr.join(MAN_DIR);
    fs::create_dir_all(&man_dir)?;
    for page in list(&generated.join("man8"), "8")? {
        let to = man_dir.join(page.file_name().expect("a file"));
        fs::copy(&page, &to).with_context(|| format!("copying {}", page.display()))?;
        // -n: no name or time stamp in the header, so equal pages give equal files.
        cmd::run("gzip", &[OsStr::new("-9nf"), to.as_os_str()])?;
    }

    for (shell, dir, name) in COMPLETIONS {
        let from = generated.join("completions").join(shell);
        let files = list(&from, "")?;
        let [file] = files.as_slice() else {
            bail!(
                "{}: expected one completion file, found {files:?}",
                from.display()
            );
        };
        let dir = usr.join(dir);
        fs::create_dir_all(&dir)?;
        fs::copy(file, dir.join(name)).with_context(|| format!("copying {}", file.display()))?;
    }

    let dashboards = cmd::workspace_root().join("deploy/grafana");
    let found = if dashboards.is_dir() {
        list(&dashboards, "json")?
    } else {
        Vec::new()
    };
    if found.is_empty() {
        cmd::step("no Grafana dashboard in deploy/grafana/: the package has none");
    } else {
        let dir = usr.join(GRAFANA_DIR);
        fs::create_dir_all(&dir)?;
        for file in &found {
            fs::copy(file, dir.join(file.file_name().expect("a file")))
                .with_context(|| format!("copying {}", file.display()))?;
        }
    }
    fs::remove_dir_all(&generated)?;
    Ok(())
}

/// The files of `dir` whose extension is `ext` (any when empty), sorted.
fn list(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    files.retain(|p| p.is_file() && (ext.is_empty() || p.extension().is_some_and(|e| e == ext)));
    files.sort();
    Ok(files)
}
