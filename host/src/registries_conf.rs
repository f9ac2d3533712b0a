//! The system's containers-registries.conf(5), found where containers/image
//! finds it, for `settings-files = { conf = "system" }`.
//!
//! Plugins have no filesystem, so the host reads the files and hands the
//! `registries` plugin their texts: the setting `conf` is the main file
//! (`""` when the system has none, which containers/image treats as an
//! empty file), and `conf-drop-ins` lists the drop-ins in the order
//! containers/image merges them, each as `{ path, text }`. The plugin
//! merges them by containers/image's rules.
//!
//! Only the system's files are read: containers/image also reads
//! `~/.config/containers/registries.conf` (instead of the system file) and
//! `~/.config/containers/registries.conf.d` for a non-root user, but a
//! site's policy must not be replaced by a file in each user's home. A user
//! who wants their own names it by path.

use std::path::{Path, PathBuf};

/// The value of a `settings-files` entry that means "the system's".
pub const SYSTEM: &str = "system";

/// The main file, under the root.
pub const REGISTRIES_CONF: &str = "etc/containers/registries.conf";

/// The drop-in directory, under the root.
pub const REGISTRIES_CONF_D: &str = "etc/containers/registries.conf.d";

/// The files `settings-files = { KEY = "system" }` stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemFiles {
    /// The main file, and its text (`""` when it does not exist).
    pub main: (PathBuf, String),
    /// `registries.conf.d/*.conf`, in lexical order, with their texts.
    pub drop_ins: Vec<(PathBuf, String)>,
}

/// Read the system's registries.conf and drop-ins under `root` (`/` but in
/// tests and chroots, as containers/image's `RootForImplicitAbsolutePaths`).
///
/// As `tryUpdatingCache` and `dropInConfigs`: a missing main file is an
/// empty one, a missing directory has no drop-ins; the drop-ins are the
/// directory's entries that are not directories and whose names end in
/// `.conf` (subdirectories are not entered), sorted by name. `read` reads
/// one file (the host caps its size).
pub fn read_system(
    root: &Path,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<SystemFiles, String> {
    let main_path = root.join(REGISTRIES_CONF);
    let main = match read(&main_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", main_path.display())),
    };
    let dir = root.join(REGISTRIES_CONF_D);
    let mut names = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let name = entry.file_name();
                if !is_dir && name.to_string_lossy().ends_with(".conf") {
                    names.push(name);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    }
    // Go's filepath.WalkDir visits a directory's entries sorted by name,
    // byte by byte.
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    let mut drop_ins = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        match read(&path) {
            Ok(text) => drop_ins.push((path, text)),
            // Removed since the listing: containers/image skips it too.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    Ok(SystemFiles {
        main: (main_path, main),
        drop_ins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_are_the_conf_files_in_lexical_order_and_nothing_is_required() {
        let root = tempfile::tempdir().unwrap();
        let none = read_system(root.path(), |p| std::fs::read_to_string(p)).unwrap();
        assert_eq!(none.main.1, "");
        assert!(none.drop_ins.is_empty());

        let d = root.path().join(REGISTRIES_CONF_D);
        std::fs::create_dir_all(d.join("sub.conf")).unwrap();
        for name in [
            "10-b.conf",
            "000-shortnames.conf",
            "2-a.conf",
            "notes.txt",
            "x.conf.bak",
        ] {
            std::fs::write(d.join(name), name).unwrap();
        }
        std::fs::write(root.path().join(REGISTRIES_CONF), "main").unwrap();
        let files = read_system(root.path(), |p| std::fs::read_to_string(p)).unwrap();
        assert_eq!(files.main.1, "main");
        let names: Vec<String> = files.drop_ins.iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(names, ["000-shortnames.conf", "10-b.conf", "2-a.conf"]);
    }
}
