//! The IKE probe's messages: the IKE_SA_INIT request it sends, and the strict reading of what
//! comes back (RFC 7296 §1.2, §3).
//!
//! The request is what a real initiator sends first: header (random initiator SPI, responder
//! SPI 0, IKE_SA_INIT, flags Initiator, message ID 0), an SA payload with one IKE proposal of
//! common transforms (AES-CBC-256 or -128, PRF_HMAC_SHA2_256, AUTH_HMAC_SHA2_256_128, the
//! 2048-bit MODP group 14), a KE payload for group 14 (256 random bytes — the responder checks
//! the group and the length; the value is below the group's prime, RFC 3526 §3, because its
//! top bit is clear) and a 32-byte random nonce.
//!
//! What proves the IKE service alive ([`Alive`]) is a well-formed **response** to that very
//! request — our initiator SPI, Response flag, IKE_SA_INIT, message ID 0, a length that
//! matches the datagram and a payload chain that ends exactly at its end — that either
//! carries SA, KE and Nonce (the responder accepts) or one of the notifies a live responder
//! answers an IKE_SA_INIT it will not take with: INVALID_KE_PAYLOAD (§1.3, it wants another
//! group), NO_PROPOSAL_CHOSEN (§2.7, none of our transforms), COOKIE (§2.6, it is under
//! load and wants proof of our address first). Everything else is a failure with its reason.

use std::fmt;

/// UDP port of IKE (RFC 7296 §2).
pub const IKE_PORT: u16 = 500;
/// Length of the IKE header (RFC 7296 §3.1).
pub const HEADER_LEN: usize = 28;
/// IKE SPI length.
pub const SPI_LEN: usize = 8;
/// Bytes of the KE payload's data for group 14 (the 2048-bit MODP group, RFC 3526 §3).
pub const KE_LEN: usize = 256;
/// Bytes of our nonce (RFC 7296 §2.10: at least 16, and at least half the PRF's key size).
pub const NONCE_LEN: usize = 32;

/// IKEv2, major version 2 minor 0 (RFC 7296 §3.1).
const VERSION: u8 = 0x20;
/// Exchange type IKE_SA_INIT (RFC 7296 §3.1).
const IKE_SA_INIT: u8 = 34;
/// Header flags (RFC 7296 §3.1): bit 3 Initiator, bit 4 Version, bit 5 Response.
const FLAG_INITIATOR: u8 = 0x08;
const FLAG_RESPONSE: u8 = 0x20;

/// Payload types (RFC 7296 §3.2).
const NO_NEXT_PAYLOAD: u8 = 0;
const PAYLOAD_SA: u8 = 33;
const PAYLOAD_KE: u8 = 34;
const PAYLOAD_NONCE: u8 = 40;
const PAYLOAD_NOTIFY: u8 = 41;

/// Proposal and transform substructures (RFC 7296 §3.3.1, §3.3.2): the "Last Substruc"
/// values (0 last, 3 more transforms follow), protocol ID of IKE.
const LAST: u8 = 0;
const MORE_TRANSFORMS: u8 = 3;
const PROTOCOL_IKE: u8 = 1;

/// Transform types and IDs (RFC 7296 §3.3.2; IANA "IKEv2 Parameters").
const TRANSFORM_ENCR: u8 = 1;
const TRANSFORM_PRF: u8 = 2;
const TRANSFORM_INTEG: u8 = 3;
const TRANSFORM_DH: u8 = 4;
const ENCR_AES_CBC: u16 = 12;
const PRF_HMAC_SHA2_256: u16 = 5;
const AUTH_HMAC_SHA2_256_128: u16 = 12;
/// Diffie-Hellman group 14, the 2048-bit MODP group (RFC 3526 §3).
pub const DH_MODP_2048: u16 = 14;
/// Transform attribute Key Length (type 14) in TV format (AF bit set; RFC 7296 §3.3.5).
const ATTR_KEY_LENGTH_TV: u16 = 0x8000 | 14;

/// Notify message types (RFC 7296 §3.10.1).
pub const NO_PROPOSAL_CHOSEN: u16 = 14;
pub const INVALID_KE_PAYLOAD: u16 = 17;
pub const COOKIE: u16 = 16390;
/// Notify types below this are errors (RFC 7296 §3.10.1).
const FIRST_STATUS_NOTIFY: u16 = 16384;

/// The transforms of our single IKE proposal: (type, ID, key length in bits).
const TRANSFORMS: &[(u8, u16, Option<u16>)] = &[
    (TRANSFORM_ENCR, ENCR_AES_CBC, Some(256)),
    (TRANSFORM_ENCR, ENCR_AES_CBC, Some(128)),
    (TRANSFORM_PRF, PRF_HMAC_SHA2_256, None),
    (TRANSFORM_INTEG, AUTH_HMAC_SHA2_256_128, None),
    (TRANSFORM_DH, DH_MODP_2048, None),
];

/// The IKE_SA_INIT request with initiator SPI `spi`, KE data `ke` (group 14; its top bit is
/// cleared here so the value is below the group's prime) and nonce `nonce`.
pub fn sa_init_request(spi: [u8; SPI_LEN], ke: &[u8; KE_LEN], nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut transforms = Vec::new();
    for (i, &(kind, id, key_len)) in TRANSFORMS.iter().enumerate() {
        let last = if i + 1 == TRANSFORMS.len() {
            LAST
        } else {
            MORE_TRANSFORMS
        };
        let len: u16 = if key_len.is_some() { 12 } else { 8 };
        transforms.extend_from_slice(&[last, 0]);
        transforms.extend_from_slice(&len.to_be_bytes());
        transforms.extend_from_slice(&[kind, 0]);
        transforms.extend_from_slice(&id.to_be_bytes());
        if let Some(bits) = key_len {
            transforms.extend_from_slice(&ATTR_KEY_LENGTH_TV.to_be_bytes());
            transforms.extend_from_slice(&bits.to_be_bytes());
        }
    }
    // Proposal 1: protocol IKE, no SPI in IKE_SA_INIT (RFC 7296 §3.3.1).
    let mut proposal = vec![LAST, 0];
    proposal.extend_from_slice(&to_u16(8 + transforms.len()).to_be_bytes());
    proposal.extend_from_slice(&[1, PROTOCOL_IKE, 0, TRANSFORMS.len() as u8]);
    proposal.extend_from_slice(&transforms);

    let mut ke_body = Vec::with_capacity(4 + KE_LEN);
    ke_body.extend_from_slice(&DH_MODP_2048.to_be_bytes());
    ke_body.extend_from_slice(&[0, 0]);
    ke_body.extend_from_slice(ke);
    ke_body[4] &= 0x7f;

    let mut body = Vec::new();
    payload(&mut body, PAYLOAD_KE, &proposal);
    payload(&mut body, PAYLOAD_NONCE, &ke_body);
    payload(&mut body, NO_NEXT_PAYLOAD, nonce);

    let mut msg = Vec::with_capacity(HEADER_LEN + body.len());
    msg.extend_from_slice(&spi);
    msg.extend_from_slice(&[0; SPI_LEN]);
    msg.extend_from_slice(&[PAYLOAD_SA, VERSION, IKE_SA_INIT, FLAG_INITIATOR]);
    msg.extend_from_slice(&0u32.to_be_bytes());
    msg.extend_from_slice(&to_u32(HEADER_LEN + body.len()).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Appends one payload: generic header (RFC 7296 §3.2; `next` is the type of the payload
/// after this one, critical bit clear) and `data`.
fn payload(out: &mut Vec<u8>, next: u8, data: &[u8]) {
    out.extend_from_slice(&[next, 0]);
    out.extend_from_slice(&to_u16(4 + data.len()).to_be_bytes());
    out.extend_from_slice(data);
}

fn to_u16(n: usize) -> u16 {
    u16::try_from(n).expect("our payloads are small")
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("our messages are small")
}

/// What a live IKE service answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alive {
    /// An IKE_SA_INIT response with SA, KE and Nonce: it accepted (and now holds a half-open
    /// IKE SA until its timeout).
    SaInit,
    /// N(INVALID_KE_PAYLOAD): it wants the KE in another group (given, when the notify
    /// carries the two-byte group number).
    InvalidKe { group: Option<u16> },
    /// N(NO_PROPOSAL_CHOSEN): none of our transforms is acceptable to it.
    NoProposalChosen,
    /// N(COOKIE): it is past its cookie threshold and wants our address proven first.
    Cookie,
}

impl fmt::Display for Alive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alive::SaInit => f.write_str("IKE_SA_INIT response"),
            Alive::InvalidKe { group: Some(g) } => write!(f, "N(INVALID_KE_PAYLOAD), group {g}"),
            Alive::InvalidKe { group: None } => f.write_str("N(INVALID_KE_PAYLOAD)"),
            Alive::NoProposalChosen => f.write_str("N(NO_PROPOSAL_CHOSEN)"),
            Alive::Cookie => f.write_str("N(COOKIE)"),
        }
    }
}

/// Reads `msg`, a datagram from the probed backend's UDP 500, as the answer to our request
/// with initiator SPI `spi`. `Err` says, in one line, why it is no proof of life.
pub fn classify(spi: [u8; SPI_LEN], msg: &[u8]) -> Result<Alive, String> {
    if msg.len() < HEADER_LEN {
        return Err(format!(
            "truncated IKE message: {} bytes, the header alone is {HEADER_LEN}",
            msg.len()
        ));
    }
    if msg[..SPI_LEN] != spi {
        return Err(format!(
            "initiator SPI {} is not ours ({})",
            hex(&msg[..SPI_LEN]),
            hex(&spi)
        ));
    }
    let (first, version, exchange, flags) = (msg[16], msg[17], msg[18], msg[19]);
    if version >> 4 != VERSION >> 4 {
        return Err(format!("IKE major version {}, not 2", version >> 4));
    }
    if exchange != IKE_SA_INIT {
        return Err(format!(
            "exchange type {exchange}, not IKE_SA_INIT ({IKE_SA_INIT})"
        ));
    }
    if flags & FLAG_RESPONSE == 0 {
        return Err(format!(
            "not a response (flags {flags:#04x}, Response bit clear)"
        ));
    }
    if flags & FLAG_INITIATOR != 0 {
        return Err(format!(
            "a response with the Initiator flag set (flags {flags:#04x})"
        ));
    }
    let message_id = u32::from_be_bytes(msg[20..24].try_into().expect("4 bytes"));
    if message_id != 0 {
        return Err(format!("message ID {message_id}, not 0"));
    }
    let length = u32::from_be_bytes(msg[24..28].try_into().expect("4 bytes"));
    if usize::try_from(length).ok() != Some(msg.len()) {
        return Err(format!(
            "the header's length is {length}, the datagram {} bytes",
            msg.len()
        ));
    }

    let (mut sa, mut ke, mut nonce) = (false, false, false);
    let mut notifies: Vec<(u16, &[u8])> = Vec::new();
    let mut next = first;
    let mut at = HEADER_LEN;
    while next != NO_NEXT_PAYLOAD {
        let Some(header) = msg.get(at..at + 4) else {
            return Err(format!(
                "payload {next} at offset {at}: truncated generic payload header"
            ));
        };
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if len < 4 || at + len > msg.len() {
            return Err(format!(
                "payload {next} at offset {at}: length {len} does not fit the {}-byte message",
                msg.len()
            ));
        }
        let body = &msg[at + 4..at + len];
        match next {
            PAYLOAD_SA => sa = true,
            PAYLOAD_KE => ke = true,
            PAYLOAD_NONCE => nonce = true,
            PAYLOAD_NOTIFY => notifies.push(notify(body, at)?),
            _ => {}
        }
        next = header[0];
        at += len;
    }
    if at != msg.len() {
        return Err(format!("{} bytes after the last payload", msg.len() - at));
    }

    for &(kind, data) in &notifies {
        match kind {
            INVALID_KE_PAYLOAD => {
                let group = <[u8; 2]>::try_from(data).ok().map(u16::from_be_bytes);
                return Ok(Alive::InvalidKe { group });
            }
            NO_PROPOSAL_CHOSEN => return Ok(Alive::NoProposalChosen),
            COOKIE => return Ok(Alive::Cookie),
            _ => {}
        }
    }
    if sa && ke && nonce {
        return Ok(Alive::SaInit);
    }
    if let Some(&(kind, _)) = notifies.iter().find(|(k, _)| *k < FIRST_STATUS_NOTIFY) {
        return Err(format!("IKE_SA_INIT refused with error notify {kind}"));
    }
    let missing: Vec<&str> = [(sa, "SA"), (ke, "KE"), (nonce, "Nonce")]
        .into_iter()
        .filter(|(present, _)| !present)
        .map(|(_, name)| name)
        .collect();
    Err(format!(
        "IKE_SA_INIT response without {} and no notify that answers it",
        missing.join(", ")
    ))
}

/// A Notify payload's body (RFC 7296 §3.10): protocol ID, SPI size, type, SPI, data.
fn notify(body: &[u8], at: usize) -> Result<(u16, &[u8]), String> {
    if body.len() < 4 {
        return Err(format!(
            "Notify payload at offset {at}: {} bytes, at least 4",
            body.len()
        ));
    }
    let spi_size = usize::from(body[1]);
    let kind = u16::from_be_bytes([body[2], body[3]]);
    let Some(data) = body.get(4 + spi_size..) else {
        return Err(format!(
            "Notify payload at offset {at}: SPI of {spi_size} bytes does not fit its {} bytes",
            body.len()
        ));
    };
    Ok((kind, data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
