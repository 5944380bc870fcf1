//! Proof and promotion: a client is established only when it echoes what its backend's reply
//! carried (IKE responder SPI, TCP ISN + 1), as the reverse path recorded it.

use ikelb_tests::{
    both_families,
    packet::{ike_message, ike_proof, non_esp, tcp_proof, IpFrame, TcpFlags},
    xdp::{
        backend_mac, case, forwarded, from_backend, now_ticks, probation_entry, reversed, Expect,
        Fixture, FixtureFamily, Setup, EXT_MAC, INT_MAC, PORT_EXT, ROUTER_MAC,
    },
};
use lb_common::{counter, event};

use super::{auth, client, ring, sa_init, udp};

both_families!(ike_responder_spi_promotes, Setup::default());

fn ike_responder_spi_promotes<F: FixtureFamily>(lb: &mut Fixture) {
    let c = client::<F>(60);
    let b = ring(lb, c);
    let o = F::other_backend(b);
    let spi_i = 0x0102_0304_0506_0708;
    let spi_r = 0xa1b2_c3d4_e5f6_0718;
    let init = udp(c, 500, 500, &sa_init(spi_i));
    let resp = from_backend(b, 500, c, 500, &ike_message(spi_i, spi_r, 34, 0x20, 300));
    let wrong = udp(c, 4500, 4500, &non_esp(&auth(spi_i, spi_r ^ 1)));
    // ESP-in-UDP whose bytes 8..16 happen to be the SPI: no marker, not IKE.
    let mut esp_like = auth(spi_i, spi_r);
    esp_like[0] = 0x55;
    let esp_like = udp(c, 4500, 4500, &esp_like);
    // An IKE header cut at 24 bytes (the SPI is there, the header is not complete).
    let cut = udp(c, 500, 500, &auth(spi_i, spi_r)[..24]);
    // An IKEv1 header (major version 1) with the same SPIs: not an IKEv2 proof.
    let mut v1 = auth(spi_i, spi_r);
    v1[17] = 0x10;
    let v1 = udp(c, 4500, 4500, &non_esp(&v1));
    let good = udp(c, 4500, 4500, &non_esp(&auth(spi_i, spi_r)));
    let on_500 = udp(c, 500, 500, &auth(spi_i, spi_r));
    let response = non_esp(&ike_message(spi_i, spi_r, 35, 0x20, 500));
    let reply = from_backend(b, 4500, c, 4500, &response);
    let other_reply = from_backend(o, 500, c, 500, &ike_message(9, 0x77, 34, 0x20, 60));
    #[rustfmt::skip]
    lb.check(&[
        case("IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("backend's IKE_SA_INIT response", resp.bytes(), Expect::Redirect(reversed(&resp, ROUTER_MAC)), counter::REVERSE).events(&[]),
    ]);
    assert_eq!(
        lb.probation(c.into()).map(|p| p.proof),
        Some(ike_proof(spi_r)),
        "proof recorded"
    );
    #[rustfmt::skip]
    lb.check(&[
        case("another backend's IKE to the client: dropped, no proof", other_reply.bytes(), Expect::Drop, counter::DROP_REVERSE_NOT_CLIENT),
        case("IKE_AUTH with another responder SPI", wrong.bytes(), Expect::Redirect(forwarded(&wrong, b)), counter::FORWARD).events(&[]),
        // Events unchecked: with the fast path on, a probation client whose refresh wrote the
        // stamp may take it (bulk never carries a proof either way).
        case("ESP-in-UDP carrying the SPI bytes", esp_like.bytes(), Expect::Redirect(forwarded(&esp_like, b)), counter::FORWARD),
        case("IKE header cut at 24 bytes", cut.bytes(), Expect::Redirect(forwarded(&cut, b)), counter::FORWARD).events(&[]),
        case("IKEv1 header with the SPI", v1.bytes(), Expect::Redirect(forwarded(&v1, b)), counter::FORWARD).events(&[]),
    ]);
    assert_eq!(
        lb.probation(c.into()).map(|p| p.proof),
        Some(ike_proof(spi_r)),
        "proof kept"
    );
    assert_eq!(lb.persisted(c.into()), None, "not promoted yet");
    let t0 = now_ticks();
    #[rustfmt::skip]
    lb.check(&[
        case("IKE_AUTH echoing the responder SPI: promoted", good.bytes(), Expect::Redirect(forwarded(&good, b)), counter::FORWARD).events(&[(event::PROMOTED, 1)]),
    ]);
    let e = lb.persisted(c.into()).expect("established");
    assert_eq!(
        (e.backend, e.client_mac, e.port),
        (b, ROUTER_MAC, PORT_EXT as u8)
    );
    assert!(e.atime >= t0);
    assert_eq!(lb.probation(c.into()), None, "probation entry deleted");
    #[rustfmt::skip]
    lb.check(&[
        case("backend's IKE_AUTH response, now established", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE).events(&[]),
        case("the client again on 500: a persistence hit", on_500.bytes(), Expect::Redirect(forwarded(&on_500, b)), counter::FORWARD).events(&[]),
    ]);
}

both_families!(
    reverse_path_records_the_proof_only_from_ike_with_a_responder_spi,
    Setup::default()
);

fn reverse_path_records_the_proof_only_from_ike_with_a_responder_spi<F: FixtureFamily>(
    lb: &mut Fixture,
) {
    let c = client::<F>(61);
    let b = ring(lb, c);
    let init = udp(c, 500, 500, &sa_init(5));
    let s1 = 0x1111_2222_3333_4444u64;
    let s3 = 0x5555_6666_7777_8888u64;
    let nat_t = from_backend(
        b,
        4500,
        c,
        4500,
        &non_esp(&ike_message(5, s1, 35, 0x20, 80)),
    );
    let esp_udp = from_backend(b, 4500, c, 4500, &ike_message(0x66, 0x99, 35, 0x20, 80));
    let zero = from_backend(b, 500, c, 500, &ike_message(5, 0, 34, 0x20, 80));
    let again = from_backend(b, 500, c, 500, &ike_message(5, s3, 34, 0x20, 80));
    let proof = |lb: &mut Fixture| lb.probation(c.into()).map(|p| p.proof);
    let rev = |f: &F::Frame| Expect::Redirect(reversed(f, ROUTER_MAC));
    #[rustfmt::skip]
    lb.check(&[case("IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD)]);
    assert_eq!(proof(lb), Some(0));
    #[rustfmt::skip]
    lb.check(&[case("backend IKE on 4500 behind the marker", nat_t.bytes(), rev(&nat_t), counter::REVERSE)]);
    assert_eq!(proof(lb), Some(ike_proof(s1)), "from 4500 after the marker");
    #[rustfmt::skip]
    lb.check(&[case("backend ESP-in-UDP", esp_udp.bytes(), rev(&esp_udp), counter::REVERSE)]);
    assert_eq!(proof(lb), Some(ike_proof(s1)), "ESP-in-UDP records nothing");
    #[rustfmt::skip]
    lb.check(&[case("backend IKE with responder SPI 0", zero.bytes(), rev(&zero), counter::REVERSE)]);
    assert_eq!(proof(lb), Some(ike_proof(s1)), "SPI 0 records nothing");
    #[rustfmt::skip]
    lb.check(&[case("backend IKE with another responder SPI", again.bytes(), rev(&again), counter::REVERSE)]);
    assert_eq!(
        proof(lb),
        Some(ike_proof(s3)),
        "proof := the latest responder SPI"
    );
}

both_families!(tcp_isn_plus_one_promotes, Setup::default());

fn tcp_isn_plus_one_promotes<F: FixtureFamily>(lb: &mut Fixture) {
    let c = client::<F>(62);
    let b = ring(lb, c);
    let isn_c = 0x1000_0000u32;
    let isn_s = 0xfedc_ba98u32;
    let seg = |flags: TcpFlags, seq: u32, ack: u32| {
        F::Frame::tcp_segment(
            ROUTER_MAC,
            EXT_MAC,
            (c, 50_000),
            (F::VIP, 443),
            seq,
            ack,
            flags,
            &[],
        )
    };
    let syn = seg(TcpFlags::SYN, isn_c, 0);
    let syn_ack = F::Frame::tcp_segment(
        backend_mac(b),
        INT_MAC,
        (F::backend(b), 443),
        (c, 50_000),
        isn_s,
        isn_c + 1,
        TcpFlags {
            syn: true,
            ack: true,
            ..Default::default()
        },
        &[],
    );
    let syn_again = seg(TcpFlags::SYN, isn_c, isn_s.wrapping_add(1));
    let wrong_ack = seg(TcpFlags::ACK, isn_c + 1, isn_s.wrapping_add(2));
    let ack = seg(TcpFlags::ACK, isn_c + 1, isn_s.wrapping_add(1));
    #[rustfmt::skip]
    lb.check(&[
        case("SYN", syn.bytes(), Expect::Redirect(forwarded(&syn, b)), counter::FORWARD).events(&[(event::PROBATION_INSERT, 1)]),
        case("backend SYN-ACK", syn_ack.bytes(), Expect::Redirect(reversed(&syn_ack, ROUTER_MAC)), counter::REVERSE).events(&[]),
    ]);
    assert_eq!(
        lb.probation(c.into()).map(|p| p.proof),
        Some(tcp_proof(isn_s))
    );
    #[rustfmt::skip]
    lb.check(&[
        case("SYN without ACK flag carrying the number", syn_again.bytes(), Expect::Redirect(forwarded(&syn_again, b)), counter::FORWARD).events(&[]),
        case("ACK of another number", wrong_ack.bytes(), Expect::Redirect(forwarded(&wrong_ack, b)), counter::FORWARD).events(&[]),
        case("ACK of ISN + 1: promoted", ack.bytes(), Expect::Redirect(forwarded(&ack, b)), counter::FORWARD).events(&[(event::PROMOTED, 1)]),
    ]);
    assert_eq!(lb.persisted(c.into()).map(|e| e.backend), Some(b));
    assert_eq!(lb.probation(c.into()), None);
}

both_families!(zero_proof_never_promotes, Setup::default());

fn zero_proof_never_promotes<F: FixtureFamily>(lb: &mut Fixture) {
    let c = client::<F>(63);
    let b = ring(lb, c);
    let now = now_ticks();
    lb.set_probation(c.into(), probation_entry(b, now, ROUTER_MAC, PORT_EXT, 0));
    // Responder SPI 0 echoes proof 0: not a proof.
    let init = udp(c, 500, 500, &sa_init(1));
    #[rustfmt::skip]
    lb.check(&[case("IKE_SA_INIT against proof 0", init.bytes(), Expect::Redirect(forwarded(&init, b)), counter::FORWARD).events(&[])]);
    assert_eq!(lb.persisted(c.into()), None);
}
