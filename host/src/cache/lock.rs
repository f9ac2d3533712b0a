//! One lock per image identity, shared or exclusive, across processes and
//! threads.
//!
//! - **Exclusive**: a pull of the identity (one apptainer pull for N
//!   processes), and eviction (`cache rm`, `cache prune`, a corrupt entry).
//! - **Shared**: an image in use, from its verification until apptainer has
//!   opened it (a `sifr run` holds it while apptainer runs). Eviction waits
//!   for it, so nobody deletes a SIF between its check and its open.
//!
//! Across processes: an advisory lock (`flock(2)`, through `File::lock` and
//! `File::lock_shared`) on `locks/<key>.lock`. The kernel drops it when the
//! holder dies, however it dies (SIGKILL included), so a stale lock never
//! blocks anyone: there is no lock *file* whose existence means "locked",
//! and nothing to time out or clean up by guesswork. On NFS, Linux clients
//! since 2.6.12 carry `flock` to the server as a whole-file POSIX lock (NLM
//! for v3, built into v4), so the lock holds between cluster nodes, and the
//! server releases it when a dead client's lease expires. (Lock files made
//! with `O_EXCL`, Nextflow's way, need stale-lock heuristics; `fcntl` locks
//! alone are per process.)
//!
//! Within a process: on NFS the lock is a POSIX lock, which a process never
//! conflicts with itself on, and which one unlock drops for the whole
//! process. So threads of one embedder agree in-process first (a
//! reader/writer count per key), and the process holds one shared file lock
//! for all its shared holders of a key, released by the last.
//!
//! Waits poll the file lock (`flock` cannot time out) so that they can
//! report progress, honour a deadline and be cancelled. A pull never
//! upgrades a shared hold in place (two upgraders would deadlock): it
//! releases it, takes the exclusive lock, and re-takes the shared one after,
//! checking the cache again each time.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How an identity is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// In use: many holders; eviction and pulls of the identity wait.
    Shared,
    /// Pulling or evicting: one holder.
    Exclusive,
}

/// How to wait for a lock that someone else holds.
pub struct Wait<'a> {
    /// Give up with [`io::ErrorKind::TimedOut`] after this long; `None`
    /// waits as long as it takes, `Some(ZERO)` does not wait at all
    /// ([`io::ErrorKind::WouldBlock`]).
    pub timeout: Option<Duration>,
    /// Called when a wait begins and then about every 100 ms, with how long
    /// it has lasted; returning `false` gives up with
    /// [`io::ErrorKind::Interrupted`].
    pub on_wait: Option<&'a mut dyn FnMut(Duration) -> bool>,
}

impl Wait<'_> {
    /// Don't wait: fail with `WouldBlock` if the lock is taken.
    pub fn never() -> Wait<'static> {
        Wait {
            timeout: Some(Duration::ZERO),
            on_wait: None,
        }
    }
}

/// Tracks one wait: when it began, and when to give up.
struct Waiting<'w, 'a> {
    wait: &'w mut Wait<'a>,
    since: Option<Instant>,
}

/// Poll at most this often.
const POLL: Duration = Duration::from_millis(100);

impl Waiting<'_, '_> {
    /// One more round of waiting is needed: report it, and say how long to
    /// pause, or why to give up.
    fn tick(&mut self) -> io::Result<Duration> {
        if self.wait.timeout == Some(Duration::ZERO) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        let waited = since.elapsed();
        if self.wait.timeout.is_some_and(|limit| waited >= limit) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        if let Some(on_wait) = self.wait.on_wait.as_mut()
            && !on_wait(waited)
        {
            return Err(io::ErrorKind::Interrupted.into());
        }
        // Poll quickly at first: most waits are for a short check.
        let pause = (waited / 4).clamp(Duration::from_millis(10), POLL);
        Ok(match self.wait.timeout {
            Some(limit) => pause.min(limit.saturating_sub(waited)),
            None => pause,
        })
    }
}

#[derive(Default)]
struct KeyState {
    /// Threads of this process holding the key shared.
    readers: usize,
    /// A thread of this process holds it exclusively.
    writer: bool,
    /// A thread is taking the shared file lock for the first reader.
    taking: bool,
    /// The process's shared file lock, while `readers > 0`.
    shared: Option<File>,
}

impl KeyState {
    fn idle(&self) -> bool {
        self.readers == 0 && !self.writer && !self.taking
    }
}

static KEYS: Mutex<Option<HashMap<String, KeyState>>> = Mutex::new(None);
static CHANGED: Condvar = Condvar::new();

fn keys() -> MutexGuard<'static, Option<HashMap<String, KeyState>>> {
    KEYS.lock().unwrap_or_else(|e| e.into_inner())
}

fn state<'m>(
    map: &'m mut MutexGuard<'static, Option<HashMap<String, KeyState>>>,
    key: &str,
) -> &'m mut KeyState {
    map.get_or_insert_with(HashMap::new)
        .entry(key.to_string())
        .or_default()
}

fn forget_if_idle(map: &mut MutexGuard<'static, Option<HashMap<String, KeyState>>>, key: &str) {
    if let Some(keys) = map.as_mut()
        && keys.get(key).is_some_and(KeyState::idle)
    {
        keys.remove(key);
    }
}

/// One identity held, shared or exclusive. Released on drop.
pub struct ImageLock {
    key: String,
    mode: LockMode,
    /// The exclusive holder's locked file (shared holders share theirs in
    /// [`KeyState::shared`]).
    file: Option<File>,
}

impl std::fmt::Debug for ImageLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageLock")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .finish()
    }
}

impl ImageLock {
    /// Take `key` in `mode`; `open` opens its lock file, when this process
    /// needs a new file lock.
    pub(super) fn acquire(
        key: &str,
        mode: LockMode,
        open: impl FnOnce() -> io::Result<File>,
        wait: &mut Wait<'_>,
    ) -> io::Result<Self> {
        let mut waiting = Waiting { wait, since: None };
        let mut map = keys();
        // In-process first.
        loop {
            let st = state(&mut map, key);
            let busy = match mode {
                LockMode::Shared => st.writer || st.taking,
                LockMode::Exclusive => st.writer || st.taking || st.readers > 0,
            };
            if !busy {
                break;
            }
            let pause = match waiting.tick() {
                Ok(pause) => pause,
                Err(e) => {
                    forget_if_idle(&mut map, key);
                    return Err(e);
                }
            };
            map = CHANGED
                .wait_timeout(map, pause)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let st = state(&mut map, key);
        let lock = |file| Self {
            key: key.to_string(),
            mode,
            file,
        };
        match mode {
            LockMode::Shared if st.readers > 0 => {
                st.readers += 1;
                return Ok(lock(None));
            }
            LockMode::Shared => st.taking = true,
            LockMode::Exclusive => st.writer = true,
        }
        drop(map);

        let locked = open().and_then(|file| lock_file(&file, mode, &mut waiting).map(|()| file));

        let mut map = keys();
        let st = state(&mut map, key);
        CHANGED.notify_all();
        match (mode, locked) {
            (LockMode::Shared, Ok(file)) => {
                st.taking = false;
                st.readers = 1;
                st.shared = Some(file);
                Ok(lock(None))
            }
            (LockMode::Exclusive, Ok(file)) => Ok(lock(Some(file))),
            (_, Err(e)) => {
                st.taking = false;
                if mode == LockMode::Exclusive {
                    st.writer = false;
                }
                forget_if_idle(&mut map, key);
                Err(e)
            }
        }
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// The identity key this lock is for.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Take the file lock, polling so the wait can report, time out and be
/// cancelled.
fn lock_file(file: &File, mode: LockMode, waiting: &mut Waiting<'_, '_>) -> io::Result<()> {
    loop {
        let attempt = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => std::thread::sleep(waiting.tick()?),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        let mut map = keys();
        let st = state(&mut map, &self.key);
        match self.mode {
            LockMode::Exclusive => {
                if let Some(file) = self.file.take() {
                    let _ = file.unlock();
                }
                st.writer = false;
            }
            LockMode::Shared => {
                st.readers = st.readers.saturating_sub(1);
                if st.readers == 0
                    && let Some(file) = st.shared.take()
                {
                    let _ = file.unlock();
                }
            }
        }
        forget_if_idle(&mut map, &self.key);
        CHANGED.notify_all();
    }
}
