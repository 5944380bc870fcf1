//! What a charon's file log says about each IKE SA: which messages reached it, from where and
//! on which port, whom it authenticated, and when things happened.
//!
//! The lab configures every charon's filelog with `time_format = %s`, `time_add_ms = yes`,
//! `ike_name = yes` and level 1, so each line reads
//! `1795751668.123 11[NET] <rw|2> received packet: from 100.64.1.3[4500] to 10.0.0.11[4500] (1840 bytes)`:
//! a time, the thread and subsystem, the IKE SA (`<uniqueid>` before the SA has a connection,
//! `<name|uniqueid>` after) and the message. The `received packet` line of a message is logged
//! in the SA's context, before the `parsed … request` line that names the exchange.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

/// One parsed IKE message, and the UDP addresses it travelled between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// `IKE_SA_INIT`, `IKE_AUTH`, `INFORMATIONAL`, …
    pub exchange: String,
    /// A request (else a response).
    pub request: bool,
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    /// An RFC 7383 fragment (`EF(i/n)` payload), not a whole message.
    pub ike_fragment: bool,
}

/// Everything the log says about one IKE SA.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IkeSaLog {
    pub uniqueid: u32,
    /// The peer's authenticated identity (`authentication of 'ID' with … successful`).
    pub peer: Option<String>,
    /// Every message received and parsed in this SA, in order.
    pub received: Vec<Received>,
    /// `IKE_SA … established between`.
    pub established: bool,
    /// Virtual IP this end handed out (responders) or installed (initiators).
    pub vip: Option<String>,
    /// Time of the first line in this SA's context (an initiator's `initiating IKE_SA`).
    pub first_at: Option<f64>,
    /// Time of the first `CHILD_SA … established`.
    pub child_at: Option<f64>,
}

impl IkeSaLog {
    /// The received requests of `exchange`, whole messages or fragments.
    pub fn requests<'a>(&'a self, exchange: &'a str) -> impl Iterator<Item = &'a Received> + 'a {
        self.received
            .iter()
            .filter(move |r| r.request && r.exchange == exchange)
    }

    /// From the first logged line of this SA to its first CHILD_SA: on an initiator, the
    /// setup time of IKE SA + CHILD_SA (IKE_SA_INIT and IKE_AUTH round trips included).
    pub fn setup_time(&self) -> Option<Duration> {
        let (a, b) = (self.first_at?, self.child_at?);
        (b >= a).then(|| Duration::from_secs_f64(b - a))
    }
}

/// A charon log, by IKE SA unique id.
#[derive(Clone, Debug, Default)]
pub struct CharonLog {
    pub sas: BTreeMap<u32, IkeSaLog>,
    /// `(initiator SPI, responder SPI)` of messages that found no IKE SA and were dropped
    /// without a word at level 1 (an IKE_AUTH at a responder that never saw the IKE_SA_INIT).
    /// Needs `mgr = 2`: `checkout IKEv2 SA by message with SPIs …` then
    /// `IKE_SA checkout not successful` from the same thread. Each pair once.
    pub orphans: Vec<(String, String)>,
}

impl CharonLog {
    pub fn parse(text: &str) -> Self {
        let mut log = Self::default();
        // Per SA: the addresses of the last `received packet` line, waiting for its `parsed`.
        let mut pending: BTreeMap<u32, (SocketAddrV4, SocketAddrV4)> = BTreeMap::new();
        // Per thread: the SPIs of the last checkout by message.
        let mut checkout: BTreeMap<&str, (String, String)> = BTreeMap::new();
        for line in text.lines() {
            let Some((time, thread, sa, msg)) = split_line(line) else {
                continue;
            };
            let Some(id) = sa else {
                if let Some(spis) = msg.split_once("by message with SPIs ").map(|(_, s)| s) {
                    // `62e4ce191e0a382a_i 0567a103b58a078a_r`
                    let mut it = spis.split_whitespace();
                    if let (Some(i), Some(r)) = (it.next(), it.next()) {
                        let spi = |s: &str| {
                            s.trim_end_matches(['i', 'r'])
                                .trim_end_matches('_')
                                .to_string()
                        };
                        checkout.insert(thread, (spi(i), spi(r)));
                    }
                } else if msg == "IKE_SA checkout not successful" {
                    if let Some(spis) = checkout.remove(thread) {
                        if !log.orphans.contains(&spis) {
                            log.orphans.push(spis);
                        }
                    }
                }
                continue;
            };
            let entry = log.sas.entry(id).or_insert_with(|| IkeSaLog {
                uniqueid: id,
                ..Default::default()
            });
            entry.first_at.get_or_insert(time);
            if let Some(rest) = msg.strip_prefix("received packet: from ") {
                if let Some(addrs) = parse_from_to(rest) {
                    pending.insert(id, addrs);
                }
            } else if let Some(rest) = msg.strip_prefix("parsed ") {
                // `IKE_AUTH request 1 [ IDi CERT … ]`
                let mut words = rest.split_whitespace();
                let (Some(exchange), Some(kind)) = (words.next(), words.next()) else {
                    continue;
                };
                if let Some(&(from, to)) = pending.get(&id) {
                    entry.received.push(Received {
                        exchange: exchange.to_string(),
                        request: kind == "request",
                        from,
                        to,
                        ike_fragment: rest.contains(" EF("),
                    });
                }
            } else if let Some(rest) = msg.strip_prefix("authentication of '") {
                if let Some((peer, tail)) = rest.split_once('\'') {
                    if !tail.contains("(myself)") && tail.contains("successful") {
                        entry.peer = Some(peer.to_string());
                    }
                }
            } else if msg.starts_with("IKE_SA ") && msg.contains(" established between ") {
                entry.established = true;
            } else if msg.starts_with("CHILD_SA ") && msg.contains(" established ") {
                entry.child_at.get_or_insert(time);
            } else if let Some(rest) = msg
                .strip_prefix("assigning virtual IP ")
                .or_else(|| msg.strip_prefix("installing new virtual IP "))
            {
                entry.vip = rest.split_whitespace().next().map(str::to_string);
            }
        }
        log
    }

    /// The SA whose authenticated peer is `id`, established ones first.
    pub fn sa_of_peer(&self, id: &str) -> Option<&IkeSaLog> {
        let of_peer = || {
            self.sas
                .values()
                .filter(move |s| s.peer.as_deref() == Some(id))
        };
        of_peer()
            .find(|s| s.established)
            .or_else(|| of_peer().next())
    }

    /// Number of RFC 7383 fragments received.
    pub fn ike_fragments(&self) -> usize {
        self.sas
            .values()
            .flat_map(|s| &s.received)
            .filter(|r| r.ike_fragment)
            .count()
    }
}

/// `TIME THREAD[GRP] [<SA>] MESSAGE` → (time, thread, SA unique id, message).
fn split_line(line: &str) -> Option<(f64, &str, Option<u32>, &str)> {
    let (time, rest) = line.split_once(' ')?;
    let time: f64 = time.parse().ok()?;
    let (thread_grp, rest) = rest.split_once(' ')?;
    let thread = thread_grp.split_once('[').map_or(thread_grp, |(t, _)| t);
    if let Some(ctx) = rest.strip_prefix('<') {
        let (ctx, msg) = ctx.split_once("> ")?;
        let id = ctx.rsplit('|').next()?.parse().ok()?;
        Some((time, thread, Some(id), msg))
    } else {
        Some((time, thread, None, rest))
    }
}

/// `A[P] to B[Q] (N bytes)` → the two socket addresses.
fn parse_from_to(s: &str) -> Option<(SocketAddrV4, SocketAddrV4)> {
    let (from, rest) = s.split_once(" to ")?;
    let to = rest.split_whitespace().next()?;
    Some((bracketed(from)?, bracketed(to)?))
}

/// `10.0.0.1[4500]` → 10.0.0.1:4500.
fn bracketed(s: &str) -> Option<SocketAddrV4> {
    let (ip, port) = s.strip_suffix(']')?.split_once('[')?;
    Some(SocketAddrV4::new(ip.parse().ok()?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONDER: &str = "\
1795751667.001 00[DMN] Starting IKE charon daemon (strongSwan 5.9.8, Linux 6.18.44, x86_64)
1795751668.100 16[NET] <1> received packet: from 198.51.100.1[500] to 203.0.113.10[500] (884 bytes)
1795751668.101 16[ENC] <1> parsed IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) N(HASH_ALG) N(REDIR_SUP) ]
1795751668.102 16[NET] <1> sending packet: from 203.0.113.10[500] to 198.51.100.1[500] (265 bytes)
1795751668.110 02[NET] <1> received packet: from 198.51.100.1[4500] to 203.0.113.10[4500] (1840 bytes)
1795751668.111 02[ENC] <1> parsed IKE_AUTH request 1 [ IDi CERT N(INIT_CONTACT) CERTREQ IDr AUTH CPRQ(ADDR) SA TSi TSr ]
1795751668.112 02[IKE] <1> received end entity cert \"CN=client01.ikelb.test\"
1795751668.113 02[IKE] <rw|1> authentication of 'client01.ikelb.test' with RSA_EMSA_PKCS1_SHA2_256 successful
1795751668.114 02[IKE] <rw|1> authentication of 'vpn.ikelb.test' (myself) with RSA_EMSA_PKCS1_SHA2_256 successful
1795751668.115 02[IKE] <rw|1> assigning virtual IP 10.100.0.1 to peer 'client01.ikelb.test'
1795751668.116 02[IKE] <rw|1> IKE_SA rw[1] established between 203.0.113.10[vpn.ikelb.test]...198.51.100.1[client01.ikelb.test]
1795751668.117 02[IKE] <rw|1> CHILD_SA net{1} established with SPIs 3309a69e_i b750138a_o and TS 10.200.0.0/24 === 10.100.0.1/32
1795751668.200 07[NET] <2> received packet: from 198.51.100.2[4500] to 203.0.113.10[4500] (1236 bytes)
1795751668.201 07[ENC] <2> parsed IKE_AUTH request 1 [ EF(1/2) ]
1795751669.000 09[MGR] checkout IKEv2 SA by message with SPIs 62e4ce191e0a382a_i 0567a103b58a078a_r
1795751669.000 10[MGR] checkout IKEv2 SA by message with SPIs 1111111111111111_i 0000000000000000_r
1795751669.001 09[MGR] IKE_SA checkout not successful
1795751670.000 09[MGR] checkout IKEv2 SA by message with SPIs 62e4ce191e0a382a_i 0567a103b58a078a_r
1795751670.001 09[MGR] IKE_SA checkout not successful
";

    #[test]
    fn follows_each_sa_from_its_lines() {
        let log = CharonLog::parse(RESPONDER);
        let sa = log
            .sa_of_peer("client01.ikelb.test")
            .expect("client01's SA");
        assert_eq!(sa.uniqueid, 1);
        assert!(sa.established);
        assert_eq!(sa.vip.as_deref(), Some("10.100.0.1"));
        let init: Vec<_> = sa.requests("IKE_SA_INIT").collect();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].from, "198.51.100.1:500".parse().unwrap());
        assert_eq!(init[0].to.port(), 500);
        let auth: Vec<_> = sa.requests("IKE_AUTH").collect();
        assert_eq!(auth[0].from, "198.51.100.1:4500".parse().unwrap());
        assert!(!auth[0].ike_fragment);
        assert!((sa.setup_time().unwrap().as_secs_f64() - 0.017).abs() < 1e-6);
        assert_eq!(log.ike_fragments(), 1);
        assert_eq!(log.sas[&2].peer, None);
        assert_eq!(
            log.orphans,
            [(
                "62e4ce191e0a382a".to_string(),
                "0567a103b58a078a".to_string()
            )]
        );
    }
}
