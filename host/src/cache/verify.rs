//! `cache verify`: re-hash every blob against its record.

use std::io;
use std::path::PathBuf;

use serde::Serialize;

use super::{Cache, Entry, HashProgress, sha256_file};

/// A problem found by [`Cache::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct BadEntry {
    pub image: String,
    pub path: PathBuf,
    pub problem: String,
}

impl Cache {
    /// Re-hash every blob. Returns the entries that are missing or corrupt.
    pub fn verify(&self, progress: &mut dyn HashProgress) -> io::Result<Vec<BadEntry>> {
        let mut bad = Vec::new();
        for (key, entry) in self.entries()? {
            let name = entry.blob_name();
            let path = self.root.join(&name);
            let problem = match self.dir.open(&name) {
                Ok(file) => {
                    let file = file.into_std();
                    let size = file.metadata()?.len();
                    let actual = sha256_file(file, size, progress)?;
                    if actual == entry.sif_digest.hex() {
                        if self.stamp(&name)? != entry.stamp {
                            self.write_entry(
                                &key,
                                &Entry {
                                    stamp: self.stamp(&name)?,
                                    ..entry.clone()
                                },
                            )?;
                        }
                        continue;
                    }
                    format!(
                        "content changed: expected {}, found sha256:{actual}",
                        entry.sif_digest
                    )
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    "the SIF file is missing".to_string()
                }
                Err(e) => return Err(e),
            };
            bad.push(BadEntry {
                image: entry.image.clone(),
                path,
                problem,
            });
        }
        Ok(bad)
    }
}
