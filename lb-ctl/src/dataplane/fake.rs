//! An in-memory [`Dataplane`] that records every operation in order.

use std::collections::BTreeMap;

use lb_common::{counter, event, maps, INGRESS_SLOTS, OWN_ADDRESS_ID};

use super::*;

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetIface {
        port: u32,
        ifindex: u32,
    },
    SetService {
        id: u32,
        ring_base: u32,
    },
    Flip {
        id: u32,
        ring_base: u32,
    },
    SetBackend {
        id: u32,
        flags: u32,
    },
    RemoveBackend {
        id: u32,
        /// Whether the reverse index entry was deleted.
        index: bool,
    },
    /// `count` slots written, the lowest and highest index among them.
    RingSlots {
        count: usize,
        first: u32,
        last: u32,
    },
    /// The program replaced by one with this `PERSIST_TIMEOUT_TICKS`.
    SwapProgram {
        persist_timeout_ticks: u32,
    },
}

#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub ops: Vec<Op>,
    pub ifaces: BTreeMap<u32, Iface>,
    /// ifindex → [`ingress_value`] (`IFINDEX_PORTS`).
    pub ifindex_ports: BTreeMap<u32, u32>,
    /// `INGRESS`: only the non-zero slots.
    pub ingress: BTreeMap<u32, u32>,
    pub vips: BTreeMap<[u32; 4], Service>,
    pub services: BTreeMap<u32, Service>,
    pub backends: BTreeMap<u32, Backend>,
    pub backend_ids: BTreeMap<[u32; 4], u32>,
    pub rings: BTreeMap<u32, u32>,
    pub counters: Vec<u64>,
    pub events: Vec<u64>,
    pub persist_v4: Vec<(PersistKeyV4, PersistValue)>,
    pub persist_v6: Vec<(PersistKeyV6, PersistValue)>,
    /// Fail the next `write_ring_slots` after writing this many of its slots.
    pub fail_ring_write_after: Option<usize>,
    pub probation_v4: Vec<(PersistKeyV4, ProbationValue)>,
    pub probation_v6: Vec<(PersistKeyV6, ProbationValue)>,
    /// How the maps answer the walks of [`Dataplane::persistence_scan`].
    pub scan: FakeScan,
    /// `PERSIST_TIMEOUT_TICKS` of the running program after the last
    /// [`Dataplane::swap_program`] (None: never swapped).
    pub persist_timeout_ticks: Option<u32>,
    /// Fail the next `swap_program` (nothing changes).
    pub fail_swap: bool,
}

/// How the fake's persistence and probation maps answer a walk ([`crate::scan::MapWalk`]),
/// modelling the kernel's answers under churn.
#[derive(Clone, Copy, Debug)]
pub struct FakeScan {
    /// `max_entries` of every map (default 2^20).
    pub max_entries: u32,
    /// No `BPF_MAP_LOOKUP_BATCH` (`EINVAL`, as before Linux 5.6): walks fall back to
    /// `GET_NEXT_KEY`.
    pub no_batch: bool,
    /// Entries per hash bucket (a batch copies whole buckets; default 1).
    pub bucket: usize,
    /// Every batch after the first starts one bucket back: its first entries are ones the
    /// walk already read.
    pub repeat: bool,
    /// Every `n`-th `GET_NEXT_KEY` finds its cursor evicted and restarts from the first key,
    /// as the kernel's does.
    pub restart_every: Option<usize>,
    /// Insert churn that never lets a walk reach the end: past the last bucket, batches and
    /// `GET_NEXT_KEY` go on from the first.
    pub endless: bool,
}

impl Default for FakeScan {
    fn default() -> Self {
        Self {
            max_entries: 1 << 20,
            no_batch: false,
            bucket: 1,
            repeat: false,
            restart_every: None,
            endless: false,
        }
    }
}

/// One of the fake's maps as a walk sees it: its entries when the walk began.
pub struct FakeMap<K, V> {
    pub name: &'static str,
    pub entries: Vec<(K, V)>,
    pub scan: FakeScan,
    next_key_calls: std::cell::Cell<usize>,
}

impl<K, V> FakeMap<K, V> {
    pub fn new(name: &'static str, entries: Vec<(K, V)>, scan: FakeScan) -> Self {
        Self {
            name,
            entries,
            scan,
            next_key_calls: std::cell::Cell::new(0),
        }
    }
}

impl<K: Copy + PartialEq, V: Copy> crate::scan::MapWalk<K, V> for FakeMap<K, V> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn max_entries(&self) -> u32 {
        self.scan.max_entries
    }

    fn lookup_batch(
        &self,
        cursor: Option<u64>,
        room: usize,
        keys: &mut Vec<K>,
        values: &mut Vec<V>,
    ) -> std::io::Result<Option<u64>> {
        keys.clear();
        values.clear();
        if self.scan.no_batch {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let b = self.scan.bucket.max(1);
        let buckets = self.entries.len().div_ceil(b);
        // Cursor: buckets read so far (never wrapped, so an endless walk keeps going).
        let mut at = cursor.unwrap_or(0) as usize;
        if self.scan.repeat && cursor.is_some() {
            at = at.saturating_sub(1);
        }
        loop {
            if buckets == 0 || (!self.scan.endless && at >= buckets) {
                return Ok(None);
            }
            let i = at % buckets;
            let bucket = &self.entries[i * b..((i + 1) * b).min(self.entries.len())];
            if keys.len() + bucket.len() > room {
                if keys.is_empty() {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
                }
                return Ok(Some(at as u64));
            }
            keys.extend(bucket.iter().map(|e| e.0));
            values.extend(bucket.iter().map(|e| e.1));
            at += 1;
            if !self.scan.endless && at >= buckets {
                return Ok(None);
            }
            if keys.len() == room {
                return Ok(Some(at as u64));
            }
        }
    }

    fn next_key(&self, key: Option<&K>) -> std::io::Result<Option<K>> {
        let calls = self.next_key_calls.get() + 1;
        self.next_key_calls.set(calls);
        let first = self.entries.first().map(|e| e.0);
        if self
            .scan
            .restart_every
            .is_some_and(|n| calls.is_multiple_of(n.max(1)))
        {
            return Ok(first);
        }
        let Some(key) = key else {
            return Ok(first);
        };
        // A key not there any more restarts the walk, as in the kernel.
        let Some(i) = self.entries.iter().position(|e| e.0 == *key) else {
            return Ok(first);
        };
        match self.entries.get(i + 1) {
            Some(e) => Ok(Some(e.0)),
            None if self.scan.endless => Ok(first),
            None => Ok(None),
        }
    }

    fn lookup(&self, key: &K) -> std::io::Result<Option<V>> {
        Ok(self.entries.iter().find(|e| e.0 == *key).map(|e| e.1))
    }
}

impl FakeDataplane {
    /// The fake's four maps as [`FakeMap`]s, now.
    pub fn scan_now(&self) -> Result<crate::scan::Scanned, DataplaneError> {
        let sc = self.scan;
        Ok(crate::scan::Scanned::from_walks(
            crate::scan::walk(&FakeMap::new(maps::PERSIST_V4, self.persist_v4.clone(), sc))?,
            crate::scan::walk(&FakeMap::new(maps::PERSIST_V6, self.persist_v6.clone(), sc))?,
            crate::scan::walk(&FakeMap::new(
                maps::PROBATION_V4,
                self.probation_v4.clone(),
                sc,
            ))?,
            crate::scan::walk(&FakeMap::new(
                maps::PROBATION_V6,
                self.probation_v6.clone(),
                sc,
            ))?,
        ))
    }
}

impl FakeDataplane {
    /// The table starting at `base` as the data path would read it (unwritten slots 0).
    pub fn table(&self, base: u32, size: u32) -> Vec<u32> {
        (base..base + size)
            .map(|i| self.rings.get(&i).copied().unwrap_or(0))
            .collect()
    }

    fn store_service(&mut self, s: &Service) {
        self.vips.insert(s.vip, *s);
        self.services.insert(s.id, *s);
    }
}

impl Dataplane for FakeDataplane {
    fn set_iface(&mut self, port: u32, iface: &Iface, roles: u32) -> Result<(), DataplaneError> {
        self.ops.push(Op::SetIface {
            port,
            ifindex: iface.ifindex,
        });
        self.ifaces.insert(port, *iface);
        let value = ingress_value(port, roles);
        self.ifindex_ports.insert(iface.ifindex, value);
        if iface.ifindex < INGRESS_SLOTS {
            self.ingress.insert(iface.ifindex, value);
        }
        Ok(())
    }

    fn forget_other_ifaces(&mut self, keep: &[u32]) -> Result<usize, DataplaneError> {
        let stale: Vec<u32> = self
            .ifindex_ports
            .keys()
            .copied()
            .filter(|i| !keep.contains(i))
            .collect();
        for i in &stale {
            self.ifindex_ports.remove(i);
            self.ingress.remove(i);
        }
        Ok(stale.len())
    }

    fn set_service(&mut self, s: &Service) -> Result<(), DataplaneError> {
        self.ops.push(Op::SetService {
            id: s.id,
            ring_base: s.ring_base,
        });
        self.store_service(s);
        Ok(())
    }

    fn flip(&mut self, s: &Service) -> Result<(), DataplaneError> {
        self.ops.push(Op::Flip {
            id: s.id,
            ring_base: s.ring_base,
        });
        self.store_service(s);
        Ok(())
    }

    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), DataplaneError> {
        self.ops.push(Op::SetBackend { id, flags: b.flags });
        self.backends.insert(id, *b);
        self.backend_ids.insert(b.addr, id);
        Ok(())
    }

    fn forget_service(&mut self, service: &Service, slot: bool) -> Result<(), DataplaneError> {
        self.vips.remove(&service.vip);
        if slot {
            self.services.remove(&service.id);
        }
        Ok(())
    }

    fn remove_backend(&mut self, id: u32, index: Option<[u32; 4]>) -> Result<(), DataplaneError> {
        self.ops.push(Op::RemoveBackend {
            id,
            index: index.is_some(),
        });
        self.backends.insert(id, Backend::default());
        if let Some(addr) = index {
            self.backend_ids.remove(&addr);
        }
        Ok(())
    }

    fn set_own_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        self.backend_ids.insert(addr_words(addr), OWN_ADDRESS_ID);
        Ok(())
    }

    fn remove_own_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let key = addr_words(addr);
        if self.backend_ids.get(&key) == Some(&OWN_ADDRESS_ID) {
            self.backend_ids.remove(&key);
        }
        Ok(())
    }

    fn own_addresses(&self) -> Result<Vec<IpAddr>, DataplaneError> {
        // The fake keys both families by words: an IPv4 address has words 1–3 zero.
        Ok(self
            .backend_ids
            .iter()
            .filter(|(_, &id)| id == OWN_ADDRESS_ID)
            .map(|(w, _)| {
                let family = if w[1..] == [0, 0, 0] {
                    FAMILY_V4
                } else {
                    lb_common::FAMILY_V6
                };
                words_addr(family, w)
            })
            .collect())
    }

    fn write_ring_slots(&mut self, slots: &[(u32, u32)]) -> Result<(), DataplaneError> {
        let first = slots.iter().map(|s| s.0).min().unwrap_or(0);
        let last = slots.iter().map(|s| s.0).max().unwrap_or(0);
        if let Some(n) = self.fail_ring_write_after.take() {
            self.rings.extend(slots.iter().take(n).copied());
            return Err(DataplaneError::Update {
                map: maps::RINGS,
                key: n.to_string(),
                source: Box::new(MapError::KeyNotFound),
            });
        }
        self.ops.push(Op::RingSlots {
            count: slots.len(),
            first,
            last,
        });
        self.rings.extend(slots.iter().copied());
        Ok(())
    }

    fn events(&self) -> Result<Vec<u64>, DataplaneError> {
        let mut c = self.events.clone();
        c.resize(event::COUNT as usize, 0);
        Ok(c)
    }

    fn probation_v4(&self) -> Result<Vec<(PersistKeyV4, ProbationValue)>, DataplaneError> {
        Ok(self.probation_v4.clone())
    }

    fn probation_v6(&self) -> Result<Vec<(PersistKeyV6, ProbationValue)>, DataplaneError> {
        Ok(self.probation_v6.clone())
    }

    fn probation_v4_get(
        &self,
        key: &PersistKeyV4,
    ) -> Result<Option<ProbationValue>, DataplaneError> {
        Ok(self
            .probation_v4
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v))
    }

    fn probation_v6_get(
        &self,
        key: &PersistKeyV6,
    ) -> Result<Option<ProbationValue>, DataplaneError> {
        Ok(self
            .probation_v6
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v))
    }

    fn swap_program(&mut self, persist_timeout_ticks: u32) -> Result<(), DataplaneError> {
        if std::mem::take(&mut self.fail_swap) {
            return Err(DataplaneError::Swap(
                "the verifier refused it (fake)".into(),
            ));
        }
        self.persist_timeout_ticks = Some(persist_timeout_ticks);
        self.ops.push(Op::SwapProgram {
            persist_timeout_ticks,
        });
        Ok(())
    }

    fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
        let mut c = self.counters.clone();
        c.resize(counter::COUNT as usize, 0);
        Ok(c)
    }

    fn persistence_v4(&self) -> Result<Vec<(PersistKeyV4, PersistValue)>, DataplaneError> {
        Ok(self.persist_v4.clone())
    }

    fn persistence_v6(&self) -> Result<Vec<(PersistKeyV6, PersistValue)>, DataplaneError> {
        Ok(self.persist_v6.clone())
    }

    fn persistence_reader(&self) -> Result<PersistReader, DataplaneError> {
        let entries = self.persistence()?;
        Ok(Box::new(move || Ok(entries)))
    }

    /// The maps as they are when this is called (later changes to the fake are not seen).
    fn persistence_scan(&self) -> Result<crate::scan::ScanSource, DataplaneError> {
        let me = FakeDataplane {
            persist_v4: self.persist_v4.clone(),
            persist_v6: self.persist_v6.clone(),
            probation_v4: self.probation_v4.clone(),
            probation_v6: self.probation_v6.clone(),
            scan: self.scan,
            ..FakeDataplane::default()
        };
        Ok(Box::new(move || me.scan_now()))
    }

    fn persistence_v4_reader(&self) -> Result<PersistV4Reader, DataplaneError> {
        let mut entries = self.persist_v4.clone();
        entries.extend(
            self.probation_v4
                .iter()
                .map(|(k, v)| (*k, probation_as_persist(v))),
        );
        Ok(Box::new(move || Ok(entries)))
    }

    fn persistence_v4_get(
        &self,
        key: &PersistKeyV4,
    ) -> Result<Option<PersistValue>, DataplaneError> {
        Ok(self
            .persist_v4
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v))
    }

    fn persistence_v6_get(
        &self,
        key: &PersistKeyV6,
    ) -> Result<Option<PersistValue>, DataplaneError> {
        Ok(self
            .persist_v6
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v))
    }

    fn persistence_v4_write(
        &mut self,
        key: &PersistKeyV4,
        value: &PersistValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        Ok(fake_write(&mut self.persist_v4, key, value, new_only))
    }

    fn persistence_v6_write(
        &mut self,
        key: &PersistKeyV6,
        value: &PersistValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        Ok(fake_write(&mut self.persist_v6, key, value, new_only))
    }

    fn probation_v4_write(
        &mut self,
        key: &PersistKeyV4,
        value: &ProbationValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        Ok(fake_write(&mut self.probation_v4, key, value, new_only))
    }

    fn probation_v6_write(
        &mut self,
        key: &PersistKeyV6,
        value: &ProbationValue,
        new_only: bool,
    ) -> Result<bool, DataplaneError> {
        Ok(fake_write(&mut self.probation_v6, key, value, new_only))
    }
}

/// `BPF_NOEXIST` (`new_only`) or `BPF_EXIST` over a vector map.
fn fake_write<K: PartialEq + Copy, V: Copy>(
    map: &mut Vec<(K, V)>,
    key: &K,
    value: &V,
    new_only: bool,
) -> bool {
    match (map.iter_mut().find(|(k, _)| k == key), new_only) {
        (Some(_), true) | (None, false) => false,
        (Some((_, v)), false) => {
            *v = *value;
            true
        }
        (None, true) => {
            map.push((*key, *value));
            true
        }
    }
}
