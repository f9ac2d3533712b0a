//! The built-in `registries` plugin, through `sifr resolve --config X IMAGE`:
//! the documented plan for each containers-registries.conf(5) v2 case.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::stderr;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One cache for the whole file, so the plugin is compiled once.
fn cache() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::process_dir("registries"))
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

/// sifr with none of the caller's SIFR_*, APPTAINER_*, XDG_* or registry
/// settings, and this file's one cache.
fn sifr() -> Command {
    let mut cmd = common::sifr_command(&cache().join("home"));
    cmd.env("SIFR_CACHE_DIR", cache().join("sifr"));
    cmd
}

/// Why `sifr resolve` failed: its exit code and stderr.
#[derive(Debug)]
struct Failure {
    code: Option<i32>,
    stderr: String,
}

/// `sifr resolve --json`: the URIs (with ` (http)` for plain HTTP), or how
/// it failed.
fn resolve(conf: &Path, image: &str) -> Result<Vec<String>, Failure> {
    let out = sifr()
        .args(["--config"])
        .arg(config_for(conf))
        .args(["resolve", "--json", image])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(Failure {
            code: out.status.code(),
            stderr: stderr(&out),
        });
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
    resolve(conf, image).unwrap_or_else(|e| panic!("{image}: {e:?}"))
}

/// The policy denied `image` (exit 4): the reason.
fn denial(conf: &Path, image: &str) -> String {
    match resolve(conf, image) {
        Ok(plan) => panic!("{image} was not refused: {plan:?}"),
        Err(Failure {
            code: Some(4),
            stderr,
        }) => stderr,
        Err(other) => panic!("{image}: expected a denial (exit 4), got {other:?}"),
    }
}

/// The file is refused when sifr loads the policy (exit 3), before any
/// image is looked at: the message.
fn load_error(text: &str) -> String {
    let file = conf(text);
    match resolve(&file, "a.io/x:1") {
        Ok(plan) => panic!("{text:?} was loaded: {plan:?}"),
        Err(Failure {
            code: Some(3),
            stderr,
        }) if stderr.contains("refused its settings: registries.conf: ") => {
            // The plugin sees only the text; the host names the file.
            let named = format!(
                "fix the file (settings-files: `conf` from {})",
                file.display()
            );
            assert!(stderr.contains(&named), "the file is not named: {stderr}");
            stderr
        }
        Err(other) => panic!("{text:?}: expected a load error (exit 3), got {other:?}"),
    }
}

/// Each file is refused at load, and the message has every expected part
/// (the table, the key, what to do).
fn assert_refused<'a>(cases: impl IntoIterator<Item = (&'a str, &'a [&'a str])>) {
    for (text, expected) in cases {
        let err = load_error(text);
        for part in expected {
            assert!(err.contains(part), "{text:?}: {part:?} is not in: {err}");
        }
    }
}

/// Each image gets exactly this plan under `conf`.
fn assert_plans<'a>(conf: &Path, cases: impl IntoIterator<Item = (&'a str, &'a [&'a str])>) {
    for (image, uris) in cases {
        assert_eq!(plan(conf, image), *uris, "{image}");
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
    // A wildcard matches a host with a port, and the port stays after the
    // rewritten location, as in containers/image: here that gives no valid
    // reference, so the image is denied, naming the table, where
    // containers/image fails the pull.
    let why = denial(&c, "a.example.com:5000/x:1");
    assert!(
        why.contains("[[registry]] \"*.example.com\" rewrites this image to \"cache.example.net/sub:5000/x:1\"")
            && why.contains("not a valid image reference"),
        "{why}"
    );
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

    // Invalid routes are refused at load (postProcessRegistries).
    assert_refused([
        (
            "[[registry]]\nlocation = \"r.io\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"all\"\n",
            &[
                "[[registry]] #1 (location \"r.io\"), [[registry.mirror]] #1",
                "pull-from-mirror cannot be used together with mirror-by-digest-only",
            ][..],
        ),
        (
            "[[registry]]\nlocation = \"r.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\npull-from-mirror = \"sometimes\"\n",
            &["[[registry.mirror]] #1", "pull-from-mirror = \"sometimes\""],
        ),
        (
            "[[registry]]\nlocation = \"r.io\"\npull-from-mirror = \"digest-only\"\n",
            &[
                "[[registry]] #1 (location \"r.io\")",
                "pull-from-mirror = \"digest-only\" is set on the registry itself",
            ],
        ),
    ]);
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

// What containers/image refuses when it loads the file, sifr refuses when it
// loads the policy (exit 3), with the file, the table and the key; what it
// accepts resolves as it resolves. One test per rule of
// containers/image's pkg/sysregistriesv2, named in each.

/// parseLocation: trailing slashes are trimmed, URI schemes are refused.
#[test]
fn locations_lose_trailing_slashes_and_uri_schemes_are_refused_at_load() {
    let trimmed = conf(
        r#"
[[registry]]
location = "example.com//////"
[[registry.mirror]]
location = "mirror.example.net/hub/"

[[registry]]
prefix = "old.example.com/team/"
location = "new.example.com/"
"#,
    );
    assert_plans(
        &trimmed,
        [
            (
                "example.com/img:1",
                &[
                    "docker://mirror.example.net/hub/img:1",
                    "docker://example.com/img:1",
                ][..],
            ),
            (
                "old.example.com/team/img:1",
                &["docker://new.example.com/img:1"],
            ),
        ],
    );
    assert_refused([
        (
            "[[registry]]\nlocation = \"https://example.com\"\n",
            &[
                "[[registry]] #1 (location \"https://example.com\")",
                "location = \"https://example.com\": URI schemes are not supported",
                "write \"example.com\"",
            ][..],
        ),
        (
            "[[registry]]\nlocation = \"http://registry.com:5000\"\n",
            &[
                "location = \"http://registry.com:5000\"",
                "write \"registry.com:5000\", with insecure = true for plain HTTP",
            ],
        ),
        (
            "[[registry]]\nprefix = \"http://schema-is-invalid.com\"\nlocation = \"registry.com:5000\"\n",
            &[
                "[[registry]] #1 (prefix \"http://schema-is-invalid.com\")",
                "prefix = \"http://schema-is-invalid.com\": URI schemes are not supported",
            ],
        ),
        (
            "[[registry]]\nlocation = \"a.io\"\n[[registry]]\nlocation = \"b.io\"\n[[registry.mirror]]\nlocation = \"https://mirror.b.io/\"\n",
            &[
                "[[registry]] #2 (location \"b.io\"), [[registry.mirror]] #1",
                "location = \"https://mirror.b.io/\": URI schemes are not supported",
            ],
        ),
    ]);
}

/// postProcessRegistries: `prefix = ""` is unset and falls back to the
/// location; a table needs a location unless its prefix is a wildcard, and
/// a mirror always needs one.
#[test]
fn an_empty_prefix_is_unset_and_only_a_wildcard_table_may_lack_a_location() {
    let c = conf("[[registry]]\nprefix = \"\"\nlocation = \"empty-prefix.com\"\ninsecure = true\n");
    assert_plans(
        &c,
        [
            (
                "empty-prefix.com/foo:tag",
                &["docker://empty-prefix.com/foo:tag (http)"][..],
            ),
            ("other.com/foo:tag", &["docker://other.com/foo:tag"]),
        ],
    );
    let wildcard = conf("[[registry]]\nprefix = \"*.example.com\"\nblocked = true\n");
    assert!(denial(&wildcard, "a.example.com/x:1").contains("blocked = true"));
    assert_refused([
        (
            "[[registry]]\ninsecure = true\n",
            &["[[registry]] #1:", "needs a `prefix` or a `location`"][..],
        ),
        (
            "[[registry]]\nprefix = \"\"\nlocation = \"\"\n",
            &["needs a `prefix` or a `location`"],
        ),
        (
            "[[registry]]\nprefix = \"docker.io/someone\"\nblocked = true\n",
            &[
                "[[registry]] #1 (prefix \"docker.io/someone\")",
                "it has no `location`",
                "add location = \"docker.io/someone\"",
            ],
        ),
        (
            "[[registry]]\nlocation = \"r.io\"\n[[registry.mirror]]\ninsecure = true\n",
            &[
                "[[registry]] #1 (location \"r.io\"), [[registry.mirror]] #1",
                "mirror location is unset",
            ],
        ),
        (
            "[[registry]]\nlocation = \"r.io\"\n[[registry.mirror]]\nlocation = \"/\"\n",
            &["[[registry.mirror]] #1", "mirror location is unset"],
        ),
    ]);
}

/// FindRegistry: the longest prefix *as written* wins, so a wildcard counts
/// the length of its pattern (`*.com` is 5), not of the host it matched;
/// refMatchingSubdomainPrefix: a wildcard matches at its first occurrence.
#[test]
fn tables_rank_by_their_prefix_as_written_so_a_wildcard_counts_its_pattern() {
    let c = fixture("find-registry.conf");
    assert_plans(
        &c,
        [
            (
                "simple-prefix.com/foo/bar:latest",
                &["docker://registry.com:5000/foo/bar:latest"][..],
            ),
            ("other.com/x:1", &["docker://registry.com:5000/x:1"]),
            (
                "not.so.simple-prefix.com/x:1",
                &["docker://subdomain-prefix.com/x:1"],
            ),
            (
                "not.quite.simple-prefix.com/x:1",
                &["docker://subdomain-prefix-2.com/x:1"],
            ),
            (
                "x.bar.example.com/omg:foo",
                &["docker://subdomain-prefix-3.com/omg:foo"],
            ),
            (
                "foo.bar.example.com:5000/omg:foo",
                &["docker://subdomain-prefix-5.com/omg:foo"],
            ),
            (
                "complex-prefix.com:4000/with/path/and/beyond:tag",
                &["docker://another-registry.com:5000/and/beyond:tag"],
            ),
            ("no-prefix.com/foo:tag", &["docker://no-prefix.com/foo:tag"]),
            (
                "empty-prefix.com/foo:tag",
                &["docker://empty-prefix.com/foo:tag"],
            ),
            (
                "abc.internal.registry.net/foo:bar",
                &["docker://abc.internal.registry.net/foo:bar (http)"],
            ),
            // ".com" first occurs in "simple-prefix.comx", before no separator.
            (
                "simple-prefix.comx/x:1",
                &["docker://simple-prefix.comx/x:1"],
            ),
        ],
    );
    // The file's order does not matter.
    for text in [
        "[[registry]]\nprefix = \"*.com\"\nlocation = \"registry.com:5000\"\n\
         [[registry]]\nprefix = \"simple-prefix.com\"\nlocation = \"plain.example.net\"\n",
        "[[registry]]\nprefix = \"simple-prefix.com\"\nlocation = \"plain.example.net\"\n\
         [[registry]]\nprefix = \"*.com\"\nlocation = \"registry.com:5000\"\n",
    ] {
        assert_plans(
            &conf(text),
            [(
                "simple-prefix.com/foo/bar:latest",
                &["docker://plain.example.net/foo/bar:latest"][..],
            )],
        );
    }
    // Two prefixes of one length that both match: containers/image keeps
    // its tables sorted by prefix and takes the first, so the wildcard
    // ("*" sorts before letters) wins.
    for text in [
        "[[registry]]\nprefix = \"x.b.com\"\nlocation = \"plain.example.net\"\n\
         [[registry]]\nprefix = \"*.b.com\"\nlocation = \"wild.example.net\"\n",
        "[[registry]]\nprefix = \"*.b.com\"\nlocation = \"wild.example.net\"\n\
         [[registry]]\nprefix = \"x.b.com\"\nlocation = \"plain.example.net\"\n",
    ] {
        assert_plans(
            &conf(text),
            [("x.b.com/a:1", &["docker://wild.example.net/a:1"][..])],
        );
    }
}

/// rewriteReference: a wildcard table with a location rewrites the host it
/// matched, for its mirrors and its primary; without a location, it keeps
/// the reference.
#[test]
fn a_wildcard_prefix_with_a_location_rewrites_the_matched_host() {
    let c = conf(
        r#"
[[registry]]
prefix = "*.io"
location = "example.com"

[[registry]]
prefix = "*.example.io"
location = "example.com"

[[registry]]
prefix = "*.bar.io"
location = "omg.bbq.com/roflmao"
[[registry.mirror]]
location = "cache.example.net/bar"
insecure = true
"#,
    );
    assert_plans(
        &c,
        [
            (
                "quay.io/namespace/image:1",
                &["docker://example.com/namespace/image:1"][..],
            ),
            (
                "sub.example.io/library/prefix/image:1",
                &["docker://example.com/library/prefix/image:1"],
            ),
            (
                "foo.bar.io/ns1/ns2/ns3/ns4:1",
                &[
                    "docker://cache.example.net/bar/ns1/ns2/ns3/ns4:1 (http)",
                    "docker://omg.bbq.com/roflmao/ns1/ns2/ns3/ns4:1",
                ],
            ),
            (
                &format!("foo.bar.io/ns@{D}"),
                &[
                    &format!("docker://cache.example.net/bar/ns@{D} (http)"),
                    &format!("docker://omg.bbq.com/roflmao/ns@{D}"),
                ],
            ),
            // docker.io/library/… is matched as containers/image writes it.
            (
                "ubuntu:22.04",
                &["docker://example.com/library/ubuntu:22.04"],
            ),
        ],
    );
}

/// refMatchingSubdomainPrefix lets a `:port` follow the domain a wildcard
/// matched, and rewriteReference replaces the host and keeps the port:
/// containers/image's TestRewriteReferenceSuccess and TestFindRegistry
/// (find-registry.conf) cases. A location the admin wrote is never skipped
/// because the image named a port.
#[test]
fn a_wildcard_prefix_with_a_location_rewrites_a_host_with_a_port_and_keeps_the_port() {
    let c = conf(
        r#"
[[registry]]
prefix = "*.sub.example.io"
location = "example.com"
[[registry.mirror]]
location = "mirror.example.net"

[[registry]]
prefix = "*.internal.registry.net"
insecure = true
"#,
    );
    assert_plans(
        &c,
        [
            (
                "another.sub.example.io:5000/library/prefix/image:latest",
                &[
                    "docker://mirror.example.net:5000/library/prefix/image:latest",
                    "docker://example.com:5000/library/prefix/image:latest",
                ][..],
            ),
            (
                &format!("another.sub.example.io:5000/image@{D}"),
                &[
                    &format!("docker://mirror.example.net:5000/image@{D}"),
                    &format!("docker://example.com:5000/image@{D}"),
                ],
            ),
            (
                "another.sub.example.io/image:1",
                &[
                    "docker://mirror.example.net/image:1",
                    "docker://example.com/image:1",
                ],
            ),
            // Without a location the reference is kept, port and all, and
            // the table's flags apply.
            (
                "abc.internal.registry.net:5000/foo:bar",
                &["docker://abc.internal.registry.net:5000/foo:bar (http)"],
            ),
        ],
    );
}

/// rewriteReference parses what it rewrote with reference.ParseNamed: a
/// rewrite that is not a canonical reference fails the pull there, and is
/// denied here, naming the table.
#[test]
fn a_rewrite_that_is_not_a_valid_reference_is_denied_naming_the_table() {
    let c = conf(
        r#"
[[registry]]
prefix = "docker.io/library"
location = "docker.io"

[[registry]]
prefix = "example.com/foo"
location = "example.com/pinned:v1"
"#,
    );
    for (image, expected) in [
        (
            "docker.io/library/image:1",
            "its canonical form is docker.io/library/image",
        ),
        ("example.com/foo/bar:2", "\"example.com/pinned:v1/bar:2\""),
    ] {
        let err = denial(&c, image);
        assert!(
            err.contains("[[registry]] \"") && err.contains("is not a valid image reference"),
            "{image}: {err}"
        );
        assert!(err.contains(expected), "{image}: {err}");
    }
}

/// postProcessRegistries: a search entry is a location (trailing slashes
/// trimmed, no scheme) that must then be a host[:port] (anchoredDomainRegexp).
#[test]
fn search_entries_are_registries_not_namespaces() {
    let c = conf("unqualified-search-registries = [\"registry-a.com/\"]\n");
    assert_plans(
        &c,
        [(
            "samtools:1.19",
            &["docker://registry-a.com/samtools:1.19"][..],
        )],
    );
    let local = conf("unqualified-search-registries = [\"localhost:5000\"]\n");
    assert_plans(
        &local,
        [(
            "samtools:1.19",
            &["docker://localhost:5000/samtools:1.19"][..],
        )],
    );
    for entry in [
        "registry-a.com/namespace",
        "registry-a.com/ns/",
        "registry-a.com:port",
        "",
        "a b.com",
    ] {
        assert_refused([(
            format!("unqualified-search-registries = [\"{entry}\"]\n").as_str(),
            &[
                "unqualified-search-registries:",
                &format!("{:?} is not a host[:port]", entry),
            ][..],
        )]);
    }
    assert_refused([(
        "unqualified-search-registries = [\"registry-a.com:65536\"]\n",
        &["\"registry-a.com:65536\" has a port outside 1 to 65535"][..],
    )]);
    assert_refused([(
        "unqualified-search-registries = [\"https://registry-a.com\"]\n",
        &["unqualified-search-registries: entry \"https://registry-a.com\": URI schemes"][..],
    )]);
}

/// postProcessRegistries: tables that name one registry (one location, or
/// one wildcard prefix without a location) must agree on `insecure` and
/// `blocked`; of tables with one prefix, the first is used.
#[test]
fn tables_naming_one_registry_must_agree_and_the_first_of_a_prefix_wins() {
    for (field, a, b) in [("insecure", "false", "true"), ("blocked", "false", "true")] {
        let text = format!(
            "[[registry]]\nlocation = \"registry.com\"\n{field} = {a}\n[[registry.mirror]]\nlocation = \"m.example.net\"\n\
             [[registry]]\nlocation = \"registry.com\"\n{field} = {b}\n"
        );
        assert_refused([(
            text.as_str(),
            &[
                "[[registry]] #1 (prefix \"registry.com\") and [[registry]] #2 (prefix \"registry.com\")",
                "both have location \"registry.com\"",
                &format!("give them the same `{field}`"),
            ][..],
        )]);
    }
    // Different prefixes for one registry (to give them different mirrors)
    // that disagree are refused too.
    assert_refused([(
        "[[registry]]\nprefix = \"a.example.com/x\"\nlocation = \"a.example.com\"\n\
         [[registry]]\nprefix = \"a.example.com/y\"\nlocation = \"a.example.com\"\ninsecure = true\n",
        &["#1 (prefix \"a.example.com/x\") and [[registry]] #2 (prefix \"a.example.com/y\")"][..],
    )]);
    assert_refused([(
        "[[registry]]\nprefix = \"*.example.com\"\n[[registry]]\nprefix = \"*.example.com\"\nblocked = true\n",
        &["both have prefix \"*.example.com\"", "`blocked`"][..],
    )]);
    // When they agree, they load; one prefix written twice: the first wins,
    // with its own mirrors.
    let c = conf(
        r#"
[[registry]]
prefix = "registry.com"
location = "registry.com"
[[registry.mirror]]
location = "first.example.net"

[[registry]]
prefix = "registry.com"
location = "registry.com"
[[registry.mirror]]
location = "second.example.net"

[[registry]]
prefix = "registry.com/team"
location = "registry.com"
[[registry.mirror]]
location = "team.example.net"
"#,
    );
    assert_plans(
        &c,
        [
            (
                "registry.com/x:1",
                &[
                    "docker://first.example.net/x:1",
                    "docker://registry.com/x:1",
                ][..],
            ),
            (
                "registry.com/team/x:1",
                &["docker://team.example.net/x:1", "docker://registry.com/x:1"],
            ),
        ],
    );
}

/// parseShortNameValue: an alias value is a registry and a repository, no
/// tag, digest or transport; Docker Hub names are normalised.
#[test]
fn alias_values_are_a_registry_and_a_repository() {
    let c = conf(
        r#"
[aliases]
"fedora" = "docker.io/fedora"
"local" = "localhost:5000/namespace/fedora"
"quay/foo" = "quay.io/library/foo"
"#,
    );
    assert_plans(
        &c,
        [
            ("fedora:39", &["docker://fedora:39"][..]),
            ("local:1", &["docker://localhost:5000/namespace/fedora:1"]),
            ("quay/foo:1", &["docker://quay.io/library/foo:1"]),
        ],
    );
    for (value, why) in [
        (
            "docker.io/library/fedora:latest",
            "it must not contain a tag",
        ),
        (
            "docker.io/library/fedora@sha256:b87dd5f837112a9e1e9882963a6406387597698268c0ad371b187151a5dfe6bf",
            "it must not contain a digest",
        ),
        ("fedora", "it must contain a registry and a repository"),
        ("fedora:latest", "it must not contain a tag"),
        (
            "library/fedora",
            "it must contain a registry and a repository",
        ),
        ("library/fedora:latest", "it must not contain a tag"),
        ("$$4455%%", "it cannot be parsed"),
        ("docker://foo", "it cannot be parsed"),
        ("docker-archive://foo", "it cannot be parsed"),
        (" ", "it cannot be parsed"),
    ] {
        let text = format!("[aliases]\n\"image\" = {value:?}\n");
        assert_refused([(
            text.as_str(),
            &["[aliases]", &format!("\"image\" = {value:?}: {why}")][..],
        )]);
    }
    // Every bad entry is reported at once.
    assert_refused([(
        "[aliases]\nimage1 = \"quay.io/repo/image:1\"\nimage2 = \"image:1\"\n",
        &[
            "\"image1\" = \"quay.io/repo/image:1\"",
            "\"image2\" = \"image:1\"",
        ][..],
    )]);
}

/// validateShortName: an alias name is a repository without a registry,
/// a tag or a digest.
#[test]
fn alias_names_are_short_names() {
    let c = conf(
        r#"
[aliases]
"library/fedora" = "registry.fedoraproject.org/fedora"
"1234567489" = "quay.io/numbers/image"
"#,
    );
    assert_plans(
        &c,
        [
            (
                "library/fedora:39",
                &["docker://registry.fedoraproject.org/fedora:39"][..],
            ),
            ("1234567489:1", &["docker://quay.io/numbers/image:1"]),
        ],
    );
    for (name, why) in [
        ("fedora:latest", "it must not contain a tag"),
        ("library/fedora:latest", "it must not contain a tag"),
        ("docker.io/library/fedora", "it must not contain a registry"),
        ("localhost/fedora", "it must not contain a registry"),
        (
            "fedora@sha256:b87dd5f837112a9e1e9882963a6406387597698268c0ad371b187151a5dfe6bf",
            "it must not contain a digest",
        ),
        ("$$4455%%", "it cannot be parsed"),
        ("docker://foo", "it cannot be parsed"),
        ("", "it cannot be parsed"),
    ] {
        let text = format!("[aliases]\n{name:?} = \"quay.io/a/b\"\n");
        assert_refused([(
            text.as_str(),
            &["[aliases]", &format!("alias name {name:?}: {why}")][..],
        )]);
    }
}

/// newShortNameAliasCache: `name = ""` means no alias, so the short name
/// goes to the search registries.
#[test]
fn an_empty_alias_value_means_no_alias() {
    let c = conf(
        "unqualified-search-registries = [\"registry.example.org\"]\n[aliases]\nempty = \"\"\n",
    );
    assert_plans(
        &c,
        [("empty:1", &["docker://registry.example.org/empty:1"][..])],
    );
    let hub = conf("[aliases]\nempty = \"\"\n");
    assert_plans(&hub, [("empty:1", &["docker://empty:1"][..])]);
}

// Deliberate deviations from containers/image, each listed in PLUGINS.md.

/// containers/image lets a host prefix `example.com` match
/// `example.com:5000/…`, a different registry, and calls that unintended;
/// sifr does not, except in a blocked table, so that it never lets through
/// what containers/image blocks. (A wildcard does match a host with a port,
/// as containers/image intends: the next test.)
#[test]
fn a_host_prefix_never_matches_another_port_except_to_block() {
    let c = conf(
        r#"
[[registry]]
location = "example.com"
[[registry.mirror]]
location = "mirror.example.net"

[[registry]]
location = "untrusted.example.com"
blocked = true

[[registry]]
prefix = "*.evil.example"
blocked = true
"#,
    );
    assert_plans(
        &c,
        [
            (
                "example.com:5000/x:1",
                &["docker://example.com:5000/x:1"][..],
            ),
            (
                "example.com/x:1",
                &[
                    "docker://mirror.example.net/x:1",
                    "docker://example.com/x:1",
                ],
            ),
        ],
    );
    for image in [
        "untrusted.example.com:443/tool:1",
        "untrusted.example.com/tool:1",
        "a.evil.example:5000/tool:1",
    ] {
        assert!(denial(&c, image).contains("blocked = true"), "{image}");
    }
}

/// containers/image defaults to "permissive"; sifr to "enforcing".
#[test]
fn short_name_mode_defaults_to_enforcing() {
    let c = conf("unqualified-search-registries = [\"registry.example.org\", \"docker.io\"]\n");
    let err = denial(&c, "samtools:1.19");
    assert!(
        err.contains("short name \"samtools\" is ambiguous"),
        "{err}"
    );
    let empty = conf(
        "unqualified-search-registries = [\"registry.example.org\", \"docker.io\"]\nshort-name-mode = \"\"\n",
    );
    assert!(denial(&empty, "samtools:1.19").contains("is ambiguous"));
    assert_refused([(
        "short-name-mode = \"lenient\"\n",
        &["short-name-mode = \"lenient\" is not a mode"][..],
    )]);
}

/// containers/image ignores unknown keys and converts version 1 files, and
/// routes a table through its `proxy`; sifr refuses all three, saying what
/// to do.
#[test]
fn unknown_keys_and_proxies_are_refused() {
    assert_refused([
        (
            "[[registry]]\nlocation = \"a.io\"\nmirors = []\n",
            &[
                "unknown field `mirors`",
                "sifr refuses keys it does not know",
            ][..],
        ),
        (
            "[registries.search]\nregistries = [\"a.io\"]\nregistires = []\n",
            &[
                "unknown field `registires`",
                "sifr refuses keys it does not know",
            ],
        ),
        (
            "[[registry]]\nlocation = \"registry-a.com\"\nunqualified-search = true\n",
            &["unknown field `unqualified-search`"],
        ),
        (
            "[[registry]]\nlocation = \"a.io\"\nproxy = \"http://proxy.example.net:3128\"\n",
            &[
                "[[registry]] #1 (location \"a.io\")",
                "proxy = \"http://proxy.example.net:3128\"",
                "HTTPS_PROXY",
            ],
        ),
        (
            "[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\nproxy = \"socks5://p.example.net\"\n",
            &[
                "[[registry.mirror]] #1",
                "proxy = \"socks5://p.example.net\"",
            ],
        ),
        ("[[registry]\n", &["registries.conf: TOML parse error"]),
    ]);
    // What containers/image accepts and sifr has no use for still loads.
    let c = conf(
        "credential-helpers = [\"containers-auth.json\"]\nadditional-layer-store-auth-helper = \"helper\"\n",
    );
    assert_plans(&c, [("a.io/x:1", &["docker://a.io/x:1"][..])]);
}

/// containers/image takes a `*` that is not a leading `*.` literally (so
/// the table never matches) and refuses a wildcard with anything after the
/// domain; sifr refuses both, with or without a location.
#[test]
fn a_wildcard_is_only_a_leading_star_dot_before_a_domain() {
    for bad in [
        "example.*.com",
        "*example.com",
        "foo.io/*",
        "**.example.com",
        "*.",
        "*.example.com/ns",
        "*.example.com:5000",
    ] {
        for location in ["", "location = \"example.com\"\n"] {
            let text = format!("[[registry]]\nprefix = \"{bad}\"\n{location}");
            assert_refused([(
                text.as_str(),
                &[&format!("[[registry]] #1 (prefix \"{bad}\")"), "wildcard"][..],
            )]);
        }
    }
}

/// containers/image loads any location text and fails every pull it
/// rewrites; sifr refuses it when it loads.
#[test]
fn a_location_that_can_never_be_pulled_is_refused_at_load() {
    for (location, why) in [
        ("example.com/Foo", "must be lowercase"),
        ("exa mple.com", "is not a host[:port]"),
        ("my_registry/foo", "is not a host[:port]"),
        ("registry/foo", "reads as a Docker Hub namespace"),
        ("example.com:port/foo", "is not a host[:port]"),
        ("example.com//foo", "empty path component"),
        ("index.docker.io/library", "Docker Hub's old name"),
        ("example.com:99999/foo", "has a port outside 1 to 65535"),
        ("example.com:0", "has a port outside 1 to 65535"),
    ] {
        let text = format!("[[registry]]\nprefix = \"example.org\"\nlocation = {location:?}\n");
        assert_refused([(
            text.as_str(),
            &[
                "[[registry]] #1 (prefix \"example.org\")",
                &format!("location = {location:?} is not a registry location"),
                why,
            ][..],
        )]);
    }
    assert_refused([(
        "[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\nlocation = \"Mirror.example.net/Hub\"\n",
        &["[[registry.mirror]] #1", "must be lowercase"][..],
    )]);
}

/// containers/image's parseLocation takes `john.doe@example.com`, and its
/// rewrite then fails every pull through the table: in an image reference
/// `@` starts a digest. sifr refuses it when the file loads, for a table
/// and for a mirror, and says where a user's credentials go.
#[test]
fn a_location_with_a_user_is_refused_because_a_reference_has_no_place_for_one() {
    assert_refused([
        (
            "[[registry]]\nprefix = \"example.org\"\nlocation = \"john.doe@example.com\"\n",
            &[
                "[[registry]] #1 (prefix \"example.org\")",
                "location = \"john.doe@example.com\" is not a registry location",
                "\"john.doe\"@ is a user",
                "`@` starts a digest",
                "write \"example.com\"",
                "APPTAINER_DOCKER_USERNAME",
            ][..],
        ),
        (
            "[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\nlocation = \"john.doe@mirror.example.net/hub\"\n",
            &[
                "[[registry.mirror]] #1",
                "\"john.doe\"@ is a user",
                "write \"mirror.example.net\"",
            ],
        ),
    ]);
    // The host alone loads and rewrites.
    assert_plans(
        &conf("[[registry]]\nprefix = \"example.org\"\nlocation = \"example.com\"\n"),
        [("example.org/x:1", &["docker://example.com/x:1"][..])],
    );
}

/// Hosts are compared as hosts: sifr hands the plugin canonical references
/// (lowercase host, no `:443`), and the file's hosts are read the same way.
#[test]
fn hosts_match_whatever_their_case_and_443_is_the_host_itself() {
    let blocked = conf(
        r#"
[[registry]]
location = "BLOCKED.example.com"
blocked = true

[[registry]]
prefix = "*.evil.ORG"
blocked = true
"#,
    );
    for image in [
        "blocked.example.com/foo:1",
        "BLOCKED.example.com/foo:1",
        "blocked.example.com:443/foo:1",
        "a.EVIL.org/foo:1",
        "b.a.evil.org:443/foo:1",
    ] {
        let why = denial(&blocked, image);
        assert!(why.contains("blocked"), "{image}: {why}");
    }
    assert_eq!(
        plan(&blocked, "evil.org.example/foo:1"),
        ["docker://evil.org.example/foo:1"]
    );
    let why = load_error("[[registry]]\nlocation = \"example.com:443\"\n");
    assert!(
        why.contains("sifr reads host:443 as host") && why.contains("write \"example.com\""),
        "{why}"
    );
}

/// The deprecated version 1 format means what containers/image converts
/// it to: search registries, insecure and blocked registries. It loads
/// with a warning; mixed with version 2 keys it is refused.
#[test]
fn version_1_files_are_read_as_containers_image_converts_them_with_a_warning() {
    let v1 = fixture("v1.conf");
    assert_plans(
        &v1,
        [
            // [registries.search] with one registry: the short name's candidate.
            (
                "ubuntu:22.04",
                &["docker://registry.example.org/ubuntu:22.04"][..],
            ),
            // [registries.insecure]: plain HTTP.
            (
                "registry.example.org:5000/x:1",
                &["docker://registry.example.org:5000/x:1 (http)"],
            ),
            ("quay.io/x:1", &["docker://quay.io/x:1"]),
        ],
    );
    // [registries.block], also when the registry is insecure too.
    for image in ["untrusted.example.com/x:1", "build.example.org/y:2"] {
        let reason = denial(&v1, image);
        assert!(
            reason.contains("blocked") && reason.contains("[registries.block] entry"),
            "{image}: {reason}"
        );
    }
    let out = sifr()
        .arg("--config")
        .arg(config_for(&v1))
        .args(["resolve", "quay.io/x:1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("deprecated version 1 format") && stderr(&out).contains("convert it"),
        "no deprecation warning: {}",
        stderr(&out)
    );

    assert_refused([
        (
            "unqualified-search-registries = [\"a.io\"]\n[registries.block]\nregistries = [\"b.io\"]\n",
            &[
                "mixes the version 1 format",
                "unqualified-search-registries",
                "mixing sysregistry v1/v2 is not supported",
            ][..],
        ),
        (
            "[registries.block]\nregistries = [\"b.io\"]\n[[registry]]\nlocation = \"c.io\"\n",
            &["mixes the version 1 format", "registry"],
        ),
        (
            "[registries.search]\nregistries = [\"docker.io/library\"]\n",
            &["unqualified-search-registries", "not a host[:port]"],
        ),
        (
            "[registries.insecure]\nregistries = [\"https://a.io\"]\n",
            &["[registries.insecure]", "URI schemes are not supported"],
        ),
    ]);
}

/// A root holding `etc/containers/registries.conf` (`main`, when given) and
/// `etc/containers/registries.conf.d/NAME` for each drop-in.
fn system_root(main: Option<&str>, drop_ins: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/containers");
    std::fs::create_dir_all(etc.join("registries.conf.d")).unwrap();
    if let Some(main) = main {
        std::fs::write(etc.join("registries.conf"), main).unwrap();
    }
    for (name, text) in drop_ins {
        std::fs::write(etc.join("registries.conf.d").join(name), text).unwrap();
    }
    root
}

/// The registries plugin over the system's files under `root`
/// (`settings-files = { conf = "system" }`, with the library's root knob).
fn system_policy(root: &Path) -> Result<sifr::Policy, sifr::Error> {
    let dir = cache().join("configs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("system.toml");
    let tmp = dir.join(format!("system.{:?}.tmp", std::thread::current().id()));
    std::fs::write(
        &tmp,
        "[[plugin]]\nname = \"registries\"\nbuiltin = \"registries\"\nsettings-files = { conf = \"system\" }\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let config = sifr::Config::load(&sifr::ConfigSources {
        cli: Some(path),
        containers_root: Some(root.to_path_buf()),
        ..Default::default()
    })?;
    let options = sifr::PolicyOptions {
        compile_cache: sifr::policy::CompileCache::for_cache_root(&cache().join("sifr")),
        ..Default::default()
    };
    Ok(sifr::Policy::load(&config, &options)?)
}

/// The URIs `policy` plans for `image` (` (http)` for plain HTTP), or why it
/// refuses it.
fn system_plan(policy: &sifr::Policy, image: &str) -> Result<Vec<String>, String> {
    let image = sifr::ImageRef::parse(image).unwrap();
    let ctx = sifr::Context::new(sifr::Purpose::Pull);
    match policy.resolve(&image, &ctx).into_plan() {
        Ok(sources) => Ok(sources
            .iter()
            .map(|s| {
                if s.plain_http {
                    format!("{} (http)", s.uri())
                } else {
                    s.uri()
                }
            })
            .collect()),
        Err(e) => Err(e.to_string()),
    }
}

/// A distribution's registries.conf, containers' shortnames.conf as the
/// drop-in `000-shortnames.conf`, and a site drop-in, read from the system
/// locations as `settings-files = { conf = "system" }`.
#[test]
fn the_system_registries_conf_and_its_drop_ins_are_one_policy() {
    let root = fixture("system");
    let policy = system_policy(&root).unwrap();
    let cases: &[(&str, Result<&[&str], &str>)] = &[
        // shortnames.conf aliases, then the site drop-in's mirror for Hub.
        (
            "fedora:40",
            Ok(&["docker://registry.fedoraproject.org/fedora:40"]),
        ),
        (
            "ubi9/ubi-minimal:9.4",
            Ok(&["docker://registry.access.redhat.com/ubi9/ubi-minimal:9.4"]),
        ),
        (
            "busybox:1.36",
            Ok(&[
                "docker://cache.example.org:5000/hub/library/busybox:1.36",
                "docker://busybox:1.36",
            ]),
        ),
        // An alias from the site drop-in.
        (
            "blast:2.15.0",
            Ok(&["docker://quay.io/biocontainers/blast:2.15.0"]),
        ),
        // The main file's three search registries, enforcing: ambiguous.
        ("samtools:1.19", Err("is ambiguous")),
        // The site drop-in blocks, and the denial names the drop-in.
        ("untrusted.example.com/x:1", Err("50-site.conf")),
        ("quay.io/x:1", Ok(&["docker://quay.io/x:1"])),
    ];
    for (image, expected) in cases {
        match (system_plan(&policy, image), expected) {
            (Ok(plan), Ok(uris)) => assert_eq!(plan, *uris, "{image}"),
            (Err(why), Err(part)) => assert!(why.contains(part), "{image}: {why}"),
            (got, _) => panic!("{image}: expected {expected:?}, got {got:?}"),
        }
    }
}

/// containers/image's merge (`updateWithConfigurationFrom`): drop-ins in
/// lexical order, each over what came before. A table replaces the table
/// of its prefix; search registries and the mode are replaced when a
/// drop-in sets them (`[]` empties the list); aliases merge by name, `""`
/// undoing an earlier one. No file is required.
#[test]
fn drop_ins_merge_over_the_main_file_as_containers_image_merges_them() {
    let main = "unqualified-search-registries = [\"a.io\"]\n\
                [[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"main-mirror.io\"\n\
                [[registry]]\nlocation = \"keep.io\"\n[[registry.mirror]]\nlocation = \"keep-mirror.io\"\n\
                [aliases]\n\"x\" = \"x.io/x\"\n\"y\" = \"y.io/y\"\n";
    type Plans<'a> = &'a [(&'a str, Result<&'a [&'a str], &'a str>)];
    /// What it shows, the main file (if any), the drop-ins, the plans.
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        Plans<'a>,
    );
    let cases: &[Case] = &[
        (
            "no files at all: the empty configuration",
            None,
            &[],
            &[("ubuntu:1", Ok(&["docker://ubuntu:1"]))],
        ),
        (
            "drop-ins alone, no main file",
            None,
            &[(
                "10-hub.conf",
                "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\n",
            )],
            &[(
                "ubuntu:1",
                Ok(&["docker://m.io/library/ubuntu:1", "docker://ubuntu:1"]),
            )],
        ),
        (
            "a drop-in's table replaces the one of its prefix; others stay",
            Some(main),
            &[(
                "50-hub.conf",
                "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"site-mirror.io\"\n",
            )],
            &[
                (
                    "docker.io/library/ubuntu:1",
                    Ok(&[
                        "docker://site-mirror.io/library/ubuntu:1",
                        "docker://ubuntu:1",
                    ]),
                ),
                (
                    "keep.io/k:1",
                    Ok(&["docker://keep-mirror.io/k:1", "docker://keep.io/k:1"]),
                ),
            ],
        ),
        (
            "drop-ins apply in lexical order: 9 after 10",
            Some(main),
            &[
                (
                    "9-last.conf",
                    "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"nine.io\"\n",
                ),
                (
                    "10-first.conf",
                    "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"ten.io\"\n",
                ),
                ("99-ignored.txt", "not toml ["),
            ],
            &[(
                "docker.io/library/ubuntu:1",
                Ok(&["docker://nine.io/library/ubuntu:1", "docker://ubuntu:1"]),
            )],
        ),
        (
            "search registries: absent keeps them",
            Some(main),
            &[("10.conf", "short-name-mode = \"permissive\"\n")],
            &[("z:1", Ok(&["docker://a.io/z:1"]))],
        ),
        (
            "search registries: a list replaces them, and the mode follows the last file",
            Some(main),
            &[
                (
                    "10.conf",
                    "unqualified-search-registries = [\"b.io\", \"c.io\"]\n",
                ),
                ("20.conf", "short-name-mode = \"permissive\"\n"),
            ],
            &[("z:1", Ok(&["docker://b.io/z:1", "docker://c.io/z:1"]))],
        ),
        (
            "search registries: [] empties them (short names stay on Docker Hub)",
            Some(main),
            &[("10.conf", "unqualified-search-registries = []\n")],
            &[(
                "z:1",
                Ok(&["docker://main-mirror.io/library/z:1", "docker://z:1"]),
            )],
        ),
        (
            "aliases merge by name; a later one wins, \"\" undoes one",
            Some(main),
            &[
                (
                    "000-shortnames.conf",
                    "[aliases]\n\"x\" = \"other.io/x\"\n\"w\" = \"w.io/w\"\n",
                ),
                ("10.conf", "[aliases]\n\"y\" = \"\"\n"),
            ],
            &[
                ("x:1", Ok(&["docker://other.io/x:1"])),
                ("w:1", Ok(&["docker://w.io/w:1"])),
                ("y:1", Ok(&["docker://a.io/y:1"])),
            ],
        ),
        (
            "a version 1 main file takes version 2 drop-ins",
            Some("[registries.block]\nregistries = [\"bad.io\"]\n"),
            &[(
                "10.conf",
                "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"m.io\"\n",
            )],
            &[
                ("bad.io/x:1", Err("blocked")),
                (
                    "ubuntu:1",
                    Ok(&["docker://m.io/library/ubuntu:1", "docker://ubuntu:1"]),
                ),
            ],
        ),
        (
            "a drop-in can unblock only by replacing the table of that prefix",
            Some("[[registry]]\nlocation = \"bad.io\"\nblocked = true\n"),
            &[("10.conf", "[[registry]]\nlocation = \"bad.io\"\n")],
            &[("bad.io/x:1", Ok(&["docker://bad.io/x:1"]))],
        ),
    ];
    for (what, main, drop_ins, plans) in cases {
        let root = system_root(*main, drop_ins);
        let policy = system_policy(root.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
        for (image, expected) in plans.iter() {
            match (system_plan(&policy, image), expected) {
                (Ok(plan), Ok(uris)) => assert_eq!(plan, *uris, "{what}: {image}"),
                (Err(why), Err(part)) => assert!(why.contains(part), "{what}: {image}: {why}"),
                (got, _) => panic!("{what}: {image}: expected {expected:?}, got {got:?}"),
            }
        }
    }
}

/// A broken drop-in stops the load, named by its path; a drop-in must be
/// version 2, as containers/image requires.
#[test]
fn a_drop_in_is_checked_like_a_file_and_named_by_its_path() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[registries.search]\nregistries = [\"a.io\"]\n",
            &[
                "must be in the version 2 format",
                "registry must be in v2 format but is in v1",
            ],
        ),
        (
            "[[registry]]\nlocation = \"a.io\"\nmirors = []\n",
            &["unknown field `mirors`"],
        ),
        (
            "[aliases]\n\"quay.io/x\" = \"quay.io/x\"\n",
            &["must not contain a registry"],
        ),
        ("[[registry]\n", &["TOML parse error"]),
    ];
    for (text, parts) in cases {
        let root = system_root(Some(""), &[("10-ok.conf", ""), ("20-bad.conf", text)]);
        let err = system_policy(root.path())
            .map(drop)
            .unwrap_err()
            .to_string();
        let named = root
            .path()
            .join("etc/containers/registries.conf.d/20-bad.conf")
            .display()
            .to_string();
        assert!(
            err.contains(&format!("{named}: ")),
            "{text:?}: not named: {err}"
        );
        for part in *parts {
            assert!(err.contains(part), "{text:?}: {part:?} is not in: {err}");
        }
    }
    // The CLI's root is the real one.
    assert_eq!(
        sifr::ConfigSources::standard(None, None).containers_root,
        None
    );
}
