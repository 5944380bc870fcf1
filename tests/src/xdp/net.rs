//! The fixture's network namespace and its two veth pairs (module doc of [`super`]).

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::lab::{NetNs, RunPrefix};

use super::{mac_str, EXT_MAC, INT_MAC, ROUTER4, ROUTER6, ROUTER_MAC};

/// The test's network namespace and its two veth pairs (module doc).
pub struct TestNet {
    /// Deleting it deletes the veth pairs inside.
    ns: NetNs,
    handle: File,
    pub ext: u32,
    pub int: u32,
}

/// Puts the thread back into the namespace it left (on drop, also while unwinding).
struct Back(File);

impl Drop for Back {
    fn drop(&mut self) {
        // SAFETY: setns on a valid namespace fd; CLONE_NEWNET moves only this thread.
        let rc = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns back: {}", std::io::Error::last_os_error());
    }
}

impl TestNet {
    /// The namespace, both veth pairs, addresses, neighbours and routes, in as few processes
    /// as it takes (`ip netns add`, one `ip -batch`): each start of `ip` costs a large share
    /// of a fixture's time in an emulated guest (docs/kernels.md). The veth pairs live and
    /// die with the namespace.
    pub(super) fn new() -> anyhow::Result<Self> {
        crate::lab::reap_stale();
        let ns = NetNs::new(RunPrefix::new('p').name("xdp"))?;
        // NetNs turns IPv6 off; the IPv6 FIB rows need it (no DAD: nothing else runs here).
        // Links created from now on inherit `default`.
        for key in [
            "net/ipv6/conf/all/disable_ipv6",
            "net/ipv6/conf/default/disable_ipv6",
        ] {
            ns.sysctl(key, "0")?;
        }
        for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
            ns.sysctl(key, "1")?;
        }
        let r = mac_str(ROUTER_MAC);
        ns.ip_batch(&format!(
            "link add ext address {ext_mac} type veth peer name ext-p\n\
             link add int address {int_mac} type veth peer name int-p\n\
             link set ext up\n\
             link set ext-p up\n\
             link set int up\n\
             link set int-p up\n\
             addr add 192.0.2.1/24 dev ext\n\
             addr add 10.0.0.1/24 dev int\n\
             addr add 2001:db8:e::1/64 dev ext nodad\n\
             addr add 2001:db8:1::1/64 dev int nodad\n\
             neigh add {ROUTER4} lladdr {r} nud permanent dev ext\n\
             neigh add {ROUTER6} lladdr {r} nud permanent dev ext\n\
             route add 198.51.100.0/24 via {ROUTER4} dev ext\n\
             route add 192.0.2.32/27 via {ROUTER4} dev ext\n\
             route add 2001:db8:c::/48 via {ROUTER6} dev ext\n\
             route add 2001:db8:d::/48 via {ROUTER6} dev ext\n\
             route add unreachable 100.64.0.0/10\n\
             route add unreachable 2001:db8:f::/48\n",
            ext_mac = mac_str(EXT_MAC),
            int_mac = mac_str(INT_MAC),
        ))?;
        let (ext, int) = ns.run(|| {
            let index = |name: &str| {
                let c = std::ffi::CString::new(name).expect("no NUL");
                // SAFETY: a valid NUL-terminated name; if_nametoindex reads it only.
                unsafe { libc::if_nametoindex(c.as_ptr()) }
            };
            (index("ext"), index("int"))
        })?;
        anyhow::ensure!(ext != 0 && int != 0, "{}: no ext/int link", ns.name());
        let handle = File::open(format!("/run/netns/{}", ns.name()))?;
        Ok(Self {
            ns,
            handle,
            ext,
            int,
        })
    }

    /// Runs `f` with this thread inside the namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let back = Back(File::open("/proc/thread-self/ns/net").expect("own netns"));
        // SAFETY: as in `Back::drop`.
        let rc = unsafe { libc::setns(self.handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let r = f();
        drop(back);
        r
    }

    /// `ip -n <ns> ARGS…` (e.g. to move a neighbour), panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns
            .ip(args)
            .unwrap_or_else(|e| panic!("ip {args:?}: {e:#}"))
    }
}
