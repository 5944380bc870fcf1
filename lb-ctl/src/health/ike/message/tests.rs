//! The request against a byte-by-byte fixture written from RFC 7296 §3, and the reading of
//! responses built by hand from the same layout.

use super::*;

const SPI: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
const RSPI: [u8; 8] = [0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8];

fn request() -> Vec<u8> {
    sa_init_request(SPI, &[0xff; KE_LEN], &[0x5a; NONCE_LEN])
}

#[rustfmt::skip]
const REQUEST_HEAD: &[u8] = &[
    // IKE header (§3.1)
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // initiator SPI
    0, 0, 0, 0, 0, 0, 0, 0,                         // responder SPI 0
    33,                                             // next payload: SA
    0x20,                                           // version 2.0
    34,                                             // IKE_SA_INIT
    0x08,                                           // flags: Initiator
    0, 0, 0, 0,                                     // message ID 0
    0, 0, 0x01, 0x84,                               // length 388
    // SA payload (§3.3): next KE, length 4 + 56
    34, 0, 0, 60,
    // proposal 1 (§3.3.1): last, length 56, #1, IKE, SPI size 0, 5 transforms
    0, 0, 0, 56, 1, 1, 0, 5,
    // transforms (§3.3.2): more/last, length, type, ID, Key Length attribute (§3.3.5)
    3, 0, 0, 12, 1, 0, 0, 12, 0x80, 14, 0x01, 0x00, // ENCR_AES_CBC, 256 bits
    3, 0, 0, 12, 1, 0, 0, 12, 0x80, 14, 0x00, 0x80, // ENCR_AES_CBC, 128 bits
    3, 0, 0, 8, 2, 0, 0, 5,                         // PRF_HMAC_SHA2_256
    3, 0, 0, 8, 3, 0, 0, 12,                        // AUTH_HMAC_SHA2_256_128
    0, 0, 0, 8, 4, 0, 0, 14,                        // DH group 14 (MODP 2048)
    // KE payload (§3.4): next Nonce, length 4 + 4 + 256, group 14, reserved
    40, 0, 0x01, 0x08, 0, 14, 0, 0,
];

#[test]
fn the_request_is_laid_out_as_rfc_7296_says() {
    let r = request();
    assert_eq!(r.len(), 388);
    assert_eq!(&r[..REQUEST_HEAD.len()], REQUEST_HEAD);
    let ke = &r[REQUEST_HEAD.len()..REQUEST_HEAD.len() + KE_LEN];
    assert_eq!(ke[0], 0x7f, "top bit cleared: below the MODP-2048 prime");
    assert!(ke[1..].iter().all(|&b| b == 0xff));
    let nonce = &r[REQUEST_HEAD.len() + KE_LEN..];
    assert_eq!(
        &nonce[..4],
        &[0, 0, 0, 36],
        "Nonce payload: last, length 4 + 32"
    );
    assert!(nonce[4..].iter().all(|&b| b == 0x5a));
}

#[test]
fn our_own_request_is_not_an_answer() {
    let err = classify(SPI, &request()).unwrap_err();
    assert!(err.contains("not a response"), "{err}");
}

/// A response header with our SPI, `rspi`, first payload `next`, flags Response; length
/// filled in by [`finish`].
fn header(rspi: [u8; 8], next: u8) -> Vec<u8> {
    let mut m = SPI.to_vec();
    m.extend_from_slice(&rspi);
    m.extend_from_slice(&[next, 0x20, 34, 0x20, 0, 0, 0, 0, 0, 0, 0, 0]);
    m
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let len = (m.len() as u32).to_be_bytes();
    m[24..28].copy_from_slice(&len);
    m
}

/// An IKE_SA_INIT response accepting AES-CBC-256/SHA2-256/group 14: SA (the chosen
/// proposal), KE (256 bytes), Nonce (32 bytes), as §1.2 shows it.
#[rustfmt::skip]
fn accepted() -> Vec<u8> {
    let mut m = header(RSPI, 33);
    m.extend_from_slice(&[
        34, 0, 0, 48,                                   // SA, next KE
        0, 0, 0, 44, 1, 1, 0, 4,                        // proposal 1, IKE, 4 transforms
        3, 0, 0, 12, 1, 0, 0, 12, 0x80, 14, 0x01, 0x00,
        3, 0, 0, 8, 2, 0, 0, 5,
        3, 0, 0, 8, 3, 0, 0, 12,
        0, 0, 0, 8, 4, 0, 0, 14,
        40, 0, 0x01, 0x08, 0, 14, 0, 0,                 // KE, next Nonce, group 14
    ]);
    m.extend_from_slice(&[0x42; 256]);
    m.extend_from_slice(&[0, 0, 0, 36]);                // Nonce, last
    m.extend_from_slice(&[0x24; 32]);
    finish(m)
}

/// A response carrying only the notify `kind` with `data` (no SPI), responder SPI 0.
fn notify_only(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut m = header([0; 8], 41);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(data);
    finish(m)
}

#[test]
fn an_ike_sa_init_response_is_alive() {
    assert_eq!(classify(SPI, &accepted()), Ok(Alive::SaInit));
}

#[test]
fn the_notifies_of_a_live_responder_are_alive() {
    assert_eq!(
        classify(SPI, &notify_only(INVALID_KE_PAYLOAD, &[0, 19])),
        Ok(Alive::InvalidKe { group: Some(19) })
    );
    assert_eq!(
        classify(SPI, &notify_only(NO_PROPOSAL_CHOSEN, &[])),
        Ok(Alive::NoProposalChosen)
    );
    assert_eq!(
        classify(SPI, &notify_only(COOKIE, &[0xc0; 20])),
        Ok(Alive::Cookie)
    );
}

#[test]
fn other_error_notifies_are_failures() {
    // INVALID_SYNTAX (7).
    let err = classify(SPI, &notify_only(7, &[])).unwrap_err();
    assert_eq!(err, "IKE_SA_INIT refused with error notify 7");
    // A status notify alone (NAT_DETECTION_SOURCE_IP, 16388) answers nothing.
    let err = classify(SPI, &notify_only(16388, &[0; 20])).unwrap_err();
    assert!(err.contains("without SA, KE, Nonce"), "{err}");
}

#[test]
fn answers_that_are_not_ours_or_not_well_formed_fail_with_a_reason() {
    let ok = accepted();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "another SPI",
            {
                let mut m = ok.clone();
                m[0] ^= 1;
                m
            },
            "initiator SPI 1022334455667788 is not ours",
        ),
        (
            "not a response",
            {
                let mut m = ok.clone();
                m[19] = 0x08;
                m
            },
            "not a response",
        ),
        (
            "Initiator flag in a response",
            {
                let mut m = ok.clone();
                m[19] = 0x28;
                m
            },
            "Initiator flag set",
        ),
        (
            "IKEv1",
            {
                let mut m = ok.clone();
                m[17] = 0x10;
                m
            },
            "IKE major version 1, not 2",
        ),
        (
            "another exchange",
            {
                let mut m = ok.clone();
                m[18] = 37;
                m
            },
            "exchange type 37, not IKE_SA_INIT",
        ),
        (
            "message ID 1",
            {
                let mut m = ok.clone();
                m[23] = 1;
                m
            },
            "message ID 1, not 0",
        ),
        (
            "truncated datagram",
            ok[..ok.len() - 1].to_vec(),
            "the header's length is 376, the datagram 375 bytes",
        ),
        (
            "header only",
            ok[..20].to_vec(),
            "truncated IKE message: 20 bytes",
        ),
        (
            "a payload past the end",
            {
                let mut m = ok.clone();
                let at = m.len() - 36; // the Nonce payload's length field
                m[at + 3] = 40;
                m
            },
            "payload 40 at offset 340: length 40 does not fit the 376-byte message",
        ),
        (
            "a payload length below its header",
            {
                let mut m = ok.clone();
                m[31] = 2;
                m
            },
            "payload 33 at offset 28: length 2 does not fit",
        ),
        (
            "trailing bytes",
            {
                let mut m = ok.clone();
                m.extend_from_slice(&[0; 4]);
                finish(m)
            },
            "4 bytes after the last payload",
        ),
        (
            "a notify whose SPI does not fit",
            {
                let mut m = notify_only(COOKIE, &[]);
                m[HEADER_LEN + 5] = 8;
                m
            },
            "Notify payload at offset 28: SPI of 8 bytes does not fit its 4 bytes",
        ),
        (
            "a notify too short",
            {
                let mut m = header([0; 8], 41);
                m.extend_from_slice(&[0, 0, 0, 6, 0, 0]);
                finish(m)
            },
            "Notify payload at offset 28: 2 bytes, at least 4",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, msg, want) in cases {
        match classify(SPI, &msg) {
            Ok(a) => wrong.push(format!("{what}: accepted as {a}")),
            Err(e) if !e.contains(want) => wrong.push(format!("{what}: {e:?}, want {want:?}")),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_prefix_of_a_response_is_refused_without_panicking() {
    let ok = accepted();
    for n in 0..ok.len() {
        assert!(classify(SPI, &ok[..n]).is_err(), "prefix of {n} bytes");
    }
}

/// strongSwan 5.9.8's answers to this module's request (the same layout, SPIs as below, a
/// random KE value and nonce), captured on UDP 500 from a charon whose only IKE proposal was
/// `aes256-sha256-modp2048` and whose `cookie_threshold_ip` was 1: the first request got the
/// IKE_SA_INIT response (SA, KE, Nonce, N(CHILDLESS_IKEV2_SUPPORTED), N(MULTIPLE_AUTH_SUPPORTED)),
/// the second, with one half-open SA from our address already there, N(COOKIE).
const STRONGSWAN_SA_INIT: &[&str] = &[
    "112233445566778807e32dfb57cccb6821202220000000000000018822000030",
    "0000002c010100040300000c0100000c800e0100030000080300000c03000008",
    "02000005000000080400000e28000108000e00003a402714c889768feccc6de5",
    "3c10b31524913d2866145690f27ecd36f0412de5f8720dd0cd2a8a4efbd9debf",
    "f0ff2698815479cdc4db919dcbf858dc903564c4ddb58e63264782de6e2fa0ac",
    "798f7b0854abc5e748d11d4d51e5e0251a00fc64de3fb2beebcea64ee5af1600",
    "1056c4b6af25c0ada71e88b2575f51ba0215637073ae0d17a548bf097967bb00",
    "8208b97c6358d2cb34028af48710dd2d65a2ce3399818d72d2e221dd1f38e441",
    "8692d9f2d72ef1e1661f741c3e58a7303c03db9cde7ff291ca10f5d734bb1c45",
    "0871f201c85c8a32190c3c019d9ecee2d464a1a54dea042117064dc48d56f933",
    "47677547fc2e5108b436e2a919bcd63f74a01b7929000024b50b33012a7868be",
    "2ba0995c61ef3b403ad5586b2fa19bad9b96276362598ee92900000800004022",
    "0000000800004014",
];
const STRONGSWAN_COOKIE: &[&str] = &[
    "8877665544332211000000000000000029202220000000000000003c00000020",
    "000040061c050000996158a0f64d4783b2141156721b7b464c8b4e58",
];

fn unhex(parts: &[&str]) -> Vec<u8> {
    let s: String = parts.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn real_strongswan_answers_are_alive() {
    let accepted = unhex(STRONGSWAN_SA_INIT);
    assert_eq!(accepted.len(), 392);
    assert_eq!(classify(SPI, &accepted), Ok(Alive::SaInit));
    let spi2 = [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11];
    let cookie = unhex(STRONGSWAN_COOKIE);
    assert_eq!(classify(spi2, &cookie), Ok(Alive::Cookie));
    // Each answers only the request it was sent for.
    assert!(classify(spi2, &accepted)
        .unwrap_err()
        .contains("is not ours"));
    assert!(classify(SPI, &cookie).unwrap_err().contains("is not ours"));
}
