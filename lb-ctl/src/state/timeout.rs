//! `persistence_timeout` changed by a reload (docs/operations.md, "Reload"): the program swap
//! and what keeps the slot flags' invariant ("Slot flags" in the module doc of [`super`])
//! across it.
//!
//! The timeout is a load-time global of the XDP program (`PERSIST_TIMEOUT_TICKS`): a change
//! loads the program again with the new value and moves every link to it
//! ([`Dataplane::swap_program`]). Two things could break the invariant — no live entry of an
//! unflagged slot names another backend than the slot's:
//!
//! * **A longer timeout makes entries live again**: an entry idle longer than the old timeout
//!   but not the new one is dead to the old program (its slot's flag may have been cleared by
//!   a sweep since) and live to the new one. So before a longer timeout's program runs, every
//!   slot is flagged and the tables flipped ([`Balancer::flag_all_slots`], as a restart with
//!   other globals does); sweeps under the new timeout clear them again.
//! * **A sweep in flight** decides which entries are live with the timeout of its start: one
//!   that began under the old timeout and ended under a longer one could clear the flag of a
//!   slot whose entry is live again. Every change bumps a generation that sweep tickets carry
//!   ([`SweepTicket::generation`](super::SweepTicket)); a sweep whose ticket is of an older
//!   generation is discarded, nothing cleared ([`StateError::SweepOutdated`]).
//!
//! A shorter timeout needs neither (fewer entries are live: flags kept for entries now idle
//! only cost speed until the next sweep), but outdates sweeps in flight all the same.

use super::{Balancer, StateError};
use crate::dataplane::Dataplane;

impl<D: Dataplane> Balancer<D> {
    /// `PERSIST_TIMEOUT_TICKS` of the running program (the config's at start, a reload's
    /// since): what the sweep, the scans and the dry runs test liveness with.
    pub fn persist_timeout_ticks(&self) -> u32 {
        self.persist_timeout_ticks
    }

    /// How many times [`set_persist_timeout`](Balancer::set_persist_timeout) changed the
    /// timeout: sweep tickets of another generation are outdated.
    pub fn timeout_generation(&self) -> u32 {
        self.timeout_generation
    }

    /// Runs the program with `ticks` as its persistence timeout (module doc): for a longer
    /// one every slot is flagged and the tables flipped first, then the program is swapped
    /// ([`Dataplane::swap_program`]), then the generation is bumped. Returns whether anything
    /// changed. On an error the program and the timeout are the old ones (slots flagged
    /// before it stay flagged until a sweep: speed only).
    pub fn set_persist_timeout(&mut self, ticks: u32) -> Result<bool, StateError> {
        if ticks == self.persist_timeout_ticks {
            return Ok(false);
        }
        if ticks > self.persist_timeout_ticks {
            self.flag_all_slots();
            self.apply()?;
        }
        self.dp.swap_program(ticks)?;
        self.persist_timeout_ticks = ticks;
        self.timeout_generation = self.timeout_generation.wrapping_add(1);
        Ok(true)
    }
}
