//! ICMP "too big" (IPv4 fragmentation needed, ICMPv6 packet too big) about a client's flow
//! goes to the client's backend, with every checksum right; other ICMP errors do not.

use ikelb_tests::{
    both_families,
    frame::too_big_of,
    packet::{IpFrame, TcpFlags, PROTO_ESP},
    packet6::esp_body,
    xdp::{
        backend_mac, case, now_ticks, persist_entry, probation_entry, Expect, Fixture, Setup,
        EXT_MAC, INT_MAC, PORT_EXT, ROUTER_MAC,
    },
};
use lb_common::counter;

use super::{client, data, ring, EdgeFamily};

/// The MTU the routers on the clients' path announce.
const MTU: u16 = 1400;

both_families!(too_big_goes_to_the_clients_backend, Setup::default());

fn too_big_goes_to_the_clients_backend<F: EdgeFamily>(lb: &mut Fixture) {
    // A router on the clients' path (the source of the errors).
    let router = F::client(1);
    let now = now_ticks();
    let (ca, cb, cc) = (client::<F>(110), client::<F>(111), client::<F>(112));
    let pa = F::other_backend(ring(lb, ca));
    lb.persist(ca.into(), persist_entry(pa, now, ROUTER_MAC, PORT_EXT));
    lb.mark_changed(ca.into());
    let pb = F::other_backend(ring(lb, cb));
    lb.set_probation(cb.into(), probation_entry(pb, now, ROUTER_MAC, PORT_EXT, 0));
    lb.mark_changed(cb.into());
    let rc = ring(lb, cc);
    // The packets the VIP sent (the backends' replies after SNAT), as quoted.
    let out_udp = |c: F, sport: u16| {
        F::Frame::udp(
            EXT_MAC,
            ROUTER_MAC,
            (F::VIP, sport),
            (c, sport),
            &data(1400),
        )
        .with_hops(63)
    };
    let out_tcp = |c: F| {
        let flags = TcpFlags {
            ack: true,
            psh: true,
            ..Default::default()
        };
        let (from, to) = ((F::VIP, 443), (c, 50_000));
        F::Frame::tcp_segment(EXT_MAC, ROUTER_MAC, from, to, 7, 8, flags, &data(1400)).with_hops(63)
    };
    let out_esp = |c: F| {
        F::Frame::raw(
            EXT_MAC,
            ROUTER_MAC,
            F::VIP,
            c,
            PROTO_ESP,
            &esp_body(9, 9, 1400),
        )
        .with_hops(63)
    };
    let icmp = |q: &F::Frame| too_big_of(ROUTER_MAC, EXT_MAC, router, F::VIP, q, 8, MTU);
    // What a correct rewrite makes of it: the quoted packet as backend `id` sent it (every
    // checksum from scratch), the ICMP to that backend.
    let want = |q: &F::Frame, id: u32| {
        let (_, dst) = q.addrs();
        let inner = q.readdressed(F::backend(id), dst);
        let mac = backend_mac(id);
        let out: F::Frame = too_big_of(INT_MAC, mac, router, F::backend(id), &inner, 8, MTU);
        Expect::Redirect(out.with_hops(63).bytes())
    };
    let qa = out_udp(ca, 4500);
    let qa0 = out_udp(ca, 4500).with_udp_checksum(0);
    let qb = out_udp(cb, 500);
    let qc = out_udp(cc, 4500);
    let qt = out_tcp(ca);
    let qe = out_esp(cb);
    let not_vip = F::Frame::udp(
        EXT_MAC,
        ROUTER_MAC,
        (F::in_vip_net(99), 4500),
        (ca, 4500),
        &data(100),
    );
    let other_port = out_udp(ca, 53);
    let fwd = counter::FORWARD_ICMP;
    #[rustfmt::skip]
    let rows: Vec<_> = [
        case("too big about an established client's UDP", icmp(&qa).bytes(), want(&qa, pa), fwd),
        case("… quoted UDP checksum 0 stays 0", icmp(&qa0).bytes(), want(&qa0, pa), fwd),
        case("… TCP 443 (checksum not in the 8 quoted bytes)", icmp(&qt).bytes(), want(&qt, pa), fwd),
        case("about a probation client", icmp(&qb).bytes(), want(&qb, pb), fwd),
        case("about a probation client's ESP", icmp(&qe).bytes(), want(&qe, pb), fwd),
        case("about a client without an entry: the ring", icmp(&qc).bytes(), want(&qc, rc), fwd),
        case("quoted source not the VIP", icmp(&not_vip).bytes(), Expect::Pass, F::PASS_ICMP),
        case("quoted source port not in the group", icmp(&other_port).bytes(), Expect::Pass, F::PASS_ICMP),
    ].into_iter().chain(F::other_icmp_errors(router, &qa).into_iter().map(|(name, f)| {
        case(name, f.bytes(), Expect::Pass, F::PASS_ICMP)
    })).collect();
    lb.check(&rows);
}
