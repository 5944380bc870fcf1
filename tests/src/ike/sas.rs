//! SAs as charon reports them over vici: `swanctl --list-sas --pretty`, parsed.
//!
//! `--pretty` prints the vici message tree one element per line (`key = value`, `name {` … `}`,
//! `key = [` … `]`), which survives values with spaces where `--raw` does not.

use anyhow::{bail, Context, Result};

/// One IKE SA (a `list-sa` event).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IkeSa {
    /// The connection's name (`rw` on responders, `vpn` on clients).
    pub name: String,
    pub uniqueid: u32,
    /// `CONNECTING` (half-open), `ESTABLISHED`, …
    pub state: String,
    pub local_host: String,
    pub local_port: u16,
    pub remote_host: String,
    pub remote_port: u16,
    pub remote_id: String,
    /// The SPIs identify one IKE SA on both peers (RFC 7296 §2.6).
    pub initiator_spi: String,
    pub responder_spi: String,
    /// Virtual IPs this end got (clients).
    pub local_vips: Vec<String>,
    /// Virtual IPs this end handed out (responders).
    pub remote_vips: Vec<String>,
    pub children: Vec<ChildSa>,
}

impl IkeSa {
    pub fn established(&self) -> bool {
        self.state == "ESTABLISHED"
    }

    /// The first installed CHILD_SA, if any.
    pub fn installed_child(&self) -> Option<&ChildSa> {
        self.children.iter().find(|c| c.state == "INSTALLED")
    }
}

/// One CHILD_SA of an IKE SA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildSa {
    pub name: String,
    /// `INSTALLED` once usable.
    pub state: String,
    /// ESP in UDP (NAT traversal).
    pub encap: bool,
    pub spi_in: String,
    pub spi_out: String,
    pub packets_in: u64,
    pub packets_out: u64,
}

#[derive(Debug)]
enum Node {
    Value(String),
    List(Vec<String>),
    Section(Vec<(String, Node)>),
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self, key: &str) -> String {
        match self.get(key) {
            Some(Node::Value(v)) => v.clone(),
            _ => String::new(),
        }
    }

    fn num<T: std::str::FromStr + Default>(&self, key: &str) -> T {
        self.str(key).parse().unwrap_or_default()
    }

    fn list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Node::List(v)) => v.clone(),
            _ => Vec::new(),
        }
    }
}

fn parse_tree(text: &str) -> Result<Vec<(String, Node)>> {
    // Stack of open sections (name, items); the bottom one is the top level.
    let mut stack: Vec<(String, Vec<(String, Node)>)> = vec![(String::new(), Vec::new())];
    let mut list: Option<(String, Vec<String>)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let ctx = || format!("list-sas line {}: {raw:?}", n + 1);
        if let Some((key, items)) = list.as_mut() {
            if line == "]" {
                let (key, items) = (std::mem::take(key), std::mem::take(items));
                list = None;
                stack
                    .last_mut()
                    .context("no open section")?
                    .1
                    .push((key, Node::List(items)));
            } else {
                items.push(line.to_string());
            }
            continue;
        }
        if line == "}" {
            let (name, items) = stack.pop().with_context(ctx)?;
            let Some(parent) = stack.last_mut() else {
                bail!("{}: unbalanced", ctx())
            };
            parent.1.push((name, Node::Section(items)));
        } else if let Some(name) = line.strip_suffix(" {}") {
            stack
                .last_mut()
                .context("no open section")?
                .1
                .push((name.into(), Node::Section(vec![])));
        } else if let Some(name) = line.strip_suffix(" {") {
            stack.push((name.to_string(), Vec::new()));
        } else if let Some(key) = line.strip_suffix(" = [") {
            list = Some((key.to_string(), Vec::new()));
        } else if let Some((key, value)) = line.split_once(" = ") {
            stack
                .last_mut()
                .context("no open section")?
                .1
                .push((key.into(), Node::Value(value.into())));
        } else {
            bail!("{}: not vici --pretty output", ctx());
        }
    }
    if stack.len() != 1 || list.is_some() {
        bail!("list-sas output ends inside a section");
    }
    Ok(stack.pop().expect("top level").1)
}

/// Parse `swanctl --list-sas --pretty` into IKE SAs.
pub fn parse_list_sas(text: &str) -> Result<Vec<IkeSa>> {
    let mut sas = Vec::new();
    for (event, node) in parse_tree(text)? {
        if event != "list-sa event" {
            continue;
        }
        let Node::Section(items) = node else { continue };
        for (name, ike) in &items {
            let children = match ike.get("child-sas") {
                Some(Node::Section(children)) => children
                    .iter()
                    .map(|(_, c)| ChildSa {
                        name: c.str("name"),
                        state: c.str("state"),
                        encap: c.str("encap") == "yes",
                        spi_in: c.str("spi-in"),
                        spi_out: c.str("spi-out"),
                        packets_in: c.num("packets-in"),
                        packets_out: c.num("packets-out"),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            sas.push(IkeSa {
                name: name.clone(),
                uniqueid: ike.num("uniqueid"),
                state: ike.str("state"),
                local_host: ike.str("local-host"),
                local_port: ike.num("local-port"),
                remote_host: ike.str("remote-host"),
                remote_port: ike.num("remote-port"),
                remote_id: ike.str("remote-id"),
                initiator_spi: ike.str("initiator-spi"),
                responder_spi: ike.str("responder-spi"),
                local_vips: ike.list("local-vips"),
                remote_vips: ike.list("remote-vips"),
                children,
            });
        }
    }
    Ok(sas)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed output of a 5.9.8 responder with one established client.
    const RESPONDER: &str = "\
list-sa event {
  rw {
    uniqueid = 2
    version = 2
    state = ESTABLISHED
    local-host = 203.0.113.10
    local-port = 4500
    local-id = vpn.ikelb.test
    remote-host = 198.51.100.2
    remote-port = 4500
    remote-id = client00.ikelb.test
    initiator-spi = 62e4ce191e0a382a
    responder-spi = 0567a103b58a078a
    nat-remote = yes
    remote-vips = [
      10.100.0.2
    ]
    child-sas {
      net-2 {
        name = net
        uniqueid = 2
        state = INSTALLED
        encap = yes
        spi-in = 12c1804f
        spi-out = 26356830
        packets-in = 2
        packets-out = 3
        local-ts = [
          10.200.0.0/24
        ]
      }
    }
  }
}
list-sa event {
  rw {
    uniqueid = 3
    state = CONNECTING
    remote-id = CN=some one, O=with spaces
    initiator-spi = 1111111111111111
    child-sas {
    }
  }
}
list-sas reply {
}
";

    #[test]
    fn parses_established_and_half_open_sas() {
        let sas = parse_list_sas(RESPONDER).unwrap();
        assert_eq!(sas.len(), 2);
        let sa = &sas[0];
        assert_eq!(sa.name, "rw");
        assert_eq!(sa.uniqueid, 2);
        assert!(sa.established());
        assert_eq!(sa.remote_host, "198.51.100.2");
        assert_eq!(sa.remote_port, 4500);
        assert_eq!(sa.remote_id, "client00.ikelb.test");
        assert_eq!(sa.initiator_spi, "62e4ce191e0a382a");
        assert_eq!(sa.remote_vips, ["10.100.0.2"]);
        let child = sa.installed_child().unwrap();
        assert_eq!(
            (child.encap, child.packets_in, child.packets_out),
            (true, 2, 3)
        );
        assert_eq!(child.spi_in, "12c1804f");
        assert_eq!(sas[1].state, "CONNECTING");
        assert_eq!(sas[1].remote_id, "CN=some one, O=with spaces");
        assert!(sas[1].children.is_empty());
    }

    #[test]
    fn empty_reply_is_no_sas() {
        assert!(parse_list_sas("list-sas reply {\n}\n").unwrap().is_empty());
        assert!(parse_list_sas("list-sas reply {}\n").unwrap().is_empty());
        assert!(parse_list_sas("list-sa event {\n  rw {\n").is_err());
    }
}
