//! The frames the benchmark sends and the bench maps' user-side layouts (mirrors of
//! `lb-ebpf/src/bench/mod.rs`).

use std::net::{Ipv4Addr, Ipv6Addr};

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
    /// IPv6 frames: the block for `BENCH_TEMPLATE6` (`bench_stamp6`), and `block` is unused.
    pub block6: Option<[u8; 72]>,
    pub frame: Vec<u8>,
}

/// Bytes of the stamped IPv6 header block (Ethernet + IPv6 + UDP).
pub const HEADERS6: usize = 62;
/// An IPv6 bulk frame: the IPv4 frame's 18 payload bytes behind the 20 bytes more of the
/// IPv6 header, 84 bytes on the wire.
pub const FRAME_LEN6: usize = HEADERS6 + FRAME_LEN - HEADERS;

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
    Template {
        block,
        block6: None,
        frame: f,
    }
}

/// [`template`] over IPv6, from `saddr` to `daddr`: the stamp writes the low 32-bit word of
/// the source (forward: the client; reverse: the backend) and, in reverse mode, of the
/// destination (the client), so those words must be 0 here (`daddr`'s only in reverse).
pub fn template6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: Ipv6Addr,
    daddr: Ipv6Addr,
    port: u16,
) -> Template {
    let mut payload: Vec<u8> = (0..FRAME_LEN - HEADERS).map(|i| i as u8).collect();
    payload[0..4].copy_from_slice(&SPI.to_be_bytes());
    if port == ESP_IN_UDP {
        payload[4..8].copy_from_slice(&1u32.to_be_bytes());
    }
    build6(dst_mac, src_mac, saddr, daddr, port, &payload)
}

/// [`ike_sa_init_template`] over IPv6 (90 bytes, 94 on the wire).
pub fn ike_sa_init_template6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: Ipv6Addr,
    daddr: Ipv6Addr,
) -> Template {
    let t = ike_sa_init_template(dst_mac, src_mac, Ipv4Addr::UNSPECIFIED);
    build6(dst_mac, src_mac, saddr, daddr, IKE, &t.frame[HEADERS..])
}

fn build6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: Ipv6Addr,
    daddr: Ipv6Addr,
    port: u16,
    payload: &[u8],
) -> Template {
    assert!(payload.len() >= 8, "the stamp rewrites payload bytes 4..8");
    assert_eq!(
        saddr.octets()[12..],
        [0; 4],
        "the stamp writes the source's low word: 0 in the template"
    );
    let len = HEADERS6 + payload.len();
    let udp_len = (8 + payload.len()) as u16;
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    {
        let ip = &mut f[14..54];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
        ip[6] = 17; // UDP
        ip[7] = 64; // hop limit
        ip[8..24].copy_from_slice(&saddr.octets());
        ip[24..40].copy_from_slice(&daddr.octets());
    }
    f[54..56].copy_from_slice(&port.to_be_bytes());
    f[56..58].copy_from_slice(&port.to_be_bytes());
    f[58..60].copy_from_slice(&udp_len.to_be_bytes());
    f[62..].copy_from_slice(payload);
    let c = udp6_checksum(&f);
    f[60..62].copy_from_slice(&c.to_ne_bytes());
    let mut block6 = [0u8; 72];
    block6[..HEADERS6 + 8].copy_from_slice(&f[..HEADERS6 + 8]);
    Template {
        block: [0; 64],
        block6: Some(block6),
        frame: f,
    }
}

/// The UDP checksum of an IPv6 frame (RFC 8200 §8.1 pseudo-header), its own field taken as 0.
fn udp6_checksum(f: &[u8]) -> u16 {
    let mut pseudo = [0u8; 40];
    pseudo[0..32].copy_from_slice(&f[22..54]);
    pseudo[34..36].copy_from_slice(&f[58..60]);
    pseudo[39] = 17;
    let mut udp = f[54..].to_vec();
    udp[6..8].fill(0);
    match !csum::fold(csum::sum_bytes(&udp, csum::sum_bytes(&pseudo, 0))) {
        0 => 0xffff,
        c => c,
    }
}

/// Wire-order words of client `i` of an IPv6 client set: the /96 `prefix`, then the low word
/// `base + i` (host order `base`), as `bench_stamp6` writes it.
pub fn client6_wire(prefix: Ipv6Addr, base: u32, i: u32) -> [u32; 4] {
    let o = prefix.octets();
    let w = |k: usize| u32::from_ne_bytes([o[4 * k], o[4 * k + 1], o[4 * k + 2], o[4 * k + 3]]);
    [w(0), w(1), w(2), client_wire(base, i)]
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

    /// The IPv6 templates' UDP checksums verify, and so do they after writing a client's low
    /// word the way `bench_stamp6` does (incrementally).
    #[test]
    fn template6_checksums() {
        let vip: Ipv6Addr = "2001:db8:ffff::10".parse().unwrap();
        let prefix: Ipv6Addr = "2001:db8:c::".parse().unwrap();
        for t in [
            template6([2; 6], [4; 6], prefix, vip, ESP_IN_UDP),
            ike_sa_init_template6([2; 6], [4; 6], prefix, vip),
        ] {
            let f = &t.frame;
            assert_eq!(f[60..62], udp6_checksum(f).to_ne_bytes());
            let mut g = f.clone();
            let client = client6_wire(prefix, 0x6440_0000, 7)[3];
            g[34..38].copy_from_slice(&client.to_ne_bytes());
            let c = csum::udp_replace32(u16::from_ne_bytes([f[60], f[61]]), 0, client);
            g[60..62].copy_from_slice(&c.to_ne_bytes());
            assert_eq!(g[60..62], udp6_checksum(&g).to_ne_bytes());
        }
        let t = template6([2; 6], [4; 6], prefix, vip, ESP_IN_UDP);
        assert_eq!(t.frame.len(), FRAME_LEN6);
        let t = ike_sa_init_template6([2; 6], [4; 6], prefix, vip);
        assert_eq!(&t.frame[HEADERS6 + 8..HEADERS6 + 16], &[0; 8], "responder SPI 0");
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
