//! The daemon's start, in the order of `daemon.rs`'s steps 2–4 (identity, load, adoption,
//! first health round, fill, next hops, own addresses, attach, announced routes reconciled),
//! its loop until SIGINT or SIGTERM: control events, periodic next-hop resolution and
//! own-address refresh, metrics and announced routes brought up to date after each change;
//! and the routes withdrawn on a clean stop (step 6).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use super::{
    interface_mac, load::assign_identity, load::load, Daemon, DaemonError, Resolution,
    RESOLVE_INTERVAL,
};
use crate::{
    announce::{Announcer, Netlink, Trigger},
    config::Config,
    dataplane::{words_addr, AyaDataplane},
    neighbor::IpCommand,
    own_addresses::{local_addresses, OwnAddresses},
    pin::{self, MapPlan, Pins},
    runtime,
    state::{backend_capacity, Balancer, IfaceInfo, StateError},
};

pub(super) async fn run_async(config: Config, ifindexes: Vec<u32>) -> Result<(), DaemonError> {
    let mut ifaces = Vec::new();
    for (iface, &ifindex) in config.interfaces.iter().zip(&ifindexes) {
        ifaces.push(IfaceInfo {
            name: iface.name.clone(),
            ifindex,
            mac: interface_mac(&iface.name)?,
        });
    }
    // Signal handlers first: a SIGTERM during start-up must still detach cleanly.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| DaemonError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Signal {
        signal: "SIGINT",
        source,
    })?;
    // SIGHUP (`systemctl reload ikelb`) reloads the config: `lb-ctl reload` without a socket.
    let mut sighup = signal(SignalKind::hangup()).map_err(|source| DaemonError::Signal {
        signal: "SIGHUP",
        source,
    })?;

    // A taken metrics port stops the start before the data path is touched.
    let metrics_listener = crate::metrics::http::bind(config.metrics_listen).await?;
    let capacity = backend_capacity(config.backend_count());
    let pins = Pins::new(&config.bpffs, &config.instance);
    let identity = assign_identity(&config, &ifindexes, &pins)?;
    let loaded = load(&config, capacity, &pins, &identity)?;
    // Scrapes read the maps through their own fds (opened from the pins just made or
    // reused), never through the control loop.
    let stats = crate::metrics::PinnedStats::open(&pins.load_dir(&loaded.plan))
        .map_err(|e| DaemonError::State(Box::new(StateError::Dataplane(e))))?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(
        std::sync::Arc::new(stats),
        config.persist_timeout_ticks(),
        crate::metrics::Capacity {
            persistence: config.persistence_entries,
            probation: config.probation_entries,
        },
    )?);
    let (globals, max_entries) = (loaded.globals.clone(), loaded.max_entries.clone());
    let mut balancer = Balancer::with_identity(
        AyaDataplane::new(loaded.ebpf),
        &config,
        ifaces,
        capacity,
        &identity,
    )?;
    // Room for services a reload adds (the maps' spare service ids: daemon/load.rs).
    balancer.set_service_capacity(
        super::load::service_capacity(identity.service_slots(), config.maglev_table_size),
        super::load::v6_capacity(&config),
    );
    // Runtime backend changes (state_dir) before adoption, so adopted ids follow addresses.
    let controller = runtime::Controller::for_daemon(&config, &mut balancer)
        .map_err(|e| DaemonError::Control(Box::new(e)))?;
    if let Some(pinned) = &loaded.pinned {
        let r = balancer.adopt(pinned, loaded.plan == MapPlan::Reuse)?;
        info!(
            kept_ids = r.kept_ids,
            usable = r.usable,
            new = r.new,
            stale = r.stale,
            tables = r.tables,
            stale_services = r.stale_services,
            "adopted the pinned data path's backends and tables"
        );
        // Ring flags describe the persistence entries only for the program (and globals,
        // e.g. `hash_seed`) that kept them: another one, or a migration, flags every slot
        // until the first sweep (state.rs, "Slot flags").
        if loaded.plan == MapPlan::Reuse
            && pin::pinned_fingerprint(&pins).as_deref() != Some(loaded.fingerprint.as_str())
        {
            balancer.flag_all_slots();
            info!("the pinned program differs: every ring slot flagged until the first sweep");
        }
    }
    let mut daemon = Daemon {
        balancer,
        config,
        pins,
        fingerprint: loaded.fingerprint,
        migrate: matches!(loaded.plan, MapPlan::Migrate(_)),
        status: HashMap::new(),
        resolver: IpCommand::default(),
        announcer: None,
    };
    // One health round before the maps are applied and the program attached; then the
    // health monitor, the control socket and drains run in the loop below.
    let mut control = runtime::Runtime::start(
        controller,
        &mut daemon.balancer,
        Some(metrics.probe_observer()),
    )
    .await
    .map_err(|e| DaemonError::Control(Box::new(e)))?;
    control.observe_sweeps(metrics.sweep_observer());
    control.observe_shares(metrics.share_observer());
    // One persistence scan at a time for scrapes, queries, drains and the sweep.
    metrics.share_scans(control.scanner());

    // Fill everything (fresh: backends unusable; adopted: nothing changes), then resolve
    // next hops, then attach.
    daemon.balancer.apply()?;
    daemon.refresh_next_hops().await?;
    // The gateway's own addresses next, refreshed with every next-hop pass below.
    let mut own = OwnAddresses::adopt(daemon.balancer.dataplane()).unwrap_or_else(|e| {
        warn!(
            "reading the own addresses a previous daemon listed: {}",
            crate::error_chain(&e)
        );
        OwnAddresses::default()
    });
    refresh_own_addresses(&mut daemon, &mut own);
    let attached = daemon.attach_all();
    let outcome = match attached {
        Ok(()) => {
            // A reload of `persistence_timeout` swaps the program on these interfaces.
            let targets = daemon
                .balancer
                .ifaces()
                .iter()
                .map(|i| pin::Target {
                    iface: i.name.clone(),
                    ifindex: i.ifindex,
                })
                .collect();
            let swapper = super::swap::swapper(daemon.pins.clone(), globals, max_entries, targets);
            daemon.balancer.dataplane_mut().set_swapper(swapper);
            metrics.publish(&daemon.balancer);
            // Attached: from now on the node can serve, and says so (announce.rs).
            if let Some(a) = daemon.config.announce {
                let announcer = Announcer::new(a.table, Netlink::default());
                control.controller.share_announcements(announcer.shared());
                daemon.announcer = Some(announcer);
                info!(
                    table = a.table,
                    withdraw_on_stop = a.withdraw_on_stop,
                    "announcing the VIPs this node can serve as host routes (proto 75)"
                );
            }
            announce(&mut daemon, &metrics, Trigger::Recheck);
            let server =
                crate::metrics::http::serve(metrics_listener, std::sync::Arc::clone(&metrics));
            info!(listen = %daemon.config.metrics_listen, "Prometheus metrics at http://{}/metrics", daemon.config.metrics_listen);
            info!(
                virtual_servers = daemon.config.virtual_servers.len(),
                backends = daemon.config.backend_count(),
                usable = daemon.balancer.backends().filter(|b| b.usable()).count(),
                "ikelb running; SIGINT or SIGTERM stops it"
            );
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + RESOLVE_INTERVAL,
                RESOLVE_INTERVAL,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Next-hop resolution runs in the blocking pool (`ip`, ARP waits of up to a
            // second) while the loop keeps serving health reports and requests: a failover
            // is never held up behind a neighbour that does not answer.
            let mut resolving: Option<Resolution> = None;
            let mut resolve_again = false;
            let outcome = loop {
                tokio::select! {
                    _ = sigterm.recv() => { info!("SIGTERM received"); break Ok(()); }
                    _ = sigint.recv() => { info!("SIGINT received"); break Ok(()); }
                    _ = sighup.recv() => {
                        info!("SIGHUP received: reloading the configuration");
                        if reload(&mut control, &mut daemon) {
                            match resolving {
                                None => resolving = Some(daemon.start_resolve()),
                                Some(_) => resolve_again = true,
                            }
                        }
                        metrics.publish(&daemon.balancer);
                        announce(&mut daemon, &metrics, Trigger::Change);
                    }
                    event = control.next_event() => {
                        // A failed route write is retried on a health round.
                        let trigger = match event {
                            runtime::Event::Health(_) => Trigger::Round,
                            _ => Trigger::Change,
                        };
                        if control.handle(&mut daemon.balancer, event) {
                            // A backend came up or was added: look up its next hop now.
                            match resolving {
                                None => resolving = Some(daemon.start_resolve()),
                                Some(_) => resolve_again = true,
                            }
                        }
                        metrics.publish(&daemon.balancer);
                        announce(&mut daemon, &metrics, trigger);
                    }
                    _ = tick.tick() => {
                        refresh_own_addresses(&mut daemon, &mut own);
                        announce(&mut daemon, &metrics, Trigger::Recheck);
                        if resolving.is_none() {
                            resolving = Some(daemon.start_resolve());
                        }
                    }
                    done = async { resolving.as_mut().expect("guarded by the condition").await },
                        if resolving.is_some() => {
                        resolving = None;
                        let (targets, results) =
                            done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                        if let Err(e) = daemon.finish_resolve(targets, results) {
                            // The mirror is only advanced on success: the next pass retries.
                            warn!(
                                "updating the maps failed, retrying in {}: {}",
                                humantime::format_duration(RESOLVE_INTERVAL),
                                crate::error_chain(&e)
                            );
                        }
                        if std::mem::take(&mut resolve_again) {
                            resolving = Some(daemon.start_resolve());
                        }
                        metrics.publish(&daemon.balancer);
                        announce(&mut daemon, &metrics, Trigger::Change);
                    }
                }
            };
            server.abort();
            withdraw_on_stop(&mut daemon);
            outcome
        }
        Err(e) => Err(e),
    };
    let detached = daemon.detach_all();
    daemon.log_counters();
    outcome.and(detached)
}

/// SIGHUP: the reload request handled as if `lb-ctl reload` had sent it, its answer logged
/// (a refusal as a warning: the file's problems, nothing changed). Returns whether next hops
/// should be resolved now.
fn reload(control: &mut runtime::Runtime, daemon: &mut Daemon) -> bool {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let request = crate::api::Request::Reload { dry_run: false };
    let resolve = control.handle(&mut daemon.balancer, runtime::Event::Request(request, tx));
    match rx.try_recv() {
        Ok(crate::api::Response::Ok(reply)) => {
            for line in crate::operator::render(&reply).lines() {
                info!("SIGHUP reload: {line}");
            }
        }
        Ok(crate::api::Response::Error(e)) => {
            for line in e.message.lines() {
                warn!("SIGHUP reload refused: {line}");
            }
        }
        Err(_) => warn!("SIGHUP reload: no answer"),
    }
    resolve
}

/// Brings the announced routes up to date and their metrics with them.
fn announce(daemon: &mut Daemon, metrics: &crate::metrics::Metrics, trigger: Trigger) {
    if let Some(view) = daemon.announce(trigger) {
        metrics.announce(&view);
    }
}

/// A clean stop: withdraws the announced routes with `withdraw_on_stop` (default), and
/// always with `detach_on_exit` (a detached node cannot serve). Before detaching, so routers
/// stop sending first. A failure is logged: the stop goes on.
fn withdraw_on_stop(daemon: &mut Daemon) {
    let (Some(a), Some(announcer)) = (daemon.config.announce, daemon.announcer.as_mut()) else {
        return;
    };
    if !a.withdraw_on_stop && !daemon.config.detach_on_exit {
        info!(table = a.table, "leaving the announced routes in place (withdraw_on_stop: false): the data path stays attached for the next daemon");
        return;
    }
    match announcer.withdraw_all(&crate::announce::decide(&daemon.balancer)) {
        Ok(routes) => info!(
            table = a.table,
            "routes withdrawn on stop: [{}]",
            routes.join(", ")
        ),
        Err(e) => warn!(table = a.table, "withdrawing the routes on stop: {e}"),
    }
}

/// Lists every local address of the daemon's network namespace as the gateway's own
/// (`crate::own_addresses`): new ones are written, gone ones deleted. Failures are logged;
/// the next pass retries.
fn refresh_own_addresses(daemon: &mut Daemon, own: &mut OwnAddresses) {
    let found = match local_addresses() {
        Ok(found) => found,
        Err(e) => {
            warn!("reading the local addresses (getifaddrs): {e}");
            return;
        }
    };
    // Left out, and never deleted:
    // * a backend's address: its `BACKEND_IDS` entry must name the backend — the reverse
    //   path finds the backend's replies by it, and `set_backend` overwrites an own entry;
    // * a VIP: the data path knows VIPs from `VIPS_*` (a frame from the VIP to itself is
    //   `source_vip`), and a VIP is not this host's alone — DSR backends carry it and
    //   answer from it.
    let b = &daemon.balancer;
    let taken: BTreeSet<IpAddr> = b
        .backends()
        .map(|b| b.address)
        .chain(
            b.services()
                .iter()
                .map(|s| words_addr(s.value.family, &s.value.vip)),
        )
        .collect();
    match own.refresh(daemon.balancer.dataplane_mut(), &found, &taken) {
        Ok(d) if d.new > 0 || !d.gone.is_empty() => info!(
            listed = d.list.len(),
            new = d.new,
            gone = d.gone.len(),
            "own addresses listed in BACKEND_IDS: frames to a VIP from them are dropped"
        ),
        Ok(_) => {}
        Err(e) => warn!(
            "listing the own addresses failed, retrying in {}: {}",
            humantime::format_duration(RESOLVE_INTERVAL),
            crate::error_chain(&e)
        ),
    }
}
