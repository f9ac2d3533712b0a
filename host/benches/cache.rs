//! Cache and pull benchmarks (not tests): `cargo bench --bench cache`.
//!
//! In one run, side by side:
//! 1. a cache-hit lookup of a 1 GiB SIF (stamp check) against the seed's
//!    approach, a full re-hash on every hit; and a whole `sifr pull` process
//!    that hits;
//! 2. sifr's sha256 throughput on that file against `openssl dgst -sha256`;
//! 3. the wall time of 16 concurrent `sifr pull` processes of one image
//!    against 1, with the apptainer test double taking 1 s per pull.
//!
//! Prints medians and ratios; see BENCHMARKS.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sifr::ImageRef;

mod common;
use common::{fmt, median, time};
use sifr::cache::{Cache, Identity, Lookup, Provenance, sha256_file};

const GIB: u64 = 1 << 30;

/// The apptainer test double: `$SIFR_BENCH_APPTAINER`, else the one built
/// next to this benchmark.
fn double() -> PathBuf {
    if let Some(path) = std::env::var_os("SIFR_BENCH_APPTAINER") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("apptainer-test-double");
    assert!(
        path.is_file(),
        "build the workspace first: {}",
        path.display()
    );
    path
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = Cache::open(&root).unwrap();
    let image = ImageRef::parse("bench/big:1").unwrap();
    let identity = Identity::of(&image, sifr::policy::host_arch());

    // A 1 GiB file of pseudo-random bytes, committed as if pulled.
    let (tmp_name, tmp_path) = cache.temp_pull_path(&identity).unwrap();
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp_path).unwrap());
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..(GIB >> 20) {
            for b in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            file.write_all(&chunk).unwrap();
        }
    }
    let provenance = Provenance {
        identity: identity.text.clone(),
        image: image.to_string(),
        arch: sifr::policy::host_arch().to_string(),
        manifest_digest: None,
        source_uri: "docker://bench/big:1".into(),
        source_note: "origin".into(),
        pulled_at: 0,
        apptainer_version: "bench".into(),
        plan_notes: vec![],
    };
    let entry = cache
        .commit(&identity, &tmp_name, provenance, &mut ())
        .unwrap();
    let blob = cache.blob_path(&entry);

    // 1. Cache hit: stamp check against a full re-hash (the seed).
    let hit = time(101, || {
        let found = cache.lookup(&identity, &mut ()).unwrap();
        assert!(matches!(
            found,
            Lookup::Hit {
                rehashed: false,
                ..
            }
        ));
    });
    let rehash = time(5, || {
        let file = std::fs::File::open(&blob).unwrap();
        let hex = sha256_file(file, GIB, &mut ()).unwrap();
        assert_eq!(hex, entry.sif_digest.hex());
    });
    println!(
        "cache hit, 1 GiB SIF, stamp check:        median {}",
        fmt(hit)
    );
    println!(
        "cache hit, 1 GiB SIF, full re-hash (seed): median {}",
        fmt(rehash)
    );
    println!("ratio: {:.0}x", rehash.as_secs_f64() / hit.as_secs_f64());

    let sifr = Path::new(env!("CARGO_BIN_EXE_sifr"));
    let pull = |image: &str, sleep_ms: &str, log: &Path| {
        Command::new(sifr)
            .args(["-q", "pull", image])
            .env("SIFR_CACHE_DIR", &root)
            .env("XDG_CONFIG_HOME", dir.path())
            .env("SIFR_APPTAINER", double())
            .env("APPTAINER_DOUBLE_SLEEP_MS", sleep_ms)
            .env("APPTAINER_DOUBLE_LOG", log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let log = dir.path().join("apptainer.log");
    let process_hit = time(21, || {
        assert!(pull("bench/big:1", "0", &log).wait().unwrap().success());
    });
    println!(
        "`sifr pull` process, 1 GiB cache hit:      median {}",
        fmt(process_hit)
    );

    // 2. Hash throughput: sifr against openssl (SHA-NI), page cache warm.
    let mib = (GIB >> 20) as f64;
    let openssl = time(5, || {
        let out = Command::new("openssl")
            .args(["dgst", "-sha256"])
            .arg(&blob)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(entry.sif_digest.hex()));
    });
    println!(
        "sha256 of 1 GiB: sifr median {} ({:.0} MiB/s); openssl dgst -sha256 median {} ({:.0} MiB/s); ratio {:.2}",
        fmt(rehash),
        mib / rehash.as_secs_f64(),
        fmt(openssl),
        mib / openssl.as_secs_f64(),
        rehash.as_secs_f64() / openssl.as_secs_f64()
    );
    std::fs::remove_file(&blob).ok();

    // 3. 16 concurrent pulls of one image against 1, each pull taking 1 s.
    let mut one = Vec::new();
    let mut sixteen = Vec::new();
    for round in 0..5 {
        let t = Instant::now();
        assert!(
            pull(&format!("bench/one:{round}"), "1000", &log)
                .wait()
                .unwrap()
                .success()
        );
        one.push(t.elapsed());
        let t = Instant::now();
        let children: Vec<_> = (0..16)
            .map(|_| pull(&format!("bench/many:{round}"), "1000", &log))
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
        sixteen.push(t.elapsed());
    }
    let (one, sixteen) = (median(one), median(sixteen));
    println!(
        "1 `sifr pull` (1 s apptainer pull):             median {}",
        fmt(one)
    );
    println!(
        "16 concurrent `sifr pull` of one image:         median {}",
        fmt(sixteen)
    );
    println!(
        "ratio 16/1: {:.2}",
        sixteen.as_secs_f64() / one.as_secs_f64()
    );
}
