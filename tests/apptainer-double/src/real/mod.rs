//! The real backend (`APPTAINER_DOUBLE_BACKEND=real`).
//!
//! Still a TEST DOUBLE, not apptainer: it stands in for apptainer where
//! apptainer is not installed, out of the closest real parts Debian has.
//! Its SIF files are real, and what runs, runs in the image's own root
//! filesystem:
//!
//! * `pull` fetches the image from its registry with `skopeo copy` into an
//!   OCI layout, unpacks it with `umoci unpack`, adds the runscript
//!   apptainer would add, squashes the root filesystem with `mksquashfs`
//!   and writes a SIF with `siftool`: a definition file and the squashfs as
//!   the primary system partition, as apptainer lays out a pulled image.
//! * `run` and `exec` find that partition with `siftool list`, take it out
//!   with `siftool dump`, unpack it with `unsquashfs` into a scratch
//!   directory and run the command there with bubblewrap (`bwrap`), the
//!   root read-only.
//!
//! Its command line is the fake backend's: the same parsing, the same
//! checks before any work, the same messages and exit codes for them, and
//! the same argv log. What it does not do that apptainer does: no cache
//! (every pull fetches), no signature checks, no overlays, instances or
//! sandboxes; the image's `ENV` is not applied; the container gets a fresh
//! `/tmp` and `/dev` and no home directory, as with `--contain`; and the
//! runscript passes arguments on without `eval` (apptainer's `--no-eval`).

mod action;
mod oci;
mod pull;
mod sif;
mod signals;
mod tool;
mod workdir;

#[cfg(test)]
mod test_support;

pub use action::run;
pub use pull::pull;

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::process::Command;

    use super::test_support::{DEFAULT_OUTPUT, SIF_TOOLS, busybox_layout, require_tools, run_ok};
    use super::workdir::WorkDir;
    use super::*;
    use crate::action::{SIF_LAUNCH, SIF_LAUNCH_LEN, SIF_MAGIC};
    use crate::cli::{ActionArgs, ActionKind, ActionOptions};

    /// An OCI layout becomes a real SIF, whose primary partition `run` and
    /// `exec` unpack and run in bubblewrap, passing the exit code through
    /// and leaving no scratch files.
    #[test]
    #[cfg_attr(
        not(sifr_e2e),
        ignore = "needs skopeo umoci squashfs-tools siftool bubblewrap busybox-static docker-registry, or SIFR_E2E=1"
    )]
    fn a_layout_becomes_a_sif_that_runs() {
        require_tools(SIF_TOOLS);
        let work = WorkDir::new(None).unwrap();
        let layout = busybox_layout(work.path(), "1");
        let scratch = work.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        let sif = work.path().join("busybox.sif");
        pull::layout_to_sif(&layout, "1", "example.test/busybox:1", &sif, &scratch).unwrap();

        let bytes = fs::read(&sif).unwrap();
        assert!(bytes.starts_with(SIF_LAUNCH), "apptainer's launch script");
        assert_eq!(
            &bytes[SIF_LAUNCH_LEN..SIF_LAUNCH_LEN + SIF_MAGIC.len()],
            SIF_MAGIC
        );
        let listing = run_ok(Command::new("siftool").arg("list").arg(&sif));
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains("Def.FILE"), "{listing}");
        assert!(listing.contains("FS (Squashfs/*System/"), "{listing}");
        assert_eq!(sif::primary_partition(&sif), Ok(2), "{listing}");
        let deffile = run_ok(Command::new("siftool").args(["dump", "1"]).arg(&sif));
        assert_eq!(
            deffile.stdout,
            b"bootstrap: docker\nfrom: example.test/busybox:1\n"
        );

        // Run in-process, the output going to a bound host directory.
        let out = work.path().join("out");
        let tmp = work.path().join("tmp");
        fs::create_dir(&out).unwrap();
        fs::create_dir(&tmp).unwrap();
        let launch = |kind: ActionKind, command: &[&str]| {
            let args = ActionArgs {
                kind,
                options: ActionOptions {
                    clean_env: true,
                    binds: vec![format!("{}:/out", out.display())],
                    ..ActionOptions::default()
                },
                image: sif.display().to_string(),
                command: command.iter().map(|s| (*s).to_owned()).collect(),
            };
            let checked = crate::action::check(&args).unwrap();
            action::launch(&args, &checked, Some(&tmp)).unwrap()
        };
        let status = launch(
            ActionKind::Exec,
            &[
                "sh",
                "-c",
                "echo hi > /out/exec; echo $APPTAINER_NAME >> /out/exec; exit 3",
            ],
        );
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            fs::read_to_string(out.join("exec")).unwrap(),
            "hi\nbusybox.sif\n"
        );
        // With arguments the runscript runs them (the image has no ENTRYPOINT).
        let status = launch(
            ActionKind::Run,
            &["sh", "-c", "touch /ro 2>/dev/null; echo $? > /out/run"],
        );
        assert_eq!(status.code(), Some(0));
        assert_eq!(
            fs::read_to_string(out.join("run")).unwrap(),
            "1\n",
            "the root is read-only"
        );
        // The runscript pull added, from the image's CMD.
        let status = launch(
            ActionKind::Exec,
            &["sh", "-c", "cat /.singularity.d/runscript > /out/runscript"],
        );
        assert_eq!(status.code(), Some(0));
        let runscript = fs::read_to_string(out.join("runscript")).unwrap();
        assert!(runscript.contains(DEFAULT_OUTPUT), "{runscript}");
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            0,
            "scratch files are removed"
        );
        assert!(!Path::new(&out.join("ro")).exists());
    }
}
