//! Every filesystem location lb-ctl uses by default, in one place (bpfman's `directories.rs`).
//! No other module spells a path: they take these as defaults and let the config override
//! them.

/// The daemon's configuration file (`lb-ctl daemon --config` default).
pub const CONFIG_FILE: &str = "/etc/ikelb/ikelb.yaml";

/// Root-only Unix socket between the daemon and the operator commands (config
/// `control.socket` default).
pub const CONTROL_SOCKET: &str = "/run/ikelb/ctl.sock";

/// Where runtime changes (backend add/remove) are persisted (config `state_dir` default).
pub const STATE_DIR: &str = "/var/lib/ikelb";

/// Pin root for maps and the XDP link, on a bpffs (config `bpffs` default).
pub const BPFFS: &str = "/sys/fs/bpf/ikelb";

/// Name of a daemon's pin directory under the pin root (config `instance` default): pins
/// live in `<bpffs>/<instance>/` (see `crate::pin`).
pub const INSTANCE: &str = "default";

/// Per-interface attributes (`address` = MAC). Under `ip netns exec` sysfs is remounted for
/// the namespace, so this shows the namespace's interfaces.
pub const SYSFS_NET: &str = "/sys/class/net";

/// Where iproute2's `ip` (route and neighbour look-ups, `ip -j`) may be; the first
/// executable one is used, found once, never through `PATH`.
pub const IP_COMMANDS: [&str; 4] = ["/usr/sbin/ip", "/sbin/ip", "/bin/ip", "/usr/bin/ip"];
