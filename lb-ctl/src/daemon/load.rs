//! Loading, steps 1–2 of `daemon.rs`: service ids and interface ports by name, the
//! memlock and descriptor limits, the kernel probe, and the embedded XDP object loaded with
//! the config's globals and map sizes, its maps bound to the pins (reused, fresh or
//! migrated).

use aya::{programs::Xdp, EbpfLoader};
use lb_common::{globals, maps};
use tracing::{debug, info, warn};

use super::DaemonError;
use crate::{
    config::{Config, Mode},
    identity, kernel,
    pin::{self, MapPlan, PinnedState, Pins},
    EBPF_OBJECT, XDP_PROGRAM,
};

/// Service ids and interface ports by name ([`crate::identity`]): the pinned maps' (the
/// running truth), else `state_dir/identity.json`'s, else the lowest free; saved back before
/// anything is loaded.
pub(super) fn assign_identity(
    config: &Config,
    ifindexes: &[u32],
    pins: &Pins,
) -> Result<identity::Identity, DaemonError> {
    let path = identity::path(&config.state_dir);
    let saved = identity::load(&path)?;
    let pinned = pin::read_identity(pins)?;
    let assigned = identity::assign(config, ifindexes, &saved, &pinned);
    for note in &assigned.notes {
        info!(file = %path.display(), "identity: {note}");
    }
    identity::check_bounds(&assigned.identity, config.maglev_table_size, &path)?;
    if assigned.identity != saved {
        match identity::save(&path, &assigned.identity) {
            Ok(()) => {}
            // The new file is in place; only its durability is in doubt (and the pins keep
            // the numbers meanwhile).
            Err(e @ identity::IdentityError::NotDurable { .. }) => warn!("{e}"),
            Err(e) => return Err(e.into()),
        }
    }
    debug!(services = ?assigned.identity.services, ports = ?assigned.identity.ports, "service ids and interface ports");
    Ok(assigned.identity)
}

/// The embedded object loaded against the pins, not yet attached.
pub(super) struct Loaded {
    pub(super) ebpf: aya::Ebpf,
    pub(super) plan: MapPlan,
    /// What the pinned maps held (ids, health, tables), unless the start is fresh.
    pub(super) pinned: Option<PinnedState>,
    pub(super) fingerprint: String,
    /// The load-time globals and map sizes it was loaded with (a reload's program swap loads
    /// the same, one global changed: `daemon/swap.rs`).
    pub(super) globals: Vec<(&'static str, u32)>,
    pub(super) max_entries: Vec<(&'static str, u32)>,
}

/// Loads the embedded object with the config's globals and map sizes, its maps bound to the
/// pins of `pins` (reused, created, or a new set for a migration: [`pin::plan`]). The program
/// itself is loaded into the kernel only when it is to be attached ([`pin::attach`]).
pub(super) fn load(
    config: &Config,
    backend_capacity: u32,
    pins: &Pins,
    identity: &identity::Identity,
) -> Result<Loaded, DaemonError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DaemonError::NoObject);
    }
    raise_memlock_limit();
    crate::listen::raise_nofile_limit();
    // After the memlock limit: kernels before 5.11 charge the probes' maps to it.
    kernel::require()?;
    // Maps indexed by service id hold the highest id + 1 (ids follow names and may leave
    // gaps: `crate::identity`).
    let services = service_capacity(identity.service_slots(), config.maglev_table_size);
    let ring_size = config.maglev_table_size;
    let ticks = config.persist_timeout_ticks();
    let seed = config.hash_seed;
    let dsr = u32::from(config.mode == Mode::Dsr);
    let cpus = possible_cpus();
    let quota = config.new_client_quota(cpus);
    let globals = program_globals(config, cpus).to_vec();
    let max_entries = map_sizes(config, services, backend_capacity);
    let size = |name: &str| max_entries.iter().find(|e| e.0 == name).map_or(0, |e| e.1);
    debug!(
        ring_size,
        ticks,
        seed,
        dsr,
        backend_capacity,
        cpus,
        quota,
        ?max_entries,
        "loading the XDP object"
    );
    // Each family's share of the per-client memory (docs/configuration.md, "Persistence
    // memory per address family").
    info!(
        persist_v4 = size(maps::PERSIST_V4),
        persist_v6 = size(maps::PERSIST_V6),
        probation_v4 = size(maps::PROBATION_V4),
        probation_v6 = size(maps::PROBATION_V6),
        "persistence and probation capacity (entries) per address family"
    );
    pin::ensure_bpffs(&config.bpffs)?;
    let specs = pin::expected_specs(EBPF_OBJECT, &max_entries)?;
    let plan = pin::plan(pins, &specs)?;
    let dir = pins.dir().display();
    let pinned = match &plan {
        MapPlan::Fresh => {
            info!(pins = %dir, "no pinned data path: creating and pinning the maps");
            None
        }
        MapPlan::Reuse => {
            info!(pins = %dir, "reusing the pinned maps (persistence, counters, tables)");
            Some(pin::read_state(pins, Some(ring_size))?)
        }
        MapPlan::Migrate(reasons) => {
            warn!(
                pins = %dir,
                "the pinned maps do not fit this build or config ({}): building a new map set \
                 and moving the persistence entries over",
                reasons.join("; ")
            );
            Some(pin::read_state(pins, None)?)
        }
    };
    let mut loader = EbpfLoader::new();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    for &(name, n) in &max_entries {
        loader.map_max_entries(name, n);
    }
    pin::configure_loader(&mut loader, pins, &plan, &specs)?;
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|source| DaemonError::Load {
            source: Box::new(source),
        })?;
    xdp_program(&mut ebpf)?;
    let fingerprint = pin::fingerprint(EBPF_OBJECT, &globals);
    info!(
        program = XDP_PROGRAM,
        fingerprint = %fingerprint,
        ring_size,
        persist_timeout_ticks = ticks,
        hash_seed = seed,
        dsr = dsr == 1,
        new_client_quota = quota,
        "XDP object loaded"
    );
    if quota != 0 {
        let window_ms = (1u64 << lb_common::QUOTA_WINDOW_SHIFT) as f64 / 1e6;
        info!(
            new_client_rate = config.new_client_rate,
            cpus,
            per_cpu_window = quota,
            "new clients rationed: at most {quota} probation entries per CPU every {window_ms:.0} ms"
        );
    }
    Ok(Loaded {
        ebpf,
        plan,
        pinned,
        fingerprint,
        globals,
        max_entries: max_entries.to_vec(),
    })
}

/// `max_entries` of every map whose size the daemon sets: for `config`, `services` slots of
/// service ids and room for `backend_capacity` backends. Part of the pins' compatibility
/// check ([`pin::expected_specs`]): a change here is a map migration.
pub(super) fn map_sizes(
    config: &Config,
    services: u32,
    backend_capacity: u32,
) -> [(&'static str, u32); 17] {
    // `identity::check_bounds` and `service_capacity` keeps (highest id + 1) × 2 × M within 2^32.
    let rings = services * 2 * config.maglev_table_size;
    // The IPv6 maps are sized for IPv6 services only: an LRU hash preallocates every entry,
    // and with no IPv6 service nothing is ever inserted there.
    let (v6_persist, v6_probation) = config.v6_map_entries();
    [
        (maps::RINGS, rings),
        (maps::SERVICES, services),
        (maps::VIPS_V4, services),
        (maps::VIPS_V6, v6_capacity(config)),
        (maps::BACKENDS, backend_capacity),
        (maps::BACKEND_IDS_V4, backend_capacity),
        (maps::BACKEND_IDS_V6, backend_capacity),
        (maps::BACKEND_STATS, backend_capacity * 2),
        (maps::PERSIST_V4, config.persistence_entries),
        (maps::PERSIST_V6, v6_persist),
        (maps::PROBATION_V4, config.probation_entries),
        (maps::PROBATION_V6, v6_probation),
        // One proof per probation client usually; several behind a NAT address at once.
        (maps::PROOFS_V4, config.probation_entries),
        (maps::PROOFS_V6, v6_probation),
        // One tick stamp per ring slot, indexed like RINGS.
        (maps::REFRESHED_V4, rings),
        // One IKE SA per established client, and an inbound ESP SA (two while it rekeys);
        // both families' clients share them.
        (maps::IKE_SAS, config.persistence_entries.saturating_add(v6_persist)),
        (maps::ESP_SAS, config.persistence_entries.saturating_add(v6_persist)),
    ]
}

/// Service ids beyond the configured ones that the maps indexed by service id hold, so a
/// reload can add a virtual server (`state/services.rs`): at most this many.
pub const SPARE_SERVICES: u32 = 4;

/// Memory the spare ids may cost in `RINGS` and `REFRESHED_V4` together (each spare id is
/// 2 tables of M `u32` in each): fewer spare ids for large tables, none past 2^20 slots.
const SPARE_RING_BYTES: u64 = 16 << 20;

/// Service ids the maps hold for `slots` configured ones (highest id + 1) and tables of `m`
/// slots: `slots` plus up to [`SPARE_SERVICES`] spare ids within [`SPARE_RING_BYTES`] and the
/// 2^32 ring index.
pub fn service_capacity(slots: u32, m: u32) -> u32 {
    let per_id = 2 * u64::from(m) * 4 * 2;
    let by_memory = SPARE_RING_BYTES / per_id.max(1);
    let by_index =
        (u64::from(u32::MAX) / (2 * u64::from(m).max(1))).saturating_sub(u64::from(slots));
    let spare = u64::from(SPARE_SERVICES).min(by_memory).min(by_index) as u32;
    slots.max(1) + spare
}

/// IPv6 services `VIPS_V6` holds: the configured ones plus the spare ids, or 1 entry without
/// an IPv6 service (then the IPv6 per-client maps hold 1 entry too: adding the first IPv6
/// VIP needs a restart).
pub fn v6_capacity(config: &Config) -> u32 {
    let v6 = config
        .virtual_servers
        .iter()
        .filter(|vs| vs.vip.is_ipv6())
        .count() as u32;
    if v6 == 0 {
        1
    } else {
        v6 + SPARE_SERVICES
    }
}

/// Possible CPUs (`/sys/devices/system/cpu/possible`, what per-CPU maps and the quota are
/// spread over); 1 when it cannot be read, which only makes the quota more generous.
fn possible_cpus() -> u32 {
    match aya::util::nr_cpus() {
        Ok(n) => n.get(),
        Err((path, e)) => {
            warn!("reading {path}: {e}; spreading new_client_rate as if there were one CPU");
            1
        }
    }
}

pub(super) fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, DaemonError> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or(DaemonError::MissingProgram { name: XDP_PROGRAM })?
        .try_into()
        .map_err(|source| DaemonError::ProgramType {
            name: XDP_PROGRAM,
            source,
        })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg and ignore
/// it. Raising it is harmless either way.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            "raising RLIMIT_MEMLOCK failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The load-time globals of the XDP program for `config` on `cpus` CPUs (frozen read-only
/// data: the verifier prunes every branch they close). The daemon loads with these, and
/// `tests/verifier_headroom.rs` measures the program as they leave it.
pub fn program_globals(config: &Config, cpus: u32) -> [(&'static str, u32); 7] {
    [
        (globals::RING_SIZE, config.maglev_table_size),
        (globals::PERSIST_TIMEOUT_TICKS, config.persist_timeout_ticks()),
        (globals::HASH_SEED, config.hash_seed),
        (globals::MODE_DSR, u32::from(config.mode == Mode::Dsr)),
        (globals::SLOT_FAST_PATH, u32::from(config.slot_fast_path)),
        (globals::SA_STEERING, u32::from(config.sa_steering)),
        (globals::NEW_CLIENT_QUOTA, config.new_client_quota(cpus)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, vip: &str) -> Config {
        let backend = if vip.contains(':') {
            "2001:db8:1::11"
        } else {
            "10.0.0.11"
        };
        crate::config::parse(
            "t.yaml",
            &format!(
                "interfaces: [eth0]\npersistence_entries: 4096\n{extra}virtual_servers:\n  - \
                 name: a\n    vip: {vip}\n    backends:\n      - address: {backend}\n"
            ),
        )
        .expect("valid config")
    }

    fn sizes(c: &Config) -> Vec<(&'static str, u32)> {
        map_sizes(c, 2, 1024).to_vec()
    }

    /// The maps whose `max_entries` differ between `a` and `b`.
    fn changed(a: &Config, b: &Config) -> Vec<&'static str> {
        sizes(a)
            .into_iter()
            .zip(sizes(b))
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.0)
            .collect()
    }

    fn size(c: &Config, map: &str) -> u32 {
        sizes(c).into_iter().find(|e| e.0 == map).unwrap().1
    }

    const DUAL: &str = "[192.0.2.1, 2001:db8::1]";

    /// Without the v6 keys a dual-stack config sizes the IPv6 maps as every build before them
    /// did: as large as the IPv4 ones.
    #[test]
    fn by_default_each_family_gets_the_ipv4_sizes() {
        let c = config("", DUAL);
        assert_eq!(size(&c, maps::PERSIST_V4), 4096);
        assert_eq!(size(&c, maps::PERSIST_V6), 4096);
        assert_eq!(size(&c, maps::PROBATION_V4), 1024);
        assert_eq!(size(&c, maps::PROBATION_V6), 1024);
        assert_eq!(size(&c, maps::PROOFS_V6), 1024);
    }

    /// Each v6 key sizes its maps and nothing else, so changing it changes exactly the maps
    /// the pins' check compares (a migration, like `persistence_entries`).
    #[test]
    fn each_v6_key_sizes_its_maps_only() {
        let base = config("", DUAL);
        let p = config("persistence_entries_v6: 512\n", DUAL);
        assert_eq!(size(&p, maps::PERSIST_V6), 512);
        // The SA maps hold both families' clients.
        assert_eq!(
            changed(&base, &p),
            [maps::PERSIST_V6, maps::IKE_SAS, maps::ESP_SAS]
        );
        let q = config("probation_entries_v6: 300\n", DUAL);
        assert_eq!(size(&q, maps::PROBATION_V6), 300);
        assert_eq!(changed(&base, &q), [maps::PROBATION_V6, maps::PROOFS_V6]);
        let v4 = config("persistence_entries_v6: 4096\n", DUAL);
        assert!(
            changed(&base, &v4).is_empty(),
            "the default spelled out is no change"
        );
    }

    /// With no IPv6 service the IPv6 maps hold one entry whatever is set (and the setting is
    /// warned about, not refused).
    #[test]
    fn without_an_ipv6_service_the_ipv6_maps_hold_one_entry() {
        let c = config(
            "persistence_entries_v6: 100000\nprobation_entries_v6: 9000\n",
            "192.0.2.1",
        );
        for map in [
            maps::PERSIST_V6,
            maps::PROBATION_V6,
            maps::PROOFS_V6,
            maps::VIPS_V6,
        ] {
            assert_eq!(size(&c, map), 1, "{map}");
        }
        assert_eq!(size(&c, maps::PERSIST_V4), 4096);
        assert_eq!(c.warnings().len(), 2);
        let v6_only = config("persistence_entries_v6: 100000\n", "2001:db8::1");
        assert_eq!(size(&v6_only, maps::PERSIST_V6), 100_000);
        assert!(v6_only.warnings().is_empty());
    }
}
