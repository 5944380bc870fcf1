//! Toolchain and system bootstrap: everything a fresh machine of the project's kind lacks.
//!
//! * Debian packages the tests and the demo use (iproute2, ethtool, ping, nftables,
//!   prometheus, strongSwan, BIRD 2, …);
//! * the stable toolchain pinned in `stable-toolchain.toml`, which every cargo xtask starts
//!   then uses ([`stable`]), and the nightly pinned in `lb-ebpf/rust-toolchain.toml`, with
//!   `rust-src` (for `-Z build-std=core`) (docs/toolchain.md);
//! * `bpf-linker`, built against the LLVM that ships inside that nightly (no prebuilt binary
//!   or matching system LLVM is reachable here; see docs/toolchain.md).
//!
//! * for the kernel matrix (`test`): QEMU, busybox (virtme-ng's initramfs), the Debian
//!   kernel packages of the matrix, and virtme-ng from PyPI (docs/kernels.md).
//!
//! * for `deb` (docs/packaging.md): dpkg-dev, systemd's `systemd-analyze`, man-db, and
//!   cargo-deb from crates.io.
//!
//! Each step checks first and says what it installs, in one line that names the file its
//! output goes to (`<target>/bootstrap-logs/`); a failure shows that log's last lines. A
//! second run installs nothing.

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Debian packages needed by tests, demo and benchmark, each with a file that proves it is
/// installed (a binary, or a plugin for the strongSwan packages).
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/ip", "iproute2"),
    ("/usr/sbin/ethtool", "ethtool"),
    ("/usr/bin/ping", "iputils-ping"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/sbin/conntrack", "conntrack"),
    ("/usr/bin/tcpdump", "tcpdump"),
    ("/usr/bin/prometheus", "prometheus"),
    // BGP for the route announcement test and docs/cluster.md (BIRD 2).
    ("/usr/sbin/bird", "bird2"),
    // VRRP among the cluster lab's nodes, the backends' one default gateway (docs/cluster.md).
    ("/usr/sbin/keepalived", "keepalived"),
    // Real IKEv2 peers for the interop tests and the demo (docs/interop.md).
    ("/usr/lib/ipsec/charon", "strongswan-charon"),
    ("/usr/sbin/swanctl", "strongswan-swanctl"),
    ("/usr/bin/pki", "strongswan-pki"),
    (
        "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so",
        "libcharon-extra-plugins",
    ),
    (
        "/usr/lib/ipsec/plugins/libstrongswan-curve25519.so",
        "libstrongswan-extra-plugins",
    ),
    (
        "/usr/lib/ipsec/plugins/libstrongswan-openssl.so",
        "libstrongswan-standard-plugins",
    ),
];

pub fn all() -> Result<()> {
    packages()?;
    let toolchain = pinned_nightly()?;
    nightly(&toolchain)?;
    bpf_linker(&toolchain)
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(file, _)| !std::path::Path::new(file).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    apt_install(&missing, "", "apt-install")
}

/// cargo-deb, pinned so a newer release cannot raise its rustc requirement: 3.8 needs rustc
/// 1.85 (docs/toolchain.md).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// What `cargo xtask deb` and its test need besides the build: dpkg-dev (`dpkg-shlibdeps`,
/// which computes the package's libc dependency), `systemd-analyze`, man-db, and cargo-deb.
pub fn packaging() -> Result<()> {
    let missing: Vec<&str> = [
        ("/usr/bin/dpkg-shlibdeps", "dpkg-dev"),
        ("/usr/bin/systemd-analyze", "systemd"),
        ("/usr/bin/man", "man-db"),
    ]
    .iter()
    .filter(|(file, _)| !std::path::Path::new(file).exists())
    .map(|(_, pkg)| *pkg)
    .collect();
    apt_install(&missing, " for the Debian package", "apt-install-packaging")?;
    let installed = cmd::output("cargo-deb", &["--version"]);
    if installed
        .as_deref()
        .is_some_and(|v| v.trim() == format!("cargo-deb {CARGO_DEB_VERSION}"))
    {
        return Ok(());
    }
    cmd::run_logged(
        &format!("installing cargo-deb {CARGO_DEB_VERSION} from crates.io (builds the Debian package), ~1 min"),
        "cargo-install-cargo-deb",
        std::process::Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]),
    )
}

/// What the kernel matrix needs: QEMU, busybox, virtme-ng and (`with_kernels`) the Debian
/// kernel packages of `kernels::MATRIX`.
pub fn kernel_matrix(with_kernels: bool) -> Result<()> {
    let mut missing: Vec<&str> = [
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
    ]
    .iter()
    .filter(|(file, _)| !std::path::Path::new(file).exists())
    .map(|(_, pkg)| *pkg)
    .collect();
    if with_kernels {
        missing.extend(
            crate::kernels::MATRIX
                .iter()
                .map(|(pkg, _)| *pkg)
                .filter(|pkg| {
                    !cmd::output("dpkg-query", &["-W", "-f=${Status}", pkg])
                        .is_some_and(|s| s.ends_with("install ok installed"))
                }),
        );
    }
    apt_install(
        &missing,
        " for the kernel matrix",
        "apt-install-kernel-matrix",
    )?;
    if cmd::output("vng", &["--version"]).is_some() {
        return Ok(());
    }
    cmd::run_logged(
        "installing virtme-ng from PyPI (boots the matrix's kernels under QEMU)",
        "pip-install-virtme-ng",
        std::process::Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--root-user-action=ignore",
            "virtme-ng",
        ]),
    )?;
    // pyenv puts new commands on PATH through shims made by `rehash`.
    let _ = cmd::output("pyenv", &["rehash"]);
    if cmd::output("vng", &["--version"]).is_none() {
        bail!("virtme-ng is installed but `vng` is not on PATH (pip's scripts directory)");
    }
    Ok(())
}

/// Installs Debian packages, `why` said after "installing Debian packages"; the output of
/// `apt-get update` and `apt-get install` goes to `<target>/bootstrap-logs/apt-update.log` and
/// `<log>.log`.
pub fn apt_install(missing: &[&str], why: &str, log: &str) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!("missing Debian packages {missing:?}: install them (apt-get install) or run as root");
    }
    cmd::run_logged(
        "updating Debian's package lists",
        "apt-update",
        std::process::Command::new("apt-get").arg("update"),
    )?;
    cmd::run_logged(
        &format!("installing Debian packages{why}: {}", missing.join(" ")),
        log,
        std::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing)
            // Debian's prometheus package starts no daemon here (no systemd); the tests start
            // their own.
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The nightly the XDP object builds with: the `channel` of `lb-ebpf/rust-toolchain.toml`,
/// which lb-ctl/build.rs hands to aya-build too.
pub fn pinned_nightly() -> Result<String> {
    pinned_channel("lb-ebpf/rust-toolchain.toml")
}

/// Installs the stable toolchain pinned in `stable-toolchain.toml` (with clippy and rustfmt)
/// unless it is there, and makes every cargo this process starts use it: through the rustup
/// proxy with `RUSTUP_TOOLCHAIN`, not the `$CARGO` of whatever toolchain built xtask.
pub fn stable() -> Result<()> {
    let toolchain = pinned_channel("stable-toolchain.toml")?;
    let installed = cmd::output(
        "rustup",
        &[
            "component",
            "list",
            "--toolchain",
            &toolchain,
            "--installed",
        ],
    );
    let has = |c: &str| {
        installed
            .as_ref()
            .is_some_and(|l| l.lines().any(|l| l.starts_with(c)))
    };
    if !(has("cargo") && has("clippy") && has("rustfmt")) {
        cmd::run_logged(
            &format!("installing the pinned stable toolchain {toolchain} (builds everything but the XDP object), ~15 s"),
            "rustup-stable",
            std::process::Command::new("rustup").args([
                "toolchain", "install", &toolchain, "--profile", "minimal",
                "--component", "clippy", "--component", "rustfmt",
            ]),
        )?;
    }
    std::env::set_var("RUSTUP_TOOLCHAIN", &toolchain);
    std::env::remove_var("CARGO");
    Ok(())
}

/// The `channel = "…"` of a rustup toolchain file under the workspace root.
fn pinned_channel(path: &str) -> Result<String> {
    let file = cmd::workspace_root().join(path);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read the pinned toolchain", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .find(|v| !v.is_empty())
        .with_context(|| format!("{}: no `channel = \"…\"` line", file.display()))
}

/// Installs the pinned nightly with rust-src unless it is there.
fn nightly(toolchain: &str) -> Result<()> {
    let installed = cmd::output(
        "rustup",
        &["component", "list", "--toolchain", toolchain, "--installed"],
    );
    if installed.is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src"))) {
        return Ok(());
    }
    cmd::run_logged(
        &format!(
            "installing the pinned nightly {toolchain} with rust-src (builds the XDP object), ~15 s"
        ),
        "rustup-nightly",
        std::process::Command::new("rustup").args([
            "toolchain",
            "install",
            toolchain,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]),
    )
}

/// The pinned nightly's LLVM: its sysroot, the dylib name to link, and the major version.
struct NightlyLlvm {
    lib_dir: String,
    dylib: String,
    major: String,
}

fn nightly_llvm(toolchain: &str) -> Result<NightlyLlvm> {
    let plus = format!("+{toolchain}");
    let sysroot = cmd::output("rustc", &[plus.as_str(), "--print", "sysroot"])
        .with_context(|| format!("`rustc {plus}` does not run"))?
        .trim()
        .to_owned();
    let lib_dir = format!("{sysroot}/lib");
    let dylib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {lib_dir}"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*-rust-* library in {lib_dir}"))?;
    let dylib = dylib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    let version = cmd::output("rustc", &[plus.as_str(), "-vV"])
        .with_context(|| format!("`rustc {plus} -vV` failed"))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .with_context(|| format!("`rustc {plus} -vV` names no LLVM version"))?
        .to_owned();
    Ok(NightlyLlvm {
        lib_dir,
        dylib,
        major,
    })
}

/// bpf-linker must run and be linked against *this* nightly's LLVM: a bpf-linker linked to
/// another toolchain's library (an earlier pin, another LLVM) is rebuilt.
fn bpf_linker_ok(llvm: &NightlyLlvm) -> bool {
    let Some(path) = cmd::output("sh", &["-c", "command -v bpf-linker"]) else {
        return false;
    };
    if cmd::output("bpf-linker", &["--version"]).is_none() {
        return false;
    }
    cmd::output("ldd", &[path.trim()]).is_some_and(|ldd| ldd.contains(&llvm.lib_dir))
}

fn bpf_linker(toolchain: &str) -> Result<()> {
    let llvm = nightly_llvm(toolchain)?;
    if bpf_linker_ok(&llvm) {
        return Ok(());
    }
    let rustflags = format!(
        "-L {dir} -l dylib={lib} -C link-arg=-Wl,-rpath,{dir}",
        dir = llvm.lib_dir,
        lib = llvm.dylib
    );
    let features = format!("llvm-{},no-llvm-linking", llvm.major);
    cmd::run_logged(
        &format!(
            "installing bpf-linker against {toolchain}'s LLVM {} ({}), ~3 min",
            llvm.major, llvm.dylib
        ),
        "cargo-install-bpf-linker",
        std::process::Command::new("cargo")
            .arg(format!("+{toolchain}"))
            .args(["install", "bpf-linker", "--locked", "--no-default-features"])
            .args(["--features", &features])
            .env("RUSTFLAGS", rustflags),
    )
}
