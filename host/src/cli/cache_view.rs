//! What `sifr cache ls` and `sifr cache du` show people: an aligned table,
//! and totals with what a prune would remove. `--json` is for scripts.

use std::path::Path;

use bytesize::ByteSize;
use sifr::cache::{Cache, Entry, unix_now};
use sifr::report::{self, DuReport, SourceUsage, WouldPrune};

/// The order of `sifr cache ls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// By image name, then oldest first (the index's own order).
    #[default]
    Name,
    /// Largest first.
    Size,
    /// Newest first.
    Age,
}

pub fn sort(entries: &mut [Entry], by: SortBy) {
    match by {
        SortBy::Name => {
            entries.sort_by(|a, b| a.image.cmp(&b.image).then(a.pulled_at.cmp(&b.pulled_at)))
        }
        SortBy::Size => entries.sort_by(|a, b| b.size.cmp(&a.size).then(a.image.cmp(&b.image))),
        SortBy::Age => {
            entries.sort_by(|a, b| b.pulled_at.cmp(&a.pulled_at).then(a.image.cmp(&b.image)))
        }
    }
}

/// `5s ago`, `12m ago`, `3h ago`, `40d ago`.
fn ago(then: u64, now: u64) -> String {
    let secs = now.saturating_sub(then);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// The registry a `docker://` URI pulls from: its first component when it
/// is a host (Docker Hub's are left implicit).
pub fn source_registry(uri: &str) -> String {
    let rest = uri.strip_prefix("docker://").unwrap_or(uri);
    match rest.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// The first 12 hex digits of the SIF digest: enough to tell files apart
/// and to give `sifr cache rm`.
fn short_digest(entry: &Entry) -> &str {
    &entry.sif_digest.hex()[..12]
}

/// When the SIF file was last read, as its atime says: apptainer reads it
/// on every run. With `relatime` (the Linux default) that is to within a
/// day; on a `noatime` mount it stays at the pull.
fn last_used(cache: &Cache, entry: &Entry) -> Option<u64> {
    let accessed = std::fs::metadata(cache.blob_path(entry))
        .and_then(|m| m.accessed())
        .ok()?;
    accessed
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Rows of cells, each column as wide as its widest cell; numbers right-aligned.
fn aligned(rows: &[Vec<String>], right: &[bool]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            if right[c] {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if c + 1 < columns {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The table of `sifr cache ls`: image, size, age, last used, the registry
/// it was pulled from (the mirror, when one served it) and the SIF digest.
pub fn table(cache: &Cache, entries: &[Entry]) -> String {
    let now = unix_now();
    let mut rows = vec![
        ["IMAGE", "SIZE", "AGE", "LAST USED", "SOURCE", "SIF"]
            .map(String::from)
            .to_vec(),
    ];
    for entry in entries {
        rows.push(vec![
            entry.image.clone(),
            ByteSize(entry.size).to_string(),
            ago(entry.pulled_at, now),
            last_used(cache, entry).map_or_else(|| "?".to_string(), |t| ago(t, now)),
            source_registry(&entry.source_uri),
            short_digest(entry).to_string(),
        ]);
    }
    aligned(&rows, &[false, true, true, true, false, false])
}

/// Bytes of the regular files directly in `dir` (0 when it is missing).
fn bytes_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|items| {
            items
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `sifr cache du`: totals, by source registry, what is on disk besides
/// the images (orphaned blobs, leftovers of killed pulls, which `prune`
/// removes), and, given a size, what `prune --max-size` would remove.
pub fn du(
    cache: &Cache,
    entries: &[Entry],
    would_remove: Option<(u64, &[Entry])>,
    json: bool,
) -> String {
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let on_disk =
        bytes_in(&cache.root().join("blobs/sha256")) + bytes_in(&cache.root().join("tmp"));
    let mut by_source: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for entry in entries {
        let slot = by_source
            .entry(source_registry(&entry.source_uri))
            .or_default();
        slot.0 += 1;
        slot.1 += entry.size;
    }
    if json {
        let report = DuReport {
            schema: report::SCHEMA,
            cache: cache.root().to_path_buf(),
            images: entries.len(),
            size: total,
            on_disk,
            by_source: by_source
                .iter()
                .map(|(registry, (images, size))| SourceUsage {
                    registry: registry.clone(),
                    images: *images,
                    size: *size,
                })
                .collect(),
            prune_max_size: would_remove.map(|(max, removed)| WouldPrune {
                max_size: max,
                would_remove: removed.to_vec(),
                would_free: removed.iter().map(|e| e.size).sum(),
            }),
        };
        return serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    }
    let mut out = format!(
        "{} images, {} in {}\n",
        entries.len(),
        ByteSize(total),
        cache.root().display()
    );
    if on_disk > total {
        out.push_str(&format!(
            "{} on disk: {} more in orphaned blobs and unfinished pulls (`sifr cache prune` removes them)\n",
            ByteSize(on_disk),
            ByteSize(on_disk - total)
        ));
    }
    if !by_source.is_empty() {
        let mut rows = vec![["SOURCE", "IMAGES", "SIZE"].map(String::from).to_vec()];
        for (registry, (images, size)) in &by_source {
            rows.push(vec![
                registry.clone(),
                images.to_string(),
                ByteSize(*size).to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&aligned(&rows, &[false, true, true]));
    }
    if let Some((max, removed)) = would_remove {
        let freed: u64 = removed.iter().map(|e| e.size).sum();
        out.push('\n');
        if removed.is_empty() {
            out.push_str(&format!(
                "`sifr cache prune --max-size {}` would remove nothing: the cache fits\n",
                ByteSize(max)
            ));
        } else {
            out.push_str(&format!(
                "`sifr cache prune --max-size {}` would remove {} images (oldest first), {}, leaving {}:\n",
                ByteSize(max),
                removed.len(),
                ByteSize(freed),
                ByteSize(total.saturating_sub(freed))
            ));
            out.push_str(&table(cache, removed));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_the_registry_of_the_uri_pulled() {
        for (uri, registry) in [
            ("docker://ubuntu:22.04", "docker.io"),
            ("docker://ncbi/blast:2.14.0", "docker.io"),
            (
                "docker://harbor.example.org/hub/library/ubuntu:22.04",
                "harbor.example.org",
            ),
            ("docker://localhost:5000/x/y:1", "localhost:5000"),
            ("docker://localhost/x:1", "localhost"),
        ] {
            assert_eq!(source_registry(uri), registry, "{uri}");
        }
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(ago(100, 105), "5s ago");
        assert_eq!(ago(0, 3599), "59m ago");
        assert_eq!(ago(0, 7200), "2h ago");
        assert_eq!(ago(0, 86400 * 40), "40d ago");
        assert_eq!(ago(10, 5), "0s ago");
    }

    #[test]
    fn columns_line_up_and_numbers_align_right() {
        let rows = vec![
            vec!["A".to_string(), "1".to_string(), "x".to_string()],
            vec!["long name".to_string(), "100".to_string(), "y".to_string()],
        ];
        assert_eq!(
            aligned(&rows, &[false, true, false]),
            "A            1  x\nlong name  100  y\n"
        );
    }
}
