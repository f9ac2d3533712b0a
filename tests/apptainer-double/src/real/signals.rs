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
//! std has no signal API, so this declares the few libc functions it needs
//! (libc is linked into every Rust program on Linux anyway). The handler
//! only touches atomics and calls `kill(2)`, both async-signal-safe.

use std::ffi::c_int;
use std::process;
use std::sync::atomic::{AtomicI32, Ordering};

const SIGHUP: c_int = 1;
const SIGINT: c_int = 2;
const SIGQUIT: c_int = 3;
const SIGTERM: c_int = 15;
/// The signals a caller stops apptainer with; the same numbers on every
/// Linux architecture (unlike `SIGUSR1`, for instance).
const FORWARDED: [c_int; 4] = [SIGHUP, SIGINT, SIGQUIT, SIGTERM];

/// `sighandler_t` values.
const SIG_DFL: usize = 0;
const SIG_IGN: usize = 1;
const SIG_ERR: usize = usize::MAX;

unsafe extern "C" {
    fn signal(signum: c_int, handler: usize) -> usize;
    fn kill(pid: i32, sig: c_int) -> c_int;
}

/// The pid signals go to; 0 while there is no child.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived while there was no child, not yet forwarded.
static PENDING: AtomicI32 = AtomicI32::new(0);
/// The last signal that arrived; 0 if none has.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
    match TARGET.load(Ordering::SeqCst) {
        0 => PENDING.store(sig, Ordering::SeqCst),
        pid => {
            // SAFETY: kill(2) is async-signal-safe and takes plain integers.
            unsafe { kill(pid, sig) };
        }
    }
}

/// Catch the forwarded signals from now on. A signal the caller had set to
/// be ignored stays ignored, as it would for apptainer.
pub fn install() {
    let handler = on_signal as extern "C" fn(c_int) as usize;
    for sig in FORWARDED {
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)`, the type a
        // signal handler has, and it is async-signal-safe (see above).
        unsafe {
            if signal(sig, handler) == SIG_IGN {
                signal(sig, SIG_IGN);
            }
        }
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
        // SAFETY: kill(2) with plain integers.
        unsafe { kill(pid, pending) };
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
    // SAFETY: restoring the default action and signalling ourselves, with
    // plain integers. For a signal a process sends itself, POSIX has it
    // delivered before kill(2) returns.
    unsafe {
        if signal(sig, SIG_DFL) != SIG_ERR {
            kill(process::id() as i32, sig);
        }
    }
    // Only if the signal did not end the process: the shell's convention.
    process::exit(128 + sig)
}
