//! The last known next hops and what a refresh does to them: an answer replaces the known
//! hop, a fault of the gateway keeps it (logged once per run of faulty refreshes, counted in
//! [`FAULTS`]), an absence keeps it until the [`ABSENT_TO_CLEAR`]th in a row.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use tracing::{debug, info, warn};

use super::{IpCommand, ResolveError, Resolved, ABSENT_TO_CLEAR, FAULTS};

/// Last known next hops, for faults and hysteresis.
#[derive(Debug, Default)]
pub(super) struct Memory {
    known: HashMap<IpAddr, Known>,
    /// Consecutive refreshes with a fault (0: the last one had none).
    faulty_refreshes: u64,
}

#[derive(Debug)]
struct Known {
    hop: Resolved,
    /// Consecutive refreshes that observed it gone.
    absent: u32,
}

impl IpCommand {
    /// This refresh's raw answers against the last known next hops: an answer replaces
    /// the known hop, a fault keeps it, an absence keeps it until the
    /// [`ABSENT_TO_CLEAR`]th in a row. `side_faults` are faults that did not decide a
    /// backend (a failed probe of a STALE neighbour whose address was still used).
    pub(super) fn settle(
        &self,
        addrs: &[IpAddr],
        raw: Vec<Result<Resolved, ResolveError>>,
        side_faults: Vec<ResolveError>,
    ) -> Vec<Result<Resolved, ResolveError>> {
        let mut m = self
            .memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wanted: HashSet<IpAddr> = addrs.iter().copied().collect();
        m.known.retain(|a, _| wanted.contains(a));
        let mut faults = side_faults.len() as u64;
        let mut first_fault = side_faults.into_iter().next().map(|e| e.to_string());
        let mut kept = 0usize;
        let out: Vec<_> = addrs
            .iter()
            .zip(raw)
            .map(|(&addr, r)| match r {
                Ok(hop) => {
                    m.known.insert(
                        addr,
                        Known {
                            hop: hop.clone(),
                            absent: 0,
                        },
                    );
                    Ok(hop)
                }
                Err(e) if e.is_fault() => {
                    faults += 1;
                    first_fault.get_or_insert_with(|| e.to_string());
                    match m.known.get(&addr) {
                        Some(k) => {
                            kept += 1;
                            Ok(k.hop.clone())
                        }
                        None => Err(e),
                    }
                }
                Err(e) => match m.known.get_mut(&addr) {
                    Some(k) if k.absent + 1 < ABSENT_TO_CLEAR => {
                        k.absent += 1;
                        debug!(
                            backend = %addr,
                            "next hop not seen ({e}); kept, {} of {ABSENT_TO_CLEAR} refreshes",
                            k.absent
                        );
                        Ok(k.hop.clone())
                    }
                    Some(_) => {
                        m.known.remove(&addr);
                        Err(e)
                    }
                    None => Err(e),
                },
            })
            .collect();
        if let Some(first) = first_fault {
            FAULTS.inc_by(faults);
            if m.faulty_refreshes == 0 {
                warn!(
                    "next-hop look-up failed on the gateway: {first}; {kept} backends keep their last known next hop (logged once until a refresh succeeds, counted in ikelb_next_hop_faults_total)"
                );
            }
            m.faulty_refreshes += 1;
        } else if m.faulty_refreshes > 0 {
            info!(
                "next-hop look-ups work again after {} refreshes with faults",
                m.faulty_refreshes
            );
            m.faulty_refreshes = 0;
        }
        out
    }
}
