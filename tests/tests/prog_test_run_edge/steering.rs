//! SA steering (`lb-ebpf/src/steer.rs`): a client that moved to an address without any entry
//! (MOBIKE, a NAT rebinding) follows its established IKE or ESP SA to that SA's backend, with
//! a probation entry for the new address; nothing moves a client that has an entry, a new
//! session (IKE_SA_INIT) follows the ring, and a NAT keepalive pins nothing.

use ikelb_tests::{
    both_families,
    packet::{ike_message, non_esp, IpFrame, PROTO_ESP},
    packet6::esp_body,
    xdp::{
        case, forwarded, from_backend, now_ticks, persist_entry, raw_to_vip, reversed, Expect,
        Fixture, FixtureFamily, Setup, PORT_EXT, ROUTER_MAC,
    },
};
use lb_common::{counter, event};

use super::{auth, client, ring, sa_init, udp};

/// An address of the family whose ring slot names another backend than `b`.
fn elsewhere<F: FixtureFamily>(lb: &mut Fixture, b: u32, from: u16) -> F {
    (from..)
        .map(client::<F>)
        .find(|&c| ring(lb, c) != b)
        .expect("a client on another backend")
}

/// An IKE INFORMATIONAL request (exchange 37) on 4500, as MOBIKE's UPDATE_SA_ADDRESSES.
fn informational<F: FixtureFamily>(c: F, spi_i: u64, spi_r: u64) -> F::Frame {
    udp(
        c,
        4500,
        4500,
        &non_esp(&ike_message(spi_i, spi_r, 37, 0x08, 80)),
    )
}

both_families!(a_moved_client_follows_its_ike_sa, Setup::default());

/// A client established through IKE (IKE_SA_INIT, the backend's response, IKE_AUTH echoing
/// it) moves: its next IKE message, from a new address whose ring slot names another backend,
/// goes to its SA's backend, the new address gets a probation entry there, and the backend's
/// replies reach it. A client with an entry of its own that sends the same SPIs stays where it
/// is; an IKE_SA_INIT with the SA's initiator SPI is a new session and follows the ring.
fn a_moved_client_follows_its_ike_sa<F: FixtureFamily>(lb: &mut Fixture) {
    let c = client::<F>(120);
    let b = ring(lb, c);
    let (spi_i, spi_r) = (0x3132_3334_3536_3738, 0x4142_4344_4546_4748);
    let init = udp(c, 500, 500, &sa_init(spi_i));
    let resp = from_backend(b, 500, c, 500, &ike_message(spi_i, spi_r, 34, 0x20, 300));
    let auth_c = udp(c, 4500, 4500, &non_esp(&auth(spi_i, spi_r)));
    #[rustfmt::skip]
    lb.check(&[
        case("IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("the backend's response", resp.bytes(), Expect::Redirect(reversed(&resp, ROUTER_MAC)), counter::REVERSE).events(&[]),
        case("IKE_AUTH echoing it: established", auth_c.bytes(), Expect::Redirect(forwarded(&auth_c, b)), counter::FORWARD).events(&[(event::PROMOTED, 1)]),
    ]);
    let moved = elsewhere::<F>(lb, b, 121);
    let update = informational(moved, spi_i, spi_r);
    let reply = from_backend(
        b,
        4500,
        moved,
        4500,
        &non_esp(&ike_message(spi_i, spi_r, 37, 0x20, 80)),
    );
    #[rustfmt::skip]
    lb.check(&[
        case("the SA's next message from a new address: its backend", update.bytes(), Expect::Redirect(forwarded(&update, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1), (event::SA_STEERED, 1)]),
        case("the backend's reply to the new address", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE).events(&[]),
    ]);
    assert_eq!(
        lb.probation(moved.into()).map(|p| p.backend),
        Some(b),
        "the new address is on probation on the SA's backend"
    );
    // A client with an entry of its own, on another backend, sending the SA's SPIs.
    let other = elsewhere::<F>(lb, b, 140);
    let theirs = ring(lb, other);
    lb.persist(
        other.into(),
        persist_entry(theirs, now_ticks(), ROUTER_MAC, PORT_EXT),
    );
    let spoofed = informational(other, spi_i, spi_r);
    // A new session that happens to reuse the initiator SPI, from another new address.
    let fresh = elsewhere::<F>(lb, b, 160);
    let new_init = udp(fresh, 500, 500, &sa_init(spi_i));
    let fresh_ring = ring(lb, fresh);
    #[rustfmt::skip]
    lb.check(&[
        case("the SA's SPIs from a client with an entry: it stays", spoofed.bytes(), Expect::Redirect(forwarded(&spoofed, theirs)), counter::FORWARD).events(&[]),
        case("an IKE_SA_INIT with the SA's initiator SPI: the ring", new_init.bytes(), Expect::Redirect(forwarded(&new_init, fresh_ring)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
    ]);
    assert_eq!(lb.persisted(other.into()).map(|e| e.backend), Some(theirs));
}

both_families!(a_rebound_client_follows_its_esp_sa, Setup::default());

/// Established clients' ESP (plain and in UDP) teaches the data path their inbound SAs, once
/// a tick each; after a NAT rebinding a client's ESP from its new address follows them. An
/// SPI nobody established follows the ring (`lost`), and a NAT keepalive from a new address
/// goes by the ring without an entry, so that the client's next ESP is still steered.
fn a_rebound_client_follows_its_esp_sa<F: FixtureFamily>(lb: &mut Fixture) {
    let stale = now_ticks().wrapping_sub(5);
    let (c, d) = (client::<F>(180), client::<F>(185));
    let (bc, bd) = (ring(lb, c), ring(lb, d));
    lb.persist(c.into(), persist_entry(bc, stale, ROUTER_MAC, PORT_EXT));
    lb.persist(d.into(), persist_entry(bd, stale, ROUTER_MAC, PORT_EXT));
    let esp = raw_to_vip(c, PROTO_ESP, &esp_body(0x0102_0304, 7, 64));
    let esp_udp = udp(d, 4500, 4500, &esp_body(0x0506_0708, 9, 64));
    #[rustfmt::skip]
    lb.check(&[
        case("ESP of an established client (its first packet this tick)", esp.bytes(), Expect::Redirect(forwarded(&esp, bc)), counter::FORWARD).events(&[]),
        case("ESP-in-UDP of another", esp_udp.bytes(), Expect::Redirect(forwarded(&esp_udp, bd)), counter::FORWARD).events(&[]),
    ]);
    let (n1, n2, n3) = (
        elsewhere::<F>(lb, bd, 200),
        elsewhere::<F>(lb, bc, 220),
        client::<F>(240),
    );
    let keepalive = udp(n1, 4500, 4500, &[0xff]);
    let after = udp(n1, 4500, 4500, &esp_body(0x0506_0708, 10, 64));
    let again = udp(n1, 4500, 4500, &esp_body(0x0506_0708, 11, 64));
    let third = udp(n1, 4500, 4500, &esp_body(0x0506_0708, 12, 64));
    let plain = raw_to_vip(n2, PROTO_ESP, &esp_body(0x0102_0304, 8, 64));
    let unknown = raw_to_vip(n3, PROTO_ESP, &esp_body(0x0909_0909, 1, 64));
    let (r1, r3) = (ring(lb, n1), ring(lb, n3));
    let reply = from_backend(bd, 4500, n1, 4500, &esp_body(0x7777_0001, 3, 64));
    #[rustfmt::skip]
    lb.check(&[
        case("a NAT keepalive from a new address: the ring, no entry", keepalive.bytes(), Expect::Redirect(forwarded(&keepalive, r1)), counter::FORWARD).events(&[]),
        case("then its ESP-in-UDP: the SA's backend", after.bytes(), Expect::Redirect(forwarded(&after, bd)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1), (event::SA_STEERED, 1)]),
        // The entry's refresh stamps its slot; the steering flagged the slot, so the next
        // packet takes no fast path to the ring's backend.
        case("its next ESP-in-UDP: the SA's backend again", again.bytes(), Expect::Redirect(forwarded(&again, bd)), counter::FORWARD).events(&[]),
        case("and the next, in a stamped slot", third.bytes(), Expect::Redirect(forwarded(&third, bd)), counter::FORWARD).events(&[]),
        case("the backend's ESP to the new address", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE).events(&[]),
        case("plain ESP of the other SA from another new address: its backend", plain.bytes(), Expect::Redirect(forwarded(&plain, bc)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1), (event::SA_STEERED, 1)]),
        case("ESP of an SA nobody established: the ring", unknown.bytes(), Expect::Redirect(forwarded(&unknown, r3)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
    ]);
    // That entry is the ring's guess: a packet of a known SA from the address corrects it
    // (a client whose first packet after the move was of an SA not learned yet). An entry
    // that is no guess — steered, or confirmed by its backend's proof — is never moved.
    assert_eq!(
        lb.probation(n3.into())
            .map(|p| p.flags & lb_common::PROBATION_F_GUESS),
        Some(lb_common::PROBATION_F_GUESS)
    );
    let known = raw_to_vip(n3, PROTO_ESP, &esp_body(0x0102_0304, 9, 64));
    let other_sa = raw_to_vip(n2, PROTO_ESP, &esp_body(0x0506_0708, 11, 64));
    let n4 = elsewhere::<F>(lb, bc, 100);
    let r4 = ring(lb, n4);
    let guess = raw_to_vip(n4, PROTO_ESP, &esp_body(0x0a0a_0a0a, 1, 64));
    let proof = from_backend(
        r4,
        4500,
        n4,
        4500,
        &non_esp(&ike_message(5, 6, 37, 0x20, 60)),
    );
    let late = raw_to_vip(n4, PROTO_ESP, &esp_body(0x0102_0304, 10, 64));
    #[rustfmt::skip]
    lb.check(&[
        case("a known SA from the guessed address: corrected to its backend", known.bytes(), Expect::Redirect(forwarded(&known, bc)), counter::FORWARD).events(&[(event::SA_STEERED, 1)]),
        case("another SA from a steered address: it stays", other_sa.bytes(), Expect::Redirect(forwarded(&other_sa, bc)), counter::FORWARD).events(&[]),
        case("an unknown SA from a fourth address: the ring's guess", guess.bytes(), Expect::Redirect(forwarded(&guess, r4)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
        case("its backend's IKE reply carries a proof: confirmed", proof.bytes(), Expect::Redirect(reversed(&proof, ROUTER_MAC)), counter::REVERSE).events(&[]),
        case("then a known SA from it: it stays", late.bytes(), Expect::Redirect(forwarded(&late, r4)), counter::FORWARD).events(&[]),
    ]);
    // No guess any more (the rest of the flags byte is the IKE stage: `ike_stages`); the
    // corrected entry says it was steered.
    let no_guess = |p: lb_common::ProbationValue| {
        let steered = p.flags & lb_common::ike::CLIENT_F_STEERED != 0;
        (p.backend, p.flags & lb_common::PROBATION_F_GUESS, steered)
    };
    assert_eq!(lb.probation(n3.into()).map(no_guess), Some((bc, 0, true)));
    assert_eq!(lb.probation(n4.into()).map(no_guess), Some((r4, 0, false)));
}

both_families!(
    without_sa_steering_a_moved_client_follows_the_ring,
    Setup {
        sa_steering: false,
        ..Setup::default()
    }
);

/// The control: with `SA_STEERING` off, the same moved client's message follows the ring to
/// a backend that knows nothing of its SA (`lost`).
fn without_sa_steering_a_moved_client_follows_the_ring<F: FixtureFamily>(lb: &mut Fixture) {
    let c = client::<F>(120);
    let b = ring(lb, c);
    let (spi_i, spi_r) = (0x3132_3334_3536_3738, 0x4142_4344_4546_4748);
    let init = udp(c, 500, 500, &sa_init(spi_i));
    let resp = from_backend(b, 500, c, 500, &ike_message(spi_i, spi_r, 34, 0x20, 300));
    let auth_c = udp(c, 4500, 4500, &non_esp(&auth(spi_i, spi_r)));
    let moved = elsewhere::<F>(lb, b, 121);
    let update = informational(moved, spi_i, spi_r);
    let r = ring(lb, moved);
    #[rustfmt::skip]
    lb.check(&[
        case("IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("the backend's response", resp.bytes(), Expect::Redirect(reversed(&resp, ROUTER_MAC)), counter::REVERSE).events(&[]),
        case("IKE_AUTH echoing it: established", auth_c.bytes(), Expect::Redirect(forwarded(&auth_c, b)), counter::FORWARD).events(&[(event::PROMOTED, 1)]),
        case("the SA's next message from a new address: the ring", update.bytes(), Expect::Redirect(forwarded(&update, r)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1), (event::LOST, 1)]),
    ]);
}
