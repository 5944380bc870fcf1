//! The IPv6 side of `lb`: the benchmark's virtual server with an IPv6 VIP and IPv6 backends,
//! its configuration file, the IPv6 stamp's template, and established IPv6 clients.
//!
//! Every backend shares the /96 [`BACKEND_PREFIX6`], so the reverse rows' stamp writes only
//! the low word of a backend's address (`BENCH_REV` holds it), as it writes only the low word
//! of a client's (`frame::client6_wire`).

use std::{borrow::BorrowMut, net::Ipv6Addr};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use lb_common::{
    hash::{client_hash_v6, ring_slot},
    PersistKeyV6, PersistValue, RING_BACKEND_MASK,
};
use lb_ctl::config::Config;

use crate::{
    frame::{client6_wire, Template},
    lb::{self, DaemonPaths, BACKENDS, HASH_SEED},
};

pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10);
/// The backends' /96: backend `i` is `2001:db8::(0x11 + i)` (low word only).
pub const BACKEND_PREFIX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0);

pub fn backend_addr6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11 + i as u16)
}

/// [`lb::config_yaml`] with the IPv6 VIP and the IPv6 backends; `extra` is appended
/// (top-level keys).
pub fn config_yaml6(interfaces: &[&str], paths: Option<&DaemonPaths<'_>>, extra: &str) -> String {
    let mut y = format!(
        "interfaces: [{}]\nmode: nat\nxdp_mode: native\nhash_seed: {HASH_SEED:#x}\n\
         virtual_servers:\n  - name: bench\n    vip: {VIP6}\n    ports: [500, 4500]\n    \
         esp: true\n    backends:\n",
        interfaces.join(", ")
    );
    for i in 0..BACKENDS {
        y.push_str(&format!("      - address: {}\n", backend_addr6(i)));
    }
    y.push_str("health_check:\n  interval: 5s\n  timeout: 2s\n");
    if let Some(p) = paths {
        y.push_str(&format!(
            "control:\n  socket: {}\nmetrics:\n  listen: 127.0.0.1:9435\nstate_dir: {}\nbpffs: {}\n",
            p.dir.join("ctl.sock").display(),
            p.dir.join("state").display(),
            p.bpffs.display()
        ));
    }
    y + extra
}

/// The IPv6 benchmark configuration as the daemon parses it.
pub fn config6(interfaces: &[&str]) -> Result<Config> {
    lb::parse_config(&config_yaml6(interfaces, None, ""))
}

/// `BENCH_TEMPLATE6[0]` = `t`'s IPv6 block, or `BENCH_TEMPLATE[0]` = its IPv4 block.
pub fn set_template_of(ebpf: &mut Ebpf, t: &Template) -> Result<()> {
    let Some(block) = t.block6 else {
        return lb::set_template(ebpf, t.block);
    };
    let mut m: Array<&mut MapData, [u8; 72]> =
        Array::try_from(ebpf.map_mut("BENCH_TEMPLATE6").context("BENCH_TEMPLATE6")?)?;
    m.set(0, block, 0)?;
    Ok(())
}

/// [`lb::establish`] for IPv6 clients `prefix` + (`base` … `base + clients − 1`) in
/// `PERSIST_V6`.
#[allow(clippy::too_many_arguments)]
pub fn establish6<T: BorrowMut<MapData>>(
    persist: &mut HashMap<T, PersistKeyV6, PersistValue>,
    service: u32,
    ring: &[u32],
    prefix: Ipv6Addr,
    base: u32,
    clients: u32,
    mac: [u8; 6],
    port: u8,
) -> Result<()> {
    let m = ring.len() as u32;
    anyhow::ensure!(m > 0, "empty ring");
    let now = lb::now_ticks();
    for i in 0..clients {
        if i % 65_536 == 0 {
            crate::sys::check_interrupted()?;
        }
        let client = client6_wire(prefix, base, i);
        let slot = ring_slot(client_hash_v6(&client, HASH_SEED), m);
        let value = PersistValue {
            backend: ring[slot as usize] & RING_BACKEND_MASK,
            atime: now,
            client_mac: mac,
            port,
            _pad: 0,
        };
        persist
            .insert(PersistKeyV6 { service, client }, value, 0)
            .context("PERSIST_V6 insert")?;
    }
    Ok(())
}
