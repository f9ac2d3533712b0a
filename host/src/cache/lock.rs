//! One pull per image at a time, across processes and threads.
//!
//! Across processes: an advisory lock (`flock(2)`, through `File::lock`) on
//! `locks/<key>.lock`. The kernel drops it when the holder dies, however it
//! dies (SIGKILL included), so a stale lock never blocks anyone: there is no
//! lock *file* whose existence means "locked", and nothing to time out or
//! clean up by guesswork. On NFS, Linux clients since 2.6.12 carry `flock`
//! to the server as a whole-file POSIX lock (NLM for v3, built into v4), so
//! the lock holds between cluster nodes, and the server releases it when a
//! dead client's lease expires. (Lock files made with `O_EXCL`, Nextflow's
//! way, need stale-lock heuristics; `fcntl` locks alone are per process.)
//!
//! Within a process: on NFS the lock is a POSIX lock, which a process never
//! conflicts with itself on, so threads of one embedder also take an
//! in-process lock on the same key first.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::sync::{Condvar, Mutex};

static IN_PROCESS: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static RELEASED: Condvar = Condvar::new();

/// Held while pulling one image identity. Released on drop.
pub struct ImageLock {
    key: String,
    file: File,
}

impl ImageLock {
    /// Take the lock for `key` on `file` (the open lock file). Calls
    /// `on_wait` once if another holder makes us wait.
    pub fn acquire(key: &str, file: File, on_wait: impl FnOnce()) -> io::Result<Self> {
        let mut on_wait = Some(on_wait);
        {
            let mut held = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
            while held.get_or_insert_with(HashSet::new).contains(key) {
                if let Some(f) = on_wait.take() {
                    f();
                }
                held = RELEASED.wait(held).unwrap_or_else(|e| e.into_inner());
            }
            held.get_or_insert_with(HashSet::new)
                .insert(key.to_string());
        }
        let locked = match file.try_lock() {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                if let Some(f) = on_wait.take() {
                    f();
                }
                file.lock()
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        };
        let lock = Self {
            key: key.to_string(),
            file,
        };
        locked.map(|()| lock)
    }
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
        let mut held = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = held.as_mut() {
            set.remove(&self.key);
        }
        RELEASED.notify_all();
    }
}
