//! Real IKEv2 peers (strongSwan) for the interop tests: a throwaway CA ([`Pki`]), one `charon`
//! per peer ([`Charon`]), what the peers say about their SAs (vici via `swanctl`, [`IkeSa`]) and
//! in their logs ([`CharonLog`]), and the lab that puts NATed initiators in front of a gateway
//! with responders behind it ([`IkeLab`]).
//!
//! How strongSwan runs here (strongSwan 5.9.8, Debian packages listed in [`PACKAGES`]):
//!
//! * **Userspace ESP.** The test kernels have no ESP/XFRM, so every charon loads
//!   `kernel-libipsec` (ESP in a TUN device) *before* `kernel-netlink`, with
//!   `load_modular = no` and an explicit plugin list: in the other order the IKE SA comes up and
//!   the CHILD_SA fails. libipsec only does ESP inside UDP, which NAT traversal provides (every
//!   client here is NATed, so everything moves to UDP 4500).
//! * **Many charons on one host.** Each instance has its own directory: `STRONGSWAN_CONF` and
//!   `SWANCTL_DIR` select config and credentials, its vici socket lives there (swanctl reaches it
//!   with `--uri` from the root namespace: a path socket is not tied to a network namespace).
//!   `charon` writes `/var/run/charon.pid` and refuses to start when it exists, so each instance
//!   runs in its own mount namespace with a private tmpfs on `/run`.
//! * **Default 16 worker threads.** With fewer, kernel-libipsec parks enough of them that vici
//!   calls hang.
//! * **DoS limits.** Many clients share one NAT address; the responders' per-IP half-open
//!   limits (`cookie_threshold_ip` 3, `block_threshold` 5) would refuse them, so the tests raise
//!   them.
//! * **Large IKE_AUTH.** RSA-3072 certificates make IKE_AUTH ~1.8 kB: with
//!   `fragmentation = no` it crosses the gateway as IP fragments, with `fragmentation = yes` as
//!   RFC 7383 IKE fragments.

mod charon;
mod lab;
mod log;
mod pki;
mod sas;

pub use charon::{Charon, CharonFiles, Fragmentation, Initiation};
pub use lab::{
    Capture, ChecksumTally, ClientReport, Gateway, IkeLab, IkeLabSpec, PingResult, Snapshot,
    HOST_ADDR, HOST_NET, LOGS_ENV,
};
pub use log::{CharonLog, IkeSaLog, Received};
pub use pki::{client_id, Pki, SERVER_ID};
pub use sas::{parse_list_sas, ChildSa, IkeSa};

use std::path::Path;

/// The IKE daemon (Debian's `strongswan-charon`).
pub const CHARON: &str = "/usr/lib/ipsec/charon";
/// Where charon's plugins live.
pub const PLUGIN_DIR: &str = "/usr/lib/ipsec/plugins";
/// The plugins every charon loads, in load order: `kernel-libipsec` before `kernel-netlink`
/// (userspace ESP, see the module docs); `kdf` because 5.9.8 moved the PRF-based KDF out of
/// the crypto plugins (without it: "KDF_PRF with PRF_HMAC_SHA2_256 not supported").
pub const PLUGINS: &[&str] = &[
    "random",
    "nonce",
    "openssl",
    "pem",
    "pkcs1",
    "x509",
    "pubkey",
    "curve25519",
    "sha2",
    "hmac",
    "gcm",
    "aes",
    "kdf",
    "kernel-libipsec",
    "kernel-netlink",
    "socket-default",
    "vici",
];
/// Debian packages that provide what [`unavailable`] looks for.
pub const PACKAGES: &[&str] = &[
    "strongswan-charon",
    "strongswan-swanctl",
    "strongswan-pki",
    "libcharon-extra-plugins",
    "libstrongswan-extra-plugins",
    "libstrongswan-standard-plugins",
    "nftables",
    "tcpdump",
    "conntrack",
    "ethtool",
    "iputils-ping",
];

/// Why real IKEv2 peers cannot run on this machine, or `None` when they can: the tests need
/// root (namespaces), charon and its plugins, swanctl, pki, nft, tcpdump, conntrack, ethtool,
/// ping and a TUN device. The interop tests print this and skip.
pub fn unavailable() -> Option<String> {
    if !crate::lab::is_root() {
        return Some("needs root (network and mount namespaces)".into());
    }
    let mut missing: Vec<String> = Vec::new();
    if !Path::new(CHARON).is_file() {
        missing.push(CHARON.into());
    }
    for plugin in PLUGINS {
        let so = Path::new(PLUGIN_DIR).join(format!("libstrongswan-{plugin}.so"));
        if !so.is_file() {
            missing.push(so.display().to_string());
        }
    }
    for tool in [
        "swanctl", "pki", "nft", "tcpdump", "ethtool", "ping", "unshare",
    ] {
        if !on_path(tool) {
            missing.push(tool.into());
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (kernel-libipsec's TUN device)".into());
    }
    (!missing.is_empty()).then(|| {
        format!(
            "strongSwan interop needs {} (apt-get install {})",
            missing.join(", "),
            PACKAGES.join(" ")
        )
    })
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}
