//! One table for both address families: [`FixtureFamily`] is what a table needs of the
//! fixture's service of one family (its VIP, service id, backends, routed client networks),
//! implemented by `Ipv4Addr` and `Ipv6Addr` as [`crate::family::Family`] is; the builders
//! below make the frames every table uses (a client's to the VIP, a backend's to a client,
//! and what a correct NAT makes of them) for either; [`both_families!`](crate::both_families)
//! turns a table written once, `fn case<F: FixtureFamily>(lb: &mut Fixture)`, into one test
//! per family.
//!
//! The data path is one program for both families (its flows and selection are written once
//! over its `Family`, `lb-ebpf/src/family.rs` and `flow.rs`), so a case that means the same
//! over IPv4 and IPv6 is one table. What only one family has — IPv4's header checksum,
//! options and fragment rules, IPv6's extension headers, ICMPv6 handed to the kernel before
//! any lookup — stays in per-family tables.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{counter, PersistValue, ProbationValue};

use super::{
    backend_mac, backend_v4, backend_v6, words, EXT_MAC, INT_MAC, ROUTER4, ROUTER6, ROUTER_MAC,
    SVC4, SVC6, VIP4, VIP6,
};
use crate::family::Family;
use crate::frame::IpFrame;
use crate::packet::{Ipv4Frame, Mac};
use crate::packet6::Ipv6Frame;

/// The fixture's service of one address family (`xdp` module doc).
pub trait FixtureFamily: Family {
    /// Its frames.
    type Frame: IpFrame<Addr = Self>;
    /// The service's VIP.
    const VIP: Self;
    /// The service id of the VIP.
    const SVC: u32;
    /// The other family's service id.
    const OTHER_SVC: u32;
    /// The service's backends, in ring order of `Fixture::maglev`.
    const BACKEND_IDS: [u32; 3];
    /// The upstream router on `ext` (a permanent neighbour with [`ROUTER_MAC`]).
    const ROUTER: Self;
    /// The gateway's own address on `ext` and on `int`.
    const OWN_EXT: Self;
    const OWN_INT: Self;
    const LOOPBACK: Self;
    /// The verdict of an ICMP message to the VIP that the data path leaves to the kernel:
    /// IPv4's ICMP is parsed for frag-needed and is otherwise no service port; every ICMPv6
    /// message but packet too big is the kernel's before any lookup (`lb-ebpf/src/flow.rs`).
    const PASS_ICMP: u32;
    /// Bytes after the IP header in the first fragment of a packet on a 1500-byte link (IPv6:
    /// after the Fragment header too), a multiple of 8.
    const FRAG_LEN: usize;

    /// Address of backend `id` of this family.
    fn backend(id: u32) -> Self;
    /// Host `i` of the clients' network routed through [`Self::ROUTER`]: 198.51.100.`i`,
    /// 2001:db8:c::`i`.
    fn client(i: u16) -> Self;
    /// Host `i` of the clients' second routed network: 192.0.2.`i` (a /27: `i` in 32..64),
    /// 2001:db8:d::`i`.
    fn far_client(i: u16) -> Self;
    /// Host `i` of a network with an `unreachable` route: 100.64.0.`i`, 2001:db8:f::`i`.
    fn unrouted(i: u16) -> Self;
    /// Host `i` of the backends' network on `int`, a backend only if `i` names one:
    /// 10.0.0.`i`, 2001:db8:1::`i`.
    fn in_backends_net(i: u16) -> Self;
    /// Host `i` of the VIP's network, not a VIP unless `i` is the VIP's own: 203.0.113.`i`,
    /// 2001:db8:ffff::`i`.
    fn in_vip_net(i: u16) -> Self;
    /// Sets the length field of the IP header of `frame` (built here: Ethernet, then the
    /// fixed header) so that `n` bytes follow the fixed header: IPv4's total length (and its
    /// header checksum again), IPv6's payload length.
    fn set_payload_len(frame: &mut [u8], n: usize);

    /// Another backend of the service than `id` (the next one).
    fn other_backend(id: u32) -> u32 {
        let ids = Self::BACKEND_IDS;
        let i = ids
            .iter()
            .position(|&b| b == id)
            .unwrap_or_else(|| panic!("backend {id} is not an {} backend", Self::NAME));
        ids[(i + 1) % 3]
    }
}

fn u8_host(i: u16) -> u8 {
    u8::try_from(i).unwrap_or_else(|_| panic!("IPv4 host {i} does not fit one octet"))
}

impl FixtureFamily for Ipv4Addr {
    type Frame = Ipv4Frame;
    const VIP: Self = VIP4;
    const SVC: u32 = SVC4;
    const OTHER_SVC: u32 = SVC6;
    const BACKEND_IDS: [u32; 3] = [1, 2, 3];
    const ROUTER: Self = ROUTER4;
    const OWN_EXT: Self = Ipv4Addr::new(192, 0, 2, 1);
    const OWN_INT: Self = Ipv4Addr::new(10, 0, 0, 1);
    const LOOPBACK: Self = Ipv4Addr::LOCALHOST;
    const PASS_ICMP: u32 = counter::PASS_NOT_SERVICE_PORT;
    const FRAG_LEN: usize = 1480;

    fn backend(id: u32) -> Self {
        backend_v4(id)
    }

    fn client(i: u16) -> Self {
        Ipv4Addr::new(198, 51, 100, u8_host(i))
    }

    fn far_client(i: u16) -> Self {
        assert!((32..64).contains(&i), "192.0.2.{i} is not in 192.0.2.32/27");
        Ipv4Addr::new(192, 0, 2, u8_host(i))
    }

    fn unrouted(i: u16) -> Self {
        Ipv4Addr::new(100, 64, 0, u8_host(i))
    }

    fn in_backends_net(i: u16) -> Self {
        Ipv4Addr::new(10, 0, 0, u8_host(i))
    }

    fn in_vip_net(i: u16) -> Self {
        Ipv4Addr::new(203, 0, 113, u8_host(i))
    }

    fn set_payload_len(frame: &mut [u8], n: usize) {
        let ip = crate::packet::IP_OFFSET;
        let total = u16::try_from(20 + n).expect("an IPv4 total length");
        frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        crate::packet::fix_ipv4_checksum(frame);
    }
}

impl FixtureFamily for Ipv6Addr {
    type Frame = Ipv6Frame;
    const VIP: Self = VIP6;
    const SVC: u32 = SVC6;
    const OTHER_SVC: u32 = SVC4;
    const BACKEND_IDS: [u32; 3] = [4, 5, 6];
    const ROUTER: Self = ROUTER6;
    const OWN_EXT: Self = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 1);
    const OWN_INT: Self = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    const LOOPBACK: Self = Ipv6Addr::LOCALHOST;
    const PASS_ICMP: u32 = counter::PASS_ICMPV6;
    const FRAG_LEN: usize = 1448;

    fn backend(id: u32) -> Self {
        backend_v6(id)
    }

    fn client(i: u16) -> Self {
        Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, i)
    }

    fn far_client(i: u16) -> Self {
        Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, i)
    }

    fn unrouted(i: u16) -> Self {
        Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, i)
    }

    fn in_backends_net(i: u16) -> Self {
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i)
    }

    fn in_vip_net(i: u16) -> Self {
        Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, i)
    }

    fn set_payload_len(frame: &mut [u8], n: usize) {
        let ip = crate::packet6::IP6_OFFSET;
        let len = u16::try_from(n).expect("an IPv6 payload length");
        frame[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
    }
}

/// The wire-order words of `a` (`lb_common`, "Byte order").
pub fn words_of<F: FixtureFamily>(a: F) -> [u32; 4] {
    words(a.into())
}

/// A client's UDP datagram to the VIP, as it arrives from the upstream router.
pub fn to_vip<F: FixtureFamily>(client: F, sport: u16, dport: u16, data: &[u8]) -> F::Frame {
    F::Frame::udp(ROUTER_MAC, EXT_MAC, (client, sport), (F::VIP, dport), data)
}

/// A client's packet of protocol `proto` to the VIP, as it arrives from the upstream router.
pub fn raw_to_vip<F: FixtureFamily>(client: F, proto: u8, payload: &[u8]) -> F::Frame {
    F::Frame::raw(ROUTER_MAC, EXT_MAC, client, F::VIP, proto, payload)
}

/// Backend `id`'s UDP datagram to `client`, as it arrives on `int`.
pub fn from_backend<F: FixtureFamily>(
    id: u32,
    sport: u16,
    client: F,
    dport: u16,
    data: &[u8],
) -> F::Frame {
    F::Frame::udp(
        backend_mac(id),
        INT_MAC,
        (F::backend(id), sport),
        (client, dport),
        data,
    )
}

/// Backend `id`'s packet of protocol `proto` to `client`, as it arrives on `int`.
pub fn raw_from_backend<F: FixtureFamily>(
    id: u32,
    client: F,
    proto: u8,
    payload: &[u8],
) -> F::Frame {
    F::Frame::raw(
        backend_mac(id),
        INT_MAC,
        F::backend(id),
        client,
        proto,
        payload,
    )
}

/// What a correct forward NAT makes of `f` for backend `id`: destination the backend, one
/// hop less, MACs from `int` to the backend.
pub fn forwarded<Fr: IpFrame>(f: &Fr, id: u32) -> Vec<u8>
where
    Fr::Addr: FixtureFamily,
{
    forwarded_from(f, id, INT_MAC)
}

/// As [`forwarded`], leaving by the interface whose MAC is `smac`.
pub fn forwarded_from<Fr: IpFrame>(f: &Fr, id: u32, smac: Mac) -> Vec<u8>
where
    Fr::Addr: FixtureFamily,
{
    forwarded_frame(f, id, smac).bytes()
}

/// The frame [`forwarded_from`] writes out (to split into fragments, for one).
pub fn forwarded_frame<Fr: IpFrame>(f: &Fr, id: u32, smac: Mac) -> Fr
where
    Fr::Addr: FixtureFamily,
{
    let (src, _) = f.addrs();
    f.readdressed(src, Fr::Addr::backend(id))
        .with_hops(f.hops() - 1)
        .with_macs(smac, backend_mac(id))
}

/// What a correct reverse NAT makes of `f`: source the VIP, one hop less, MACs from `ext` to
/// `router` (the client's previous hop).
pub fn reversed<Fr: IpFrame>(f: &Fr, router: Mac) -> Vec<u8>
where
    Fr::Addr: FixtureFamily,
{
    reversed_frame(f, router).bytes()
}

/// The frame [`reversed`] writes out.
pub fn reversed_frame<Fr: IpFrame>(f: &Fr, router: Mac) -> Fr
where
    Fr::Addr: FixtureFamily,
{
    let (_, dst) = f.addrs();
    f.readdressed(Fr::Addr::VIP, dst)
        .with_hops(f.hops() - 1)
        .with_macs(EXT_MAC, router)
}

/// A persistence entry (an established client) on `backend`, last seen at tick `atime` from
/// `mac` on port `port`.
pub fn persist_entry(backend: u32, atime: u32, mac: Mac, port: u32) -> PersistValue {
    PersistValue {
        backend,
        atime,
        client_mac: mac,
        port: port as u8,
        flags: 0,
    }
}

/// A probation entry (a client not established yet) on `backend`, as [`persist_entry`], with
/// the proof its backend's reply recorded (0: none yet).
pub fn probation_entry(
    backend: u32,
    atime: u32,
    mac: Mac,
    port: u32,
    proof: u64,
) -> ProbationValue {
    ProbationValue {
        backend,
        atime,
        client_mac: mac,
        port: port as u8,
        flags: 0,
        proof,
    }
}

/// Turns a table written once for both families into one test per family: a module named
/// after the case, holding `#[test] fn ipv4()` and `#[test] fn ipv6()` (so `cargo test
/// case` runs both and a failure names its family).
///
/// * `both_families!(case, setup)`: `fn case<F: FixtureFamily>(lb: &mut Fixture)` runs on a
///   fixture loaded with `setup` (an expression, evaluated in the calling module), with the
///   slot fast path off and then on ([`Fixture::both_fast_paths`](super::Fixture)).
/// * `both_families!(case)`: `fn case<F: FixtureFamily>()` is the whole test.
#[macro_export]
macro_rules! both_families {
    ($case:ident, $setup:expr) => {
        mod $case {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn ipv4() {
                $crate::xdp::Fixture::both_fast_paths($setup, super::$case::<::std::net::Ipv4Addr>);
            }

            #[test]
            fn ipv6() {
                $crate::xdp::Fixture::both_fast_paths($setup, super::$case::<::std::net::Ipv6Addr>);
            }
        }
    };
    ($case:ident) => {
        mod $case {
            #[test]
            fn ipv4() {
                super::$case::<::std::net::Ipv4Addr>();
            }

            #[test]
            fn ipv6() {
                super::$case::<::std::net::Ipv6Addr>();
            }
        }
    };
}
