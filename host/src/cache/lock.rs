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
//! A wait for the file lock ends as soon as the lock is released (when a
//! pull ends, the processes waiting for it must not notice late, one after
//! another), yet reports progress, honours a deadline and can be
//! cancelled, which a blocking `flock` alone cannot do; and polling
//! `try_lock` often is not affordable (on NFS each try is a round trip to
//! the lock server, for as long as a pull lasts). So a wait first tries the
//! lock and, if it is taken, hands the file to a helper thread that blocks
//! in `flock` and sends the file back once locked, while the waiting thread
//! receives in slices of at most 100 ms to report, check the deadline and
//! the cancellation. A thread per wait is cheap here: a process has few
//! waits at once (one per image it pulls or runs, one per entry a removal
//! waits for), none while the lock is free, and the thread sleeps in the
//! kernel.
//!
//! A waiter that gives up leaves its helper blocked (a `flock` cannot be
//! called off); the helper lets go of the lock as soon as it gets it, by
//! closing the file (its only descriptor). Until it has, the key stays busy
//! in this process ([`KeyState::orphan`]): on NFS that close would drop
//! every POSIX lock the process holds on the file, another thread's
//! included, and the lock the helper got would not conflict with one this
//! process took meanwhile. A thread that wants the key then waits
//! in-process, as it would have waited for the other process anyway.
//!
//! A pull never upgrades a shared hold in place (two upgraders would
//! deadlock): it releases it, takes the exclusive lock, and re-takes the
//! shared one after, checking the cache again each time.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SendError};
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

/// Report progress, and check the deadline and cancellation, this often.
const POLL: Duration = Duration::from_millis(100);

impl Waiting<'_, '_> {
    /// One more round of waiting is needed: report it, and say how long to
    /// wait before the next round (unless woken first), or why to give up.
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
        // Waits are woken by the release itself; the pause only paces the
        // reports and the checks.
        Ok(match self.wait.timeout {
            Some(limit) => POLL.min(limit.saturating_sub(waited)),
            None => POLL,
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
    /// A helper thread still blocks in `flock` for a waiter that gave up;
    /// it releases the lock as soon as it gets it. Until then nobody else
    /// in this process opens the key's lock file (see the module docs).
    orphan: bool,
}

impl KeyState {
    fn idle(&self) -> bool {
        self.readers == 0 && !self.writer && !self.taking && !self.orphan
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
                LockMode::Shared => st.writer || st.taking || st.orphan,
                LockMode::Exclusive => st.writer || st.taking || st.orphan || st.readers > 0,
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

        let locked = open().and_then(|file| lock_file(key, file, mode, &mut waiting));

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

/// Take the file lock: at once if it is free, else by waiting for a
/// helper thread that blocks in `flock`, in slices so that the wait can
/// report, time out and be cancelled.
fn lock_file(
    key: &str,
    file: File,
    mode: LockMode,
    waiting: &mut Waiting<'_, '_>,
) -> io::Result<File> {
    let attempt = match mode {
        LockMode::Shared => file.try_lock_shared(),
        LockMode::Exclusive => file.try_lock(),
    };
    match attempt {
        Ok(()) => return Ok(file),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(e),
    }
    // Report the wait (or refuse it) before starting a thread for it.
    let mut pause = waiting.tick()?;
    let locked = block_in_helper(key, file, mode)?;
    loop {
        match locked.recv_timeout(pause) {
            Ok(result) => return result,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the thread waiting for a cache lock died"));
            }
        }
        pause = match waiting.tick() {
            Ok(pause) => pause,
            Err(e) => {
                give_up(key, locked);
                return Err(e);
            }
        };
    }
}

/// Lock `file` in a new thread, which sends it on the returned channel once
/// locked. The channel holds nothing: a send meets a receive, or fails once
/// the waiter has given up, and then the thread lets go of the lock.
fn block_in_helper(
    key: &str,
    file: File,
    mode: LockMode,
) -> io::Result<Receiver<io::Result<File>>> {
    let (send, locked) = mpsc::sync_channel(0);
    let key = key.to_string();
    std::thread::Builder::new()
        .name("sifr-lock-wait".to_string())
        .spawn(move || {
            let result = loop {
                let taken = match mode {
                    LockMode::Shared => file.lock_shared(),
                    LockMode::Exclusive => file.lock(),
                };
                match taken {
                    // A signal, not a cancellation: that is the waiter's.
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    taken => break taken.map(|()| file),
                }
            };
            if let Err(SendError(result)) = send.send(result) {
                // The waiter gave up: close the file, releasing the lock if
                // it was taken, and only then free the key in-process.
                drop(result);
                let mut map = keys();
                if let Some(st) = map.as_mut().and_then(|keys| keys.get_mut(&key)) {
                    st.orphan = false;
                }
                forget_if_idle(&mut map, &key);
                CHANGED.notify_all();
            }
        })?;
    Ok(locked)
}

/// The waiter gives up: release the lock if the helper has just taken it,
/// else mark the helper an orphan, to release it when it gets it.
fn give_up(key: &str, locked: Receiver<io::Result<File>>) {
    let mut map = keys();
    match locked.try_recv() {
        // Dropped, so closed and released, before anyone else in this
        // process can open the key again (it is still ours in KEYS).
        Ok(result) => drop(result),
        // The helper still waits: once it gets the lock, its send fails
        // (the receiver is gone) and it clears the mark, after taking KEYS,
        // so after this.
        Err(mpsc::TryRecvError::Empty) => state(&mut map, key).orphan = true,
        Err(mpsc::TryRecvError::Disconnected) => {}
    }
    drop(locked);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::{Path, PathBuf};
    use std::thread;

    /// How long a step may take before the test calls it a hang: a bound
    /// against hanging forever, not a measure.
    const HANG: Duration = Duration::from_secs(60);

    fn open(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
    }

    fn lock_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("image.lock")
    }

    /// Another process's hold, as flock sees it: a separate open of the
    /// lock file, locked.
    fn other(path: &Path, mode: LockMode) -> File {
        let file = open(path).unwrap();
        match mode {
            LockMode::Shared => file.lock_shared().unwrap(),
            LockMode::Exclusive => file.lock().unwrap(),
        }
        file
    }

    /// Whether another process could take the lock exclusively now.
    fn free_for_others(path: &Path) -> bool {
        match open(path).unwrap().try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(e)) => panic!("{e}"),
        }
    }

    /// Whether another process could take the lock shared now.
    fn shareable_for_others(path: &Path) -> bool {
        match open(path).unwrap().try_lock_shared() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(e)) => panic!("{e}"),
        }
    }

    fn take(
        key: &str,
        path: &Path,
        mode: LockMode,
        timeout: Option<Duration>,
        on_wait: Option<&mut dyn FnMut(Duration) -> bool>,
    ) -> io::Result<ImageLock> {
        ImageLock::acquire(key, mode, || open(path), &mut Wait { timeout, on_wait })
    }

    fn known(key: &str) -> bool {
        keys().as_ref().is_some_and(|keys| keys.contains_key(key))
    }

    /// Wait until this process keeps nothing for `key`: no holder, and no
    /// helper left blocking for a waiter that gave up.
    fn settled(key: &str) {
        let since = Instant::now();
        let mut map = keys();
        while map.as_ref().is_some_and(|keys| keys.contains_key(key)) {
            assert!(since.elapsed() < HANG, "{key} is still held in-process");
            map = CHANGED
                .wait_timeout(map, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Take `key` in a thread that waits for `path`, once the wait has
    /// begun (`on_wait` called, so the lock was found taken).
    fn waiter(
        key: &'static str,
        path: &Path,
        mode: LockMode,
    ) -> (
        mpsc::Receiver<()>,
        thread::JoinHandle<io::Result<ImageLock>>,
    ) {
        let (began, waiting) = mpsc::channel();
        let path = path.to_path_buf();
        let handle = thread::spawn(move || {
            let mut report = |_| {
                let _ = began.send(());
                true
            };
            take(key, &path, mode, None, Some(&mut report))
        });
        (waiting, handle)
    }

    #[test]
    fn waiter_takes_an_exclusive_lock_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir);
        let key = "lock-test-exclusive-released";
        let holder = other(&path, LockMode::Exclusive);
        let (waiting, handle) = waiter(key, &path, LockMode::Exclusive);
        waiting.recv_timeout(HANG).expect("the waiter waits");
        drop(holder);
        let lock = handle.join().unwrap().unwrap();
        assert_eq!(lock.mode(), LockMode::Exclusive);
        assert!(!free_for_others(&path), "the waiter holds the lock");
        assert!(!shareable_for_others(&path));
        drop(lock);
        assert!(free_for_others(&path));
        assert!(!known(key));
    }

    #[test]
    fn exclusive_waiter_waits_for_shared_holders() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir);
        let key = "lock-test-exclusive-after-shared";
        let (first, second) = (
            other(&path, LockMode::Shared),
            other(&path, LockMode::Shared),
        );
        let (waiting, handle) = waiter(key, &path, LockMode::Exclusive);
        waiting.recv_timeout(HANG).expect("the waiter waits");
        drop(first);
        drop(second);
        let lock = handle.join().unwrap().unwrap();
        assert!(!shareable_for_others(&path), "the waiter holds the lock");
        drop(lock);
        assert!(free_for_others(&path));
    }

    #[test]
    fn shared_waiters_all_get_in_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir);
        // Two threads of this process on one key (one file lock between
        // them), and two keys of the same file standing for two other
        // processes (a file lock each).
        let keys = [
            "lock-test-shared-a",
            "lock-test-shared-a",
            "lock-test-shared-b",
            "lock-test-shared-c",
        ];
        let holder = other(&path, LockMode::Exclusive);
        let (got_in, in_) = mpsc::channel();
        let mut leave = Vec::new();
        let mut handles = Vec::new();
        let mut began = Vec::new();
        for key in keys {
            let (go, stay) = mpsc::channel::<()>();
            leave.push(go);
            let got_in = got_in.clone();
            let path = path.clone();
            let (began_tx, began_rx) = mpsc::channel();
            began.push(began_rx);
            handles.push(thread::spawn(move || {
                let mut report = |_| {
                    let _ = began_tx.send(());
                    true
                };
                let lock = take(key, &path, LockMode::Shared, None, Some(&mut report)).unwrap();
                got_in.send(()).unwrap();
                // Hold until told to leave: all must be in at once.
                let _ = stay.recv_timeout(HANG);
                drop(lock);
            }));
        }
        for began in &began {
            began.recv_timeout(HANG).expect("every waiter waits");
        }
        drop(holder);
        for _ in keys {
            in_.recv_timeout(HANG).expect("every shared waiter gets in");
        }
        assert!(!free_for_others(&path), "they hold it shared");
        assert!(shareable_for_others(&path));
        drop(leave);
        for handle in handles {
            handle.join().unwrap();
        }
        assert!(free_for_others(&path));
        for key in keys {
            assert!(!known(key));
        }
    }

    #[test]
    fn a_waiter_that_times_out_holds_nothing() {
        for mode in [LockMode::Exclusive, LockMode::Shared] {
            let dir = tempfile::tempdir().unwrap();
            let path = lock_path(&dir);
            let key = "lock-test-timed-out";
            let holder = other(&path, LockMode::Exclusive);
            let mut reports = 0;
            let mut report = |_| {
                reports += 1;
                true
            };
            let err = take(
                key,
                &path,
                mode,
                Some(Duration::from_millis(30)),
                Some(&mut report),
            )
            .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(reports >= 1, "the wait was reported");
            drop(holder);
            // Its helper may take the lock for a moment, and lets it go.
            settled(key);
            assert!(free_for_others(&path), "{mode:?}: the lock leaked");
            drop(take(key, &path, LockMode::Exclusive, Some(Duration::ZERO), None).unwrap());
        }
    }

    #[test]
    fn a_cancelled_waiter_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir);
        let key = "lock-test-cancelled";
        let holder = other(&path, LockMode::Shared);
        let mut reports = 0;
        let mut report = |_| {
            reports += 1;
            reports < 3
        };
        let err = take(key, &path, LockMode::Exclusive, None, Some(&mut report)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert_eq!(reports, 3);
        drop(holder);
        settled(key);
        assert!(free_for_others(&path), "the lock leaked");
    }

    #[test]
    fn no_wait_means_would_block_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir);
        let key = "lock-test-never";
        let holder = other(&path, LockMode::Exclusive);
        let mut report = |_| panic!("a wait was reported");
        let err = take(
            key,
            &path,
            LockMode::Shared,
            Some(Duration::ZERO),
            Some(&mut report),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // No helper was left behind: nothing to settle.
        assert!(!known(key));
        drop(holder);
        assert!(free_for_others(&path));
    }

    #[test]
    fn the_key_stays_busy_until_a_given_up_wait_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir);
        let key = "lock-test-orphan";
        let holder = other(&path, LockMode::Exclusive);
        let err = take(
            key,
            &path,
            LockMode::Exclusive,
            Some(Duration::from_millis(10)),
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Its helper still waits for the file lock: nobody in this process
        // opens the key meanwhile.
        let err = take(key, &path, LockMode::Shared, Some(Duration::ZERO), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // A new waiter waits, and gets the lock once the helper let go.
        let (waiting, handle) = waiter(key, &path, LockMode::Exclusive);
        waiting.recv_timeout(HANG).expect("the new waiter waits");
        drop(holder);
        let lock = handle.join().unwrap().unwrap();
        assert!(!free_for_others(&path), "the new waiter holds the lock");
        drop(lock);
        settled(key);
        assert!(free_for_others(&path));
    }

    #[test]
    fn threads_agree_in_process_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir);
        let key = "lock-test-in-process";
        let exclusive = take(key, &path, LockMode::Exclusive, None, None).unwrap();
        let err = take(key, &path, LockMode::Shared, Some(Duration::ZERO), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let (waiting, handle) = waiter(key, &path, LockMode::Shared);
        waiting.recv_timeout(HANG).expect("the reader waits");
        drop(exclusive);
        let first = handle.join().unwrap().unwrap();
        let second = take(key, &path, LockMode::Shared, Some(Duration::ZERO), None).unwrap();
        assert!(!free_for_others(&path));
        drop(first);
        assert!(!free_for_others(&path), "the last reader releases");
        drop(second);
        assert!(free_for_others(&path));
        assert!(!known(key));
    }
}
