//! The keys of a reloaded file that only a restart applies (docs/configuration.md, "What a
//! reload applies"), each a problem at its line: `lb-ctl reload` and SIGHUP refuse a file
//! that changes any of them and change nothing.

use crate::config::{self, Config, Problem};

/// The keys `new` changes that only a restart applies, each a problem at its line in `new`
/// (docs/configuration.md, "What a reload applies").
pub fn restart_only(old: &Config, new: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    // A key the new file does not set whose value follows another one reported already
    // (`probation_entries` from `persistence_entries`, …) is that key's consequence.
    let mut key = |k: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug, why: &str| {
        let p = new.problem(k, format!("changed; {why}: needs a restart"));
        if !same(a, b) && (p.line.is_some() || out.is_empty()) {
            out.push(p);
        }
    };
    let sizes = "a map size, fixed when the maps are created";
    let global = "a load-time global of the XDP program";
    key(
        "interfaces",
        &old.interfaces,
        &new.interfaces,
        "the interfaces XDP is attached to and their ports",
    );
    key("mode", &old.mode, &new.mode, global);
    key(
        "xdp_mode",
        &old.xdp_mode,
        &new.xdp_mode,
        "chosen when XDP is attached",
    );
    key("hash_seed", &old.hash_seed, &new.hash_seed, global);
    key(
        "maglev_table_size",
        &old.maglev_table_size,
        &new.maglev_table_size,
        sizes,
    );
    key(
        "persistence_entries",
        &old.persistence_entries,
        &new.persistence_entries,
        sizes,
    );
    key(
        "probation_entries",
        &old.probation_entries,
        &new.probation_entries,
        sizes,
    );
    key(
        "persistence_entries_v6",
        &old.persistence_entries_v6,
        &new.persistence_entries_v6,
        sizes,
    );
    key(
        "probation_entries_v6",
        &old.probation_entries_v6,
        &new.probation_entries_v6,
        sizes,
    );
    key(
        "new_client_rate",
        &old.new_client_rate,
        &new.new_client_rate,
        global,
    );
    key(
        "slot_fast_path",
        &old.slot_fast_path,
        &new.slot_fast_path,
        global,
    );
    key("sa_steering", &old.sa_steering, &new.sa_steering, global);
    key(
        "slot_move_delay",
        &old.slot_move_delay,
        &new.slot_move_delay,
        "read when the daemon starts",
    );
    key(
        "control",
        &old.control_socket,
        &new.control_socket,
        "the socket is bound at start",
    );
    key(
        "metrics",
        &old.metrics_listen,
        &new.metrics_listen,
        "the listener is bound at start",
    );
    key(
        "state_dir",
        &old.state_dir,
        &new.state_dir,
        "runtime state is read at start",
    );
    key("bpffs", &old.bpffs, &new.bpffs, "where the pins live");
    key(
        "instance",
        &old.instance,
        &new.instance,
        "where the pins live",
    );
    key(
        "detach_on_exit",
        &old.detach_on_exit,
        &new.detach_on_exit,
        "read when the daemon starts",
    );
    key(
        "announce",
        &old.announce,
        &new.announce,
        "read when the daemon starts",
    );
    key(
        "share",
        &old.share,
        &new.share,
        "read when the daemon starts",
    );
    // Virtual servers: by name and VIP; the raw list index (a dual-stack one is one entry)
    // locates the line.
    let raw_index = |c: &Config, name: &str| {
        let mut names: Vec<&str> = Vec::new();
        for vs in &c.virtual_servers {
            if !names.contains(&vs.name.as_str()) {
                names.push(&vs.name);
            }
        }
        names.iter().position(|n| *n == name)
    };
    let had_v6 = old.virtual_servers.iter().any(|o| o.vip.is_ipv6());
    for vs in &new.virtual_servers {
        let i = raw_index(new, &vs.name).expect("listed");
        let same =
            |o: &&config::VirtualServer| o.name == vs.name && o.vip.is_ipv4() == vs.vip.is_ipv4();
        match old.virtual_servers.iter().find(same) {
            // A new virtual server is added live (its id: `reload_changes`), unless it is the
            // first IPv6 one: the IPv6 per-client maps hold 1 entry without one.
            None if vs.vip.is_ipv6() && !had_v6 => out.push(new.problem(
                format!("virtual_servers[{i}]"),
                format!(
                    "virtual server {} has the first IPv6 VIP ({}): the IPv6 persistence maps were created with 1 entry: needs a restart",
                    vs.name, vs.vip
                ),
            )),
            None => {}
            Some(o) => {
                let k = |f: &str| format!("virtual_servers[{i}].{f}");
                let why = "the service entry the data path reads";
                if o.vip != vs.vip {
                    out.push(new.problem(
                        k("vip"),
                        format!(
                            "changed from {} to {}; {why}: needs a restart",
                            o.vip, vs.vip
                        ),
                    ));
                }
                for (f, a, b) in [
                    ("ports", &o.ports, &vs.ports),
                    ("tcp_ports", &o.tcp_ports, &vs.tcp_ports),
                ] {
                    if a != b {
                        out.push(new.problem(k(f), format!("changed; {why}: needs a restart")));
                    }
                }
                if o.esp != vs.esp {
                    out.push(new.problem(k("esp"), format!("changed; {why}: needs a restart")));
                }
            }
        }
    }
    out
}
