//! The XDP links: putting the program on every configured interface by keeping, updating
//! (`BPF_LINK_UPDATE`) or freshly attaching and pinning each link.

use std::{ffi::CString, fs, os::unix::ffi::OsStrExt, path::Path};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp, XdpMode,
};
use tracing::{info, warn};

use super::{
    commit_migration, copy_persistence, io, layout::remove_tree, pinned_fingerprint, pinned_links,
    PinError, Pins,
};

/// One interface to attach to.
#[derive(Clone, Debug)]
pub struct Target {
    pub iface: String,
    pub ifindex: u32,
}

/// What [`attach`] did, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachReport {
    /// Interfaces whose pinned link kept its program untouched.
    pub kept: Vec<String>,
    /// Interfaces whose pinned link was moved to the new program (`BPF_LINK_UPDATE`).
    pub replaced: Vec<String>,
    /// Interfaces attached fresh, with the mode used.
    pub attached: Vec<(String, &'static str)>,
    /// Link pins removed because their interface left the config.
    pub removed: Vec<String>,
    /// Persistence entries copied into a migrated map set.
    pub copied: Option<usize>,
}

/// Puts `prog` on every target, reusing, replacing or creating links as the module doc says,
/// and pins links and program. `replace` forces the program to be loaded and swapped in even
/// when the fingerprint matches (a migration: the old program uses the old maps).
#[allow(clippy::too_many_arguments)]
pub fn attach(
    ebpf: &mut aya::Ebpf,
    program: &'static str,
    pins: &Pins,
    targets: &[Target],
    modes: &[(XdpMode, &'static str)],
    fingerprint: &str,
    migrate: bool,
) -> Result<AttachReport, PinError> {
    let mut report = AttachReport::default();
    let pinned = pinned_links(pins);
    let previous = pinned_fingerprint(pins);
    let prog_err = |op| {
        move |source| PinError::Program {
            name: program,
            op,
            source,
        }
    };
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or(PinError::MissingMap {
            map: program.into(),
        })?
        .try_into()
        .map_err(prog_err("type"))?;

    // A link whose interface was deleted (and maybe re-created) while no daemon ran is
    // defunct: it runs on nothing. Such a pin is dropped and the interface attached afresh.
    let mut pinned = pinned;
    for t in targets {
        if !pinned.contains(&t.iface) {
            continue;
        }
        let path = pins.link(&t.iface);
        match pinned_link_ifindex(&path) {
            Ok(ifindex) if ifindex == t.ifindex => {}
            found => {
                warn!(interface = %t.iface, ifindex = t.ifindex, ?found, "the pinned link is not on this interface any more (it was re-created?): attaching afresh");
                fs::remove_file(&path).map_err(io(&path))?;
                pinned.retain(|i| *i != t.iface);
            }
        }
    }
    let all_linked = targets.iter().all(|t| pinned.contains(&t.iface));
    if all_linked && !migrate && previous.as_deref() == Some(fingerprint) {
        report.kept = targets.iter().map(|t| t.iface.clone()).collect();
    } else {
        crate::kernel::load_xdp(prog).map_err(prog_err("load"))?;
        if migrate {
            report.copied = Some(copy_persistence_of(pins, ebpf)?);
        }
        let prog: &mut Xdp = ebpf
            .program_mut(program)
            .expect("checked above")
            .try_into()
            .map_err(prog_err("type"))?;
        let links = pins.links_dir();
        fs::create_dir_all(&links).map_err(io(&links))?;
        for t in targets {
            let path = pins.link(&t.iface);
            if pinned.contains(&t.iface) {
                match replace_link(prog, &path) {
                    Ok(()) => {
                        report.replaced.push(t.iface.clone());
                        continue;
                    }
                    Err(e) => {
                        warn!(interface = %t.iface, "the pinned link cannot take the new program ({}); attaching afresh", crate::error_chain(&e));
                        match fs::remove_file(&path) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                return Err(PinError::Io { path, source: e })
                            }
                            _ => {}
                        }
                    }
                }
            }
            let mode = attach_fresh(prog, t, modes, &path)?;
            report.attached.push((t.iface.clone(), mode));
        }
        // The program pin names the build the links now run.
        let dir = pins.prog_dir();
        remove_tree(&dir)?;
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(fingerprint);
        prog.pin(&path).map_err(|source| PinError::Pin {
            what: format!("program {program}"),
            path,
            source,
        })?;
    }
    if migrate {
        commit_migration(pins)?;
    }
    for iface in pinned {
        if !targets.iter().any(|t| t.iface == iface) {
            let path = pins.link(&iface);
            fs::remove_file(&path).map_err(io(&path))?;
            report.removed.push(iface);
        }
    }
    Ok(report)
}

/// A reload's program swap (`persistence_timeout`, docs/operations.md, "Reload"): loads
/// `new`'s program (the verifier runs here), then moves the pinned link of every target to it
/// with `BPF_LINK_UPDATE` — the swap a restart makes, without a fresh attachment as a
/// fallback (that would leave the interface without a program for a moment). A link that
/// cannot be updated moves every link already moved back to the running program (opened from
/// its pin), and the error is returned: every interface runs the program it ran. On success
/// the program pin names `fingerprint`. Returns the interfaces swapped.
pub fn swap(
    new: &mut aya::Ebpf,
    program: &'static str,
    pins: &Pins,
    targets: &[Target],
    fingerprint: &str,
) -> Result<Vec<String>, PinError> {
    let linked = pinned_links(pins);
    if let Some(t) = targets.iter().find(|t| !linked.contains(&t.iface)) {
        return Err(PinError::Io {
            path: pins.link(&t.iface),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no pinned link to update"),
        });
    }
    // What the links run now, to move them back to.
    let running = pinned_fingerprint(pins).map(|f| pins.prog_dir().join(f));
    let prog: &mut Xdp = new
        .program_mut(program)
        .ok_or(PinError::MissingMap {
            map: program.into(),
        })?
        .try_into()
        .map_err(|source| PinError::Program {
            name: program,
            op: "type",
            source,
        })?;
    crate::kernel::load_xdp(prog).map_err(|source| PinError::Program {
        name: program,
        op: "load",
        source,
    })?;
    let mut moved: Vec<String> = Vec::new();
    for t in targets {
        if let Err(e) = replace_link(prog, &pins.link(&t.iface)) {
            if !moved.is_empty() {
                move_back(running.as_deref(), pins, &moved);
            }
            return Err(e);
        }
        moved.push(t.iface.clone());
    }
    // The links run the new program now: a pin that cannot be written is only logged, and
    // an old one never stays (a next daemon with the old file would keep this program).
    let dir = pins.prog_dir();
    let pinned = remove_tree(&dir).and_then(|()| {
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(fingerprint);
        prog.pin(&path).map_err(|source| PinError::Pin {
            what: format!("program {program}"),
            path,
            source,
        })
    });
    if let Err(e) = pinned {
        warn!(
            "pinning the swapped program (the next start replaces it): {}",
            crate::error_chain(&e)
        );
        let _ = remove_tree(&dir);
    }
    Ok(moved)
}

/// Moves the links of `ifaces` back to the program pinned at `running` (a failed [`swap`]).
fn move_back(running: Option<&Path>, pins: &Pins, ifaces: &[String]) {
    let opened = running
        .ok_or_else(|| "no program pin".to_owned())
        .and_then(|path| {
            Xdp::from_pin(path, aya_obj::programs::XdpAttachType::Interface)
                .map_err(|e| crate::error_chain(&e))
        });
    let mut prog = match opened {
        Ok(p) => p,
        Err(e) => {
            warn!(interfaces = ?ifaces, "the running program cannot be opened ({e}): these interfaces stay on the new one");
            return;
        }
    };
    for iface in ifaces {
        if let Err(e) = replace_link(&mut prog, &pins.link(iface)) {
            warn!(interface = %iface, "moving the link back to the running program failed: {}", crate::error_chain(&e));
        }
    }
}

// `copy_persistence` needs the Ebpf while `prog` borrows it: split for the borrow checker.
fn copy_persistence_of(pins: &Pins, ebpf: &mut aya::Ebpf) -> Result<usize, PinError> {
    copy_persistence(pins, ebpf)
}

/// The ifindex an XDP link pinned at `path` is attached to; 0 when its interface is gone
/// (the kernel detaches the link then, `dev_xdp_uninstall`). aya 0.14's `LinkInfo` does not
/// expose it, so this is `BPF_OBJ_GET` + `BPF_OBJ_GET_INFO_BY_FD` by hand.
fn pinned_link_ifindex(path: &Path) -> std::io::Result<u32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use aya_obj::generated::{bpf_link_info, bpf_link_type::BPF_LINK_TYPE_XDP};

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: bpf(2) reads `attr` (size given) and the NUL-terminated path it points to.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            size_of::<ObjGet>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: plain-old-data, all zeros is a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let attr = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_link_info>() as u32,
        info: &mut info as *mut bpf_link_info as u64,
    };
    // SAFETY: bpf(2) writes at most `info_len` bytes into `info`, which we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const GetInfo,
            size_of::<GetInfo>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if info.type_ != BPF_LINK_TYPE_XDP as u32 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("link type {} is not XDP", info.type_),
        ));
    }
    // SAFETY: the union member that matches the link type checked above.
    Ok(unsafe { info.__bindgen_anon_1.xdp.ifindex })
}

/// `BPF_LINK_UPDATE` of the link pinned at `path` to `prog`: atomic, the interface never
/// runs without a program.
fn replace_link(prog: &mut Xdp, path: &Path) -> Result<(), PinError> {
    let pinned = PinnedLink::from_pin(path).map_err(|source| PinError::OpenLink {
        path: path.to_owned(),
        source,
    })?;
    let fd: FdLink = pinned.into();
    let link = XdpLink::try_from(fd).map_err(|source| PinError::OpenLink {
        path: path.to_owned(),
        source,
    })?;
    let id = prog
        .attach_to_link(link)
        .map_err(|source| PinError::Program {
            name: "xdp",
            op: "BPF_LINK_UPDATE",
            source,
        })?;
    // The pin keeps the link; drop our fd so removing the pin alone detaches.
    drop(prog.take_link(id));
    Ok(())
}

fn attach_fresh(
    prog: &mut Xdp,
    t: &Target,
    modes: &[(XdpMode, &'static str)],
    path: &Path,
) -> Result<&'static str, PinError> {
    let mut last = None;
    for &(mode, name) in modes {
        match prog.attach(t.ifindex, mode) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|source| PinError::Program {
                    name: "xdp",
                    op: "take link",
                    source,
                })?;
                let fd = FdLink::try_from(link).map_err(|source| PinError::NotFdLink {
                    iface: t.iface.clone(),
                    source,
                })?;
                fd.pin(path).map_err(|source| PinError::Pin {
                    what: format!("the XDP link of {}", t.iface),
                    path: path.to_owned(),
                    source,
                })?;
                return Ok(name);
            }
            Err(source) => {
                if modes.len() > 1 {
                    info!(interface = %t.iface, "{name} XDP unavailable ({}); trying the next mode", crate::error_chain(&source));
                }
                last = Some(PinError::Attach {
                    iface: t.iface.clone(),
                    mode: name,
                    source,
                });
            }
        }
    }
    Err(last.expect("at least one mode"))
}
