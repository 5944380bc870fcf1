//! Where IKE clients stop (`lb-ebpf/src/ike.rs`, `lb_common::ike`): each `IKE_STAGES` counter
//! moves for its stage and for nothing else, and each client entry keeps the last stage seen
//! (what `lb-ctl lookup` prints).

use ikelb_tests::{
    both_families,
    frame::IpFrame,
    packet::{ike_message, non_esp, PROTO_ESP},
    packet6::esp_body,
    xdp::{
        case, forwarded, forwarded_frame, from_backend, now_ticks, persist_entry, raw_to_vip,
        reversed, Expect, Fixture, FixtureFamily, Setup, INT_MAC, PORT_EXT, ROUTER_MAC,
    },
};
use lb_common::{
    counter, event,
    ike::{self, *},
};

use super::{auth, client, ring, sa_init, udp};

both_families!(a_handshake_moves_each_stage_once, Setup::default());

/// IKE_SA_INIT, the backend's response, IKE_AUTH: one count each and the client's stage
/// follows; then ESP (an established client's first packet of a tick) marks it established
/// and counts nothing, as do a NAT keepalive and ESP-in-UDP.
fn a_handshake_moves_each_stage_once<F: FixtureFamily>(lb: &mut Fixture) {
    let c = client::<F>(30);
    let b = ring(lb, c);
    let (spi_i, spi_r) = (0x5152_5354_5556_5758, 0x6162_6364_6566_6768);
    let init = udp(c, 500, 500, &sa_init(spi_i));
    let resp = from_backend(b, 500, c, 500, &ike_message(spi_i, spi_r, 34, 0x20, 300));
    let auth_c = udp(c, 4500, 4500, &non_esp(&auth(spi_i, spi_r)));
    let stage_of = |lb: &mut Fixture, persisted: bool| {
        let flags = if persisted {
            lb.persisted(c.into()).map(|e| e.flags)
        } else {
            lb.probation(c.into()).map(|p| p.flags)
        };
        flags.map(ike::stage)
    };
    #[rustfmt::skip]
    lb.check(&[
        case("IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD).ike(&[(SA_INIT_REQUEST, 1)]),
    ]);
    assert_eq!(stage_of(lb, false), Some(STAGE_SA_INIT_SENT));
    #[rustfmt::skip]
    lb.check(&[
        case("the backend's response", resp.bytes(), Expect::Redirect(reversed(&resp, ROUTER_MAC)), counter::REVERSE).ike(&[(SA_INIT_RESPONSE, 1)]),
    ]);
    assert_eq!(stage_of(lb, false), Some(STAGE_SA_INIT_ANSWERED));
    #[rustfmt::skip]
    lb.check(&[
        case("IKE_AUTH, whole", auth_c.bytes(), Expect::Redirect(forwarded(&auth_c, b)), counter::FORWARD).events(&[(event::PROMOTED, 1)]).ike(&[(AUTH_REQUEST, 1)]),
    ]);
    assert_eq!(
        stage_of(lb, true),
        Some(STAGE_AUTH_SENT),
        "the promotion carries the stage over"
    );
    // ESP counts nothing; the entry, stamped a few ticks ago, learns it at its first packet.
    let mut e = lb.persisted(c.into()).expect("established");
    e.atime = now_ticks().wrapping_sub(3);
    lb.persist(c.into(), e);
    let esp = udp(c, 4500, 4500, &esp_body(0x0a0b_0c0d, 1, 64));
    let keepalive = udp(c, 4500, 4500, &[0xff]);
    let plain = raw_to_vip(c, PROTO_ESP, &esp_body(0x0a0b_0c0e, 1, 64));
    #[rustfmt::skip]
    lb.check(&[
        case("ESP-in-UDP", esp.bytes(), Expect::Redirect(forwarded(&esp, b)), counter::FORWARD).ike(&[]),
        case("a NAT keepalive", keepalive.bytes(), Expect::Redirect(forwarded(&keepalive, b)), counter::FORWARD).ike(&[]),
        case("plain ESP", plain.bytes(), Expect::Redirect(forwarded(&plain, b)), counter::FORWARD).ike(&[]),
    ]);
    // With the slot fast path on, that ESP took it (the IKE_AUTH stamped the slot this tick)
    // and left the entry alone: the slot's first packet of a later tick marks the client.
    let esp_seen = if lb.setup.slot_fast_path {
        STAGE_AUTH_SENT
    } else {
        STAGE_ESP
    };
    assert_eq!(stage_of(lb, true), Some(esp_seen));
    // An established client that connects again (same address): neither its IKE_SA_INIT nor
    // the response is counted or recorded (the reverse path does not read an established
    // client's replies, `lb-ebpf/src/ike.rs`): it keeps the stage its session reached.
    let init2 = udp(c, 500, 500, &sa_init(spi_i + 1));
    let resp2 = from_backend(b, 500, c, 500, &ike_message(spi_i + 1, 0, 34, 0x20, 60));
    #[rustfmt::skip]
    lb.check(&[
        case("IKE_SA_INIT of an established client", init2.bytes(), Expect::Redirect(forwarded(&init2, b)), counter::FORWARD).ike(&[]),
        case("its response (an error: responder SPI 0)", resp2.bytes(), Expect::Redirect(reversed(&resp2, ROUTER_MAC)), counter::REVERSE).ike(&[]),
    ]);
    assert_eq!(stage_of(lb, true), Some(esp_seen));
}

both_families!(ike_auth_in_ip_fragments, Setup::default());

/// An IKE_AUTH whose first IP fragment arrives counts as fragmented and marks its client;
/// the rest of it (a non-first fragment) counts nothing when the client has an entry, and
/// counts `fragments_no_entry` when it has none.
fn ike_auth_in_ip_fragments<F: FixtureFamily>(lb: &mut Fixture) {
    let c = client::<F>(40);
    let b = ring(lb, c);
    let (spi_i, spi_r) = (0x7172_7374_7576_7778, 0x0102_0304_0506_0708);
    let init = udp(c, 500, 500, &sa_init(spi_i));
    let resp = from_backend(b, 500, c, 500, &ike_message(spi_i, spi_r, 34, 0x20, 300));
    let big = udp(
        c,
        4500,
        4500,
        &non_esp(&ike_message(spi_i, spi_r, 35, 0x08, 2000)),
    );
    let (first, rest) = big.split(F::FRAG_LEN);
    let (first_out, rest_out) = forwarded_frame(&big, b, INT_MAC).split(F::FRAG_LEN);
    let stranger = client::<F>(45);
    let (_, lost) = udp(
        stranger,
        4500,
        4500,
        &non_esp(&ike_message(spi_i + 9, spi_r, 35, 0x08, 2000)),
    )
    .split(F::FRAG_LEN);
    let rs = ring(lb, stranger);
    #[rustfmt::skip]
    lb.check(&[
        case("IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD).ike(&[(SA_INIT_REQUEST, 1)]),
        case("the backend's response", resp.bytes(), Expect::Redirect(reversed(&resp, ROUTER_MAC)), counter::REVERSE).ike(&[(SA_INIT_RESPONSE, 1)]),
        case("IKE_AUTH's first fragment", first.bytes(), Expect::Redirect(first_out.bytes()), counter::FORWARD).events(&[(event::PROMOTED, 1)]).ike(&[(AUTH_FRAGMENTED, 1)]),
        case("its second fragment", rest.bytes(), Expect::Redirect(rest_out.bytes()), counter::FORWARD).ike(&[]),
        case("a second fragment of a client without any entry", lost.bytes(), Expect::Redirect(forwarded(&lost, rs)), counter::FORWARD).events(&[]).ike(&[(FRAGMENT_NO_ENTRY, 1)]),
    ]);
    assert_eq!(
        lb.persisted(c.into()).map(|e| ike::stage(e.flags)),
        Some(STAGE_AUTH_FRAGMENTED)
    );
    assert_eq!(
        lb.probation(stranger.into()),
        None,
        "a fragment makes no entry"
    );
}

both_families!(steered_clients_are_counted_by_sa, Setup::default());

/// A client that moved, steered by its IKE SA's SPI and then (from another address) by its
/// ESP SA's: one count under its SA, and the new entry says it was steered.
fn steered_clients_are_counted_by_sa<F: FixtureFamily>(lb: &mut Fixture) {
    let stale = now_ticks().wrapping_sub(5);
    let c = client::<F>(50);
    let b = ring(lb, c);
    let mut e = persist_entry(b, stale, ROUTER_MAC, PORT_EXT);
    e.flags = ike::with_stage(0, STAGE_ESP);
    lb.persist(c.into(), e);
    let (spi_i, spi_r) = (0x1112_1314_1516_1718, 0x2122_2324_2526_2728);
    let esp_spi = 0x3132_3334;
    // Teach the SAs: an IKE message and (its first packet this tick) ESP.
    let info = udp(
        c,
        4500,
        4500,
        &non_esp(&ike_message(spi_i, spi_r, 37, 0x08, 80)),
    );
    let esp = udp(c, 4500, 4500, &esp_body(esp_spi, 1, 64));
    #[rustfmt::skip]
    lb.check(&[
        case("ESP, first of the tick: the SA is learnt", esp.bytes(), Expect::Redirect(forwarded(&esp, b)), counter::FORWARD).ike(&[]),
        case("INFORMATIONAL: the IKE SA is learnt", info.bytes(), Expect::Redirect(forwarded(&info, b)), counter::FORWARD).ike(&[]),
    ]);
    let away: Vec<F> = (51..)
        .map(client::<F>)
        .filter(|&m| ring(lb, m) != b)
        .take(2)
        .collect();
    let (moved, again) = (away[0], away[1]);
    let update = udp(
        moved,
        4500,
        4500,
        &non_esp(&ike_message(spi_i, spi_r, 37, 0x08, 80)),
    );
    let esp2 = udp(again, 4500, 4500, &esp_body(esp_spi, 2, 64));
    #[rustfmt::skip]
    lb.check(&[
        case("its IKE SA from a new address", update.bytes(), Expect::Redirect(forwarded(&update, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1), (event::SA_STEERED, 1)]).ike(&[(STEERED_IKE, 1)]),
        case("its ESP SA from another", esp2.bytes(), Expect::Redirect(forwarded(&esp2, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1), (event::SA_STEERED, 1)]).ike(&[(STEERED_ESP, 1)]),
    ]);
    for (a, stage) in [(moved, STAGE_NONE), (again, STAGE_ESP)] {
        let p = lb.probation(a.into()).expect("a probation entry");
        assert_ne!(p.flags & CLIENT_F_STEERED, 0, "marked steered");
        assert_eq!(ike::stage(p.flags), stage);
    }
}
