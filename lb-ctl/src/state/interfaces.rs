//! Interfaces and next hops: the interfaces ikelb is attached to ([`IfaceInfo`]) with their
//! ports, and where each backend's frames go ([`NextHop`]).

use super::{Balancer, StateError};
use crate::dataplane::Dataplane;

/// An interface ikelb is attached to, as the control plane knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// Where to send a backend's frames: out of interface `port` (its number in `IFACES` and
/// `TX_PORTS`, by name: [`crate::identity`]) to
/// `mac` (the backend's own, or its gateway's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub port: u32,
    pub mac: [u8; 6],
}

impl<D: Dataplane> Balancer<D> {
    /// The interface with port `port`.
    pub fn iface(&self, port: u32) -> Option<&IfaceInfo> {
        let i = self.ports.iter().position(|&p| p == port)?;
        Some(&self.ifaces[i])
    }

    /// The port of interface `name`.
    pub fn port_of(&self, name: &str) -> Option<u32> {
        let i = self.ifaces.iter().position(|i| i.name == name)?;
        Some(self.ports[i])
    }

    pub fn ifaces(&self) -> &[IfaceInfo] {
        &self.ifaces
    }

    /// Sets (or clears) a backend's resolved next hop. Returns whether it changed; the maps
    /// change at the next [`apply`](Balancer::apply).
    pub fn set_next_hop(&mut self, id: u32, next_hop: Option<NextHop>) -> Result<bool, StateError> {
        if let Some(nh) = next_hop {
            if !self.ports.contains(&nh.port) {
                return Err(StateError::UnknownPort { id, port: nh.port });
            }
        }
        let b = self
            .backends
            .get_mut(&id)
            .ok_or(StateError::UnknownBackend { id })?;
        let changed = b.next_hop != next_hop;
        b.next_hop = next_hop;
        Ok(changed)
    }
}
