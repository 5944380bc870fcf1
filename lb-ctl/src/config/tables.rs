//! The kernel routing tables the daemon writes (docs/cluster.md): `announce.table` (the VIPs
//! this node can serve, protocol 75) and `share.export_table` / `share.import_table` (the
//! shared persistence routes this node publishes, protocol 76, and those BIRD learned from
//! the other nodes). Each must be a table of ikelb's own, and each a different one.

/// Routing tables none of those keys may name, and why: the kernel's own (`rt_tables`).
/// A host route there would change how this host forwards (`main`, `default`) or make the
/// address local (`local`); a table of ikelb's own changes nothing until a routing daemon
/// exports it.
pub const TABLE_PROBLEMS: &[(u32, &str)] = &[
    (0, "0 is RT_TABLE_UNSPEC, not a table"),
    (
        253,
        "253 is the kernel's `default` table (policy routing's fallback)",
    ),
    (
        254,
        "254 is the kernel's `main` table, which this host forwards by",
    ),
    (
        255,
        "255 is the kernel's `local` table, which makes addresses local",
    ),
];

/// Why `table` cannot be `announce.table` or a `share` table, if it cannot.
pub fn table_problem(table: u32) -> Option<String> {
    TABLE_PROBLEMS
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, why)| {
            format!("{why}: use a table of ikelb's own (1..=4294967295 but not 253-255, e.g. 100)")
        })
}

/// The problems of the configured tables, `(key, reason)` each: a refused number, or a
/// number another of those keys names already (the keys in file order: `announce.table`,
/// `share.export_table`, `share.import_table`). Only `None` when absent.
pub(super) fn problems(announce: Option<u32>, share: Option<(u32, u32)>) -> Vec<(String, String)> {
    let keys = [
        ("announce.table", announce),
        ("share.export_table", share.map(|s| s.0)),
        ("share.import_table", share.map(|s| s.1)),
    ];
    let mut out = Vec::new();
    for (i, &(key, table)) in keys.iter().enumerate() {
        let Some(table) = table else { continue };
        if let Some(why) = table_problem(table) {
            out.push((key.to_owned(), why));
        } else if let Some((first, _)) = keys[..i].iter().find(|(_, t)| *t == Some(table)) {
            out.push((
                key.to_owned(),
                format!(
                    "{table} is already {first}: the announced VIPs, the exported and the \
                     learned client routes each need a table of their own (the daemon \
                     reconciles each table, and BIRD exports a whole table)"
                ),
            ));
        }
    }
    out
}
