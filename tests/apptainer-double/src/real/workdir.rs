//! Scratch directories, and files that only appear once complete: std has
//! no `tempfile`, and the double adds no dependencies.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many names [`WorkDir::new`] tries before it gives up.
const ATTEMPTS: u32 = 100;

/// A fresh directory, removed with everything in it when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Make a fresh directory in `base`, or in the system's temporary
    /// directory when `base` is `None`.
    pub fn new(base: Option<&Path>) -> io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        for _ in 0..ATTEMPTS {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("apptainer-double-{}-{nanos:x}-{n}", process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    return Err(io::Error::new(
                        err.kind(),
                        format!(
                            "cannot make a scratch directory in {}: {err}",
                            base.display()
                        ),
                    ));
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free scratch directory name in {}", base.display()),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Nothing to report to: a leftover is a nuisance, not a failure.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A file written under a temporary name beside its destination and renamed
/// onto it once complete, so the destination never holds a partial file.
/// Dropped before [`PendingFile::persist`], it removes the temporary file.
#[derive(Debug)]
pub struct PendingFile {
    temp: PathBuf,
    destination: PathBuf,
    persisted: bool,
}

impl PendingFile {
    pub fn new(destination: &Path) -> Self {
        let mut temp = destination.as_os_str().to_owned();
        temp.push(format!(".{}.tmp", process::id()));
        Self {
            temp: PathBuf::from(temp),
            destination: destination.to_path_buf(),
            persisted: false,
        }
    }

    /// Where to write the file.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Move the file onto its destination, replacing what is there.
    pub fn persist(mut self) -> io::Result<()> {
        fs::rename(&self.temp, &self.destination)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_dirs_are_fresh_and_removed() {
        let first = WorkDir::new(None).unwrap();
        let second = WorkDir::new(None).unwrap();
        assert_ne!(first.path(), second.path());
        let inner = first.path().join("a/b");
        fs::create_dir_all(&inner).unwrap();
        fs::write(inner.join("c"), "x").unwrap();
        let path = first.path().to_path_buf();
        drop(first);
        assert!(!path.exists());
    }

    #[test]
    fn work_dirs_need_an_existing_base() {
        let err = WorkDir::new(Some(Path::new("/nonexistent/apptainer-double"))).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/apptainer-double"),
            "{err}"
        );
    }

    #[test]
    fn pending_files_appear_only_when_persisted() {
        let dir = WorkDir::new(None).unwrap();
        let destination = dir.path().join("out.sif");

        let pending = PendingFile::new(&destination);
        fs::write(pending.path(), "partial").unwrap();
        let temp = pending.path().to_path_buf();
        drop(pending);
        assert!(!temp.exists() && !destination.exists());

        fs::write(&destination, "old").unwrap();
        let pending = PendingFile::new(&destination);
        fs::write(pending.path(), "new").unwrap();
        pending.persist().unwrap();
        assert_eq!(fs::read_to_string(&destination).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
