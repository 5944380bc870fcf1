//! The gateway's own addresses in `BACKEND_IDS_V4/V6` (value [`lb_common::OWN_ADDRESS_ID`]): the data
//! path drops a frame to a VIP from one of them (`drop/source_own_address`,
//! `docs/security.md`, "What a router checks") — nobody outside sends from the gateway's
//! addresses, so such a frame is spoofed and must never get a persistence entry.
//!
//! The daemon reads every local address of its network namespace ([`local_addresses`],
//! `getifaddrs(3)`) after the first apply and again with every next-hop pass, and
//! [`OwnAddresses::refresh`] writes what changed ([`diff`]).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::dataplane::{Dataplane, DataplaneError};

/// At most this many own addresses are listed (`BACKEND_IDS_*` is sized for the backends,
/// with headroom; the rest of a larger set is left out, logged once).
pub const MAX_OWN_ADDRESSES: usize = 256;

/// Every address of every interface of the calling thread's network namespace (IPv4 and
/// IPv6, each once, sorted), as `getifaddrs(3)` reports them.
pub fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = BTreeSet::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; `ifa_addr` may be null, and
        // points to a sockaddr of the family it names.
        unsafe {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.insert(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out.into_iter().collect())
}

/// Whether `ip` is worth listing: loopback (127/8, ::1), link-local IPv6 (fe80::/10) and the
/// unspecified address are dropped by the data path as sources anyway (`source_loopback`,
/// `source_martian`, `source_unspecified`), before it looks in `BACKEND_IDS_*`.
fn listable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// What a refresh writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Own addresses to list: those not listed yet and those listed already (rewritten, see
    /// [`OwnAddresses::refresh`]), sorted.
    pub list: Vec<IpAddr>,
    /// Of `list`, how many are new.
    pub new: usize,
    /// Listed before and no longer local: their entries are deleted.
    pub gone: Vec<IpAddr>,
    /// Local addresses left out beyond [`MAX_OWN_ADDRESSES`].
    pub over_cap: usize,
}

/// The entries to write given what is `listed` now, the local addresses `found` and the
/// addresses `taken` by a configured backend or a VIP. A taken address is never listed, and
/// one listed before is not deleted either: its key is (or is about to be) the backend's,
/// whose `set_backend` overwrote the own-address value — backend wins.
pub fn diff(listed: &BTreeSet<IpAddr>, found: &[IpAddr], taken: &BTreeSet<IpAddr>) -> Diff {
    let wanted: BTreeSet<IpAddr> = found
        .iter()
        .filter(|ip| listable(ip) && !taken.contains(ip))
        .copied()
        .collect();
    let over_cap = wanted.len().saturating_sub(MAX_OWN_ADDRESSES);
    let list: Vec<IpAddr> = wanted.into_iter().take(MAX_OWN_ADDRESSES).collect();
    let new = list.iter().filter(|ip| !listed.contains(ip)).count();
    let gone = listed
        .iter()
        .filter(|ip| !list.contains(ip) && !taken.contains(ip))
        .copied()
        .collect();
    Diff {
        list,
        new,
        gone,
        over_cap,
    }
}

/// The own addresses the daemon listed, and whether it said the cap was reached.
#[derive(Debug, Default)]
pub struct OwnAddresses {
    listed: BTreeSet<IpAddr>,
    warned_cap: bool,
}

impl OwnAddresses {
    /// Starts from the entries a previous daemon left in pinned maps, so those of addresses
    /// gone since are deleted by the first refresh.
    pub fn adopt<D: Dataplane>(dp: &D) -> Result<Self, DataplaneError> {
        Ok(Self {
            listed: dp.own_addresses()?.into_iter().collect(),
            warned_cap: false,
        })
    }

    /// The addresses listed now.
    pub fn listed(&self) -> &BTreeSet<IpAddr> {
        &self.listed
    }

    /// Writes [`diff`]'s entries: every own address is (re)written, not only new ones — a
    /// backend that took an own address and was removed again between two refreshes had its
    /// key deleted with it (`Balancer::apply` forgets removed backends' index entries).
    /// Returns the diff; on an error, what was written stays recorded and the next refresh
    /// retries the rest.
    pub fn refresh<D: Dataplane>(
        &mut self,
        dp: &mut D,
        found: &[IpAddr],
        taken: &BTreeSet<IpAddr>,
    ) -> Result<Diff, DataplaneError> {
        let d = diff(&self.listed, found, taken);
        if d.over_cap > 0 && !self.warned_cap {
            self.warned_cap = true;
            tracing::warn!(
                listed = MAX_OWN_ADDRESSES,
                left_out = d.over_cap,
                "more local addresses than the own-address cap: frames to a VIP from the \
                 others are not dropped as source_own_address"
            );
        }
        self.listed.retain(|ip| !taken.contains(ip));
        for &ip in &d.gone {
            dp.remove_own_address(ip)?;
            self.listed.remove(&ip);
        }
        for &ip in &d.list {
            dp.set_own_address(ip)?;
            self.listed.insert(ip);
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{addr_words, fake::FakeDataplane};
    use lb_common::OWN_ADDRESS_ID;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn set(list: &[&str]) -> BTreeSet<IpAddr> {
        ips(list).into_iter().collect()
    }

    #[test]
    fn new_and_gone_addresses() {
        let d = diff(
            &set(&["192.0.2.1", "198.51.100.1"]),
            &ips(&["192.0.2.1", "10.0.0.1", "2001:db8::1"]),
            &set(&[]),
        );
        assert_eq!(d.list, ips(&["10.0.0.1", "192.0.2.1", "2001:db8::1"]));
        assert_eq!(d.new, 2);
        assert_eq!(d.gone, ips(&["198.51.100.1"]));
        assert_eq!(d.over_cap, 0);
    }

    #[test]
    fn loopback_link_local_and_unspecified_are_not_listed() {
        let d = diff(
            &set(&[]),
            &ips(&[
                "127.0.0.1",
                "127.1.2.3",
                "::1",
                "fe80::1",
                "febf::1",
                "0.0.0.0",
                "::",
            ]),
            &set(&[]),
        );
        assert!(d.list.is_empty(), "{d:?}");
        // fec0::/10 is not link-local.
        let d = diff(&set(&[]), &ips(&["fec0::1", "169.254.1.1"]), &set(&[]));
        assert_eq!(d.list, ips(&["169.254.1.1", "fec0::1"]));
    }

    #[test]
    fn backends_and_vips_are_never_listed_nor_deleted() {
        // 10.0.0.11 was listed, then became a backend: its key is the backend's now.
        let d = diff(
            &set(&["10.0.0.11", "192.0.2.9"]),
            &ips(&["10.0.0.11", "203.0.113.10", "192.0.2.1"]),
            &set(&["10.0.0.11", "203.0.113.10", "192.0.2.9"]),
        );
        assert_eq!(d.list, ips(&["192.0.2.1"]));
        assert!(d.gone.is_empty(), "{d:?}");
    }

    #[test]
    fn at_most_the_cap_is_listed() {
        let found: Vec<IpAddr> = (0..300u32)
            .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
            .collect();
        let d = diff(&set(&[]), &found, &set(&[]));
        assert_eq!(d.list.len(), MAX_OWN_ADDRESSES);
        assert_eq!(d.over_cap, 300 - MAX_OWN_ADDRESSES);
    }

    #[test]
    fn refresh_writes_and_deletes_own_entries_and_backend_wins() {
        let mut dp = FakeDataplane::default();
        let backend: IpAddr = "10.0.0.11".parse().unwrap();
        let mut own = OwnAddresses::adopt(&dp).unwrap();
        own.refresh(&mut dp, &ips(&["192.0.2.1", "10.0.0.11"]), &set(&[]))
            .unwrap();
        assert_eq!(dp.backend_ids[&addr_words(backend)], OWN_ADDRESS_ID);
        // A backend is added at an own address: set_backend overwrites the entry, and the
        // next refresh leaves it alone.
        let b = lb_common::Backend {
            addr: addr_words(backend),
            ..Default::default()
        };
        dp.set_backend(4, &b).unwrap();
        let d = own
            .refresh(&mut dp, &ips(&["192.0.2.1"]), &set(&["10.0.0.11"]))
            .unwrap();
        assert!(d.gone.is_empty());
        assert_eq!(dp.backend_ids[&addr_words(backend)], 4);
        assert_eq!(own.listed(), &set(&["192.0.2.1"]));
        // A new daemon adopts the entries left behind; an address gone since is deleted.
        let mut again = OwnAddresses::adopt(&dp).unwrap();
        assert_eq!(again.listed(), &set(&["192.0.2.1"]));
        let d = again.refresh(&mut dp, &[], &set(&["10.0.0.11"])).unwrap();
        assert_eq!(d.gone, ips(&["192.0.2.1"]));
        assert_eq!(
            dp.backend_ids.values().copied().collect::<Vec<_>>(),
            vec![4],
            "only the backend's entry is left"
        );
    }
}
