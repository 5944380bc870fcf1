//! Ingress roles and RFC 1858.

use std::net::{Ipv4Addr, Ipv6Addr};

use ikelb_tests::{
    both_families,
    packet::{IpFrame, PROTO_TCP, PROTO_UDP},
    xdp::{case, forwarded, raw_to_vip, Expect, Fixture, FixtureFamily, Setup, Side, EXT_MAC},
};
use lb_common::{counter, event};

use super::{client, data, ring, sa_init, udp, EdgeFamily};

both_families!(
    vip_traffic_only_on_a_clients_interface_checked_first,
    Setup::default()
);

fn vip_traffic_only_on_a_clients_interface_checked_first<F: EdgeFamily>(lb: &mut Fixture) {
    let c = client::<F>(1);
    let b = ring(lb, c);
    let init = udp(c, 500, 500, &sa_init(1));
    let not_vip = F::Frame::udp(
        ikelb_tests::xdp::ROUTER_MAC,
        EXT_MAC,
        (c, 500),
        (F::in_vip_net(11), 500),
        &data(20),
    );
    #[rustfmt::skip]
    let rows: Vec<_> = [
        case("IKE to the VIP on the backends' interface", init.bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int).events(&[]),
        case("TTL 1 to the VIP on int (role first)", init.clone().with_hops(1).bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int).events(&[]),
        case("UDP 53 to the VIP on int (role first)", udp(c, 5000, 53, &data(20)).bytes(), Expect::Drop, counter::DROP_NOT_CLIENT_IFACE).on(Side::Int),
    ].into_iter().chain(F::role_rows(c, &init)).chain([
        case("not to a VIP, on int", not_vip.bytes(), Expect::Pass, counter::PASS_NOT_VIP).on(Side::Int),
    ]).collect();
    lb.check(&rows);
    assert_eq!(
        (lb.persisted(c.into()), lb.probation(c.into())),
        (None, None)
    );
    #[rustfmt::skip]
    lb.check(&[case("the same IKE on ext", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD)
        .events(&[(event::PROBATION_INSERT, 1)])]);
}

/// A last fragment of `client` to the VIP, `len` bytes of protocol `proto` at `offset`.
fn fragment<F: FixtureFamily>(client: F, proto: u8, offset: u16, len: usize) -> F::Frame {
    raw_to_vip(client, proto, &data(len)).last_fragment_at(offset)
}

/// RFC 1858 §3.2: an IPv4 TCP fragment at offset 8 bytes can only serve to overwrite the first
/// fragment's flags; no sender makes one.
#[test]
fn tcp_fragment_at_offset_1_is_dropped() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = client::<Ipv4Addr>(2);
        let b = ring(lb, c);
        let t1 = fragment(c, PROTO_TCP, 1, 24);
        let t2 = fragment(c, PROTO_TCP, 2, 24);
        let u1 = fragment(c, PROTO_UDP, 1, 24);
        #[rustfmt::skip]
        let rows = [
            case("TCP fragment at offset 1 (8 bytes)", t1.bytes(), Expect::Drop, counter::DROP_FRAGMENT_OFFSET).events(&[]),
            case("TCP fragment at offset 2", t2.bytes(), Expect::Redirect(forwarded(&t2, b)), counter::FORWARD).events(&[]),
            case("UDP fragment at offset 1", u1.bytes(), Expect::Redirect(forwarded(&u1, b)), counter::FORWARD).events(&[]),
        ];
        lb.check(&rows);
    });
}

/// IPv6 non-first fragments at offsets 1 and 2 are forwarded like any other.
#[test]
fn ipv6_non_first_fragments_at_small_offsets() {
    Fixture::both_fast_paths(Setup::default(), |lb| {
        let c = client::<Ipv6Addr>(2);
        let b = ring(lb, c);
        let t1 = fragment(c, PROTO_TCP, 1, 24);
        let t2 = fragment(c, PROTO_TCP, 2, 24);
        let u1 = fragment(c, PROTO_UDP, 1, 24);
        // No RFC 1858 rule for IPv6, by decision (`docs/security.md`, "Fragments"): RFC 5722
        // makes receivers drop overlapping fragments, so an offset-1 TCP fragment cannot
        // rewrite the first one's flags at the backend; it is steered like any other.
        #[rustfmt::skip]
        let rows = [
            case("IPv6 TCP fragment at offset 1: steered (RFC 5722, no overlap at the backend)", t1.bytes(), Expect::Redirect(forwarded(&t1, b)), counter::FORWARD),
            case("IPv6 TCP fragment at offset 2", t2.bytes(), Expect::Redirect(forwarded(&t2, b)), counter::FORWARD),
            case("IPv6 UDP fragment at offset 1", u1.bytes(), Expect::Redirect(forwarded(&u1, b)), counter::FORWARD),
        ];
        lb.check(&rows);
    });
}
