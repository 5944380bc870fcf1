//! A `BPF_PROG_TEST_RUN` fixture for both address families (`tests/prog_test_run_protocols.rs`):
//! the embedded XDP object loaded with small maps and filled as the daemon would for a
//! dual-stack virtual server — two services, one per VIP, each with UDP 500/4500, TCP 443 and
//! ESP, and three backends of its family in a Maglev ring — plus the table-driven runner (input
//! frame, expected action, expected output frame byte for byte, the one counter the verdict
//! must bump).
//!
//! `test_run` delivers every frame on `lo` (ifindex 1) and does not transmit redirected
//! frames, so the devmap entries point at `lo` and the maps name other ifindexes when a row must
//! leave by a redirect rather than XDP_TX; `IFINDEX_PORTS` maps `lo` to the external port 0.
//!
//! Also the fixture of `tests/prog_test_run.rs` (the IPv4 table), which loads it without TCP
//! and uses only the IPv4 service and backends 1–3.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{Array, DevMap, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    counter, globals,
    hash::{client_hash_v4, client_hash_v6},
    maglev::{self, Member},
    maps, Backend, Iface, PersistKeyV4, PersistKeyV6, PersistValue, Service, Traffic,
    BACKEND_F_USABLE, FAMILY_V4, FAMILY_V6, MAX_PORTS, SVC_F_ESP,
};

use crate::packet::Mac;

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

/// `lo`, where `test_run` delivers frames.
pub const LO: u32 = 1;
/// ifindexes that exist only in the maps (compared with the ingress, never used to send).
const EXT_IFINDEX: u32 = 1_000_001;
const INT_IFINDEX: u32 = 1_000_002;
pub const PORT_EXT: u32 = 0;
pub const PORT_INT: u32 = 1;

pub const EXT_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x01];
pub const INT_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x02];
/// The clients' previous hop as seen on the external interface.
pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];

pub fn backend_mac(id: u32) -> Mac {
    [0x02, 0, 0, 0, 0x0b, id as u8]
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

/// How the gateway is wired.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Topology {
    /// Clients on the external port, backends on the internal one: every exit is a redirect.
    TwoArm,
    /// One interface (lo) for both: every exit is XDP_TX.
    OneArm,
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
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            topology: Topology::TwoArm,
            dsr: false,
            esp: true,
            tcp: true,
            persist_timeout_ticks: 1676,
        }
    }
}

/// What a row expects.
pub enum Expect {
    /// XDP_PASS with the frame unchanged.
    Pass,
    Drop,
    /// XDP_REDIRECT with this output frame.
    Redirect(Vec<u8>),
    /// XDP_TX with this output frame.
    Tx(Vec<u8>),
}

/// One row: input frame, expected action and frame, the one counter the verdict bumps.
pub struct Case {
    pub name: String,
    pub input: Vec<u8>,
    pub expect: Expect,
    pub counter: u32,
}

pub fn case(name: impl Into<String>, input: Vec<u8>, expect: Expect, counter: u32) -> Case {
    Case {
        name: name.into(),
        input,
        expect,
        counter,
    }
}

/// The loaded program and its maps.
pub struct Fixture {
    ebpf: Ebpf,
    pub setup: Setup,
    services: [Service; 2],
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Fixture {
    /// `None` (after saying why) when the test cannot run here.
    pub fn load(setup: Setup) -> Option<Self> {
        if !is_root() {
            eprintln!(
                "SKIPPED: BPF_PROG_TEST_RUN needs root (CAP_BPF, CAP_NET_ADMIN); run \
                 `cargo xtask test` or this test as root"
            );
            return None;
        }
        let dsr = u32::from(setup.dsr);
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::RING_SIZE, &RING, true)
            .override_global(globals::HASH_SEED, &SEED, true)
            .override_global(
                globals::PERSIST_TIMEOUT_TICKS,
                &setup.persist_timeout_ticks,
                true,
            )
            .override_global(globals::MODE_DSR, &dsr, true)
            .map_max_entries(maps::RINGS, 4 * RING)
            .map_max_entries(maps::PERSIST_V4, 64)
            .map_max_entries(maps::PERSIST_V6, 64)
            .map_max_entries(maps::BACKENDS, 16)
            .map_max_entries(maps::BACKEND_STATS, 32)
            .load(lb_ctl::EBPF_OBJECT)
            .expect("load the XDP object (maps)");
        let prog: &mut Xdp = ebpf
            .program_mut(lb_ctl::XDP_PROGRAM)
            .expect("the ikelb program")
            .try_into()
            .expect("an XDP program");
        if let Err(e) = prog.load() {
            panic!("the verifier rejected the program: {e:#?}");
        }
        let mut udp_ports = [0u16; MAX_PORTS];
        for (slot, p) in udp_ports.iter_mut().zip(UDP_PORTS) {
            *slot = wire16(p);
        }
        let mut tcp_ports = [0u16; MAX_PORTS];
        if setup.tcp {
            for (slot, p) in tcp_ports.iter_mut().zip(TCP_PORTS) {
                *slot = wire16(p);
            }
        }
        let service = |id: u32, family: u32, vip: IpAddr| Service {
            id,
            flags: if setup.esp { SVC_F_ESP } else { 0 },
            ring_base: id * 2 * RING,
            family,
            vip: words(vip),
            udp_ports,
            tcp_ports,
        };
        let mut f = Self {
            ebpf,
            setup,
            services: [
                service(SVC4, FAMILY_V4, VIP4.into()),
                service(SVC6, FAMILY_V6, VIP6.into()),
            ],
        };
        f.fill();
        Some(f)
    }

    fn fill(&mut self) {
        let (ext_ifindex, int_ifindex, backend_port) = match self.setup.topology {
            Topology::TwoArm => (EXT_IFINDEX, INT_IFINDEX, PORT_INT),
            Topology::OneArm => (LO, LO, PORT_EXT),
        };
        let [s4, s6] = self.services;
        let mut vips4: HashMap<_, u32, Service> = self.map(maps::VIPS_V4);
        vips4.insert(s4.vip[0], s4, 0).unwrap();
        let mut vips6: HashMap<_, [u32; 4], Service> = self.map(maps::VIPS_V6);
        vips6.insert(s6.vip, s6, 0).unwrap();
        let mut services: Array<_, Service> = self.map(maps::SERVICES);
        services.set(SVC4, s4, 0).unwrap();
        services.set(SVC6, s6, 0).unwrap();

        let mut ifaces: Array<_, Iface> = self.map(maps::IFACES);
        for (port, ifindex, mac) in [
            (PORT_EXT, ext_ifindex, EXT_MAC),
            (PORT_INT, int_ifindex, INT_MAC),
        ] {
            let iface = Iface {
                ifindex,
                mac,
                _pad: [0; 2],
            };
            ifaces.set(port, iface, 0).unwrap();
        }
        let mut ports: HashMap<_, u32, u32> = self.map(maps::IFINDEX_PORTS);
        ports.insert(LO, PORT_EXT, 0).unwrap();
        let mut tx: DevMap<_> = self.map(maps::TX_PORTS);
        tx.set(PORT_EXT, LO, None, 0).unwrap();
        tx.set(PORT_INT, LO, None, 0).unwrap();

        let smac = if backend_port == PORT_INT {
            INT_MAC
        } else {
            EXT_MAC
        };
        for id in 1..=6 {
            let addr = backend_addr(id);
            let service = if addr.is_ipv4() { SVC4 } else { SVC6 };
            self.set_backend(
                id,
                Backend {
                    addr: words(addr),
                    service,
                    flags: BACKEND_F_USABLE,
                    tx_port: backend_port,
                    ifindex: int_ifindex,
                    dmac: backend_mac(id),
                    smac,
                },
            );
            if addr.is_ipv4() {
                let mut ids: HashMap<_, u32, u32> = self.map(maps::BACKEND_IDS_V4);
                ids.insert(words(addr)[0], id, 0).unwrap();
            } else {
                let mut ids: HashMap<_, [u32; 4], u32> = self.map(maps::BACKEND_IDS_V6);
                ids.insert(words(addr), id, 0).unwrap();
            }
        }
        for svc in [SVC4, SVC6] {
            let table = self.maglev(svc, &[]);
            self.write_ring(svc, &table);
        }
    }

    /// The Maglev table of service `svc` over its three backends, with `down` ids unusable.
    pub fn maglev(&self, svc: u32, down: &[u32]) -> Vec<u32> {
        let ids = if svc == SVC4 { [1, 2, 3] } else { [4, 5, 6] };
        let members: Vec<Member> = ids
            .iter()
            .map(|&id| Member {
                id,
                key: match backend_addr(id) {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                },
                weight: 1,
                usable: !down.contains(&id),
            })
            .collect();
        maglev::build(&members, RING, SEED)
    }

    /// Writes `table` as service `svc`'s ring.
    pub fn write_ring(&mut self, svc: u32, table: &[u32]) {
        let base = self.services[svc as usize].ring_base;
        let mut rings: Array<_, u32> = self.map(maps::RINGS);
        for (slot, id) in table.iter().enumerate() {
            rings.set(base + slot as u32, id, 0).unwrap();
        }
    }

    pub fn map<'a, M: TryFrom<&'a mut aya::maps::Map>>(&'a mut self, name: &str) -> M
    where
        M::Error: std::fmt::Debug,
    {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name}"))
            .try_into()
            .unwrap()
    }

    pub fn set_backend(&mut self, id: u32, b: Backend) {
        let mut backends: Array<_, Backend> = self.map(maps::BACKENDS);
        backends.set(id, b, 0).unwrap();
    }

    pub fn backend(&mut self, id: u32) -> Backend {
        let backends: Array<_, Backend> = self.map(maps::BACKENDS);
        backends.get(&id, 0).unwrap()
    }

    /// The backend the ring gives `client` (what a new client gets).
    pub fn ring_choice(&mut self, client: IpAddr) -> u32 {
        let (hash, svc) = match client {
            IpAddr::V4(_) => (client_hash_v4(words(client)[0], SEED), SVC4),
            IpAddr::V6(_) => (client_hash_v6(&words(client), SEED), SVC6),
        };
        let base = self.services[svc as usize].ring_base;
        let rings: Array<_, u32> = self.map(maps::RINGS);
        rings.get(&(base + hash % RING), 0).unwrap() & lb_common::RING_BACKEND_MASK
    }

    /// The persistence entry of `client`, from `PERSIST_V4` or `PERSIST_V6`.
    pub fn persisted(&mut self, client: IpAddr) -> Option<PersistValue> {
        match client {
            IpAddr::V4(_) => {
                let key = PersistKeyV4 {
                    service: SVC4,
                    client: words(client)[0],
                };
                let m: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
                m.get(&key, 0).ok()
            }
            IpAddr::V6(_) => {
                let key = PersistKeyV6 {
                    service: SVC6,
                    client: words(client),
                };
                let m: HashMap<_, PersistKeyV6, PersistValue> = self.map(maps::PERSIST_V6);
                m.get(&key, 0).ok()
            }
        }
    }

    /// Writes `v` as the persistence entry of `client`.
    pub fn persist(&mut self, client: IpAddr, v: PersistValue) {
        match client {
            IpAddr::V4(_) => {
                let key = PersistKeyV4 {
                    service: SVC4,
                    client: words(client)[0],
                };
                let mut m: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
                m.insert(key, v, 0).unwrap();
            }
            IpAddr::V6(_) => {
                let key = PersistKeyV6 {
                    service: SVC6,
                    client: words(client),
                };
                let mut m: HashMap<_, PersistKeyV6, PersistValue> = self.map(maps::PERSIST_V6);
                m.insert(key, v, 0).unwrap();
            }
        }
    }

    pub fn counters(&mut self) -> Vec<u64> {
        let c: PerCpuArray<_, u64> = self.map(maps::COUNTERS);
        (0..counter::COUNT)
            .map(|i| c.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    pub fn traffic(&mut self, id: u32, dir: u32) -> Traffic {
        let s: PerCpuArray<_, Traffic> = self.map(maps::BACKEND_STATS);
        s.get(&(id * 2 + dir), 0)
            .unwrap()
            .iter()
            .fold(Traffic::default(), |a, t| Traffic {
                packets: a.packets + t.packets,
                bytes: a.bytes + t.bytes,
            })
    }

    pub fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let prog: &Xdp = self
            .ebpf
            .program(lb_ctl::XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; input.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs `cases` in order (later rows see the persistence entries earlier rows created)
    /// and panics listing every row that failed.
    pub fn check(&mut self, cases: &[Case]) {
        let mut failures = Vec::new();
        for case in cases {
            let before = self.counters();
            let (action, out) = self.run(&case.input);
            let after = self.counters();
            let (want_action, want_frame) = match &case.expect {
                Expect::Pass => (XDP_PASS, Some(&case.input)),
                Expect::Drop => (XDP_DROP, None),
                Expect::Redirect(f) => (XDP_REDIRECT, Some(f)),
                Expect::Tx(f) => (XDP_TX, Some(f)),
            };
            if action != want_action {
                failures.push(format!(
                    "{}: action {action}, want {want_action}",
                    case.name
                ));
            }
            if let Some(want) = want_frame {
                if &out != want {
                    failures.push(format!(
                        "{}: output frame differs: {}",
                        case.name,
                        diff(&out, want)
                    ));
                }
            }
            let deltas: Vec<(&str, u64)> = before
                .iter()
                .zip(&after)
                .enumerate()
                .filter(|(_, (b, a))| a != b)
                .map(|(i, (b, a))| (counter::LABELS[i].1, a - b))
                .collect();
            let want = vec![(counter::LABELS[case.counter as usize].1, 1)];
            if deltas != want {
                failures.push(format!(
                    "{}: counter deltas {deltas:?}, want {want:?}",
                    case.name
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} row(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// Where two frames differ, with the bytes around it.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window = |b: &[u8]| -> String {
        b[at.saturating_sub(8).min(b.len())..(at + 16).min(b.len())]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    format!(
        "first at byte {at} (lengths {} / {})\n   got …{}…\n  want …{}…",
        got.len(),
        want.len(),
        window(got),
        window(want)
    )
}
