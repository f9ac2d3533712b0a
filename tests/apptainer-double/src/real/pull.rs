//! `pull` in the real backend: fetch the image from its registry with
//! skopeo into an OCI layout, unpack it with umoci, add apptainer's
//! runscript, squash it with mksquashfs and wrap it in a SIF with siftool.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::oci::{self, ImageConfig};
use super::sif;
use super::signals;
use super::tool::{MKSQUASHFS, SKOPEO, UMOCI};
use super::workdir::{PendingFile, WorkDir};
use crate::cli::{PullArgs, PullOptions};
use crate::controls::{BACKEND_VAR, Controls, wait_for_release};
use crate::failure::Failure;
use crate::pull::{check_access, check_destination_and_transport, info};

/// The tag the fetched image gets in the scratch OCI layout.
const LAYOUT_TAG: &str = "img";
/// The credentials apptainer takes for `docker://` registries.
const USERNAME_VAR: &str = "APPTAINER_DOCKER_USERNAME";
const PASSWORD_VAR: &str = "APPTAINER_DOCKER_PASSWORD";

pub fn pull(args: &PullArgs, controls: &Controls) -> Result<(), Failure> {
    if let Some(name) = controls.fake_pull_controls.first() {
        return Err(Failure::fatal(format!(
            "apptainer test double: {name} only shapes the fake backend's pulls; \
             unset it, or unset {BACKEND_VAR}"
        )));
    }
    check_destination_and_transport(args)?;
    info("Converting OCI blobs to SIF format");
    info(&format!(
        "(apptainer test double, real backend) pulling {}",
        args.uri
    ));
    check_access(&args.uri, controls)?;
    if let Some(hold) = &controls.hold {
        wait_for_release(hold);
    }
    signals::install();
    // Everything scratch is gone once this returns, so a signal that cut the
    // pull short can now end the process.
    let result = fetch_and_build(args, controls);
    if let Some(signal) = signals::received() {
        signals::die_of(signal);
    }
    result.map_err(|err| Failure::fatal(format!("While making image from oci registry: {err}")))
}

fn fetch_and_build(args: &PullArgs, controls: &Controls) -> Result<(), String> {
    let work = WorkDir::new(controls.tmpdir.as_deref()).map_err(|err| err.to_string())?;
    let layout = work.path().join("layout");
    // skopeo's `oci:PATH:TAG` and umoci's `--image PATH:TAG` cannot quote a
    // colon in PATH.
    if layout.as_os_str().as_encoded_bytes().contains(&b':') {
        return Err(format!(
            "apptainer test double (real backend): the scratch directory {} has a ':' in its \
             path, which skopeo and umoci cannot take; set APPTAINER_DOUBLE_TMPDIR",
            work.path().display()
        ));
    }
    // The transport was checked: the URI is `docker://REFERENCE`.
    let reference = args.uri.strip_prefix("docker://").unwrap_or(&args.uri);
    info("Starting build...");
    info("Fetching OCI image...");
    let credentials =
        std::env::var(USERNAME_VAR)
            .ok()
            .map(|user| match std::env::var(PASSWORD_VAR) {
                Ok(password) => format!("{user}:{password}"),
                Err(_) => user,
            });
    let fetch = Fetch {
        options: &args.options,
        reference,
        cert_dir: controls.cert_dir.as_deref(),
        credentials: credentials.as_deref(),
        work: work.path(),
        layout: &layout,
    };
    SKOPEO
        .run(fetch.skopeo_args())
        .map_err(|err| format!("error fetching image to cache: {err}"))?;

    let out = PendingFile::new(Path::new(&args.out));
    let scratch = work.path().join("build");
    fs::create_dir(&scratch).map_err(|err| format!("{}: {err}", scratch.display()))?;
    layout_to_sif(&layout, LAYOUT_TAG, reference, out.path(), &scratch)?;
    out.persist()
        .map_err(|err| format!("while building SIF: {}: {err}", args.out))
}

/// What `skopeo copy` needs to fetch an image into an OCI layout.
struct Fetch<'a> {
    options: &'a PullOptions,
    /// `HOST[:PORT]/REPO(:TAG|@DIGEST)`, or a Docker Hub short name.
    reference: &'a str,
    cert_dir: Option<&'a Path>,
    /// `USER[:PASSWORD]`.
    credentials: Option<&'a str>,
    work: &'a Path,
    layout: &'a Path,
}

impl Fetch<'_> {
    fn skopeo_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&OsStr]| args.extend(items.iter().map(|item| item.to_os_string()));
        // No policy file can be counted on (`/etc/containers/policy.json`),
        // and apptainer checks no signatures on a pull either.
        push(&[
            "--insecure-policy".as_ref(),
            "--tmpdir".as_ref(),
            self.work.as_os_str(),
        ]);
        if let Some(arch) = &self.options.arch {
            push(&["--override-arch".as_ref(), arch.as_ref()]);
        }
        push(&["copy".as_ref(), "--quiet".as_ref()]);
        if self.options.no_https {
            push(&["--src-tls-verify=false".as_ref()]);
        }
        if let Some(dir) = self.cert_dir {
            push(&["--src-cert-dir".as_ref(), dir.as_os_str()]);
        }
        if let Some(credentials) = self.credentials {
            push(&["--src-creds".as_ref(), credentials.as_ref()]);
        }
        let mut destination = OsString::from("oci:");
        destination.push(self.layout);
        destination.push(format!(":{LAYOUT_TAG}"));
        push(&[
            format!("docker://{}", self.reference).as_ref(),
            &destination,
        ]);
        args
    }
}

/// Build a SIF at `sif` from the image tagged `tag` in the OCI layout at
/// `layout`, as apptainer builds one from a pulled image: the root
/// filesystem with apptainer's runscript added, squashed, as the SIF's
/// primary partition, and a definition file naming `source`. `scratch` is
/// an empty directory to work in.
pub fn layout_to_sif(
    layout: &Path,
    tag: &str,
    source: &str,
    sif: &Path,
    scratch: &Path,
) -> Result<(), String> {
    let config = oci::read_image_config(layout, tag)?;
    let goarch = config
        .architecture
        .clone()
        .unwrap_or_else(|| sif::host_goarch().to_owned());

    info("Extracting OCI image...");
    let bundle = scratch.join("bundle");
    let mut image = layout.as_os_str().to_owned();
    image.push(format!(":{tag}"));
    let mut unpack: Vec<&OsStr> = vec!["unpack".as_ref()];
    if !is_root() {
        unpack.push("--rootless".as_ref());
    }
    unpack.extend([OsStr::new("--image"), &image, bundle.as_os_str()]);
    UMOCI.run(unpack)?;

    info("Inserting Apptainer configuration...");
    let rootfs = bundle.join("rootfs");
    write_runscript(&rootfs, &config)
        .map_err(|err| format!("while inserting the runscript: {err}"))?;

    info("Creating SIF file...");
    let squashfs = scratch.join("rootfs.squashfs");
    MKSQUASHFS.run([
        rootfs.as_os_str(),
        squashfs.as_os_str(),
        "-noappend".as_ref(),
        "-comp".as_ref(),
        "gzip".as_ref(),
        "-quiet".as_ref(),
        "-no-progress".as_ref(),
    ])?;
    let deffile = scratch.join("Singularity");
    fs::write(&deffile, format!("bootstrap: docker\nfrom: {source}\n"))
        .map_err(|err| format!("{}: {err}", deffile.display()))?;
    sif::create(sif, &deffile, &squashfs, &goarch)
}

/// Put apptainer's runscript for `config` at `/.singularity.d/runscript` in
/// `rootfs`, replacing whatever the image had there. Nothing is written
/// through a symlink the image holds, which could point out of `rootfs`.
fn write_runscript(rootfs: &Path, config: &ImageConfig) -> io::Result<()> {
    let dir = rootfs.join(".singularity.d");
    match fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            fs::remove_file(&dir)?;
            fs::create_dir(&dir)?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => fs::create_dir(&dir)?,
        Err(err) => return Err(err),
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    let path = dir.join("runscript");
    match fs::remove_file(&path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&path)?;
    file.write_all(oci::runscript(config).as_bytes())?;
    // The umask may have taken bits off the mode.
    file.set_permissions(fs::Permissions::from_mode(0o755))
}

/// Whether the double runs as root; umoci needs `--rootless` otherwise.
/// `/proc/self` belongs to the process's effective user.
fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch_args(
        options: PullOptions,
        cert_dir: Option<&str>,
        credentials: Option<&str>,
    ) -> Vec<String> {
        Fetch {
            options: &options,
            reference: "127.0.0.1:5000/e2e/busybox@sha256:abc",
            cert_dir: cert_dir.map(Path::new),
            credentials,
            work: Path::new("/w"),
            layout: Path::new("/w/layout"),
        }
        .skopeo_args()
        .into_iter()
        .map(|arg| arg.into_string().unwrap())
        .collect()
    }

    #[test]
    fn plain_skopeo_copy() {
        assert_eq!(
            fetch_args(PullOptions::default(), None, None),
            [
                "--insecure-policy",
                "--tmpdir",
                "/w",
                "copy",
                "--quiet",
                "docker://127.0.0.1:5000/e2e/busybox@sha256:abc",
                "oci:/w/layout:img"
            ]
        );
    }

    #[test]
    fn skopeo_copy_with_every_option() {
        let options = PullOptions {
            force: true,
            no_https: true,
            arch: Some("arm64".into()),
            disable_cache: true,
        };
        assert_eq!(
            fetch_args(options, Some("/certs"), Some("user:pw")),
            [
                "--insecure-policy",
                "--tmpdir",
                "/w",
                "--override-arch",
                "arm64",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--src-cert-dir",
                "/certs",
                "--src-creds",
                "user:pw",
                "docker://127.0.0.1:5000/e2e/busybox@sha256:abc",
                "oci:/w/layout:img"
            ]
        );
    }

    #[test]
    fn runscripts_replace_what_the_image_had() {
        let work = WorkDir::new(None).unwrap();
        let rootfs = work.path().join("rootfs");
        let outside = work.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir(&rootfs).unwrap();
        // An image whose /.singularity.d points out of the rootfs.
        std::os::unix::fs::symlink(&outside, rootfs.join(".singularity.d")).unwrap();
        let config = ImageConfig {
            cmd: vec!["sh".into()],
            ..ImageConfig::default()
        };
        write_runscript(&rootfs, &config).unwrap();
        write_runscript(&rootfs, &config).unwrap();
        let runscript = rootfs.join(".singularity.d/runscript");
        assert_eq!(
            fs::read_to_string(&runscript).unwrap(),
            oci::runscript(&config)
        );
        assert_eq!(fs::metadata(&runscript).unwrap().mode() & 0o777, 0o755);
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
}
