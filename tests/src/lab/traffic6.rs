//! What only IPv6 has on the client side: `/proc/net/snmp6`, where receivers count IPv6 UDP
//! checksum failures (`Udp6InCsumErrors`). The probes themselves serve both families
//! (`traffic.rs`: `UdpProbe<Ipv6Addr>`, `EspProbe<Ipv6Addr>`, `tcp_ask`, `send_bad_checksum`).

use anyhow::{Context, Result};

/// `/proc/net/snmp6` of the calling thread's namespace, as (name, value) pairs
/// (`Udp6InCsumErrors 0`, one per line).
pub fn snmp6() -> Result<Vec<(String, i64)>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp6").context("read snmp6")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect())
}
