//! The benchmark's contact with the system. Namespaces, veth pairs, child processes, global
//! sysctls, bpffs mounts and temporary directories are the test lab's guards (`lab-sys`,
//! `tests/lab-sys`), each undoing what it made on drop — also while an error unwinds, and after
//! SIGINT/SIGTERM (the handler here only sets a flag; the measuring loops poll it and return
//! an error, so every destructor runs). Names start with this run's [`RunPrefix`]
//! (`ikb<pid>n0`), which [`reap_stale`] recognises in what a killed earlier run left behind.
//!
//! What only the benchmark needs is here: the interrupt flag, CPU pinning and CPU time.

pub use lab_sys::{reap_stale, run, BpfFs, Child, NetNs, RunPrefix, Sysctl, TempDir, Veth};

use std::{
    fs,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag that [`check_interrupted`] turns into an error.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) on SIGINT/SIGTERM.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity(0)
    // reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// Number of online CPUs.
pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// utime + stime of a process (children it has waited for included) in seconds.
pub fn process_cpu_seconds(pid: u32, with_children: bool) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14–17 of stat(5) (utime stime cutime cstime) are 11–14 after the command.
    let ticks = |i: usize| -> Result<f64> { Ok(f[i].parse::<f64>()?) };
    let mut t = ticks(11)? + ticks(12)?;
    if with_children {
        t += ticks(13)? + ticks(14)?;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(t / hz)
}

/// CPU seconds of the calling thread.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Polls `ready` every `every` until it says so: an error (with the end of the child's log)
/// if `child` exits first or `within` passes, or on SIGINT/SIGTERM. `what` completes "did
/// not … within".
pub fn wait_ready(
    child: &mut Child,
    what: &str,
    within: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        check_interrupted()?;
        if child.exit_status().is_some() {
            bail!(
                "{} exited; its log:\n{}",
                child.name(),
                child.output_tail(20)
            );
        }
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not {what} within {} s; its log:\n{}",
                child.name(),
                within.as_secs(),
                child.output_tail(20)
            );
        }
        sleep(every)?;
    }
}
