//! MAC and port moves need FIB evidence; the reverse path's checks and stateless replies.

use ikelb_tests::{
    both_families,
    packet::{ike_message, ike_proof, non_esp, IpFrame, PROTO_ESP, PROTO_UDP},
    packet6::esp_body,
    xdp::{
        backend_mac, case, forwarded, from_backend, mac_str, now_ticks, persist_entry,
        probation_entry, raw_from_backend, reversed, ticks_ago, Expect, Fixture, FixtureFamily,
        Setup, Side, EXT_MAC, INT_MAC, PORT_EXT, PORT_INT, ROUTER_MAC,
    },
};
use lb_common::{counter, event};

use super::{auth, client, data, ring, udp, unrouted, IDLE_TIMEOUT, ROUTER2_MAC, STRANGER_MAC};

both_families!(mac_and_port_moves_need_fib_evidence, Setup::default());

fn mac_and_port_moves_need_fib_evidence<F: FixtureFamily>(lb: &mut Fixture) {
    let now = now_ticks();
    let (ca, cb, cc, cd) = (
        client::<F>(70),
        client::<F>(71),
        client::<F>(72),
        unrouted::<F>(1),
    );
    let (ra, rb, rc, rd) = (ring(lb, ca), ring(lb, cb), ring(lb, cc), ring(lb, cd));
    lb.persist(ca.into(), persist_entry(ra, now, ROUTER_MAC, PORT_EXT));
    lb.set_probation(cb.into(), probation_entry(rb, now, ROUTER_MAC, PORT_EXT, 0));
    // Recorded on the internal port: its next frame from the router on ext is a move.
    lb.persist(cc.into(), persist_entry(rc, now, ROUTER_MAC, PORT_INT));
    lb.persist(cd.into(), persist_entry(rd, now, ROUTER_MAC, PORT_EXT));
    let via2 = |c: F| udp(c, 500, 500, &auth(1, 2)).with_macs(ROUTER2_MAC, EXT_MAC);
    let (a2, b2, d2) = (via2(ca), via2(cb), via2(cd));
    let c1 = udp(cc, 500, 500, &auth(1, 2));
    let reply_a = from_backend(ra, 500, ca, 500, &data(40));
    #[rustfmt::skip]
    lb.check(&[
        case("persisted client from another MAC, FIB disagrees", a2.bytes(), Expect::Redirect(forwarded(&a2, ra)), counter::FORWARD).events(&[(event::MAC_MOVE_REJECTED, 1)]),
        case("reply still to the recorded MAC", reply_a.bytes(), Expect::Redirect(reversed(&reply_a, ROUTER_MAC)), counter::REVERSE),
        case("probation client from another MAC, FIB disagrees", b2.bytes(), Expect::Redirect(forwarded(&b2, rb)), counter::FORWARD).events(&[(event::MAC_MOVE_REJECTED, 1)]),
        case("client on another port, FIB agrees", c1.bytes(), Expect::Redirect(forwarded(&c1, rc)), counter::FORWARD).events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
        case("client without a route from another MAC", d2.bytes(), Expect::Redirect(forwarded(&d2, rd)), counter::FORWARD).events(&[(event::MAC_MOVE_REJECTED, 1)]),
    ]);
    let mac_port = |lb: &mut Fixture, c: F| lb.persisted(c.into()).map(|e| (e.client_mac, e.port));
    assert_eq!(mac_port(lb, ca), Some((ROUTER_MAC, 0)));
    assert_eq!(
        lb.probation(cb.into()).map(|e| (e.client_mac, e.port)),
        Some((ROUTER_MAC, 0))
    );
    assert_eq!(
        mac_port(lb, cc),
        Some((ROUTER_MAC, PORT_EXT as u8)),
        "port learned"
    );
    assert_eq!(mac_port(lb, cd), Some((ROUTER_MAC, 0)));
    // The router's address moves to router 2's MAC: now the FIB agrees.
    let (r, m) = (F::ROUTER.to_string(), mac_str(ROUTER2_MAC));
    #[rustfmt::skip]
    lb.net.ip(&["neigh", "replace", &r, "lladdr", &m, "nud", "permanent", "dev", "ext"]);
    #[rustfmt::skip]
    lb.check(&[
        case("persisted client from another MAC, FIB agrees", a2.bytes(), Expect::Redirect(forwarded(&a2, ra)), counter::FORWARD).events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
        case("reply to the new MAC", reply_a.bytes(), Expect::Redirect(reversed(&reply_a, ROUTER2_MAC)), counter::REVERSE),
        case("probation client from another MAC, FIB agrees", b2.bytes(), Expect::Redirect(forwarded(&b2, rb)), counter::FORWARD).events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
    ]);
    assert_eq!(mac_port(lb, ca), Some((ROUTER2_MAC, 0)));
    assert_eq!(
        lb.probation(cb.into()).map(|e| e.client_mac),
        Some(ROUTER2_MAC)
    );
}

both_families!(
    reverse_path_checks_and_stateless_replies,
    Setup {
        persist_timeout_ticks: IDLE_TIMEOUT,
        ..Setup::default()
    }
);

fn reverse_path_checks_and_stateless_replies<F: FixtureFamily>(lb: &mut Fixture) {
    let idle = ticks_ago(IDLE_TIMEOUT + 2);
    let now = now_ticks();
    // Entries of each kind, on backend `b` of each client's ring slot unless said.
    let [cp, cq, ci, cj, co, ck] = [80, 81, 82, 83, 84, 85].map(client::<F>);
    let bp = ring(lb, cp);
    lb.persist(cp.into(), persist_entry(bp, now, ROUTER2_MAC, PORT_EXT));
    let bq = ring(lb, cq);
    lb.set_probation(
        cq.into(),
        probation_entry(bq, now, ROUTER2_MAC, PORT_EXT, 0),
    );
    let bi = ring(lb, ci);
    lb.persist(ci.into(), persist_entry(bi, idle, ROUTER_MAC, PORT_EXT));
    let bj = ring(lb, cj);
    lb.set_probation(
        cj.into(),
        probation_entry(bj, idle, ROUTER_MAC, PORT_EXT, 0),
    );
    let bo = ring(lb, co);
    lb.persist(
        co.into(),
        persist_entry(F::other_backend(bo), now, ROUTER_MAC, PORT_EXT),
    );
    let bk = ring(lb, ck);
    let ok = F::other_backend(bk);
    lb.set_probation(ck.into(), probation_entry(ok, now, ROUTER_MAC, PORT_EXT, 0));
    // No entry at all: one routed, one not, one whose slot names another backend.
    let cs = client::<F>(86);
    let bs = ring(lb, cs);
    let cn = unrouted::<F>(2);
    let bn = ring(lb, cn);
    let cx = client::<F>(87);
    let bx = F::other_backend(ring(lb, cx));

    let r = |id, c| from_backend(id, 4500, c, 4500, &data(60));
    let (fp, fq, fi, fj, fo, fk) = (
        r(bp, cp),
        r(bq, cq),
        r(bi, ci),
        r(bj, cj),
        r(bo, co),
        r(bk, ck),
    );
    let (fs, fnr, fx) = (r(bs, cs), r(bn, cn), r(bx, cx));
    // The gateway's own addresses on the backends' side and the clients' (its probes of a
    // backend's service port get answers like these).
    let ids = F::BACKEND_IDS;
    let to_gw = r(ids[0], F::OWN_INT);
    let to_gw_ext = r(ids[1], F::OWN_EXT);
    let ssh_ext = F::Frame::udp(
        backend_mac(bp),
        EXT_MAC,
        (F::backend(bp), 22),
        (cp, 40_000),
        &data(20),
    );
    let wrong_if = r(bp, cp).with_macs(backend_mac(bp), EXT_MAC);
    let wrong_mac = r(bp, cp).with_macs(STRANGER_MAC, INT_MAC);
    let esp_s = raw_from_backend(bs, cs, PROTO_ESP, &esp_body(3, 1, 40));
    let frag_x = raw_from_backend(bx, cx, PROTO_UDP, &data(40)).last_fragment_at(185);
    let frag_s = raw_from_backend(bs, cs, PROTO_UDP, &data(40)).last_fragment_at(185);
    let rev = |f: &F::Frame, mac| Expect::Redirect(reversed(f, mac));
    #[rustfmt::skip]
    let rows = vec![
        case("not in the group, on the wrong interface: not ours", ssh_ext.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT).on(Side::Ext),
        case("backend address on the clients' interface", wrong_if.bytes(), Expect::Drop, counter::DROP_REVERSE_WRONG_IFACE).on(Side::Ext).events(&[]),
        case("backend address from another MAC", wrong_mac.bytes(), Expect::Drop, counter::DROP_REVERSE_WRONG_MAC).events(&[]),
        case("established client: MAC from the entry", fp.bytes(), rev(&fp, ROUTER2_MAC), counter::REVERSE).events(&[]),
        case("probation client: MAC from the entry", fq.bytes(), rev(&fq, ROUTER2_MAC), counter::REVERSE).events(&[]),
        case("idle established entry", fi.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
        case("idle probation entry", fj.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
        case("established on another backend", fo.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
        case("on probation on another backend", fk.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
        case("no entry, ring names this backend: FIB route", fs.bytes(), rev(&fs, ROUTER_MAC), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
        case("no entry, ESP, ring names this backend", esp_s.bytes(), rev(&esp_s, ROUTER_MAC), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
        case("no entry, non-first fragment, ring names this backend", frag_s.bytes(), rev(&frag_s, ROUTER_MAC), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
        case("no entry, no route to the client", fnr.bytes(), Expect::Drop, counter::DROP_NO_ROUTE).events(&[]),
        case("to the gateway's own internal address: the kernel's", to_gw.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT).events(&[]),
        case("to the gateway's own external address: the kernel's", to_gw_ext.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT).events(&[]),
        case("no entry, ring names another backend", fx.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT).events(&[]),
        case("no entry, non-first fragment, ring names another backend", frag_x.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
    ];
    lb.check(&rows);
    assert_eq!(
        (lb.persisted(cs.into()), lb.probation(cs.into())),
        (None, None),
        "a stateless reply creates no entry"
    );
}

both_families!(
    a_shared_probation_entry_is_answered_by_the_fib_and_promoted_by_its_proof,
    Setup::default()
);

/// A probation entry another cluster node shared (`PORT_SHARED`, no MAC, no proof: the node
/// that forwarded the client never saw its backend's replies, which all come through the
/// backends' gateway, `docs/cluster.md`, "Shared persistence") holds the client on its backend
/// where the ring names another: the backend's replies go where the FIB routes them and record
/// their proof, another backend's are refused, the client's first frame here teaches the entry
/// its MAC and port, and its frame echoing the proof establishes it, as on any node.
fn a_shared_probation_entry_is_answered_by_the_fib_and_promoted_by_its_proof<F: FixtureFamily>(
    lb: &mut Fixture,
) {
    let now = now_ticks();
    let c = client::<F>(91);
    let theirs = F::other_backend(ring(lb, c));
    let shared = probation_entry(theirs, now, [0; 6], u32::from(lb_common::PORT_SHARED), 0);
    lb.set_probation(c.into(), shared);
    let (spi_i, spi_r) = (0x1112_1314_1516_1718, 0x2122_2324_2526_2728);
    let response = non_esp(&ike_message(spi_i, spi_r, 35, 0x20, 400));
    let reply = from_backend(theirs, 4500, c, 4500, &response);
    let ring_reply = from_backend(ring(lb, c), 4500, c, 4500, &data(60));
    let first = udp(c, 4500, 4500, &data(80));
    let echo = udp(c, 4500, 4500, &non_esp(&auth(spi_i, spi_r)));
    #[rustfmt::skip]
    lb.check(&[
        case("shared probation entry, the ring's backend replies: refused", ring_reply.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT).events(&[]),
        case("shared probation entry, its backend's reply: FIB route", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
    ]);
    assert_eq!(
        lb.probation(c.into()).map(|p| (p.backend, p.proof, p.port)),
        Some((theirs, ike_proof(spi_r), lb_common::PORT_SHARED)),
        "the reply's proof is recorded, the entry still shared"
    );
    #[rustfmt::skip]
    lb.check(&[
        case("the client's first frame here: the shared backend, MAC learned", first.bytes(), Expect::Redirect(forwarded(&first, theirs)), counter::FORWARD).events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
        case("its frame echoing the proof: established", echo.bytes(), Expect::Redirect(forwarded(&echo, theirs)), counter::FORWARD).events(&[(event::PROMOTED, 1)]),
        case("then replies by the entry", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE).events(&[]),
    ]);
    assert_eq!(
        lb.persisted(c.into())
            .map(|e| (e.backend, e.client_mac, e.port)),
        Some((theirs, ROUTER_MAC, PORT_EXT as u8)),
        "established on the shared backend, where the client is"
    );
}

both_families!(
    a_shared_entry_is_answered_by_the_fib_until_the_client_comes,
    Setup::default()
);

/// An entry another cluster node shared (`lb_common::PORT_SHARED`: the daemon writes it with
/// no MAC, `docs/cluster.md`, "Shared persistence") holds its client on its backend even where
/// the ring names another one: the backend's replies go where the FIB routes them, another
/// backend's are refused, and the client's first frame here is forwarded to the entry's
/// backend and teaches the entry its MAC and port (the FIB agrees), after which replies leave
/// by the entry as for any client.
fn a_shared_entry_is_answered_by_the_fib_until_the_client_comes<F: FixtureFamily>(
    lb: &mut Fixture,
) {
    let now = now_ticks();
    let c = client::<F>(90);
    let theirs = F::other_backend(ring(lb, c));
    lb.persist(
        c.into(),
        persist_entry(theirs, now, [0; 6], u32::from(lb_common::PORT_SHARED)),
    );
    let reply = from_backend(theirs, 4500, c, 4500, &data(60));
    let ring_reply = from_backend(ring(lb, c), 4500, c, 4500, &data(60));
    let first = udp(c, 4500, 4500, &data(80));
    #[rustfmt::skip]
    lb.check(&[
        case("shared entry, its backend's reply: FIB route", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE).events(&[(event::REVERSE_STATELESS, 1)]),
        case("shared entry, the ring's backend replies: refused", ring_reply.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT).events(&[]),
        case("the client's first frame here: the shared backend, MAC learned", first.bytes(), Expect::Redirect(forwarded(&first, theirs)), counter::FORWARD).events(&[(event::MAC_MOVE_ACCEPTED, 1)]),
        case("then replies by the entry", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE).events(&[]),
    ]);
    assert_eq!(
        lb.persisted(c.into())
            .map(|e| (e.backend, e.client_mac, e.port)),
        Some((theirs, ROUTER_MAC, PORT_EXT as u8)),
        "the entry learned where the client is"
    );
}
