//! The probe types (`health_check.probes`): what each one asks of a backend, the set a
//! configuration enables, and [`Probers`], which sends a probe of any enabled type.

use std::{future::Future, net::IpAddr, time::Duration};

use super::{HealthError, IcmpProber, IkeProber, Probe, ProbeOutcome, Prober};

/// One type of health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// ICMP echo (ICMPv6 for IPv6 backends): the server's stack is up.
    Icmp,
    /// An IKE_SA_INIT request to UDP 500 (`health/ike.rs`): the IKE service answers. A ping
    /// says nothing about it, and a client sent to a server whose IKE service is dead fails
    /// (Windows error 809).
    Ike,
}

impl ProbeKind {
    /// Every type, in the order reports and metrics list them.
    pub const ALL: [ProbeKind; 2] = [ProbeKind::Icmp, ProbeKind::Ike];

    /// Its name in `health_check.probes` and the value of the `probe` metrics label.
    pub fn label(self) -> &'static str {
        match self {
            ProbeKind::Icmp => "icmp",
            ProbeKind::Ike => "ike",
        }
    }

    /// The type named `name` in `health_check.probes`.
    pub fn from_label(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == name)
    }

    /// Position in [`ProbeKind::ALL`] (array index of per-type state).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The probe types a configuration enables: a set, always iterated in [`ProbeKind::ALL`]
/// order. `Copy` like the rest of `config::HealthCheck`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeKinds(u8);

impl ProbeKinds {
    /// `[icmp, ike]`, the default of `health_check.probes`.
    pub const DEFAULT: ProbeKinds = ProbeKinds(0b11);

    /// The set of `kinds` (duplicates collapse; validation refuses them before this).
    pub fn of(kinds: &[ProbeKind]) -> Self {
        Self(kinds.iter().fold(0, |bits, k| bits | 1 << k.index()))
    }

    pub fn contains(self, kind: ProbeKind) -> bool {
        self.0 & (1 << kind.index()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = ProbeKind> {
        ProbeKind::ALL
            .into_iter()
            .filter(move |&k| self.contains(k))
    }

    /// The names, in order (`["icmp", "ike"]`), for `status`.
    pub fn labels(self) -> Vec<String> {
        self.iter().map(|k| k.label().to_owned()).collect()
    }
}

impl Default for ProbeKinds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The daemon's probers: one per enabled type. The ICMP sockets are opened only when `icmp`
/// is enabled (they need `CAP_NET_RAW` or a ping group); the IKE probe needs no privilege
/// (an ephemeral UDP socket per probe).
pub struct Probers {
    icmp: Option<IcmpProber>,
    ike: Option<IkeProber>,
}

impl Probers {
    /// Opens what `kinds` needs. Must run inside a tokio runtime.
    pub fn new(kinds: ProbeKinds) -> Result<Self, HealthError> {
        Ok(Self {
            icmp: kinds
                .contains(ProbeKind::Icmp)
                .then(IcmpProber::new)
                .transpose()?,
            ike: kinds.contains(ProbeKind::Ike).then(IkeProber::new),
        })
    }
}

impl Prober for Probers {
    fn probe(
        &self,
        kind: ProbeKind,
        addr: IpAddr,
        timeout: Duration,
    ) -> impl Future<Output = Probe> + Send {
        let icmp = self
            .icmp
            .as_ref()
            .filter(|_| kind == ProbeKind::Icmp)
            .map(|p| p.probe(ProbeKind::Icmp, addr, timeout));
        let ike = self
            .ike
            .as_ref()
            .filter(|_| kind == ProbeKind::Ike)
            .map(|p| p.probe(ProbeKind::Ike, addr, timeout));
        async move {
            if let Some(f) = icmp {
                f.await
            } else if let Some(f) = ike {
                f.await
            } else {
                Probe {
                    outcome: ProbeOutcome::Error,
                    duration: Duration::ZERO,
                    error: Some(format!("{kind} probes are not enabled")),
                }
            }
        }
    }
}
