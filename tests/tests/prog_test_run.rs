//! The XDP program on crafted frames through `BPF_PROG_TEST_RUN` (aya `test_run`).
//!
//! Each test loads the embedded object (`lb_ctl::EBPF_OBJECT`) with small maps, fills them
//! like the daemon would (one service, VIP 203.0.113.10, UDP 500/4500 + ESP, three backends
//! 10.0.0.11–13 in a Maglev ring from `lb_common::maglev::build`), and runs a table of rows:
//! input frame, expected action, expected output frame byte for byte (built independently by
//! `ikelb_tests::packet`, checksums from scratch), and the one counter the verdict must bump.
//!
//! `test_run` delivers every frame on `lo` (ifindex 1) of the test's network namespace, and
//! does not transmit redirected frames, so the devmap entries point at `lo` and the fixture
//! names other ifindexes in `IFACES`/`BACKENDS` when a row must leave by a redirect rather
//! than XDP_TX. `IFINDEX_PORTS` maps `lo` to the external port 0: clients are learned there.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); without it each test says so and returns.

use std::net::Ipv4Addr;

use aya::{
    maps::{Array, DevMap, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use ikelb_tests::packet::{self, Ipv4Frame, Mac, PROTO_ESP, PROTO_ICMP};
use lb_common::{
    counter, globals,
    hash::client_hash_v4,
    maglev::{self, Member},
    maps, Backend, Iface, PersistKeyV4, PersistValue, Service, Traffic, BACKEND_F_USABLE,
    DIR_FORWARD, DIR_REVERSE, FAMILY_V4, SVC_F_ESP, TICK_SHIFT,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Maglev table size of the tests (prime, small so the maps are small).
const RING: u32 = 251;
const SEED: u32 = 0x5eed;
const SERVICE_ID: u32 = 1;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const BACKEND_ADDRS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 0, 11),
    Ipv4Addr::new(10, 0, 0, 12),
    Ipv4Addr::new(10, 0, 0, 13),
];
const GATEWAY_INT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// `lo`, where `test_run` delivers frames.
const LO: u32 = 1;
/// ifindexes that exist only in the maps (compared with the ingress, never used to send).
const EXT_IFINDEX: u32 = 1_000_001;
const INT_IFINDEX: u32 = 1_000_002;
const PORT_EXT: u32 = 0;
const PORT_INT: u32 = 1;

const EXT_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x01];
const INT_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x02];
/// The clients' previous hop (upstream router) as seen on the external interface.
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
const ROUTER2_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x02];

fn backend_mac(id: u32) -> Mac {
    [0x02, 0, 0, 0, 0x0b, id as u8]
}

fn wire32(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn wire16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// How the gateway is wired.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// Clients on the external port, backends on the internal one: every exit is a redirect.
    TwoArm,
    /// One interface (lo) for both: every exit is XDP_TX.
    OneArm,
}

/// Load-time switches of a fixture.
#[derive(Clone, Copy)]
struct Setup {
    topology: Topology,
    dsr: bool,
    persist_timeout_ticks: u32,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            topology: Topology::TwoArm,
            dsr: false,
            persist_timeout_ticks: 1676,
        }
    }
}

/// The loaded program and its maps, filled like the daemon does.
struct Lb {
    ebpf: Ebpf,
    setup: Setup,
    service: Service,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Lb {
    /// `None` (after saying why) when the test cannot run here.
    fn load(setup: Setup) -> Option<Self> {
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
            .map_max_entries(maps::PERSIST_V6, 16)
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

        let mut udp_ports = [0u16; lb_common::MAX_PORTS];
        udp_ports[0] = wire16(500);
        udp_ports[1] = wire16(4500);
        let service = Service {
            id: SERVICE_ID,
            flags: SVC_F_ESP,
            ring_base: SERVICE_ID * 2 * RING,
            family: FAMILY_V4,
            vip: [wire32(VIP), 0, 0, 0],
            udp_ports,
            tcp_ports: [0; lb_common::MAX_PORTS],
        };
        let mut lb = Self {
            ebpf,
            setup,
            service,
        };
        lb.fill();
        Some(lb)
    }

    fn fill(&mut self) {
        let (ext_ifindex, int_ifindex, backend_port) = match self.setup.topology {
            Topology::TwoArm => (EXT_IFINDEX, INT_IFINDEX, PORT_INT),
            Topology::OneArm => (LO, LO, PORT_EXT),
        };
        let service = self.service;
        let mut vips: HashMap<_, u32, Service> = self.map(maps::VIPS_V4);
        vips.insert(wire32(VIP), service, 0).unwrap();
        let mut services: Array<_, Service> = self.map(maps::SERVICES);
        services.set(SERVICE_ID, service, 0).unwrap();

        let mut ifaces: Array<_, Iface> = self.map(maps::IFACES);
        ifaces
            .set(
                PORT_EXT,
                Iface {
                    ifindex: ext_ifindex,
                    mac: EXT_MAC,
                    _pad: [0; 2],
                },
                0,
            )
            .unwrap();
        ifaces
            .set(
                PORT_INT,
                Iface {
                    ifindex: int_ifindex,
                    mac: INT_MAC,
                    _pad: [0; 2],
                },
                0,
            )
            .unwrap();
        let mut ports: HashMap<_, u32, u32> = self.map(maps::IFINDEX_PORTS);
        ports.insert(LO, PORT_EXT, 0).unwrap();
        let mut tx: DevMap<_> = self.map(maps::TX_PORTS);
        tx.set(PORT_EXT, LO, None, 0).unwrap();
        tx.set(PORT_INT, LO, None, 0).unwrap();

        let mut ids: HashMap<_, u32, u32> = self.map(maps::BACKEND_IDS_V4);
        for (i, addr) in BACKEND_ADDRS.iter().enumerate() {
            ids.insert(wire32(*addr), i as u32 + 1, 0).unwrap();
        }
        for id in 1..=BACKEND_ADDRS.len() as u32 {
            let smac = if backend_port == PORT_INT {
                INT_MAC
            } else {
                EXT_MAC
            };
            self.set_backend(
                id,
                Backend {
                    addr: [wire32(BACKEND_ADDRS[id as usize - 1]), 0, 0, 0],
                    service: SERVICE_ID,
                    flags: BACKEND_F_USABLE,
                    tx_port: backend_port,
                    ifindex: int_ifindex,
                    dmac: backend_mac(id),
                    smac,
                },
            );
        }
        self.write_ring(&self.maglev(&[]));
    }

    fn map<'a, M: TryFrom<&'a mut aya::maps::Map>>(&'a mut self, name: &str) -> M
    where
        M::Error: std::fmt::Debug,
    {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name}"))
            .try_into()
            .unwrap()
    }

    /// The Maglev table over the three backends, with `down` ids unusable.
    fn maglev(&self, down: &[u32]) -> Vec<u32> {
        let members: Vec<Member> = BACKEND_ADDRS
            .iter()
            .enumerate()
            .map(|(i, a)| Member {
                id: i as u32 + 1,
                key: a.octets().to_vec(),
                weight: 1,
                usable: !down.contains(&(i as u32 + 1)),
            })
            .collect();
        maglev::build(&members, RING, SEED)
    }

    fn write_ring(&mut self, table: &[u32]) {
        let base = self.service.ring_base;
        let mut rings: Array<_, u32> = self.map(maps::RINGS);
        for (slot, id) in table.iter().enumerate() {
            rings.set(base + slot as u32, id, 0).unwrap();
        }
    }

    fn set_backend(&mut self, id: u32, b: Backend) {
        let mut backends: Array<_, Backend> = self.map(maps::BACKENDS);
        backends.set(id, b, 0).unwrap();
    }

    fn backend(&mut self, id: u32) -> Backend {
        let backends: Array<_, Backend> = self.map(maps::BACKENDS);
        backends.get(&id, 0).unwrap()
    }

    /// The backend the ring gives `client` (what a new client gets).
    fn ring_choice(&mut self, client: Ipv4Addr) -> u32 {
        let slot = client_hash_v4(wire32(client), SEED) % RING;
        let base = self.service.ring_base;
        let rings: Array<_, u32> = self.map(maps::RINGS);
        rings.get(&(base + slot), 0).unwrap() & lb_common::RING_BACKEND_MASK
    }

    fn persisted(&mut self, client: Ipv4Addr) -> Option<PersistValue> {
        let key = PersistKeyV4 {
            service: SERVICE_ID,
            client: wire32(client),
        };
        let persist: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
        persist.get(&key, 0).ok()
    }

    fn persist(&mut self, client: Ipv4Addr, v: PersistValue) {
        let key = PersistKeyV4 {
            service: SERVICE_ID,
            client: wire32(client),
        };
        let mut persist: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
        persist.insert(key, v, 0).unwrap();
    }

    fn counters(&mut self) -> Vec<u64> {
        let c: PerCpuArray<_, u64> = self.map(maps::COUNTERS);
        (0..counter::COUNT)
            .map(|i| c.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    fn traffic(&mut self, id: u32, dir: u32) -> Traffic {
        let s: PerCpuArray<_, Traffic> = self.map(maps::BACKEND_STATS);
        s.get(&(id * 2 + dir), 0)
            .unwrap()
            .iter()
            .fold(Traffic::default(), |a, t| Traffic {
                packets: a.packets + t.packets,
                bytes: a.bytes + t.bytes,
            })
    }

    fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
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
    fn check(&mut self, cases: &[Case]) {
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
fn diff(got: &[u8], want: &[u8]) -> String {
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

enum Expect {
    /// XDP_PASS with the frame unchanged.
    Pass,
    Drop,
    /// XDP_REDIRECT with this output frame.
    Redirect(Vec<u8>),
    /// XDP_TX with this output frame.
    Tx(Vec<u8>),
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    expect: Expect,
    /// The one counter the verdict must bump (by one; all others unchanged).
    counter: u32,
}

fn case(name: &'static str, input: Vec<u8>, expect: Expect, counter: u32) -> Case {
    Case {
        name,
        input,
        expect,
        counter,
    }
}

const C1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const C2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const C3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 33);

/// IKE-sized payloads (the content does not matter to ikelb; the length does for fragments).
fn ike(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// A client's datagram to the VIP, as it arrives from the upstream router.
fn to_vip(client: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Ipv4Frame {
    Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (client, sport), (VIP, dport), data)
}

/// What a correct forward NAT makes of `f` for backend `id` behind the internal interface.
fn forwarded(f: &Ipv4Frame, id: u32) -> Vec<u8> {
    forwarded_from(f, id, INT_MAC)
}

/// As [`forwarded`], leaving by the interface whose MAC is `smac`.
fn forwarded_from(f: &Ipv4Frame, id: u32, smac: Mac) -> Vec<u8> {
    let addr = BACKEND_ADDRS[id as usize - 1];
    f.readdressed(f.src, addr)
        .with_ttl(f.ttl - 1)
        .with_macs(smac, backend_mac(id))
        .bytes()
}

/// The two fragments of `whole` after a correct forward NAT to `addr`: the first fragment's
/// UDP checksum covers the whole datagram, so it is computed on the rewritten whole.
fn nat_fragments(whole: &Ipv4Frame, addr: Ipv4Addr, smac: Mac, dmac: Mac) -> (Vec<u8>, Vec<u8>) {
    let out = whole
        .readdressed(whole.src, addr)
        .with_ttl(whole.ttl - 1)
        .with_macs(smac, dmac);
    let (a, b) = out.fragments(FRAG_LEN);
    (a.bytes(), b.bytes())
}

/// As [`nat_fragments`] for a backend's reply going back to its client.
fn reverse_fragments(whole: &Ipv4Frame) -> (Vec<u8>, Vec<u8>) {
    let out = whole
        .readdressed(VIP, whole.dst)
        .with_ttl(whole.ttl - 1)
        .with_macs(EXT_MAC, ROUTER_MAC);
    let (a, b) = out.fragments(FRAG_LEN);
    (a.bytes(), b.bytes())
}

/// IP payload bytes in a first fragment (1500-byte MTU).
const FRAG_LEN: usize = 1480;

/// A backend's datagram to `client`, as it arrives from the backend.
fn from_backend(id: u32, sport: u16, client: Ipv4Addr, dport: u16, data: &[u8]) -> Ipv4Frame {
    Ipv4Frame::udp(
        backend_mac(id),
        INT_MAC,
        (BACKEND_ADDRS[id as usize - 1], sport),
        (client, dport),
        data,
    )
}

/// What a correct reverse NAT makes of `f`: source VIP, MACs toward the client's router.
fn reversed(f: &Ipv4Frame, router: Mac) -> Vec<u8> {
    f.readdressed(VIP, f.dst)
        .with_ttl(f.ttl - 1)
        .with_macs(EXT_MAC, router)
        .bytes()
}

#[test]
fn forward_path() {
    let Some(mut lb) = Lb::load(Setup::default()) else {
        return;
    };
    let b1 = lb.ring_choice(C1);
    let b2 = lb.ring_choice(C2);
    let b3 = lb.ring_choice(C3);

    let init = to_vip(C1, 500, 500, &ike(300));
    let auth = to_vip(C1, 4500, 4500, &ike(400));
    let nocsum = to_vip(C1, 4500, 4500, &ike(100)).without_udp_checksum();
    let esp = Ipv4Frame::raw(ROUTER_MAC, EXT_MAC, C1, VIP, PROTO_ESP, &ike(120));
    // C2's IKE_AUTH with certificates, fragmented by its IP stack: the first fragment has the
    // UDP header (whose checksum covers the whole datagram), the second has no ports.
    let big = to_vip(C2, 4500, 4500, &ike(1800));
    let (frag1, frag2) = big.fragments(FRAG_LEN);
    let (frag1_out, frag2_out) = nat_fragments(
        &big,
        BACKEND_ADDRS[b2 as usize - 1],
        INT_MAC,
        backend_mac(b2),
    );
    // C3 is first seen through a non-first fragment: steered by address alone.
    let (_, c3_frag2) = to_vip(C3, 4500, 4500, &ike(1800)).fragments(FRAG_LEN);
    let esp_out = esp
        .readdressed(C1, BACKEND_ADDRS[b1 as usize - 1])
        .with_ttl(63);
    let esp_out = esp_out.with_macs(INT_MAC, backend_mac(b1)).bytes();

    #[rustfmt::skip]
    let rows = vec![
        case("UDP 500 to the VIP", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD),
        case("UDP 4500, same client", auth.bytes(), Expect::Redirect(forwarded(&auth, b1)), counter::FORWARD),
        case("UDP checksum 0 stays 0", nocsum.bytes(), Expect::Redirect(forwarded(&nocsum, b1)), counter::FORWARD),
        case("ESP, same client", esp.bytes(), Expect::Redirect(esp_out), counter::FORWARD),
        case("first fragment", frag1.bytes(), Expect::Redirect(frag1_out), counter::FORWARD),
        case("non-first fragment", frag2.bytes(), Expect::Redirect(frag2_out), counter::FORWARD),
        case("non-first fragment of a new client", c3_frag2.bytes(), Expect::Redirect(forwarded(&c3_frag2, b3)), counter::FORWARD),
        case("another UDP port to the VIP", to_vip(C1, 5000, 53, &ike(20)).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
        case("ICMP echo to the VIP", Ipv4Frame::raw(ROUTER_MAC, EXT_MAC, C1, VIP, PROTO_ICMP, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]).bytes(), Expect::Pass, counter::PASS_NOT_SERVICE_PORT),
        case("TTL 1", to_vip(C1, 500, 500, &ike(50)).with_ttl(1).bytes(), Expect::Pass, counter::PASS_TTL),
        case("not to a VIP", Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (C1, 500), (Ipv4Addr::new(203, 0, 113, 11), 500), &ike(20)).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
    ];
    lb.check(&rows);

    // Persistence entries remember the backend and where the client's frames came from.
    for (client, id) in [(C1, b1), (C2, b2), (C3, b3)] {
        let e = lb.persisted(client).expect("a persistence entry");
        assert_eq!(
            (e.backend, e.client_mac, e.port),
            (id, ROUTER_MAC, PORT_EXT as u8)
        );
    }
    // Per-backend traffic: every forwarded frame, its length.
    let c1_bytes: u64 = [&init, &auth, &nocsum, &esp]
        .iter()
        .map(|f| f.bytes().len() as u64)
        .sum();
    let c2_bytes = (frag1.bytes().len() + frag2.bytes().len()) as u64;
    let mut want = [Traffic::default(); 4];
    for (id, packets, bytes) in [(b1, 4, c1_bytes), (b2, 2, c2_bytes)] {
        want[id as usize].packets += packets;
        want[id as usize].bytes += bytes;
    }
    want[b3 as usize].packets += 1;
    want[b3 as usize].bytes += c3_frag2.bytes().len() as u64;
    for id in 1..=3 {
        assert_eq!(
            lb.traffic(id, DIR_FORWARD),
            want[id as usize],
            "backend {id} forward traffic"
        );
    }
}

#[test]
fn malformed_and_foreign_frames_are_never_forwarded() {
    let Some(mut lb) = Lb::load(Setup::default()) else {
        return;
    };
    let good = to_vip(C1, 500, 500, &ike(64)).bytes();
    let ip = packet::IP_OFFSET;

    let mut ihl4 = good.clone();
    ihl4[ip] = 0x44;
    packet::fix_ipv4_checksum(&mut ihl4);
    let mut version6 = good.clone();
    version6[ip] = 0x65;
    let mut too_long = good.clone();
    too_long[ip + 2..ip + 4].copy_from_slice(&((good.len() - ip + 1) as u16).to_be_bytes());
    packet::fix_ipv4_checksum(&mut too_long);
    let mut shorter_than_header = good.clone();
    shorter_than_header[ip + 2..ip + 4].copy_from_slice(&19u16.to_be_bytes());
    packet::fix_ipv4_checksum(&mut shorter_than_header);
    // A UDP header cut after 4 bytes, consistently (total length 24).
    let mut udp_cut = good[..ip + 24].to_vec();
    udp_cut[ip + 2..ip + 4].copy_from_slice(&24u16.to_be_bytes());
    packet::fix_ipv4_checksum(&mut udp_cut);
    // The same, with Ethernet padding after it: the UDP header "fits" the frame but not the
    // datagram.
    let mut udp_cut_padded = udp_cut.clone();
    udp_cut_padded.resize(60, 0);

    #[rustfmt::skip]
    let rows = vec![
        // test_run refuses frames shorter than an Ethernet header (EINVAL), so the
        // truncated-Ethernet branch is reachable only on a real interface.
        case("IP header truncated", good[..ip + 10].to_vec(), Expect::Drop, counter::DROP_MALFORMED),
        case("Ethernet header only", good[..ip].to_vec(), Expect::Drop, counter::DROP_MALFORMED),
        case("IHL 4", ihl4, Expect::Drop, counter::DROP_MALFORMED),
        case("version 6 in an IPv4 ethertype", version6, Expect::Drop, counter::DROP_MALFORMED),
        case("total length beyond the frame", too_long, Expect::Drop, counter::DROP_MALFORMED),
        case("total length below the header", shorter_than_header, Expect::Drop, counter::DROP_MALFORMED),
        case("UDP header truncated", udp_cut, Expect::Drop, counter::DROP_MALFORMED),
        case("UDP header beyond the datagram", udp_cut_padded, Expect::Drop, counter::DROP_MALFORMED),
        case("IP options to the VIP", packet::with_ip_option(&good), Expect::Pass, counter::PASS_IP_OPTIONS),
        case("ARP", packet::arp_request(ROUTER_MAC, Ipv4Addr::new(203, 0, 113, 1), VIP), Expect::Pass, counter::PASS_NOT_IP),
        case("802.1Q tagged", packet::vlan_tagged(&good, 0x8100, 7), Expect::Pass, counter::PASS_VLAN),
        case("802.1ad tagged", packet::vlan_tagged(&good, 0x88a8, 7), Expect::Pass, counter::PASS_VLAN),
        // IPv6 has its own table (prog_test_run_protocols.rs); one not to a VIP is passed.
        case("IPv6 not to a VIP", packet::ipv6_udp(ROUTER_MAC, EXT_MAC), Expect::Pass, counter::PASS_NOT_VIP),
    ];
    lb.check(&rows);
    assert_eq!(
        lb.persisted(C1),
        None,
        "nothing was learned from refused frames"
    );
}

#[test]
fn reverse_path() {
    let Some(mut lb) = Lb::load(Setup::default()) else {
        return;
    };
    let b1 = lb.ring_choice(C1);
    let other = if b1 == 1 { 2 } else { 1 };
    let init = to_vip(C1, 500, 500, &ike(300));

    let reply = from_backend(b1, 500, C1, 500, &ike(200));
    let nat_t = from_backend(b1, 4500, C1, 4500, &ike(90));
    let nocsum = from_backend(b1, 4500, C1, 4500, &ike(90)).without_udp_checksum();
    let big = from_backend(b1, 4500, C1, 4500, &ike(1600));
    let (frag1, frag2) = big.fragments(FRAG_LEN);
    let (frag1_out, frag2_out) = reverse_fragments(&big);
    let esp = Ipv4Frame::raw(
        backend_mac(b1),
        INT_MAC,
        BACKEND_ADDRS[b1 as usize - 1],
        C1,
        PROTO_ESP,
        &ike(100),
    );
    let esp_out = esp
        .readdressed(VIP, C1)
        .with_ttl(63)
        .with_macs(EXT_MAC, ROUTER_MAC)
        .bytes();
    let echo_reply = Ipv4Frame::raw(
        backend_mac(b1),
        INT_MAC,
        BACKEND_ADDRS[b1 as usize - 1],
        GATEWAY_INT,
        PROTO_ICMP,
        &[0, 0, 0xff, 0xff, 0, 0, 0, 0],
    );

    #[rustfmt::skip]
    let rows = vec![
        case("client's IKE_SA_INIT", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD),
        case("backend reply from 500", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER_MAC)), counter::REVERSE),
        case("backend reply from 4500", nat_t.bytes(), Expect::Redirect(reversed(&nat_t, ROUTER_MAC)), counter::REVERSE),
        case("backend reply, UDP checksum 0", nocsum.bytes(), Expect::Redirect(reversed(&nocsum, ROUTER_MAC)), counter::REVERSE),
        case("backend reply, first fragment", frag1.bytes(), Expect::Redirect(frag1_out), counter::REVERSE),
        case("backend reply, non-first fragment", frag2.bytes(), Expect::Redirect(frag2_out), counter::REVERSE),
        case("backend ESP", esp.bytes(), Expect::Redirect(esp_out), counter::REVERSE),
        case("backend to a non-client", from_backend(b1, 4500, C2, 4500, &ike(40)).bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
        case("another backend to the client", from_backend(other, 4500, C1, 4500, &ike(40)).bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
        case("backend from another port", from_backend(b1, 22, C1, 40000, &ike(40)).bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
        case("ICMP echo reply to the gateway", echo_reply.bytes(), Expect::Pass, counter::PASS_NOT_CLIENT),
        case("backend reply, TTL 1", from_backend(b1, 4500, C1, 4500, &ike(40)).with_ttl(1).bytes(), Expect::Pass, counter::PASS_TTL),
        case("backend reply with IP options", packet::with_ip_option(&nat_t.bytes()), Expect::Pass, counter::PASS_IP_OPTIONS),
        case("not from a backend", Ipv4Frame::udp(ROUTER_MAC, INT_MAC, (Ipv4Addr::new(10, 0, 0, 99), 4500), (C1, 4500), &ike(40)).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
    ];
    lb.check(&rows);

    let sent: u64 = [&reply, &nat_t, &nocsum, &frag1, &frag2, &esp]
        .iter()
        .map(|f| f.bytes().len() as u64)
        .sum();
    assert_eq!(
        lb.traffic(b1, DIR_REVERSE),
        Traffic {
            packets: 6,
            bytes: sent
        }
    );
}

#[test]
fn client_behind_a_new_router_is_relearned() {
    let Some(mut lb) = Lb::load(Setup::default()) else {
        return;
    };
    let b1 = lb.ring_choice(C1);
    let first = to_vip(C1, 500, 500, &ike(100));
    let moved = to_vip(C1, 4500, 4500, &ike(100)).with_macs(ROUTER2_MAC, EXT_MAC);
    let reply = from_backend(b1, 4500, C1, 4500, &ike(60));
    #[rustfmt::skip]
    let rows = [
        case("via router 1", first.bytes(), Expect::Redirect(forwarded(&first, b1)), counter::FORWARD),
        case("via router 2", moved.bytes(), Expect::Redirect(forwarded(&moved, b1)), counter::FORWARD),
        case("reply goes to router 2", reply.bytes(), Expect::Redirect(reversed(&reply, ROUTER2_MAC)), counter::REVERSE),
    ];
    lb.check(&rows);
}

#[test]
fn one_arm_leaves_by_xdp_tx() {
    let Some(mut lb) = Lb::load(Setup {
        topology: Topology::OneArm,
        ..Setup::default()
    }) else {
        return;
    };
    let b1 = lb.ring_choice(C1);
    let init = to_vip(C1, 500, 500, &ike(100));
    let reply = from_backend(b1, 500, C1, 500, &ike(60));
    #[rustfmt::skip]
    let rows = [
        case("client to VIP", init.bytes(), Expect::Tx(forwarded_from(&init, b1, EXT_MAC)), counter::FORWARD),
        case("backend reply", reply.bytes(), Expect::Tx(reversed(&reply, ROUTER_MAC)), counter::REVERSE),
    ];
    lb.check(&rows);
}

#[test]
fn dsr_rewrites_macs_and_ttl_only() {
    let Some(mut lb) = Lb::load(Setup {
        dsr: true,
        ..Setup::default()
    }) else {
        return;
    };
    let b1 = lb.ring_choice(C1);
    let init = to_vip(C1, 500, 500, &ike(100));
    let b = lb.backend(b1);
    let want = init.clone().with_ttl(63).with_macs(b.smac, b.dmac).bytes();
    #[rustfmt::skip]
    let rows = [
        case("client to VIP", init.bytes(), Expect::Redirect(want), counter::FORWARD),
        // In DSR mode backends answer from the VIP themselves; a packet from a backend
        // address is not ikelb's.
        case("backend packet", from_backend(b1, 500, C1, 500, &ike(60)).bytes(), Expect::Pass, counter::PASS_NOT_VIP),
    ];
    lb.check(&rows);
}

#[test]
fn unusable_backend_is_reselected() {
    let Some(mut lb) = Lb::load(Setup::default()) else {
        return;
    };
    let b1 = lb.ring_choice(C1);
    let init = to_vip(C1, 500, 500, &ike(100));
    #[rustfmt::skip]
    let rows = [case("before", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD)];
    lb.check(&rows);

    // The daemon marks b1 down and rebuilds the ring without it.
    let mut b = lb.backend(b1);
    b.flags &= !BACKEND_F_USABLE;
    lb.set_backend(b1, b);
    let ring = lb.maglev(&[b1]);
    lb.write_ring(&ring);
    let now = lb.ring_choice(C1);
    assert_ne!(now, b1);

    let auth = to_vip(C1, 4500, 4500, &ike(100));
    #[rustfmt::skip]
    let rows = [case("after", auth.bytes(), Expect::Redirect(forwarded(&auth, now)), counter::FORWARD)];
    lb.check(&rows);
    assert_eq!(lb.persisted(C1).map(|e| e.backend), Some(now));
}

/// `bpf_ktime_get_coarse_ns()` in persistence ticks, from userspace.
fn now_ticks() -> u32 {
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

#[test]
fn persistence_wins_over_the_ring_until_idle() {
    let Some(mut lb) = Lb::load(Setup {
        persist_timeout_ticks: 100,
        ..Setup::default()
    }) else {
        return;
    };
    // Clients the ring would send elsewhere, persisted on another backend: C1 active, C2 idle.
    let r1 = lb.ring_choice(C1);
    let r2 = lb.ring_choice(C2);
    let p1 = r1 % 3 + 1;
    let p2 = r2 % 3 + 1;
    let now = now_ticks();
    let entry = |backend, atime| PersistValue {
        backend,
        atime,
        client_mac: ROUTER_MAC,
        port: 0,
        _pad: 0,
    };
    lb.persist(C1, entry(p1, now - 5));
    lb.persist(C2, entry(p2, now - 500));
    // C3 is persisted on a backend id the daemon has since given to another service.
    let r3 = lb.ring_choice(C3);
    let p3 = r3 % 3 + 1;
    lb.persist(C3, entry(p3, now));
    let mut b = lb.backend(p3);
    b.service = SERVICE_ID + 1;
    lb.set_backend(p3, b);

    let f1 = to_vip(C1, 4500, 4500, &ike(80));
    let f2 = to_vip(C2, 4500, 4500, &ike(80));
    let f3 = to_vip(C3, 4500, 4500, &ike(80));
    #[rustfmt::skip]
    let rows = [
        case("active client keeps its backend", f1.bytes(), Expect::Redirect(forwarded(&f1, p1)), counter::FORWARD),
        case("idle client is re-balanced", f2.bytes(), Expect::Redirect(forwarded(&f2, r2)), counter::FORWARD),
        case("backend id now another service's", f3.bytes(), Expect::Redirect(forwarded(&f3, r3)), counter::FORWARD),
    ];
    lb.check(&rows);
    let e1 = lb.persisted(C1).unwrap();
    assert_eq!(e1.backend, p1);
    assert!(e1.atime >= now, "atime refreshed");
    assert_eq!(lb.persisted(C2).unwrap().backend, r2);
    assert_eq!(lb.persisted(C3).unwrap().backend, r3);
}

#[test]
fn no_usable_backend_drops() {
    let Some(mut lb) = Lb::load(Setup::default()) else {
        return;
    };
    lb.write_ring(&vec![0; RING as usize]);
    #[rustfmt::skip]
    let rows = [case("ring of zeros", to_vip(C1, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_NO_BACKEND)];
    lb.check(&rows);
    assert_eq!(lb.persisted(C1), None);
}

#[test]
fn inconsistent_maps_drop_as_bad_backend() {
    let Some(mut lb) = Lb::load(Setup::default()) else {
        return;
    };
    // A ring naming a backend id whose BACKENDS slot was never written.
    lb.write_ring(&vec![9; RING as usize]);
    #[rustfmt::skip]
    let rows = [case("missing backend", to_vip(C1, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_BAD_BACKEND)];
    lb.check(&rows);

    // A backend whose egress port has no devmap entry.
    let ring = lb.maglev(&[]);
    lb.write_ring(&ring);
    let b1 = lb.ring_choice(C2);
    let mut b = lb.backend(b1);
    b.tx_port = 5;
    lb.set_backend(b1, b);
    #[rustfmt::skip]
    let rows = [case("no egress interface", to_vip(C2, 500, 500, &ike(50)).bytes(), Expect::Drop, counter::DROP_BAD_BACKEND)];
    lb.check(&rows);
}

#[test]
fn client_on_an_unknown_interface_gets_no_replies() {
    let Some(mut lb) = Lb::load(Setup::default()) else {
        return;
    };
    let mut ports: HashMap<_, u32, u32> = lb.map(maps::IFINDEX_PORTS);
    ports.remove(&LO).unwrap();
    let b1 = lb.ring_choice(C1);
    let init = to_vip(C1, 500, 500, &ike(100));
    let reply = from_backend(b1, 500, C1, 500, &ike(60));
    // Forwarded (the backend is known), but the reply has no interface to leave by: dropped
    // rather than sent out of a guessed one.
    #[rustfmt::skip]
    let rows = [
        case("client to VIP", init.bytes(), Expect::Redirect(forwarded(&init, b1)), counter::FORWARD),
        case("backend reply", reply.bytes(), Expect::Drop, counter::DROP_BAD_BACKEND),
    ];
    lb.check(&rows);
    assert_eq!(lb.persisted(C1).map(|e| e.port), Some(u8::MAX));
}
