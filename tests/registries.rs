//! The built-in `registries` plugin, through `sifr resolve --config X IMAGE`:
//! the documented plan for each containers-registries.conf(5) v2 case.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::stderr;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One cache for the whole file, so the plugin is compiled once.
fn cache() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// A sifr config whose chain is the registries plugin reading `conf`.
fn config_for(conf: &Path) -> PathBuf {
    let dir = cache().join("configs");
    std::fs::create_dir_all(&dir).unwrap();
    let stem = conf.file_stem().unwrap().to_string_lossy().into_owned();
    let path = dir.join(format!("{stem}.toml"));
    // Written aside and renamed: other tests may be reading the same file.
    let tmp = dir.join(format!("{stem}.{:?}.tmp", std::thread::current().id()));
    std::fs::write(
        &tmp,
        format!(
            "[[plugin]]\nname = \"registries\"\nbuiltin = \"registries\"\nsettings-files = {{ conf = \"{}\" }}\n",
            conf.display()
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// An inline registries.conf, written to a file named by its content (tests
/// run in parallel threads, so each writes its own temporary name first).
fn conf(text: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = cache().join("confs");
    std::fs::create_dir_all(&dir).unwrap();
    let name = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
    let path = dir.join(format!("{name}.conf"));
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{name}.{seq}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// `sifr resolve --json`: the URIs (with ` (http)` for plain HTTP), or the
/// error on stderr.
fn resolve(conf: &Path, image: &str) -> Result<Vec<String>, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sifr"))
        .args(["--config"])
        .arg(config_for(conf))
        .args(["resolve", "--json", image])
        .env("SIFR_CACHE_DIR", cache().join("sifr"))
        .env("XDG_CONFIG_HOME", cache().join("xdg"))
        .env_remove("SIFR_CONFIG")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(stderr(&out));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(json[0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let uri = s["uri"].as_str().unwrap().to_string();
            if s["plain_http"] == true {
                format!("{uri} (http)")
            } else {
                uri
            }
        })
        .collect())
}

fn plan(conf: &Path, image: &str) -> Vec<String> {
    resolve(conf, image).unwrap_or_else(|e| panic!("{image}: {e}"))
}

fn denial(conf: &Path, image: &str) -> String {
    match resolve(conf, image) {
        Ok(plan) => panic!("{image} was not refused: {plan:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_longest_prefix_matching_at_a_separator_chooses_the_table() {
    let c = conf(
        r#"
[[registry]]
prefix = "example.com"
location = "one.example.net"
[[registry]]
prefix = "example.com/team"
location = "two.example.net/t"
[[registry]]
prefix = "example.com/team/app"
location = "three.example.net/a"
[[registry]]
prefix = "example.com/team/app:v1"
location = "four.example.net/pinned:v1-fixed"
[[registry]]
location = "example.org"
insecure = true
"#,
    );
    let cases = [
        ("example.com/x/y:1", "docker://one.example.net/x/y:1"),
        (
            "example.com/team/other:1",
            "docker://two.example.net/t/other:1",
        ),
        // "teamwork" does not match "team": a prefix ends at a separator.
        (
            "example.com/teamwork/x:1",
            "docker://one.example.net/teamwork/x:1",
        ),
        ("example.com/team/app:v2", "docker://three.example.net/a:v2"),
        (
            "example.com/team/app:v1",
            "docker://four.example.net/pinned:v1-fixed",
        ),
        (
            &format!("example.com/team/app@{D}"),
            &format!("docker://three.example.net/a@{D}"),
        ),
        // prefix defaults to location.
        ("example.org/x:1", "docker://example.org/x:1 (http)"),
        // No table: the origin.
        ("quay.io/a/b:1", "docker://quay.io/a/b:1"),
        // A host prefix does not match another port of that host.
        ("example.com:5000/x:1", "docker://example.com:5000/x:1"),
    ];
    for (image, uri) in cases {
        assert_eq!(plan(&c, image), [uri.to_string()], "{image}");
    }
}

#[test]
fn a_leading_wildcard_matches_any_subdomain_depth_and_other_wildcards_are_errors() {
    let c = conf(
        r#"
[[registry]]
prefix = "*.example.com"
insecure = true
[[registry.mirror]]
location = "cache.example.net/sub"
"#,
    );
    assert_eq!(
        plan(&c, "a.example.com/x:1"),
        [
            "docker://cache.example.net/sub/x:1",
            "docker://a.example.com/x:1 (http)"
        ]
    );
    assert_eq!(
        plan(&c, "a.b.c.example.com/x:1"),
        [
            "docker://cache.example.net/sub/x:1",
            "docker://a.b.c.example.com/x:1 (http)"
        ]
    );
    assert_eq!(plan(&c, "example.com/x:1"), ["docker://example.com/x:1"]);
    for bad in [
        "example.*.com",
        "*example.com",
        "foo.io/*",
        "*.example.com/ns",
    ] {
        let c = conf(&format!("[[registry]]\nprefix = \"{bad}\"\n"));
        let err = denial(&c, "a.example.com/x:1");
        assert!(
            err.contains("wildcard") && err.contains("refused its settings"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn mirrors_come_in_order_with_their_insecure_flags_and_the_primary_last() {
    let c = fixture("site.conf");
    assert_eq!(
        plan(&c, "docker.io/library/ubuntu:22.04"),
        [
            "docker://cache.example.org:5000/hub/library/ubuntu:22.04",
            "docker://mirror.hpc.example.org/dockerhub/library/ubuntu:22.04 (http)",
            "docker://ubuntu:22.04",
        ]
    );
    let hub = fixture("hub-mirror.conf");
    assert_eq!(
        plan(&hub, "ncbi/blast:2.14.0"),
        [
            "docker://harbor.example.org/dockerhub-proxy/ncbi/blast:2.14.0",
            "docker://ncbi/blast:2.14.0"
        ]
    );
}

#[test]
fn tag_and_digest_routing() {
    let site = fixture("site.conf");
    // quay.io: mirror-by-digest-only: tags go to the primary alone.
    assert_eq!(
        plan(&site, "quay.io/biocontainers/samtools:1.19"),
        ["docker://quay.io/biocontainers/samtools:1.19"]
    );
    assert_eq!(
        plan(&site, &format!("quay.io/biocontainers/samtools@{D}")),
        [
            format!("docker://cache.example.org:5000/quay/biocontainers/samtools@{D}"),
            format!("docker://quay.io/biocontainers/samtools@{D}")
        ]
    );
    // *.lab.example.org: a tag-only mirror: digests go to the primary alone.
    assert_eq!(
        plan(&site, "gpu.lab.example.org/tools/x:1"),
        [
            "docker://cache.example.org:5000/labs/tools/x:1",
            "docker://gpu.lab.example.org/tools/x:1"
        ]
    );
    assert_eq!(
        plan(&site, &format!("gpu.lab.example.org/tools/x@{D}")),
        [format!("docker://gpu.lab.example.org/tools/x@{D}")]
    );

    let mixed = conf(
        r#"
[[registry]]
location = "r.io"
[[registry.mirror]]
location = "all.example"
pull-from-mirror = "all"
[[registry.mirror]]
location = "digests.example"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "tags.example"
pull-from-mirror = "tag-only"
"#,
    );
    assert_eq!(
        plan(&mixed, "r.io/a:1"),
        [
            "docker://all.example/a:1",
            "docker://tags.example/a:1",
            "docker://r.io/a:1"
        ]
    );
    assert_eq!(
        plan(&mixed, &format!("r.io/a@{D}")),
        [
            format!("docker://all.example/a@{D}"),
            format!("docker://digests.example/a@{D}"),
            format!("docker://r.io/a@{D}")
        ]
    );

    let both = conf(
        "[[registry]]\nlocation = \"r.io\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"all\"\n",
    );
    let err = denial(&both, "r.io/a:1");
    assert!(
        err.contains("pull-from-mirror cannot be used together with mirror-by-digest-only"),
        "{err}"
    );
}

#[test]
fn a_blocked_table_denies_and_is_named() {
    let c = fixture("blocked.conf");
    let err = denial(&c, "untrusted.example.com/tool:1");
    assert!(err.contains("denied by plugin 'registries'"), "{err}");
    assert!(
        err.contains("[[registry]] prefix = \"untrusted.example.com\" has blocked = true"),
        "{err}"
    );
    let err = denial(&c, "randomuser/miner:latest");
    assert!(err.contains("prefix = \"docker.io/randomuser\""), "{err}");
    assert_eq!(
        plan(&c, "ncbi/blast:2.14.0"),
        ["docker://ncbi/blast:2.14.0"]
    );
}

#[test]
fn a_rewritten_location_replaces_the_matched_prefix_and_insecure_means_plain_http() {
    let c = fixture("site.conf");
    assert_eq!(
        plan(&c, "registry.example.org/legacy/pipeline:3.1"),
        ["docker://registry.internal.example.org:8443/apps/pipeline:3.1 (http)"]
    );
}

#[test]
fn short_names_use_aliases_then_search_registries() {
    let site = fixture("site.conf");
    // Aliases keep the tag and the digest.
    assert_eq!(
        plan(&site, "blast:2.15.0"),
        ["docker://quay.io/biocontainers/blast:2.15.0"]
    );
    assert_eq!(
        plan(&site, &format!("blast@{D}")),
        [
            format!("docker://cache.example.org:5000/quay/biocontainers/blast@{D}"),
            format!("docker://quay.io/biocontainers/blast@{D}")
        ]
    );
    // Two search registries under "enforcing": ambiguous, and sifr never prompts.
    let err = denial(&site, "samtools:1.19");
    assert!(
        err.contains("short name \"samtools\" is ambiguous")
            && err.contains("add an [aliases] entry"),
        "{err}"
    );

    let permissive = conf(
        "unqualified-search-registries = [\"registry.example.org\", \"docker.io\"]\nshort-name-mode = \"permissive\"\n",
    );
    assert_eq!(
        plan(&permissive, "samtools:1.19"),
        [
            "docker://registry.example.org/samtools:1.19",
            "docker://samtools:1.19"
        ]
    );
    assert_eq!(
        plan(&permissive, "ncbi/blast:2.14.0"),
        [
            "docker://registry.example.org/ncbi/blast:2.14.0",
            "docker://ncbi/blast:2.14.0"
        ]
    );
    // One search registry is not ambiguous.
    let one = conf("unqualified-search-registries = [\"registry.example.org\"]\n");
    assert_eq!(
        plan(&one, "samtools"),
        ["docker://registry.example.org/samtools:latest"]
    );
    // No search registries: single names stay on Docker Hub, as docker.io/library/NAME.
    let none = conf("");
    assert_eq!(plan(&none, "ubuntu:22.04"), ["docker://ubuntu:22.04"]);
    // Qualified names are never searched.
    assert_eq!(
        plan(&permissive, "quay.io/a/b:1"),
        ["docker://quay.io/a/b:1"]
    );
}

#[test]
fn unknown_keys_and_version_1_tables_are_clear_settings_errors() {
    for (text, expect) in [
        (
            "[registries.search]\nregistries = [\"docker.io\"]\n",
            "version 1 format",
        ),
        (
            "[[registry]]\nlocation = \"a.io\"\nmirors = []\n",
            "unknown field `mirors`",
        ),
        (
            "short-name-mode = \"lenient\"\n",
            "unknown variant `lenient`",
        ),
        (
            "[[registry]]\ninsecure = true\n",
            "needs a `prefix` or a `location`",
        ),
        ("[[registry]\n", "registries.conf"),
    ] {
        let err = denial(&conf(text), "a.io/x:1");
        assert!(
            err.contains("refused its settings") && err.contains(expect),
            "{text:?}: {err}"
        );
    }
}
