//! The VIP indexes the data path reads before any hash lookup (`VIP_INDEX_V4`,
//! `VIP_INDEX_V6`; `lb_common::VipSlot`): slot `vip_slot(vip)` names the one VIP that hashes
//! there and its service, or says that several do (the data path then asks `VIPS_V4` or
//! `VIPS_V6`), or none. One rule for both families over [`IndexedVip`].

use std::hash::Hash;

use aya::{
    maps::{HashMap, MapData},
    Pod,
};
use lb_common::{maps, vip_slot, vip_slot6, Service, VipSlot, VipSlot6, VIP_SLOT_ONE, VIP_SLOT_SHARED};

use super::AyaDataplane;
use crate::dataplane::DataplaneError;

/// A VIP address of one family, with its hash map, its index and the index's slot value.
pub(super) trait IndexedVip: Pod + Copy + Eq + Hash + std::fmt::Debug {
    type Slot: Pod + Default + PartialEq + std::fmt::Debug;
    /// HashMap<Self, Service>.
    const VIPS: &'static str;
    /// Array<Self::Slot>.
    const INDEX: &'static str;
    /// Its slot in the index.
    fn slot(&self) -> u32;
    /// The value naming this VIP alone in its slot, for service `service`.
    fn alone(self, service: u32) -> Self::Slot;
    /// The value of a slot several VIPs share.
    fn shared() -> Self::Slot;
}

impl IndexedVip for u32 {
    type Slot = VipSlot;
    const VIPS: &'static str = maps::VIPS_V4;
    const INDEX: &'static str = maps::VIP_INDEX_V4;
    fn slot(&self) -> u32 {
        vip_slot(*self)
    }
    fn alone(self, service: u32) -> VipSlot {
        VipSlot {
            state: VIP_SLOT_ONE,
            addr: self,
            service,
        }
    }
    fn shared() -> VipSlot {
        VipSlot {
            state: VIP_SLOT_SHARED,
            ..VipSlot::default()
        }
    }
}

impl IndexedVip for [u32; 4] {
    type Slot = VipSlot6;
    const VIPS: &'static str = maps::VIPS_V6;
    const INDEX: &'static str = maps::VIP_INDEX_V6;
    fn slot(&self) -> u32 {
        vip_slot6(self)
    }
    fn alone(self, service: u32) -> VipSlot6 {
        VipSlot6 {
            state: VIP_SLOT_ONE,
            service,
            addr: self,
        }
    }
    fn shared() -> VipSlot6 {
        VipSlot6 {
            state: VIP_SLOT_SHARED,
            ..VipSlot6::default()
        }
    }
}

impl AyaDataplane {
    /// Rewrites the index slot of `vip` from the VIPs its family's hash map holds there
    /// (`except` one about to be removed): none, exactly one (its address and service id), or
    /// several.
    pub(super) fn index_vip<A: IndexedVip>(
        &mut self,
        vip: A,
        except: Option<A>,
    ) -> Result<(), DataplaneError> {
        let map = A::VIPS;
        let slot = vip.slot();
        let vips: HashMap<&MapData, A, Service> =
            HashMap::try_from(self.map(map)?).map_err(|source| DataplaneError::MapType {
                map,
                source: Box::new(source),
            })?;
        let mut here = Vec::new();
        for entry in vips.iter() {
            let (v, svc) = entry.map_err(|source| DataplaneError::Read {
                map,
                source: Box::new(source),
            })?;
            if v.slot() == slot && Some(v) != except {
                here.push((v, svc.id));
            }
        }
        let value = match here[..] {
            [] => A::Slot::default(),
            [(v, service)] => v.alone(service),
            _ => A::shared(),
        };
        self.array_set(A::INDEX, slot, value)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use aya::maps::Array;
    use lb_common::{FAMILY_V4, FAMILY_V6};

    use super::*;
    use crate::dataplane::Dataplane;

    fn index<A: IndexedVip>(dp: &AyaDataplane, slot: u32) -> A::Slot {
        let a: Array<&MapData, A::Slot> =
            Array::try_from(dp.ebpf.map(A::INDEX).unwrap()).unwrap();
        a.get(&slot, 0).unwrap()
    }

    /// For one family: a VIP alone in its slot is named there, two VIPs sharing a slot send
    /// the data path to the hash map, and forgetting one names the other alone again.
    fn check<A: IndexedVip>(
        dp: &mut AyaDataplane,
        a: A,
        other: impl Fn(u32) -> A,
        service: impl Fn(u32, A) -> Service,
    ) {
        let slot = a.slot();
        let b = (1u32..)
            .map(other)
            .find(|x| x.slot() == slot && *x != a)
            .expect("an address in the same slot");
        assert_eq!(index::<A>(dp, slot), A::Slot::default(), "{a:?}: empty at first");
        dp.set_service(&service(3, a)).unwrap();
        assert_eq!(index::<A>(dp, slot), a.alone(3), "{a:?} alone");
        // A flip writes the same service again: the index is unchanged.
        dp.flip(&service(3, a)).unwrap();
        assert_eq!(index::<A>(dp, slot), a.alone(3), "{a:?} after a flip");
        dp.set_service(&service(5, b)).unwrap();
        assert_eq!(index::<A>(dp, slot), A::shared(), "{a:?} and {b:?} share the slot");
        dp.forget_service(&service(3, a), true).unwrap();
        assert_eq!(index::<A>(dp, slot), b.alone(5), "{b:?} alone again");
        dp.forget_service(&service(5, b), true).unwrap();
        assert_eq!(index::<A>(dp, slot), A::Slot::default(), "{a:?}: empty at the end");
    }

    fn words(a: Ipv6Addr) -> [u32; 4] {
        let o = a.octets();
        std::array::from_fn(|i| u32::from_ne_bytes(o[4 * i..4 * i + 4].try_into().unwrap()))
    }

    /// The indexes the data path reads first (`maps::vip_v4`, `maps::vip_v6` in lb-ebpf)
    /// follow every service write, for both families.
    #[test]
    fn root_the_vip_index_names_a_vip_alone_in_its_slot_and_marks_a_shared_one() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (loads the object's maps)");
            return;
        }
        let ebpf = aya::EbpfLoader::new()
            .load(crate::EBPF_OBJECT)
            .expect("load the object's maps");
        let mut dp = AyaDataplane::new(ebpf);
        check(
            &mut dp,
            u32::from_ne_bytes([203, 0, 113, 10]),
            |i| u32::from_ne_bytes([198, 18, (i >> 8) as u8, i as u8]),
            |id, vip| Service {
                id,
                family: FAMILY_V4,
                vip: [vip, 0, 0, 0],
                ..Service::default()
            },
        );
        check(
            &mut dp,
            words("2001:db8:ffff::10".parse().unwrap()),
            |i| words(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, i as u16)),
            |id, vip| Service {
                id,
                family: FAMILY_V6,
                vip,
                ..Service::default()
            },
        );
    }
}
