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

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

use aya::{
    maps::{Array, DevMap, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    counter, event, globals,
    hash::{client_hash_v4, client_hash_v6},
    maglev::{self, Member},
    maps, Backend, Iface, PersistKeyV4, PersistKeyV6, PersistValue, ProbationValue, Service,
    Traffic, BACKEND_F_USABLE, FAMILY_V4, FAMILY_V6, INGRESS_F_ATTACHED, INGRESS_F_BACKENDS,
    INGRESS_F_CLIENTS, MAX_PORTS, RING_F_CHANGED, SVC_F_ESP, TICK_SHIFT,
};

use crate::lab::{NetNs, RunPrefix};
use crate::packet::Mac;

mod pool;

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
        }
    }
}

/// What a row expects.
pub enum Expect {
    /// XDP_PASS with the frame unchanged.
    Pass,
    Drop,
    /// XDP_REDIRECT with this output frame, through the port whose MAC is its source MAC
    /// (run with only that port in `TX_PORTS`).
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
    /// Arrival interface; `None`: by the frame's destination MAC ([`INT_MAC`] → `int`).
    pub ingress: Option<Side>,
    /// Exact `EVENTS` deltas (index, count); `None`: not checked.
    pub events: Option<Vec<(u32, u64)>>,
}

pub fn case(name: impl Into<String>, input: Vec<u8>, expect: Expect, counter: u32) -> Case {
    Case {
        name: name.into(),
        input,
        expect,
        counter,
        ingress: None,
        events: None,
    }
}

impl Case {
    /// The frame arrives on `side`.
    pub fn on(mut self, side: Side) -> Self {
        self.ingress = Some(side);
        self
    }

    /// The row must add exactly these events (and no other; `&[]`: none).
    pub fn events(mut self, events: &[(u32, u64)]) -> Self {
        let mut e: Vec<_> = events.iter().copied().filter(|&(_, n)| n != 0).collect();
        e.sort_unstable();
        self.events = Some(e);
        self
    }
}

/// The test's network namespace and its two veth pairs (module doc).
pub struct TestNet {
    /// Deleting it deletes the veth pairs inside.
    ns: NetNs,
    handle: File,
    pub ext: u32,
    pub int: u32,
}

/// Puts the thread back into the namespace it left (on drop, also while unwinding).
struct Back(File);

impl Drop for Back {
    fn drop(&mut self) {
        // SAFETY: setns on a valid namespace fd; CLONE_NEWNET moves only this thread.
        let rc = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns back: {}", std::io::Error::last_os_error());
    }
}

impl TestNet {
    /// The namespace, both veth pairs, addresses, neighbours and routes, in as few processes
    /// as it takes (`ip netns add`, one `ip -batch`): each start of `ip` costs a large share
    /// of a fixture's time in an emulated guest (docs/kernels.md). The veth pairs live and
    /// die with the namespace.
    fn new() -> anyhow::Result<Self> {
        crate::lab::reap_stale();
        let ns = NetNs::new(RunPrefix::new('p').name("xdp"))?;
        // NetNs turns IPv6 off; the IPv6 FIB rows need it (no DAD: nothing else runs here).
        // Links created from now on inherit `default`.
        for key in [
            "net/ipv6/conf/all/disable_ipv6",
            "net/ipv6/conf/default/disable_ipv6",
        ] {
            ns.sysctl(key, "0")?;
        }
        for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
            ns.sysctl(key, "1")?;
        }
        let r = mac_str(ROUTER_MAC);
        ns.ip_batch(&format!(
            "link add ext address {ext_mac} type veth peer name ext-p\n\
             link add int address {int_mac} type veth peer name int-p\n\
             link set ext up\n\
             link set ext-p up\n\
             link set int up\n\
             link set int-p up\n\
             addr add 192.0.2.1/24 dev ext\n\
             addr add 10.0.0.1/24 dev int\n\
             addr add 2001:db8:e::1/64 dev ext nodad\n\
             addr add 2001:db8:1::1/64 dev int nodad\n\
             neigh add {ROUTER4} lladdr {r} nud permanent dev ext\n\
             neigh add {ROUTER6} lladdr {r} nud permanent dev ext\n\
             route add 198.51.100.0/24 via {ROUTER4} dev ext\n\
             route add 192.0.2.32/27 via {ROUTER4} dev ext\n\
             route add 2001:db8:c::/48 via {ROUTER6} dev ext\n\
             route add 2001:db8:d::/48 via {ROUTER6} dev ext\n\
             route add unreachable 100.64.0.0/10\n\
             route add unreachable 2001:db8:f::/48\n",
            ext_mac = mac_str(EXT_MAC),
            int_mac = mac_str(INT_MAC),
        ))?;
        let (ext, int) = ns.run(|| {
            let index = |name: &str| {
                let c = std::ffi::CString::new(name).expect("no NUL");
                // SAFETY: a valid NUL-terminated name; if_nametoindex reads it only.
                unsafe { libc::if_nametoindex(c.as_ptr()) }
            };
            (index("ext"), index("int"))
        })?;
        anyhow::ensure!(ext != 0 && int != 0, "{}: no ext/int link", ns.name());
        let handle = File::open(format!("/run/netns/{}", ns.name()))?;
        Ok(Self {
            ns,
            handle,
            ext,
            int,
        })
    }

    /// Runs `f` with this thread inside the namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let back = Back(File::open("/proc/thread-self/ns/net").expect("own netns"));
        // SAFETY: as in `Back::drop`.
        let rc = unsafe { libc::setns(self.handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let r = f();
        drop(back);
        r
    }

    /// `ip -n <ns> ARGS…` (e.g. to move a neighbour), panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns
            .ip(args)
            .unwrap_or_else(|e| panic!("ip {args:?}: {e:#}"))
    }
}

/// The loaded program and its maps.
pub struct Fixture {
    /// `None` only while dropping (the program goes back to [`pool`]).
    ebpf: Option<Ebpf>,
    pub setup: Setup,
    services: [Service; 2],
    pub net: TestNet,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-text panic)".into())
}

/// The load-time globals of `setup`.
fn globals(setup: &Setup) -> pool::Globals {
    pool::Globals {
        persist_timeout_ticks: setup.persist_timeout_ticks,
        dsr: setup.dsr,
        slot_fast_path: setup.slot_fast_path,
        new_client_quota: setup.new_client_quota,
    }
}

/// Entries of each of the fixture's LRU maps.
const LRU_ENTRIES: u32 = 4096;

/// Loads and verifies the object with `setup`'s globals and the fixture's map sizes.
fn load(setup: &Setup) -> Ebpf {
    let dsr = u32::from(setup.dsr);
    let fast = u32::from(setup.slot_fast_path);
    let mut ebpf = EbpfLoader::new()
        .override_global(globals::RING_SIZE, &RING, true)
        .override_global(globals::HASH_SEED, &SEED, true)
        .override_global(
            globals::PERSIST_TIMEOUT_TICKS,
            &setup.persist_timeout_ticks,
            true,
        )
        .override_global(globals::MODE_DSR, &dsr, true)
        .override_global(globals::SLOT_FAST_PATH, &fast, true)
        .override_global(globals::NEW_CLIENT_QUOTA, &setup.new_client_quota, true)
        .map_max_entries(maps::RINGS, 4 * RING)
        // LRU maps far larger than any row fills: a reused program's maps were emptied by
        // deletes (`pool`), and on Debian 12's 6.1 a 64-entry LRU emptied that way evicted
        // the entry a row had just inserted (the kernel's LRU keeps freed entries on
        // per-CPU free lists). With room to spare the LRU never evicts in a table.
        .map_max_entries(maps::PERSIST_V4, LRU_ENTRIES)
        .map_max_entries(maps::PERSIST_V6, LRU_ENTRIES)
        .map_max_entries(maps::PROBATION_V4, LRU_ENTRIES)
        .map_max_entries(maps::PROBATION_V6, LRU_ENTRIES)
        .map_max_entries(maps::PROOFS_V4, LRU_ENTRIES)
        .map_max_entries(maps::PROOFS_V6, LRU_ENTRIES)
        .map_max_entries(maps::REFRESHED_V4, 4 * RING)
        .map_max_entries(maps::BACKENDS, 16)
        .map_max_entries(maps::BACKEND_STATS, 32)
        .load(lb_ctl::EBPF_OBJECT)
        .expect("load the XDP object (maps)");
    let prog: &mut Xdp = ebpf
        .program_mut(lb_ctl::XDP_PROGRAM)
        .expect("the ikelb program")
        .try_into()
        .expect("an XDP program");
    if let Err(e) = lb_ctl::kernel::load_xdp(prog) {
        panic!("the verifier rejected the program: {e:#?}");
    }
    ebpf
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            pool::give(globals(&self.setup), ebpf);
        }
    }
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
        let net = TestNet::new().unwrap_or_else(|e| panic!("test namespace: {e:#}"));
        let ebpf = pool::take(globals(&setup)).unwrap_or_else(|| load(&setup));
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
            ebpf: Some(ebpf),
            setup,
            services: [
                service(SVC4, FAMILY_V4, VIP4.into()),
                service(SVC6, FAMILY_V6, VIP6.into()),
            ],
            net,
        };
        f.fill();
        Some(f)
    }

    /// Runs `body` on a fixture loaded with `setup` and the slot fast path off, then on one
    /// with it on (both runs always), and panics naming each run that failed.
    pub fn both_fast_paths(setup: Setup, body: impl Fn(&mut Fixture)) {
        let mut failed = Vec::new();
        for fast in [false, true] {
            let Some(mut lb) = Fixture::load(Setup {
                slot_fast_path: fast,
                ..setup
            }) else {
                return;
            };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| body(&mut lb))) {
                failed.push(format!(
                    "run with SLOT_FAST_PATH={}: {}",
                    u32::from(fast),
                    panic_text(&*p)
                ));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    }

    pub fn ifindex(&self, side: Side) -> u32 {
        match side {
            Side::Ext => self.net.ext,
            Side::Int => self.net.int,
        }
    }

    /// The `INGRESS` / `IFINDEX_PORTS` value of the fixture's interface `side` (0: not
    /// attached).
    pub fn ingress_value(&self, side: Side) -> u32 {
        match (self.setup.topology, side) {
            (Topology::TwoArm, Side::Ext) => PORT_EXT | INGRESS_F_ATTACHED | INGRESS_F_CLIENTS,
            (Topology::TwoArm, Side::Int) => PORT_INT | INGRESS_F_ATTACHED | INGRESS_F_BACKENDS,
            (Topology::OneArm, Side::Ext) => {
                PORT_EXT | INGRESS_F_ATTACHED | INGRESS_F_CLIENTS | INGRESS_F_BACKENDS
            }
            (Topology::OneArm, Side::Int) => 0,
        }
    }

    /// Writes `value` as the `INGRESS` and `IFINDEX_PORTS` entry of `side` (0 removes it
    /// from `IFINDEX_PORTS`).
    pub fn set_ingress(&mut self, side: Side, value: u32) {
        let ifindex = self.ifindex(side);
        let mut ingress: Array<_, u32> = self.map(maps::INGRESS);
        ingress.set(ifindex, value, 0).unwrap();
        let mut ports: HashMap<_, u32, u32> = self.map(maps::IFINDEX_PORTS);
        if value == 0 {
            let _ = ports.remove(&ifindex);
        } else {
            ports.insert(ifindex, value, 0).unwrap();
        }
    }

    fn fill(&mut self) {
        let (ext, int) = (self.net.ext, self.net.int);
        let (backend_ifindex, backend_port, backend_smac) = match self.setup.topology {
            Topology::TwoArm => (int, PORT_INT, INT_MAC),
            Topology::OneArm => (ext, PORT_EXT, EXT_MAC),
        };
        let [s4, s6] = self.services;
        let mut vips4: HashMap<_, u32, Service> = self.map(maps::VIPS_V4);
        vips4.insert(s4.vip[0], s4, 0).unwrap();
        let mut vips6: HashMap<_, [u32; 4], Service> = self.map(maps::VIPS_V6);
        vips6.insert(s6.vip, s6, 0).unwrap();
        let mut services: Array<_, Service> = self.map(maps::SERVICES);
        services.set(SVC4, s4, 0).unwrap();
        services.set(SVC6, s6, 0).unwrap();
        // As the daemon writes them (`lb_ctl::dataplane`): each VIP alone in its slot.
        let mut index: Array<_, lb_common::VipSlot> = self.map(maps::VIP_INDEX_V4);
        let vip_slot = lb_common::VipSlot {
            state: lb_common::VIP_SLOT_ONE,
            addr: s4.vip[0],
            service: SVC4,
        };
        index.set(lb_common::vip_slot(s4.vip[0]), vip_slot, 0).unwrap();
        let mut index6: Array<_, lb_common::VipSlot6> = self.map(maps::VIP_INDEX_V6);
        let vip_slot6 = lb_common::VipSlot6 {
            state: lb_common::VIP_SLOT_ONE,
            service: SVC6,
            addr: s6.vip,
        };
        index6.set(lb_common::vip_slot6(&s6.vip), vip_slot6, 0).unwrap();

        let one_arm = self.setup.topology == Topology::OneArm;
        let mut ifaces: Array<_, Iface> = self.map(maps::IFACES);
        for (port, ifindex, mac) in [(PORT_EXT, ext, EXT_MAC), (PORT_INT, int, INT_MAC)] {
            if one_arm && port == PORT_INT {
                continue;
            }
            let iface = Iface {
                ifindex,
                mac,
                _pad: [0; 2],
            };
            ifaces.set(port, iface, 0).unwrap();
        }
        for side in [Side::Ext, Side::Int] {
            let v = self.ingress_value(side);
            if v != 0 {
                self.set_ingress(side, v);
            }
        }
        self.set_tx_port(PORT_EXT, Some(ext));
        if self.setup.topology == Topology::TwoArm {
            self.set_tx_port(PORT_INT, Some(int));
        }

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
                    ifindex: backend_ifindex,
                    dmac: backend_mac(id),
                    smac: backend_smac,
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

    /// Points devmap entry `port` at `ifindex` (`None` deletes it).
    pub fn set_tx_port(&mut self, port: u32, ifindex: Option<u32>) {
        let net = &self.net;
        let map = self
            .ebpf
            .as_mut()
            .expect("loaded")
            .map_mut(maps::TX_PORTS)
            .unwrap_or_else(|| panic!("map {}", maps::TX_PORTS));
        net.enter(|| match ifindex {
            Some(i) => {
                let mut tx: DevMap<_> = map.try_into().unwrap();
                tx.set(port, i, None, 0)
                    .unwrap_or_else(|e| panic!("TX_PORTS[{port}] = {i}: {e}"));
            }
            None => {
                let _ = pool::delete_u32(map, port);
            }
        });
    }

    /// The devmap target of `port`, if any.
    fn tx_port(&mut self, port: u32) -> Option<u32> {
        let tx: DevMap<_> = self.map(maps::TX_PORTS);
        tx.get(port, 0).ok().map(|v| v.if_index)
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
            .as_mut()
            .expect("loaded")
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

    fn slot_index(&self, client: IpAddr) -> u32 {
        let (hash, svc) = match client {
            IpAddr::V4(_) => (client_hash_v4(words(client)[0], SEED), SVC4),
            IpAddr::V6(_) => (client_hash_v6(&words(client), SEED), SVC6),
        };
        self.services[svc as usize].ring_base + lb_common::hash::ring_slot(hash, RING)
    }

    /// The raw ring slot of `client` (backend id and `RING_F_*` flags).
    pub fn ring_slot(&mut self, client: IpAddr) -> u32 {
        let i = self.slot_index(client);
        let rings: Array<_, u32> = self.map(maps::RINGS);
        rings.get(&i, 0).unwrap()
    }

    /// Writes the raw ring slot of `client`.
    pub fn set_ring_slot(&mut self, client: IpAddr, value: u32) {
        let i = self.slot_index(client);
        let mut rings: Array<_, u32> = self.map(maps::RINGS);
        rings.set(i, value, 0).unwrap();
    }

    /// Sets `RING_F_CHANGED` on `client`'s slot, as the daemon does for a slot whose live
    /// entries disagree with it.
    pub fn mark_changed(&mut self, client: IpAddr) {
        let v = self.ring_slot(client);
        self.set_ring_slot(client, v | RING_F_CHANGED);
    }

    /// The backend the ring gives `client` (what a new client gets).
    pub fn ring_choice(&mut self, client: IpAddr) -> u32 {
        self.ring_slot(client) & lb_common::RING_BACKEND_MASK
    }

    /// The persistence entry of `client`, from `PERSIST_V4` or `PERSIST_V6`.
    pub fn persisted(&mut self, client: IpAddr) -> Option<PersistValue> {
        match client {
            IpAddr::V4(_) => {
                let m: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
                m.get(&key4(client), 0).ok()
            }
            IpAddr::V6(_) => {
                let m: HashMap<_, PersistKeyV6, PersistValue> = self.map(maps::PERSIST_V6);
                m.get(&key6(client), 0).ok()
            }
        }
    }

    /// Writes `v` as the persistence entry of `client`.
    pub fn persist(&mut self, client: IpAddr, v: PersistValue) {
        match client {
            IpAddr::V4(_) => {
                let mut m: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
                m.insert(key4(client), v, 0).unwrap();
            }
            IpAddr::V6(_) => {
                let mut m: HashMap<_, PersistKeyV6, PersistValue> = self.map(maps::PERSIST_V6);
                m.insert(key6(client), v, 0).unwrap();
            }
        }
    }

    /// Deletes `client`'s persistence entry (if any).
    pub fn unpersist(&mut self, client: IpAddr) {
        match client {
            IpAddr::V4(_) => {
                let mut m: HashMap<_, PersistKeyV4, PersistValue> = self.map(maps::PERSIST_V4);
                let _ = m.remove(&key4(client));
            }
            IpAddr::V6(_) => {
                let mut m: HashMap<_, PersistKeyV6, PersistValue> = self.map(maps::PERSIST_V6);
                let _ = m.remove(&key6(client));
            }
        }
    }

    /// The probation entry of `client`, from `PROBATION_V4` or `PROBATION_V6`.
    pub fn probation(&mut self, client: IpAddr) -> Option<ProbationValue> {
        match client {
            IpAddr::V4(_) => {
                let m: HashMap<_, PersistKeyV4, ProbationValue> = self.map(maps::PROBATION_V4);
                m.get(&key4(client), 0).ok()
            }
            IpAddr::V6(_) => {
                let m: HashMap<_, PersistKeyV6, ProbationValue> = self.map(maps::PROBATION_V6);
                m.get(&key6(client), 0).ok()
            }
        }
    }

    /// Writes `v` as the probation entry of `client`.
    pub fn set_probation(&mut self, client: IpAddr, v: ProbationValue) {
        match client {
            IpAddr::V4(_) => {
                let mut m: HashMap<_, PersistKeyV4, ProbationValue> = self.map(maps::PROBATION_V4);
                m.insert(key4(client), v, 0).unwrap();
            }
            IpAddr::V6(_) => {
                let mut m: HashMap<_, PersistKeyV6, ProbationValue> = self.map(maps::PROBATION_V6);
                m.insert(key6(client), v, 0).unwrap();
            }
        }
    }

    /// Deletes `client`'s probation entry (if any).
    pub fn unprobation(&mut self, client: IpAddr) {
        match client {
            IpAddr::V4(_) => {
                let mut m: HashMap<_, PersistKeyV4, ProbationValue> = self.map(maps::PROBATION_V4);
                let _ = m.remove(&key4(client));
            }
            IpAddr::V6(_) => {
                let mut m: HashMap<_, PersistKeyV6, ProbationValue> = self.map(maps::PROBATION_V6);
                let _ = m.remove(&key6(client));
            }
        }
    }

    /// The refresh stamp (tick) of `client`'s ring slot, IPv4 or IPv6: `REFRESHED_V4` is
    /// indexed like `RINGS` for both families despite its name (`lb_common::maps`).
    pub fn refreshed(&mut self, client: impl Into<IpAddr>) -> u32 {
        let i = self.slot_index(client.into());
        let m: Array<_, u32> = self.map(maps::REFRESHED_V4);
        m.get(&i, 0).unwrap()
    }

    /// Writes the refresh stamp of `client`'s ring slot (either family, as [`Self::refreshed`]).
    pub fn set_refreshed(&mut self, client: impl Into<IpAddr>, tick: u32) {
        let i = self.slot_index(client.into());
        let mut m: Array<_, u32> = self.map(maps::REFRESHED_V4);
        m.set(i, tick, 0).unwrap();
    }

    pub fn counters(&mut self) -> Vec<u64> {
        let c: PerCpuArray<_, u64> = self.map(maps::COUNTERS);
        (0..counter::COUNT)
            .map(|i| c.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    /// `EVENTS`, summed over the CPUs.
    pub fn events(&mut self) -> Vec<u64> {
        let c: PerCpuArray<_, u64> = self.map(maps::EVENTS);
        (0..event::COUNT)
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

    /// Where a frame arrives by default: `int` when addressed to [`INT_MAC`], else `ext`;
    /// one-arm: always `ext`.
    pub fn default_side(&self, frame: &[u8]) -> Side {
        if self.setup.topology == Topology::TwoArm && frame.len() >= 6 && frame[..6] == INT_MAC {
            Side::Int
        } else {
            Side::Ext
        }
    }

    /// Runs the program on `input` arriving on `side`: (action, output frame).
    pub fn run_on(&mut self, input: &[u8], side: Side) -> (u32, Vec<u8>) {
        let ingress = self.ifindex(side);
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data = data_meta = 0 (no metadata), data_end =
        // the frame length, egress 0 (xdp_convert_md_to_buff, bpf_prog_test_run_xdp).
        let md: [u32; 6] = [0, input.len() as u32, 0, ingress, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let prog: &Xdp = self
            .ebpf
            .as_ref()
            .expect("loaded")
            .program(lb_ctl::XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; input.len() + 256];
        let r = self.net.enter(|| {
            prog.test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN")
        });
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs `input` on the interface [`Fixture::default_side`] picks.
    pub fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let side = self.default_side(input);
        self.run_on(input, side)
    }

    fn port_of_mac(&self, frame: &[u8]) -> Option<u32> {
        match frame.get(6..12) {
            Some(m) if m == EXT_MAC => Some(PORT_EXT),
            Some(m) if m == INT_MAC => Some(PORT_INT),
            _ => None,
        }
    }

    /// Runs `cases` in order (later rows see the entries earlier rows created) and panics
    /// listing every row that failed (and which slot fast path run it was).
    pub fn check(&mut self, cases: &[Case]) {
        let mut failures = Vec::new();
        for case in cases {
            let side = case
                .ingress
                .unwrap_or_else(|| self.default_side(&case.input));
            // A redirect row runs with only its expected port in the devmap.
            let mut removed = None;
            if let Expect::Redirect(f) = &case.expect {
                match self.port_of_mac(f) {
                    Some(port) => {
                        let other = 1 - port;
                        if let Some(target) = self.tx_port(other) {
                            self.set_tx_port(other, None);
                            removed = Some((other, target));
                        }
                    }
                    None => failures.push(format!(
                        "{}: the expected frame's source MAC names no port",
                        case.name
                    )),
                }
            }
            let before = self.counters();
            let ev_before = self.events();
            let (action, out) = self.run_on(&case.input, side);
            let after = self.counters();
            let ev_after = self.events();
            if let Some((port, target)) = removed {
                self.set_tx_port(port, Some(target));
            }
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
            if let Some(want) = &case.events {
                let got: Vec<(u32, u64)> = ev_before
                    .iter()
                    .zip(&ev_after)
                    .enumerate()
                    .filter(|(_, (b, a))| a != b)
                    .map(|(i, (b, a))| (i as u32, a - b))
                    .collect();
                if &got != want {
                    let label = |v: &[(u32, u64)]| -> Vec<(&str, u64)> {
                        v.iter()
                            .map(|&(i, n)| (event::LABELS[i as usize], n))
                            .collect()
                    };
                    failures.push(format!(
                        "{}: event deltas {:?}, want {:?}",
                        case.name,
                        label(&got),
                        label(want)
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} row(s) failed (SLOT_FAST_PATH={}, {:?}{}):\n{}",
            failures.len(),
            u32::from(self.setup.slot_fast_path),
            self.setup.topology,
            if self.setup.dsr { " DSR" } else { "" },
            failures.join("\n")
        );
    }
}

fn key4(client: IpAddr) -> PersistKeyV4 {
    PersistKeyV4 {
        service: SVC4,
        client: words(client)[0],
    }
}

fn key6(client: IpAddr) -> PersistKeyV6 {
    PersistKeyV6 {
        service: SVC6,
        client: words(client),
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
