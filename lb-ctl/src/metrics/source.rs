//! What a scrape reads from the data path: [`StatsSource`], and [`PinnedStats`], its
//! implementation over the pinned maps through descriptors of its own (per-CPU `COUNTERS`,
//! `EVENTS`, `IKE_STAGES`, `BACKEND_STATS` summed over CPUs; the persistence and probation maps walked).

use std::path::Path;

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use lb_common::{counter, event, ike, maps, Traffic, DIR_FORWARD, DIR_REVERSE};

use crate::{
    dataplane::{DataplaneError, PersistEntry},
    scan::PersistMaps,
};

/// What the scrape reads from the data path.
pub trait StatsSource: Send + Sync + 'static {
    /// `COUNTERS` summed over CPUs, indexed like `lb_common::counter`.
    fn counters(&self) -> Result<Vec<u64>, DataplaneError>;
    /// `EVENTS` summed over CPUs, indexed like `lb_common::event`.
    fn events(&self) -> Result<Vec<u64>, DataplaneError>;
    /// `IKE_STAGES` summed over CPUs, indexed like `lb_common::ike`'s counters.
    fn ike_stages(&self) -> Result<Vec<u64>, DataplaneError>;
    /// `BACKEND_STATS` of backend `id`, summed over CPUs, indexed by `DIR_*`.
    fn backend_traffic(&self, id: u32) -> Result<[Traffic; 2], DataplaneError>;
    /// Every entry of `PERSIST_V4`, `PERSIST_V6`, `PROBATION_V4` and `PROBATION_V6`: what
    /// the metrics' own scanner reads until the daemon's is shared
    /// ([`Metrics::share_scans`](super::Metrics::share_scans)).
    fn persistence(&self) -> Result<Vec<PersistEntry>, DataplaneError>;
}

fn read_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Read {
        map,
        source: Box::new(source),
    }
}

/// [`StatsSource`] over the pinned maps: its own fds (opened from the pins), so a scrape
/// never waits for the control loop.
pub struct PinnedStats {
    counters: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
    ike: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, Traffic>,
    persistence: PersistMaps,
}

impl PinnedStats {
    /// Opens `COUNTERS`, `EVENTS`, `IKE_STAGES`, `BACKEND_STATS` and the persistence and probation maps
    /// from `maps_dir` (`pin::Pins::maps_dir`).
    pub fn open(maps_dir: &Path) -> Result<Self, DataplaneError> {
        fn open(dir: &Path, map: &'static str) -> Result<Map, DataplaneError> {
            let data = MapData::from_pin(dir.join(map)).map_err(read_err(map))?;
            Map::from_map_data(data).map_err(read_err(map))
        }
        let typed = |map: &'static str| {
            move |source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            }
        };
        Ok(Self {
            counters: PerCpuArray::try_from(open(maps_dir, maps::COUNTERS)?)
                .map_err(typed(maps::COUNTERS))?,
            events: PerCpuArray::try_from(open(maps_dir, maps::EVENTS)?)
                .map_err(typed(maps::EVENTS))?,
            ike: PerCpuArray::try_from(open(maps_dir, maps::IKE_STAGES)?)
                .map_err(typed(maps::IKE_STAGES))?,
            stats: PerCpuArray::try_from(open(maps_dir, maps::BACKEND_STATS)?)
                .map_err(typed(maps::BACKEND_STATS))?,
            persistence: PersistMaps::from_pins(maps_dir)?,
        })
    }
}

impl StatsSource for PinnedStats {
    fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..counter::COUNT)
            .map(|i| {
                self.counters
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(read_err(maps::COUNTERS))
            })
            .collect()
    }

    fn events(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..event::COUNT)
            .map(|i| {
                self.events
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(read_err(maps::EVENTS))
            })
            .collect()
    }

    fn ike_stages(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..ike::COUNT)
            .map(|i| {
                self.ike
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(read_err(maps::IKE_STAGES))
            })
            .collect()
    }

    fn backend_traffic(&self, id: u32) -> Result<[Traffic; 2], DataplaneError> {
        let dir = |d: u32| -> Result<Traffic, DataplaneError> {
            let per_cpu = self
                .stats
                .get(&(id * 2 + d), 0)
                .map_err(read_err(maps::BACKEND_STATS))?;
            Ok(per_cpu.iter().fold(Traffic::default(), |a, t| Traffic {
                packets: a.packets + t.packets,
                bytes: a.bytes + t.bytes,
            }))
        };
        Ok([dir(DIR_FORWARD)?, dir(DIR_REVERSE)?])
    }

    fn persistence(&self) -> Result<Vec<PersistEntry>, DataplaneError> {
        Ok(self.persistence.scan()?.entries)
    }
}
