//! The layout of an instance directory on the bpffs: its paths, the bpffs mount, the list of
//! pinned maps, and reading (state, identities, links, program fingerprint) and removing pins.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError},
    EbpfLoader,
};
use lb_common::{maps, Backend, Service};
use tracing::{debug, info};

use super::{io, MapPlan, MapSpec, PinError};

/// `BPF_FS_MAGIC` from `linux/magic.h`: `statfs(2)` of a path on a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the kernel expects a bpffs (an empty sysfs directory made for it). Under
/// `ip netns exec`, which remounts /sys, nothing is mounted there.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Every map that is pinned: all of `lb_common::maps` (their contents are the data path's
/// state).
pub const PINNED_MAPS: &[&str] = &[
    maps::VIPS_V4,
    maps::VIPS_V6,
    maps::SERVICES,
    maps::VIP_INDEX_V4,
    maps::VIP_INDEX_V6,
    maps::RINGS,
    maps::BACKENDS,
    maps::BACKEND_IDS_V4,
    maps::BACKEND_IDS_V6,
    maps::PERSIST_V4,
    maps::PERSIST_V6,
    maps::PROBATION_V4,
    maps::PROBATION_V6,
    maps::PROOFS_V4,
    maps::PROOFS_V6,
    maps::IKE_SAS,
    maps::ESP_SAS,
    maps::REFRESHED_V4,
    maps::INGRESS,
    maps::QUOTA,
    maps::EVENTS,
    maps::IFACES,
    maps::IFINDEX_PORTS,
    maps::TX_PORTS,
    maps::COUNTERS,
    maps::BACKEND_STATS,
    maps::IKE_STAGES,
];

/// The paths of one instance (see the module doc).
#[derive(Clone, Debug)]
pub struct Pins {
    pub(super) dir: PathBuf,
}

impl Pins {
    pub fn new(bpffs: &Path, instance: &str) -> Self {
        Self {
            dir: bpffs.join(instance),
        }
    }

    /// `<bpffs>/<instance>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub(super) fn new_maps_dir(&self) -> PathBuf {
        self.dir.join("maps-new")
    }

    /// Where the loader pins the maps under `plan` (`maps-new/` for a migration, which
    /// becomes `maps/` once committed; open fds survive the rename).
    pub fn load_dir(&self, plan: &MapPlan) -> PathBuf {
        match plan {
            MapPlan::Migrate(_) => self.new_maps_dir(),
            _ => self.maps_dir(),
        }
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn prog_dir(&self) -> PathBuf {
        self.dir.join("prog")
    }

    /// Pin path of the link on interface `iface` ([`link_pin_name`]).
    pub fn link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(link_pin_name(iface))
    }

    /// Pin path of map `name` in the current map set.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
}

fn statfs_magic(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // f_type is `__fsword_t`: i64 here, other widths on other targets.
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width depends on the libc target"
    )]
    Ok(st.f_type as i64)
}

fn is_bpffs(path: &Path) -> bool {
    statfs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> Result<(), PinError> {
    let target = CString::new(at.as_os_str().as_bytes()).map_err(|e| PinError::Mount {
        path: at.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount {
            path: at.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    info!(path = %at.display(), "mounted a bpffs (none was there; under `ip netns exec` pins then live as long as this mount namespace)");
    Ok(())
}

/// Makes sure `root` (config `bpffs`) is a directory on a bpffs, mounting one when there is
/// none: on `/sys/fs/bpf` when `root` is below it (its usual place, empty under
/// `ip netns exec`), else on `root` itself.
pub fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    if is_bpffs(root) {
        return Ok(());
    }
    // The deepest existing ancestor decides: on a bpffs we can mkdir below it.
    let mut existing = root.to_path_buf();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p.to_path_buf(),
            None => break,
        }
    }
    if !is_bpffs(&existing) {
        let sys = Path::new(SYS_FS_BPF);
        if root.starts_with(sys) && existing.starts_with(sys) && existing == sys {
            mount_bpffs(sys)?;
        } else if root.starts_with(sys) {
            return Err(PinError::NoBpffs {
                path: root.to_owned(),
                parent: existing,
            });
        } else {
            fs::create_dir_all(root).map_err(io(root))?;
            mount_bpffs(root)?;
            return Ok(());
        }
    }
    fs::create_dir_all(root).map_err(io(root))
}

/// Removes every pin below `dir` (pins are files and directories on a bpffs), then `dir`.
pub(super) fn remove_tree(dir: &Path) -> Result<(), PinError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PinError::Io {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// Prepares the directories for `plan` and points `loader` at the pins: the current set for
/// [`MapPlan::Fresh`] and [`MapPlan::Reuse`], `maps-new/` for a migration.
pub fn configure_loader<'a>(
    loader: &mut EbpfLoader<'a>,
    pins: &Pins,
    plan: &MapPlan,
    specs: &[MapSpec],
) -> Result<(), PinError> {
    // Leftover of an interrupted migration: its program was never committed.
    remove_tree(&pins.new_maps_dir())?;
    let dir = pins.load_dir(plan);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    for spec in specs {
        loader.map_pin_path(spec.name, Cow::Owned(dir.join(spec.name)));
    }
    Ok(())
}

/// The fingerprint of the program the links run now, from the name of its pin.
pub fn pinned_fingerprint(pins: &Pins) -> Option<String> {
    let entries = fs::read_dir(pins.prog_dir()).ok()?;
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    (names.len() == 1).then(|| names[0].clone())
}

/// The pin name of an interface's link. bpffs refuses names with a dot ("reserved for future
/// use", `bpf_lookup`) and interface names may have one (`eth0.100`): `.` is written `%2e`
/// and `%` itself `%25`, which [`iface_of_pin`] reverses.
pub fn link_pin_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

pub(super) fn iface_of_pin(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

/// Interfaces that have a link pin.
pub fn pinned_links(pins: &Pins) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(pins.links_dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| iface_of_pin(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The data path state a previous daemon left in pinned maps, for
/// [`crate::state::Balancer::adopt`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedState {
    /// Every written `BACKENDS` entry (address not 0), by id.
    pub backends: BTreeMap<u32, Backend>,
    /// `SERVICES` (index = service id).
    pub services: Vec<Service>,
    /// Both ring buffers of every service (same index as `services`), when `RINGS` is reused
    /// as it is; empty after a migration (the new `RINGS` is all zeros).
    pub rings: Vec<[Vec<u32>; 2]>,
}

pub(super) fn open_pinned(path: &Path, map: &'static str) -> Result<Map, PinError> {
    let data = MapData::from_pin(path).map_err(|source| PinError::Map {
        map,
        op: "open pin",
        source: Box::new(source),
    })?;
    Map::from_map_data(data).map_err(|source| PinError::Map {
        map,
        op: "open pin",
        source: Box::new(source),
    })
}

/// Reads the state in `pins`' current maps. `ring_size` is M when the rings are to be
/// adopted as well (the maps are reused), `None` after a migration. Maps whose layout is not
/// this build's are skipped (nothing is adopted from them).
pub fn read_state(pins: &Pins, ring_size: Option<u32>) -> Result<PinnedState, PinError> {
    let op = |map: &'static str, op: &'static str| {
        move |source: MapError| PinError::Map {
            map,
            op,
            source: Box::new(source),
        }
    };
    let mut state = PinnedState::default();
    if let Ok(backends) = open_pinned(&pins.map(maps::BACKENDS), maps::BACKENDS)
        .and_then(|m| Array::<MapData, Backend>::try_from(m).map_err(op(maps::BACKENDS, "type")))
    {
        for id in 1..backends.len() {
            let b = backends.get(&id, 0).map_err(op(maps::BACKENDS, "read"))?;
            if b.addr != [0; 4] {
                state.backends.insert(id, b);
            }
        }
    }
    if let Ok(services) = open_pinned(&pins.map(maps::SERVICES), maps::SERVICES)
        .and_then(|m| Array::<MapData, Service>::try_from(m).map_err(op(maps::SERVICES, "type")))
    {
        for id in 0..services.len() {
            state
                .services
                .push(services.get(&id, 0).map_err(op(maps::SERVICES, "read"))?);
        }
    }
    if let Some(m) = ring_size {
        let rings =
            Array::<MapData, u32>::try_from(open_pinned(&pins.map(maps::RINGS), maps::RINGS)?)
                .map_err(op(maps::RINGS, "type"))?;
        for id in 0..state.services.len() as u32 {
            let read = |b: u32| -> Result<Vec<u32>, PinError> {
                let base = (id * 2 + b) * m;
                (base..base + m)
                    .map(|i| rings.get(&i, 0).map_err(op(maps::RINGS, "read")))
                    .collect()
            };
            state.rings.push([read(0)?, read(1)?]);
        }
    }
    Ok(state)
}

/// What the pinned maps say about service ids and interface ports
/// (`crate::identity`): the VIP of every written `SERVICES` entry, and the port of every
/// ifindex in `IFINDEX_PORTS`. Read before anything is loaded (the ids size the maps). No
/// pins, or maps of another layout, say nothing.
pub fn read_identity(pins: &Pins) -> Result<crate::identity::PinnedIds, PinError> {
    let op = |map: &'static str, op: &'static str| {
        move |source: MapError| PinError::Map {
            map,
            op,
            source: Box::new(source),
        }
    };
    let mut ids = crate::identity::PinnedIds::default();
    if let Ok(services) = open_pinned(&pins.map(maps::SERVICES), maps::SERVICES)
        .and_then(|m| Array::<MapData, Service>::try_from(m).map_err(op(maps::SERVICES, "type")))
    {
        let mut values = Vec::new();
        for id in 0..services.len() {
            values.push(services.get(&id, 0).map_err(op(maps::SERVICES, "read"))?);
        }
        ids.services = crate::identity::PinnedIds::from_services(&values);
    }
    if let Ok(ports) =
        open_pinned(&pins.map(maps::IFINDEX_PORTS), maps::IFINDEX_PORTS).and_then(|m| {
            HashMap::<MapData, u32, u32>::try_from(m).map_err(op(maps::IFINDEX_PORTS, "type"))
        })
    {
        for entry in ports.iter() {
            let (ifindex, value) = entry.map_err(op(maps::IFINDEX_PORTS, "read"))?;
            ids.ports
                .insert(ifindex, value & lb_common::INGRESS_PORT_MASK);
        }
    }
    Ok(ids)
}

/// Removes the instance directory: detaches XDP from every interface (link pins) and lets
/// the kernel free program and maps once no process holds them. Returns the interfaces that
/// were detached; `Ok(empty)` when nothing was pinned.
pub fn remove_all(pins: &Pins) -> Result<Vec<String>, PinError> {
    let links = pinned_links(pins);
    // Links first, so no interface keeps running a program whose maps are going away.
    for iface in &links {
        let path = pins.link(iface);
        fs::remove_file(&path).map_err(io(&path))?;
        debug!(interface = %iface, "link pin removed");
    }
    remove_tree(&pins.dir)?;
    Ok(links)
}
