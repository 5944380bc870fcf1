//! `interfaces`: the plain list of schema v1, or items with a role.
//!
//! ```yaml
//! interfaces: [eth0, eth1]                 # eth0 clients, eth1 backends (see below)
//! interfaces:
//!   - {name: eth0, role: clients}          # VIP traffic is accepted here only
//!   - {name: eth1, role: backends}
//!   - eth2                                 # a plain name among mappings: both
//! ```
//!
//! The role says where VIP traffic may come from: the data path drops traffic to a VIP on an
//! interface without the clients role (`drop/not_client_interface`), so a host on the
//! backend segment cannot pose as a client (and, say, pin itself to a backend it picks by
//! spoofing sources). Roles go to the data path as `INGRESS_F_*` flags in `INGRESS` and
//! `IFINDEX_PORTS`.
//!
//! Defaults keep every schema v1 file meaning what the docs always said it meant: a single
//! interface is one-arm (`both`); a plain list of two or more is "[external, internal…]",
//! the first facing the clients and the others the backends; in a list that has any
//! mapping, a plain name and a mapping without `role` are `both` (the operator is spelling
//! roles out, so nothing is guessed from positions).

use std::fmt;

use lb_common::{INGRESS_F_BACKENDS, INGRESS_F_CLIENTS};
use serde::Deserialize;

/// What an interface faces (`interfaces[].role`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Clients reach the VIPs through it.
    Clients,
    /// Backends are reached through it.
    Backends,
    /// Both (one-arm, or a mixed segment).
    #[default]
    Both,
}

impl Role {
    /// Carries the clients role (`clients` or `both`).
    pub fn clients(self) -> bool {
        matches!(self, Role::Clients | Role::Both)
    }

    /// Carries the backends role (`backends` or `both`).
    pub fn backends(self) -> bool {
        matches!(self, Role::Backends | Role::Both)
    }

    /// The `INGRESS_F_*` role flags of `lb-common` (without the port and `ATTACHED`).
    pub fn ingress_flags(self) -> u32 {
        let mut f = 0;
        if self.clients() {
            f |= INGRESS_F_CLIENTS;
        }
        if self.backends() {
            f |= INGRESS_F_BACKENDS;
        }
        f
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clients => "clients",
            Role::Backends => "backends",
            Role::Both => "both",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated interface: its name and role. Its position in `Config::interfaces` is its
/// port (`IFACES`, `TX_PORTS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub name: String,
    pub role: Role,
}

/// An `interfaces` item as written: a name, or a mapping.
#[derive(Debug)]
pub(super) enum RawInterface {
    Name(String),
    Spec(RawInterfaceSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterfaceSpec {
    name: String,
    role: Option<Role>,
}

impl<'de> Deserialize<'de> for RawInterface {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawInterface;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an interface name, or {name: NAME, role: clients|backends|both}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawInterface, E> {
                Ok(RawInterface::Name(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawInterface, A::Error> {
                // Through the derived impl, so unknown keys and bad roles are refused with
                // serde's own message (and serde_yaml's location).
                RawInterfaceSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawInterface::Spec)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl RawInterface {
    pub(super) fn name(&self) -> &str {
        match self {
            RawInterface::Name(n) => n,
            RawInterface::Spec(s) => &s.name,
        }
    }
}

/// The role of every item (module doc, "Defaults").
pub(super) fn roles(raw: &[RawInterface]) -> Vec<Role> {
    let spelled_out = raw.iter().any(|i| matches!(i, RawInterface::Spec(_)));
    raw.iter()
        .enumerate()
        .map(|(i, item)| match item {
            RawInterface::Spec(s) => s.role.unwrap_or_default(),
            RawInterface::Name(_) if spelled_out || raw.len() == 1 => Role::Both,
            RawInterface::Name(_) if i == 0 => Role::Clients,
            RawInterface::Name(_) => Role::Backends,
        })
        .collect()
}

/// Why `roles` cannot work, if it cannot: some interface must let clients in and some must
/// reach the backends.
pub(super) fn role_problem(roles: &[Role]) -> Option<String> {
    let clients = roles.iter().any(|r| r.clients());
    let backends = roles.iter().any(|r| r.backends());
    match (clients, backends) {
        (true, true) => None,
        (false, _) => Some(
            "no interface has the clients role (clients or both): every packet to a VIP \
             would be dropped"
                .to_owned(),
        ),
        (true, false) => Some(
            "no interface has the backends role (backends or both): no backend could be \
             reached"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const REST: &str = "virtual_servers:\n  - name: a\n    vip: 192.0.2.1\n";

    fn specs(interfaces: &str) -> Vec<(String, Role)> {
        let c = parse("i.yaml", &format!("{interfaces}\n{REST}")).expect("valid config");
        c.interfaces.into_iter().map(|i| (i.name, i.role)).collect()
    }

    fn refused(interfaces: &str) -> String {
        match parse("i.yaml", &format!("{interfaces}\n{REST}")) {
            Ok(c) => panic!("accepted: {:?}", c.interfaces),
            Err(e) => e.to_string(),
        }
    }

    fn named(v: &[(&str, Role)]) -> Vec<(String, Role)> {
        v.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    }

    #[test]
    fn a_plain_list_keeps_its_documented_meaning() {
        assert_eq!(specs("interfaces: [eth0]"), named(&[("eth0", Role::Both)]));
        assert_eq!(
            specs("interfaces: [ext, int, int2]"),
            named(&[
                ("ext", Role::Clients),
                ("int", Role::Backends),
                ("int2", Role::Backends)
            ])
        );
    }

    #[test]
    fn mappings_spell_roles_out_and_default_to_both() {
        assert_eq!(
            specs("interfaces:\n  - {name: ext, role: clients}\n  - name: int\n    role: backends\n  - mixed\n  - {name: other}"),
            named(&[
                ("ext", Role::Clients),
                ("int", Role::Backends),
                ("mixed", Role::Both),
                ("other", Role::Both)
            ])
        );
        assert_eq!(
            specs("interfaces: [{name: eth0, role: both}]"),
            named(&[("eth0", Role::Both)])
        );
    }

    #[test]
    fn roles_must_cover_clients_and_backends() {
        let e =
            refused("interfaces:\n  - {name: a, role: backends}\n  - {name: b, role: backends}");
        assert!(
            e.contains("i.yaml:1: interfaces: no interface has the clients role"),
            "{e}"
        );
        let e = refused("interfaces: [{name: a, role: clients}]");
        assert!(
            e.contains("i.yaml:1: interfaces: no interface has the backends role"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_roles_are_refused_with_their_line() {
        let e = refused("interfaces:\n  - {name: a, rol: clients}");
        assert!(
            e.contains("i.yaml:2") && e.contains("unknown field `rol`"),
            "{e}"
        );
        let e = refused("interfaces:\n  - name: a\n    role: client");
        assert!(
            e.contains("i.yaml:3") && e.contains("unknown variant `client`"),
            "{e}"
        );
        let e = refused("interfaces:\n  - {role: clients}");
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn duplicate_names_are_found_in_mappings_too() {
        let e = refused("interfaces:\n  - eth0\n  - {name: eth0, role: clients}");
        assert!(
            e.contains("i.yaml:3: interfaces[1]: interface \"eth0\" is listed twice"),
            "{e}"
        );
    }

    #[test]
    fn flags_follow_the_role() {
        assert_eq!(Role::Clients.ingress_flags(), INGRESS_F_CLIENTS);
        assert_eq!(Role::Backends.ingress_flags(), INGRESS_F_BACKENDS);
        assert_eq!(
            Role::Both.ingress_flags(),
            INGRESS_F_CLIENTS | INGRESS_F_BACKENDS
        );
    }
}
