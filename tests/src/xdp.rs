//! A `BPF_PROG_TEST_RUN` fixture for both address families (`tests/prog_test_run*.rs`): the
//! embedded XDP object loaded with small maps and filled as the daemon would for a dual-stack
//! virtual server — two services, one per VIP, each with UDP 500/4500, TCP 443 and ESP, and
//! three backends of its family in a Maglev ring — plus the table-driven runner (input frame,
//! the interface it arrives on, expected action, expected output frame byte for byte, the one
//! counter the verdict must bump, optionally the events it must add).
//!
//! ## Real interfaces
//!
//! Each fixture builds its own network namespace (`ikp<pid>n<k>-xdp`, RAII: deleted on drop,
//! also while a failing test unwinds; [`crate::lab::reap_stale`] removes those of dead runs)
//! with two veth pairs: `ext` (MAC [`EXT_MAC`], 192.0.2.1/24, 2001:db8:e::1/64) ↔ `ext-p` and
//! `int` (MAC [`INT_MAC`], 10.0.0.1/24, 2001:db8:1::1/64) ↔ `int-p`, forwarding on. The
//! upstream router 192.0.2.2 / 2001:db8:e::2 is a permanent neighbour with [`ROUTER_MAC`] on
//! `ext`, and the clients' networks (198.51.100.0/24, 192.0.2.32/27, 2001:db8:c::/48,
//! 2001:db8:d::/48) are routed through it, so `bpf_fib_lookup` toward a client answers `ext`
//! and [`ROUTER_MAC`]; 100.64.0.0/10 and 2001:db8:f::/48 are `unreachable` routes (for
//! `drop/no_route`), and the namespace's own addresses are local (for `pass/not_client`).
//!
//! Every map names these real ifindexes: `IFACES`, `Backend::ifindex`, `INGRESS` and
//! `IFINDEX_PORTS` (`port | INGRESS_F_ATTACHED | role`: `ext` has the clients role, `int` the
//! backends role; one-arm: `ext` has both and `int` is not attached), and the devmap `TX_PORTS`
//! sends port 0 out of `ext` and port 1 out of `int`. Each row is run with
//! `xdp_md.ingress_ifindex` of the interface it arrives on (aya's `TestRunOptions::ctx_in`;
//! `data_end` = frame length, as the kernel requires): by default `int` for a frame addressed
//! to [`INT_MAC`], else `ext` ([`Case::on`] overrides; one-arm: always `ext`). The thread
//! joins the namespace only around each `BPF_PROG_TEST_RUN` and devmap update (both resolve
//! ifindexes in the caller's namespace), so several fixtures may live in one test.
//!
//! ## Which port a redirect used
//!
//! `test_run` returns XDP_REDIRECT but does not say through which devmap entry. A redirect
//! row is therefore run with **only the expected port in `TX_PORTS`**: the other port's entry
//! is deleted for that one run and put back after. A frame redirected through the wrong port
//! finds no entry (`bpf_redirect_map` fails: `drop/bad_backend`), XDP_TX instead of a
//! redirect is a wrong action, and the output bytes must match — so a row passes only if the
//! frame left by the expected interface with the expected bytes. The expected port is the one
//! whose interface MAC is the expected frame's source MAC (port 0 [`EXT_MAC`], port 1
//! [`INT_MAC`]): a frame leaves by the interface whose address it carries.
//!
//! ## Load-time globals
//!
//! [`Setup`] sets `SLOT_FAST_PATH` and `NEW_CLIENT_QUOTA` (0, unlimited, by default);
//! `REFRESHED_V4` (the slot stamps of both families) is sized like `RINGS`.
//! [`Fixture::both_fast_paths`] runs a test body once with the slot fast path off and once
//! on, and names the failing run.
//!
//! ## Layout
//!
//! `net` builds the namespace ([`TestNet`]), `fixture` loads and fills the program
//! ([`Fixture`]), `state` reads and writes its maps as the daemon and the data path do,
//! `case` is the table runner ([`Case`], [`Fixture::check`]), and `family` writes a table once
//! for both address families ([`FixtureFamily`], [`both_families!`](crate::both_families)).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::TICK_SHIFT;

use crate::packet::Mac;

mod case;
mod family;
mod fixture;
mod net;
mod pool;
mod state;

pub use case::{case, diff, Case, Expect};
pub use family::{
    forwarded, forwarded_frame, forwarded_from, from_backend, persist_entry, probation_entry,
    raw_from_backend, raw_to_vip, reversed, reversed_frame, to_vip, words_of, FixtureFamily,
};
pub use fixture::Fixture;
pub use net::TestNet;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Maglev table size (prime, small so the maps are small).
pub const RING: u32 = 251;
pub const SEED: u32 = 0x5eed;
/// Service ids: the IPv4 and the IPv6 VIP of one virtual server.
pub const SVC4: u32 = 0;
pub const SVC6: u32 = 1;
pub const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10);
/// Backends 1–3 (IPv4) and 4–6 (IPv6).
pub const BACKENDS4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 0, 11),
    Ipv4Addr::new(10, 0, 0, 12),
    Ipv4Addr::new(10, 0, 0, 13),
];
pub const BACKENDS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x12),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x13),
];
pub const UDP_PORTS: [u16; 2] = [500, 4500];
pub const TCP_PORTS: [u16; 1] = [443];

pub const PORT_EXT: u32 = 0;
pub const PORT_INT: u32 = 1;

pub const EXT_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x01];
pub const INT_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x02];
/// The clients' previous hop as seen on the external interface (the namespace's permanent
/// neighbour 192.0.2.2 / 2001:db8:e::2, through which the clients' networks are routed).
pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
/// The upstream router's addresses on `ext`.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 2);

pub fn backend_mac(id: u32) -> Mac {
    [0x02, 0, 0, 0, 0x0b, id as u8]
}

pub fn mac_str(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Address of backend `id` (1–3 IPv4, 4–6 IPv6).
pub fn backend_addr(id: u32) -> IpAddr {
    match id {
        1..=3 => BACKENDS4[id as usize - 1].into(),
        4..=6 => BACKENDS6[id as usize - 4].into(),
        _ => panic!("no backend {id}"),
    }
}

pub fn backend_v4(id: u32) -> Ipv4Addr {
    match backend_addr(id) {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("backend {id} is IPv6"),
    }
}

pub fn backend_v6(id: u32) -> Ipv6Addr {
    match backend_addr(id) {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => panic!("backend {id} is IPv4"),
    }
}

/// Wire-order words of an address (`lb_common`, "Byte order").
pub fn words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| u32::from_ne_bytes(o[4 * i..4 * i + 4].try_into().unwrap()))
        }
    }
}

pub fn wire16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// `bpf_ktime_get_coarse_ns()` in persistence ticks, from userspace.
pub fn now_ticks() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) },
        0
    );
    ((ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64) >> TICK_SHIFT) as u32
}

/// The tick `n` ticks ago, for stamping an idle entry. A young clock (a freshly booted VM of
/// the kernel matrix is a few seconds old) has no such tick yet: wait until it has, rather
/// than wrap to a stamp in the future (which the data path counts as live).
pub fn ticks_ago(n: u32) -> u32 {
    loop {
        let now = now_ticks();
        if let Some(t) = now.checked_sub(n) {
            return t;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// How the gateway is wired.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Topology {
    /// Clients on the external port, backends on the internal one: every exit is a redirect.
    TwoArm,
    /// One interface (`ext`, both roles) for both: every exit is XDP_TX.
    OneArm,
}

/// The interface a row's frame arrives on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Ext,
    Int,
}

/// Load-time switches of a fixture.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub topology: Topology,
    pub dsr: bool,
    /// `SVC_F_ESP` on both services.
    pub esp: bool,
    /// TCP 443 in both services' groups.
    pub tcp: bool,
    /// `PERSIST_TIMEOUT_TICKS`.
    pub persist_timeout_ticks: u32,
    /// `SLOT_FAST_PATH`.
    pub slot_fast_path: bool,
    /// `NEW_CLIENT_QUOTA`: probation inserts per CPU per window; 0 = unlimited.
    pub new_client_quota: u32,
    /// `SA_STEERING` (on by default, as the daemon's `sa_steering`).
    pub sa_steering: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            topology: Topology::TwoArm,
            dsr: false,
            esp: true,
            tcp: true,
            persist_timeout_ticks: 1676,
            slot_fast_path: false,
            new_client_quota: 0,
            sa_steering: true,
        }
    }
}
