//! The Debian package `ikelb` (docs/packaging.md), installed and removed under a scratch root.
//!
//! `cargo xtask test` builds it first (`cargo xtask deb`) and names it in `IKELB_DEB`; without
//! that variable the newest `<target>/debian/ikelb_*.deb` is taken. The test checks:
//!
//! 1. the control fields: name, version, maintainer, the libc and iproute2 dependencies, the
//!    one conffile (`/etc/ikelb/ikelb.yaml`) and no maintainer script (nothing is enabled or
//!    started, and a `dpkg --root` install needs no shell inside the root);
//! 2. the file list (`dpkg-deb -c`) is exactly what the source tree says it should be — the
//!    binary, unit, config, Prometheus rules, Grafana dashboards (those in deploy/grafana/
//!    now, if any), BIRD and keepalived examples, README and docs, every man page of a public
//!    command, the three completions, the copyright file — owned by root with the right modes;
//! 3. `dpkg --root` installs it into a scratch root (an empty dpkg database, made here; the
//!    root holds no libc or iproute2, so dependencies are checked in step 1 and forced here),
//!    and the installed files match the source tree byte for byte;
//! 4. `systemd-analyze verify` accepts the installed unit (with the scratch root's /usr/bin
//!    laid over the machine's in a private mount namespace: the unit runs /usr/bin/lb-ctl),
//!    the installed `lb-ctl --version` runs, `man -l` formats the installed page, and bash
//!    loads the completion;
//! 5. `dpkg --remove` leaves the edited conffile and the unit no longer verifies (no binary),
//!    `dpkg --purge` removes the conffile and the package.
//!
//! The scratch root is a lab temporary directory (prefix `ikq<pid>n<k>-deb`), removed on
//! drop, also on failure. A missing tool or package fails the test naming what to install:
//! this test never skips.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};
use ikelb_tests::lab::{self, RunPrefix, TempDir};

/// The tools the test runs, with the Debian package that has each (`cargo xtask deb` runs the
/// bootstrap that installs them).
const TOOLS: &[(&str, &str)] = &[
    ("dpkg", "dpkg"),
    ("dpkg-deb", "dpkg"),
    ("systemd-analyze", "systemd"),
    ("man", "man-db"),
    ("bash", "bash"),
    ("unshare", "util-linux"),
];

/// The repository root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

/// The package to test: `$IKELB_DEB`, else the newest `ikelb_*.deb` in the target directory
/// this test was built in (`<target>/debug/deps/<test>` → `<target>/debian/`).
fn package() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("IKELB_DEB") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "IKELB_DEB={} is not a file", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("this test's executable is not under <target>/<profile>/deps/")?;
    let dir = target.join("debian");
    let newest = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("ikelb_") && name.ends_with(".deb")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    newest.map(|e| e.path()).with_context(|| {
        format!(
            "no Debian package to test: none in {} and IKELB_DEB is not set; build it with \
             `cargo xtask deb` (`cargo xtask test` does so before this test)",
            dir.display()
        )
    })
}

/// Fails, naming the Debian package to install, when a tool is not on PATH.
fn check_tools() -> Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| {
            !std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
            })
        })
        .map(|(tool, pkg)| format!("{tool} (Debian package {pkg})"))
        .collect();
    ensure!(
        missing.is_empty(),
        "cannot test the Debian package: {} not on PATH; `cargo xtask bootstrap` installs them",
        missing.join(", ")
    );
    Ok(())
}

/// PATH with the sbin directories, where dpkg looks for `ldconfig` and `start-stop-daemon`
/// before it installs anything (a user's PATH may lack them).
fn path_with_sbin() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for sbin in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|d| d == Path::new(sbin)) {
            dirs.push(sbin.into());
        }
    }
    std::env::join_paths(dirs).expect("PATH entries have no ':'")
}

/// Runs `program args`, failing with its stderr unless it exits 0; returns its output.
fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .env("PATH", path_with_sbin())
        .env("LC_ALL", "C.UTF-8")
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(out)
}

fn stdout(program: &str, args: &[&str]) -> Result<String> {
    Ok(String::from_utf8(run(program, args)?.stdout)?)
}

/// Names of the files directly in `repo/dir` whose name ends with `suffix`, sorted.
fn source_files(dir: &str, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(repo().join(dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// Every file the package must hold (path without the leading `/`) → its mode and, for files
/// copied from the source tree, that source.
fn expected_files() -> BTreeMap<String, (u32, Option<PathBuf>)> {
    let mut files = BTreeMap::new();
    let mut from = |dest: String, mode: u32, src: Option<&str>| {
        files.insert(dest, (mode, src.map(|s| repo().join(s))));
    };
    from("usr/bin/lb-ctl".into(), 0o755, None);
    from(
        "usr/lib/systemd/system/ikelb.service".into(),
        0o644,
        Some("deploy/ikelb.service"),
    );
    from(
        "etc/ikelb/ikelb.yaml".into(),
        0o644,
        Some("deploy/ikelb.yaml"),
    );
    for (dir, suffix, dest) in [
        ("deploy/prometheus", ".yml", "usr/share/ikelb/prometheus"),
        ("deploy/grafana", ".json", "usr/share/ikelb/grafana"),
        ("deploy/bird", "", "usr/share/doc/ikelb/examples/bird"),
        (
            "deploy/keepalived",
            "",
            "usr/share/doc/ikelb/examples/keepalived",
        ),
        ("docs", ".md", "usr/share/doc/ikelb/docs"),
    ] {
        for name in source_files(dir, suffix) {
            from(
                format!("{dest}/{name}"),
                0o644,
                Some(&format!("{dir}/{name}")),
            );
        }
    }
    from(
        "usr/share/doc/ikelb/README.md".into(),
        0o644,
        Some("README.md"),
    );
    from("usr/share/doc/ikelb/copyright".into(), 0o644, None);
    // One page per public command of the lb-ctl this crate links (lb-ctl/src/docgen.rs).
    for page in lb_ctl::docgen::man_page_names() {
        from(format!("usr/share/man/man8/{page}.8.gz"), 0o644, None);
    }
    for completion in [
        "usr/share/bash-completion/completions/lb-ctl",
        "usr/share/zsh/vendor-completions/_lb-ctl",
        "usr/share/fish/vendor_completions.d/lb-ctl.fish",
    ] {
        from(completion.into(), 0o644, None);
    }
    files
}

/// `dpkg-deb -c` → regular file path (no leading `./`) → (mode bits, owner/group, by name
/// or number).
fn listing(deb: &str) -> Result<BTreeMap<String, (u32, String)>> {
    let mut files = BTreeMap::new();
    for line in stdout("dpkg-deb", &["-c", deb])?.lines() {
        // -rwxr-xr-x root/root   1234 2026-12-05 04:00 ./usr/bin/lb-ctl
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [perms, owner, _size, _date, _time, path] = fields[..] else {
            bail!("unexpected dpkg-deb -c line: {line}");
        };
        match perms.as_bytes()[0] {
            b'd' => continue,
            b'-' => {}
            _ => bail!("{path}: not a regular file or directory ({perms})"),
        }
        let mode = perms[1..]
            .bytes()
            .fold(0u32, |m, b| (m << 1) | u32::from(b != b'-'));
        let path = path.strip_prefix("./").unwrap_or(path);
        files.insert(path.to_owned(), (mode, owner.to_owned()));
    }
    Ok(files)
}

/// An empty dpkg database under `root`, as `dpkg --root` expects to find it.
fn make_root(root: &Path) -> Result<()> {
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers", "alternatives"] {
        fs::create_dir_all(admin.join(dir))?;
    }
    fs::write(admin.join("status"), "")?;
    fs::write(admin.join("available"), "")?;
    fs::create_dir_all(root.join("var/log"))?;
    Ok(())
}

/// `systemd-analyze verify UNIT` against this machine's systemd units, in a private mount
/// namespace whose /usr/bin also shows the scratch root's: the unit runs /usr/bin/lb-ctl,
/// which verify checks is executable, and the machine itself has no lb-ctl there. (Verifying
/// with `--root` instead would need the whole of systemd's own units inside the root.)
fn verify_unit(root: &Path, unit: &Path) -> Result<Output> {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount -t overlay ikelb-deb-test -o lowerdir=\"$1/usr/bin:/usr/bin\" /usr/bin && \
             exec systemd-analyze verify --man=no \"$2\"",
        )
        .args([Path::new("sh"), root, unit])
        .output()
        .context("cannot run unshare (util-linux)")
}

#[test]
fn package_installs_every_file_in_place_and_purges_clean() -> Result<()> {
    check_tools()?;
    ensure!(
        lab::is_root(),
        "cannot test the Debian package: dpkg --root installs files owned by root; run \
         `cargo xtask test` as root"
    );
    let deb = package()?;
    let deb = deb.to_str().context("package path is not UTF-8")?;
    eprintln!("testing {deb}");

    // 1. Control fields, conffiles, maintainer scripts.
    let field = |name: &str| -> Result<String> {
        Ok(stdout("dpkg-deb", &["-f", deb, name])?.trim().to_owned())
    };
    ensure!(
        field("Package")? == "ikelb",
        "Package: {}",
        field("Package")?
    );
    let version = field("Version")?;
    ensure!(
        version.starts_with(&format!("{}-", env!("CARGO_PKG_VERSION"))),
        "Version {version} is not the workspace's {}-<revision>",
        env!("CARGO_PKG_VERSION")
    );
    ensure!(
        field("Maintainer")?.contains('@'),
        "Maintainer: {}",
        field("Maintainer")?
    );
    let depends = field("Depends")?;
    for dep in ["libc6", "iproute2"] {
        ensure!(
            depends.split(',').any(|d| d.trim().starts_with(dep)),
            "Depends: {depends} lacks {dep}"
        );
    }
    ensure!(!field("Description")?.is_empty(), "no Description");
    let conffiles = stdout("dpkg-deb", &["-I", deb, "conffiles"])?;
    ensure!(
        conffiles.lines().collect::<Vec<_>>() == ["/etc/ikelb/ikelb.yaml"],
        "conffiles: {conffiles:?}"
    );
    let control = stdout("dpkg-deb", &["-I", deb])?;
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        ensure!(
            !control
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == script)),
            "the package has a {script} script:\n{control}"
        );
    }

    // 2. Exactly the expected files, owned by root, with their modes.
    let expected = expected_files();
    let listed = listing(deb)?;
    let missing: Vec<&String> = expected
        .keys()
        .filter(|p| !listed.contains_key(*p))
        .collect();
    let extra: Vec<&String> = listed
        .keys()
        .filter(|p| !expected.contains_key(*p))
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "package file list differs: missing {missing:?}, unexpected {extra:?}"
    );
    for (path, (mode, owner)) in &listed {
        let want = expected[path].0;
        ensure!(*mode == want, "{path}: mode {mode:o}, expected {want:o}");
        ensure!(
            owner == "root/root" || owner == "0/0",
            "{path}: owned by {owner}"
        );
    }

    // 3. Install under a scratch root.
    let prefix = RunPrefix::new('q');
    let dir = TempDir::named(&prefix, "deb")?;
    let root = dir.path().join("root");
    make_root(&root)?;
    let root_arg = format!("--root={}", root.display());
    // The scratch root holds no libc6 or iproute2: step 1 checked the Depends field.
    run("dpkg", &[&root_arg, "--force-depends", "--install", deb])?;
    let status = stdout("dpkg", &[&root_arg, "--status", "ikelb"])?;
    ensure!(status.contains("Status: install ok installed"), "{status}");
    ensure!(
        status.contains("Conffiles:\n /etc/ikelb/ikelb.yaml "),
        "dpkg did not record the conffile:\n{status}"
    );
    for (path, (mode, src)) in &expected {
        let installed = root.join(path);
        let meta = fs::metadata(&installed)
            .with_context(|| format!("{} is not installed", installed.display()))?;
        ensure!(
            meta.permissions().mode() & 0o7777 == *mode,
            "{}: mode {:o}",
            installed.display(),
            meta.permissions().mode()
        );
        if let Some(src) = src {
            ensure!(
                fs::read(&installed)? == fs::read(src)?,
                "{} differs from {}",
                installed.display(),
                src.display()
            );
        }
    }

    // 4. The unit, the binary, the man page and a completion, as installed.
    let unit = root.join("usr/lib/systemd/system/ikelb.service");
    let unit_text = fs::read_to_string(&unit)?;
    ensure!(
        unit_text.contains("\nExecStart=/usr/bin/lb-ctl daemon --config /etc/ikelb/ikelb.yaml\n"),
        "the unit does not start the packaged binary with the packaged config"
    );
    let verify = verify_unit(&root, &unit)?;
    let said = String::from_utf8_lossy(&verify.stderr).trim().to_owned();
    ensure!(
        verify.status.success() && said.is_empty(),
        "systemd-analyze verify {} ({}): {said}",
        unit.display(),
        verify.status
    );
    let unit_copy = dir.path().join("ikelb.service");
    fs::copy(&unit, &unit_copy)?;
    let version_line = stdout(
        root.join("usr/bin/lb-ctl").to_str().unwrap(),
        &["--version"],
    )?;
    ensure!(
        version_line.trim() == format!("lb-ctl {}", env!("CARGO_PKG_VERSION")),
        "lb-ctl --version: {version_line}"
    );
    let page = root.join("usr/share/man/man8/lb-ctl.8.gz");
    let man = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .output()?;
    let text = String::from_utf8_lossy(&man.stdout);
    ensure!(
        man.status.success()
            && [
                "NAME",
                "SYNOPSIS",
                "daemon",
                "lookup",
                "/etc/ikelb/ikelb.yaml"
            ]
            .iter()
            .all(|w| text.contains(w)),
        "man -l {} ({}): {}\n{text}",
        page.display(),
        man.status,
        String::from_utf8_lossy(&man.stderr)
    );
    let completion = root.join("usr/share/bash-completion/completions/lb-ctl");
    let complete = stdout(
        "bash",
        &[
            "-c",
            &format!("source {} && complete -p lb-ctl", completion.display()),
        ],
    )?;
    ensure!(
        complete.contains("lb-ctl"),
        "bash registered no completion: {complete}"
    );

    // 5. Remove keeps the edited conffile; purge removes it, and the package with it.
    let config = root.join("etc/ikelb/ikelb.yaml");
    fs::write(&config, "# edited by the operator\n")?;
    run("dpkg", &[&root_arg, "--remove", "ikelb"])?;
    ensure!(
        !root.join("usr/bin/lb-ctl").exists(),
        "--remove left usr/bin/lb-ctl"
    );
    ensure!(
        fs::read_to_string(&config)? == "# edited by the operator\n",
        "--remove did not keep the edited conffile"
    );
    let status = stdout("dpkg", &[&root_arg, "--status", "ikelb"])?;
    ensure!(
        status.contains("Status: deinstall ok config-files"),
        "{status}"
    );
    // The verify above did look for the binary: without it the same unit is refused. (dpkg
    // removed the emptied usr/bin, which the overlay needs.)
    fs::create_dir_all(root.join("usr/bin"))?;
    let verify = verify_unit(&root, &unit_copy)?;
    let said = String::from_utf8_lossy(&verify.stderr);
    ensure!(
        !verify.status.success() && said.contains("Command /usr/bin/lb-ctl is not executable"),
        "systemd-analyze verify accepted the unit with lb-ctl removed ({}): {said}",
        verify.status
    );
    run("dpkg", &[&root_arg, "--purge", "ikelb"])?;
    let left: Vec<&String> = expected.keys().filter(|p| root.join(p).exists()).collect();
    ensure!(left.is_empty(), "--purge left {left:?}");
    let status = Command::new("dpkg")
        .args([&root_arg, "--status", "ikelb"])
        .output()?;
    ensure!(
        !status.status.success(),
        "dpkg still knows ikelb after --purge: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    Ok(())
}
