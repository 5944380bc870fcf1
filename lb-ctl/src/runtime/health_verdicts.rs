//! Health verdicts applied to the balancer: the probe targets, and each round of probe
//! results fed to each backend's trackers (one per probe type, `health::Trackers`), whose
//! combined flips become backend health in the balancer.

use tracing::{info, warn};

use super::{Controller, Effects};
use crate::{
    dataplane::Dataplane,
    health::{HealthState, Report, Target},
    state::Balancer,
};

impl Controller {
    /// The health-check targets: every backend.
    pub fn targets<D: Dataplane>(&self, lb: &Balancer<D>) -> Vec<Target> {
        lb.backends()
            .map(|b| Target {
                id: b.id,
                addr: b.address,
            })
            .collect()
    }

    /// Feeds one round of probe results to the trackers and records every flip in `lb`
    /// (transitions only; the caller applies). Reports of backends removed meanwhile are
    /// ignored.
    pub fn on_health<D: Dataplane>(&mut self, lb: &mut Balancer<D>, reports: &[Report]) -> Effects {
        let hc = self.config.health_check;
        let mut effects = Effects::default();
        for r in reports {
            let Some(b) = lb.backend(r.id).filter(|b| b.address == r.addr) else {
                continue;
            };
            let vs = lb.service(b.service).name.clone();
            let trackers = self.trackers.entry(r.id).or_default();
            let before = trackers.state(hc.probes);
            let Some(after) = trackers.observe(
                hc.probes,
                r.kind,
                r.probe.outcome.is_success(),
                hc.rise,
                hc.fall,
            ) else {
                continue;
            };
            lb.set_health(r.id, after).expect("backend exists");
            let why = match &r.probe.error {
                Some(e) => format!("{} ({e})", r.probe.outcome.label()),
                None => r.probe.outcome.label().to_owned(),
            };
            let kind = r.kind;
            match after {
                HealthState::Up => {
                    info!(virtual_server = %vs, backend = %r.addr, id = r.id, "health: {before} → up (last {kind} probe {why} in {:.1?})", r.probe.duration);
                    effects.resolve = true;
                }
                HealthState::Down => {
                    warn!(virtual_server = %vs, backend = %r.addr, id = r.id, "health: {before} → down after {} failed {kind} probes (last: {why})", hc.fall)
                }
                HealthState::Unknown => {
                    info!(virtual_server = %vs, backend = %r.addr, id = r.id, "health: {before} → unknown ({kind} probe {why}; waiting for the other probe types)")
                }
            }
        }
        effects
    }
}
