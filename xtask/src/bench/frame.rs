//! The frames the benchmark sends and the bench maps' user-side layouts (mirrors of
//! `lb-ebpf/src/bench/mod.rs`), once for both address families (`family`).

use lb_common::csum;

use crate::family::Family;

/// Whole IPv4 frame, without FCS: 64 bytes on the wire with it, the smallest UDP frame class
/// and the usual packet-rate benchmark size.
pub const FRAME_LEN: usize = 60;
/// An IPv6 bulk frame: the IPv4 frame's 18 payload bytes behind the 20 bytes more of the
/// IPv6 header, 84 bytes on the wire.
pub const FRAME_LEN6: usize = FRAME_LEN + 20;
/// Payload bytes of a bulk frame (behind Ethernet + IPv4 + UDP: 42 bytes).
const PAYLOAD_LEN: usize = FRAME_LEN - 42;
/// UDP ports of the benchmark frames (the sink counts only these): bulk data is ESP in UDP
/// on 4500 (RFC 3948; what clients behind NAT send, Windows Always On VPN included), its
/// payload starting with a non-zero SPI; IKE messages go to 500.
pub const ESP_IN_UDP: u16 = 4500;
pub const IKE: u16 = 500;
/// SPI of the bulk frames (any non-zero value: zero would be the non-ESP marker of IKE). The
/// established clients' ESP carries it, so the data path learns it (SA steering).
const SPI: u32 = 0x1000_0001;
/// SPI of the ESP from new sources (`miss*`): one no established client sent, so its frames
/// are lost as a real unknown SA's would be, not steered.
pub const UNKNOWN_SPI: u32 = 0x2000_0002;

/// `BenchCfg::mode` values.
pub const MODE_FORWARD: u32 = 0;
pub const MODE_REVERSE: u32 = 1;

/// Value of `BENCH_CFG` (`lb-ebpf/src/bench/mod.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchCfg {
    pub mode: u32,
    pub clients: u32,
    /// First client's low word (over IPv4 its address), host order.
    pub base: u32,
    pub _pad: u32,
}
// SAFETY: #[repr(C)], four u32, no padding.
unsafe impl aya::Pod for BenchCfg {}

/// A frame and its header block for the stamp's template map (`Family::set_template`).
pub struct Template {
    /// Ethernet + IP + UDP headers and the 8 payload bytes the stamp rewrites (4..8) and
    /// whose template value the UDP checksum was computed with.
    pub block: Vec<u8>,
    pub frame: Vec<u8>,
}

/// Bytes of the Ethernet, IP and UDP headers of a frame of family `F`.
pub const fn headers<F: Family>() -> usize {
    14 + F::IP_HEADER_LEN + 8
}

/// A UDP frame between `port` and `port` (both directions of IKE and NAT-T use the same port
/// on each side) from `saddr` to `daddr`. The stamp writes the low 32-bit word of the source
/// (forward: the client; reverse: the backend) and, in reverse mode, of the destination (the
/// client): those words must be 0 here (`daddr`'s only in reverse), and the checksums are
/// computed over those zeros, so the stamp only adds what it writes. On 4500 the payload is
/// an ESP header (SPI, sequence number) and filler; on 500 an IKE header's first bytes and
/// filler (a mid-session message: its responder SPI, bytes 8–16, is filler, not 0).
pub fn template<F: Family>(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: F,
    daddr: F,
    port: u16,
) -> Template {
    template_spi(dst_mac, src_mac, saddr, daddr, port, SPI)
}

/// [`template`] with ESP (or initiator) SPI `spi`.
pub fn template_spi<F: Family>(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: F,
    daddr: F,
    port: u16,
    spi: u32,
) -> Template {
    let mut payload: Vec<u8> = (0..PAYLOAD_LEN).map(|i| i as u8).collect();
    payload[0..4].copy_from_slice(&spi.to_be_bytes());
    if port == ESP_IN_UDP {
        payload[4..8].copy_from_slice(&1u32.to_be_bytes());
    }
    // On 500: an IKE header's SPIs (RFC 7296 §3.1); any non-zero bytes do for the data path.
    build(dst_mac, src_mac, saddr, daddr, port, &payload)
}

/// An IKEv2 INFORMATIONAL request (a DPD, the commonest IKE message of an established client)
/// to UDP 500: a bare 28-byte IKE header as in [`ike_sa_init_template`], with a responder SPI
/// (mid-session) and exchange type 37, so the data path reads it as IKEv2 and learns its SA
/// (SA steering). The stamp writes its frame counter into the initiator SPI's low word, so
/// every frame names a new IKE SA: the learning's worst case, a lookup miss and an insert into
/// `IKE_SAS`. ([`template`]'s 18-byte payload on 500 holds no whole IKE header: the data path
/// reads nothing of it.)
pub fn ike_informational_template<F: Family>(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: F,
    daddr: F,
) -> Template {
    // A mid-session message: a responder SPI.
    let ike = ike_header(0x5151_5151_5151_5151, 37, 2);
    build(dst_mac, src_mac, saddr, daddr, IKE, &ike)
}

/// Bytes of a bare IKE header (RFC 7296 §3.1).
pub const IKE_HDR_LEN: usize = 28;

/// A spoofed IKE_SA_INIT request to UDP 500: a bare 28-byte IKE header (no payloads; the data
/// path reads only the header) with a non-zero initiator SPI — whose low word the stamp
/// rewrites with its frame counter, so every frame is a new SA — and responder SPI 0, as in
/// the first message of every session. 70 bytes over IPv4 (74 on the wire), 90 over IPv6.
pub fn ike_sa_init_template<F: Family>(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: F,
    daddr: F,
) -> Template {
    // The first message of a session: responder SPI 0, message id 0.
    let ike = ike_header(0, 34, 0);
    build(dst_mac, src_mac, saddr, daddr, IKE, &ike)
}

/// A bare IKEv2 header (RFC 7296 §3.1) of an initiator's request: initiator SPI [`SPI`] (the
/// stamp writes its frame counter into its low word), `responder_spi`, no next payload,
/// version 2.0, `exchange` type, flags "initiator", `message_id`, length 28.
fn ike_header(responder_spi: u64, exchange: u8, message_id: u32) -> [u8; IKE_HDR_LEN] {
    let mut ike = [0u8; IKE_HDR_LEN];
    ike[0..4].copy_from_slice(&SPI.to_be_bytes());
    ike[4..8].copy_from_slice(&1u32.to_be_bytes());
    ike[8..16].copy_from_slice(&responder_spi.to_be_bytes());
    ike[17] = 0x20;
    ike[18] = exchange;
    ike[19] = 0x08;
    ike[20..24].copy_from_slice(&message_id.to_be_bytes());
    ike[24..28].copy_from_slice(&(IKE_HDR_LEN as u32).to_be_bytes());
    ike
}

fn build<F: Family>(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: F,
    daddr: F,
    port: u16,
    payload: &[u8],
) -> Template {
    assert!(payload.len() >= 8, "the stamp rewrites payload bytes 4..8");
    assert_eq!(
        low_word(saddr),
        0,
        "the stamp writes the source's low word: 0 in the template"
    );
    let udp = 14 + F::IP_HEADER_LEN;
    let udp_len = (8 + payload.len()) as u16;
    let mut f = vec![0u8; udp + usize::from(udp_len)];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&F::ETHER_TYPE.to_be_bytes());
    F::ip_header(&mut f[14..udp], saddr, daddr, udp_len);
    f[udp..udp + 2].copy_from_slice(&port.to_be_bytes());
    f[udp + 2..udp + 4].copy_from_slice(&port.to_be_bytes());
    f[udp + 4..udp + 6].copy_from_slice(&udp_len.to_be_bytes());
    f[udp + 8..].copy_from_slice(payload);
    // Pseudo-header with the template's addresses, then header (checksum 0) + payload.
    let pseudo = F::pseudo_header(saddr, daddr, udp_len);
    let c = match !csum::fold(csum::sum_bytes(&f[udp..], csum::sum_bytes(&pseudo, 0))) {
        0 => 0xffff,
        c => c,
    };
    f[udp + 6..udp + 8].copy_from_slice(&c.to_ne_bytes());
    Template {
        block: f[..headers::<F>() + 8].to_vec(),
        frame: f,
    }
}

fn low_word<F: Family>(a: F) -> u32 {
    let o = match a.into() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    u32::from_be_bytes([
        o[o.len() - 4],
        o[o.len() - 3],
        o[o.len() - 2],
        o[o.len() - 1],
    ])
}

/// A concrete frame of `t` from the source whose low word is `word` (wire order), checksums
/// updated the way the stamp does it (for runs without the stamp).
pub fn with_source<F: Family>(t: &Template, word: u32) -> Vec<u8> {
    let mut f = t.frame.clone();
    F::stamp_source(&mut f, word);
    f
}

/// `struct xdp_md` for `BPF_PROG_TEST_RUN`'s `ctx_in`: the frame arrives on `ifindex` (looked
/// up in the calling thread's namespace). `data_end` must equal the frame size.
pub fn xdp_md(ifindex: u32, len: usize) -> [u8; 24] {
    let words = [0u32, len as u32, 0, ifindex, 0, 0];
    let mut out = [0u8; 24];
    for (o, w) in out.as_chunks_mut::<4>().0.iter_mut().zip(words) {
        *o = w.to_ne_bytes();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::family::{wire_word, Family};

    /// The frame's IP checksum (IPv4) and UDP checksum verify, recomputed from scratch.
    fn verify<F: Family>(f: &[u8], saddr: F, daddr: F) {
        let udp = 14 + F::IP_HEADER_LEN;
        if F::IP_HEADER_LEN == 20 {
            assert_eq!(csum::checksum(&f[14..udp]), 0, "IPv4 header checksum");
        }
        let pseudo = F::pseudo_header(saddr, daddr, (f.len() - udp) as u16);
        let sum = csum::sum_bytes(&f[udp..], csum::sum_bytes(&pseudo, 0));
        assert_eq!(csum::fold(sum), 0xffff, "UDP checksum");
    }

    /// Both templates of family `F` verify, and so do they after writing a client's low word
    /// the way the stamp does (incrementally).
    fn templates_verify<F: Family>(vip: F, prefix: F, client: F) {
        let hdrs = headers::<F>();
        for t in [
            template::<F>([2; 6], [4; 6], prefix, vip, ESP_IN_UDP),
            ike_sa_init_template::<F>([2; 6], [4; 6], prefix, vip),
        ] {
            assert_eq!(t.block.len(), hdrs + 8);
            verify(&t.frame, prefix, vip);
            verify(
                &with_source::<F>(&t, wire_word(0x6440_0000, 7)),
                client,
                vip,
            );
        }
        let t = ike_sa_init_template::<F>([2; 6], [4; 6], prefix, vip);
        assert_eq!(t.frame.len(), hdrs + IKE_HDR_LEN);
        assert_eq!(&t.frame[hdrs + 8..hdrs + 16], &[0; 8], "responder SPI 0");
    }

    #[test]
    fn ipv4_templates() {
        let vip = Ipv4Addr::new(203, 0, 113, 10);
        templates_verify(vip, Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(100, 64, 0, 7));
        let t = template([2; 6], [4; 6], Ipv4Addr::UNSPECIFIED, vip, ESP_IN_UDP);
        assert_eq!(t.frame.len(), FRAME_LEN);
    }

    #[test]
    fn ipv6_templates() {
        let vip: Ipv6Addr = "2001:db8:ffff::10".parse().unwrap();
        let prefix: Ipv6Addr = "2001:db8:c::".parse().unwrap();
        templates_verify(vip, prefix, "2001:db8:c::6440:7".parse().unwrap());
        let t = template([2; 6], [4; 6], prefix, vip, ESP_IN_UDP);
        assert_eq!(t.frame.len(), FRAME_LEN6);
    }
}
