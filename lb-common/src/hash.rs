//! The client hash, and the ring slot it picks: `slot = ring_slot(client_hash(addr, seed),
//! ring_size)`.
//!
//! MurmurHash3 (x86_32) over the address words as they sit in the header, so the XDP program
//! hashes raw header words and the daemon (`lb-ctl lookup`, tests) gets the same slot from
//! `u32::from_ne_bytes(octets)`. Two ikelb nodes with the same seed and backends therefore
//! pick the same backend for a client — what makes scale-out behind ECMP stateless.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The Maglev slot of a client hash in a table of `size` slots: `hash × size / 2^32`, a
/// multiply and a shift where `hash % size` is a division (Lemire, "A fast alternative to the
/// modulo reduction", 2016). Each slot gets ⌊2^32/size⌋ or ⌈2^32/size⌉ of the hash values, as
/// with the modulo. On the per-packet path the division was the one long-latency instruction
/// on the way to the ring read (≈ 3 ns of dependency here); every side that computes a slot
/// (the data path, the daemon's sweep and `lookup`, the tests) calls this.
#[inline(always)]
pub fn ring_slot(hash: u32, size: u32) -> u32 {
    ((u64::from(hash) * u64::from(size)) >> 32) as u32
}

/// Hash of an IPv4 client address (wire order word).
#[inline(always)]
pub fn client_hash_v4(addr: u32, seed: u32) -> u32 {
    fmix(mix(seed, addr) ^ 4)
}

/// Hash of an IPv6 client address (wire order words).
#[inline(always)]
pub fn client_hash_v6(addr: &[u32; 4], seed: u32) -> u32 {
    let h = mix(mix(mix(mix(seed, addr[0]), addr[1]), addr[2]), addr[3]);
    fmix(h ^ 16)
}

/// General-purpose MurmurHash3 over bytes, for the Maglev permutation of a backend
/// (host side only; not on the per-packet path).
pub fn murmur3(bytes: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let (chunks, rest) = bytes.as_chunks::<4>();
    for c in chunks {
        h = mix(h, u32::from_le_bytes(*c));
    }
    if !rest.is_empty() {
        let mut k = 0u32;
        for (i, b) in rest.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    fmix(h ^ bytes.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of MurmurHash3_x86_32 (Appleby's smhasher test vectors).
    #[test]
    fn murmur3_matches_reference_vectors() {
        assert_eq!(murmur3(b"", 0), 0);
        assert_eq!(murmur3(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3(&[0xff, 0xff, 0xff, 0xff], 0), 0x7629_3b50);
        assert_eq!(murmur3(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
        assert_eq!(murmur3(&[0x21, 0x43, 0x65, 0x87], 0x5082_edee), 0x2362_f9de);
        assert_eq!(murmur3(&[0x21, 0x43, 0x65], 0), 0x7e4a_8634);
        assert_eq!(murmur3(b"Hello, world!", 1234), 0xfaf6_cdb3);
    }

    #[test]
    fn client_hash_is_murmur3_of_the_wire_bytes() {
        let octets = [198u8, 51, 100, 7];
        let word = u32::from_ne_bytes(octets);
        assert_eq!(
            client_hash_v4(word, 0x5eed),
            murmur3(&word.to_le_bytes(), 0x5eed)
        );
        let v6: [u32; 4] = [1, 2, 3, 0xdead_beef];
        let mut bytes = [0u8; 16];
        for (i, w) in v6.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        assert_eq!(client_hash_v6(&v6, 7), murmur3(&bytes, 7));
    }

    /// Every slot of a prime-sized table gets ⌊2^32/m⌋ or ⌈2^32/m⌉ hash values: slot
    /// boundaries sit where `ring_slot` steps, and the first and last hash values map to the
    /// first and last slot.
    #[test]
    fn ring_slot_spreads_the_hash_range_evenly() {
        for m in [1u32, 2, 251, 65_537, 131_071, 1 << 20] {
            assert_eq!(ring_slot(0, m), 0);
            assert_eq!(ring_slot(u32::MAX, m), m - 1);
            let lo = (1u64 << 32) / u64::from(m);
            // First hash of slot s is ⌈s·2^32/m⌉; check a spread of slots.
            let first = |s: u64| (s << 32).div_ceil(u64::from(m));
            for s in (0..u64::from(m)).step_by((m as usize / 97).max(1)) {
                let (a, b) = (first(s), first(s + 1));
                let width = b - a;
                assert!(
                    width == lo || width == lo + 1,
                    "m {m} slot {s}: {width} values"
                );
                assert_eq!(ring_slot(a as u32, m) as u64, s, "m {m}: first of slot {s}");
                assert_eq!(
                    ring_slot((b - 1) as u32, m) as u64,
                    s,
                    "m {m}: last of slot {s}"
                );
            }
        }
    }

    #[test]
    fn seed_changes_the_hash() {
        assert_ne!(
            client_hash_v4(0x0a00_0001, 1),
            client_hash_v4(0x0a00_0001, 2)
        );
    }
}
