use std::path::PathBuf;

use super::*;
use crate::config;

/// `virtual_servers` named and with VIPs as given (`name=vip[,vip6]`), `interfaces` as
/// given.
fn config(ifaces: &[&str], servers: &[(&str, &str)]) -> Config {
    let list: String = servers
        .iter()
        .enumerate()
        .map(|(i, (name, vip))| {
            format!(
                "  - name: {name}\n    vip: [{vip}]\n    backends:\n      - address: 10.0.{i}.11\n"
            )
        })
        .collect();
    let ifaces = ifaces.join(", ");
    config::parse(
        "t.yaml",
        &format!("interfaces: [{ifaces}]\nmaglev_table_size: 251\nvirtual_servers:\n{list}"),
    )
    .expect("valid config")
}

fn ids(a: &Assigned) -> Vec<(&str, u32)> {
    a.identity
        .services
        .iter()
        .map(|(k, &v)| (k.as_str(), v))
        .collect()
}

fn ports(a: &Assigned) -> Vec<(&str, u32)> {
    a.identity
        .ports
        .iter()
        .map(|(k, &v)| (k.as_str(), v))
        .collect()
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ikelb-id-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_first_start_numbers_by_position_and_a_reorder_keeps_every_number() {
    let c = config(
        &["ext", "int"],
        &[("a", "203.0.113.1"), ("b", "203.0.113.2")],
    );
    let first = assign(&c, &[10, 20], &Identity::default(), &PinnedIds::default());
    assert_eq!(ids(&first), [("a/ipv4", 0), ("b/ipv4", 1)]);
    assert_eq!(ports(&first), [("ext", 0), ("int", 1)]);
    assert_eq!(first.identity, Identity::positional(&c, ["ext", "int"]));

    // Reordered servers and interfaces, a third server inserted in front.
    let c = config(
        &["int", "ext"],
        &[
            ("c", "203.0.113.3"),
            ("b", "203.0.113.2"),
            ("a", "203.0.113.1"),
        ],
    );
    let again = assign(&c, &[20, 10], &first.identity, &PinnedIds::default());
    assert_eq!(ids(&again), [("a/ipv4", 0), ("b/ipv4", 1), ("c/ipv4", 2)]);
    assert_eq!(ports(&again), [("ext", 0), ("int", 1)]);
    assert_eq!(again.notes, ["service c/ipv4: new, takes 2"]);
}

#[test]
fn a_removed_service_releases_its_id_and_a_newcomer_takes_the_lowest_free() {
    let c = config(
        &["ext"],
        &[
            ("a", "203.0.113.1"),
            ("b", "203.0.113.2"),
            ("c", "203.0.113.3"),
        ],
    );
    let first = assign(&c, &[10], &Identity::default(), &PinnedIds::default());
    // a removed: 0 is free, b and c keep 1 and 2.
    let c2 = config(&["ext"], &[("b", "203.0.113.2"), ("c", "203.0.113.3")]);
    let second = assign(&c2, &[10], &first.identity, &PinnedIds::default());
    assert_eq!(ids(&second), [("b/ipv4", 1), ("c/ipv4", 2)]);
    assert!(second
        .notes
        .contains(&"service a/ipv4: no longer configured, 0 released".to_owned()));
    assert_eq!(
        second.identity.service_slots(),
        3,
        "sized by the highest id"
    );
    // d and e arrive: d takes the freed 0, e the next free, 3.
    let c3 = config(
        &["ext"],
        &[
            ("d", "203.0.113.4"),
            ("c", "203.0.113.3"),
            ("e", "203.0.113.5"),
            ("b", "203.0.113.2"),
        ],
    );
    let third = assign(&c3, &[10], &second.identity, &PinnedIds::default());
    assert_eq!(
        ids(&third),
        [("b/ipv4", 1), ("c/ipv4", 2), ("d/ipv4", 0), ("e/ipv4", 3)]
    );
}

#[test]
fn dual_stack_services_are_two_ids_by_family() {
    let c = config(
        &["ext"],
        &[("a", "203.0.113.1, 2001:db8::1"), ("b", "203.0.113.2")],
    );
    let a = assign(&c, &[10], &Identity::default(), &PinnedIds::default());
    assert_eq!(ids(&a), [("a/ipv4", 0), ("a/ipv6", 1), ("b/ipv4", 2)]);
}

#[test]
fn the_pins_win_over_the_file_and_a_lost_file_keeps_every_identity() {
    let c = config(
        &["ext", "int"],
        &[("a", "203.0.113.1"), ("b", "203.0.113.2")],
    );
    // The running data path has a at 1 and b at 0, ext on port 1 and int on port 0.
    let pinned = PinnedIds {
        services: vec![
            (0, "203.0.113.2".parse().unwrap()),
            (1, "203.0.113.1".parse().unwrap()),
            // A stale entry of a server no longer configured.
            (2, "203.0.113.9".parse().unwrap()),
        ],
        ports: [(10, 1), (20, 0), (99, 2)].into_iter().collect(),
    };
    // No file (state_dir lost).
    let a = assign(&c, &[10, 20], &Identity::default(), &pinned);
    assert_eq!(ids(&a), [("a/ipv4", 1), ("b/ipv4", 0)]);
    assert_eq!(ports(&a), [("ext", 1), ("int", 0)]);
    assert!(a
        .notes
        .contains(&"service a/ipv4: 1 from the pinned maps (identity.json has none)".to_owned()));
    // A file that disagrees: the pins win, and it is said.
    let file = Identity::positional(&c, ["ext", "int"]);
    let b = assign(&c, &[10, 20], &file, &pinned);
    assert_eq!(b.identity, a.identity);
    assert!(
        b.notes.iter().any(|n| n
            == "service a/ipv4: the pinned maps give 1, identity.json said 0: keeping 1"),
        "{:?}",
        b.notes
    );
    assert!(b
        .notes
        .iter()
        .any(|n| n == "interface int: the pinned maps give 0, identity.json said 1: keeping 0"));
    // A newcomer whose recorded id the pins give another service takes a free one.
    let c = config(
        &["ext", "int"],
        &[
            ("a", "203.0.113.1"),
            ("b", "203.0.113.2"),
            ("n", "203.0.113.7"),
        ],
    );
    let mut file = a.identity.clone();
    file.services.insert("n/ipv4".into(), 0);
    let d = assign(&c, &[10, 20], &file, &pinned);
    assert_eq!(ids(&d), [("a/ipv4", 1), ("b/ipv4", 0), ("n/ipv4", 2)]);
    assert!(d
        .notes
        .iter()
        .any(|n| n.contains("n/ipv4: 0 of identity.json is taken")));
}

#[test]
fn the_file_round_trips_atomically_and_a_missing_one_is_empty() {
    let dir = TempDir::new("roundtrip");
    let p = path(&dir.0.join("sub"));
    assert_eq!(load(&p).unwrap(), Identity::default());
    let c = config(
        &["ext", "int"],
        &[("a", "203.0.113.1"), ("b", "203.0.113.2")],
    );
    let id = assign(&c, &[10, 20], &Identity::default(), &PinnedIds::default()).identity;
    save(&p, &id).unwrap();
    assert_eq!(load(&p).unwrap(), id);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("\"version\": 1"), "{text}");
    assert!(
        !p.with_extension("json.tmp").exists(),
        "no temporary file left"
    );
}

#[test]
fn a_corrupt_file_is_refused_in_one_line_naming_the_file_and_the_recovery() {
    let dir = TempDir::new("corrupt");
    let p = path(&dir.0);
    for (text, why) in [
        ("{\"version\": 1, \"services\": {\"a/ipv4\": ", "EOF"),
        ("[1, 2]", "not a JSON object"),
        ("{\"services\": {}}", "no \"version\""),
        (
            "{\"version\": 1, \"services\": {\"a/ipv4\": 0, \"b/ipv4\": 0}}",
            "service id 0 given twice",
        ),
        (
            "{\"version\": 1, \"ports\": {\"eth0\": 64}}",
            "not below 64",
        ),
        ("{\"version\": 1, \"extra\": 1}", "unknown field"),
    ] {
        std::fs::write(&p, text).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains(why), "{text}: {e}");
        assert!(
            e.contains(&format!("mv {} {}.bad", p.display(), p.display())),
            "{e}"
        );
    }
    std::fs::write(&p, "{\"version\": 2}").unwrap();
    let e = load(&p).unwrap_err().to_string();
    assert!(e.contains("has version 2"), "{e}");
}

#[test]
fn ids_whose_ring_array_would_not_fit_are_refused() {
    let mut id = Identity::default();
    id.services.insert("a/ipv4".into(), 40_000);
    let e = check_bounds(&id, 65_537, Path::new("/x/identity.json")).unwrap_err();
    assert!(e.to_string().contains("service ids reach 40000"), "{e}");
    id.services.insert("a/ipv4".into(), 10);
    check_bounds(&id, 65_537, Path::new("/x/identity.json")).unwrap();
}
