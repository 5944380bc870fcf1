use super::*;

const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 20);
const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const GATEWAY4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 0x20);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

fn expected(addr: IpAddr) -> Expected {
    Expected {
        addr,
        ident: 0xa1b2,
        seq: 0xc3d4,
        payload: b"ikelb health check 0123456789abcdef".to_vec(),
    }
}

/// An IPv4 header (no options) of a packet from `src` to `dst` carrying `payload`.
fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An ICMP message with a correct ICMPv4 checksum (harmless for ICMPv6 in these tests:
/// the kernel checks those).
fn icmp(icmp_type: u8, code: u8, rest_of_header: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest_of_header);
    m.extend_from_slice(body);
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

fn id_seq(ident: u16, seq: u16) -> [u8; 4] {
    let [a, b] = ident.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    [a, b, c, d]
}

/// The echo reply the backend sends for `e`, as a raw IPv4 socket returns it.
fn reply4(e: &Expected, from: Ipv4Addr) -> Vec<u8> {
    let m = icmp(ECHO_REPLY_V4, 0, id_seq(e.ident, e.seq), &e.payload);
    ipv4(IPPROTO_ICMP, from, GATEWAY4, &m)
}

/// An ICMPv4 error from `router` quoting our echo request for `e` (`quote` bytes of its
/// data), as a raw IPv4 socket returns it.
fn error4(e: &Expected, router: Ipv4Addr, icmp_type: u8, code: u8, quote: usize) -> Vec<u8> {
    let IpAddr::V4(dst) = e.addr else { panic!() };
    let request = echo_request(Family::V4, e.ident, e.seq, &e.payload);
    let original = ipv4(IPPROTO_ICMP, GATEWAY4, dst, &request);
    let m = icmp(icmp_type, code, [0; 4], &original[..20 + 8 + quote]);
    ipv4(IPPROTO_ICMP, router, GATEWAY4, &m)
}

fn reply6(e: &Expected) -> Vec<u8> {
    icmp(ECHO_REPLY_V6, 0, id_seq(e.ident, e.seq), &e.payload)
}

fn error6(e: &Expected, icmp_type: u8, code: u8) -> Vec<u8> {
    let IpAddr::V6(dst) = e.addr else { panic!() };
    let request = echo_request(Family::V6, e.ident, e.seq, &e.payload);
    let original = ipv6(IPPROTO_ICMPV6, GATEWAY6, dst, &request);
    icmp(icmp_type, code, [0; 4], &original)
}

fn verdict(family: Family, raw: bool, e: &Expected, from: IpAddr, msg: &[u8]) -> Verdict {
    let received = parse(family, raw, msg).expect("parses");
    classify(e, from, &received)
}

#[test]
fn the_request_carries_ident_seq_payload_and_a_valid_checksum() {
    let e = expected(BACKEND4.into());
    let p = echo_request(Family::V4, e.ident, e.seq, &e.payload);
    assert_eq!(p[0], ECHO_REQUEST_V4);
    assert_eq!(&p[4..8], &id_seq(e.ident, e.seq));
    assert_eq!(&p[8..], e.payload.as_slice());
    assert_eq!(checksum(&p), 0, "a correct checksum sums to 0");
    let p6 = echo_request(Family::V6, e.ident, e.seq, &e.payload);
    assert_eq!(p6[0], ECHO_REQUEST_V6);
    assert_eq!(&p6[2..4], &[0, 0], "left to the kernel");
}

#[test]
fn our_echo_reply_from_the_backend_is_alive() {
    let e = expected(BACKEND4.into());
    assert_eq!(
        verdict(Family::V4, true, &e, BACKEND4.into(), &reply4(&e, BACKEND4)),
        Verdict::Alive
    );
    // A ping socket returns the ICMP message without the IP header.
    let m = icmp(ECHO_REPLY_V4, 0, id_seq(e.ident, e.seq), &e.payload);
    assert_eq!(
        verdict(Family::V4, false, &e, BACKEND4.into(), &m),
        Verdict::Alive
    );
    let e6 = expected(BACKEND6.into());
    assert_eq!(
        verdict(Family::V6, false, &e6, BACKEND6.into(), &reply6(&e6)),
        Verdict::Alive
    );
}

#[test]
fn host_unreachable_from_a_router_fails_the_probe_with_the_reason() {
    let e = expected(BACKEND4.into());
    for quote in [0, 4, e.payload.len()] {
        let msg = error4(&e, ROUTER4, 3, 1, quote);
        assert_eq!(
            verdict(Family::V4, true, &e, ROUTER4.into(), &msg),
            Verdict::Failed(
                "ICMP destination unreachable (host unreachable) from 10.0.0.254".into()
            ),
            "quoting {quote} bytes of data"
        );
    }
}

#[test]
fn every_icmp_error_type_fails_the_probe() {
    let e = expected(BACKEND4.into());
    for (t, c, why) in [
        (3, 0, "ICMP destination unreachable (net unreachable)"),
        (3, 3, "ICMP destination unreachable (port unreachable)"),
        (
            3,
            13,
            "ICMP destination unreachable (administratively prohibited)",
        ),
        (4, 0, "ICMP source quench (type 4, code 0)"),
        (11, 0, "ICMP time exceeded (TTL exceeded in transit)"),
        (12, 0, "ICMP parameter problem (type 12, code 0)"),
    ] {
        let msg = error4(&e, ROUTER4, t, c, 8);
        assert_eq!(
            verdict(Family::V4, true, &e, ROUTER4.into(), &msg),
            Verdict::Failed(format!("{why} from {ROUTER4}"))
        );
    }
    let e6 = expected(BACKEND6.into());
    for (t, c, why) in [
        (1, 3, "ICMPv6 destination unreachable (address unreachable)"),
        (
            1,
            0,
            "ICMPv6 destination unreachable (no route to destination)",
        ),
        (2, 0, "ICMPv6 packet too big (type 2, code 0)"),
        (3, 0, "ICMPv6 time exceeded (type 3, code 0)"),
        (4, 1, "ICMPv6 parameter problem (type 4, code 1)"),
    ] {
        let msg = error6(&e6, t, c);
        assert_eq!(
            verdict(Family::V6, false, &e6, ROUTER6.into(), &msg),
            Verdict::Failed(format!("{why} from {ROUTER6}"))
        );
    }
}

#[test]
fn the_family_decides_which_type_is_a_reply() {
    // Type 129 over ICMPv4 and type 0 over ICMPv6 are not echo replies.
    let e = expected(BACKEND4.into());
    let m = icmp(ECHO_REPLY_V6, 0, id_seq(e.ident, e.seq), &e.payload);
    assert!(matches!(
        verdict(Family::V4, false, &e, BACKEND4.into(), &m),
        Verdict::NotOurs(_)
    ));
    let e6 = expected(BACKEND6.into());
    let m6 = icmp(ECHO_REPLY_V4, 0, id_seq(e6.ident, e6.seq), &e6.payload);
    assert!(matches!(
        verdict(Family::V6, false, &e6, BACKEND6.into(), &m6),
        Verdict::NotOurs(_)
    ));
}

#[test]
fn a_reply_with_another_ident_seq_payload_or_source_is_not_ours() {
    let e = expected(BACKEND4.into());
    let mut other = e.clone();
    other.ident ^= 1;
    let wrong_ident = reply4(&other, BACKEND4);
    let mut other = e.clone();
    other.seq = other.seq.wrapping_add(1);
    let wrong_seq = reply4(&other, BACKEND4);
    let mut other = e.clone();
    *other.payload.last_mut().unwrap() ^= 0xff;
    let wrong_token = reply4(&other, BACKEND4);
    let mut other = e.clone();
    other.payload.truncate(19);
    let short = reply4(&other, BACKEND4);
    for (msg, from, why) in [
        (&wrong_ident, BACKEND4, "echo reply with another identifier"),
        (
            &wrong_seq,
            BACKEND4,
            "echo reply with another sequence number",
        ),
        (&wrong_token, BACKEND4, "echo reply with another payload"),
        (&short, BACKEND4, "echo reply with another payload"),
        (
            &reply4(&e, ROUTER4),
            ROUTER4,
            "echo reply from another address",
        ),
    ] {
        assert_eq!(
            verdict(Family::V4, true, &e, from.into(), msg),
            Verdict::NotOurs(why)
        );
    }
    let e6 = expected(BACKEND6.into());
    let mut other = e6.clone();
    other.payload[20] ^= 1;
    assert_eq!(
        verdict(Family::V6, false, &e6, BACKEND6.into(), &reply6(&other)),
        Verdict::NotOurs("echo reply with another payload")
    );
    assert_eq!(
        verdict(Family::V6, false, &e6, ROUTER6.into(), &reply6(&e6)),
        Verdict::NotOurs("echo reply from another address")
    );
}

#[test]
fn an_error_about_another_request_is_not_ours() {
    let e = expected(BACKEND4.into());
    let mut other = e.clone();
    other.ident ^= 0x100;
    assert_eq!(
        verdict(
            Family::V4,
            true,
            &e,
            ROUTER4.into(),
            &error4(&other, ROUTER4, 3, 1, 8)
        ),
        Verdict::NotOurs("ICMP error about another identifier")
    );
    let mut other = e.clone();
    other.addr = Ipv4Addr::new(10, 9, 0, 21).into();
    assert_eq!(
        verdict(
            Family::V4,
            true,
            &e,
            ROUTER4.into(),
            &error4(&other, ROUTER4, 3, 1, 8)
        ),
        Verdict::NotOurs("ICMP error about a request to another address")
    );
    let mut other = e.clone();
    other.payload[25] ^= 1;
    assert_eq!(
        verdict(
            Family::V4,
            true,
            &e,
            ROUTER4.into(),
            &error4(&other, ROUTER4, 3, 1, 30)
        ),
        Verdict::NotOurs("ICMP error quoting another payload")
    );
    let e6 = expected(BACKEND6.into());
    let mut other = e6.clone();
    other.seq ^= 1;
    assert_eq!(
        verdict(
            Family::V6,
            false,
            &e6,
            ROUTER6.into(),
            &error6(&other, 1, 3)
        ),
        Verdict::NotOurs("ICMP error about another sequence number")
    );
}

#[test]
fn requests_redirects_and_errors_about_other_protocols_are_other() {
    let e = expected(BACKEND4.into());
    let request = echo_request(Family::V4, e.ident, e.seq, &e.payload);
    let msg = ipv4(IPPROTO_ICMP, BACKEND4, GATEWAY4, &request);
    assert_eq!(
        parse(Family::V4, true, &msg),
        Ok(Received::Other {
            icmp_type: ECHO_REQUEST_V4
        })
    );
    let redirect = ipv4(
        IPPROTO_ICMP,
        ROUTER4,
        GATEWAY4,
        &icmp(5, 1, [10, 0, 0, 2], &error4(&e, ROUTER4, 3, 1, 8)[28..]),
    );
    assert_eq!(
        parse(Family::V4, true, &redirect),
        Ok(Received::Other { icmp_type: 5 })
    );
    // Port unreachable about a UDP datagram.
    let udp = ipv4(
        17,
        GATEWAY4,
        BACKEND4,
        &[0x01, 0xf4, 0x01, 0xf4, 0, 8, 0, 0],
    );
    let msg = ipv4(IPPROTO_ICMP, BACKEND4, GATEWAY4, &icmp(3, 3, [0; 4], &udp));
    assert_eq!(
        parse(Family::V4, true, &msg),
        Ok(Received::Other { icmp_type: 3 })
    );
    // Neighbour solicitation.
    let ns = icmp(135, 0, [0; 4], &BACKEND6.octets());
    assert_eq!(
        parse(Family::V6, false, &ns),
        Ok(Received::Other { icmp_type: 135 })
    );
    assert!(matches!(
        classify(&e, BACKEND4.into(), &Received::Other { icmp_type: 5 }),
        Verdict::NotOurs(_)
    ));
}

#[test]
fn malformed_messages_are_rejected() {
    let e = expected(BACKEND4.into());
    let good = reply4(&e, BACKEND4);
    let mut bad_sum = good.clone();
    *bad_sum.last_mut().unwrap() ^= 1;
    assert_eq!(
        parse(Family::V4, true, &bad_sum),
        Err(Malformed("bad ICMP checksum"))
    );
    assert!(parse(Family::V4, true, &good[..24]).is_err());
    assert!(parse(Family::V4, true, &good[..10]).is_err());
    assert!(parse(Family::V6, false, &[129, 0, 0]).is_err());
    // An error that quotes less than the echo header.
    let msg = error4(&e, ROUTER4, 3, 1, 0);
    let IpAddr::V4(dst) = e.addr else { panic!() };
    let original = ipv4(IPPROTO_ICMP, GATEWAY4, dst, &[8, 0, 0, 0]);
    let cut = ipv4(
        IPPROTO_ICMP,
        ROUTER4,
        GATEWAY4,
        &icmp(3, 1, [0; 4], &original),
    );
    assert!(parse(Family::V4, true, &msg).is_ok());
    assert_eq!(
        parse(Family::V4, true, &cut),
        Err(Malformed("error quotes less than the echo header"))
    );
}
