//! Restart and upgrade without loss (docs/restart-and-upgrade.md): the data path is pinned, so the
//! daemon can die and come back — or be replaced by one running a different program — while
//! clients keep sending, and not a single packet is lost nor a single client moved.
//!
//! `kill_9_and_upgrade_lose_no_packet_and_move_no_client` builds the standard lab under the
//! `ikr<pid>` prefix with a config that leaves the data path attached on exit
//! (`detach_on_exit: false`), and from 50 client addresses sends 1,000 datagrams a second
//! (IKE 500 and NAT-T 4500 alternately) to the VIP, each answered by the backend's responder.
//! Meanwhile:
//!
//! 1. `kill -9` the daemon; XDP stays attached (same program id), the data path forwards
//!    alone for a second; a new daemon starts over the pins and keeps the running program
//!    (its fingerprint is unchanged): same program id afterwards.
//! 2. SIGTERM the daemon; start one whose config changes a load-time global
//!    (`persistence_timeout` 30m → 31m, so `PERSIST_TIMEOUT_TICKS` differs): it loads the new
//!    program and swaps it in with `BPF_LINK_UPDATE` — a new program id on both interfaces,
//!    never a moment without one.
//! 3. `kill -9` again; start one whose maps cannot be reused (`maglev_table_size` 65537 →
//!    65521 and `persistence_entries` 65536 → 131072): it builds a new map set, copies the
//!    persistence entries, swaps the program in, and commits the new maps — the clients stay
//!    on their backends although the Maglev table itself changed.
//!
//! Finally `lb-ctl daemon --unload` (daemon stopped) detaches both interfaces and removes
//! the pins.
//!
//! Every datagram must be answered (a reply is awaited up to 2 s after the last one), every
//! client must be answered by one backend throughout, and the counts are printed. Root only;
//! otherwise the test says why and returns.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use ikelb_tests::fixture;
use ikelb_tests::lab::stream::Stream;
use ikelb_tests::lab::{self, Lab, LabSpec, UdpProbe, GW_EXT, GW_INT, VIP};

/// Client addresses sending at once.
const CLIENTS: usize = 50;
/// Datagrams per second over all clients.
const RATE: u64 = 1000;

/// The rate this run sends at: [`RATE`], divided by `$IKELB_TEST_TIME_SCALE` on an emulated
/// kernel of the matrix (a guest too slow to answer 1000/s drops datagrams in socket buffers,
/// not in ikelb). The claim is the same at any rate: none is lost.
fn rate() -> u64 {
    let slow = lab::patience(Duration::from_secs(1)).as_secs().max(1);
    RATE / slow
}

fn responder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ikelb-responder"))
}

#[test]
fn kill_9_and_upgrade_lose_no_packet_and_move_no_client() {
    if fixture::skip_unless_root("kill_9_and_upgrade_lose_no_packet_and_move_no_client") {
        return;
    }
    let lb_ctl = lab::lb_ctl_path().expect("lb-ctl binary");
    let mut lab = Lab::build(&LabSpec {
        role: 'r',
        clients: CLIENTS,
        backends: 3,
        ..LabSpec::default()
    })
    .expect("build the lab");
    lab.start_responders(&responder())
        .expect("start responders");
    let config = lab
        .daemon_config()
        .replace("detach_on_exit: true", "detach_on_exit: false")
        + "maglev_table_size: 65537\npersistence_entries: 65536\n";
    assert!(config.contains("detach_on_exit: false"), "{config}");
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("start lb-ctl daemon");
    lab.wait_daemon_log("ikelb running", 1)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Every client answered once before the clock starts.
    let clients = lab.clients.clone();
    lab.client_ns
        .run(|| {
            for &c in &clients {
                let probe = UdpProbe::bind(c).unwrap();
                let r = probe
                    .ask(
                        SocketAddrV4::new(VIP, 500),
                        64,
                        20,
                        Duration::from_millis(200),
                    )
                    .unwrap();
                assert!(r.is_some(), "{c} got no answer through the VIP");
            }
        })
        .expect("client namespace");

    let stream = Stream::start(
        &lab.client_ns,
        clients.iter().map(|&c| (c, VIP)).collect(),
        rate(),
    );
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(2));

    // 1. kill -9: the pinned link keeps the program attached; the next daemon keeps it.
    let before = lab.prog_ids();
    let status = lab.signal_daemon(libc::SIGKILL).expect("daemon exit");
    eprintln!(
        "restart: daemon ended by signal {}: {status}",
        libc::SIGKILL
    );
    let killed_at = t0.elapsed();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lab.prog_ids(),
        before,
        "the program changed while no daemon ran"
    );
    lab.start_daemon_with_config(&lb_ctl, &config)
        .expect("restart lb-ctl daemon");
    lab.wait_daemon_log("ikelb running", 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let restarted_at = t0.elapsed();
    lab.wait_daemon_log("XDP program unchanged", 1)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        lab.prog_ids(),
        before,
        "same build and config: the program is kept"
    );
    thread::sleep(Duration::from_secs(2));

    // 2. An upgrade: another load-time global → another program, swapped in atomically.
    let status = lab.signal_daemon(libc::SIGTERM).expect("daemon exit");
    eprintln!(
        "restart: daemon ended by signal {}: {status}",
        libc::SIGTERM
    );
    assert_eq!(
        lab.prog_ids(),
        before,
        "detach_on_exit: false leaves the data path attached"
    );
    let upgraded = config.replace("persistence_timeout: 30m", "persistence_timeout: 31m");
    assert_ne!(upgraded, config);
    lab.start_daemon_with_config(&lb_ctl, &upgraded)
        .expect("start the upgraded daemon");
    lab.wait_daemon_log("ikelb running", 3)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let upgraded_at = t0.elapsed();
    lab.wait_daemon_log("XDP program replaced atomically", 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let after = lab.prog_ids();
    assert!(
        after.0 != before.0 && after.1 != before.1,
        "a new program on both interfaces: {before:?} → {after:?}"
    );
    thread::sleep(Duration::from_secs(2));

    // 3. Maps that do not fit: migrated under traffic.
    let status = lab.signal_daemon(libc::SIGKILL).expect("daemon exit");
    eprintln!(
        "restart: daemon ended by signal {}: {status}",
        libc::SIGKILL
    );
    let migrated_config = upgraded
        .replace("maglev_table_size: 65537", "maglev_table_size: 65521")
        .replace("persistence_entries: 65536", "persistence_entries: 131072");
    lab.start_daemon_with_config(&lb_ctl, &migrated_config)
        .expect("start the daemon with other map sizes");
    lab.wait_daemon_log("ikelb running", 4)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let migrated_at = t0.elapsed();
    lab.wait_daemon_log("map migration committed", 1)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let out = lab.daemon().expect("daemon").output();
    let copied = out
        .lines()
        .find(|l| l.contains("map migration committed"))
        .unwrap_or_default()
        .to_string();
    let migrated = lab.prog_ids();
    assert!(
        migrated.0 != after.0 && migrated.1 != after.1,
        "the migrated maps come with a new program: {after:?} → {migrated:?}"
    );
    thread::sleep(Duration::from_secs(2));

    let tally = stream.stop();
    eprintln!(
        "restart: {} datagrams sent at {}/s from {CLIENTS} clients over {:.1} s, {} answered, \
         {} lost, {} wrong, {} clients moved; per backend {:?}; kill -9 at {:.1} s, restarted \
         daemon running at {:.1} s, upgraded daemon (program {:?} → {:?}) at {:.1} s, \
         migrated maps (program {:?}) at {:.1} s: {copied}",
        tally.sent,
        rate(),
        t0.elapsed().as_secs_f64(),
        tally.answered,
        tally.lost.len(),
        tally.wrong,
        tally.moved.len(),
        tally.per_backend,
        killed_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        before,
        after,
        upgraded_at.as_secs_f64(),
        migrated,
        migrated_at.as_secs_f64(),
    );
    // What each daemon found and did, for the record.
    let out = lab.daemon().expect("daemon").output();
    for line in out.lines().filter(|l| {
        [
            "pinned",
            "adopted",
            "XDP program",
            "XDP attached",
            "migration",
            "ikelb running",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!(
            "restart: daemon: {}",
            line.split_once("  ").map_or(line, |x| x.1)
        );
    }
    let log = lab.daemon_output_tail(60);
    assert!(
        tally.sent >= 8 * rate(),
        "the sender fell behind: {tally:?}"
    );
    assert!(
        tally.lost.is_empty(),
        "{} datagrams lost (seq, s): {:?}\n{log}",
        tally.lost.len(),
        &tally.lost[..tally.lost.len().min(20)]
    );
    assert_eq!(tally.answered, tally.sent);
    assert_eq!(
        tally.wrong, 0,
        "answers not from the VIP or not to the client's address"
    );
    assert!(tally.moved.is_empty(), "clients moved: {:?}", tally.moved);
    assert!(
        tally.per_backend.len() == 3,
        "every backend served clients: {:?}",
        tally.per_backend
    );

    // Taking ikelb off for good: stop the daemon (the data path stays), then --unload.
    let status = lab.signal_daemon(libc::SIGTERM).expect("daemon exit");
    eprintln!(
        "restart: daemon ended by signal {}: {status}",
        libc::SIGTERM
    );
    lab.prog_ids();
    let config_file = lab.dir().join("ikelb.yaml");
    let out = lab
        .gateway
        .exec(
            lb_ctl.to_str().unwrap(),
            &[
                "daemon",
                "--config",
                config_file.to_str().unwrap(),
                "--unload",
            ],
        )
        .expect("lb-ctl daemon --unload");
    eprintln!("restart: --unload: {}", out.trim());
    for ifname in [GW_EXT, GW_INT] {
        assert_eq!(
            lab.gateway.xdp(ifname).unwrap(),
            None,
            "XDP still on {ifname} after --unload"
        );
    }
    let pin_dir = lab.dir().join("bpffs/default");
    assert!(!pin_dir.exists(), "{} still there", pin_dir.display());
}
