//! Signals in the real backend: forward them to the child doing the work,
//! and once the scratch files are gone, die of them.
//!
//! The fake backend's `run`/`exec` *become* the command (`execve`), so
//! signals need no handling there. The real backend must outlive its child
//! to delete the unpacked image, so, as apptainer does
//! (`internal/app/starter/master_linux.go`), it catches the signals a
//! caller uses to stop it, passes each one on to the current child, and
//! when the work is over and cleaned up dies of the signal itself.
//!
//! signal-hook installs the handler, and rustix sends signals; the
//! handler only touches atomics and calls `kill(2)`, both async-signal-safe.

use std::process;
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::process::{Pid, Signal, kill_process};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

/// The signals a caller stops apptainer with.
const FORWARDED: [i32; 4] = [SIGHUP, SIGINT, SIGQUIT, SIGTERM];

/// `kill(2)` from a signal handler or elsewhere; errors (the child is gone)
/// are nothing to act on.
fn send(pid: i32, sig: i32) {
    if let (Some(pid), Some(sig)) = (Pid::from_raw(pid), Signal::from_named_raw(sig)) {
        let _ = kill_process(pid, sig);
    }
}

/// The pid signals go to; 0 while there is no child.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived while there was no child, not yet forwarded.
static PENDING: AtomicI32 = AtomicI32::new(0);
/// The last signal that arrived; 0 if none has.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

fn on_signal(sig: i32) {
    RECEIVED.store(sig, Ordering::SeqCst);
    match TARGET.load(Ordering::SeqCst) {
        0 => PENDING.store(sig, Ordering::SeqCst),
        pid => send(pid, sig),
    }
}

/// Catch the forwarded signals from now on. A signal the caller had set to
/// be ignored (a shell's background job ignores SIGINT) stays ignored, as
/// it would for apptainer.
pub fn install() {
    for sig in FORWARDED {
        if ignored(sig) {
            continue;
        }
        // SAFETY: the handler only stores to atomics and calls kill(2),
        // both async-signal-safe; it takes no lock and allocates nothing.
        let registered = unsafe { signal_hook::low_level::register(sig, move || on_signal(sig)) };
        if let Err(e) = registered {
            eprintln!("apptainer-test-double: cannot catch signal {sig}: {e}");
        }
    }
}

/// Whether `sig` is set to be ignored.
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one
    // into `old`, a plain struct for which all-zero is a valid value.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Signals go to `pid` until the guard is dropped.
#[must_use = "forwarding stops when the guard is dropped"]
pub struct Forwarding(());

/// Send signals to `pid` until the returned guard is dropped; one that
/// arrived while there was no child is sent to it at once.
pub fn forward_to(pid: u32) -> Forwarding {
    retarget(pid);
    Forwarding(())
}

/// Send signals to `pid` instead of the current target, as long as the
/// current [`Forwarding`] guard lives.
pub fn retarget(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    TARGET.store(pid, Ordering::SeqCst);
    let pending = PENDING.swap(0, Ordering::SeqCst);
    if pending != 0 {
        send(pid, pending);
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        TARGET.store(0, Ordering::SeqCst);
    }
}

/// The last forwarded signal the double got, if any.
pub fn received() -> Option<i32> {
    Some(RECEIVED.load(Ordering::SeqCst)).filter(|&sig| sig != 0)
}

/// Die of `sig`, as if it had never been caught, so the caller sees the
/// death by signal it asked for. Call it only once the scratch files are
/// gone.
pub fn die_of(sig: i32) -> ! {
    // Unregisters sifr's handler's effect: the default action, for real.
    let _ = signal_hook::low_level::emulate_default_handler(sig);
    // Only if the signal did not end the process: the shell's convention.
    process::exit(128 + sig)
}
