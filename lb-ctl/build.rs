//! Builds `lb-ebpf` for the BPF target and leaves the object in `OUT_DIR/lb-ebpf`, where
//! `src/ebpf.rs` embeds it: one `lb-ctl` binary carries its own XDP program.
//!
//! Needs the nightly pinned in `lb-ebpf/rust-toolchain.toml` with `rust-src`, and `bpf-linker`
//! on PATH; `cargo xtask bootstrap` (run by `cargo xtask test` / `run`) installs them. `AYA_BUILD_SKIP=1` skips the
//! BPF build (for `cargo check`/clippy) and embeds an empty object instead.

use std::{env, fs, path::PathBuf, process::Command};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("lb-ebpf");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Embedding an empty object keeps `cargo check`/clippy working; loading it fails with
        // a clear "no XDP program in the embedded object" error at run time.
        if !object.exists() {
            fs::write(&object, [])?;
        }
    } else if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        anyhow::bail!(
            "bpf-linker is not on PATH: run `cargo xtask bootstrap` (or `cargo xtask test`), \
             which installs it against the nightly toolchain's LLVM"
        );
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    // aya-build watches lb-ebpf's directory; the object also compiles lb-common in. (A
    // build-dependency on lb-ebpf would do the same but cargo warns: it has no lib target.)
    let common_dir = manifest_dir.join("../lb-common");
    println!(
        "cargo:rerun-if-changed={}",
        common_dir.canonicalize()?.display()
    );
    let ebpf_dir = manifest_dir.join("../lb-ebpf").canonicalize()?;
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let nightly = pinned_channel(&toolchain_file)?;
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: ebpf_dir.to_str().expect("utf-8 path"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&nightly))
}

/// The `channel = "…"` line of a rustup toolchain file.
fn pinned_channel(file: &std::path::Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the pinned nightly: {e}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .find(|v| !v.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{}: no `channel = \"…\"` line", file.display()))
}
