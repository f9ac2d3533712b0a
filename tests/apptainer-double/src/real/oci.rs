//! What the real backend reads from an OCI image layout, and the runscript
//! it writes from it.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The annotation an OCI layout's `index.json` names a tag with.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The parts of an image's OCI config the real backend uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// GOARCH-style (`amd64`, `arm64`), as the config states it.
    pub architecture: Option<String>,
}

/// The config of the image tagged `tag` in the OCI layout at `layout`:
/// `index.json`, then the tag's manifest, then the manifest's config.
pub fn read_image_config(layout: &Path, tag: &str) -> Result<ImageConfig, String> {
    let index = read_json(&layout.join("index.json"))?;
    let descriptor = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|descriptor| descriptor["annotations"][REF_NAME] == tag)
        .ok_or_else(|| {
            format!(
                "no image tagged {tag:?} in the OCI layout {}",
                layout.display()
            )
        })?;
    // skopeo copies a single platform's image by default, so the tag names
    // an image manifest, not an index.
    match descriptor["mediaType"].as_str() {
        Some(IMAGE_MANIFEST) => {}
        other => {
            return Err(format!(
                "the tag {tag:?} names a {}, not an OCI image manifest",
                other.unwrap_or("descriptor without a media type")
            ));
        }
    }
    let manifest = read_json(&blob_path(layout, &descriptor["digest"])?)?;
    let config = read_json(&blob_path(layout, &manifest["config"]["digest"])?)?;
    Ok(parse_config(&config))
}

/// The fields of an OCI image config (`config.Entrypoint`, `config.Cmd`,
/// `architecture`); absent or `null` ones are empty.
pub fn parse_config(config: &Value) -> ImageConfig {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect()
    };
    ImageConfig {
        entrypoint: strings(&config["config"]["Entrypoint"]),
        cmd: strings(&config["config"]["Cmd"]),
        architecture: config["architecture"]
            .as_str()
            .filter(|arch| !arch.is_empty())
            .map(str::to_owned),
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    serde_json::from_slice(&text).map_err(|err| format!("{} is not JSON: {err}", path.display()))
}

/// Where the layout keeps the blob `digest` (`sha256:HEX` →
/// `blobs/sha256/HEX`). The digest is checked first, so a layout cannot name
/// a file outside its `blobs/`.
fn blob_path(layout: &Path, digest: &Value) -> Result<PathBuf, String> {
    let digest = digest.as_str().unwrap_or_default();
    match digest.split_once(':') {
        Some((algorithm, hex))
            if !algorithm.is_empty()
                && algorithm.chars().all(|c| c.is_ascii_alphanumeric())
                && !hex.is_empty()
                && hex.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            Ok(layout.join("blobs").join(algorithm).join(hex))
        }
        _ => Err(format!(
            "bad digest {digest:?} in the OCI layout {}",
            layout.display()
        )),
    }
}

/// The `/.singularity.d/runscript` apptainer writes for an OCI image: with
/// arguments it runs `ENTRYPOINT ARGS...` (just `ARGS...` without an
/// entrypoint); without, `ENTRYPOINT CMD...`. With neither it does nothing
/// and exits 0, as apptainer's does.
///
/// This is the behaviour apptainer's runscript has under `--no-eval`
/// (`APPTAINER_NO_EVAL`): every word is passed on as it is. Without it,
/// apptainer also runs the words through `eval`, expanding `$VARS` in CMD
/// and ENTRYPOINT; the double never does.
pub fn runscript(config: &ImageConfig) -> String {
    let words = |words: &[String]| {
        words
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let entrypoint = words(&config.entrypoint);
    let cmd = words(&config.cmd);
    let choose = match (entrypoint.is_empty(), cmd.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("set -- {entrypoint} \"$@\"\n"),
        (true, false) => format!("if [ \"$#\" -eq 0 ]; then\n    set -- {cmd}\nfi\n"),
        (false, false) => format!(
            "if [ \"$#\" -eq 0 ]; then\n    set -- {entrypoint} {cmd}\n\
             else\n    set -- {entrypoint} \"$@\"\nfi\n"
        ),
    };
    format!(
        "#!/bin/sh\n\
         # Written by apptainer-test-double (a TEST DOUBLE of apptainer, real\n\
         # backend) from the image's OCI config, like apptainer's OCI runscript\n\
         # with --no-eval: arguments are passed on, never evaluated.\n\
         OCI_ENTRYPOINT={}\n\
         OCI_CMD={}\n\
         {choose}\
         exec \"$@\"\n",
        shell_quote(&entrypoint),
        shell_quote(&cmd),
    )
}

/// `word` as one POSIX shell word.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use serde_json::json;

    use super::*;

    fn config(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            architecture: None,
        }
    }

    /// What the runscript for `config` runs when given `args`: each word the
    /// final command gets, one per line (`printf` stands in for it).
    fn runs(config: &ImageConfig, args: &[&str]) -> String {
        let script = runscript(config);
        let output = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .arg("runscript")
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{script}\n{output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    const PRINTF: &str = "printf";
    const ONE_PER_LINE: &str = "[%s]\\n";

    #[test]
    fn cmd_only_is_replaced_by_arguments() {
        let image = config(&[], &[PRINTF, ONE_PER_LINE, "default", "$HOME"]);
        assert_eq!(runs(&image, &[]), "[default]\n[$HOME]\n");
        assert_eq!(
            runs(&image, &[PRINTF, ONE_PER_LINE, "a b", "it's"]),
            "[a b]\n[it's]\n"
        );
    }

    #[test]
    fn entrypoint_only_takes_the_arguments() {
        let image = config(&[PRINTF, ONE_PER_LINE], &[]);
        assert_eq!(runs(&image, &["x", "*"]), "[x]\n[*]\n");
        assert_eq!(runs(&image, &[]), "[]\n");
    }

    #[test]
    fn entrypoint_and_cmd_default_to_cmd_as_arguments() {
        let image = config(&[PRINTF, ONE_PER_LINE], &["cmd 1", "cmd2"]);
        assert_eq!(runs(&image, &[]), "[cmd 1]\n[cmd2]\n");
        assert_eq!(runs(&image, &["arg"]), "[arg]\n");
    }

    #[test]
    fn neither_runs_the_arguments_or_nothing() {
        let image = config(&[], &[]);
        assert_eq!(runs(&image, &[]), "");
        assert_eq!(runs(&image, &[PRINTF, ONE_PER_LINE, "y"]), "[y]\n");
    }

    #[test]
    fn runscripts_say_what_wrote_them_and_record_the_config() {
        let script = runscript(&config(&["/entry point"], &["it's"]));
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("TEST DOUBLE"));
        // As in apptainer's, the variables hold the words shell-quoted.
        let assignments: String = script
            .lines()
            .filter(|line| line.starts_with("OCI_"))
            .map(|line| format!("{line}\n"))
            .collect();
        let output = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "{assignments}printf '%s|%s' \"$OCI_ENTRYPOINT\" \"$OCI_CMD\""
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            r"'/entry point'|'it'\''s'"
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn configs() {
        let value = json!({
            "architecture": "arm64",
            "config": { "Entrypoint": ["/e"], "Cmd": ["sh", "-c", "x"], "Env": ["A=1"] }
        });
        assert_eq!(
            parse_config(&value),
            ImageConfig {
                entrypoint: vec!["/e".into()],
                cmd: vec!["sh".into(), "-c".into(), "x".into()],
                architecture: Some("arm64".into()),
            }
        );
        let value = json!({ "config": { "Entrypoint": null } });
        assert_eq!(parse_config(&value), ImageConfig::default());
    }

    #[test]
    fn blob_paths_stay_in_the_layout() {
        let layout = Path::new("/l");
        assert_eq!(
            blob_path(layout, &json!("sha256:abc123")).unwrap(),
            Path::new("/l/blobs/sha256/abc123")
        );
        for bad in [
            json!("sha256:../../x"),
            json!("../x:ab"),
            json!("abc"),
            json!(null),
        ] {
            assert!(blob_path(layout, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layouts_are_read_through_index_manifest_and_config() {
        let dir = super::super::workdir::WorkDir::new(None).unwrap();
        let layout = dir.path();
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let config = json!({ "architecture": "amd64", "config": { "Cmd": ["sh"] } });
        fs::write(blobs.join("c0"), config.to_string()).unwrap();
        let manifest = json!({ "config": { "digest": "sha256:c0" } });
        fs::write(blobs.join("a0"), manifest.to_string()).unwrap();
        let index = json!({ "manifests": [{
            "mediaType": IMAGE_MANIFEST,
            "digest": "sha256:a0",
            "annotations": { REF_NAME: "img" }
        }]});
        fs::write(layout.join("index.json"), index.to_string()).unwrap();

        let read = read_image_config(layout, "img").unwrap();
        assert_eq!(read.cmd, vec!["sh".to_owned()]);
        assert_eq!(read.architecture.as_deref(), Some("amd64"));
        let err = read_image_config(layout, "other").unwrap_err();
        assert!(err.contains("no image tagged \"other\""), "{err}");
    }
}
