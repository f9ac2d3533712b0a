//! Whom a cache trusts, and the checks that hold a shared cache to it.
//!
//! A cache that several users can write is a place where any of them can
//! put a SIF file and an index record pointing at it; the stamp in a record
//! only catches accidents, since whoever writes the record writes the
//! stamp. So a record or a blob counts only if its owner is you or one of
//! the owners the config names (`[cache] trusted-owners`), and nobody else
//! can write it: no group or other write bit. Everything else is ignored,
//! never deleted: it is someone else's file.
//!
//! The checks are made on the open descriptor (`fstat`), never on a path,
//! so what was checked is what is read; files are opened without following
//! symlinks and without blocking (a FIFO planted as a record must not hang
//! sifr).

use std::fmt;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use nix::unistd::{Gid, Group, Uid, User};
use rustix::fs::{Mode, OFlags};

/// The owners whose records and blobs this cache may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// You: the effective uid, which owns what this process writes.
    me: u32,
    /// `[cache] trusted-owners`, resolved to uids.
    others: Vec<u32>,
}

impl Default for Trust {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Trust {
    /// You, and the given owners.
    pub fn new(trusted_owners: &[u32]) -> Self {
        Self {
            me: rustix::process::geteuid().as_raw(),
            others: trusted_owners.to_vec(),
        }
    }

    /// The uid files written by this process get.
    pub fn me(&self) -> u32 {
        self.me
    }

    /// Whether files owned by `uid` may be used.
    pub fn trusts(&self, uid: u32) -> bool {
        uid == self.me || self.others.contains(&uid)
    }

    /// Whether a record or blob with this metadata may be used.
    pub fn check_file(&self, meta: &Metadata) -> Result<(), Distrust> {
        if !meta.file_type().is_file() {
            return Err(Distrust::NotAFile);
        }
        let owner = meta.uid();
        if !self.trusts(owner) {
            return Err(Distrust::Owner { uid: owner });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(Distrust::Writable { uid: owner, mode });
        }
        Ok(())
    }

    /// Whether nobody outside this trust (and root, who can do anything
    /// anyway) can replace an entry of the directory with this metadata:
    /// its owner is trusted, and it is writable only by its owner, or it is
    /// sticky (then only an entry's owner can rename or remove it, and the
    /// entries that matter are checked in turn). Group write is no one
    /// else's when the group is the owner's own (a user private group, as
    /// umask 002 leaves on `~/.cache/sifr`).
    pub fn check_dir(&self, meta: &Metadata) -> Result<(), Distrust> {
        if !meta.file_type().is_dir() {
            return Err(Distrust::NotADirectory);
        }
        let owner = meta.uid();
        if owner != 0 && !self.trusts(owner) {
            return Err(Distrust::Owner { uid: owner });
        }
        let mode = meta.permissions().mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        let group_write = mode & 0o020 != 0 && !is_private_group(meta.gid(), owner);
        if (group_write || mode & 0o002 != 0) && !sticky {
            return Err(Distrust::Writable { uid: owner, mode });
        }
        Ok(())
    }
}

/// Why a file or directory in the cache is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distrust {
    /// A symlink, FIFO, device or directory where a file should be.
    NotAFile,
    /// A symlink or file where a directory should be.
    NotADirectory,
    /// Owned by someone you do not trust.
    Owner { uid: u32 },
    /// Writable by its group or by others.
    Writable { uid: u32, mode: u32 },
}

impl fmt::Display for Distrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAFile => write!(f, "it is not a regular file"),
            Self::NotADirectory => write!(f, "it is not a directory"),
            Self::Owner { uid } => write!(
                f,
                "it is owned by {}, whom you do not trust",
                owner_name(*uid)
            ),
            Self::Writable { uid, mode } => write!(
                f,
                "it is owned by {} but writable by {} (mode {mode:04o})",
                owner_name(*uid),
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
            ),
        }
    }
}

/// A record or blob that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub path: PathBuf,
    pub why: Distrust,
}

impl Untrusted {
    /// What the user (or the file's owner) can do about it.
    pub fn advice(&self) -> String {
        match &self.why {
            Distrust::Owner { uid } => format!(
                "if {} is trusted to provide your images, add it to `[cache] trusted-owners` \
                 in your config; see \"Sharing a cache\" in sifr's README",
                owner_name(*uid)
            ),
            Distrust::Writable { .. } => format!(
                "its owner can make it usable with `chmod go-w {}`; see \"Sharing a cache\" \
                 in sifr's README for the umask to use",
                self.path.display()
            ),
            Distrust::NotAFile | Distrust::NotADirectory => {
                "whoever put it there should remove it".to_string()
            }
        }
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.why)
    }
}

/// `name (uid N)`, or `uid N` when the uid has no name here.
pub fn owner_name(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{} (uid {uid})", crate::untrusted::escape(&name, 64)),
        None => format!("uid {uid}"),
    }
}

/// The user name of `uid`, from the passwd database.
pub fn user_name(uid: u32) -> Option<String> {
    let user = User::from_uid(Uid::from_raw(uid)).ok()??;
    Some(user.name)
}

/// Whether `gid` is `uid`'s own group, which lets no one else in: the
/// user's primary group, named after the user, with no one else listed in
/// it (a user private group, as `useradd --user-group` and adduser make).
/// Anything that cannot be looked up is not.
pub fn is_private_group(gid: u32, uid: u32) -> bool {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid.as_raw() != gid {
        return false;
    }
    // nix gives names as lossy UTF-8, with U+FFFD for bytes that are not:
    // a name with U+FFFD in it might equal another name that is not the
    // same, so such a user is not told apart and has no private group. A
    // name without one is the name as it is, and equals only itself.
    if user.name.contains(char::REPLACEMENT_CHARACTER) {
        return false;
    }
    let Ok(Some(group)) = Group::from_gid(Gid::from_raw(gid)) else {
        return false;
    };
    group.name == user.name && group.mem.iter().all(|member| *member == user.name)
}

/// The uid of a user given by name or as a number, as
/// `[cache] trusted-owners` lists them.
pub fn owner_uid(owner: &str) -> Result<u32, String> {
    if !owner.is_empty() && owner.bytes().all(|b| b.is_ascii_digit()) {
        return owner
            .parse()
            .map_err(|_| format!("{owner} is not a valid uid"));
    }
    // `User::from_name` would find no user; say what is wrong instead.
    if owner.contains('\0') {
        return Err(format!("{owner:?} is not a user name"));
    }
    match User::from_name(owner) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) | Err(_) => Err(format!(
            "there is no user named {owner:?} on this machine; give a user name or a numeric uid"
        )),
    }
}

/// Open `name` (a single path component) in `dir` for reading, without
/// following a symlink and without blocking on a FIFO, and return it with
/// the metadata of what was opened.
pub fn open_no_follow(dir: &Dir, name: &str) -> io::Result<(File, Metadata)> {
    debug_assert!(!name.contains('/'), "{name}");
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Whether opening failed because the name is a symlink (`O_NOFOLLOW`).
pub fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// The first directory on the way to `dir` (absolute, without symlinks;
/// `dir` included) that someone outside `trust` could change, and why.
/// apptainer opens the image by its path, so every directory on that path
/// must be out of reach of untrusted users for the path to go on naming the
/// file sifr checked.
pub fn unsafe_ancestor(dir: &Path, trust: &Trust) -> Option<Untrusted> {
    let mut at = PathBuf::from("/");
    let components = std::iter::once(None).chain(dir.components().skip(1).map(Some));
    for component in components {
        if let Some(component) = component {
            at.push(component);
        }
        let why = match std::fs::symlink_metadata(&at) {
            Ok(meta) => trust.check_dir(&meta).err(),
            Err(_) => Some(Distrust::NotADirectory),
        };
        if let Some(why) = why {
            return Some(Untrusted { path: at, why });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_named_or_numbered() {
        assert_eq!(owner_uid("0").unwrap(), 0);
        assert_eq!(owner_uid("root").unwrap(), 0);
        assert!(
            owner_uid("no-such-user-sifr")
                .unwrap_err()
                .contains("no user named")
        );
        assert!(
            owner_uid("ro\0ot")
                .unwrap_err()
                .contains("is not a user name")
        );
        assert_eq!(owner_name(0), "root (uid 0)");
    }

    #[test]
    fn only_trusted_files_without_group_or_other_write_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let trust = Trust::new(&[]);
        let check = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            trust.check_file(&std::fs::metadata(&path).unwrap())
        };
        assert_eq!(check(0o644), Ok(()));
        assert_eq!(check(0o444), Ok(()));
        assert!(matches!(check(0o664), Err(Distrust::Writable { .. })));
        assert!(matches!(check(0o646), Err(Distrust::Writable { .. })));
        let meta = std::fs::metadata(&path).unwrap();
        let stranger = Trust {
            me: meta.uid().wrapping_add(1),
            others: vec![],
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            stranger.check_file(&meta),
            Err(Distrust::Owner { uid: meta.uid() })
        );
        let trusting = Trust {
            others: vec![meta.uid()],
            ..stranger
        };
        assert_eq!(trusting.check_file(&meta), Ok(()));
    }

    #[test]
    fn a_group_writable_directory_is_unsafe_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        let trust = Trust::new(&[]);
        let canonical = std::fs::canonicalize(&sub).unwrap();
        assert_eq!(unsafe_ancestor(&canonical, &trust), None);
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o2777)).unwrap();
        let found = unsafe_ancestor(&canonical, &trust).unwrap();
        assert_eq!(found.path, canonical);
        assert!(
            found.to_string().contains("writable by everyone"),
            "{found}"
        );
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o3777)).unwrap();
        assert_eq!(unsafe_ancestor(&canonical, &trust), None);

        // Group write counts unless the group is the owner's private one.
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let meta = std::fs::metadata(&sub).unwrap();
        let private = is_private_group(meta.gid(), meta.uid());
        assert_eq!(trust.check_dir(&meta).is_ok(), private);
    }

    #[test]
    fn a_user_private_group_is_recognised() {
        // root's group is root's own.
        assert!(is_private_group(0, 0));
        // A group that is not the user's primary group is not.
        assert!(!is_private_group(65534, 0));
    }
}
