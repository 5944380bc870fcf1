//! Pings through the clients' tunnels: a short check ([`ping`]) and a continuous run across
//! an event ([`PingRun`]) whose losses and outages are read back per client.
//!
//! A run is one `ping -D -i INTERVAL` per client in its namespace, stopped with SIGINT (its
//! own way to end: statistics printed; SIGTERM would kill it silently). `-D` stamps every
//! reply with the wall clock, so an outage can be placed against the event that caused it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::lab::{Child, NetNs};

/// Seconds since the epoch, as `ping -D` prints them.
pub fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `count` echo requests from `ns` to `to`, 200 ms apart, each given 2 s: (sent, received).
pub fn ping(ns: &NetNs, to: Ipv4Addr, count: u32) -> (u32, u32) {
    let out = ns
        .command("ping")
        .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2"])
        .arg(to.to_string())
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    statistics(&text).unwrap_or((0, 0))
}

/// `N packets transmitted, M received, …` of a ping's output.
fn statistics(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let num = |word: &str| -> Option<u32> {
        line.split(", ")
            .find(|p| p.ends_with(word))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((num("packets transmitted")?, num("received")?))
}

/// One `ping -D` per namespace, running until [`PingRun::stop`].
#[derive(Debug)]
pub struct PingRun {
    children: Vec<Child>,
    interval: Duration,
}

impl PingRun {
    /// Starts pinging `to` from every namespace of `from`, every `interval`; logs in
    /// `dir/ping-TAG-I.log`.
    pub fn start(
        from: &[&NetNs],
        to: Ipv4Addr,
        interval: Duration,
        dir: &Path,
        tag: &str,
    ) -> Result<Self> {
        let mut children = Vec::with_capacity(from.len());
        for (i, ns) in from.iter().enumerate() {
            let mut cmd = ns.command("ping");
            cmd.args(["-n", "-D", "-i", &format!("{:.3}", interval.as_secs_f64())])
                .arg(to.to_string());
            children.push(Child::spawn(
                &format!("ping {tag} {i}"),
                cmd,
                dir.join(format!("ping-{tag}-{i:02}.log")),
            )?);
        }
        Ok(Self { children, interval })
    }

    /// SIGINT to every ping, then each one's replies.
    pub fn stop(mut self) -> Result<Vec<Pings>> {
        for c in &self.children {
            // SAFETY: kill(2) on our own unreaped child's PID.
            unsafe { libc::kill(c.pid() as libc::pid_t, libc::SIGINT) };
        }
        let stopped_at = epoch(SystemTime::now());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::with_capacity(self.children.len());
        for c in &mut self.children {
            while c.exit_status().is_none() {
                if Instant::now() >= deadline {
                    bail!("{} ignored SIGINT: {}", c.name(), c.output_tail(3));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let text = c.output();
            out.push(
                Pings::parse(&text, self.interval, stopped_at)
                    .with_context(|| format!("{}: {}", c.name(), c.output_tail(5)))?,
            );
        }
        Ok(out)
    }
}

/// What one client's continuous ping saw.
#[derive(Clone, Debug, Default)]
pub struct Pings {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Receive time (epoch seconds) by sequence number (1, 2, …), duplicates left out.
    pub replies: BTreeMap<u32, f64>,
    pub interval: Duration,
    /// When the run was stopped (epoch seconds).
    pub stopped_at: f64,
}

impl Pings {
    fn parse(text: &str, interval: Duration, stopped_at: f64) -> Result<Self> {
        let (transmitted, _) = statistics(text).context("no ping statistics")?;
        let mut replies = BTreeMap::new();
        // `[1716000000.123456] 64 bytes from 10.200.0.1: icmp_seq=12 ttl=63 time=0.52 ms`
        for line in text.lines().filter(|l| l.contains(" bytes from ")) {
            let ts = line
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(t, _)| t.parse::<f64>().ok());
            let seq = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|s| s.parse::<u32>().ok());
            if let (Some(ts), Some(seq)) = (ts, seq) {
                replies.entry(seq).or_insert(ts);
            }
        }
        Ok(Self {
            transmitted,
            replies,
            interval,
            stopped_at,
        })
    }

    /// The last answered sequence number (0: none).
    pub fn last_answered(&self) -> u32 {
        self.replies.keys().next_back().copied().unwrap_or(0)
    }

    /// Requests lost: every one before the last answered that got no answer. Those after it
    /// were still in flight when the run stopped (see [`Pings::unanswered_tail`]).
    pub fn lost(&self) -> Vec<u32> {
        (1..self.last_answered())
            .filter(|s| !self.replies.contains_key(s))
            .collect()
    }

    /// Requests sent after the last answered one: in flight at the stop, or lost for good
    /// if the tunnel never came back.
    pub fn unanswered_tail(&self) -> u32 {
        self.transmitted.saturating_sub(self.last_answered())
    }

    /// The longest run of consecutive lost requests, as time (runs × interval).
    pub fn longest_outage(&self) -> Duration {
        let lost = self.lost();
        let mut longest = 0u32;
        let mut run = 0u32;
        let mut prev = 0u32;
        for s in lost {
            run = if s == prev + 1 { run + 1 } else { 1 };
            longest = longest.max(run);
            prev = s;
        }
        self.interval * longest
    }

    /// When the first reply after the last lost request arrived (epoch seconds): the
    /// client's tunnel carries pings again from then on. `None` without a loss.
    pub fn recovered_at(&self) -> Option<f64> {
        let last_lost = *self.lost().last()?;
        self.replies.range(last_lost..).next().map(|(_, &t)| t)
    }

    /// Time of the last reply (epoch seconds).
    pub fn last_reply_at(&self) -> Option<f64> {
        self.replies.values().copied().reduce(f64::max)
    }
}

/// What a run showed over every client, measured from an event at `event` (epoch s).
#[derive(Clone, Debug)]
pub struct LossSummary {
    pub clients: usize,
    pub sent: u32,
    pub lost: u32,
    pub clients_with_loss: usize,
    pub longest_outage: Duration,
    /// From the event to the last client's first reply after its last loss (zero when no
    /// client lost anything).
    pub converged_after: Duration,
}

impl LossSummary {
    pub fn of(pings: &[Pings], event: f64) -> Self {
        let converged = pings
            .iter()
            .filter_map(Pings::recovered_at)
            .map(|t| t - event)
            .fold(0.0_f64, f64::max);
        Self {
            clients: pings.len(),
            sent: pings.iter().map(|p| p.last_answered()).sum(),
            lost: pings.iter().map(|p| p.lost().len() as u32).sum(),
            clients_with_loss: pings.iter().filter(|p| !p.lost().is_empty()).count(),
            longest_outage: pings
                .iter()
                .map(Pings::longest_outage)
                .max()
                .unwrap_or_default(),
            converged_after: Duration::from_secs_f64(converged.max(0.0)),
        }
    }
}

impl std::fmt::Display for LossSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} pings lost ({} of {} clients lost any), longest outage {:?}, \
             every tunnel answering again {:.2?} after the event",
            self.lost,
            self.sent,
            self.clients_with_loss,
            self.clients,
            self.longest_outage,
            self.converged_after
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "PING 10.200.0.1 (10.200.0.1) 56(84) bytes of data.\n\
        [100.000000] 64 bytes from 10.200.0.1: icmp_seq=1 ttl=63 time=0.5 ms\n\
        [100.100000] 64 bytes from 10.200.0.1: icmp_seq=2 ttl=63 time=0.5 ms\n\
        [100.500000] 64 bytes from 10.200.0.1: icmp_seq=6 ttl=63 time=0.5 ms\n\
        [100.600000] 64 bytes from 10.200.0.1: icmp_seq=7 ttl=63 time=0.5 ms\n\
        [100.600100] 64 bytes from 10.200.0.1: icmp_seq=7 ttl=63 time=0.6 ms (DUP!)\n\
        [100.800000] 64 bytes from 10.200.0.1: icmp_seq=9 ttl=63 time=0.5 ms\n\
        \n--- 10.200.0.1 ping statistics ---\n\
        10 packets transmitted, 5 received, +1 duplicates, 50% packet loss, time 900ms\n";

    #[test]
    fn losses_outages_and_the_tail_in_flight() {
        let p = Pings::parse(OUT, Duration::from_millis(100), 101.0).unwrap();
        assert_eq!(p.transmitted, 10);
        assert_eq!(p.lost(), [3, 4, 5, 8]);
        assert_eq!(p.unanswered_tail(), 1);
        assert_eq!(p.longest_outage(), Duration::from_millis(300));
        assert_eq!(p.recovered_at(), Some(100.8));
        let s = LossSummary::of(&[p], 100.25);
        assert_eq!((s.lost, s.sent, s.clients_with_loss), (4, 9, 1));
        assert!((s.converged_after.as_secs_f64() - 0.55).abs() < 1e-6);
    }

    #[test]
    fn statistics_of_a_short_ping() {
        let text = "3 packets transmitted, 3 received, 0% packet loss, time 402ms\n";
        assert_eq!(statistics(text), Some((3, 3)));
        assert_eq!(statistics("nothing"), None);
    }
}
