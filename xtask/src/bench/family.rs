//! What differs between IPv4 and IPv6 in the benchmark, and nothing else.
//!
//! [`Family`] is implemented by `Ipv4Addr` and `Ipv6Addr` themselves, as the data path has one
//! `Family` for its headers, keys and maps (`lb-ebpf/src/family.rs`) and the tests one for
//! their frames and sockets (`tests/src/family.rs`). It holds the addresses the benchmark
//! uses, the persistence key and client hash, the IP header of a frame and its pseudo-header,
//! and the names of the bench programs and maps. Every row, rig and check above it — the
//! program-cost rows (`progcost`), the closed loop (`closed_loop`), established clients
//! (`lb::establish`), the frames (`frame`) — is written once.
//!
//! A set of clients is a [`Clients`]: a prefix and a range of 32-bit indices. The stamp writes
//! `base + i` into the low word of the source address (the whole address over IPv4, whose
//! prefix is therefore 0.0.0.0), so both families' stamps cost the same and one `BenchCfg`
//! drives either.

use std::{
    fmt::{Debug, Display},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{
    maps::{Array, MapData},
    Ebpf, Pod,
};
use lb_common::{
    csum,
    hash::{client_hash_v4, client_hash_v6},
    maps, PersistKeyV4, PersistKeyV6,
};

use crate::lb::HASH_SEED;

/// Clients `prefix` + (`base` … `base + n − 1`): the low 32-bit word of each address is
/// `base + i` (host order), the rest is `prefix`'s.
#[derive(Clone, Copy, Debug)]
pub struct Clients<A> {
    pub prefix: A,
    pub base: u32,
}

/// First low word of the established clients (100.64.0.0, CGNAT space, over IPv4), in the
/// program cost's hit rows and in the closed loop.
pub const ESTABLISHED_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);

/// One address family (module docs).
pub trait Family: Copy + Debug + Display + Into<IpAddr> + Send + Sync + 'static {
    /// An address as the data path keeps it (wire order): `u32`, `[u32; 4]`.
    type Wire: Copy + Debug;
    /// `PERSIST_*` key: service id and client address.
    type Key: Pod + Eq + Hash + Debug;

    // --- Names ---

    /// `IPv4`, `IPv6`: for messages.
    const NAME: &'static str;
    /// Suffix of this family's row and variant keys (`hit_64k_v6`, `lever_v6`).
    const SUFFIX: &'static str;
    /// Prefix of this family's row descriptions.
    const WHAT: &'static str;

    // --- The benchmark's addresses ---

    /// The virtual server's VIP.
    const VIP: Self;
    /// Established clients (the hit rows, the closed loop).
    const ESTABLISHED: Clients<Self>;
    /// New sources of ESP (`miss*`): 2^26 low words, none a VIP or backend.
    const NEW_ESP: Clients<Self>;
    /// New sources of spoofed IKE_SA_INIT (`spoofed_init*`), disjoint from [`Self::NEW_ESP`]
    /// so that no row meets the probation entries another left.
    const SPOOFED: Clients<Self>;
    /// What every backend address has above its low word: reverse frames' sources are this
    /// prefix plus the word `BENCH_REV` holds for the client.
    const BACKEND_PREFIX: Self;
    /// Backend `i` of the benchmark's virtual server (`lb::BACKENDS` of them).
    fn backend(i: u32) -> Self;

    /// Client `i` of `prefix` + `base`, wire order, as the stamp writes it.
    fn client(prefix: Self, base: u32, i: u32) -> Self::Wire;
    fn key(service: u32, client: Self::Wire) -> Self::Key;
    /// The hash that picks the client's ring slot (`lb_common::hash`).
    fn hash(client: &Self::Wire) -> u32;
    /// `BENCH_REV`'s word for the backend at `addr`: the low word of an address under
    /// [`Self::BACKEND_PREFIX`] (over IPv4, the address), wire order.
    fn rev_word(addr: IpAddr) -> Result<u32>;

    // --- Maps and programs ---

    /// The per-client maps of this family (`lb_common::maps`).
    const PERSIST: &'static str;
    const PROBATION: &'static str;
    const PROOFS: &'static str;
    /// The stamp and stamp + ikelb (`lb-ebpf/src/bench/mod.rs`).
    const STAMP: &'static str;
    const STAMP_LB: &'static str;
    /// The closed loop's sink and trivial forwarder.
    const SINK: &'static str;
    const FWD: &'static str;
    /// Writes a template's header block into the stamp's template map.
    fn set_template(ebpf: &mut Ebpf, block: &[u8]) -> Result<()>;

    // --- The IP header of a frame (`frame`) ---

    const ETHER_TYPE: u16;
    const IP_HEADER_LEN: usize;
    /// Writes the IP header of a UDP datagram of `udp_len` bytes into `ip`.
    fn ip_header(ip: &mut [u8], saddr: Self, daddr: Self, udp_len: u16);
    /// The UDP pseudo-header (RFC 768; RFC 8200 §8.1).
    fn pseudo_header(saddr: Self, daddr: Self, udp_len: u16) -> Vec<u8>;
    /// Writes the low word of a frame's source address (wire order) and updates its checksums
    /// incrementally, as the stamp does; the template's low word is 0.
    fn stamp_source(frame: &mut [u8], word: u32);
}

/// `map[0]` = `block`, zero-padded to the map's value size `N`.
fn set_block<const N: usize>(ebpf: &mut Ebpf, map: &str, block: &[u8]) -> Result<()> {
    ensure!(
        block.len() <= N,
        "a {}-byte block does not fit {map} ({N} bytes)",
        block.len()
    );
    let mut value = [0u8; N];
    value[..block.len()].copy_from_slice(block);
    let mut m: Array<&mut MapData, [u8; N]> =
        Array::try_from(ebpf.map_mut(map).with_context(|| map.to_owned())?)?;
    m.set(0, &value, 0)?;
    Ok(())
}

/// Offset of the UDP checksum in a frame of family `F`.
fn udp_csum_at<F: Family>() -> usize {
    14 + F::IP_HEADER_LEN + 6
}

/// Adds `word` to the UDP checksum of `frame`, whose source's low word was 0.
fn udp_add(frame: &mut [u8], at: usize, word: u32) {
    let c = u16::from_ne_bytes([frame[at], frame[at + 1]]);
    frame[at..at + 2].copy_from_slice(&csum::udp_replace32(c, 0, word).to_ne_bytes());
}

/// Host-order address `base + i` as a wire-order word (`lb-common` byte order).
pub fn wire_word(base: u32, i: u32) -> u32 {
    u32::from_ne_bytes(base.wrapping_add(i).to_be_bytes())
}

impl Family for Ipv4Addr {
    type Wire = u32;
    type Key = PersistKeyV4;

    const NAME: &'static str = "IPv4";
    const SUFFIX: &'static str = "";
    const WHAT: &'static str = "";

    const VIP: Self = Ipv4Addr::new(203, 0, 113, 10);
    const ESTABLISHED: Clients<Self> = Clients {
        prefix: Ipv4Addr::UNSPECIFIED,
        base: ESTABLISHED_BASE,
    };
    /// 32.0.0.0/6.
    const NEW_ESP: Clients<Self> = Clients {
        prefix: Ipv4Addr::UNSPECIFIED,
        base: u32::from_be_bytes([32, 0, 0, 0]),
    };
    /// 64.0.0.0/6.
    const SPOOFED: Clients<Self> = Clients {
        prefix: Ipv4Addr::UNSPECIFIED,
        base: u32::from_be_bytes([64, 0, 0, 0]),
    };
    const BACKEND_PREFIX: Self = Ipv4Addr::UNSPECIFIED;

    /// 10.0.0.11 … 10.0.0.(10 + BACKENDS).
    fn backend(i: u32) -> Self {
        Ipv4Addr::new(10, 0, 0, 11 + i as u8)
    }

    fn client(_: Self, base: u32, i: u32) -> u32 {
        wire_word(base, i)
    }

    fn key(service: u32, client: u32) -> PersistKeyV4 {
        PersistKeyV4 { service, client }
    }

    fn hash(client: &u32) -> u32 {
        client_hash_v4(*client, HASH_SEED)
    }

    fn rev_word(addr: IpAddr) -> Result<u32> {
        let IpAddr::V4(a) = addr else {
            bail!("backend {addr} of the IPv4 service is not IPv4");
        };
        Ok(u32::from_ne_bytes(a.octets()))
    }

    const PERSIST: &'static str = maps::PERSIST_V4;
    const PROBATION: &'static str = maps::PROBATION_V4;
    const PROOFS: &'static str = maps::PROOFS_V4;
    const STAMP: &'static str = "bench_stamp";
    const STAMP_LB: &'static str = "bench_stamp_lb";
    const SINK: &'static str = "bench_sink";
    const FWD: &'static str = "bench_fwd";

    fn set_template(ebpf: &mut Ebpf, block: &[u8]) -> Result<()> {
        set_block::<64>(ebpf, "BENCH_TEMPLATE", block)
    }

    const ETHER_TYPE: u16 = 0x0800;
    const IP_HEADER_LEN: usize = 20;

    fn ip_header(ip: &mut [u8], saddr: Self, daddr: Self, udp_len: u16) {
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
        ip[8] = 64; // TTL
        ip[9] = 17; // UDP
        ip[12..16].copy_from_slice(&saddr.octets());
        ip[16..20].copy_from_slice(&daddr.octets());
        let c = csum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
    }

    fn pseudo_header(saddr: Self, daddr: Self, udp_len: u16) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p[0..4].copy_from_slice(&saddr.octets());
        p[4..8].copy_from_slice(&daddr.octets());
        p[9] = 17;
        p[10..12].copy_from_slice(&udp_len.to_be_bytes());
        p
    }

    fn stamp_source(f: &mut [u8], word: u32) {
        let ip_c = u16::from_ne_bytes([f[24], f[25]]);
        f[26..30].copy_from_slice(&word.to_ne_bytes());
        f[24..26].copy_from_slice(&csum::replace32(ip_c, 0, word).to_ne_bytes());
        udp_add(f, udp_csum_at::<Self>(), word);
    }
}

impl Family for Ipv6Addr {
    type Wire = [u32; 4];
    type Key = PersistKeyV6;

    const NAME: &'static str = "IPv6";
    const SUFFIX: &'static str = "_v6";
    const WHAT: &'static str = "IPv6: ";

    const VIP: Self = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10);
    /// The IPv4 clients' low words under a /96.
    const ESTABLISHED: Clients<Self> = Clients {
        prefix: Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0),
        base: ESTABLISHED_BASE,
    };
    /// Low words 1 … 2^26 of their own /96.
    const NEW_ESP: Clients<Self> = Clients {
        prefix: Ipv6Addr::new(0x2001, 0xdb8, 0x3200, 0, 0, 0, 0, 0),
        base: 1,
    };
    const SPOOFED: Clients<Self> = Clients {
        prefix: Ipv6Addr::new(0x2001, 0xdb8, 0x6400, 0, 0, 0, 0, 0),
        base: 1,
    };
    const BACKEND_PREFIX: Self = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0);

    /// `2001:db8::(0x11 + i)`: under [`Self::BACKEND_PREFIX`].
    fn backend(i: u32) -> Self {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11 + i as u16)
    }

    fn client(prefix: Self, base: u32, i: u32) -> [u32; 4] {
        let o = prefix.octets();
        let w = |k: usize| u32::from_ne_bytes([o[4 * k], o[4 * k + 1], o[4 * k + 2], o[4 * k + 3]]);
        [w(0), w(1), w(2), wire_word(base, i)]
    }

    fn key(service: u32, client: [u32; 4]) -> PersistKeyV6 {
        PersistKeyV6 { service, client }
    }

    fn hash(client: &[u32; 4]) -> u32 {
        client_hash_v6(client, HASH_SEED)
    }

    fn rev_word(addr: IpAddr) -> Result<u32> {
        let IpAddr::V6(a) = addr else {
            bail!("backend {addr} of the IPv6 service is not IPv6");
        };
        let (o, prefix) = (a.octets(), Self::BACKEND_PREFIX.octets());
        ensure!(
            o[..12] == prefix[..12],
            "backend {a} is not under {}/96",
            Self::BACKEND_PREFIX
        );
        Ok(u32::from_ne_bytes([o[12], o[13], o[14], o[15]]))
    }

    const PERSIST: &'static str = maps::PERSIST_V6;
    const PROBATION: &'static str = maps::PROBATION_V6;
    const PROOFS: &'static str = maps::PROOFS_V6;
    const STAMP: &'static str = "bench_stamp6";
    const STAMP_LB: &'static str = "bench_stamp_lb6";
    const SINK: &'static str = "bench_sink6";
    const FWD: &'static str = "bench_fwd6";

    fn set_template(ebpf: &mut Ebpf, block: &[u8]) -> Result<()> {
        set_block::<72>(ebpf, "BENCH_TEMPLATE6", block)
    }

    const ETHER_TYPE: u16 = 0x86dd;
    const IP_HEADER_LEN: usize = 40;

    fn ip_header(ip: &mut [u8], saddr: Self, daddr: Self, udp_len: u16) {
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
        ip[6] = 17; // UDP
        ip[7] = 64; // hop limit
        ip[8..24].copy_from_slice(&saddr.octets());
        ip[24..40].copy_from_slice(&daddr.octets());
    }

    fn pseudo_header(saddr: Self, daddr: Self, udp_len: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0..16].copy_from_slice(&saddr.octets());
        p[16..32].copy_from_slice(&daddr.octets());
        p[34..36].copy_from_slice(&udp_len.to_be_bytes());
        p[39] = 17;
        p
    }

    fn stamp_source(f: &mut [u8], word: u32) {
        f[34..38].copy_from_slice(&word.to_ne_bytes());
        udp_add(f, udp_csum_at::<Self>(), word);
    }
}
