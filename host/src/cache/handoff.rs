//! Handing apptainer the file that was verified.
//!
//! sifr checks a blob on an open descriptor (owner, mode, stamp or hash),
//! but apptainer takes a path and opens it itself, later. In a cache that
//! others can write, that path could name another file by then: a co-user
//! renames their own file over the blob between the check and apptainer's
//! open.
//!
//! Passing `/proc/self/fd/N` (a descriptor apptainer inherits) does not
//! close that gap: apptainer's `image.Init` resolves the path with
//! `filepath.EvalSymlinks`, which reads the magic link back into the file's
//! *path*, and then opens that path again. So apptainer gets a path that
//! nobody outside your trust can change:
//!
//! 1. the blob's own path, when no directory on it can be written by anyone
//!    but you, root and your trusted owners (or is sticky): a cache of your
//!    own, or a shared cache set up as README's "Sharing a cache" says;
//! 2. else a hard link to the verified inode (made through the descriptor,
//!    `linkat` of `/proc/self/fd/N` with `AT_SYMLINK_FOLLOW`, so it is the
//!    checked file whatever the blob path names by then) in `run/<uid>/`, a
//!    directory only you can write, whose path is checked the same way; it
//!    is removed when the run ends;
//! 3. else nothing: sifr refuses, naming the directory to fix.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, Mode};

use super::trust::{Distrust, Trust, Untrusted, unsafe_ancestor};

/// A blob that passed the trust checks, held open so that what runs is
/// what was checked.
#[derive(Debug, Clone)]
pub struct VerifiedBlob {
    pub(crate) file: Arc<File>,
    /// Inside the cache: `blobs/sha256/<hex>.sif`.
    pub(crate) name: String,
}

impl VerifiedBlob {
    /// The checked file, open: read it through this, not by its path,
    /// which someone may have pointed at another file since.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn dev_ino(&self) -> io::Result<(u64, u64)> {
        let meta = self.file.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }
}

/// A path for apptainer naming a verified blob. A private link is removed
/// when this is dropped.
#[derive(Debug)]
pub struct RunnableSif {
    path: PathBuf,
    link: Option<(Dir, String)>,
}

impl RunnableSif {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a private link (see [`crate::cache::Cache::restamp_after_link`]).
    pub fn is_link(&self) -> bool {
        self.link.is_some()
    }
}

impl Drop for RunnableSif {
    fn drop(&mut self) {
        if let Some((dir, name)) = &self.link {
            let _ = dir.remove_file(name);
        }
    }
}

/// Where private links go, per user, inside the cache.
const RUN_DIR: &str = "run";

/// See the module docs.
pub(crate) fn runnable(
    root: &Path,
    dir: &Dir,
    trust: &Trust,
    blob: &VerifiedBlob,
) -> io::Result<RunnableSif> {
    let root = std::fs::canonicalize(root)?;
    let expected = blob.dev_ino()?;
    let path = root.join(&blob.name);
    let blob_dir = path.parent().unwrap_or(&root).to_path_buf();
    let direct = match unsafe_ancestor(&blob_dir, trust) {
        None => {
            // Nobody untrusted can change the path; it must also still name
            // the checked file (its owner may have replaced it since).
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if (meta.dev(), meta.ino()) == expected => {
                    return Ok(RunnableSif { path, link: None });
                }
                _ => None,
            }
        }
        Some(unsafe_dir) => Some(unsafe_dir),
    };
    match private_link(&root, dir, trust, blob, expected) {
        Ok(sif) => Ok(sif),
        Err(why) => Err(refusal(&path, direct.as_ref(), &why)),
    }
}

/// Why no private link could be made.
enum LinkProblem {
    Unsafe(Untrusted),
    Io(PathBuf, io::Error),
}

fn private_link(
    root: &Path,
    dir: &Dir,
    trust: &Trust,
    blob: &VerifiedBlob,
    expected: (u64, u64),
) -> Result<RunnableSif, LinkProblem> {
    let uid = trust.me().to_string();
    let private = root.join(RUN_DIR).join(&uid);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: io::Error| LinkProblem::Io(path, e)
    };
    let run = root.join(RUN_DIR);
    match dir.create_dir(RUN_DIR) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&run)(e)),
        _ => {}
    }
    let run_dir = dir.open_dir_nofollow(RUN_DIR).map_err(io_err(&run))?;
    match rustix::fs::mkdirat(&run_dir, uid.as_str(), Mode::from_raw_mode(0o700)) {
        Err(e) if e != rustix::io::Errno::EXIST => return Err(io_err(&private)(e.into())),
        _ => {}
    }
    let user_dir = run_dir.open_dir_nofollow(&uid).map_err(io_err(&private))?;
    // Only you may write it: a link there is out of everyone else's reach.
    let stat = rustix::fs::fstat(&user_dir).map_err(|e| io_err(&private)(e.into()))?;
    let mode = stat.st_mode & 0o7777;
    let why = if stat.st_uid != trust.me() {
        Some(Distrust::Owner { uid: stat.st_uid })
    } else if mode & 0o022 != 0 {
        Some(Distrust::Writable {
            uid: stat.st_uid,
            mode,
        })
    } else {
        None
    };
    if let Some(why) = why {
        return Err(LinkProblem::Unsafe(Untrusted { path: private, why }));
    }
    if let Some(unsafe_dir) = unsafe_ancestor(&private, trust) {
        return Err(LinkProblem::Unsafe(unsafe_dir));
    }
    let hex = blob
        .name
        .rsplit('/')
        .next()
        .and_then(|n| n.strip_suffix(".sif"))
        .unwrap_or("blob");
    let host = host_name();
    remove_stale_links(&user_dir, &host);
    let name = format!(
        "{hex}-{host}-{}-{}.sif",
        std::process::id(),
        super::next_seq()
    );
    // Link the inode behind the descriptor, not whatever the blob path
    // names now.
    let by_fd = format!("/proc/self/fd/{}", blob.file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        by_fd.as_str(),
        &user_dir,
        name.as_str(),
        AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(|e| io_err(&private)(e.into()))?;
    let sif = RunnableSif {
        path: private.join(&name),
        link: Some((user_dir, name)),
    };
    let linked = std::fs::symlink_metadata(&sif.path).map_err(io_err(&sif.path))?;
    if (linked.dev(), linked.ino()) != expected {
        return Err(LinkProblem::Io(
            sif.path.clone(),
            io::Error::other("the link does not name the checked file"),
        ));
    }
    Ok(sif)
}

/// This machine's name, as links in `run/<uid>/` carry it: on a cache
/// shared between nodes, only links of this node's processes can be judged
/// stale here.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]);
    if rc != 0 || name.is_empty() {
        return "localhost".to_string();
    }
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Remove the links this machine's processes left when they died before
/// removing them (`<hex>-<host>-<pid>-<n>.sif` whose pid is gone).
fn remove_stale_links(user_dir: &Dir, host: &str) {
    let Ok(entries) = user_dir.entries() else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_suffix(".sif")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(_, rest)| rest.strip_prefix(host))
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = user_dir.remove_file(&name);
        }
    }
}

trait DirExt {
    fn open_dir_nofollow(&self, name: &str) -> io::Result<Dir>;
}

impl DirExt for Dir {
    fn open_dir_nofollow(&self, name: &str) -> io::Result<Dir> {
        use rustix::fs::OFlags;
        let fd = rustix::fs::openat(
            self,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir::from_std_file(File::from(fd)))
    }
}

fn refusal(blob: &Path, direct: Option<&Untrusted>, link: &LinkProblem) -> io::Error {
    let direct = match direct {
        Some(dir) => format!(
            "{} can be changed by others ({}), so the SIF could be swapped after sifr checked it",
            dir.path.display(),
            dir.why
        ),
        None => format!("{} changed after sifr checked it", blob.display()),
    };
    let link = match link {
        LinkProblem::Unsafe(dir) => format!("{} ({})", dir.path.display(), dir.why),
        LinkProblem::Io(path, e) => format!("{}: {e}", path.display()),
    };
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "cannot hand apptainer the checked SIF {} safely: {direct}, and no private link \
             could be made in {link}. Ask the cache's admin to set it up as \"Sharing a cache\" \
             in sifr's README says (sticky, root-owned directories), or use a cache of your own",
            blob.display()
        ),
    )
}
