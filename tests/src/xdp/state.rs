//! The fixture's maps as the daemon writes them and the data path leaves them: rings,
//! backends, persistence and probation entries, slot stamps, counters.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, PerCpuArray};
use lb_common::{
    counter, event,
    hash::{client_hash_v4, client_hash_v6},
    maglev::{self, Member},
    maps, vip_slot, vip_slot6, Backend, PersistKeyV4, PersistKeyV6, PersistValue, ProbationValue,
    Traffic, VipSlot, VipSlot6, RING_F_CHANGED, VIP_SLOT_ONE,
};

use super::{backend_addr, words, Fixture, RING, SEED, SVC4, SVC6};

impl Fixture {
    /// The Maglev table of service `svc` over its three backends, with `down` ids unusable.
    pub fn maglev(&self, svc: u32, down: &[u32]) -> Vec<u32> {
        let ids = if svc == SVC4 { [1, 2, 3] } else { [4, 5, 6] };
        let members: Vec<Member> = ids
            .iter()
            .map(|&id| Member {
                id,
                key: match backend_addr(id) {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                },
                weight: 1,
                usable: !down.contains(&id),
            })
            .collect();
        maglev::build(&members, RING, SEED)
    }

    /// Writes `table` as service `svc`'s ring.
    pub fn write_ring(&mut self, svc: u32, table: &[u32]) {
        let base = self.services[svc as usize].ring_base;
        let mut rings: Array<_, u32> = self.map(maps::RINGS);
        for (slot, id) in table.iter().enumerate() {
            rings.set(base + slot as u32, id, 0).unwrap();
        }
    }

    pub fn set_backend(&mut self, id: u32, b: Backend) {
        let mut backends: Array<_, Backend> = self.map(maps::BACKENDS);
        backends.set(id, &b, 0).unwrap();
    }

    pub fn backend(&mut self, id: u32) -> Backend {
        let backends: Array<_, Backend> = self.map(maps::BACKENDS);
        backends.get(&id, 0).unwrap()
    }

    /// The slot of `client` in its service's Maglev table (the fixture's seed and size).
    pub fn slot(&self, client: IpAddr) -> u32 {
        let hash = match client {
            IpAddr::V4(_) => client_hash_v4(words(client)[0], SEED),
            IpAddr::V6(_) => client_hash_v6(&words(client), SEED),
        };
        lb_common::hash::ring_slot(hash, RING)
    }

    fn slot_index(&self, client: IpAddr) -> u32 {
        let svc = if client.is_ipv4() { SVC4 } else { SVC6 };
        self.services[svc as usize].ring_base + self.slot(client)
    }

    /// The slot of `addr` in its family's VIP index (`lb_common::vip_slot`, `vip_slot6`).
    pub fn vip_index_slot(addr: IpAddr) -> u32 {
        match addr {
            IpAddr::V4(_) => vip_slot(words(addr)[0]),
            IpAddr::V6(_) => vip_slot6(&words(addr)),
        }
    }

    /// Writes the slot of `addr` in its family's VIP index (`VIP_INDEX_V4`, `VIP_INDEX_V6`)
    /// as the daemon does: `state` (`VIP_SLOT_*`), and with `VIP_SLOT_ONE` the VIP `addr` and
    /// its `service` (zeros otherwise).
    pub fn set_vip_index(&mut self, addr: IpAddr, state: u32, service: u32) {
        let slot = Self::vip_index_slot(addr);
        let (vip, service) = if state == VIP_SLOT_ONE {
            (words(addr), service)
        } else {
            ([0; 4], 0)
        };
        if addr.is_ipv4() {
            let mut index: Array<_, VipSlot> = self.map(maps::VIP_INDEX_V4);
            let v = VipSlot {
                state,
                addr: vip[0],
                service,
            };
            index.set(slot, &v, 0).unwrap();
        } else {
            let mut index: Array<_, VipSlot6> = self.map(maps::VIP_INDEX_V6);
            let v = VipSlot6 {
                state,
                service,
                addr: vip,
            };
            index.set(slot, &v, 0).unwrap();
        }
    }

    /// The raw ring slot of `client` (backend id and `RING_F_*` flags).
    pub fn ring_slot(&mut self, client: IpAddr) -> u32 {
        let i = self.slot_index(client);
        let rings: Array<_, u32> = self.map(maps::RINGS);
        rings.get(&i, 0).unwrap()
    }

    /// Writes the raw ring slot of `client`.
    pub fn set_ring_slot(&mut self, client: IpAddr, value: u32) {
        let i = self.slot_index(client);
        let mut rings: Array<_, u32> = self.map(maps::RINGS);
        rings.set(i, &value, 0).unwrap();
    }

    /// Sets `RING_F_CHANGED` on `client`'s slot, as the daemon does for a slot whose live
    /// entries disagree with it.
    pub fn mark_changed(&mut self, client: IpAddr) {
        let v = self.ring_slot(client);
        self.set_ring_slot(client, v | RING_F_CHANGED);
    }

    /// The backend the ring gives `client` (what a new client gets).
    pub fn ring_choice(&mut self, client: IpAddr) -> u32 {
        self.ring_slot(client) & lb_common::RING_BACKEND_MASK
    }

    /// The persistence entry of `client`, from `PERSIST_V4` or `PERSIST_V6`.
    pub fn persisted(&mut self, client: IpAddr) -> Option<PersistValue> {
        match client {
            IpAddr::V4(_) => {
                let m: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
                m.get(&key4(client), 0).ok()
            }
            IpAddr::V6(_) => {
                let m: HashMap<_, PersistKeyV6, PersistValue> = self.map(maps::PERSIST_V6);
                m.get(&key6(client), 0).ok()
            }
        }
    }

    /// Writes `v` as the persistence entry of `client`.
    pub fn persist(&mut self, client: IpAddr, v: PersistValue) {
        match client {
            IpAddr::V4(_) => {
                let mut m: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
                m.insert(&key4(client), &v, 0).unwrap();
            }
            IpAddr::V6(_) => {
                let mut m: HashMap<_, PersistKeyV6, PersistValue> = self.map(maps::PERSIST_V6);
                m.insert(&key6(client), &v, 0).unwrap();
            }
        }
    }

    /// Deletes `client`'s persistence entry (if any).
    pub fn unpersist(&mut self, client: IpAddr) {
        match client {
            IpAddr::V4(_) => {
                let mut m: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
                let _ = m.remove(&key4(client));
            }
            IpAddr::V6(_) => {
                let mut m: HashMap<_, PersistKeyV6, PersistValue> = self.map(maps::PERSIST_V6);
                let _ = m.remove(&key6(client));
            }
        }
    }

    /// The probation entry of `client`, from `PROBATION_V4` or `PROBATION_V6`.
    pub fn probation(&mut self, client: IpAddr) -> Option<ProbationValue> {
        match client {
            IpAddr::V4(_) => {
                let m: HashMap<_, PersistKeyV4, ProbationValue> = self.map(maps::PROBATION_V4);
                m.get(&key4(client), 0).ok()
            }
            IpAddr::V6(_) => {
                let m: HashMap<_, PersistKeyV6, ProbationValue> = self.map(maps::PROBATION_V6);
                m.get(&key6(client), 0).ok()
            }
        }
    }

    /// Writes `v` as the probation entry of `client`.
    pub fn set_probation(&mut self, client: IpAddr, v: ProbationValue) {
        match client {
            IpAddr::V4(_) => {
                let mut m: HashMap<_, PersistKeyV4, ProbationValue> = self.map(maps::PROBATION_V4);
                m.insert(&key4(client), &v, 0).unwrap();
            }
            IpAddr::V6(_) => {
                let mut m: HashMap<_, PersistKeyV6, ProbationValue> = self.map(maps::PROBATION_V6);
                m.insert(&key6(client), &v, 0).unwrap();
            }
        }
    }

    /// Deletes `client`'s probation entry (if any).
    pub fn unprobation(&mut self, client: IpAddr) {
        match client {
            IpAddr::V4(_) => {
                let mut m: HashMap<_, PersistKeyV4, ProbationValue> = self.map(maps::PROBATION_V4);
                let _ = m.remove(&key4(client));
            }
            IpAddr::V6(_) => {
                let mut m: HashMap<_, PersistKeyV6, ProbationValue> = self.map(maps::PROBATION_V6);
                let _ = m.remove(&key6(client));
            }
        }
    }

    /// The refresh stamp (tick) of `client`'s ring slot, IPv4 or IPv6: `REFRESHED_V4` is
    /// indexed like `RINGS` for both families despite its name (`lb_common::maps`).
    pub fn refreshed(&mut self, client: impl Into<IpAddr>) -> u32 {
        let i = self.slot_index(client.into());
        let m: Array<_, u32> = self.map(maps::REFRESHED_V4);
        m.get(&i, 0).unwrap()
    }

    /// Writes the refresh stamp of `client`'s ring slot (either family, as [`Self::refreshed`]).
    pub fn set_refreshed(&mut self, client: impl Into<IpAddr>, tick: u32) {
        let i = self.slot_index(client.into());
        let mut m: Array<_, u32> = self.map(maps::REFRESHED_V4);
        m.set(i, &tick, 0).unwrap();
    }

    pub fn counters(&mut self) -> Vec<u64> {
        let c: PerCpuArray<_, u64> = self.map(maps::COUNTERS);
        (0..counter::COUNT)
            .map(|i| c.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    /// `EVENTS`, summed over the CPUs.
    pub fn events(&mut self) -> Vec<u64> {
        let c: PerCpuArray<_, u64> = self.map(maps::EVENTS);
        (0..event::COUNT)
            .map(|i| c.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    /// `IKE_STAGES`, summed over the CPUs.
    pub fn ike_stages(&mut self) -> Vec<u64> {
        let c: PerCpuArray<_, u64> = self.map(maps::IKE_STAGES);
        (0..lb_common::ike::COUNT)
            .map(|i| c.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    pub fn traffic(&mut self, id: u32, dir: u32) -> Traffic {
        let s: PerCpuArray<_, Traffic> = self.map(maps::BACKEND_STATS);
        s.get(&(id * 2 + dir), 0)
            .unwrap()
            .iter()
            .fold(Traffic::default(), |a, t| Traffic {
                packets: a.packets + t.packets,
                bytes: a.bytes + t.bytes,
            })
    }
}

fn key4(client: IpAddr) -> PersistKeyV4 {
    PersistKeyV4 {
        service: SVC4,
        client: words(client)[0],
    }
}

fn key6(client: IpAddr) -> PersistKeyV6 {
    PersistKeyV6 {
        service: SVC6,
        client: words(client),
    }
}
