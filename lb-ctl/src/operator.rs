//! The operator commands (`lb-ctl backend …`, `status`, `lookup`): one request to the
//! daemon's control socket ([`crate::api`]), then its answer as a table on stdout, or with
//! `--json` as the reply object the daemon sent. A refusal is one line on stderr and exit
//! status 1.

use std::{fmt::Write as _, path::Path};

use crate::api::{
    self, ApiError, BackendInfo, ClientError, LookupResult, Plan, Reply, Request, Response,
};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon refused the request; its message says why.
    #[error("{0}")]
    Refused(ApiError),
}

/// Sends `request` to the daemon at `socket` and prints the answer.
pub fn run(socket: &Path, request: &Request, json: bool) -> Result<(), OperatorError> {
    match api::call(socket, request)? {
        Response::Error(e) => Err(OperatorError::Refused(e)),
        Response::Ok(reply) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reply).expect("replies always serialize")
                );
            } else {
                print!("{}", render(&reply));
            }
            Ok(())
        }
    }
}

/// The human form of a reply.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::BackendAdded {
            backend: b,
            drain_cancelled: true,
        } => format!(
            "{} in {}: drain cancelled, back in the table (id {}, weight {})\n",
            b.address, b.virtual_server, b.id, b.weight
        ),
        Reply::BackendAdded { backend: b, .. } => format!(
            "added {} to {} (id {}, weight {}); it takes new clients after its first successful health check\n",
            b.address, b.virtual_server, b.id, b.weight
        ),
        Reply::BackendRemoved {
            backend: b,
            draining_until: Some(until),
        } => format!(
            "draining {} of {} until {until}: no new clients; removed when its {} active clients are idle, or at the deadline\n",
            b.address, b.virtual_server, b.clients
        ),
        Reply::BackendRemoved { backend: b, .. } => format!(
            "removed {} from {} (id {}); its {} active clients are re-balanced on their next packet\n",
            b.address, b.virtual_server, b.id, b.clients
        ),
        Reply::Backends { backends } => backend_table(backends, true),
        Reply::Status(s) => {
            let mut out = String::new();
            let up = std::time::Duration::from_secs(s.uptime_seconds);
            let _ = writeln!(
                out,
                "ikelb {} (pid {}), up {}, config {}",
                s.version,
                s.pid,
                humantime::format_duration(up),
                s.config
            );
            let _ = writeln!(out, "interfaces: {} (mode {})", s.interfaces.join(", "), s.mode);
            let h = &s.health_check;
            let probes = if h.probes.is_empty() {
                "icmp".to_owned()
            } else {
                h.probes.join(" + ")
            };
            let _ = writeln!(
                out,
                "health checks: {probes} every {}, timeout {}, down after {} failures, up after {} successes (per probe type)",
                h.interval, h.timeout, h.fall, h.rise
            );
            let p = &s.persistence;
            let _ = writeln!(
                out,
                "persistence: {} of {} entries, idle timeout {}",
                p.entries, p.capacity, p.timeout
            );
            // Absent (0) from daemons before two-tier persistence.
            if p.probation_capacity > 0 {
                let rate = match p.new_client_rate {
                    0 => "unlimited".to_owned(),
                    r => format!("at most {r}/s"),
                };
                let _ = writeln!(
                    out,
                    "probation (new clients): {} of {} entries, new clients {rate}",
                    p.probation_entries, p.probation_capacity
                );
            }
            if let Some(table) = s.announce_table {
                let what = if s.announced.is_empty() {
                    "nothing (no virtual server has a usable backend)".to_owned()
                } else {
                    s.announced.join(", ")
                };
                let _ = writeln!(out, "announced (routing table {table}): {what}");
            }
            for vs in &s.virtual_servers {
                let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
                let tcp = if vs.tcp_ports.is_empty() {
                    String::new()
                } else {
                    format!(" + tcp {}", list(&vs.tcp_ports))
                };
                let _ = writeln!(
                    out,
                    "\nvirtual server {} {} udp {}{tcp}{}: {} of {} backends active{}",
                    vs.name,
                    vs.vip,
                    list(&vs.ports),
                    if vs.esp { " + esp" } else { "" },
                    vs.active,
                    vs.backends.len(),
                    if vs.active == 0 {
                        " — NO BACKEND: packets are dropped".to_owned()
                    } else if vs.held_slots > 0 {
                        format!(" — {} ring slots wait to move (slot_move_delay)", vs.held_slots)
                    } else {
                        String::new()
                    }
                );
                if !vs.backends.is_empty() {
                    for line in backend_table(&vs.backends, false).lines() {
                        let _ = writeln!(out, "  {line}");
                    }
                }
            }
            out
        }
        Reply::Lookup { client, results } => lookup_table(*client, results),
        Reply::Plan(plan) => plan_text(plan),
    }
}

/// A reload or dry run: the changes, then per virtual server and backend the live clients
/// that move (docs/operations.md, "Blast radius").
fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    let head = if plan.dry_run {
        "dry run, nothing changed"
    } else {
        "applied"
    };
    if plan.changes.is_empty() {
        let _ = writeln!(out, "no change ({head})");
        return out;
    }
    let _ = writeln!(out, "{} change(s) ({head}):", plan.changes.len());
    for c in &plan.changes {
        let _ = writeln!(out, "  {c}");
    }
    for vs in &plan.virtual_servers {
        let _ = writeln!(
            out,
            "\nvirtual server {} {}: {} of {} live clients move{}",
            vs.virtual_server,
            vs.vip,
            vs.moving,
            vs.clients,
            if vs.dropped > 0 {
                format!(" ({} to no backend: dropped)", vs.dropped)
            } else {
                String::new()
            }
        );
        let header = ["BACKEND", "CHANGE", "CLIENTS", "MOVE AWAY", "START HERE"];
        let rows = vs.backends.iter().map(|b| {
            vec![
                b.address.to_string(),
                if b.change.is_empty() {
                    "-".to_owned()
                } else {
                    b.change.clone()
                },
                b.clients.to_string(),
                b.leaving.to_string(),
                b.arriving.to_string(),
            ]
        });
        for line in table(&header, rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn backend_table(backends: &[BackendInfo], with_vs: bool) -> String {
    let mut header = vec![];
    if with_vs {
        header.push("VIRTUAL SERVER");
    }
    header.extend([
        "BACKEND", "ID", "WEIGHT", "STATE", "HEALTH", "SLOTS", "CLIENTS", "NEXT HOP", "ORIGIN",
    ]);
    let rows = backends.iter().map(|b| {
        let mut row = vec![];
        if with_vs {
            row.push(b.virtual_server.clone());
        }
        let state = match &b.drain_until {
            Some(until) => format!("{} (until {until})", b.state),
            None => b.state.clone(),
        };
        row.extend([
            b.address.to_string(),
            b.id.to_string(),
            b.weight.to_string(),
            state,
            health_cell(b),
            b.ring_slots.to_string(),
            b.clients.to_string(),
            b.next_hop
                .clone()
                .unwrap_or_else(|| "unresolved".to_owned()),
            b.origin.clone(),
        ]);
        row
    });
    table(&header, rows)
}

/// The HEALTH cell: the backend's state, and each probe type's when they disagree
/// (`down (icmp up, ike down)`): which service failed.
fn health_cell(b: &BackendInfo) -> String {
    if b.probes.iter().all(|p| p.health == b.health) {
        return b.health.to_string();
    }
    let each: Vec<String> = b
        .probes
        .iter()
        .map(|p| format!("{} {}", p.probe, p.health))
        .collect();
    format!("{} ({})", b.health, each.join(", "))
}

/// What a client's last IKE stage (`lb_common::ike::stage_name`) says of where it stopped, its
/// last packet `idle` seconds ago.
fn ike_detail(stage: Option<&str>, idle: u64) -> Option<String> {
    let what = match stage? {
        "ike_sa_init_sent" => "IKE_SA_INIT sent, no response from the backend",
        "ike_sa_init_answered" => "IKE_SA_INIT answered, no IKE_AUTH from the client",
        "ike_auth_sent" => "IKE_AUTH sent, no ESP from the client yet",
        "ike_auth_fragmented" => {
            "IKE_AUTH fragmented (IP fragments: enable IKEv2 fragmentation), no ESP yet"
        }
        "established" => return Some("established (ESP seen)".to_owned()),
        other => other,
    };
    Some(format!("{what} (last packet {idle} s ago)"))
}

fn lookup_table(client: std::net::IpAddr, results: &[LookupResult]) -> String {
    if results.is_empty() {
        return format!("{client}: no virtual server of its address family\n");
    }
    let rows = results.iter().map(|r| {
        let detail = match &r.persisted {
            None => "no persistence or probation entry".to_owned(),
            Some(p) => {
                let on = p
                    .backend
                    .map_or_else(|| format!("id {}", p.backend_id), |a| a.to_string());
                // A new client: in probation until it echoes what its backend sent it.
                let what = match p.proof_recorded {
                    None => "persisted",
                    Some(false) => "in probation (no reply from the backend yet)",
                    Some(true) => "in probation (waiting for the client to echo the backend)",
                };
                let mut d = match &p.ignored_because {
                    None => format!("{what}, idle {}s", p.idle_seconds),
                    Some(why) => {
                        format!("{what} on {on} (idle {}s), ignored: {why}", p.idle_seconds)
                    }
                };
                if let Some(ike) = ike_detail(p.ike_stage.as_deref(), p.idle_seconds) {
                    d.push_str("; ike: ");
                    d.push_str(&ike);
                }
                if p.steered {
                    d.push_str("; steered by SPI (address changed)");
                }
                d
            }
        };
        vec![
            r.virtual_server.clone(),
            r.vip.to_string(),
            r.backend.map_or_else(
                || "none (dropped: no backend)".to_owned(),
                |a| a.to_string(),
            ),
            r.source.clone(),
            r.slot.to_string(),
            detail,
        ]
    });
    table(
        &["VIRTUAL SERVER", "VIP", "BACKEND", "FROM", "SLOT", "DETAIL"],
        rows,
    )
}

/// Left-aligned columns, two spaces apart, no trailing spaces.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows)
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ProbeHealth;
    use crate::health::HealthState;

    fn backend(addr: &str, state: &str) -> BackendInfo {
        BackendInfo {
            virtual_server: "aovpn".into(),
            address: addr.parse().unwrap(),
            id: 1,
            weight: 1,
            state: state.into(),
            health: HealthState::Up,
            probes: Vec::new(),
            next_hop: Some("02:00:00:00:00:0b on int".into()),
            drain_until: None,
            ring_slots: 21846,
            clients: 84,
            origin: "config".into(),
        }
    }

    /// `lookup` prints where a client's IKE handshake stopped, and steering.
    #[test]
    fn lookup_says_where_the_ike_handshake_stopped() {
        let result = |stage: Option<&str>, steered| LookupResult {
            virtual_server: "aovpn".into(),
            vip: "203.0.113.10".parse().unwrap(),
            backend: Some("10.0.0.11".parse().unwrap()),
            backend_id: Some(1),
            source: "probation".into(),
            slot: 7,
            persisted: Some(crate::api::PersistedInfo {
                backend_id: 1,
                backend: Some("10.0.0.11".parse().unwrap()),
                idle_seconds: 3,
                ignored_because: None,
                tier: "probation".into(),
                proof_recorded: Some(false),
                ike_stage: stage.map(str::to_owned),
                steered,
            }),
        };
        let client = "198.51.100.7".parse().unwrap();
        let text = |r| lookup_table(client, &[r]);
        assert!(text(result(Some("ike_sa_init_sent"), false))
            .contains("ike: IKE_SA_INIT sent, no response from the backend (last packet 3 s ago)"));
        assert!(text(result(Some("ike_auth_fragmented"), false)).contains("IKE_AUTH fragmented"));
        let steered = text(result(Some("established"), true));
        assert!(steered.contains("ike: established (ESP seen); steered by SPI"));
        assert!(!text(result(None, false)).contains("ike:"));
    }

    #[test]
    fn backend_list_is_an_aligned_table() {
        let mut draining = backend("10.0.0.12", "draining");
        draining.drain_until = Some("2030-01-01T00:00:00Z".into());
        draining.next_hop = None;
        let text = render(&Reply::Backends {
            backends: vec![backend("10.0.0.11", "active"), draining],
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("VIRTUAL SERVER  BACKEND    ID  WEIGHT  STATE"));
        assert!(lines[2].contains("draining (until 2030-01-01T00:00:00Z)"));
        assert!(lines[2].contains("unresolved"));
        let col = lines[0].find("HEALTH").unwrap();
        assert_eq!(&lines[1][col..col + 2], "up");
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn health_names_the_probe_type_that_failed() {
        let mut b = backend("10.0.0.11", "unusable");
        b.health = HealthState::Down;
        b.probes = vec![
            ProbeHealth {
                probe: "icmp".into(),
                health: HealthState::Up,
            },
            ProbeHealth {
                probe: "ike".into(),
                health: HealthState::Down,
            },
        ];
        assert_eq!(health_cell(&b), "down (icmp up, ike down)");
        b.health = HealthState::Up;
        b.probes[1].health = HealthState::Up;
        assert_eq!(health_cell(&b), "up");
    }

    #[test]
    fn removal_says_what_happens_to_the_clients() {
        let text = render(&Reply::BackendRemoved {
            backend: backend("10.0.0.11", "active"),
            draining_until: None,
        });
        assert_eq!(
            text,
            "removed 10.0.0.11 from aovpn (id 1); its 84 active clients are re-balanced on their next packet\n"
        );
    }
}
