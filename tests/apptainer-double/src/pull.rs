//! `pull` in the fake backend: check the arguments in apptainer's order,
//! then write a fake SIF. The checks are shared with the real backend
//! ([`crate::real`]).
//!
//! The file has a real SIF's first bytes (launch script field and magic) so
//! the double's `run`/`exec` accept it, then text naming the URI, then bytes
//! drawn from the URI and a per-pull nonce: two pulls of the same tag differ,
//! as two real `docker://` pulls do (build time and layer timestamps differ),
//! so nothing in sifr may assume a pull is reproducible.
//!
//! The file is written in place, in several chunks, so a test can make the
//! pull slow, watch it grow, kill it midway, or have it kill itself.

use std::fs::{self, File};
use std::io::{self, Write};
use std::process::{self, Child, Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::action::{SIF_LAUNCH, SIF_LAUNCH_LEN, SIF_MAGIC};
use crate::cli::PullArgs;
use crate::controls::{Controls, REQUIRE_ENV_VAR, record_pid, wait_for_release};
use crate::failure::{Failure, go_error_text};

/// The largest single write.
const MAX_CHUNK: u64 = 64 * 1024;
/// Smallest number of writes a pull is split into (when the file is big
/// enough), so pacing and a death midway show a partly written file even at
/// the default size.
const MIN_CHUNKS: u64 = 16;
/// SIF format version field, after the magic.
const SIF_VERSION: &[u8] = b"01\0";

pub fn pull(args: &PullArgs, controls: &Controls) -> Result<(), Failure> {
    let PullArgs { out, uri, .. } = args;
    check_destination_and_transport(args)?;
    info("Converting OCI blobs to SIF format");
    info(&format!("(apptainer test double) pulling {uri}"));
    check_access(uri, controls)?;
    info("Starting build...");
    write_image(out, uri, controls).map_err(|err| {
        Failure::fatal(format!(
            "While making image from oci registry: while building SIF: {out}: {}",
            go_error_text(&err)
        ))
    })?;
    info("Creating SIF file...");
    Ok(())
}

/// What apptainer checks before it fetches anything, in its order: the URI,
/// then the destination, then the transport. Both backends make these
/// checks.
pub fn check_destination_and_transport(args: &PullArgs) -> Result<(), Failure> {
    let PullArgs { options, out, uri } = args;
    let (transport, reference) = uri.split_once("://").unwrap_or(("", uri));
    if reference.is_empty() {
        return Err(Failure::fatal(format!("Bad URI {uri}")));
    }
    // apptainer checks the destination before the transport, and counts
    // anything it cannot prove absent as present.
    let exists = !matches!(fs::metadata(out), Err(err) if err.kind() == io::ErrorKind::NotFound);
    if exists && !options.force {
        return Err(Failure::fatal(format!(
            "Image file already exists: {out:?} - will not overwrite"
        )));
    }
    match transport {
        "docker" => Ok(()),
        "" => Err(Failure::fatal("No transport type URI supplied")),
        other => Err(Failure::fatal(format!(
            "Unsupported transport type: {other}"
        ))),
    }
}

/// The failures a test asks for with `APPTAINER_DOUBLE_REQUIRE_ENV` and
/// `APPTAINER_DOUBLE_FAIL`, reported as a registry would report them. Both
/// backends honour these, before they contact any registry.
pub fn check_access(uri: &str, controls: &Controls) -> Result<(), Failure> {
    if let Some(problem) = missing_required_env(&controls.required_env) {
        return Err(Failure::fatal(format!(
            "While making image from oci registry: error fetching image to cache: \
             (apptainer test double) {REQUIRE_ENV_VAR}: {problem}: \
             unauthorized: authentication required"
        )));
    }
    if controls
        .fail_patterns
        .iter()
        .any(|pattern| uri.contains(pattern.as_str()))
    {
        return Err(Failure::fatal(format!(
            "While making image from oci registry: error fetching image to cache: \
             while building SIF from layers: (apptainer test double) fetching {uri}: \
             dial tcp: connect: connection refused"
        )));
    }
    Ok(())
}

/// The first required variable the environment lacks, described without its
/// value (it may stand for a credential).
fn missing_required_env(required: &[(String, Option<String>)]) -> Option<String> {
    required
        .iter()
        .find_map(|(name, wanted)| match (std::env::var_os(name), wanted) {
            (None, _) => Some(format!("{name} is not set")),
            (Some(value), Some(wanted)) if value != wanted.as_str() => {
                Some(format!("{name} does not have the required value"))
            }
            (Some(_), _) => None,
        })
}

/// An apptainer-style `INFO:` line on stderr.
pub fn info(message: &str) {
    eprintln!("INFO:    {message}");
}

/// Write the fake image to `out`, paced and reported as `controls` ask, and
/// die midway if they ask for that.
fn write_image(out: &str, uri: &str, controls: &Controls) -> io::Result<()> {
    let nonce = format!("{}-{}", process::id(), nanos_since_epoch());
    let mut image = FakeSif::new(uri, &nonce);
    let total = controls.image_size.max(image.header_len());
    let stop_at = if controls.die_mid_pull {
        total / 2
    } else {
        total
    };
    let chunk_len = (total / MIN_CHUNKS).clamp(1, MAX_CHUNK);
    let mut pacer = Pacer::new(controls.pull_time, total);
    let mut progress = Progress::new(controls.progress_lines, total);

    let _helper = if controls.helper {
        Some(Helper::start()?)
    } else {
        None
    };
    let mut file = File::create(out)?;
    let mut buf = vec![0; usize::try_from(chunk_len).unwrap_or(usize::MAX)];
    let mut written = 0;
    while written < stop_at {
        let len = (stop_at - written).min(chunk_len);
        let chunk = &mut buf[..usize::try_from(len).unwrap_or(usize::MAX)];
        image.fill(chunk);
        file.write_all(chunk)?;
        if written == 0
            && let Some(hold) = &controls.hold
        {
            wait_for_release(hold);
        }
        written += len;
        progress.report(written);
        pacer.wait(written);
    }
    if controls.die_mid_pull {
        info("(apptainer test double) dying by SIGKILL midway, as APPTAINER_DOUBLE_DIE asks");
        die_by_sigkill();
    }
    Ok(())
}

/// A helper process (`sleep`) that lives as long as the pull: stopped when
/// the pull ends, left running if the pull is killed, as a killed
/// apptainer leaves its helpers. Its pid goes to the pid file.
struct Helper(Child);

impl Helper {
    fn start() -> io::Result<Self> {
        // Not on the pull's streams: a caller reading them to their end
        // must not wait for the helper.
        let child = Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        record_pid(child.id()).map_err(|failure| io::Error::other(format!("{failure:?}")))?;
        Ok(Self(child))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nanos_since_epoch() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// Kill this process with SIGKILL, the way an OOM killer or `kill -9` ends a
/// real pull: no cleanup, no exit code, a half-written file. std cannot
/// send a signal, so `kill(1)` does it.
fn die_by_sigkill() -> ! {
    let pid = process::id().to_string();
    match Command::new("kill").args(["-9", &pid]).status() {
        Ok(status) if status.success() => {
            // The signal is on its way; give the kernel a moment.
            for _ in 0..100 {
                thread::sleep(Duration::from_millis(100));
            }
            eprintln!("apptainer test double: SIGKILL did not arrive; aborting instead");
        }
        Ok(status) => {
            eprintln!("apptainer test double: kill -9 {pid} failed ({status}); aborting instead")
        }
        Err(err) => eprintln!("apptainer test double: cannot run kill ({err}); aborting instead"),
    }
    process::abort()
}

/// The bytes of the fake image, produced in order. Each byte depends only on
/// its position, the URI and the nonce, not on how the writes are split.
struct FakeSif {
    header: Vec<u8>,
    seed: u64,
    position: u64,
}

impl FakeSif {
    fn new(uri: &str, nonce: &str) -> Self {
        let mut header = SIF_LAUNCH.to_vec();
        header.resize(SIF_LAUNCH_LEN, 0);
        header.extend_from_slice(SIF_MAGIC);
        header.extend_from_slice(SIF_VERSION);
        header.extend_from_slice(
            format!("\nfake SIF written by the apptainer TEST DOUBLE\nuri={uri}\nnonce={nonce}\n")
                .as_bytes(),
        );
        Self {
            header,
            seed: fnv1a(uri.bytes().chain([0]).chain(nonce.bytes())),
            position: 0,
        }
    }

    fn header_len(&self) -> u64 {
        self.header.len() as u64
    }

    /// Fill `buf` with the next bytes of the image.
    fn fill(&mut self, buf: &mut [u8]) {
        for byte in buf {
            *byte = self.byte_at(self.position);
            self.position += 1;
        }
    }

    fn byte_at(&self, position: u64) -> u8 {
        let in_header = usize::try_from(position)
            .ok()
            .and_then(|index| self.header.get(index));
        match in_header {
            Some(&byte) => byte,
            None => {
                let offset = position - self.header_len();
                let word = split_mix64(self.seed, offset / 8);
                word.to_le_bytes()[(offset % 8) as usize]
            }
        }
    }
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Word `index` of the SplitMix64 sequence from `seed` (Steele, Lea and
/// Flood): random enough for filler, and std-only.
fn split_mix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Spreads a pull's total time over its writes: after `written` of `total`
/// bytes, that share of the time has passed.
struct Pacer {
    total_time: Duration,
    total_bytes: u64,
    slept: Duration,
}

impl Pacer {
    fn new(total_time: Duration, total_bytes: u64) -> Self {
        Self {
            total_time,
            total_bytes,
            slept: Duration::ZERO,
        }
    }

    fn wait(&mut self, written: u64) {
        let due = share(self.total_time.as_nanos(), written, self.total_bytes);
        let due = Duration::from_nanos(u64::try_from(due).unwrap_or(u64::MAX));
        if let Some(pause) = due.checked_sub(self.slept).filter(|pause| !pause.is_zero()) {
            thread::sleep(pause);
            self.slept = due;
        }
    }
}

/// Prints the requested progress lines spread over the pull: line `k` of
/// `n` once `k/n` of the file is written.
struct Progress {
    lines: u64,
    total_bytes: u64,
    printed: u64,
}

impl Progress {
    fn new(lines: u64, total_bytes: u64) -> Self {
        Self {
            lines,
            total_bytes,
            printed: 0,
        }
    }

    fn report(&mut self, written: u64) {
        let due = share(u128::from(self.lines), written, self.total_bytes);
        while u128::from(self.printed) < due {
            self.printed += 1;
            info(&format!(
                "(apptainer test double) progress line {}",
                self.printed
            ));
        }
    }
}

/// `amount * part / whole`, without overflow.
fn share(amount: u128, part: u64, whole: u64) -> u128 {
    amount * u128::from(part) / u128::from(whole.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_bytes(uri: &str, nonce: &str, len: usize) -> Vec<u8> {
        let mut image = FakeSif::new(uri, nonce);
        let mut bytes = vec![0; len];
        image.fill(&mut bytes);
        bytes
    }

    #[test]
    fn fake_sif_has_a_sif_header() {
        let bytes = image_bytes("docker://alpine:3", "1-2", 4096);
        assert!(bytes.starts_with(SIF_LAUNCH));
        assert_eq!(
            &bytes[SIF_LAUNCH_LEN..SIF_LAUNCH_LEN + SIF_MAGIC.len()],
            SIF_MAGIC
        );
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("uri=docker://alpine:3\n"));
    }

    #[test]
    fn fake_sif_bytes_depend_on_uri_and_nonce() {
        let a = image_bytes("docker://a", "1-1", 4096);
        assert_eq!(a, image_bytes("docker://a", "1-1", 4096));
        assert_ne!(a, image_bytes("docker://a", "1-2", 4096));
        assert_ne!(a, image_bytes("docker://b", "1-1", 4096));
    }

    #[test]
    fn fake_sif_bytes_do_not_depend_on_chunking() {
        let mut image = FakeSif::new("docker://a", "1-1");
        let mut pieces = vec![0; 4096];
        for piece in pieces.chunks_mut(13) {
            image.fill(piece);
        }
        assert_eq!(pieces, image_bytes("docker://a", "1-1", 4096));
    }

    #[test]
    fn shares_are_proportional() {
        assert_eq!(share(10, 0, 100), 0);
        assert_eq!(share(10, 50, 100), 5);
        assert_eq!(share(10, 100, 100), 10);
        assert_eq!(
            share(u128::from(u64::MAX), u64::MAX, u64::MAX),
            u128::from(u64::MAX)
        );
    }
}
