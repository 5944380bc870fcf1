//! A map migration: copying the persistence and probation entries of the old map set into
//! the new one, and committing `maps-new/` as `maps/`.

use std::fs;

use aya::maps::{HashMap, MapData};
use lb_common::{maps, PersistKeyV4, PersistKeyV6, PersistValue, ProbationValue};
use tracing::warn;

use super::{
    io,
    layout::{open_pinned, remove_tree},
    PinError, Pins,
};

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
            if new.insert(&k, &v, 0).is_ok() {
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
