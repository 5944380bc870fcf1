//! `reload` and the dry runs' blast radius against the fake dataplane: what a reload
//! applies, refuses and keeps, and that a dry run's predicted moves per backend are the
//! moves the data path (the harness's model of it) then makes.

use std::collections::BTreeMap;

use super::*;
use crate::{
    api::{Plan, VsImpact},
    dataplane::addr_words,
};

/// The harness's config as a real file in `dir` (a reload reads it again), with `extra`
/// top-level keys and the backends of `aovpn` given as `(address, weight)`.
fn yaml(dir: &Path, extra: &str, backends: &[(&str, u32)], seed: u32) -> String {
    let list: String = backends
        .iter()
        .map(|(a, w)| format!("      - {{address: {a}, weight: {w}}}\n"))
        .collect();
    format!(
        "interfaces: [ext, int]\nmaglev_table_size: {M}\nhash_seed: {seed}\npersistence_timeout: 10s\nslot_move_delay: 0s\n{extra}
virtual_servers:
  - name: aovpn
    vip: 203.0.113.10
    backends:
{list}  - name: other
    vip: 203.0.113.11
    backends:
      - address: 10.0.1.11
health_check: {{interval: 1s, timeout: 500ms, fall: 3, rise: 2, probes: [icmp]}}
state_dir: {}
",
        dir.display()
    )
}

const THREE: &[(&str, u32)] = &[("10.0.0.11", 1), ("10.0.0.12", 1), ("10.0.0.13", 1)];

fn harness(extra: &str) -> (Harness, PathBuf) {
    let dir = TempDir::new("reload");
    fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("ikelb.yaml");
    fs::write(&file, yaml(&dir.0, extra, THREE, 7)).unwrap();
    let cfg = config::load(&file).unwrap();
    (Harness::start_with(dir, cfg), file)
}

fn write(h: &Harness, file: &Path, extra: &str, backends: &[(&str, u32)], seed: u32) {
    fs::write(file, yaml(&h._dir.0, extra, backends, seed)).unwrap();
}

fn reload(h: &mut Harness, dry_run: bool) -> Response {
    h.request(Request::Reload { dry_run })
}

fn plan(r: Response) -> Plan {
    match ok(r) {
        Reply::Plan(p) => p,
        r => panic!("{r:?}"),
    }
}

fn aovpn(p: &Plan) -> &VsImpact {
    p.virtual_servers
        .iter()
        .find(|v| v.virtual_server == "aovpn")
        .expect("aovpn listed")
}

/// (leaving, arriving) per backend address, without zeros.
fn predicted(v: &VsImpact) -> BTreeMap<IpAddr, (u64, u64)> {
    v.backends
        .iter()
        .filter(|b| b.leaving + b.arriving > 0)
        .map(|b| (b.address, (b.leaving, b.arriving)))
        .collect()
}

/// (leaving, arriving) per backend address between two routings of the same clients.
fn observed(
    h: &Harness,
    before: &BTreeMap<u32, Option<u32>>,
    after: &BTreeMap<u32, Option<u32>>,
    removed: &BTreeMap<u32, IpAddr>,
) -> BTreeMap<IpAddr, (u64, u64)> {
    let addr = |id: u32| {
        h.lb.backend(id)
            .map(|b| b.address)
            .or_else(|| removed.get(&id).copied())
            .expect("known id")
    };
    let mut out: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
    for (c, b) in before {
        let a = after[c];
        if *b != a {
            out.entry(addr(b.unwrap())).or_default().0 += 1;
            out.entry(addr(a.unwrap())).or_default().1 += 1;
        }
    }
    out
}

fn ids(h: &Harness) -> BTreeMap<u32, IpAddr> {
    h.lb.backends().map(|b| (b.id, b.address)).collect()
}

#[test]
fn a_dry_run_changes_nothing_and_its_predicted_moves_are_the_moves_made() {
    let (mut h, file) = harness("reload_drain: 0s");
    let before = h.traffic(300);
    let ids_before = ids(&h);
    // 10.0.0.12 leaves at once, 10.0.0.11 weighs 3, 10.0.0.14 joins.
    write(
        &h,
        &file,
        "reload_drain: 0s",
        &[("10.0.0.11", 3), ("10.0.0.13", 1), ("10.0.0.14", 1)],
        7,
    );
    let maps = format!("{:?}", h.lb.dataplane());
    let dry = plan(reload(&mut h, true));
    assert_eq!(
        format!("{:?}", h.lb.dataplane()),
        maps,
        "a dry run wrote the maps"
    );
    assert!(dry.dry_run);
    assert_eq!(dry.changes.len(), 3, "{:?}", dry.changes);
    let v = aovpn(&dry);
    assert_eq!(v.clients, 300);
    let gone = ip("10.0.0.12");
    let on_12 = before
        .values()
        .filter(|b| **b == Some(h.id("10.0.0.12")))
        .count() as u64;
    assert!(on_12 > 50, "{on_12}");
    // Only 10.0.0.12's clients move; established clients of the others stay (the weight
    // change and the newcomer move nobody).
    assert_eq!(v.moving, on_12);
    let want = predicted(v);
    assert_eq!(want[&gone], (on_12, 0));
    assert!(!want.contains_key(&ip("10.0.0.14")), "{want:?}");

    let applied = plan(reload(&mut h, false));
    assert!(!applied.dry_run);
    assert_eq!(aovpn(&applied), v, "the applied plan is the dry run's");
    let after = h.traffic(300);
    assert_eq!(observed(&h, &before, &after, &ids_before), want);
    assert_eq!(h.lb.backend(h.id("10.0.0.11")).unwrap().weight, 3);
    // The newcomer joins the ring on its first successful probe.
    h.resolve();
    h.health_round(|_| true);
    let slots = h
        .list()
        .into_iter()
        .find(|b| b.address == ip("10.0.0.14"))
        .unwrap()
        .ring_slots;
    assert!(slots > 0);
    // Nothing left to do.
    assert!(plan(reload(&mut h, true)).changes.is_empty());
}

#[test]
fn a_removed_backend_drains_for_reload_drain_and_nobody_moves() {
    let (mut h, file) = harness("");
    let before = h.traffic(200);
    write(&h, &file, "", &[("10.0.0.11", 1), ("10.0.0.13", 1)], 7);
    let p = plan(reload(&mut h, false));
    let v = aovpn(&p);
    assert_eq!(v.moving, 0, "{p:?}");
    let b = v
        .backends
        .iter()
        .find(|b| b.address == ip("10.0.0.12"))
        .unwrap();
    assert_eq!(b.change, "draining");
    let drain =
        h.lb.backend(h.id("10.0.0.12"))
            .unwrap()
            .drain_until
            .unwrap();
    assert_eq!(
        drain,
        h.now.wall + Duration::from_secs(3600),
        "reload_drain default 1h"
    );
    assert_eq!(
        h.traffic(200),
        before,
        "persisted clients stay during the drain"
    );
}

#[test]
fn an_invalid_file_changes_nothing_and_names_file_line_and_key() {
    let (mut h, file) = harness("");
    let maps = format!("{:?}", h.lb.dataplane());
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace("10.0.0.13", "10.0.0.300");
    fs::write(&file, &text).unwrap();
    let e = err(reload(&mut h, false));
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    let line = text.lines().position(|l| l.contains("10.0.0.300")).unwrap() + 1;
    let head = format!(
        "{}:{line}: virtual_servers[0].backends[2].address:",
        file.display()
    );
    assert!(e.message.starts_with(&head), "{}", e.message);
    assert!(e.message.ends_with("nothing was changed"), "{}", e.message);
    assert_eq!(format!("{:?}", h.lb.dataplane()), maps);
    assert!(h.lb.backend_by_address(ip("10.0.0.13")).is_some());
}

#[test]
fn restart_only_keys_are_refused_with_their_line_and_nothing_changes() {
    let (mut h, file) = harness("");
    let maps = format!("{:?}", h.lb.dataplane());
    // A restart-only key beside a backend change: the whole reload is refused.
    write(
        &h,
        &file,
        "persistence_entries: 4096",
        &[("10.0.0.11", 5)],
        8,
    );
    let text = fs::read_to_string(&file).unwrap();
    let e = err(reload(&mut h, true));
    assert_eq!(e.code, ErrorCode::RestartRequired);
    for key in ["hash_seed", "persistence_entries"] {
        let line = text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
        let want = format!("{}:{line}: {key}: changed;", file.display());
        assert!(e.message.contains(&want), "{want} in {}", e.message);
    }
    assert_eq!(e.message.lines().count(), 3, "{}", e.message);
    assert_eq!(format!("{:?}", h.lb.dataplane()), maps);
    assert_eq!(h.lb.backend(h.id("10.0.0.11")).unwrap().weight, 1);
    assert!(h.lb.backend_by_address(ip("10.0.0.12")).is_some());
}

#[test]
fn runtime_changes_keep_their_precedence_over_the_reloaded_file() {
    let (mut h, file) = harness("reload_drain: 0s");
    ok(h.request(Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.12"),
        drain: None,
        dry_run: false,
    }));
    ok(h.request(Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.20"),
        weight: 2,
        dry_run: false,
    }));
    // The file now lists the runtime backend with another weight, changes 10.0.0.13's, and
    // still lists 10.0.0.12.
    write(
        &h,
        &file,
        "reload_drain: 0s",
        &[
            ("10.0.0.11", 1),
            ("10.0.0.12", 1),
            ("10.0.0.13", 9),
            ("10.0.0.20", 5),
        ],
        7,
    );
    let p = plan(reload(&mut h, false));
    assert_eq!(p.changes, vec!["aovpn: 10.0.0.13 weight 1 → 9".to_owned()]);
    assert!(
        h.lb.backend_by_address(ip("10.0.0.12")).is_none(),
        "runtime removal kept"
    );
    assert_eq!(
        h.lb.backend(h.id("10.0.0.20")).unwrap().weight,
        2,
        "runtime weight wins"
    );
    // The file dropping the runtime backend does not remove it either.
    write(&h, &file, "reload_drain: 0s", THREE, 7);
    let p = plan(reload(&mut h, false));
    assert_eq!(p.changes, vec!["aovpn: 10.0.0.13 weight 9 → 1".to_owned()]);
    assert!(h.lb.backend_by_address(ip("10.0.0.20")).is_some());
}

#[test]
fn backend_remove_dry_run_predicts_the_moves_of_the_remove() {
    let (mut h, _file) = harness("");
    let before = h.traffic(300);
    let ids_before = ids(&h);
    let remove = |dry_run| Request::BackendRemove {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        drain: None,
        dry_run,
    };
    let maps = format!("{:?}", h.lb.dataplane());
    let dry = plan(h.request(remove(true)));
    assert_eq!(
        format!("{:?}", h.lb.dataplane()),
        maps,
        "a dry run wrote the maps"
    );
    assert!(h.lb.backend_by_address(ip("10.0.0.13")).is_some());
    let want = predicted(aovpn(&dry));
    ok(h.request(remove(false)));
    let after = h.traffic(300);
    let seen = observed(&h, &before, &after, &ids_before);
    assert_eq!(seen, want);
    assert!(seen[&ip("10.0.0.13")].0 > 50, "{seen:?}");
    // Adding moves no established client.
    let add = Request::BackendAdd {
        virtual_server: "aovpn".into(),
        address: ip("10.0.0.13"),
        weight: 1,
        dry_run: true,
    };
    let p = plan(h.request(add));
    assert_eq!(aovpn(&p).moving, 0);
    assert_eq!(aovpn(&p).backends.last().unwrap().change, "added");
}

#[test]
fn a_reload_of_health_check_says_so() {
    let (mut h, file) = harness("");
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace("interval: 1s", "interval: 2s");
    fs::write(&file, text).unwrap();
    let (resp, effects) =
        h.c.handle(&mut h.lb, Request::Reload { dry_run: false }, h.now);
    let p = plan(resp);
    assert!(effects.health);
    assert!(
        p.changes[0].starts_with("health_check: interval 2s"),
        "{p:?}"
    );
    assert_eq!(h.c.config().health_check.interval, Duration::from_secs(2));
}

#[test]
fn a_file_listing_the_virtual_servers_in_another_order_changes_nothing() {
    let (mut h, file) = harness("");
    let text = fs::read_to_string(&file).unwrap();
    let (head, rest) = text.split_at(text.find("  - name: aovpn").unwrap());
    let (aovpn, rest) = rest.split_at(rest.find("  - name: other").unwrap());
    let (other, tail) = rest.split_at(rest.find("health_check").unwrap());
    fs::write(&file, format!("{head}{other}{aovpn}{tail}")).unwrap();
    let p = plan(reload(&mut h, false));
    assert!(p.changes.is_empty(), "{p:?}");
    // The controller still pairs each service with its own virtual server.
    let names: Vec<&str> =
        h.c.config()
            .virtual_servers
            .iter()
            .map(|v| v.name.as_str())
            .collect();
    assert_eq!(names, ["aovpn", "other"]);
    let r = ok(h.request(Request::Lookup {
        client: ip("100.64.0.1"),
    }));
    let Reply::Lookup { results, .. } = r else {
        panic!()
    };
    assert_eq!(results[0].virtual_server, "aovpn");
    assert_eq!(results[0].vip, ip("203.0.113.10"));
}

#[test]
fn held_slot_moves_are_predicted_as_the_apply_makes_them() {
    // With a move delay a weight change holds slots on their old backend: the preview is the
    // table written, flags and holds included, so the prediction stays exact.
    let (mut h, file) = harness("reload_drain: 0s");
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace("slot_move_delay: 0s", "slot_move_delay: 5s");
    fs::write(&file, &text).unwrap();
    // slot_move_delay is restart-only: start over with it.
    let cfg = config::load(&file).unwrap();
    let dir = std::mem::replace(&mut h._dir, TempDir::new("unused"));
    drop(h);
    let mut h = Harness::start_with(dir, cfg);
    let before = h.traffic(300);
    let ids_before = ids(&h);
    write(
        &h,
        &file,
        "reload_drain: 0s",
        &[("10.0.0.11", 4), ("10.0.0.13", 1)],
        7,
    );
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace("slot_move_delay: 0s", "slot_move_delay: 5s");
    fs::write(&file, &text).unwrap();
    let dry = plan(reload(&mut h, true));
    let want = predicted(aovpn(&dry));
    plan(reload(&mut h, false));
    assert!(h.lb.held_slots() > 0, "the weight change holds slots");
    let after = h.traffic(300);
    assert_eq!(observed(&h, &before, &after, &ids_before), want);
}

/// `text` with `block` (virtual server list items) added before `health_check`.
fn with_vs(text: &str, block: &str) -> String {
    text.replacen("health_check:", &format!("{block}health_check:"), 1)
}

/// `text` without the virtual server `other`.
fn without_other(text: &str) -> String {
    let start = text.find("  - name: other").unwrap();
    let end = text.find("health_check:").unwrap();
    format!("{}{}", &text[..start], &text[end..])
}

const THIRD: &str = "  - name: third\n    vip: 203.0.113.12\n    backends:\n      - address: 10.0.2.11\n      - address: 10.0.2.12\n";

#[test]
fn a_reload_adds_a_virtual_server_that_takes_clients_once_its_backends_are_up() {
    let (mut h, file) = harness("");
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, with_vs(&text, THIRD)).unwrap();
    let maps = format!("{:?}", h.lb.dataplane());
    let dry = plan(reload(&mut h, true));
    assert_eq!(format!("{:?}", h.lb.dataplane()), maps);
    assert_eq!(dry.changes.len(), 1, "{dry:?}");
    assert!(dry.changes[0].starts_with("third: virtual server 203.0.113.12 added with 2 backends"));
    plan(reload(&mut h, false));
    let names: Vec<&str> =
        h.c.config()
            .virtual_servers
            .iter()
            .map(|v| v.name.as_str())
            .collect();
    assert_eq!(names, ["aovpn", "other", "third"]);
    let id = h.lb.services()[2].value.id;
    assert_eq!(id, 2, "the lowest free service id");
    h.resolve();
    h.health_round(|_| true);
    let vip = addr_words(ip("203.0.113.12"));
    assert_eq!(
        h.lb.dataplane().vips[&vip].id,
        id,
        "VIP written with its first table"
    );
    let landed: Vec<u32> = (1..=50).filter_map(|c| h.route(id, client(c))).collect();
    assert_eq!(landed.len(), 50);
    let third: Vec<u32> = ["10.0.2.11", "10.0.2.12"].iter().map(|a| h.id(a)).collect();
    assert!(landed.iter().all(|b| third.contains(b)), "{landed:?}");
    let saved = crate::identity::load(&h.c.config().state_dir.join(crate::identity::IDENTITY_FILE))
        .unwrap();
    assert_eq!(saved.services["third/ipv4"], id);
    // And it goes again: its clients are dropped, predicted so.
    fs::write(&file, &text).unwrap();
    let dry = plan(reload(&mut h, true));
    let v = dry
        .virtual_servers
        .iter()
        .find(|v| v.virtual_server == "third")
        .unwrap();
    assert_eq!((v.clients, v.moving, v.dropped), (50, 50, 50), "{v:?}");
    plan(reload(&mut h, false));
    assert!(!h.lb.dataplane().vips.contains_key(&vip), "VIP forgotten");
    assert!(
        !h.lb.dataplane().services.contains_key(&id),
        "SERVICES slot cleared"
    );
    assert!(h.lb.backend_by_address(ip("10.0.2.11")).is_none());
    // A removed service's id is not given to a new one before a restart.
    let text4 = with_vs(&text, &THIRD.replace("third", "fourth"));
    fs::write(&file, text4).unwrap();
    plan(reload(&mut h, false));
    assert_eq!(h.lb.services()[2].value.id, 3);
}

#[test]
fn a_reload_removes_a_virtual_server_and_its_backends() {
    let (mut h, file) = harness("");
    let other = h.lb.services()[1].value.id;
    for c in 1..=20 {
        h.route(other, client(c));
    }
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, without_other(&text)).unwrap();
    let p = plan(reload(&mut h, false));
    assert_eq!(
        p.changes,
        ["other: virtual server 203.0.113.11 removed with its 1 backends"]
    );
    let v = p
        .virtual_servers
        .iter()
        .find(|v| v.virtual_server == "other")
        .unwrap();
    assert_eq!((v.clients, v.dropped), (20, 20));
    assert_eq!(h.lb.services().len(), 1);
    assert!(h.lb.backend_by_address(ip("10.0.1.11")).is_none());
    assert!(!h
        .lb
        .dataplane()
        .vips
        .contains_key(&addr_words(ip("203.0.113.11"))));
    // Requests still pair services and virtual servers.
    let Reply::Status(s) = ok(h.request(Request::Status)) else {
        panic!()
    };
    assert_eq!(s.virtual_servers.len(), 1);
    assert_eq!(s.virtual_servers[0].name, "aovpn");
    assert!(h.traffic(10).values().all(Option::is_some));
}

#[test]
fn a_virtual_server_the_maps_have_no_room_for_needs_a_restart() {
    let (mut h, file) = harness("");
    h.lb.set_service_capacity(2, 1);
    let text = with_vs(&fs::read_to_string(&file).unwrap(), THIRD);
    fs::write(&file, &text).unwrap();
    let e = err(reload(&mut h, false));
    assert_eq!(e.code, ErrorCode::RestartRequired);
    let line = text
        .lines()
        .position(|l| l.contains("name: third"))
        .unwrap()
        + 1;
    let want = format!(
        "{}:{line}: virtual_servers[2]: virtual server third (203.0.113.12) is new and the maps indexed by service id hold ids 0-1 and none is free: needs a restart",
        file.display()
    );
    assert!(e.message.starts_with(&want), "{}", e.message);
    assert_eq!(h.lb.services().len(), 2);
    // The first IPv6 VIP needs a restart too (the IPv6 maps hold 1 entry).
    h.lb.set_service_capacity(8, 1);
    let v6 = "  - name: six\n    vip: 2001:db8:ffff::10\n    backends:\n      - address: 2001:db8:1::11\n";
    let text = with_vs(&fs::read_to_string(&file).unwrap().replace(THIRD, ""), v6);
    fs::write(&file, &text).unwrap();
    let e = err(reload(&mut h, true));
    assert!(
        e.message
            .contains("virtual_servers[2]: virtual server six has the first IPv6 VIP"),
        "{}",
        e.message
    );
}

// `persistence_timeout`: the program swap and the sweeps it outdates.
mod timeout;
