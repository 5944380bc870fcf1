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
//!
//! ## Modules
//!
//! * `layout`: the instance directory, its paths and bpffs mount, the pinned map list,
//!   reading the state and identities the pins hold, removing them.
//! * `compat`: the program [`fingerprint`], the map specs this build expects and the
//!   [`plan`] (reuse, fresh, migrate) from comparing them with the pinned maps.
//! * `migration`: carrying persistence entries into a new map set and committing it.
//! * `link`: putting the program on every interface through pinned XDP links ([`attach`]).

use std::path::{Path, PathBuf};

use aya::{
    maps::MapError,
    programs::{links::LinkError, ProgramError},
};

mod compat;
mod layout;
mod link;
mod migration;

pub use compat::{expected_specs, fingerprint, plan, MapPlan, MapSpec};
pub use layout::{
    configure_loader, ensure_bpffs, link_pin_name, pinned_fingerprint, pinned_links, read_identity,
    read_state, remove_all, PinnedState, Pins, PINNED_MAPS,
};
pub use link::{attach, swap, AttachReport, Target};
pub use migration::{commit_migration, copy_persistence};

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

#[cfg(test)]
mod tests;
