//! Real SIF files, through `siftool`: written as apptainer lays out a
//! pulled image, and read back to find the root filesystem.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use super::tool::SIFTOOL;
use crate::action::{SIF_LAUNCH, SIF_LAUNCH_LEN};

/// `siftool add --datatype` values.
const DATATYPE_DEFFILE: &str = "1";
const DATATYPE_PARTITION: &str = "4";
/// `--parttype` of the primary system partition: the root filesystem
/// apptainer runs.
const PARTTYPE_PRIMARY_SYSTEM: &str = "2";
/// `--partfs` for squashfs.
const PARTFS_SQUASHFS: &str = "1";
/// The object group apptainer puts an image's objects in.
const GROUP: &str = "1";

/// The SIF architecture code (`siftool add --partarch`) of a GOARCH name.
pub fn arch_code(goarch: &str) -> Option<u8> {
    let code = match goarch {
        "386" => 1,
        "amd64" => 2,
        "arm" => 3,
        "arm64" => 4,
        "ppc64" => 5,
        "ppc64le" => 6,
        "mips" => 7,
        "mipsle" => 8,
        "mips64" => 9,
        "mips64le" => 10,
        "s390x" => 11,
        "riscv64" => 12,
        _ => return None,
    };
    Some(code)
}

/// This machine's architecture as Go (and so OCI) names it.
pub fn host_goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "386",
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// Write a SIF at `sif` as apptainer writes one for a pulled image: a
/// definition file (`deffile`) and the root filesystem (`squashfs`) as the
/// primary system partition, both in object group 1.
pub fn create(sif: &Path, deffile: &Path, squashfs: &Path, goarch: &str) -> Result<(), String> {
    let arch = arch_code(goarch)
        .ok_or_else(|| format!("SIF has no code for the architecture {goarch:?}"))?
        .to_string();
    SIFTOOL.run([OsStr::new("new"), sif.as_os_str()])?;
    write_launch_script(sif)
        .map_err(|err| format!("cannot write the launch script of {}: {err}", sif.display()))?;
    let add = |options: &[&str], object: &Path| {
        SIFTOOL
            .run(
                [OsStr::new("add")]
                    .into_iter()
                    .chain(options.iter().map(OsStr::new))
                    .chain(["--groupid", GROUP].map(OsStr::new))
                    .chain([sif.as_os_str(), object.as_os_str()]),
            )
            .map(drop)
    };
    add(&["--datatype", DATATYPE_DEFFILE], deffile)?;
    add(
        &[
            "--datatype",
            DATATYPE_PARTITION,
            "--parttype",
            PARTTYPE_PRIMARY_SYSTEM,
            "--partfs",
            PARTFS_SQUASHFS,
            "--partarch",
            &arch,
        ],
        squashfs,
    )?;
    Ok(())
}

/// `siftool new` leaves the launch script field empty; apptainer's SIFs
/// start with `#!/usr/bin/env run-singularity`, which makes them
/// executable. The field is the first bytes of the file.
fn write_launch_script(sif: &Path) -> std::io::Result<()> {
    let mut field = SIF_LAUNCH.to_vec();
    field.resize(SIF_LAUNCH_LEN, 0);
    let mut file = OpenOptions::new().write(true).open(sif)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&field)
}

/// The object id of the SIF's primary system partition, from `siftool list`.
pub fn primary_partition(sif: &Path) -> Result<u32, String> {
    let listing = SIFTOOL.run([OsStr::new("list"), sif.as_os_str()])?;
    parse_primary_partition(&String::from_utf8_lossy(&listing))
}

/// Write the data of object `id` of the SIF to `to`.
pub fn dump(sif: &Path, id: u32, to: &Path) -> Result<(), String> {
    let file = File::create(to).map_err(|err| format!("cannot create {}: {err}", to.display()))?;
    let mut command = SIFTOOL.command();
    command
        .arg("dump")
        .arg(id.to_string())
        .arg(sif)
        .stdout(file);
    SIFTOOL.run_command(&mut command)?;
    Ok(())
}

/// Find the primary system partition in `siftool list` output:
///
/// ```text
/// ID   |GROUP   |LINK    |SIF POSITION (start-end)  |TYPE
/// 1    |1       |NONE    |32176-32208               |Def.FILE
/// 2    |1       |NONE    |36864-1073152             |FS (Squashfs/*System/amd64)
/// ```
///
/// siftool marks the primary system partition `*System`. Only squashfs is
/// supported, as the double unpacks it with `unsquashfs`.
pub fn parse_primary_partition(listing: &str) -> Result<u32, String> {
    for line in listing.lines() {
        let columns: Vec<&str> = line.split('|').map(str::trim).collect();
        let [id, _group, _link, _position, kind] = columns.as_slice() else {
            continue;
        };
        let Ok(id) = id.parse::<u32>() else {
            continue;
        };
        let Some(partition) = kind
            .strip_prefix("FS (")
            .and_then(|rest| rest.strip_suffix(')'))
        else {
            continue;
        };
        let mut fields = partition.split('/');
        let (filesystem, parttype) = (fields.next(), fields.next());
        if parttype != Some("*System") {
            continue;
        }
        return match filesystem {
            Some("Squashfs") => Ok(id),
            other => Err(format!(
                "apptainer test double (real backend): the primary partition is {}, \
                 and only squashfs is supported",
                other.unwrap_or("of no known filesystem")
            )),
        };
    }
    Err("no primary system partition found".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "\
------------------------------------------------------------------------------
ID   |GROUP   |LINK    |SIF POSITION (start-end)  |TYPE
------------------------------------------------------------------------------
";

    #[test]
    fn finds_the_primary_partition_among_other_objects() {
        let listing = format!(
            "{HEADER}\
             1    |1       |NONE    |32176-32208               |Def.FILE\n\
             2    |1       |NONE    |32208-35223               |JSON.Generic\n\
             3    |NONE    |NONE    |36864-40960               |FS (Squashfs/System/amd64)\n\
             4    |1       |NONE    |40960-3055616             |FS (Squashfs/*System/amd64)\n"
        );
        assert_eq!(parse_primary_partition(&listing), Ok(4));
    }

    #[test]
    fn no_primary_partition() {
        let listing =
            format!("{HEADER}1    |1       |NONE    |32176-32208               |Def.FILE\n");
        assert_eq!(
            parse_primary_partition(&listing),
            Err("no primary system partition found".into())
        );
        assert!(parse_primary_partition("").is_err());
    }

    #[test]
    fn only_squashfs_partitions_run() {
        let listing = format!(
            "{HEADER}1    |1       |NONE    |4096-8192                 |FS (Ext3/*System/amd64)\n"
        );
        let err = parse_primary_partition(&listing).unwrap_err();
        assert!(
            err.contains("Ext3") && err.contains("only squashfs"),
            "{err}"
        );
    }

    #[test]
    fn architectures() {
        assert_eq!(arch_code("amd64"), Some(2));
        assert_eq!(arch_code("arm64"), Some(4));
        assert_eq!(arch_code("riscv64"), Some(12));
        assert_eq!(arch_code("wasm"), None);
        assert!(arch_code(host_goarch()).is_some(), "{}", host_goarch());
    }
}
