use super::*;
use crate::health::ProbeKind;
use crate::paths;

/// A complete, valid file using every key of schema v1 and the extensions. Line numbers in
/// the table below refer to it.
const FULL: &str = "\
interfaces: [eth0, eth1]
mode: nat
xdp_mode: auto
persistence_timeout: 30m
hash_seed: 0x5eed
maglev_table_size: 65537
persistence_entries: 1048576
virtual_servers:
  - name: aovpn
    vip: 203.0.113.10
    ports: [500, 4500]
    esp: true
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
        weight: 2
  - name: second
    vip: 203.0.113.11
    tcp_ports: [443]
    backends:
      - address: 10.0.1.11
health_check:
  interval: 5s
  timeout: 2s
  fall: 3
  rise: 2
control:
  socket: /run/ikelb/ctl.sock
metrics:
  listen: 127.0.0.1:9435
state_dir: /var/lib/ikelb
bpffs: /sys/fs/bpf/ikelb
announce:
  table: 100
share:
  export_table: 101
  import_table: 102
";

/// The one-line report of every kind of bad value (`refused.rs`).
mod refused;

fn refused(source: &str) -> String {
    match parse("ikelb.yaml", source) {
        Ok(_) => panic!("config was accepted:\n{source}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn full_config_parses() {
    let c = parse("ikelb.yaml", FULL).expect("valid config");
    assert_eq!(c.interface_names(), ["eth0", "eth1"]);
    assert_eq!(c.interfaces[0].role, Role::Clients);
    assert_eq!(c.interfaces[1].role, Role::Backends);
    assert_eq!(c.mode, Mode::Nat);
    assert_eq!(c.xdp_mode, XdpAttachMode::Auto);
    assert_eq!(c.persistence_timeout, Duration::from_secs(1800));
    assert_eq!(c.hash_seed, 0x5eed);
    assert_eq!(c.maglev_table_size, 65537);
    assert_eq!(c.persistence_entries, 1 << 20);
    assert_eq!(c.virtual_servers.len(), 2);
    let vs = &c.virtual_servers[0];
    assert_eq!(vs.name, "aovpn");
    assert_eq!(vs.vip, "203.0.113.10".parse::<IpAddr>().unwrap());
    assert_eq!(vs.ports, [500, 4500]);
    assert!(vs.esp);
    assert_eq!(
        vs.backends,
        [
            BackendConfig {
                address: "10.0.0.11".parse().unwrap(),
                weight: 1
            },
            BackendConfig {
                address: "10.0.0.12".parse().unwrap(),
                weight: 2
            },
        ]
    );
    assert_eq!(c.virtual_servers[1].tcp_ports, [443]);
    assert_eq!(
        c.health_check,
        HealthCheck {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 3,
            rise: 2,
            probes: ProbeKinds::DEFAULT,
        }
    );
    assert_eq!(c.control_socket, Path::new("/run/ikelb/ctl.sock"));
    assert_eq!(c.metrics_listen, "127.0.0.1:9435".parse().unwrap());
    assert_eq!(c.bpffs, Path::new("/sys/fs/bpf/ikelb"));
    assert_eq!(c.backend_count(), 3);
    assert_eq!(
        c.announce,
        Some(Announce {
            table: 100,
            withdraw_on_stop: true
        }),
        "withdraw_on_stop defaults to true"
    );
    assert_eq!(
        c.share,
        Some(Share {
            export_table: 101,
            import_table: 102
        })
    );
}

#[test]
fn probes_icmp_alone_is_ping_only() {
    let c = parse(
        "ikelb.yaml",
        &FULL.replacen("rise: 2", "rise: 2\n  probes: [icmp]", 1),
    )
    .expect("valid config");
    assert_eq!(c.health_check.probes, ProbeKinds::of(&[ProbeKind::Icmp]));
    let c = parse(
        "ikelb.yaml",
        &FULL.replacen("rise: 2", "rise: 2\n  probes: [ike]", 1),
    )
    .expect("valid config");
    assert_eq!(c.health_check.probes, ProbeKinds::of(&[ProbeKind::Ike]));
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = parse(
        "m.yaml",
        "interfaces: [eth0]\nvirtual_servers:\n  - name: a\n    vip: 192.0.2.1\n    backends:\n      - address: 10.0.0.1\n",
    )
    .expect("valid config");
    assert_eq!(c.mode, Mode::Nat);
    assert_eq!(c.xdp_mode, XdpAttachMode::Auto);
    assert_eq!(c.persistence_timeout, Duration::from_secs(1800));
    assert_eq!(c.hash_seed, 0);
    assert_eq!(c.maglev_table_size, 65537);
    assert_eq!(c.persistence_entries, 1_048_576);
    assert_eq!(c.virtual_servers[0].ports, [500, 4500]);
    assert!(c.virtual_servers[0].esp);
    assert_eq!(c.virtual_servers[0].backends[0].weight, 1);
    assert_eq!(c.health_check.fall, 3);
    assert_eq!(
        c.health_check.probes.labels(),
        ["icmp", "ike"],
        "both probe types by default"
    );
    assert_eq!(c.control_socket, Path::new(paths::CONTROL_SOCKET));
    assert_eq!(c.state_dir, Path::new(paths::STATE_DIR));
    assert_eq!(c.bpffs, Path::new(paths::BPFFS));
    assert_eq!(c.instance, paths::INSTANCE);
    assert!(
        !c.detach_on_exit,
        "production default: the data path survives the daemon"
    );
    assert_eq!(c.interfaces[0].role, Role::Both, "one interface is one-arm");
    assert_eq!(
        c.probation_entries,
        1 << 18,
        "a quarter of persistence_entries"
    );
    assert_eq!(c.new_client_rate, 20_000);
    assert_eq!(c.announce, None, "no routes unless asked for");
    assert_eq!(c.share, None, "nothing shared unless asked for");
}

/// `announce.table` takes any table of the kernel's 32-bit space but the kernel's own
/// (`default`, `main`, `local`) and 0; `withdraw_on_stop: false` with `detach_on_exit: true`
/// is valid but has no effect, which the operator hears of.
#[test]
fn announce_tables_and_the_withdraw_warning() {
    for table in [1u32, 100, 252, 256, 1 << 31, u32::MAX] {
        let source = FULL.replacen("table: 100", &format!("table: {table}"), 1);
        let c = parse("ikelb.yaml", &source).unwrap_or_else(|e| panic!("table {table}: {e}"));
        assert_eq!(c.announce.map(|a| a.table), Some(table));
    }
    for table in [0u32, 253, 254, 255] {
        let source = FULL.replacen("table: 100", &format!("table: {table}"), 1);
        let got = refused(&source);
        assert!(
            got.starts_with(&format!("ikelb.yaml:34: announce.table: {table} is ")),
            "{got}"
        );
        assert_eq!(got.lines().count(), 1, "{got}");
        assert!(table_problem(table).is_some());
    }
    let kept = FULL.replacen("table: 100", "table: 100\n  withdraw_on_stop: false", 1);
    let c = parse("ikelb.yaml", &kept).unwrap();
    assert!(!c.announce.unwrap().withdraw_on_stop);
    assert!(c.warnings().is_empty());
    let detached = kept.replacen(
        "bpffs: /sys/fs/bpf/ikelb",
        "bpffs: /sys/fs/bpf/ikelb\ndetach_on_exit: true",
        1,
    );
    let got: Vec<String> = parse("ikelb.yaml", &detached)
        .unwrap()
        .warnings()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "ikelb.yaml:36: announce.withdraw_on_stop: has no effect with detach_on_exit: true: \
          the routes are withdrawn with the data path on every clean stop"
        ]
    );
}

/// `share` takes the tables `announce.table` takes, each different from the other and from
/// `announce.table`, and works without `announce`; every refusal is one line naming the key.
#[test]
fn share_tables_are_ikelbs_own_and_distinct() {
    let with = |export: u32, import: u32| {
        FULL.replacen(
            "export_table: 101\n  import_table: 102",
            &format!("export_table: {export}\n  import_table: {import}"),
            1,
        )
    };
    for (export, import) in [(1u32, 2u32), (252, 256), (u32::MAX, 1 << 31)] {
        let c = parse("ikelb.yaml", &with(export, import))
            .unwrap_or_else(|e| panic!("tables {export}, {import}: {e}"));
        assert_eq!(
            c.share,
            Some(Share {
                export_table: export,
                import_table: import
            })
        );
    }
    let alone = FULL.replacen("announce:\n  table: 100\n", "", 1);
    let c = parse("ikelb.yaml", &alone).expect("share without announce");
    assert_eq!(
        (c.announce, c.share.map(|s| s.import_table)),
        (None, Some(102))
    );
    for table in [0u32, 253, 254, 255] {
        let got = refused(&with(table, 102));
        assert!(
            got.starts_with(&format!("ikelb.yaml:36: share.export_table: {table} is ")),
            "{got}"
        );
        assert_eq!(got.lines().count(), 1, "{got}");
        let got = refused(&with(101, table));
        assert!(
            got.starts_with(&format!("ikelb.yaml:37: share.import_table: {table} is ")),
            "{got}"
        );
        assert_eq!(got.lines().count(), 1, "{got}");
    }
    for (export, import, want) in [
        (
            101,
            101,
            "ikelb.yaml:37: share.import_table: 101 is already share.export_table: ",
        ),
        (
            100,
            102,
            "ikelb.yaml:36: share.export_table: 100 is already announce.table: ",
        ),
        (
            101,
            100,
            "ikelb.yaml:37: share.import_table: 100 is already announce.table: ",
        ),
    ] {
        let got = refused(&with(export, import));
        assert!(got.starts_with(want), "{export}, {import}: {got}");
        assert_eq!(got.lines().count(), 1, "{got}");
    }
    // All three the same: each later key names the first.
    let got = refused(&with(100, 100));
    assert_eq!(got.lines().count(), 2, "{got}");
}

#[test]
fn probation_and_refresh_sizes_follow_persistence_entries() {
    let with = |extra: &str| {
        parse(
            "ikelb.yaml",
            &FULL.replacen("persistence_entries: 1048576", extra, 1),
        )
        .unwrap()
    };
    let c = with("persistence_entries: 2000");
    assert_eq!(c.probation_entries, 1024, "never below 1024 by default");
    let c = with("persistence_entries: 268435456\nprobation_entries: 5000");
    assert_eq!(c.probation_entries, 5000);
}

/// The IPv6 maps' keys default to the IPv4 ones (the sizes every build before them used),
/// `probation_entries_v6` to the derived `probation_entries` too.
#[test]
fn v6_sizes_default_to_the_ipv4_ones() {
    let with = |extra: &str| {
        parse(
            "ikelb.yaml",
            &FULL.replacen(
                "persistence_entries: 1048576",
                &format!("persistence_entries: 8192\n{extra}"),
                1,
            ),
        )
        .unwrap()
    };
    let c = with("");
    assert_eq!(
        (c.persistence_entries_v6, c.probation_entries_v6),
        (8192, 2048)
    );
    let c = with("probation_entries: 5000");
    assert_eq!(
        (c.persistence_entries_v6, c.probation_entries_v6),
        (8192, 5000)
    );
    let c = with("persistence_entries_v6: 1000\nprobation_entries_v6: 300");
    assert_eq!(
        (c.persistence_entries, c.probation_entries),
        (8192, 2048),
        "the IPv4 sizes do not follow the IPv6 keys"
    );
    assert_eq!(
        (c.persistence_entries_v6, c.probation_entries_v6),
        (1000, 300)
    );
}

/// A v6 key without any IPv6 VIP is valid (the file runs as written) but has no effect:
/// one warning per key set, in the style of a problem; none with an IPv6 VIP or no key.
#[test]
fn v6_keys_without_an_ipv6_vip_are_warned_about() {
    let source = FULL.replacen(
        "persistence_entries: 1048576",
        "persistence_entries: 1048576\npersistence_entries_v6: 4096\nprobation_entries_v6: 1024",
        1,
    );
    let c = parse("ikelb.yaml", &source).expect("valid, with warnings");
    assert!(!c.has_ipv6());
    assert_eq!(c.v6_map_entries(), (1, 1));
    let got: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "ikelb.yaml:8: persistence_entries_v6: has no effect: no virtual server has an IPv6 \
             VIP, so the IPv6 maps keep 1 entry",
            "ikelb.yaml:9: probation_entries_v6: has no effect: no virtual server has an IPv6 \
             VIP, so the IPv6 maps keep 1 entry",
        ]
    );
    assert!(parse("ikelb.yaml", FULL).unwrap().warnings().is_empty());
    let dual = source.replacen("vip: 203.0.113.11", "vip: [203.0.113.11, 2001:db8::11]", 1);
    let c = parse("ikelb.yaml", &dual).unwrap();
    assert!(c.warnings().is_empty());
    assert_eq!(c.v6_map_entries(), (4096, 1024));
}

#[test]
fn new_client_rate_is_spread_over_cpus_per_window() {
    let mut c = parse("ikelb.yaml", FULL).unwrap();
    // 20,000/s × 2^27 ns = 2684.35 per window → 2685, over 4 CPUs → 672 each.
    assert_eq!(c.new_client_quota(4), 672);
    assert_eq!(c.new_client_quota(1), 2685);
    assert_eq!(c.new_client_quota(0), 2685, "no CPU count: as one");
    c.new_client_rate = 1;
    assert_eq!(
        c.new_client_quota(64),
        1,
        "a rate above 0 never becomes unlimited"
    );
    c.new_client_rate = 0;
    assert_eq!(c.new_client_quota(8), 0, "0 = unlimited");
    c.new_client_rate = u32::MAX;
    assert_eq!(c.new_client_quota(1), 576_460_753, "no overflow");
}

/// `vip: [v4, v6]`: one service per VIP under the virtual server's name, each with the
/// backends of its family in file order; the single-address form keeps working.
#[test]
fn dual_stack_virtual_server_is_one_service_per_family() {
    let c = parse(
        "ikelb.yaml",
        "interfaces: [eth0]
virtual_servers:
  - name: aovpn
    vip: [203.0.113.10, 2001:db8:ffff::10]
    tcp_ports: [443]
    backends:
      - address: 10.0.0.11
      - address: 2001:db8:1::11
        weight: 3
      - address: 10.0.0.12
  - name: v6only
    vip: 2001:db8:ffff::20
    backends:
      - address: 2001:db8:2::11
",
    )
    .expect("valid config");
    let got: Vec<(&str, IpAddr, Vec<IpAddr>)> = c
        .virtual_servers
        .iter()
        .map(|vs| {
            let backends = vs.backends.iter().map(|b| b.address).collect();
            (vs.name.as_str(), vs.vip, backends)
        })
        .collect();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        got,
        [
            (
                "aovpn",
                ip("203.0.113.10"),
                vec![ip("10.0.0.11"), ip("10.0.0.12")]
            ),
            ("aovpn", ip("2001:db8:ffff::10"), vec![ip("2001:db8:1::11")]),
            (
                "v6only",
                ip("2001:db8:ffff::20"),
                vec![ip("2001:db8:2::11")]
            ),
        ]
    );
    assert_eq!(c.virtual_servers[1].backends[0].weight, 3);
    assert_eq!(c.virtual_servers[1].tcp_ports, [443]);
    assert_eq!(c.backend_count(), 4);
}

#[test]
fn every_problem_is_reported_at_once_one_per_line() {
    let source = FULL
        .replace("fall: 3", "fall: 0")
        .replace("rise: 2", "rise: 0");
    let got = refused(&source);
    assert_eq!(got.lines().count(), 2, "{got}");
}

#[test]
fn missing_interfaces_are_refused_with_their_line() {
    let c = parse("ikelb.yaml", FULL).unwrap();
    assert_eq!(
        c.resolve_interfaces(|n| (n == "eth0").then_some(3))
            .unwrap_err()
            .to_string(),
        "ikelb.yaml:1: interfaces[1]: interface \"eth1\" does not exist"
    );
    assert_eq!(
        c.resolve_interfaces(|n| Some(if n == "eth0" { 3 } else { 4 }))
            .unwrap(),
        [3, 4]
    );
}

#[test]
fn persistence_timeout_rounds_up_to_ticks() {
    let mut c = parse("ikelb.yaml", FULL).unwrap();
    c.persistence_timeout = Duration::from_nanos(1 << TICK_SHIFT);
    assert_eq!(c.persist_timeout_ticks(), 1);
    c.persistence_timeout = Duration::from_nanos((1 << TICK_SHIFT) + 1);
    assert_eq!(c.persist_timeout_ticks(), 2);
    c.persistence_timeout = Duration::from_secs(1800);
    assert_eq!(c.persist_timeout_ticks(), 1677); // 1.8e12 ns / 2^30 ns = 1676.4
}

#[test]
fn reload_drain_defaults_to_an_hour_and_is_bounded_like_a_drain() {
    let base = "interfaces: [eth0]\nvirtual_servers:\n  - name: a\n    vip: 192.0.2.1\n";
    let c = parse("m.yaml", base).expect("valid config");
    assert_eq!(c.reload_drain, Duration::from_secs(3600));
    let c = parse("m.yaml", &format!("reload_drain: 0s\n{base}")).expect("valid config");
    assert!(c.reload_drain.is_zero());
    let e = refused(&format!("reload_drain: 31days\n{base}"));
    assert!(
        e.starts_with("ikelb.yaml:1: reload_drain: 1month 13h 26m 24s is longer than the maximum drain 30days"),
        "{e}"
    );
}
