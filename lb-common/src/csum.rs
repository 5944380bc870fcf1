//! Internet checksum arithmetic (RFC 1071) and incremental update (RFC 1624, eqn. 3:
//! `HC' = ~(~HC + ~m + m')`), shared by the XDP program and the host tests that check it
//! against from-scratch computation.
//!
//! All values are in *wire order* as loaded with native byte order (see the crate docs): the
//! one's-complement sum is byte-order independent (RFC 1071 §2(B)), so folding native-endian
//! loads of big-endian words gives the right checksum bytes when stored back natively.

/// Folds a 32-bit (or wider, ≤ 2^16 additions) one's-complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds a 32-bit word's two halves to an accumulator.
#[inline(always)]
fn add32(acc: u32, w: u32) -> u32 {
    acc + (w & 0xffff) + (w >> 16)
}

/// New checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// New checksum after a 32-bit field (an IPv4 address) changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum = add32(add32(u32::from(!check), !old), new);
    !fold(sum)
}

/// New checksum after a 128-bit field (an IPv6 address) changed from `old` to `new`.
#[inline(always)]
pub fn replace128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    let mut sum = u32::from(!check);
    let mut i = 0;
    while i < 4 {
        sum = add32(add32(sum, !old[i]), new[i]);
        i += 1;
    }
    !fold(sum)
}

/// UDP flavour of [`replace32`]: a zero checksum means "none" over IPv4 (RFC 768) and stays
/// zero; a computed zero is sent as 0xffff.
#[inline(always)]
pub fn udp_replace32(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace32(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// UDP flavour of [`replace128`]: a computed zero is sent as 0xffff. IPv6 UDP checksums are
/// mandatory (RFC 8200 §8.1), so a zero one is invalid — except for the tunnels of RFC 6935 —
/// and stays zero: a load balancer never turns a datagram the receiver would refuse into one
/// it accepts (nor the reverse).
#[inline(always)]
pub fn udp_replace128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace128(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// Whether an IPv4 header without options (IHL 5) carries a right header checksum (RFC 791
/// §3.1, RFC 1812 §5.2.2): the one's-complement sum of its ten 16-bit words, the checksum
/// included, is 0xffff. `w` is the header as five 32-bit words loaded natively (the sum is
/// byte-order independent, as above). Five additions in 64 bits and the folds: the data path
/// verifies a fixed 20 bytes this way, with no loop and no helper call (a header with options
/// is the kernel's, which verifies it itself).
#[inline(always)]
pub fn ipv4_header_ok(w: &[u32; 5]) -> bool {
    let s = u64::from(w[0]) + u64::from(w[1]) + u64::from(w[2]) + u64::from(w[3]) + u64::from(w[4]);
    // At most 5 × (2^32 − 1): two folds of the carry bring it below 2^32.
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    fold(s as u32) == 0xffff
}

/// One's-complement sum of a byte slice as 16-bit words read in native order; with
/// [`fold`] and `!` it gives the checksum of the slice (host tests and builders).
pub fn sum_bytes(bytes: &[u8], mut acc: u32) -> u32 {
    let (chunks, rest) = bytes.as_chunks::<2>();
    for c in chunks {
        acc += u32::from(u16::from_ne_bytes(*c));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [b] = rest {
        acc += u32::from(u16::from_ne_bytes([*b, 0]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The checksum of `bytes` from scratch (stored natively into the header field).
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum_bytes(bytes, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator so the tests cover many values without a dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (self.0 >> 33) as u32
        }
    }

    fn ipv4_header(src: u32, dst: u32, ttl: u8) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&1500u16.to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        h[8] = ttl;
        h[9] = 17;
        h[12..16].copy_from_slice(&src.to_ne_bytes());
        h[16..20].copy_from_slice(&dst.to_ne_bytes());
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        h
    }

    fn field(h: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([h[at], h[at + 1]])
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2 (big-endian view).
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let sum = fold(sum_bytes(&bytes, 0));
        assert_eq!(u16::from_be_bytes(sum.to_ne_bytes()), 0xddf2);
    }

    #[test]
    fn header_with_its_checksum_sums_to_zero() {
        let h = ipv4_header(0x0100_000a, 0x0a71_00cb, 64);
        assert_eq!(checksum(&h), 0);
    }

    fn words5(h: &[u8; 20]) -> [u32; 5] {
        core::array::from_fn(|i| u32::from_ne_bytes(h[i * 4..i * 4 + 4].try_into().unwrap()))
    }

    #[test]
    fn ipv4_header_ok_agrees_with_the_checksum_from_scratch() {
        let mut rng = Lcg(3);
        for _ in 0..20_000 {
            let mut h = ipv4_header(rng.next(), rng.next(), rng.next() as u8);
            // Random identification and fragment words too: every header word varies.
            h[4..8].copy_from_slice(&rng.next().to_ne_bytes());
            h[10] = 0;
            h[11] = 0;
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            assert!(ipv4_header_ok(&words5(&h)), "{h:02x?}");
            // Any other checksum value is wrong (0x0000 and 0xffff are one value, RFC 1071,
            // but a header whose sum is +0 has no version, so only the computed one passes).
            let mut bad = h;
            let wrong = c.wrapping_add(1 + (rng.next() % 0xfffe) as u16);
            bad[10..12].copy_from_slice(&wrong.to_ne_bytes());
            let equivalent = (c == 0 && wrong == 0xffff) || (c == 0xffff && wrong == 0);
            assert_eq!(
                ipv4_header_ok(&words5(&bad)),
                equivalent,
                "{c:#x} -> {wrong:#x}"
            );
            // One flipped bit anywhere else is caught too.
            let bit = (rng.next() % 160) as usize;
            if bit / 8 != 10 && bit / 8 != 11 {
                let mut flipped = h;
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(!ipv4_header_ok(&words5(&flipped)));
            }
        }
        // The reviewer's frame: 45000014 12340000 4032 023f c6336c05 cb00710a (wrong).
        let bad = [
            0x45, 0, 0, 0x14, 0x12, 0x34, 0, 0, 0x40, 0x32, 0x02, 0x3f, 0xc6, 0x33, 0x6c, 0x05,
            0xcb, 0, 0x71, 0x0a,
        ];
        assert!(!ipv4_header_ok(&words5(&bad)));
        assert_eq!(checksum(&bad) == 0, ipv4_header_ok(&words5(&bad)));
        // All-ones words: the largest sum the folds meet.
        assert!(ipv4_header_ok(&[u32::MAX; 5]));
    }

    #[test]
    fn replace32_matches_from_scratch_for_address_changes() {
        let mut rng = Lcg(1);
        for _ in 0..10_000 {
            let (src, old, new) = (rng.next(), rng.next(), rng.next());
            let before = ipv4_header(src, old, 64);
            let after = ipv4_header(src, new, 64);
            let incremental = replace32(field(&before, 10), old, new);
            assert_eq!(incremental, field(&after, 10), "{old:#x} -> {new:#x}");
        }
    }

    #[test]
    fn replace16_matches_from_scratch_for_ttl_decrement() {
        for ttl in 2..=255u8 {
            let before = ipv4_header(0x0102_0304, 0x0506_0708, ttl);
            let after = ipv4_header(0x0102_0304, 0x0506_0708, ttl - 1);
            // TTL shares its 16-bit word with the protocol byte.
            let old = field(&before, 8);
            let new = field(&after, 8);
            assert_eq!(replace16(field(&before, 10), old, new), field(&after, 10));
        }
    }

    #[test]
    fn replace128_matches_from_scratch() {
        let mut rng = Lcg(7);
        for _ in 0..2_000 {
            let mut buf = [0u8; 40];
            for b in buf.iter_mut() {
                *b = rng.next() as u8;
            }
            let old: [u32; 4] = core::array::from_fn(|i| {
                u32::from_ne_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap())
            });
            let new: [u32; 4] = core::array::from_fn(|_| rng.next());
            let before = checksum(&buf);
            let mut changed = buf;
            for (i, w) in new.iter().enumerate() {
                changed[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let expected = checksum(&changed);
            let got = replace128(before, &old, &new);
            // 0x0000 and 0xffff are the same one's-complement value.
            assert!(got == expected || (got ^ expected) == 0xffff && (got == 0 || expected == 0));
        }
    }

    #[test]
    fn udp_replace128_keeps_zero_and_sends_computed_zero_as_ffff() {
        let old = [1, 2, 3, 4];
        assert_eq!(udp_replace128(0, &old, &[5, 6, 7, 8]), 0);
        // `new` chosen so that the one's-complement sum comes out as 0xffff (result 0).
        let check = 0x1234u16;
        let target = 0xffffu32 - u32::from(!check);
        let zero = [0, 0, 0, target];
        assert_eq!(replace128(check, &[0; 4], &zero), 0);
        assert_eq!(udp_replace128(check, &[0; 4], &zero), 0xffff);
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_computed_zero_becomes_ffff() {
        assert_eq!(udp_replace32(0, 1, 2), 0);
        // Find a change whose result is 0 and check it is mapped to 0xffff.
        let check = 0x1234u16;
        let old = 0u32;
        // Choose new so that ~check + new folds to 0xffff, i.e. result 0.
        let target = 0xffffu32 - u32::from(!check);
        assert_eq!(replace32(check, old, target), 0);
        assert_eq!(udp_replace32(check, old, target), 0xffff);
    }
}
