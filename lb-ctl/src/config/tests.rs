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

/// One row per kind of bad value: (what, replace this, with that, the report must contain).
const BAD: &[(&str, &str, &str, &str)] = &[
    ("bad address", "- address: 10.0.0.12", "- address: 10.0.0.300",
        "ikelb.yaml:15: virtual_servers[0].backends[1].address: \"10.0.0.300\" is not an IP address"),
    ("bad VIP", "vip: 203.0.113.10", "vip: vip.example",
        "ikelb.yaml:10: virtual_servers[0].vip: \"vip.example\" is not an IP address"),
    ("multicast backend", "- address: 10.0.0.11", "- address: 224.0.0.5",
        "ikelb.yaml:14: virtual_servers[0].backends[0].address: 224.0.0.5 is not a unicast address"),
    ("IPv6 VIP with an IPv4 backend", "vip: 203.0.113.11", "vip: 2001:db8::1",
        "ikelb.yaml:21: virtual_servers[1].backends[0].address: 10.0.1.11: the virtual server has no IPv4 VIP"),
    ("IPv6 backend of an IPv4 VIP", "- address: 10.0.1.11", "- address: 2001:db8:1::11",
        "ikelb.yaml:21: virtual_servers[1].backends[0].address: 2001:db8:1::11: the virtual server has no IPv6 VIP"),
    ("two IPv4 VIPs", "vip: 203.0.113.11", "vip: [203.0.113.11, 203.0.113.12]",
        "ikelb.yaml:18: virtual_servers[1].vip[1]: 203.0.113.12: a virtual server has one VIP per address family"),
    ("three VIPs", "vip: 203.0.113.11", "vip: [203.0.113.11, 2001:db8::11, 2001:db8::12]",
        "ikelb.yaml:18: virtual_servers[1].vip: 3 addresses given: one VIP, or one IPv4 and one IPv6 VIP"),
    ("no VIP", "vip: 203.0.113.11", "vip: []",
        "ikelb.yaml:18: virtual_servers[1].vip: 0 addresses given"),
    ("VIP of the wrong type", "vip: 203.0.113.11", "vip: {a: 1}",
        "expected an IP address, or a list of one IPv4 and one IPv6 address"),
    ("IPv6 VIP already another's", "vip: 203.0.113.11", "vip: [203.0.113.11, 2001:db8::10]\n  - name: third\n    vip: 2001:db8::10",
        "virtual_servers[2].vip: 2001:db8::10 is already the VIP of virtual_servers[1]"),
    ("IPv4-mapped IPv6 backend", "- address: 10.0.1.11", "- address: \"::ffff:10.0.1.11\"",
        "virtual_servers[1].backends[0].address: ::ffff:10.0.1.11 is in ::/32 (IPv4-mapped or reserved): use the IPv4 address"),
    ("link-local IPv6 VIP", "vip: 203.0.113.11", "vip: fe80::10",
        "virtual_servers[1].vip: fe80::10 is link-local"),
    ("subnet-router anycast backend", "- address: 10.0.1.11", "- address: \"2001:db8:1::\"",
        "virtual_servers[1].backends[0].address: 2001:db8:1:: has interface identifier 0"),
    ("duplicate backend", "- address: 10.0.0.12", "- address: 10.0.0.11",
        "ikelb.yaml:15: virtual_servers[0].backends[1].address: 10.0.0.11 is already virtual_servers[0].backends[0]"),
    ("backend in two virtual servers", "- address: 10.0.1.11", "- address: 10.0.0.11",
        "ikelb.yaml:21: virtual_servers[1].backends[0].address: 10.0.0.11 is already a backend of virtual_servers[0]"),
    ("VIP that is a backend", "- address: 10.0.1.11", "- address: 203.0.113.10",
        "ikelb.yaml:21: virtual_servers[1].backends[0].address: 203.0.113.10 is the VIP of virtual_servers[0]"),
    ("duplicate VIP", "vip: 203.0.113.11", "vip: 203.0.113.10",
        "ikelb.yaml:18: virtual_servers[1].vip: 203.0.113.10 is already the VIP of virtual_servers[0]"),
    ("duplicate name", "name: second", "name: aovpn",
        "ikelb.yaml:17: virtual_servers[1].name: \"aovpn\" is already the name of virtual_servers[0]"),
    ("bad name", "name: second", "name: \"two words\"",
        "ikelb.yaml:17: virtual_servers[1].name: \"two words\" is not a valid name"),
    ("port 0", "ports: [500, 4500]", "ports: [500, 0]",
        "ikelb.yaml:11: virtual_servers[0].ports[1]: port 0 is not a valid port"),
    ("port listed twice", "ports: [500, 4500]", "ports: [500, 500]",
        "ikelb.yaml:11: virtual_servers[0].ports[1]: port 500 is listed twice"),
    ("more than 8 ports", "ports: [500, 4500]", "ports: [1, 2, 3, 4, 5, 6, 7, 8, 9]",
        "ikelb.yaml:11: virtual_servers[0].ports: 9 ports given, at most 8 per protocol"),
    ("more than 8 TCP ports", "tcp_ports: [443]", "tcp_ports: [1, 2, 3, 4, 5, 6, 7, 8, 9]",
        "ikelb.yaml:19: virtual_servers[1].tcp_ports: 9 ports given, at most 8 per protocol"),
    ("port out of range", "ports: [500, 4500]", "ports: [500, 70000]",
        "ikelb.yaml:11: virtual_servers[0].ports[1]: invalid value: integer `70000`"),
    ("unknown key at top", "mode: nat", "mdoe: nat",
        "ikelb.yaml:2: unknown field `mdoe`"),
    ("unknown key in a backend", "        weight: 2", "        wieght: 2",
        "ikelb.yaml:16: virtual_servers[0].backends[1]: unknown field `wieght`"),
    ("bad mode", "mode: nat", "mode: snat",
        "ikelb.yaml:2: mode: unknown variant `snat`"),
    ("bad xdp_mode", "xdp_mode: auto", "xdp_mode: fast",
        "ikelb.yaml:3: xdp_mode: unknown variant `fast`"),
    ("non-prime table", "maglev_table_size: 65537", "maglev_table_size: 65536",
        "ikelb.yaml:6: maglev_table_size: 65536 is not a prime"),
    ("tiny table", "maglev_table_size: 65537", "maglev_table_size: 7",
        "ikelb.yaml:6: maglev_table_size: 7 is outside"),
    ("zero persistence entries", "persistence_entries: 1048576", "persistence_entries: 0",
        "ikelb.yaml:7: persistence_entries: 0 is outside"),
    ("weight 0", "weight: 2", "weight: 0",
        "ikelb.yaml:16: virtual_servers[0].backends[1].weight: 0 is outside 1..=1000"),
    ("huge weight", "weight: 2", "weight: 1000000",
        "ikelb.yaml:16: virtual_servers[0].backends[1].weight: 1000000 is outside 1..=1000"),
    ("zero duration", "persistence_timeout: 30m", "persistence_timeout: 0s",
        "ikelb.yaml:4: persistence_timeout: must be greater than 0"),
    ("bad duration", "interval: 5s", "interval: 5 parsecs",
        "ikelb.yaml:23: health_check.interval: "),
    ("timeout not below interval", "timeout: 2s", "timeout: 5s",
        "ikelb.yaml:24: health_check.timeout: 5s must be shorter than health_check.interval (5s)"),
    ("fall 0", "fall: 3", "fall: 0",
        "ikelb.yaml:25: health_check.fall: must be at least 1"),
    ("rise 0", "rise: 2", "rise: 0",
        "ikelb.yaml:26: health_check.rise: must be at least 1"),
    ("no probe type", "rise: 2", "rise: 2\n  probes: []",
        "ikelb.yaml:27: health_check.probes: at least one probe type is required (icmp, ike)"),
    ("unknown probe type", "rise: 2", "rise: 2\n  probes: [icmp, http]",
        "ikelb.yaml:27: health_check.probes[1]: unknown probe type \"http\" (known: icmp, ike)"),
    ("probe type listed twice", "rise: 2", "rise: 2\n  probes: [ike, ike]",
        "ikelb.yaml:27: health_check.probes[1]: \"ike\" is listed twice"),
    ("unknown probe type in a block list", "rise: 2", "rise: 2\n  probes:\n    - icmp\n    - IKE",
        "ikelb.yaml:29: health_check.probes[1]: unknown probe type \"IKE\" (known: icmp, ike)"),
    ("probes not a list", "rise: 2", "rise: 2\n  probes: icmp",
        "ikelb.yaml:27: health_check.probes: invalid type: string \"icmp\", expected a sequence"),
    ("interface listed twice", "interfaces: [eth0, eth1]", "interfaces: [eth0, eth0]",
        "ikelb.yaml:1: interfaces[1]: interface \"eth0\" is listed twice"),
    ("bad interface name", "interfaces: [eth0, eth1]", "interfaces: [eth0, this-name-is-far-too-long]",
        "ikelb.yaml:1: interfaces[1]: \"this-name-is-far-too-long\" is not a valid interface name"),
    ("no interfaces", "interfaces: [eth0, eth1]", "interfaces: []",
        "ikelb.yaml:1: interfaces: at least one interface is required"),
    ("bad metrics address", "listen: 127.0.0.1:9435", "listen: localhost",
        "ikelb.yaml:30: metrics.listen: \"localhost\" is not an address:port"),
    ("relative path", "state_dir: /var/lib/ikelb", "state_dir: var/lib",
        "ikelb.yaml:31: state_dir: \"var/lib\" is not an absolute path"),
    ("hash seed too large", "hash_seed: 0x5eed", "hash_seed: 0x1ffffffff",
        "ikelb.yaml:5: hash_seed: invalid value"),
    ("instance with a dot (bpffs refuses it)", "bpffs: /sys/fs/bpf/ikelb",
        "bpffs: /sys/fs/bpf/ikelb\ninstance: edge.1",
        "ikelb.yaml:33: instance: \"edge.1\" is not a valid instance name"),
    ("detach_on_exit not a bool", "bpffs: /sys/fs/bpf/ikelb",
        "bpffs: /sys/fs/bpf/ikelb\ndetach_on_exit: sometimes", "detach_on_exit: invalid type"),
    ("probation_entries 0", "persistence_entries: 1048576",
        "persistence_entries: 1048576\nprobation_entries: 0",
        "ikelb.yaml:8: probation_entries: 0 is outside 1..=268435456"),
    ("persistence_entries_v6 0", "persistence_entries: 1048576",
        "persistence_entries: 1048576\npersistence_entries_v6: 0",
        "ikelb.yaml:8: persistence_entries_v6: 0 is outside 1..=268435456"),
    ("persistence_entries_v6 above 2^28", "persistence_entries: 1048576",
        "persistence_entries: 1048576\npersistence_entries_v6: 268435457",
        "ikelb.yaml:8: persistence_entries_v6: 268435457 is outside 1..=268435456"),
    ("persistence_entries_v6 negative", "persistence_entries: 1048576",
        "persistence_entries: 1048576\npersistence_entries_v6: -1",
        "ikelb.yaml:8: persistence_entries_v6: invalid type: integer `-1`, expected u32"),
    ("probation_entries_v6 0", "persistence_entries: 1048576",
        "persistence_entries: 1048576\nprobation_entries_v6: 0",
        "ikelb.yaml:8: probation_entries_v6: 0 is outside 1..=268435456"),
    ("probation_entries_v6 above 2^28", "persistence_entries: 1048576",
        "persistence_entries: 1048576\nprobation_entries_v6: 300000000",
        "ikelb.yaml:8: probation_entries_v6: 300000000 is outside 1..=268435456"),
    ("new_client_rate negative", "persistence_entries: 1048576",
        "persistence_entries: 1048576\nnew_client_rate: -5", "ikelb.yaml:8: new_client_rate: invalid type"),
    ("missing required key", "interfaces: [eth0, eth1]\n", "",
        "missing field `interfaces`"),
    ("announce.table main", "table: 100", "table: 254",
        "ikelb.yaml:34: announce.table: 254 is the kernel's `main` table"),
    ("announce.table negative", "table: 100", "table: -1",
        "ikelb.yaml:34: announce.table: invalid type: integer `-1`, expected u32"),
    ("announce.table above 2^32-1", "table: 100", "table: 4294967296",
        "ikelb.yaml:34: announce.table: invalid value: integer `4294967296`, expected u32"),
    ("announce without a table", "  table: 100", "  withdraw_on_stop: true",
        "ikelb.yaml:34: announce: missing field `table`"),
    ("unknown key in announce", "table: 100", "table: 100\n  withdraw: false",
        "ikelb.yaml:35: announce: unknown field `withdraw`"),
    ("share without export_table", "  export_table: 101\n", "",
        "ikelb.yaml:36: share: missing field `export_table`"),
    ("share without import_table", "  import_table: 102\n", "",
        "ikelb.yaml:36: share: missing field `import_table`"),
    ("share empty", "share:\n  export_table: 101\n  import_table: 102\n", "share: {}\n",
        "ikelb.yaml:35: share: missing field `export_table`"),
    ("unknown key in share", "import_table: 102", "import_table: 102\n  table: 103",
        "ikelb.yaml:38: share: unknown field `table`"),
    ("share.export_table negative", "export_table: 101", "export_table: -1",
        "ikelb.yaml:36: share.export_table: invalid type: integer `-1`, expected u32"),
    ("share.import_table local", "import_table: 102", "import_table: 255",
        "ikelb.yaml:37: share.import_table: 255 is the kernel's `local` table"),
    ("withdraw_on_stop not a bool", "table: 100", "table: 100\n  withdraw_on_stop: maybe",
        "ikelb.yaml:35: announce.withdraw_on_stop: invalid type"),
];

#[test]
fn bad_configs_are_refused_naming_line_key_and_reason() {
    let mut failures = Vec::new();
    for &(what, from, to, want) in BAD {
        assert!(
            FULL.contains(from),
            "{what}: {from:?} is not in the base config"
        );
        let source = FULL.replacen(from, to, 1);
        let got = refused(&source);
        if !got.contains(want) {
            failures.push(format!("{what}:\n  want: {want}\n  got:  {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
