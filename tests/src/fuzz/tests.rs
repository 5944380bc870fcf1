//! The fuzzer's oracle against frames whose faults are known (no root needed): each
//! invariant of `check` fires on the fault it names and on nothing else, and the checksum
//! reader agrees with `etherparse` (which built the frames).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::counter;

use super::check::{check, Class, Run};
use super::frame::{
    fix_ipv4_checksum, fix_l4_checksum, ipv4_checksum_ok, l4_checksum_ok, put16, Layout,
};
use super::{mutate, Rng, MIN_FRAME};
use crate::packet::{icmp_frag_needed, IpFrame, Ipv4Frame};
use crate::packet6::Ipv6Frame;
use crate::xdp::{Side, EXT_MAC, ROUTER_MAC, VIP4, VIP6, XDP_DROP, XDP_PASS, XDP_REDIRECT};

const C4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);

fn udp4() -> Vec<u8> {
    Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (C4, 500), (VIP4, 500), &[7; 40]).bytes()
}

fn udp6() -> Vec<u8> {
    Ipv6Frame::udp(ROUTER_MAC, EXT_MAC, (C6, 500), (VIP6, 500), &[7; 40]).bytes()
}

fn tcp4() -> Vec<u8> {
    Ipv4Frame::tcp(ROUTER_MAC, EXT_MAC, (C4, 40_000), (VIP4, 443), &[1, 2, 3]).bytes()
}

fn l4_ok(f: &[u8]) -> Option<bool> {
    l4_checksum_ok(f, &Layout::of(f))
}

#[test]
fn checksums_agree_with_etherparse() {
    let tcp6 = Ipv6Frame::tcp(ROUTER_MAC, EXT_MAC, (C6, 40_000), (VIP6, 443), &[1]).bytes();
    let quoted = Ipv4Frame::udp(EXT_MAC, ROUTER_MAC, (VIP4, 4500), (C4, 4500), &[0; 30]);
    let icmp = icmp_frag_needed(ROUTER_MAC, EXT_MAC, C4, VIP4, &quoted, 28, 1400).bytes();
    for f in [udp4(), udp6(), tcp4(), tcp6, icmp] {
        assert_eq!(l4_ok(&f), Some(true), "{}", super::frame::hex(&f));
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 0x10;
        assert_eq!(l4_ok(&bad), Some(false));
        fix_l4_checksum(&mut bad);
        assert_eq!(l4_ok(&bad), Some(true));
    }
    // UDP checksum 0: "none" over IPv4, invalid over IPv6.
    let mut zero4 = udp4();
    put16(&mut zero4, 14 + 20 + 6, 0);
    assert_eq!(l4_ok(&zero4), Some(true));
    let mut zero6 = udp6();
    put16(&mut zero6, 14 + 40 + 6, 0);
    assert_eq!(l4_ok(&zero6), Some(false));
    // Fragments have nothing to check.
    let (a, b) =
        Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (C4, 500), (VIP4, 500), &[7; 100]).fragments(48);
    assert_eq!((l4_ok(&a.bytes()), l4_ok(&b.bytes())), (None, None));
    let mut f = udp4();
    assert!(ipv4_checksum_ok(&f, 14, 20));
    f[14 + 8] = 9;
    assert!(!ipv4_checksum_ok(&f, 14, 20));
    fix_ipv4_checksum(&mut f);
    assert!(ipv4_checksum_ok(&f, 14, 20));
}

fn one_hot(i: u32) -> Vec<i128> {
    let mut d = vec![0; counter::COUNT as usize];
    d[i as usize] = 1;
    d
}

/// The classes `check` finds when `input` arrived on `ext`, was forwarded as `output` and
/// counted as `redirect/forward`.
fn forwarded(input: &[u8], output: &[u8]) -> BTreeSet<Class> {
    classes(input, XDP_REDIRECT, output, &one_hot(counter::FORWARD))
}

fn classes(input: &[u8], action: u32, output: &[u8], deltas: &[i128]) -> BTreeSet<Class> {
    let run = Run {
        input,
        side: Side::Ext,
        action,
        output,
        deltas,
    };
    check(&run).into_iter().map(|(c, _)| c).collect()
}

/// A fault: its name, the input, the output, the classes it must raise.
type Fault = (&'static str, Vec<u8>, Vec<u8>, Vec<Class>);

fn set(c: &[Class]) -> BTreeSet<Class> {
    c.iter().copied().collect()
}

fn edited(f: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = f.to_vec();
    edit(&mut f);
    f
}

#[test]
fn each_invariant_fires_on_its_fault_only() {
    let (u4, u6, t4) = (udp4(), udp6(), tcp4());
    for f in [&u4, &u6, &t4] {
        assert_eq!(forwarded(f, f), set(&[]), "a sound frame");
    }
    let cases: Vec<Fault> = vec![
        (
            "bytes past the IPv4 length",
            u4.clone(),
            edited(&u4, |f| f.push(0)),
            vec![Class::Ipv4Length],
        ),
        (
            "IPv4 header checksum",
            u4.clone(),
            edited(&u4, |f| f[24] ^= 1),
            vec![Class::Ipv4Checksum],
        ),
        (
            "TTL 0",
            u4.clone(),
            edited(&u4, |f| {
                f[22] = 0;
                fix_ipv4_checksum(f);
            }),
            vec![Class::Ttl],
        ),
        (
            "IHL 4",
            u4.clone(),
            edited(&u4, |f| f[14] = 0x44),
            vec![Class::Ipv4Header],
        ),
        (
            "UDP length",
            u4.clone(),
            edited(&u4, |f| {
                put16(f, 38, 20);
                fix_l4_checksum(f);
            }),
            vec![Class::UdpLength],
        ),
        (
            "UDP checksum broken",
            u4.clone(),
            edited(&u4, |f| f[50] ^= 1),
            vec![Class::L4Checksum],
        ),
        (
            "TCP data offset 4",
            t4.clone(),
            edited(&t4, |f| {
                f[46] = 0x40 | (f[46] & 0x0f);
                fix_l4_checksum(f);
            }),
            vec![Class::TcpDataOffset],
        ),
        (
            "fragment past 65,535",
            u4.clone(),
            edited(&u4, |f| {
                put16(f, 20, 8191);
                fix_ipv4_checksum(f);
            }),
            vec![Class::FragmentEnd],
        ),
        (
            "bytes past the IPv6 payload",
            u6.clone(),
            edited(&u6, |f| f.push(0)),
            vec![Class::Ipv6Length],
        ),
        (
            "not IP",
            u4.clone(),
            edited(&u4, |f| put16(f, 12, 0x0806)),
            vec![Class::Ethernet],
        ),
        (
            "broadcast destination MAC",
            edited(&u4, |f| f[..6].fill(0xff)),
            u4.clone(),
            vec![Class::DstMac],
        ),
        (
            "martian client",
            edited(&u4, |f| {
                f[26..30].copy_from_slice(&[127, 0, 0, 1]);
                fix_ipv4_checksum(f);
            }),
            u4.clone(),
            vec![Class::Martian],
        ),
        (
            "martian IPv6 client",
            edited(&u6, |f| {
                f[22..38].copy_from_slice(&Ipv6Addr::LOCALHOST.octets())
            }),
            u6.clone(),
            vec![Class::Martian],
        ),
    ];
    for (name, input, output, want) in cases {
        assert_eq!(forwarded(&input, &output), set(&want), "{name}");
    }
    let pass = one_hot(counter::PASS_NOT_VIP);
    assert_eq!(classes(&u4, XDP_PASS, &u4, &pass), set(&[]));
    let changed = edited(&u4, |f| f[20] ^= 1);
    assert_eq!(
        classes(&u4, XDP_PASS, &changed, &pass),
        set(&[Class::PassModified])
    );
    let drop = one_hot(counter::DROP_MALFORMED);
    assert_eq!(classes(&u4, XDP_DROP, &[], &drop), set(&[]));
    assert_eq!(
        classes(&u4, XDP_DROP, &[], &pass),
        set(&[Class::CounterAction])
    );
    let none = vec![0; counter::COUNT as usize];
    assert_eq!(classes(&u4, XDP_DROP, &[], &none), set(&[Class::Counters]));
    let two: Vec<i128> = drop.iter().zip(&pass).map(|(a, b)| a + b).collect();
    assert_eq!(classes(&u4, XDP_DROP, &[], &two), set(&[Class::Counters]));
    assert_eq!(classes(&u4, 0, &[], &drop), set(&[Class::Aborted]));
}

#[test]
fn mutations_are_deterministic_and_never_shorter_than_ethernet() {
    for seed in 0..2000u64 {
        let (mut a, mut b) = (udp6(), udp6());
        let (wa, wb) = (
            mutate::mutate(&mut a, &mut Rng::new(seed), false),
            mutate::mutate(&mut b, &mut Rng::new(seed), false),
        );
        assert_eq!((&a, &wa), (&b, &wb));
        assert!(a.len() >= MIN_FRAME, "{wa:?}");
        let mut c = tcp4();
        mutate::mutate(&mut c, &mut Rng::new(seed), true);
        assert!(c.len() >= MIN_FRAME);
    }
}

#[test]
fn tcp_options_may_spill_past_an_ipv4_first_fragment_only() {
    let doff = |f: &mut Vec<u8>, at: usize, words: u8| f[at] = (words << 4) | (f[at] & 0x0f);
    // IPv4: 23 bytes of TCP; a data offset of 32 bytes.
    let whole = edited(&tcp4(), |f| doff(f, 46, 8));
    assert_eq!(forwarded(&whole, &whole), set(&[Class::TcpDataOffset]));
    let first = edited(&whole, |f| {
        put16(f, 20, 0x2000);
        fix_ipv4_checksum(f);
    });
    assert_eq!(forwarded(&first, &first), set(&[]));
    // IPv6: a first fragment with 24 of the segment's 40 bytes.
    let seg = Ipv6Frame::tcp(ROUTER_MAC, EXT_MAC, (C6, 40_000), (VIP6, 443), &[5; 20]);
    let first6 = seg.fragments(24, 7).0.bytes();
    let tcp_at = 14 + 40 + 8;
    assert_eq!(forwarded(&first6, &first6), set(&[]));
    let spilled = edited(&first6, |f| doff(f, tcp_at + 12, 8));
    assert_eq!(forwarded(&spilled, &spilled), set(&[Class::TcpDataOffset]));
}
