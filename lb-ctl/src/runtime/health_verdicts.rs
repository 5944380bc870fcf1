//! Health verdicts applied to the balancer: the probe targets, and each round of probe
//! results fed to the trackers, whose flips become backend health in the balancer.

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
            let tracker = self.trackers.entry(r.id).or_default();
            let before = tracker.state();
            if !tracker.observe(r.probe.outcome.is_success(), hc.rise, hc.fall) {
                continue;
            }
            let after = tracker.state();
            lb.set_health(r.id, after).expect("backend exists");
            let why = match &r.probe.error {
                Some(e) => format!("{} ({e})", r.probe.outcome.label()),
                None => r.probe.outcome.label().to_owned(),
            };
            match after {
                HealthState::Up => {
                    info!(virtual_server = %vs, backend = %r.addr, id = r.id, "health: {before} → up (last probe {why} in {:.1?})", r.probe.duration);
                    effects.resolve = true;
                }
                _ => {
                    warn!(virtual_server = %vs, backend = %r.addr, id = r.id, "health: {before} → {after} after {} failed probes (last: {why})", hc.fall)
                }
            }
        }
        effects
    }
}
