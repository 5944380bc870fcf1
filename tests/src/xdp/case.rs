//! The table runner: one row is an input frame, the interface it arrives on, the expected
//! action and output frame, the one counter the verdict bumps and optionally the events and
//! IKE stage counters.

use lb_common::{counter, event, ike};

use super::{
    Fixture, Side, EXT_MAC, INT_MAC, PORT_EXT, PORT_INT, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
};

/// What a row expects.
pub enum Expect {
    /// XDP_PASS with the frame unchanged.
    Pass,
    Drop,
    /// XDP_REDIRECT with this output frame, through the port whose MAC is its source MAC
    /// (run with only that port in `TX_PORTS`).
    Redirect(Vec<u8>),
    /// XDP_TX with this output frame.
    Tx(Vec<u8>),
}

/// One row: input frame, expected action and frame, the one counter the verdict bumps.
pub struct Case {
    pub name: String,
    pub input: Vec<u8>,
    pub expect: Expect,
    pub counter: u32,
    /// Arrival interface; `None`: by the frame's destination MAC ([`INT_MAC`] → `int`).
    pub ingress: Option<Side>,
    /// Exact `EVENTS` deltas (index, count); `None`: not checked.
    pub events: Option<Vec<(u32, u64)>>,
    /// Exact `IKE_STAGES` deltas (`lb_common::ike` index, count); `None`: not checked.
    pub ike: Option<Vec<(u32, u64)>>,
}

pub fn case(name: impl Into<String>, input: Vec<u8>, expect: Expect, counter: u32) -> Case {
    Case {
        name: name.into(),
        input,
        expect,
        counter,
        ingress: None,
        events: None,
        ike: None,
    }
}

impl Case {
    /// The frame arrives on `side`.
    pub fn on(mut self, side: Side) -> Self {
        self.ingress = Some(side);
        self
    }

    /// The row must add exactly these events (and no other; `&[]`: none).
    pub fn events(mut self, events: &[(u32, u64)]) -> Self {
        let mut e: Vec<_> = events.iter().copied().filter(|&(_, n)| n != 0).collect();
        e.sort_unstable();
        self.events = Some(e);
        self
    }

    /// The row must add exactly these `IKE_STAGES` counts (and no other; `&[]`: none).
    pub fn ike(mut self, stages: &[(u32, u64)]) -> Self {
        let mut e: Vec<_> = stages.iter().copied().filter(|&(_, n)| n != 0).collect();
        e.sort_unstable();
        self.ike = Some(e);
        self
    }
}

impl Fixture {
    fn port_of_mac(&self, frame: &[u8]) -> Option<u32> {
        match frame.get(6..12) {
            Some(m) if m == EXT_MAC => Some(PORT_EXT),
            Some(m) if m == INT_MAC => Some(PORT_INT),
            _ => None,
        }
    }

    /// Runs `cases` in order (later rows see the entries earlier rows created) and panics
    /// listing every row that failed (and which slot fast path run it was).
    pub fn check(&mut self, cases: &[Case]) {
        if let Err(e) = self.try_check(cases) {
            panic!("{e}");
        }
    }

    /// As [`Fixture::check`], returning the list of failed rows instead of panicking: for a
    /// table that may run again when a clock tick fell inside it.
    pub fn try_check(&mut self, cases: &[Case]) -> Result<(), String> {
        let mut failures = Vec::new();
        for case in cases {
            let side = case
                .ingress
                .unwrap_or_else(|| self.default_side(&case.input));
            // A redirect row runs with only its expected port in the devmap.
            let mut removed = None;
            if let Expect::Redirect(f) = &case.expect {
                match self.port_of_mac(f) {
                    Some(port) => {
                        let other = 1 - port;
                        if let Some(target) = self.tx_port(other) {
                            self.set_tx_port(other, None);
                            removed = Some((other, target));
                        }
                    }
                    None => failures.push(format!(
                        "{}: the expected frame's source MAC names no port",
                        case.name
                    )),
                }
            }
            let before = self.counters();
            let ev_before = self.events();
            let ike_before = self.ike_stages();
            let (action, out) = self.run_on(&case.input, side);
            let after = self.counters();
            let ev_after = self.events();
            let ike_after = self.ike_stages();
            if let Some((port, target)) = removed {
                self.set_tx_port(port, Some(target));
            }
            let (want_action, want_frame) = match &case.expect {
                Expect::Pass => (XDP_PASS, Some(&case.input)),
                Expect::Drop => (XDP_DROP, None),
                Expect::Redirect(f) => (XDP_REDIRECT, Some(f)),
                Expect::Tx(f) => (XDP_TX, Some(f)),
            };
            if action != want_action {
                failures.push(format!(
                    "{}: action {action}, want {want_action}",
                    case.name
                ));
            }
            if let Some(want) = want_frame {
                if &out != want {
                    failures.push(format!(
                        "{}: output frame differs: {}",
                        case.name,
                        diff(&out, want)
                    ));
                }
            }
            let deltas: Vec<(&str, u64)> = before
                .iter()
                .zip(&after)
                .enumerate()
                .filter(|(_, (b, a))| a != b)
                .map(|(i, (b, a))| (counter::LABELS[i].1, a - b))
                .collect();
            let want = vec![(counter::LABELS[case.counter as usize].1, 1)];
            if deltas != want {
                failures.push(format!(
                    "{}: counter deltas {deltas:?}, want {want:?}",
                    case.name
                ));
            }
            if let Some(want) = &case.events {
                let got: Vec<(u32, u64)> = ev_before
                    .iter()
                    .zip(&ev_after)
                    .enumerate()
                    .filter(|(_, (b, a))| a != b)
                    .map(|(i, (b, a))| (i as u32, a - b))
                    .collect();
                if &got != want {
                    let label = |v: &[(u32, u64)]| -> Vec<(&str, u64)> {
                        v.iter()
                            .map(|&(i, n)| (event::LABELS[i as usize], n))
                            .collect()
                    };
                    failures.push(format!(
                        "{}: event deltas {:?}, want {:?}",
                        case.name,
                        label(&got),
                        label(want)
                    ));
                }
            }
            if let Some(want) = &case.ike {
                let got: Vec<(u32, u64)> = ike_before
                    .iter()
                    .zip(&ike_after)
                    .enumerate()
                    .filter(|(_, (b, a))| a != b)
                    .map(|(i, (b, a))| (i as u32, a - b))
                    .collect();
                if &got != want {
                    let label = |v: &[(u32, u64)]| -> Vec<(&str, u64)> {
                        v.iter()
                            .map(|&(i, n)| (ike::NAMES[i as usize], n))
                            .collect()
                    };
                    failures.push(format!(
                        "{}: IKE stage deltas {:?}, want {:?}",
                        case.name,
                        label(&got),
                        label(want)
                    ));
                }
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} row(s) failed (SLOT_FAST_PATH={}, {:?}{}):\n{}",
            failures.len(),
            u32::from(self.setup.slot_fast_path),
            self.setup.topology,
            if self.setup.dsr { " DSR" } else { "" },
            failures.join("\n")
        ))
    }
}

/// Where two frames differ, with the bytes around it.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window = |b: &[u8]| -> String {
        b[at.saturating_sub(8).min(b.len())..(at + 16).min(b.len())]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    format!(
        "first at byte {at} (lengths {} / {})\n   got …{}…\n  want …{}…",
        got.len(),
        want.len(),
        window(got),
        window(want)
    )
}
