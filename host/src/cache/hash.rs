//! Streamed sha256 of SIF files, with progress.

use std::fs::File;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// Large reads keep the hash, not the syscalls, the bottleneck.
const CHUNK: usize = 1 << 20;

/// Told how far hashing has got.
pub trait HashProgress {
    fn hashed(&mut self, done: u64, total: u64);

    /// Asked before each read: `false` stops the hashing, which then fails
    /// with [`io::ErrorKind::Interrupted`] (a signal asked sifr to stop).
    fn keep_going(&mut self) -> bool {
        true
    }
}

impl HashProgress for () {
    fn hashed(&mut self, _: u64, _: u64) {}
}

impl<F: FnMut(u64, u64)> HashProgress for F {
    fn hashed(&mut self, done: u64, total: u64) {
        self(done, total)
    }
}

/// The sha256 of everything `file` holds, lowercase hex.
pub fn sha256_file(
    mut file: File,
    total: u64,
    progress: &mut dyn HashProgress,
) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        if !progress.keep_going() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.hashed(done, total);
    }
    Ok(hex::encode(hasher.finalize()))
}
