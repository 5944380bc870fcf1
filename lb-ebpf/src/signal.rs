//! What a packet of the persistency group says about the session it belongs to — read only
//! off the hit path, when a client has no established entry or a backend answers one:
//!
//! * the **proof** of return routability (`lb_common::ProbationValue`): the responder SPI of
//!   an IKE message (RFC 7296 §3.1, header bytes 8–16), or a TCP acknowledgement number;
//! * whether it is **mid-session** (an IKE message with a responder SPI, or ESP): such a packet
//!   from a client without any entry means its entry was lost, or the client moved;
//! * the **SA** it belongs to: an IKE message's initiator SPI (header bytes 0–8), an ESP
//!   packet's SPI (RFC 4303 §2.1), for SA steering (`select`);
//! * an IKE message's **exchange type and flags** (bytes 18 and 19), for the IKE stages
//!   (`ike`).
//!
//! IKE is found where RFC 7296 §2.23 and RFC 3948 §2.2 put it: at the start of a UDP 500
//! payload, or behind the four-byte zero non-ESP marker on any other service port (NAT-T 4500).
//! A non-zero first word on such a port is an ESP SPI (RFC 3948 §2.1); a single 0xff byte is a
//! NAT keepalive (neither).

use aya_ebpf::programs::XdpContext;
use network_types::{tcp::TcpHdr, udp::UdpHdr};

use crate::{
    l4::{Csum, Transport, IPPROTO_ESP},
    parse::{load16, load32, ptr_at, Side},
};

/// IKE header length (RFC 7296 §3.1); the responder SPI is bytes 8..16.
const IKE_HDR_LEN: usize = 28;
/// TCP flag bits in the 13th header byte (RFC 9293 §3.1).
const TCP_ACK: u8 = 0x10;
const TCP_SYN: u8 = 0x02;

/// What the data path needs to know of a packet besides its addresses.
#[derive(Clone, Copy)]
pub struct Pkt {
    /// Transport protocol (of the original packet, for a fragment).
    pub proto: u8,
    /// Whole packet or first fragment (the transport header is present).
    pub first: bool,
    /// As `l4::classify` found it.
    pub csum: Csum,
    /// Frame offset where the IP datagram ends: evidence is read before it only (the bytes
    /// past it are no part of the packet, and the exit cuts them off).
    pub end: usize,
    /// Frame offset of the transport header (an ESP header for plain ESP).
    pub offset: usize,
    /// The first fragment of an IP datagram (`first` and not whole).
    pub frag: bool,
}

impl Pkt {
    /// A packet of the persistency group: where `l4::classify` found its transport header
    /// `t`, and the checksum it returned.
    #[inline(always)]
    pub fn of(t: Transport, csum: Csum) -> Pkt {
        Pkt {
            proto: t.proto,
            first: t.first,
            csum,
            end: t.end,
            offset: t.offset,
            frag: t.first && !t.whole,
        }
    }
}

/// A packet's session evidence (module docs).
#[derive(Clone, Copy, Default)]
pub struct Signal {
    /// The proof value it carries (0: none).
    pub proof: u64,
    /// An IKE message with a responder SPI, or ESP.
    pub mid_session: bool,
    /// An IKEv2 message without a responder SPI: a session's first (IKE_SA_INIT).
    pub ike_init: bool,
    /// An IKEv2 message's initiator SPI, as [`proof`](Signal::proof) is encoded (0: none).
    pub ike_spi: u64,
    /// An ESP packet's SPI, wire order (0: not ESP).
    pub esp_spi: u32,
    /// A NAT keepalive (RFC 3948 §2.3: one 0xff byte on a port other than 500).
    pub keepalive: bool,
    /// An IKEv2 message's exchange type (RFC 7296 §3.1, `lb_common::ike::EXCHANGE_*`; 0: none).
    pub exchange: u8,
    /// An IKEv2 message's flags byte (`lb_common::ike::FLAG_RESPONSE`).
    pub ike_flags: u8,
}

/// The evidence in a client's packet (`Side::Forward`) or a backend's (`Side::Reverse`). A
/// client proves itself with an IKE responder SPI or a TCP acknowledgement; a backend's IKE
/// message with a responder SPI, or its TCP SYN-ACK (whose ISN + 1 the client must then
/// acknowledge), sets the proof to expect.
#[inline(always)]
pub fn read(ctx: &XdpContext, p: &Pkt, side: Side) -> Signal {
    if !p.first {
        return Signal::default();
    }
    match p.csum {
        Csum::Udp(udp) => udp_signal(ctx, udp, side, p.end),
        Csum::Tcp(tcp) => tcp_signal(ctx, tcp, side),
        Csum::None if p.proto == IPPROTO_ESP => esp_signal(ctx, p),
        Csum::None => Signal::default(),
    }
}

/// Plain ESP: its SPI, when the header is there (an SPI and a sequence number).
#[inline(always)]
fn esp_signal(ctx: &XdpContext, p: &Pkt) -> Signal {
    let spi = match ptr_at::<[[u8; 4]; 2]>(ctx, p.offset) {
        // SAFETY: bounds-checked just now.
        Ok(h) if p.offset + 8 <= p.end => unsafe { load32(&(*h)[0]) },
        _ => 0,
    };
    Signal {
        mid_session: true,
        esp_spi: spi,
        ..Signal::default()
    }
}

#[inline(always)]
fn udp_signal(ctx: &XdpContext, udp: *mut UdpHdr, side: Side, end: usize) -> Signal {
    // Bytes of the datagram after the UDP header (a scalar, only compared), and the payload
    // as a pointer off `udp` (what the verifier bounds-checks against the frame's end).
    let room = end.saturating_sub(udp as usize - ctx.data() + UdpHdr::LEN);
    let payload = udp as usize + UdpHdr::LEN;
    // SAFETY: `l4::classify` bounds-checked the UDP header.
    let port = unsafe {
        match side {
            Side::Forward => load16(&(*udp).dst),
            Side::Reverse => load16(&(*udp).src),
        }
    };
    let (ike, room) = if port == 500u16.to_be() {
        (payload, room)
    } else if room == 1 {
        // SAFETY (the read): bounds-checked in the same expression.
        let keepalive = payload < ctx.data_end() && unsafe { *(payload as *const u8) } == 0xff;
        return Signal {
            keepalive,
            ..Signal::default()
        };
    } else {
        if payload + 4 > ctx.data_end() || room < 4 {
            return Signal::default();
        }
        // SAFETY: bounds-checked just now.
        let spi = unsafe { load32(payload as *const [u8; 4]) };
        if spi != 0 {
            // ESP in UDP: an SPI and a sequence number at least.
            let esp = room >= 8;
            return Signal {
                mid_session: esp,
                esp_spi: if esp { spi } else { 0 },
                ..Signal::default()
            };
        }
        (payload + 4, room - 4)
    };
    if ike + IKE_HDR_LEN > ctx.data_end() || room < IKE_HDR_LEN {
        return Signal::default();
    }
    let hdr = ike as *const [[u8; 4]; IKE_HDR_LEN / 4];
    // SAFETY: bounds-checked just now.
    let (initiator, spi, version, exchange, ike_flags) = unsafe {
        (
            proof64(load32(&(*hdr)[0]), load32(&(*hdr)[1])),
            proof64(load32(&(*hdr)[2]), load32(&(*hdr)[3])),
            (*hdr)[4][1],
            (*hdr)[4][2],
            (*hdr)[4][3],
        )
    };
    // IKEv2 only (major version 2, RFC 7296 §3.1): whatever else a service port carries
    // (an echo service, IKEv1) proves nothing.
    if version >> 4 != 2 {
        return Signal::default();
    }
    Signal {
        proof: spi,
        mid_session: spi != 0,
        ike_init: spi == 0,
        ike_spi: initiator,
        exchange,
        ike_flags,
        ..Signal::default()
    }
}

#[inline(always)]
fn tcp_signal(ctx: &XdpContext, tcp: *mut TcpHdr, side: Side) -> Signal {
    let base = tcp as usize - ctx.data();
    // `l4::classify` checked the whole 20-byte header: sequence at 4, ack at 8, flags at 13.
    let Ok(h) = ptr_at::<[[u8; 4]; 4]>(ctx, base) else {
        return Signal::default();
    };
    // SAFETY: bounds-checked just now.
    let (seq, ack, flags) = unsafe { (load32(&(*h)[1]), load32(&(*h)[2]), (*h)[3][1]) };
    let proof = match side {
        Side::Forward if flags & TCP_ACK != 0 => u64::from(ack),
        Side::Reverse if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => {
            u64::from(u32::from_be(seq).wrapping_add(1).to_be())
        }
        _ => 0,
    };
    Signal {
        proof,
        ..Signal::default()
    }
}

/// The proof encoding of 8 header bytes loaded as two native words (`ProbationValue::proof`).
#[inline(always)]
fn proof64(lo: u32, hi: u32) -> u64 {
    (u64::from(hi) << 32) | u64::from(lo)
}
