//! Maglev consistent hashing (Eisenbud et al., NSDI '16, §3.4) with weights, as the daemon
//! builds it for every service.
//!
//! The table is a pure function of the backend list (order does not matter: backends are
//! sorted by key), their weights, which of them are usable, the table size and the seed:
//!
//! 1. `full` = Maglev over every listed backend with weight > 0;
//! 2. if some are unusable (down or draining), `live` = Maglev over the usable ones, and
//!    each slot whose `full` owner is unusable takes its `live` owner.
//!
//! So taking a backend out moves only that backend's slots, putting it back restores exactly
//! the table it had, and two nodes with the same configuration and the same health agree.
//! Weights are honoured by Katran's weighted fill: in each round a backend claims a slot
//! only when its accumulated weight reaches the largest weight.

use std::vec;
use std::vec::Vec;

use crate::{hash::murmur3, BACKEND_NONE};

/// A backend as the table builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Backend id written into the slots (never [`BACKEND_NONE`]).
    pub id: u32,
    /// Stable identity used for the permutation: the backend address bytes.
    pub key: Vec<u8>,
    /// Relative weight; 0 takes no slots.
    pub weight: u32,
    /// Down or draining backends are listed with `usable: false`.
    pub usable: bool,
}

/// Builds a table of `size` slots (a prime). Every slot holds a usable member's id, or
/// [`BACKEND_NONE`] everywhere when no member is usable.
pub fn build(members: &[Member], size: u32, seed: u32) -> Vec<u32> {
    let mut sorted: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let full = populate(&sorted, size, seed);
    if sorted.iter().all(|m| m.usable) {
        return full;
    }
    let usable: Vec<&Member> = sorted.iter().copied().filter(|m| m.usable).collect();
    let live = populate(&usable, size, seed);
    let down: Vec<u32> = sorted.iter().filter(|m| !m.usable).map(|m| m.id).collect();
    full.iter()
        .zip(&live)
        .map(|(&f, &l)| if down.contains(&f) { l } else { f })
        .collect()
}

/// Plain weighted Maglev population over `members` (already sorted and filtered).
fn populate(members: &[&Member], size: u32, seed: u32) -> Vec<u32> {
    let m = u64::from(size);
    let mut table = vec![BACKEND_NONE; size as usize];
    if members.is_empty() {
        return table;
    }
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|b| {
            let offset = u64::from(murmur3(&b.key, seed)) % m;
            let skip = u64::from(murmur3(&b.key, seed ^ 0x9e37_79b9)) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = members.iter().map(|b| b.weight).max().unwrap_or(1);
    let mut next = vec![0u64; members.len()];
    let mut credit = vec![0u32; members.len()];
    let mut filled = 0u64;
    loop {
        for (i, b) in members.iter().enumerate() {
            credit[i] += b.weight;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let (offset, skip) = perms[i];
            loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == BACKEND_NONE {
                    table[slot] = b.id;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                return table;
            }
        }
    }
}

/// True when `n` is prime (table sizes must be, so every skip is coprime with them).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const M: u32 = 65_537;

    fn member(id: u32, weight: u32) -> Member {
        Member { id, key: [10, 0, (id >> 8) as u8, id as u8].to_vec(), weight, usable: true }
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut h = HashMap::new();
        for &b in table {
            *h.entry(b).or_default() += 1;
        }
        h
    }

    #[test]
    fn empty_list_gives_an_empty_table() {
        assert!(build(&[], M, 0).iter().all(|&b| b == BACKEND_NONE));
    }

    #[test]
    fn one_backend_fills_every_slot() {
        assert!(build(&[member(1, 1)], M, 0).iter().all(|&b| b == 1));
    }

    #[test]
    fn every_slot_filled_and_balanced() {
        let members: Vec<Member> = (1..=10).map(|i| member(i, 1)).collect();
        let table = build(&members, M, 0x5eed);
        assert_eq!(table.len(), M as usize);
        let s = shares(&table);
        assert!(!s.contains_key(&BACKEND_NONE));
        for i in 1..=10 {
            let share = s[&i] as f64 / f64::from(M);
            assert!((share - 0.1).abs() < 0.001, "backend {i} share {share}");
        }
    }

    #[test]
    fn deterministic_for_seed_and_list_whatever_the_order() {
        let a: Vec<Member> = (1..=7).map(|i| member(i, 1)).collect();
        let mut b = a.clone();
        b.reverse();
        assert_eq!(build(&a, M, 42), build(&b, M, 42));
        assert_ne!(build(&a, M, 42), build(&a, M, 43));
    }

    #[test]
    fn weights_honoured_within_one_percent() {
        let members = vec![member(1, 1), member(2, 2), member(3, 3), member(4, 4)];
        let s = shares(&build(&members, M, 9));
        for (id, w) in [(1u32, 1.0f64), (2, 2.0), (3, 3.0), (4, 4.0)] {
            let share = s[&id] as f64 / f64::from(M);
            let want = w / 10.0;
            assert!((share - want).abs() / want < 0.01, "backend {id}: {share} vs {want}");
        }
    }

    #[test]
    fn zero_weight_takes_no_slot() {
        let s = shares(&build(&[member(1, 1), member(2, 0)], M, 0));
        assert!(!s.contains_key(&2));
    }

    #[test]
    fn taking_one_of_n_out_moves_only_its_slots_and_back_restores_the_table() {
        let mut members: Vec<Member> = (1..=5).map(|i| member(i, 1)).collect();
        let before = build(&members, M, 1);
        members[2].usable = false;
        let after = build(&members, M, 1);
        for (slot, (&b, &a)) in before.iter().zip(&after).enumerate() {
            if b == 3 {
                assert_ne!(a, 3, "slot {slot} still on the removed backend");
            } else {
                assert_eq!(a, b, "slot {slot} moved from {b} to {a}");
            }
        }
        // The freed slots are spread over the survivors.
        let moved = shares(
            &before.iter().zip(&after).filter(|(b, _)| **b == 3).map(|(_, a)| *a).collect::<Vec<_>>(),
        );
        assert_eq!(moved.len(), 4);
        members[2].usable = true;
        assert_eq!(build(&members, M, 1), before);
    }

    #[test]
    fn removing_from_the_list_disrupts_little() {
        // Dropping a backend from the list altogether (plain Maglev recompute) may move a few
        // other slots; the paper's bound is small. Established clients are protected by the
        // persistence map in either case.
        let members: Vec<Member> = (1..=10).map(|i| member(i, 1)).collect();
        let before = build(&members, M, 3);
        let after = build(&members[1..], M, 3);
        let moved_others = before.iter().zip(&after).filter(|(b, a)| **b != 1 && a != b).count();
        assert!((moved_others as f64) < 0.05 * f64::from(M), "{moved_others} other slots moved");
    }

    #[test]
    fn none_usable_gives_none_everywhere() {
        let mut members = vec![member(1, 1), member(2, 1)];
        for m in &mut members {
            m.usable = false;
        }
        assert!(build(&members, M, 0).iter().all(|&b| b == BACKEND_NONE));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(2) && is_prime(251));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0) && !is_prime(65_535));
    }
}
