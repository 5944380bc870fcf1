//! Pinning: the data path outlives the daemon, so a restart or an upgrade loses no packet
//! and moves no client (blixt's loader reuses its pins; Cilium commits new maps only after the
//! new program is in place).
//!
//! ## Layout
//!
//! Every daemon owns one *instance directory*, `<bpffs>/<instance>/` (config keys `bpffs`,
//! default `/sys/fs/bpf/ikelb`, and `instance`, default `default`; two daemons on one host
//! need two instance names):
//!
//! ```text
//! /sys/fs/bpf/ikelb/default/
//!   maps/VIPS_V4 … maps/BACKEND_STATS                  every map the daemon or program writes
//!   links/<ifname>          the XDP bpf_link of each interface (it holds the program)
//!   prog/<fingerprint>      the program those links run; the name says which build
//!   maps-new/               only during a map migration (see below)
//! ```
//!
//! The `.rodata` map (load-time globals) is not pinned: it belongs to one program load.
//!
//! ## What a starting daemon does with what it finds
//!
//! * **No pins**: maps are created and pinned, the program is loaded and attached, links and
//!   program are pinned.
//! * **Pinned maps that match** what this build and config would create (type, key and value
//!   size, `max_entries`, flags; checked with `BPF_OBJ_GET_INFO_BY_FD` before anything is
//!   loaded): they are reused as they are — same persistence table, same counters, the
//!   same active Maglev half (`state::Balancer::adopt`). When the program's
//!   [`fingerprint`] (embedded object + load-time globals) equals the pinned one, the running
//!   program is kept and never touched. Otherwise the new program is loaded and every pinned
//!   link is moved to it with `BPF_LINK_UPDATE`: one atomic pointer swap per interface, no
//!   packet sees a detached interface.
//! * **Pinned maps that do not match** (e.g. `maglev_table_size` or `persistence_entries`
//!   changed, or a map type changed between releases): a *migration*. A complete new map set
//!   is created under `maps-new/`, filled by the control plane from the configuration (backend
//!   ids and health are adopted from the old maps), the persistence entries are copied over
//!   (when their key and value layout is unchanged) right before every link is updated to the
//!   new program, and only then `maps-new/` replaces `maps/`. The old program keeps forwarding
//!   from the old maps until its link is swapped, so the old and new map sets are never mixed.
//!   A client that arrived between the copy and the swap (well under a second) is
//!   re-selected by Maglev, which picks the same backend unless the backend set changed.
//!   A migration interrupted by a crash leaves `maps-new/` behind; the next start removes it
//!   and migrates again from `maps/`.
//! * **A map this build has and the pins lack** (an upgrade that adds maps, e.g. from the
//!   build before two-tier persistence: no `PROBATION_*`, `REFRESHED_V4`, `INGRESS`, `QUOTA`,
//!   `EVENTS`, and a `COUNTERS` of 16 entries) is a reason to migrate as well, never to
//!   create it beside the old ones: the old program keeps reading the old set until its link
//!   is swapped, and some values changed meaning (`IFINDEX_PORTS` holds role flags now, which
//!   the old program would take for a port). The new maps start empty; the persistence
//!   entries (and probation entries, when the old set has them) are carried over; the
//!   counters start from zero (a counter reset to Prometheus).
//! * **Interfaces** in the config without a link pin are attached fresh (and pinned); link pins
//!   of interfaces no longer in the config are removed, which detaches them. A link whose
//!   interface disappeared (`ENOLINK` on update) is replaced by a fresh attachment. The XDP
//!   mode of an existing link cannot change: `xdp_mode` takes effect on a fresh attachment, so
//!   changing it needs [`remove_all`] (`lb-ctl daemon --unload`) first.
//!
//! ## Leaving
//!
//! With `detach_on_exit: false` (the default) SIGTERM leaves everything pinned and attached.
//! With `true`, or `lb-ctl daemon --config FILE --unload` (daemon stopped), [`remove_all`]
//! removes the instance directory: removing the link pins detaches XDP (the daemon keeps no
//! link fd open), and the program and maps are freed when the last fd to them closes. `rm -r`
//! of the instance directory does the same.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, MapInfo},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    EbpfLoader,
};
use lb_common::{maps, Backend, PersistKeyV4, PersistKeyV6, PersistValue, ProbationValue, Service};
use tracing::{debug, info, warn};

/// `BPF_F_RDONLY_PROG` from `linux/bpf.h`.
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

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
    maps::REFRESHED_V4,
    maps::INGRESS,
    maps::QUOTA,
    maps::EVENTS,
    maps::IFACES,
    maps::IFINDEX_PORTS,
    maps::TX_PORTS,
    maps::COUNTERS,
    maps::BACKEND_STATS,
];

/// A pinning operation that failed, naming the object and the path.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting a bpffs at {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not on a bpffs and none can be mounted there (its parent {parent} is not a directory ikelb may mount on)")]
    NoBpffs { path: PathBuf, parent: PathBuf },
    #[error("parsing the embedded XDP object: {source}")]
    ParseObject { source: Box<aya_obj::ParseError> },
    #[error("map {map} is not in the embedded XDP object")]
    MissingMap { map: String },
    #[error("reading pinned map {path}: {source}")]
    MapInfo {
        path: PathBuf,
        source: Box<MapError>,
    },
    #[error("map {map}: {op}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        source: Box<MapError>,
    },
    #[error("opening pinned link {path}: {source}")]
    OpenLink { path: PathBuf, source: LinkError },
    #[error("pinning {what} at {path}: {source}")]
    Pin {
        what: String,
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("the link of {iface} is not a bpf_link (this kernel attached XDP over netlink; ikelb needs Linux ≥ 5.9 to pin it): {source}")]
    NotFdLink { iface: String, source: LinkError },
    #[error("program {name}: {op}: {source}")]
    Program {
        name: &'static str,
        op: &'static str,
        source: ProgramError,
    },
    #[error("attaching to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The paths of one instance (see the module doc).
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
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

    fn new_maps_dir(&self) -> PathBuf {
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

/// FNV-1a, 64 bit: change detection of the program, not a security measure.
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// What identifies the program a daemon would run: the embedded object and every load-time
/// global, in order. Two daemons with the same fingerprint run identical programs.
pub fn fingerprint(object: &[u8], globals: &[(&str, u32)]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    fnv1a(&mut h, object);
    for (name, value) in globals {
        fnv1a(&mut h, name.as_bytes());
        fnv1a(&mut h, &value.to_ne_bytes());
    }
    format!("{h:016x}")
}

/// What a map must look like to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    /// `None` where aya decides the size at load time (devmap: 4 or 8 bytes by kernel).
    pub value_size: Option<u32>,
    /// `None` where aya adjusts it at load time (ring buffer: page multiple).
    pub max_entries: Option<u32>,
    pub flags: u32,
}

/// The spec of every pinned map in `object`, with the `max_entries` the daemon sets.
pub fn expected_specs(
    object: &[u8],
    max_entries: &[(&str, u32)],
) -> Result<Vec<MapSpec>, PinError> {
    use aya_obj::generated::bpf_map_type::{
        BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_DEVMAP_HASH,
    };
    let obj = aya_obj::Object::parse(object).map_err(|source| PinError::ParseObject {
        source: Box::new(source),
    })?;
    let mut out = Vec::new();
    for &name in PINNED_MAPS {
        let Some(m) = obj.maps.get(name) else {
            return Err(PinError::MissingMap { map: name.into() });
        };
        let t = m.map_type();
        let devmap = t == BPF_MAP_TYPE_DEVMAP as u32 || t == BPF_MAP_TYPE_DEVMAP_HASH as u32;
        let entries = max_entries
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(m.max_entries(), |e| e.1);
        // The kernel makes every devmap read-only for programs (`dev_map_alloc` adds
        // BPF_F_RDONLY_PROG), so a pinned one reports that flag.
        let kernel_flags = if devmap { BPF_F_RDONLY_PROG } else { 0 };
        out.push(MapSpec {
            name,
            map_type: t,
            key_size: m.key_size(),
            value_size: (!devmap).then_some(m.value_size()),
            max_entries: Some(entries),
            flags: m.map_flags() | kernel_flags,
        });
    }
    Ok(out)
}

/// Why a pinned map cannot be reused, `None` when it can.
fn mismatch(spec: &MapSpec, info: &MapInfo) -> Option<String> {
    let found_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    let mut why = Vec::new();
    if found_type != spec.map_type {
        why.push(format!("type {found_type} (want {})", spec.map_type));
    }
    if info.key_size() != spec.key_size {
        why.push(format!(
            "key size {} (want {})",
            info.key_size(),
            spec.key_size
        ));
    }
    if let Some(v) = spec.value_size {
        if info.value_size() != v {
            why.push(format!("value size {} (want {v})", info.value_size()));
        }
    }
    if let Some(n) = spec.max_entries {
        if info.max_entries() != n {
            why.push(format!("max_entries {} (want {n})", info.max_entries()));
        }
    }
    if info.map_flags() != spec.flags {
        why.push(format!(
            "flags {:#x} (want {:#x})",
            info.map_flags(),
            spec.flags
        ));
    }
    (!why.is_empty()).then(|| format!("{}: {}", spec.name, why.join(", ")))
}

/// What the pinned maps allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapPlan {
    /// No map is pinned: create and pin them all.
    Fresh,
    /// Every map is pinned and matches: reuse them.
    Reuse,
    /// Some maps are pinned but not all match: build a new set beside them (the reasons).
    Migrate(Vec<String>),
}

/// Compares the pinned maps of `pins` with `specs`.
pub fn plan(pins: &Pins, specs: &[MapSpec]) -> Result<MapPlan, PinError> {
    let mut found = 0;
    let mut reasons = Vec::new();
    for spec in specs {
        let path = pins.map(spec.name);
        if !path.exists() {
            reasons.push(format!("{}: not pinned", spec.name));
            continue;
        }
        found += 1;
        let info = MapInfo::from_pin(&path).map_err(|source| PinError::MapInfo {
            path: path.clone(),
            source: Box::new(source),
        })?;
        reasons.extend(mismatch(spec, &info));
    }
    Ok(if found == 0 {
        MapPlan::Fresh
    } else if reasons.is_empty() {
        MapPlan::Reuse
    } else {
        MapPlan::Migrate(reasons)
    })
}

/// Removes every pin below `dir` (pins are files and directories on a bpffs), then `dir`.
fn remove_tree(dir: &Path) -> Result<(), PinError> {
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

fn iface_of_pin(name: &str) -> String {
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

fn open_pinned(path: &Path, map: &'static str) -> Result<Map, PinError> {
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
    if let Ok(ports) = open_pinned(&pins.map(maps::IFINDEX_PORTS), maps::IFINDEX_PORTS)
        .and_then(|m| {
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

/// Copies every persistence and probation entry of the current (old) map set into the maps
/// of `ebpf` (the new set) when both have the same layout; returns how many were copied. An
/// old set without probation maps (an older build) simply has none to copy.
pub fn copy_persistence(pins: &Pins, ebpf: &mut aya::Ebpf) -> Result<usize, PinError> {
    fn copy<K: aya::Pod, V: aya::Pod>(
        pins: &Pins,
        ebpf: &mut aya::Ebpf,
        map: &'static str,
    ) -> Result<usize, PinError> {
        let Ok(old) = open_pinned(&pins.map(map), map) else {
            return Ok(0);
        };
        let Ok(old) = HashMap::<MapData, K, V>::try_from(old) else {
            warn!(
                map,
                "the old persistence map has another layout: clients are re-balanced by Maglev"
            );
            return Ok(0);
        };
        let Some(new) = ebpf.map_mut(map) else {
            return Ok(0);
        };
        let mut new: HashMap<&mut MapData, K, V> =
            HashMap::try_from(new).map_err(|source| PinError::Map {
                map,
                op: "type",
                source: Box::new(source),
            })?;
        let mut n = 0;
        for entry in old.iter() {
            let Ok((k, v)) = entry else { continue };
            // A full new map (smaller capacity) keeps what fits; the rest re-balance.
            if new.insert(k, v, 0).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
    Ok(
        copy::<PersistKeyV4, PersistValue>(pins, ebpf, maps::PERSIST_V4)?
            + copy::<PersistKeyV6, PersistValue>(pins, ebpf, maps::PERSIST_V6)?
            + copy::<PersistKeyV4, ProbationValue>(pins, ebpf, maps::PROBATION_V4)?
            + copy::<PersistKeyV6, ProbationValue>(pins, ebpf, maps::PROBATION_V6)?,
    )
}

/// Moves `maps-new/` to `maps/` once every link runs the program that uses it.
pub fn commit_migration(pins: &Pins) -> Result<(), PinError> {
    let cur = pins.maps_dir();
    let old = pins.dir.join("maps-old");
    remove_tree(&old)?;
    fs::rename(&cur, &old).map_err(io(&cur))?;
    let new = pins.new_maps_dir();
    fs::rename(&new, &cur).map_err(io(&new))?;
    remove_tree(&old)
}

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
        prog.load().map_err(prog_err("load"))?;
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
        match prog.attach_to_if_index(t.ifindex, mode) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_object_and_globals() {
        let a = fingerprint(b"obj", &[("RING_SIZE", 251), ("HASH_SEED", 7)]);
        assert_eq!(a.len(), 16);
        assert_eq!(
            a,
            fingerprint(b"obj", &[("RING_SIZE", 251), ("HASH_SEED", 7)])
        );
        assert_ne!(
            a,
            fingerprint(b"obk", &[("RING_SIZE", 251), ("HASH_SEED", 7)])
        );
        assert_ne!(
            a,
            fingerprint(b"obj", &[("RING_SIZE", 251), ("HASH_SEED", 8)])
        );
    }

    #[test]
    fn layout_is_below_the_instance_directory() {
        let p = Pins::new(Path::new("/sys/fs/bpf/ikelb"), "edge-1");
        assert_eq!(p.dir(), Path::new("/sys/fs/bpf/ikelb/edge-1"));
        assert_eq!(
            p.map("RINGS"),
            Path::new("/sys/fs/bpf/ikelb/edge-1/maps/RINGS")
        );
        assert_eq!(
            p.link("ext"),
            Path::new("/sys/fs/bpf/ikelb/edge-1/links/ext")
        );
        assert_eq!(
            p.link("eth0.100"),
            Path::new("/sys/fs/bpf/ikelb/edge-1/links/eth0%2e100")
        );
        for name in ["eth0.100", "a%2eb", "x%", "plain"] {
            assert_eq!(iface_of_pin(&link_pin_name(name)), name);
            assert!(!link_pin_name(name).contains('.'));
        }
    }

    #[test]
    fn a_missing_pin_root_is_reported_as_a_plan_not_an_error() {
        let p = Pins::new(Path::new("/nonexistent-ikelb-test"), "x");
        assert_eq!(plan(&p, &[]).unwrap(), MapPlan::Fresh);
        assert!(pinned_links(&p).is_empty());
        assert_eq!(pinned_fingerprint(&p), None);
    }
}
