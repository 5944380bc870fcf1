//! Loading the object, filling its maps as the daemon would, and running one frame.

use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use aya::{
    maps::{Array, DevMap, HashMap},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    globals, maps, Backend, Iface, Service, BACKEND_F_USABLE, FAMILY_V4, FAMILY_V6,
    INGRESS_F_ATTACHED, INGRESS_F_BACKENDS, INGRESS_F_CLIENTS, MAX_PORTS, SVC_F_ESP, VIP_SLOT_ONE,
};

use super::{
    backend_addr, backend_mac, pool, wire16, words, Setup, Side, TestNet, Topology, EXT_MAC,
    INT_MAC, PORT_EXT, PORT_INT, RING, SEED, SVC4, SVC6, TCP_PORTS, UDP_PORTS, VIP4, VIP6,
};

/// The loaded program and its maps.
pub struct Fixture {
    /// `None` only while dropping (the program goes back to [`pool`]).
    ebpf: Option<Ebpf>,
    pub setup: Setup,
    pub(super) services: [Service; 2],
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
        sa_steering: setup.sa_steering,
    }
}

/// Entries of each of the fixture's LRU maps.
const LRU_ENTRIES: u32 = 4096;

/// Loads and verifies the object with `setup`'s globals and the fixture's map sizes.
fn load(setup: &Setup) -> Ebpf {
    let dsr = u32::from(setup.dsr);
    let fast = u32::from(setup.slot_fast_path);
    let steering = u32::from(setup.sa_steering);
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
        .override_global(globals::SA_STEERING, &steering, true)
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
        .map_max_entries(maps::IKE_SAS, LRU_ENTRIES)
        .map_max_entries(maps::ESP_SAS, LRU_ENTRIES)
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
        ingress.set(ifindex, &value, 0).unwrap();
        let mut ports: HashMap<_, u32, u32> = self.map(maps::IFINDEX_PORTS);
        if value == 0 {
            let _ = ports.remove(&ifindex);
        } else {
            ports.insert(&ifindex, &value, 0).unwrap();
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
        vips4.insert(&s4.vip[0], &s4, 0).unwrap();
        let mut vips6: HashMap<_, [u32; 4], Service> = self.map(maps::VIPS_V6);
        vips6.insert(&s6.vip, &s6, 0).unwrap();
        let mut services: Array<_, Service> = self.map(maps::SERVICES);
        services.set(SVC4, &s4, 0).unwrap();
        services.set(SVC6, &s6, 0).unwrap();
        // As the daemon writes them (`lb_ctl::dataplane`): each VIP alone in its slot.
        self.set_vip_index(VIP4.into(), VIP_SLOT_ONE, SVC4);
        self.set_vip_index(VIP6.into(), VIP_SLOT_ONE, SVC6);

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
            ifaces.set(port, &iface, 0).unwrap();
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
                ids.insert(&words(addr)[0], &id, 0).unwrap();
            } else {
                let mut ids: HashMap<_, [u32; 4], u32> = self.map(maps::BACKEND_IDS_V6);
                ids.insert(&words(addr), &id, 0).unwrap();
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
    pub(super) fn tx_port(&mut self, port: u32) -> Option<u32> {
        let tx: DevMap<_> = self.map(maps::TX_PORTS);
        tx.get(port, 0).ok().map(|v| v.if_index)
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
}
