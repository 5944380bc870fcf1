//! The frames the benchmark sends and the bench maps' user-side layouts (mirrors of
//! `lb-ebpf/src/bench/mod.rs`).

use std::net::Ipv4Addr;

use lb_common::csum;

/// Bytes of the stamped header block (Ethernet + IPv4 + UDP).
pub const HEADERS: usize = 42;
/// Whole frame, without FCS: 64 bytes on the wire with it, the smallest UDP frame class and
/// the usual packet-rate benchmark size.
pub const FRAME_LEN: usize = 60;
/// UDP ports of the benchmark frames (the sink counts only these): bulk data is ESP in UDP
/// on 4500 (RFC 3948; what clients behind NAT send, Windows Always On VPN included), its
/// payload starting with a non-zero SPI; IKE messages go to 500.
pub const ESP_IN_UDP: u16 = 4500;
pub const IKE: u16 = 500;
/// SPI of the bulk frames (any non-zero value: zero would be the non-ESP marker of IKE).
const SPI: u32 = 0x1000_0001;

/// `BenchCfg::mode` values.
pub const MODE_FORWARD: u32 = 0;
pub const MODE_REVERSE: u32 = 1;

/// Value of `BENCH_CFG` (`lb-ebpf/src/bench/mod.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchCfg {
    pub mode: u32,
    pub clients: u32,
    /// First client address, host order.
    pub base: u32,
    pub _pad: u32,
}
// SAFETY: #[repr(C)], four u32, no padding.
unsafe impl aya::Pod for BenchCfg {}

/// The template block and a frame built from it (addresses 0 where the stamp writes them).
pub struct Template {
    pub block: [u8; 64],
    pub frame: Vec<u8>,
}

/// Builds the header block of a UDP frame between `port` and `port` (both directions of IKE
/// and NAT-T use the same port on each side): `daddr` is fixed (`None` = left 0 for the
/// stamp, reverse mode); the source is always 0 in the template. Checksums are computed over
/// those zeros, so the stamp only adds the addresses it writes. On 4500 the payload is an ESP
/// header (SPI, sequence number) and filler; on 500 an IKE header's first bytes and filler
/// (a mid-session message: its responder SPI, bytes 8–16, is filler, not 0).
pub fn template(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    daddr: Option<Ipv4Addr>,
    port: u16,
) -> Template {
    let mut payload: Vec<u8> = (0..FRAME_LEN - HEADERS).map(|i| i as u8).collect();
    payload[0..4].copy_from_slice(&SPI.to_be_bytes());
    if port == ESP_IN_UDP {
        payload[4..8].copy_from_slice(&1u32.to_be_bytes());
    }
    // On 500: an IKE header's SPIs (RFC 7296 §3.1); any non-zero bytes do for the data path.
    build(dst_mac, src_mac, daddr, port, &payload)
}

/// Bytes of a bare IKE header (RFC 7296 §3.1).
pub const IKE_HDR_LEN: usize = 28;

/// A spoofed IKE_SA_INIT request to UDP 500: a bare 28-byte IKE header (no payloads; the data
/// path reads only the header) with a non-zero initiator SPI — whose low word the stamp
/// rewrites with its frame counter, so every frame is a new SA — and responder SPI 0, as in
/// the first message of every session. 70 bytes (74 on the wire).
pub fn ike_sa_init_template(dst_mac: [u8; 6], src_mac: [u8; 6], daddr: Ipv4Addr) -> Template {
    let mut ike = [0u8; IKE_HDR_LEN];
    ike[0..4].copy_from_slice(&SPI.to_be_bytes()); // initiator SPI (low word: stamp's counter)
    ike[4..8].copy_from_slice(&1u32.to_be_bytes());
    // 8..16: responder SPI 0; next payload 0 (none: a bare header).
    ike[17] = 0x20; // version 2.0
    ike[18] = 34; // exchange type IKE_SA_INIT
    ike[19] = 0x08; // flags: initiator
    // 20..24: message id 0.
    ike[24..28].copy_from_slice(&(IKE_HDR_LEN as u32).to_be_bytes());
    build(dst_mac, src_mac, Some(daddr), IKE, &ike)
}

fn build(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    daddr: Option<Ipv4Addr>,
    port: u16,
    payload: &[u8],
) -> Template {
    assert!(payload.len() >= 8, "the stamp rewrites payload bytes 4..8");
    let len = HEADERS + payload.len();
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let udp_len = ip_len - 20;
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[8] = 64; // TTL
        ip[9] = 17; // UDP
        if let Some(d) = daddr {
            ip[16..20].copy_from_slice(&d.octets());
        }
        let c = csum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
    }
    {
        f[34..36].copy_from_slice(&port.to_be_bytes());
        f[36..38].copy_from_slice(&port.to_be_bytes());
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        f[42..].copy_from_slice(payload);
        // Pseudo-header (RFC 768) with the template's addresses, then header + payload.
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&f[26..30]);
        pseudo[4..8].copy_from_slice(&f[30..34]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
        let sum = csum::sum_bytes(&f[34..], csum::sum_bytes(&pseudo, 0));
        let c = match !csum::fold(sum) {
            0 => 0xffff,
            c => c,
        };
        f[40..42].copy_from_slice(&c.to_ne_bytes());
    }
    // Headers, then the 8 payload bytes the stamp rewrites (4..8) and whose template value
    // the UDP checksum was computed with.
    let mut block = [0u8; 64];
    block[..HEADERS + 8].copy_from_slice(&f[..HEADERS + 8]);
    Template { block, frame: f }
}

/// A concrete frame of `t` from client `client` (wire order), checksums updated the way the
/// stamp does it (for runs without the stamp).
pub fn with_source(t: &Template, client: u32) -> Vec<u8> {
    let mut f = t.frame.clone();
    let ip_c = u16::from_ne_bytes([f[24], f[25]]);
    let udp_c = u16::from_ne_bytes([f[40], f[41]]);
    f[26..30].copy_from_slice(&client.to_ne_bytes());
    f[24..26].copy_from_slice(&csum::replace32(ip_c, 0, client).to_ne_bytes());
    f[40..42].copy_from_slice(&csum::udp_replace32(udp_c, 0, client).to_ne_bytes());
    f
}

/// `struct xdp_md` for `BPF_PROG_TEST_RUN`'s `ctx_in`: the frame arrives on `ifindex` (looked
/// up in the calling thread's namespace). `data_end` must equal the frame size.
pub fn xdp_md(ifindex: u32, len: usize) -> [u8; 24] {
    let words = [0u32, len as u32, 0, ifindex, 0, 0];
    let mut out = [0u8; 24];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// Host-order client address `i` from `base`, as a wire-order word (`lb-common` byte order).
pub fn client_wire(base: u32, i: u32) -> u32 {
    u32::from_ne_bytes(base.wrapping_add(i).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template's checksums verify, and so do they after adding an address the way the
    /// stamp does (incrementally).
    #[test]
    fn ike_sa_init_checksums() {
        let t = ike_sa_init_template([2; 6], [4; 6], Ipv4Addr::new(203, 0, 113, 10));
        assert_eq!(t.frame.len(), HEADERS + IKE_HDR_LEN);
        assert_eq!(&t.frame[HEADERS + 8..HEADERS + 16], &[0; 8], "responder SPI 0");
        let f = with_source(&t, client_wire(0x2000_0000, 7));
        assert_eq!(csum::checksum(&f[14..34]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&f[26..34]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&f[38..40]);
        assert_eq!(csum::fold(csum::sum_bytes(&f[34..], csum::sum_bytes(&pseudo, 0))), 0xffff);
    }

    #[test]
    fn template_checksums() {
        let t = template([2; 6], [4; 6], Some(Ipv4Addr::new(203, 0, 113, 10)), ESP_IN_UDP);
        assert_eq!(csum::checksum(&t.frame[14..34]), 0);
        let f = with_source(&t, client_wire(0x2000_0000, 7));
        assert_eq!(csum::checksum(&f[14..34]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&f[26..34]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&f[38..40]);
        assert_eq!(csum::fold(csum::sum_bytes(&f[34..], csum::sum_bytes(&pseudo, 0))), 0xffff);
    }
}
