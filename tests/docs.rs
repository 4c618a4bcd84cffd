//! Man pages and shell completions (issue 13): generated from the clap definitions and checked in;
//! these tests fail when a checked-in file differs from what the binary generates (run
//! scripts/gen-docs), or when groff warns about a page.

use std::path::Path;
use std::process::Command;

use crate::util::*;

fn generated(test: &str) -> TempDir {
    let dir = TempDir::new(&format!("generated-docs-{test}"));
    let status = Command::new(BIN)
        .arg("generate-docs")
        .arg(&dir.0)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn same_files(generated: &Path, checked_in: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(generated)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        let fresh = std::fs::read(generated.join(name)).unwrap();
        let kept = std::fs::read(checked_in.join(name)).unwrap_or_else(|_| {
            panic!(
                "{} is missing; run scripts/gen-docs",
                checked_in.join(name).display()
            )
        });
        assert!(
            fresh == kept,
            "{} differs from what the binary generates; run scripts/gen-docs",
            checked_in.join(name).display()
        );
    }
    let kept = std::fs::read_dir(checked_in).unwrap().count();
    assert_eq!(
        kept,
        names.len(),
        "{} has files the binary does not generate",
        checked_in.display()
    );
    names
}

#[test]
fn the_checked_in_man_pages_are_the_generated_ones_and_groff_has_no_warning() {
    let dir = generated("man");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pages = same_files(&dir.0.join("man"), &root.join("man"));
    assert_eq!(
        pages,
        [
            "hurricane-celery.1",
            "hurricane-consume.1",
            "hurricane-serve.1",
            "hurricane.1"
        ]
    );
    for page in pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(root.join("man").join(&page))
            .env("MANWIDTH", "80")
            .output()
            .expect("man (man-db) is installed");
        assert!(out.status.success(), "{page}");
        assert!(
            out.stderr.is_empty(),
            "{page}: groff warns: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("hurricane"), "{page} renders");
    }
}

#[test]
fn the_checked_in_completions_are_the_generated_ones() {
    let dir = generated("completions");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = same_files(
        &dir.0.join("completions"),
        &root.join("contrib/completions"),
    );
    assert_eq!(files, ["_hurricane", "hurricane.bash", "hurricane.fish"]);
    let bash = std::fs::read_to_string(root.join("contrib/completions/hurricane.bash")).unwrap();
    for word in ["consume", "celery", "--graceful-timeout", "--amqp-host"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    // The bash completion is valid bash.
    let status = Command::new("bash")
        .arg("-n")
        .arg(root.join("contrib/completions/hurricane.bash"))
        .status()
        .unwrap();
    assert!(status.success());
}
