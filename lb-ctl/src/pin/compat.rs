//! Whether the pinned maps fit this build: the program fingerprint, the map specs the
//! embedded object expects, and the plan (fresh, reuse or migrate) from comparing them.

use aya::maps::MapInfo;

use super::{PinError, Pins, PINNED_MAPS};

/// `BPF_F_RDONLY_PROG` from `linux/bpf.h`.
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

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
    use aya_obj::generated::bpf_map_type::{BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_DEVMAP_HASH};
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

/// A pinned map as the kernel describes it, in the terms of a [`MapSpec`].
fn pinned_spec(name: &'static str, info: &MapInfo) -> MapSpec {
    MapSpec {
        name,
        map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        key_size: info.key_size(),
        value_size: Some(info.value_size()),
        max_entries: Some(info.max_entries()),
        flags: info.map_flags(),
    }
}

/// Why the pinned map `found` cannot be reused where `spec` is wanted, `None` when it can.
/// Every field counts, `max_entries` included: a map size the config changed (e.g.
/// `persistence_entries_v6`) is a migration.
pub(super) fn mismatch(spec: &MapSpec, found: &MapSpec) -> Option<String> {
    let mut why = Vec::new();
    if found.map_type != spec.map_type {
        why.push(format!("type {} (want {})", found.map_type, spec.map_type));
    }
    if found.key_size != spec.key_size {
        why.push(format!(
            "key size {} (want {})",
            found.key_size, spec.key_size
        ));
    }
    if let (Some(v), Some(f)) = (spec.value_size, found.value_size) {
        if f != v {
            why.push(format!("value size {f} (want {v})"));
        }
    }
    if let (Some(n), Some(f)) = (spec.max_entries, found.max_entries) {
        if f != n {
            why.push(format!("max_entries {f} (want {n})"));
        }
    }
    if found.flags != spec.flags {
        why.push(format!("flags {:#x} (want {:#x})", found.flags, spec.flags));
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
        reasons.extend(mismatch(spec, &pinned_spec(spec.name, &info)));
    }
    Ok(if found == 0 {
        MapPlan::Fresh
    } else if reasons.is_empty() {
        MapPlan::Reuse
    } else {
        MapPlan::Migrate(reasons)
    })
}
