//! What the running kernel must offer the XDP program, checked before the object is loaded,
//! so an old kernel is told in one line instead of a verifier dump.
//!
//! [`REQUIREMENTS`] lists what the embedded object uses (from `lb-ebpf`: program type, map
//! types, helpers, load-time globals) with the first Linux release that has each. [`check`]
//! probes them through a [`Probe`] ([`AyaProbe`]: aya's feature probes) and fails on the
//! first one missing. A probe that errors (e.g. `EPERM` when not root) proves nothing: it is
//! logged as a warning and the real load decides. When the load does fail in the verifier,
//! [`refusal`] turns aya's error into one line with the log's last meaningful line (the whole
//! log goes to the debug log).
//!
//! Kernel BTF is not required: the object has no CO-RE relocations and declares its maps in
//! the legacy `maps` section; aya loads the object's own BTF only where the kernel takes it.

use std::{error::Error, ffi::CStr, path::Path};

use aya::{
    maps::MapType,
    programs::{ProgramError, ProgramType},
    sys::BpfHelper,
};
use tracing::{debug, info, warn};

/// Where aya finds the kernel's BTF (optional for ikelb, logged at start).
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What kind of kernel piece a [`Requirement`] is, and what to probe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Program(ProgramType),
    Map(MapType),
    /// Callable from an XDP program.
    Helper(BpfHelper),
    /// `.rodata` globals set at load time (`EbpfLoader::override_global`).
    GlobalData,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Program(_) => "program type",
            Kind::Map(_) => "map type",
            Kind::Helper(_) => "helper",
            Kind::GlobalData => "feature",
        }
    }
}

/// One piece the XDP program needs and the first Linux release that has it.
#[derive(Clone, Copy, Debug)]
pub struct Requirement {
    pub what: &'static str,
    pub kind: Kind,
    pub since: &'static str,
}

const fn req(what: &'static str, kind: Kind, since: &'static str) -> Requirement {
    Requirement { what, kind, since }
}

/// Everything the embedded object uses, most basic first (the first missing one is reported).
#[rustfmt::skip]
pub const REQUIREMENTS: &[Requirement] = &[
    req("XDP",                       Kind::Program(ProgramType::Xdp),                     "4.8"),
    req("BPF_MAP_TYPE_ARRAY",        Kind::Map(MapType::Array),                           "3.19"),
    req("BPF_MAP_TYPE_HASH",         Kind::Map(MapType::Hash),                            "3.19"),
    req("BPF_MAP_TYPE_PERCPU_ARRAY", Kind::Map(MapType::PerCpuArray),                     "4.6"),
    req("BPF_MAP_TYPE_LRU_HASH",     Kind::Map(MapType::LruHash),                         "4.10"),
    req("BPF_MAP_TYPE_DEVMAP",       Kind::Map(MapType::DevMap),                          "4.14"),
    req("global data (.rodata)",     Kind::GlobalData,                                    "5.2"),
    req("bpf_map_lookup_elem",       Kind::Helper(BpfHelper::BPF_FUNC_map_lookup_elem),   "3.19"),
    req("bpf_map_update_elem",       Kind::Helper(BpfHelper::BPF_FUNC_map_update_elem),   "3.19"),
    req("bpf_map_delete_elem",       Kind::Helper(BpfHelper::BPF_FUNC_map_delete_elem),   "3.19"),
    req("bpf_redirect_map",          Kind::Helper(BpfHelper::BPF_FUNC_redirect_map),      "4.14"),
    req("bpf_fib_lookup",            Kind::Helper(BpfHelper::BPF_FUNC_fib_lookup),        "4.18"),
    req("bpf_ktime_get_coarse_ns",   Kind::Helper(BpfHelper::BPF_FUNC_ktime_get_coarse_ns), "5.11"),
];

/// Asks the kernel about one [`Kind`]: `Ok(false)` when it is missing, `Err(reason)` when the
/// probe itself failed and nothing is known.
pub trait Probe {
    /// The kernel release (`uname -r`).
    fn release(&self) -> String;
    /// Whether the kernel has `kind` (for helpers: callable from XDP).
    fn supports(&self, kind: Kind) -> Result<bool, String>;
}

/// Why the kernel cannot run the XDP program. One line each.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "kernel {release} lacks {what} ({kind}, Linux {since}): ikelb needs Linux >= 6.1 \
         (docs/operations.md, \"Kernel requirements\")"
    )]
    Missing {
        release: String,
        what: &'static str,
        kind: &'static str,
        since: &'static str,
    },
    #[error(
        "kernel {release}: the verifier refused XDP program {program}: {line} ({errno}); \
         RUST_LOG=lb_ctl=debug logs the whole verifier log"
    )]
    Refused {
        release: String,
        program: &'static str,
        line: String,
        errno: String,
    },
}

/// Probes every [`REQUIREMENTS`] entry; the first missing one is the error (any others are
/// logged as warnings), probes that fail are logged and passed.
pub fn check(probe: &impl Probe) -> Result<(), KernelError> {
    let release = probe.release();
    let mut missing = Vec::new();
    let mut unknown = Vec::new();
    for r in REQUIREMENTS {
        match probe.supports(r.kind) {
            Ok(true) => {}
            Ok(false) => missing.push(r),
            Err(e) => unknown.push((r, e)),
        }
    }
    if let Some((first, others)) = missing.split_first() {
        for r in others {
            let (what, kind, since) = (r.what, r.kind.label(), r.since);
            warn!(kernel = %release, "the kernel also lacks {what} ({kind}, Linux {since})");
        }
        return Err(KernelError::Missing {
            release,
            what: first.what,
            kind: first.kind.label(),
            since: first.since,
        });
    }
    match unknown.as_slice() {
        [] => info!(kernel = %release, "kernel requirements of the XDP program met"),
        // Typically EPERM (not root): one line, not one per requirement.
        [(_, e), ..] if unknown.len() == REQUIREMENTS.len() => {
            warn!(kernel = %release, "cannot probe BPF features ({e}); the load will tell");
        }
        _ => {
            for (r, e) in &unknown {
                let (what, kind) = (r.what, r.kind.label());
                warn!(kernel = %release, "cannot probe {what} ({kind}): {e}; the load will tell");
            }
            let (met, unknown) = (REQUIREMENTS.len() - unknown.len(), unknown.len());
            let msg = "kernel requirements of the XDP program met as far as probed";
            info!(kernel = %release, met, unknown, "{msg}");
        }
    }
    Ok(())
}

/// Checks the running kernel ([`AyaProbe`]) and logs whether kernel BTF is there.
pub fn require() -> Result<(), KernelError> {
    check(&AyaProbe)?;
    info!(
        vmlinux_btf = Path::new(VMLINUX_BTF).exists(),
        program_btf = aya::sys::is_btf_supported().unwrap_or(false),
        "kernel BTF is optional for ikelb (no CO-RE relocations)"
    );
    Ok(())
}

/// The running kernel, through aya's feature probes (each loads a tiny program or creates a
/// one-entry map).
pub struct AyaProbe;

impl Probe for AyaProbe {
    fn release(&self) -> String {
        release()
    }

    fn supports(&self, kind: Kind) -> Result<bool, String> {
        let chain = |e: &(dyn Error + 'static)| crate::error_chain(e);
        match kind {
            Kind::Program(t) => aya::sys::is_program_supported(t).map_err(|e| chain(&e)),
            Kind::Map(t) => aya::sys::is_map_supported(t).map_err(|e| chain(&e)),
            Kind::Helper(h) => {
                aya::sys::is_helper_supported(ProgramType::Xdp, h).map_err(|e| chain(&e))
            }
            // aya's probe says "no" on any failure, EPERM included: trust a "no" only when an
            // XDP program can be loaded at all.
            Kind::GlobalData if aya::sys::is_bpf_global_data_supported().unwrap_or(false) => {
                Ok(true)
            }
            Kind::GlobalData => match aya::sys::is_program_supported(ProgramType::Xdp) {
                Ok(true) => Ok(false),
                Ok(false) => Err("no XDP program can be loaded to probe it".to_owned()),
                Err(e) => Err(chain(&e)),
            },
        }
    }
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    // SAFETY: utsname is plain old data; uname fills it and its fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "(unknown release)".to_owned();
        }
        CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The verifier's refusal of `program` somewhere in `e`'s sources, as one line; the whole
/// verifier log is logged at debug level. `None` when `e` is not a program load that failed
/// with a verifier log (an `EPERM` before the verifier has none).
pub fn refusal(program: &'static str, e: &(dyn Error + 'static)) -> Option<KernelError> {
    let (io_error, log) = std::iter::successors(Some(e), |&e| e.source()).find_map(|e| {
        match e.downcast_ref::<ProgramError>()? {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => Some((io_error, verifier_log.to_string())),
            _ => None,
        }
    })?;
    let line = last_meaningful_line(&log)?.to_owned();
    debug!(program, "verifier log:\n{log}");
    Some(KernelError::Refused {
        release: release(),
        program,
        line,
        errno: format!("BPF_PROG_LOAD: {io_error}"),
    })
}

/// The last line of a verifier log that says something: the statistics the kernel appends
/// (`processed N insns …`, `verification time …`, `stack depth …`) are skipped.
pub fn last_meaningful_line(log: &str) -> Option<&str> {
    const STATS: &[&str] = &["processed ", "verification time", "stack depth"];
    log.lines()
        .map(|l| l.trim_matches(|c: char| c.is_whitespace() || c == '\0'))
        .rev()
        .find(|l| !l.is_empty() && !STATS.iter().any(|s| l.starts_with(s)))
}


/// Loads `prog` into the kernel, retrying a load the verifier gave up with `EAGAIN`: it does
/// when a signal is pending for the loading thread (`bpf_check`: `signal_pending(current)`),
/// e.g. a SIGCHLD of another thread's child process delivered to this one. libbpf retries
/// the same way (`sys_bpf_prog_load`, five attempts); any other error is returned at once.
pub fn load_xdp(prog: &mut aya::programs::Xdp) -> Result<(), ProgramError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match prog.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                debug!(attempt, "the verifier was interrupted (EAGAIN): loading again");
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests;
