//! The files in `deploy/` agree with the code: the example config is valid and shows every
//! key, and the systemd unit runs the daemon the way `docs/restart-and-upgrade.md` says.

use std::path::Path;

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_example_config_is_valid_and_names_every_key() {
    let text = deploy("ikelb.yaml");
    let config = lb_ctl::config::parse("deploy/ikelb.yaml", &text)
        .unwrap_or_else(|e| panic!("deploy/ikelb.yaml is refused:\n{e}"));
    assert!(
        !config.detach_on_exit,
        "the production example keeps the data path attached"
    );
    for key in [
        "interfaces:",
        "mode:",
        "xdp_mode:",
        "persistence_timeout:",
        "hash_seed:",
        "maglev_table_size:",
        "persistence_entries:",
        "probation_entries:",
        "new_client_rate:",
        "role:",
        "virtual_servers:",
        "name:",
        "vip:",
        "ports:",
        "esp:",
        "tcp_ports:",
        "backends:",
        "address:",
        "weight:",
        "health_check:",
        "interval:",
        "timeout:",
        "fall:",
        "rise:",
        "probes:",
        "control:",
        "socket:",
        "metrics:",
        "listen:",
        "state_dir:",
        "bpffs:",
        "instance:",
        "detach_on_exit:",
        "slot_fast_path:",
    ] {
        assert!(text.contains(key), "deploy/ikelb.yaml does not show {key}");
    }
}

#[test]
fn the_unit_keeps_the_host_bpffs_restarts_without_detaching_and_reloads_by_sighup() {
    let unit = deploy("ikelb.service");
    // Pins must be on the host's bpffs: one the daemon mounted inside the unit's private
    // mount namespace (ProtectSystem=) would vanish with the service.
    assert!(unit.contains("\nRequiresMountsFor=/sys/fs/bpf\n"), "{unit}");
    assert!(unit.contains("ReadWritePaths=/sys/fs/bpf"), "{unit}");
    assert!(unit.contains("Restart=always"), "{unit}");
    assert!(
        !unit.contains("--detach-on-exit"),
        "a restart must not detach: {unit}"
    );
    // `systemctl reload` is the daemon's SIGHUP reload (docs/operations.md, "Reload").
    assert!(
        unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"),
        "systemctl reload must send SIGHUP: {unit}"
    );
    for cap in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_SYS_ADMIN",
    ] {
        assert!(unit.contains(cap), "{cap} missing: {unit}");
    }
}
