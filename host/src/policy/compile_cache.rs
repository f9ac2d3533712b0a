//! Compiled plugins on disk, so that a CLI run does not compile again.
//!
//! A compiled artifact is native code: `Component::deserialize*` trusts its
//! bytes completely, so loading an artifact someone else wrote means running
//! their code outside any sandbox. Hence:
//!
//! - Artifacts live in a directory private to the user (0700, owned by the
//!   effective uid): `ROOT/plugins` when the cache root itself is the user's
//!   and no one else can write it, else the user's own
//!   `$XDG_CACHE_HOME/sifr/plugins`. Never in a shared root
//!   ([`CompileCache::for_cache_root`]).
//! - The directory and the artifact are opened without following symlinks,
//!   and checked on the open descriptors, not by path: a path checked and
//!   then opened can be swapped in between (a `renameat2` exchange of a
//!   directory in a group-writable root did exactly that).
//! - An artifact is named for the sha256 of the exact wasm it was compiled
//!   from and the engine's compatibility hash. Only sifr running as this
//!   user writes into the verified directory (by renaming a finished file
//!   into place), so the name binds the artifact to its wasm; a mismatch of
//!   any kind means "compile again", never "load".
//! - Site-locked plugins are never loaded from the user's cache at all: the
//!   user can write it, and the site's policy must not depend on anything
//!   the user can write (see `LoadedPlugin::load`). They are loaded from the
//!   **site store** ([`CompileCache::site`]) instead, which `sifr site
//!   prepare` fills as root: a directory that root owns and no one else can
//!   write, at every level up to `/`, checked on descriptors opened level by
//!   level without following symlinks. Its artifacts are root's, and each
//!   is bound to its name by a sidecar (`NAME.id`) that records the file's
//!   identity (device, inode, size, times) as prepare left it, so an
//!   artifact renamed or copied to another plugin's name is not loaded.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled plugins: the user's own, or the site's.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    owner: Owner,
}

/// Whose directory it is, and so what is trusted in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The effective user's: 0700, their files.
    User,
    /// Root's, every level up to `/` root's and writable by no one else;
    /// written only by `sifr site prepare`, read by everyone.
    Site,
}

/// Why a compiled-plugin directory cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreProblem {
    /// It, or a level above it, does not exist (yet).
    #[error("{}: does not exist", .0.display())]
    Missing(PathBuf),
    /// It is not safe to load native code from: the reason.
    #[error("{0}")]
    Unsafe(String),
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
    /// The cache in `dir`, created (mode 0700) when first written. It is
    /// used only while it is the user's own and private.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            owner: Owner::User,
        }
    }

    /// The site store in `dir`: site-locked plugins are loaded from it
    /// while it is root's and no one else can write it, at every level up
    /// to `/`. Only root writes it (`sifr site prepare`).
    pub fn site(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            owner: Owner::Site,
        }
    }

    /// Whether this is the site store.
    pub fn is_site(&self) -> bool {
        self.owner == Owner::Site
    }

    /// The user's own compiled-plugin cache: `$XDG_CACHE_HOME/sifr/plugins`.
    pub fn per_user() -> Option<Self> {
        dirs::cache_dir().map(|d| Self::new(d.join("sifr").join("plugins")))
    }

    /// The compiled-plugin cache that goes with the sifr cache at `root`:
    /// `ROOT/plugins` when `root` is the user's and only the user can write
    /// it (a cache of one's own), else the per-user cache. A shared cache
    /// root never holds native code.
    pub fn for_cache_root(root: &Path) -> Option<Self> {
        let me = rustix::process::geteuid().as_raw();
        let private = fs::metadata(root).is_ok_and(|m| m.uid() == me && m.mode() & 0o022 == 0);
        // A root that does not exist yet is made by this user, with this
        // user's umask; judge it when it exists.
        if private || !root.exists() {
            Some(Self::new(root.join("plugins")))
        } else {
            Self::per_user()
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact's file name for this wasm on this engine.
    pub(crate) fn artifact_name(&self, engine: &Engine, wasm_sha256: &str) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        format!("{wasm_sha256}-{engine_key}.cwasm")
    }

    /// The file name of the snapshot of this wasm configured with
    /// `settings` (see `policy::snapshot`), on this engine. The snapshot
    /// tool's version is part of the key: another may write another
    /// component.
    pub(crate) fn configured_name(
        &self,
        engine: &Engine,
        wasm_sha256: &str,
        settings: &str,
    ) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"wasmtime-wizer 48\0");
        hasher.update(settings.as_bytes());
        let settings_key = hex::encode(&hasher.finalize()[..12]);
        let plain = self.artifact_name(engine, wasm_sha256);
        let stem = plain.strip_suffix(".cwasm").unwrap_or(&plain);
        format!("{stem}-configured-{settings_key}.cwasm")
    }

    /// The cached component, if there is one this user can trust.
    pub(crate) fn load(&self, engine: &Engine, name: &str) -> Option<Component> {
        let dir = self.open_dir().ok()?;
        let file = self.open_trusted(&dir, name)?;
        if self.owner == Owner::Site && !self.bound(&dir, &file, name) {
            return None;
        }
        match deserialize(engine, &file) {
            Ok(component) => Some(component),
            Err(_) if self.owner == Owner::User => {
                // Corrupt or from an incompatible build: compile afresh.
                let _ = rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty());
                None
            }
            // The site's store is the site's to mend (`sifr site prepare`).
            Err(_) => None,
        }
    }

    /// Whether the artifact open on `file` is the one prepare saved as
    /// `name`: its sidecar names it and the file's identity then. A rename
    /// or a copy changes the identity (a rename moves the change time).
    fn bound(&self, dir: &OwnedFd, file: &OwnedFd, name: &str) -> bool {
        let Some(sidecar) = self.open_trusted(dir, &id_name(name)) else {
            return false;
        };
        let mut text = String::new();
        if std::io::Read::read_to_string(&mut fs::File::from(sidecar), &mut text).is_err() {
            return false;
        }
        let Ok(meta) = file
            .try_clone()
            .map(fs::File::from)
            .and_then(|f| f.metadata())
        else {
            return false;
        };
        text == format!("{name} {}\n", file_identity(&meta))
    }

    /// The small file `name` beside the artifacts (a snapshot's log lines),
    /// on the same terms as an artifact.
    pub(crate) fn load_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let dir = self.open_dir().ok()?;
        let file = self.open_trusted(&dir, name)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut fs::File::from(file), &mut bytes).ok()?;
        Some(bytes)
    }

    /// The sha256 this cache remembers for the wasm file at `path`, if the
    /// file is still the one it was computed from: same device, inode,
    /// size, modification and change times (nanoseconds). The change time
    /// moves on every write and cannot be set back by its owner, so a
    /// rewritten file never matches. Saves reading and hashing an 18 MB
    /// Python plugin on every run.
    pub(crate) fn wasm_digest(&self, path: &Path, file: &fs::Metadata) -> Option<String> {
        let text = self.load_bytes(&memo_name(path))?;
        let text = String::from_utf8(text).ok()?;
        let (identity, digest) = text.trim_end().rsplit_once(' ')?;
        (identity == file_identity(file)
            && digest.len() == 64
            && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_string())
    }

    /// Remember that the wasm file at `path`, as `file` describes it, has
    /// sha256 `digest` (see [`CompileCache::wasm_digest`]).
    pub(crate) fn remember_wasm_digest(&self, path: &Path, file: &fs::Metadata, digest: &str) {
        let text = format!("{} {digest}\n", file_identity(file));
        // A memo that cannot be written only costs a hash next time.
        let _ = self.store_bytes(text.as_bytes(), &memo_name(path));
    }

    /// Hold the compile lock for `name` until the guard drops: of many
    /// processes starting at once on a cold cache, one compiles and the
    /// others wait, then load what it saved (they look again once they
    /// hold the lock). The lock is `flock` on a file in the private
    /// directory, so a process that dies lets go of it. `None` when there
    /// is no private directory to lock in: compile without one.
    pub(crate) fn lock(&self, name: &str) -> Option<CompileLock> {
        self.create_dir().ok()?;
        let dir = self.open_dir().ok()?;
        let file = rustix::fs::openat(
            &dir,
            format!("{name}.lock"),
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .ok()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).ok()?;
        Some(CompileLock { _file: file })
    }

    /// Save `component`'s native code as `name`. Written to a temporary
    /// file in the verified directory and renamed, so a reader never sees
    /// half an artifact, and a mapped artifact is never changed in place.
    pub(crate) fn store(&self, component: &Component, name: &str) -> std::io::Result<()> {
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        let file = self.store_file(&bytes, name)?;
        if self.owner == Owner::Site {
            // Bind the artifact to its name as it now is (see `bound`).
            let meta = fs::File::from(file).metadata()?;
            let text = format!("{name} {}\n", file_identity(&meta));
            self.store_bytes(text.as_bytes(), &id_name(name))?;
        }
        Ok(())
    }

    /// Save `bytes` as `name`, as [`CompileCache::store`] does.
    pub(crate) fn store_bytes(&self, bytes: &[u8], name: &str) -> std::io::Result<()> {
        self.store_file(bytes, name).map(drop)
    }

    /// Save `bytes` as `name`; the file, open, after its rename into place.
    fn store_file(&self, bytes: &[u8], name: &str) -> std::io::Result<OwnedFd> {
        if self.owner == Owner::Site && !rustix::process::geteuid().is_root() {
            return Err(std::io::Error::other(
                "only root writes the site store (sifr site prepare)",
            ));
        }
        self.create_dir()?;
        let dir = self.open_dir().map_err(|problem| {
            std::io::Error::other(format!("compiled plugins are not kept there: {problem}"))
        })?;
        let tmp = format!(".compiling-{}-{name}", std::process::id());
        let file = rustix::fs::openat(
            &dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        // The site's artifacts are read by every user: 0644 whatever the
        // umask (the mode is set on the descriptor, not by openat's mask).
        if self.owner == Owner::Site {
            rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644))?;
        }
        let mut file = fs::File::from(file);
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        let renamed = written.and_then(|()| Ok(rustix::fs::renameat(&dir, &tmp, &dir, name)?));
        if renamed.is_err() {
            let _ = rustix::fs::unlinkat(&dir, &tmp, rustix::fs::AtFlags::empty());
        }
        renamed.map(|()| OwnedFd::from(file))
    }

    /// Make the directory: 0700 for the user's; 0755 for the site's, with
    /// every level it makes set to 0755 whatever root's umask, so that
    /// users can read it.
    pub(crate) fn create_dir(&self) -> std::io::Result<()> {
        match self.owner {
            Owner::User => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir),
            Owner::Site => {
                use std::os::unix::fs::PermissionsExt;
                let missing: Vec<&Path> =
                    self.dir.ancestors().take_while(|p| !p.exists()).collect();
                fs::DirBuilder::new().recursive(true).create(&self.dir)?;
                for level in missing {
                    fs::set_permissions(level, fs::Permissions::from_mode(0o755))?;
                }
                Ok(())
            }
        }
    }

    /// The directory, opened without following a symlink and checked on
    /// its descriptor: for the user's, this user's, and no one else may
    /// even look in; for the site's, see [`open_site_dir`].
    fn open_dir(&self) -> Result<OwnedFd, StoreProblem> {
        match self.owner {
            Owner::User => {
                let unusable = || {
                    StoreProblem::Unsafe(format!(
                        "{} is not private to this user",
                        self.dir.display()
                    ))
                };
                let dir = rustix::fs::open(
                    &self.dir,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|_| unusable())?;
                let stat = rustix::fs::fstat(&dir).map_err(|_| unusable())?;
                let me = rustix::process::geteuid().as_raw();
                (stat.st_uid == me && stat.st_mode & 0o077 == 0)
                    .then_some(dir)
                    .ok_or_else(unusable)
            }
            Owner::Site => open_site_dir(&self.dir),
        }
    }

    /// Whether the site store can be used at all, and if not, why.
    pub fn check_site(&self) -> Result<(), StoreProblem> {
        open_site_dir(&self.dir).map(drop)
    }

    /// `name` in `dir`, opened without following a symlink and checked on
    /// the descriptor: a regular file, the owner's (this user's, or root's
    /// in the site store), that no one else can write.
    fn open_trusted(&self, dir: &OwnedFd, name: &str) -> Option<OwnedFd> {
        let file = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .ok()?;
        let stat = rustix::fs::fstat(&file).ok()?;
        let owner = match self.owner {
            Owner::User => rustix::process::geteuid().as_raw(),
            Owner::Site => 0,
        };
        (FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
            && stat.st_uid == owner
            && stat.st_mode & 0o022 == 0)
            .then_some(file)
    }
}

/// The site store's directory, opened level by level from `/` without
/// following a symlink, each level checked on its descriptor: a directory
/// that root owns and that neither its group nor others can write. So no
/// one but root can have put or swapped anything on the way (`/tmp`, which
/// anyone can write, can never hold a site store).
fn open_site_dir(path: &Path) -> Result<OwnedFd, StoreProblem> {
    use std::path::Component as Level;
    let at =
        |level: &Path, why: String| StoreProblem::Unsafe(format!("{}: {why}", level.display()));
    if !path.is_absolute() {
        return Err(at(path, "the site store must be an absolute path".into()));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut walked = PathBuf::from("/");
    let mut dir =
        rustix::fs::open("/", flags, Mode::empty()).map_err(|e| at(&walked, e.to_string()))?;
    let check = |dir: &OwnedFd, level: &Path| -> Result<(), StoreProblem> {
        let stat = rustix::fs::fstat(dir).map_err(|e| at(level, e.to_string()))?;
        if stat.st_uid != 0 {
            return Err(at(level, format!("owned by uid {}, not root", stat.st_uid)));
        }
        if stat.st_mode & 0o022 != 0 {
            return Err(at(
                level,
                format!(
                    "writable by its group or others (mode {:o})",
                    stat.st_mode & 0o7777
                ),
            ));
        }
        Ok(())
    };
    check(&dir, &walked)?;
    for level in path.components() {
        let name = match level {
            Level::RootDir | Level::CurDir => continue,
            Level::Normal(name) => name,
            Level::ParentDir | Level::Prefix(_) => {
                return Err(at(
                    path,
                    "the site store's path may not contain `..`".into(),
                ));
            }
        };
        walked.push(name);
        dir = rustix::fs::openat(&dir, name, flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::NOENT => StoreProblem::Missing(walked.clone()),
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                at(&walked, "is a symlink or not a directory".into())
            }
            e => at(&walked, e.to_string()),
        })?;
        check(&dir, &walked)?;
    }
    Ok(dir)
}

/// The sidecar that binds a site artifact to its name.
fn id_name(name: &str) -> String {
    format!("{name}.id")
}

/// The memo file for the wasm at `path`: named by a hash of the path.
fn memo_name(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(path.as_os_str().as_bytes());
    format!("wasm-{}.sha256", hex::encode(&digest[..16]))
}

/// What identifies one version of a file without reading it.
fn file_identity(file: &fs::Metadata) -> String {
    format!(
        "{} {} {} {}.{} {}.{}",
        file.dev(),
        file.ino(),
        file.size(),
        file.mtime(),
        file.mtime_nsec(),
        file.ctime(),
        file.ctime_nsec()
    )
}

/// A held compile lock (see [`CompileCache::lock`]); released on drop.
pub(crate) struct CompileLock {
    _file: OwnedFd,
}

/// Deserialize the artifact open on `file`.
fn deserialize(engine: &Engine, file: &OwnedFd) -> wasmtime::Result<Component> {
    // Mapped, not read: 18 MB of Python plugin load in a fraction of the
    // time. wasmtime maps a path, so it is given the descriptor's own
    // /proc link, which names the inode that was checked, whatever has
    // happened to the directory entry since.
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    if proc_path.exists() {
        // SAFETY: the file is one sifr serialised itself: it was opened in
        // a directory that only this user can write, without following a
        // symlink, and checked on its descriptor to be this user's regular
        // file that no one else can write. Its name carries the wasm's
        // sha256 and the engine's compatibility hash (which wasmtime
        // checks again). sifr only ever replaces artifacts by renaming a
        // new file over them, never by writing in place, so a mapping
        // never sees its file change.
        return unsafe { Component::deserialize_file(engine, &proc_path) };
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(file.try_clone()?), &mut bytes)?;
    // SAFETY: as above; the bytes were read from the checked descriptor.
    unsafe { Component::deserialize(engine, &bytes) }
}
