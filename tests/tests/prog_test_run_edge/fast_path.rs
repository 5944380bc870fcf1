//! The slot fast path, keyed by the ring slot's `REFRESHED_V4` stamp (both families' slots).
//!
//! The stamp is per tick (~1.07 s): a table that a tick boundary fell inside runs again (up to
//! three times) before its failures count, with the rows' results kept until the clock says
//! whether they were within one tick (`Fixture::try_check`): in an emulated guest a few rows
//! can take a good part of a tick.

use ikelb_tests::{
    both_families,
    packet::{non_esp, IpFrame, PROTO_ESP},
    packet6::esp_body,
    xdp::{
        case, forwarded, now_ticks, persist_entry, raw_to_vip, Expect, Fixture, Setup, PORT_EXT,
        ROUTER_MAC,
    },
};
use lb_common::{counter, event};

use super::{auth, client, data, ring, udp, EdgeFamily};

fn esp<F: EdgeFamily>(c: F, spi: u32, seq: u32) -> F::Frame {
    raw_to_vip(c, PROTO_ESP, &esp_body(spi, seq, 80))
}

both_families!(slot_fast_path_is_keyed_by_the_slot_stamp);

/// A bulk packet (ESP, ESP-in-UDP, a non-first fragment; over IPv6 also ESP behind an
/// extension header) of a client whose slot is stamped this tick takes the fast path, even
/// without any entry; IKE (UDP 500, the non-ESP marker on 4500) and NAT keepalives never do;
/// a slot flagged `RING_F_CHANGED` never does.
fn slot_fast_path_is_keyed_by_the_slot_stamp<F: EdgeFamily>() {
    for fast in [false, true] {
        let Some(mut lb) = Fixture::load(Setup {
            slot_fast_path: fast,
            ..Setup::default()
        }) else {
            return;
        };
        slot_stamp_rows::<F>(&mut lb, fast);
    }
}

fn slot_stamp_rows<F: EdgeFamily>(lb: &mut Fixture, fast: bool) {
    let mode = format!("{} SLOT_FAST_PATH={}", F::NAME, u32::from(fast));
    let fp = |n: u64| -> Vec<(u32, u64)> {
        if fast {
            vec![(event::FAST_PATH, n)]
        } else {
            vec![]
        }
    };
    // The stamp is per tick: retry if a tick boundary falls inside the rows.
    for attempt in 0.. {
        let c = client::<F>(100 + attempt);
        let b = ring(lb, c);
        let now = now_ticks();
        lb.persist(
            c.into(),
            persist_entry(b, now.wrapping_sub(5), ROUTER_MAC, PORT_EXT),
        );
        let esp = esp(c, 0xabc, 1);
        let esp_udp = udp(c, 4500, 4500, &esp_body(0xabd, 2, 64));
        // A non-first fragment (offset 24 bytes, the last) of an ESP packet.
        let frag = raw_to_vip(c, PROTO_ESP, &data(24)).last_fragment_at(3);
        let ike = udp(c, 500, 500, &auth(1, 2));
        let ike_4500 = udp(c, 4500, 4500, &non_esp(&auth(3, 4)));
        let keepalive = udp(c, 4500, 4500, &[0xff]);
        let t0 = now_ticks();
        #[rustfmt::skip]
        lb.check(&[
            case(format!("{mode}: ESP, stale stamp: the entry is refreshed"), esp.bytes(), Expect::Redirect(forwarded(&esp, b)), counter::FORWARD).events(&[]),
        ]);
        let e = lb.persisted(c.into()).unwrap();
        assert!(e.atime >= t0, "{mode}: atime refreshed");
        if fast {
            assert_eq!(lb.refreshed(c), e.atime, "{mode}: slot stamped");
        }
        // The persistence entry goes away: only the fast path can still find the backend
        // without re-selecting (which would create a probation entry).
        lb.unpersist(c.into());
        let lost = [(event::PROBATION_INSERT, 1), (event::LOST, 1)];
        // Without the fast path the client's SA, which the refresh above taught the data
        // path, steers it (to the same backend: `lb-ebpf/src/steer.rs`).
        let steered = [(event::PROBATION_INSERT, 1), (event::SA_STEERED, 1)];
        #[rustfmt::skip]
        let mut rows = vec![
            case(format!("{mode}: ESP again"), esp.bytes(), Expect::Redirect(forwarded(&esp, b)), counter::FORWARD)
                .events(&if fast { fp(1) } else { steered.to_vec() }),
            case(format!("{mode}: ESP-in-UDP"), esp_udp.bytes(), Expect::Redirect(forwarded(&esp_udp, b)), counter::FORWARD)
                .events(&fp(1)),
            case(format!("{mode}: a non-first fragment"), frag.bytes(), Expect::Redirect(forwarded(&frag, b)), counter::FORWARD)
                .events(&fp(1)),
        ];
        // The walk's extension headers in front of ESP change nothing.
        for (what, g) in F::behind_headers(&esp) {
            #[rustfmt::skip]
            rows.push(
                case(format!("{mode}: ESP behind {what}"), g.bytes(), Expect::Redirect(forwarded(&g, b)), counter::FORWARD)
                    .events(&fp(1)),
            );
        }
        // IKE goes through the entries: with the fast path on the client has none, so UDP 500
        // is `lost` (mid-session) and gets a probation entry, which the next rows find.
        #[rustfmt::skip]
        rows.extend([
            case(format!("{mode}: IKE never takes the fast path"), ike.bytes(), Expect::Redirect(forwarded(&ike, b)), counter::FORWARD)
                .events(&if fast { lost.to_vec() } else { vec![] }),
            case(format!("{mode}: IKE on 4500 (non-ESP marker) neither"), ike_4500.bytes(), Expect::Redirect(forwarded(&ike_4500, b)), counter::FORWARD)
                .events(&[]),
            case(format!("{mode}: a NAT keepalive neither"), keepalive.bytes(), Expect::Redirect(forwarded(&keepalive, b)), counter::FORWARD)
                .events(&[]),
        ]);
        if let Some(padded) = F::padded(&keepalive) {
            #[rustfmt::skip]
            rows.push(
                case(format!("{mode}: a NAT keepalive padded to 60 bytes neither"), padded, Expect::Redirect(forwarded(&keepalive, b)), counter::FORWARD)
                    .events(&[(event::TRIMMED, 1)]),
            );
        }
        let result = lb.try_check(&rows);
        if now_ticks() != t0 && attempt < 3 {
            eprintln!("{mode}: a tick boundary fell inside the rows; again");
            continue;
        }
        result.unwrap_or_else(|e| panic!("{e}"));
        // A flagged slot never takes the fast path.
        lb.mark_changed(c.into());
        let before = lb.events()[event::FAST_PATH as usize];
        lb.run(&esp.bytes());
        assert_eq!(
            lb.events()[event::FAST_PATH as usize],
            before,
            "{mode}: RING_F_CHANGED slot"
        );
        break;
    }
}

both_families!(one_refresh_per_ring_slot_and_tick);

/// Two clients in one ring slot: the first packet of the slot in a tick refreshes its client's
/// entry and stamps the slot; the other client's bulk packets then take the fast path in that
/// tick without a lookup (its entry is refreshed in a tick where it comes first). A stamp of
/// another tick sends the slot's next packet through its entry again.
fn one_refresh_per_ring_slot_and_tick<F: EdgeFamily>() {
    let Some(mut fx) = Fixture::load(Setup {
        slot_fast_path: true,
        ..Setup::default()
    }) else {
        return;
    };
    let lb = &mut fx;
    let (a, b) = (100..=250u16)
        .flat_map(|i| (i + 1..=250).map(move |j| (client::<F>(i), client::<F>(j))))
        .find(|&(a, b)| lb.slot(a.into()) == lb.slot(b.into()))
        .expect("two clients in one slot of 251 among 151");
    for attempt in 0.. {
        let now = now_ticks();
        let id = ring(lb, a);
        lb.persist(
            a.into(),
            persist_entry(id, now.wrapping_sub(5), ROUTER_MAC, PORT_EXT),
        );
        lb.persist(
            b.into(),
            persist_entry(id, now.wrapping_sub(5), ROUTER_MAC, PORT_EXT),
        );
        lb.set_refreshed(a, now.wrapping_sub(1));
        let (ea, eb) = (esp(a, 0xa1, 1), esp(b, 0xb1, 1));
        let t0 = now_ticks();
        #[rustfmt::skip]
        let result = lb.try_check(&[
            case(format!("{a}: stale stamp, its entry refreshed"), ea.bytes(), Expect::Redirect(forwarded(&ea, id)), counter::FORWARD).events(&[]),
            case(format!("{b}: same slot, stamped this tick: fast path"), eb.bytes(), Expect::Redirect(forwarded(&eb, id)), counter::FORWARD).events(&[(event::FAST_PATH, 1)]),
            case(format!("{a}: fast path"), ea.bytes(), Expect::Redirect(forwarded(&ea, id)), counter::FORWARD).events(&[(event::FAST_PATH, 1)]),
        ]);
        if now_ticks() != t0 && attempt < 3 {
            eprintln!("a tick boundary fell inside the rows; again");
            continue;
        }
        result.unwrap_or_else(|e| panic!("{e}"));
        assert!(lb.persisted(a.into()).unwrap().atime >= t0, "{a} refreshed");
        assert_eq!(
            lb.persisted(b.into()).unwrap().atime,
            now.wrapping_sub(5),
            "{b} not looked up"
        );
        assert_eq!(lb.refreshed(b), lb.refreshed(a), "one stamp for the slot");
        break;
    }
}
