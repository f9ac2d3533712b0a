//! Compiled plugins on disk, so that a CLI run does not compile again.
//!
//! An artifact is keyed by the sha256 of the `.wasm` and the engine's
//! precompile compatibility hash, so a new sifr (or a different CPU) never
//! loads an old artifact. Deserialising native code is `unsafe`: sifr loads
//! only what it wrote itself, into a directory only its user can write, and
//! refuses any artifact that another user owns or could have changed.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled plugins.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// Feeds `Hash` into sha256, for a key that is stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the full digest is used")
    }
}

impl CompileCache {
    /// The cache in `dir`, created (mode 0700) when first written.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$SIFR_CACHE_DIR/plugins`, else `$XDG_CACHE_HOME/sifr/plugins`.
    pub fn standard() -> Option<Self> {
        crate::cache_root().map(|root| Self::in_cache_root(&root))
    }

    /// The compiled-plugin cache inside a sifr cache root (`ROOT/plugins`),
    /// next to the SIF cache.
    pub fn in_cache_root(root: &Path) -> Self {
        Self::new(root.join("plugins"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact for this wasm lives.
    pub(crate) fn artifact_path(&self, engine: &Engine, wasm_sha256: &str) -> PathBuf {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        self.dir.join(format!("{wasm_sha256}-{engine_key}.cwasm"))
    }

    /// The cached component, if there is a trustworthy one.
    pub(crate) fn load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        if !self.trusted(path) {
            return None;
        }
        // SAFETY: the file is one sifr serialised itself: it sits in a
        // directory owned by this user that no one else can write, is owned
        // by this user and writable by no one else, and its name carries the
        // engine's compatibility hash (which wasmtime checks again). It is
        // mapped, not read: sifr only ever replaces artifacts by renaming a
        // new file over them, never by writing in place, so a mapping never
        // sees its file change.
        match unsafe { Component::deserialize_file(engine, path) } {
            Ok(component) => Some(component),
            Err(_) => {
                // Corrupt or from an incompatible build: compile afresh.
                let _ = fs::remove_file(path);
                None
            }
        }
    }

    /// Save `component`'s native code. Written to a temporary file and
    /// renamed, so a reader never sees half an artifact.
    pub(crate) fn store(&self, component: &Component, path: &Path) -> std::io::Result<()> {
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".compiling-")
            .tempfile_in(&self.dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    fn trusted(&self, path: &Path) -> bool {
        let me = rustix::process::geteuid().as_raw();
        let private = |p: &Path, dir: bool| {
            fs::symlink_metadata(p).is_ok_and(|m| {
                m.uid() == me
                    && m.permissions().mode() & 0o022 == 0
                    && if dir { m.is_dir() } else { m.is_file() }
            })
        };
        private(&self.dir, true) && private(path, false)
    }
}
